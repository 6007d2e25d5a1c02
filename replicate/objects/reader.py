"""Reading file objects back: a seekable, lazy, verified binary file over a file's chunks."""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterator
from typing import Any

from replicate.errors import CorruptObjectError
from replicate.objects.codec import ChunkRef, File, Segment
from replicate.objects.store import ObjectStore


def file_chunk_refs(store: ObjectStore, file: File) -> list[ChunkRef]:
    """Every chunk of a file object, in order (segments expanded)."""
    if not file.segments:
        return list(file.chunks)
    out: list[ChunkRef] = []
    for s in file.segments:
        seg = store.read_object(s.id)
        if not isinstance(seg, Segment):
            raise CorruptObjectError("expected a segment", s.id.hex())
        out.extend(seg.chunks)
    return out


def read_file_object(store: ObjectStore, file_id: bytes) -> File:
    """Read and type-check a file object."""
    obj = store.read_object(file_id)
    if not isinstance(obj, File):
        raise CorruptObjectError("expected a file object", file_id.hex())
    return obj


READ_AHEAD = 8 * 1024 * 1024  # iter_content asks for this much at a time


def iter_content(store: ObjectStore, file: File) -> Iterator[bytes]:
    """The verified content of a file, one chunk at a time. Chunks are requested in groups
    of about READ_AHEAD bytes, so a remote store can fetch neighbours in one request."""
    refs = file_chunk_refs(store, file)
    read_many = getattr(store, "read_chunks", None)
    i = 0
    while i < len(refs):
        j, size = i, 0
        while j < len(refs) and (j == i or size + refs[j].size <= READ_AHEAD):
            size += refs[j].size
            j += 1
        group = refs[i:j]
        if read_many is not None:
            datas = read_many([r.id for r in group])
        else:
            datas = [store.read_chunk(r.id) for r in group]
        for ref, data in zip(group, datas):
            if len(data) != ref.size:
                raise CorruptObjectError(
                    "chunk length differs from the file's record", ref.id.hex()
                )
            yield data
        i = j


class FileReader(io.RawIOBase):
    """A read-only, seekable binary file whose bytes come from the store on demand.

    Only the chunks covering what is read are fetched (one cached chunk at a time), so a
    10 GB checkpoint can be opened with constant memory.
    """

    def __init__(self, store: ObjectStore, file: File, name: str = "") -> None:
        super().__init__()
        self.store = store
        self.name = name
        self.size = file.size
        self._refs = file_chunk_refs(store, file)
        self._starts: list[int] = []
        pos = 0
        for r in self._refs:
            self._starts.append(pos)
            pos += r.size
        if pos != file.size:
            raise CorruptObjectError("file size differs from the sum of its chunks")
        self._pos = 0
        self._cache_idx = -1
        self._cache = b""
        # Read-ahead for sequential reads from stores that fetch neighbours together (remotes):
        # the window starts at one chunk and doubles with every sequential miss, up to
        # READ_AHEAD bytes; any other access resets it. A seek and a short read fetch what
        # they cover; reading a file through fetches it in a few requests.
        self._coalesces = bool(getattr(store, "coalesces_reads", False))
        self._ahead: dict[int, bytes] = {}
        self._window = 1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _chunk(self, idx: int) -> bytes:
        if idx == self._cache_idx:
            return self._cache
        data = self._ahead.pop(idx, None)
        if data is None:
            sequential = idx == self._cache_idx + 1
            if not sequential:
                self._window = 1
            self._ahead.clear()
            if self._coalesces and sequential and self._window > 1:
                end, size = idx, 0
                while end < len(self._refs) and (
                    end == idx
                    or (end - idx < self._window and size + self._refs[end].size <= READ_AHEAD)
                ):
                    size += self._refs[end].size
                    end += 1
                datas = self.store.read_chunks([r.id for r in self._refs[idx:end]])
                self._ahead = dict(zip(range(idx, end), datas))
                data = self._ahead.pop(idx)
            else:
                data = self.store.read_chunk(self._refs[idx].id)
            if sequential:
                self._window *= 2
        ref = self._refs[idx]
        if len(data) != ref.size:
            raise CorruptObjectError("chunk length differs from the file's record", ref.id.hex())
        self._cache, self._cache_idx = data, idx
        return self._cache

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = 0
        while n < len(mv) and self._pos < self.size:
            idx = bisect.bisect_right(self._starts, self._pos) - 1
            data = self._chunk(idx)
            off = self._pos - self._starts[idx]
            take = min(len(mv) - n, len(data) - off)
            mv[n : n + take] = data[off : off + take]
            n += take
            self._pos += take
        return n

    def readall(self) -> bytes:
        parts = []
        while self._pos < self.size:
            idx = bisect.bisect_right(self._starts, self._pos) - 1
            data = self._chunk(idx)
            off = self._pos - self._starts[idx]
            parts.append(data[off:])
            self._pos += len(data) - off
        return b"".join(parts)


def open_file(store: ObjectStore, file: File, name: str = "") -> io.BufferedReader:
    """A buffered, seekable reader over a file object."""
    return io.BufferedReader(FileReader(store, file, name), buffer_size=1024 * 1024)
