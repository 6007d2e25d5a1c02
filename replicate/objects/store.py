"""The local object store: pack files plus the index, with verified reads and atomic writes.

Layout under the repository directory::

    packs/<2 hex>/<pack id>.pack   immutable packs (data packs up to 64 MiB; metadata packs)
    index/<hex>.idx                immutable index segments (a rebuildable cache)
    tmp/                           packs being written (garbage after a crash)

Write order: packs (temp, fsync, rename, fsync dir) -> index segment -> (caller) ref. A crash at
any instant leaves at most unreferenced packs and temp files, which gc collects.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from replicate.appendfile import AppendFile, give_buffer
from replicate.errors import CorruptObjectError, DoesNotExist
from replicate.fsutil import fsync_dir
from replicate.objects import codec, compress, pack
from replicate.objects.compress import Buffer, Parts
from replicate.objects.ids import hash_chunk, hash_object
from replicate.objects.index import (
    Index,
    Location,
    encode_segment,
    records_of,
    write_segment,
)

DATA_PACK_TARGET = 64 * 1024 * 1024
META_PACK_TARGET = 16 * 1024 * 1024
COMPACT_SEGMENTS = 64  # merge the index when a repository has more segments than this


class ObjectStore:
    """Packs + index under ``root``. Safe for many processes at once (write-once files)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packs_dir = root / "packs"
        self.index_dir = root / "index"
        self.tmp_dir = root / "tmp"
        self.index = Index(self.index_dir)
        self._fds: OrderedDict[bytes, int] = OrderedDict()
        self._fd_lock = threading.Lock()
        self.index.refresh()

    # -- paths ------------------------------------------------------------------------------

    def pack_path(self, pack_id: bytes) -> Path:
        """Path of a pack file."""
        h = pack_id.hex()
        return self.packs_dir / h[:2] / f"{h}.pack"

    def list_packs(self) -> list[bytes]:
        """IDs of every pack file on disk."""
        out = []
        if not self.packs_dir.is_dir():
            return out
        for sub in sorted(os.listdir(self.packs_dir)):
            d = self.packs_dir / sub
            if not d.is_dir():
                continue
            for n in sorted(os.listdir(d)):
                if n.endswith(".pack") and len(n) == 69:
                    try:
                        out.append(bytes.fromhex(n[:64]))
                    except ValueError:
                        continue
        return out

    # -- reading ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """See objects written by other processes since the last refresh."""
        self.index.refresh()

    def has(self, oid: bytes) -> bool:
        """True if the object is indexed (refreshing once on a miss)."""
        if self.index.contains(oid):
            return True
        self.index.refresh()
        return self.index.contains(oid)

    def locate(self, oid: bytes) -> Location:
        """Where ``oid`` is stored; DoesNotExist if nowhere."""
        loc = self.index.lookup(oid)
        if loc is None:
            self.index.refresh()
            loc = self.index.lookup(oid)
        if loc is None:
            raise DoesNotExist(f"object {oid.hex()} is not in the repository")
        return loc

    def _fd(self, pack_id: bytes) -> int:
        with self._fd_lock:
            fd = self._fds.get(pack_id)
            if fd is not None:
                self._fds.move_to_end(pack_id)
                return fd
            try:
                fd = os.open(self.pack_path(pack_id), os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptObjectError(
                    "pack is missing", location=str(self.pack_path(pack_id))
                ) from None
            self._fds[pack_id] = fd
            while len(self._fds) > 64:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def read_stored(self, loc: Location) -> bytes:
        """The stored (possibly compressed) bytes at ``loc``."""
        fd = self._fd(loc.pack)
        data = os.pread(fd, loc.stored_len, loc.offset)
        if len(data) != loc.stored_len:
            raise CorruptObjectError("pack truncated", location=str(self.pack_path(loc.pack)))
        return data

    def read_raw(self, oid: bytes, loc: Location | None = None) -> bytes:
        """The verified raw bytes of any object (a chunk's content or an object's encoding)."""
        loc = loc or self.locate(oid)
        return self.decode_stored(oid, loc, self.read_stored(loc))

    def read_chunks(self, oids: list[bytes]) -> list[bytes]:
        """The verified contents of several chunks, in order (a remote store fetches
        neighbours in one request)."""
        return [self.read_chunk(o) for o in oids]

    def decode_stored(self, oid: bytes, loc: Location, stored: bytes) -> bytes:
        """Decompress an entry's stored bytes and verify them against ``oid``."""
        where = str(self.pack_path(loc.pack))
        try:
            raw = compress.decompress(loc.codec, stored, loc.raw_len)
        except ValueError as e:
            raise CorruptObjectError(f"cannot decompress ({e})", oid.hex(), where) from None
        actual = hash_chunk(raw) if loc.type == codec.CHUNK else hash_object(raw)
        if actual != oid:
            raise CorruptObjectError("hash mismatch", oid.hex(), where)
        return raw

    def read_chunk(self, oid: bytes) -> bytes:
        """A chunk's verified content."""
        return self.read_raw(oid)

    def read_object(self, oid: bytes) -> codec.StructuredObject:
        """A structured object, verified and decoded."""
        loc = self.locate(oid)
        if loc.type == codec.CHUNK:
            raise CorruptObjectError("expected a structured object, found a chunk", oid.hex())
        raw = self.read_raw(oid, loc)
        obj = codec.decode(raw, oid.hex(), str(self.pack_path(loc.pack)))
        if codec.type_code(obj) != loc.type:
            raise CorruptObjectError("object type differs from its index entry", oid.hex())
        return obj

    def type_of(self, oid: bytes) -> int | None:
        """Type code of an indexed object, or None."""
        loc = self.index.lookup(oid)
        return None if loc is None else loc.type

    def maybe_compact(self, max_segments: int = COMPACT_SEGMENTS) -> str | None:
        """Merge the index segments into one when there are more than ``max_segments``
        (each commit adds one). The merged segment supersedes the others, which are deleted
        once it is durable. Skipped while gc sweeps (it holds gc.lock exclusively) or while
        another process compacts."""
        names = self.index.segment_names()
        if len(names) <= max_segments:
            return None
        from replicate.fsutil import flocked

        with (
            flocked(self.root / "gc.lock", timeout=0) as writers_ok,
            flocked(self.root / "index.lock", exclusive=True, timeout=0) as mine,
        ):
            if not (writers_ok and mine):
                return None
            self.index.refresh()
            names = self.index.segment_names()
            if len(names) <= max_segments:
                return None
            recs = self.index.all_records()
            used = np.unique(recs["pack"]) if len(recs) else np.zeros(0, dtype=np.int64)
            remap = np.zeros(len(self.index.packs), dtype="<u4")
            for i, o in enumerate(used):
                remap[int(o)] = i
            recs = recs.copy()
            if len(recs):
                recs["pack"] = remap[recs["pack"].astype(np.int64)]
            data = encode_segment([self.index.packs[int(o)] for o in used], recs, supersedes=names)
            name = write_segment(self.index_dir, data)
            for n in names:
                if n != name:
                    (self.index_dir / f"{n}.idx").unlink(missing_ok=True)
            self.index.refresh()
            return name

    def transaction(self) -> Transaction:
        """Start writing objects; nothing is visible until :meth:`Transaction.commit`."""
        return Transaction(self)

    def close(self) -> None:
        """Close cached pack file descriptors."""
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


@dataclass
class EncodedSegment:
    """Chunks encoded back to back into ``buf[:size]`` (a buffer from appendfile.take_buffer);
    ``entries``: (id, offset in buf, stored length, raw length, codec)."""

    buf: np.ndarray
    size: int
    entries: list[tuple[bytes, int, int, int, int]]


class PackWriter:
    """Appends stored entries to a temp pack file; :meth:`seal` makes it a durable pack of the
    store, :meth:`finish` a complete pack file left in the temp directory (for uploads)."""

    def __init__(
        self, store: ObjectStore | None, tmp_dir: Path | None = None, direct: bool = False
    ) -> None:
        """``direct``: bypass the page cache where possible (see replicate.appendfile): for
        the big data packs of new checkpoints, which nothing reads back soon."""
        self.store = store
        d = tmp_dir if tmp_dir is not None else store.tmp_dir if store is not None else None
        assert d is not None
        d.mkdir(parents=True, exist_ok=True)
        self.tmp = d / f"pack-{os.getpid()}-{secrets.token_hex(8)}.tmp"
        self.f = AppendFile(self.tmp, direct=direct)
        self.f.write([pack.HEADER])
        self.size = len(pack.HEADER)
        self.entries: list[pack.PackEntry] = []

    def append(
        self, oid: bytes, typ: int, stored: Buffer | Parts, raw_len: int, codec_: int
    ) -> None:
        """Append one entry (``stored`` is one buffer or a list of buffers)."""
        self.f.write(stored if isinstance(stored, list) else [stored])
        n = self.f.size - self.size
        self.entries.append(pack.PackEntry(oid, typ, self.size, n, raw_len, codec_))
        self.size += n

    def append_segment(self, seg: EncodedSegment, keep: list[bool]) -> None:
        """Append a buffer of encoded chunks in one write (the buffer is taken over); index
        the entries marked in ``keep`` (the others are duplicates: dead bytes for gc)."""
        base = self.f.write_buffer(seg.buf, seg.size)
        for (oid, off, slen, rlen, c), k in zip(seg.entries, keep):
            if k:
                self.entries.append(pack.PackEntry(oid, codec.CHUNK, base + off, slen, rlen, c))
        self.size = self.f.size

    def finish(self) -> tuple[bytes, list[pack.PackEntry], Path]:
        """Write footer and trailer and fsync. Returns (pack id, entries, temp path)."""
        footer = pack.encode_footer(self.entries, secrets.token_bytes(16), time.time_ns())
        self.f.write([footer, pack.encode_trailer(footer)])
        self.f.close()
        return pack.pack_id_of_footer(footer), self.entries, self.tmp

    def seal(self) -> tuple[bytes, list[pack.PackEntry]]:
        """Finish, then rename into the store's packs/. Returns (pack id, entries)."""
        assert self.store is not None
        pid, entries, tmp = self.finish()
        dest = self.store.pack_path(pid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return pid, entries

    def discard(self) -> None:
        """Drop the temp file."""
        try:
            self.f.abandon()
        finally:
            self.tmp.unlink(missing_ok=True)


class Transaction:
    """A batch of new objects. Objects already stored (or added earlier in this transaction)
    are skipped. ``commit`` seals packs and writes one index segment; ``abort`` drops temps.

    Thread safety: ``put_*`` are called from one thread; sealing runs in a background thread.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._new: set[bytes] = set()
        self._data: PackWriter | None = None
        self._meta: PackWriter | None = None
        self._sealer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replicate-seal")
        self._sealing: list[Future[tuple[bytes, list[pack.PackEntry]]]] = []
        self.new_bytes = 0  # stored bytes of the new objects (pack padding not counted)
        self.new_objects = 0
        self.closed = False

    def has(self, oid: bytes) -> bool:
        """True if stored already or added in this transaction."""
        return oid in self._new or self.store.index.contains(oid)

    def put_stored(
        self, oid: bytes, typ: int, stored: Buffer | Parts, raw_len: int, codec_: int
    ) -> bool:
        """Add pre-encoded bytes (trusted: the caller hashed them), as one buffer or a list of
        buffers. Returns True if new."""
        if self.has(oid):
            return False
        if typ == codec.CHUNK:
            if self._data is None:
                self._data = PackWriter(self.store, direct=True)
            w = self._data
        else:
            if self._meta is None:
                self._meta = PackWriter(self.store)
            w = self._meta
        before = w.size
        w.append(oid, typ, stored, raw_len, codec_)
        self._new.add(oid)
        self.new_bytes += w.size - before
        self.new_objects += 1
        if typ == codec.CHUNK and w.size >= DATA_PACK_TARGET:
            self._sealing.append(self._sealer.submit(w.seal))
            self._data = None
        elif typ != codec.CHUNK and w.size >= META_PACK_TARGET:
            self._sealing.append(self._sealer.submit(w.seal))
            self._meta = None
        return True

    def put_segment(self, seg: EncodedSegment) -> None:
        """Add chunks encoded back to back into one buffer (see ingest); the buffer is taken
        over. Chunks stored meanwhile by another batch are not indexed twice."""
        keep: list[bool] = []
        for oid, *_ in seg.entries:
            keep.append(not self.has(oid))
            if keep[-1]:
                self._new.add(oid)
        if not any(keep):
            give_buffer(seg.buf)
            return
        if self._data is None:
            self._data = PackWriter(self.store, direct=True)
        w = self._data
        w.append_segment(seg, keep)
        self.new_objects += sum(keep)
        self.new_bytes += sum(e[2] for e, k in zip(seg.entries, keep) if k)
        if w.size >= DATA_PACK_TARGET:
            self._sealing.append(self._sealer.submit(w.seal))
            self._data = None

    def put_chunk(self, data: bytes | memoryview, level: int | None = None) -> bytes:
        """Hash, compress and add one chunk. Returns its ID."""
        oid = hash_chunk(data)
        if not self.has(oid):
            c, parts, _ = compress.compress_parts(data, level)
            self.put_stored(oid, codec.CHUNK, parts, len(data), c)
        return oid

    def put_object(self, obj: codec.StructuredObject) -> bytes:
        """Encode and add a structured object. Returns its ID."""
        raw = codec.encode(obj)
        oid = hash_object(raw)
        if not self.has(oid):
            c, stored = compress.compress(raw, compress.TEXT_LEVEL)
            self.put_stored(oid, codec.type_code(obj), stored, len(raw), c)
        return oid

    def commit(self) -> str | None:
        """Make everything durable and indexed. Returns the index segment name (None if the
        transaction added nothing)."""
        if self.closed:
            raise RuntimeError("transaction already closed")
        try:
            for w in (self._data, self._meta):
                if w is not None:
                    self._sealing.append(self._sealer.submit(w.seal))
            self._data = self._meta = None
            sealed = [f.result() for f in self._sealing]
        except BaseException:
            self.abort()
            raise
        finally:
            self._sealer.shutdown(wait=True)
        self.closed = True
        if not sealed:
            return None
        packs, recs = records_of(sealed)
        data = encode_segment(packs, recs)
        name = write_segment(self.store.index_dir, data)
        self.store.index.add_local(packs, recs, name)
        self.store.maybe_compact()
        return name

    def abort(self) -> None:
        """Discard everything not yet committed (sealed packs stay as garbage for gc)."""
        if self.closed:
            return
        self.closed = True
        for w in (self._data, self._meta):
            if w is not None:
                w.discard()
        self._data = self._meta = None
        self._sealer.shutdown(wait=True)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if et is not None:
            self.abort()
        elif not self.closed:
            self.commit()
