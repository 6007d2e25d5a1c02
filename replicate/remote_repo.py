"""A repository on a remote (S3, GCS, a shared directory, any fsspec URL).

Layout (every key is written once, except heartbeats)::

    config                                        JSON, created once (create-only)
    packs/<2 hex>/<pack id>.pack                  immutable packs (same bytes as local packs)
    index/<hex>.idx                               immutable index segments (local format)
    refs/experiments/<eid>/<inv seq>              ref log entry (create-only: the claim)
    refs/experiments/<eid>/<inv seq>-<head id>    ... and its name, written after the claim;
                                                  the newest sorts first; head "000..0" = deleted
    refs/removed/<checkpoint id>                  tombstones (create-only)
    catalog/log/<time>-<rand>.rec                 experiment summaries added by a push
    catalog/snap/<time>-<rand>.snap               compacted summaries (any client compacts)
    heartbeats/<eid>                              a running experiment's last beat

Ref updates are compare-and-swap built from create-only writes: the writer that creates the
claim of sequence n+1 wins; a loser sees RemoteExists and retries or reports a conflict. The
claim key holds only the sequence number (a key that also held the new head would let two
writers with different heads both "win" n+1); the name key written next carries the head, so
one LIST tells every head. No locks on the write path.

Reading: the index segments are mirrored into a local cache directory; structured objects read
from the remote are cached there too (they never change), chunks are fetched with range reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicate.errors import (
    CorruptObjectError,
    IncompatibleRepository,
    RefConflict,
    RemoteError,
    RemoteExists,
    RemoteNotFound,
    RepositoryNotFound,
)
from replicate.fsutil import write_atomic
from replicate.objects import codec
from replicate.objects.ids import hash_chunk, hash_object
from replicate.objects.index import Location
from replicate.objects.store import ObjectStore
from replicate.remotes import Remote, open_remote

MAX_SEQ = (1 << 63) - 1
DELETED = "0" * 64
REFS = "refs/experiments/"
REMOVED = "refs/removed/"


def user_cache_root() -> Path:
    """$XDG_CACHE_HOME/replicate (default ~/.cache/replicate)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "replicate"


def cache_key(url: str) -> str:
    """A directory name for a remote URL."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]


def pack_key(pack_id: bytes) -> str:
    """Remote key of a pack."""
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}.pack"


def claim_key(eid: bytes, seq: int) -> str:
    """Remote key of ref log entry ``seq``: created create-only, so exactly one writer gets
    each sequence number (its body is the entry's record, with the new head)."""
    return f"{REFS}{eid.hex()}/{MAX_SEQ - seq:019d}"


def ref_key(eid: bytes, seq: int, new: bytes | None) -> str:
    """Remote key naming entry ``seq``'s head, written after its claim: listing the ref log
    then tells every head without reading any object (newest sorts first)."""
    return f"{REFS}{eid.hex()}/{MAX_SEQ - seq:019d}-{new.hex() if new else DELETED}"


def parse_claim_key(key: str) -> tuple[bytes, int] | None:
    """(experiment id, seq) of a claim key, else None."""
    parts = key[len(REFS):].split("/") if key.startswith(REFS) else []
    if len(parts) != 2 or len(parts[0]) != 64 or len(parts[1]) != 19 or not parts[1].isdigit():
        return None
    try:
        return bytes.fromhex(parts[0]), MAX_SEQ - int(parts[1])
    except ValueError:
        return None


def parse_ref_key(key: str) -> tuple[bytes, int, bytes | None] | None:
    """(experiment id, seq, head or None when deleted) of a ref log key."""
    parts = key[len(REFS):].split("/") if key.startswith(REFS) else []
    if len(parts) != 2 or len(parts[0]) != 64:
        return None
    inv, _, new = parts[1].partition("-")
    if not inv.isdigit() or len(new) != 64:
        return None
    try:
        eid = bytes.fromhex(parts[0])
        head = None if new == DELETED else bytes.fromhex(new)
    except ValueError:
        return None
    return eid, MAX_SEQ - int(inv), head


class RemoteRefs:
    """Refs of a remote repository, with a RefStore-like read API."""

    def __init__(self, remote: Remote, on_empty: Callable[[], Any] | None = None) -> None:
        self.remote = remote
        self._heads: dict[bytes, tuple[int, bytes | None]] | None = None
        self._on_empty = on_empty  # called when no ref exists (to tell "no repository here")

    def resolve(self, keys: list[str]) -> dict[bytes, tuple[int, bytes | None]]:
        """Heads from a listing of ref log keys. The newest claimed entry is the head; its
        name key tells the head's ID, else (the writer stopped between the two writes) the
        claim's body does (one GET). Logs written before claims existed have names only."""
        claims: dict[bytes, int] = {}
        names: dict[bytes, dict[int, set[bytes | None]]] = {}
        for key in keys:
            c = parse_claim_key(key)
            if c is not None:
                if c[1] > claims.get(c[0], -1):
                    claims[c[0]] = c[1]
                continue
            p = parse_ref_key(key)
            if p is not None:
                names.setdefault(p[0], {}).setdefault(p[1], set()).add(p[2])
        out: dict[bytes, tuple[int, bytes | None]] = {}
        for eid in claims.keys() | names.keys():
            named = names.get(eid, {})
            top = max([claims.get(eid, -1), *named])
            heads = named.get(top, set())
            if len(heads) == 1:
                out[eid] = (top, next(iter(heads)))
            elif eid in claims and claims[eid] == top:
                out[eid] = (top, self._claimed_head(eid, top))
            else:  # names only, several at one seq (a race before claims existed)
                out[eid] = (top, min(heads, key=lambda h: h or b""))
        return out

    def _claimed_head(self, eid: bytes, seq: int) -> bytes | None:
        try:
            rec = json.loads(self.remote.get(claim_key(eid, seq)))
            new = rec.get("new")
            return None if new is None else bytes.fromhex(new)
        except (ValueError, AttributeError, TypeError):
            raise CorruptObjectError(f"unreadable ref log entry {seq}", eid.hex(),
                                     claim_key(eid, seq)) from None

    def heads(self, refresh: bool = False) -> dict[bytes, tuple[int, bytes | None]]:
        """Every experiment's (seq, head); head None when deleted. One listing."""
        if self._heads is None or refresh:
            out = self.resolve([k.key for k in self.remote.list(REFS)])
            if not out and self._on_empty is not None:
                self._on_empty()
            self._heads = out
        return self._heads

    def head(self, eid: bytes) -> tuple[int, bytes | None] | None:
        """(seq, head) of one experiment, read now."""
        return self.resolve([k.key for k in self.remote.list(f"{REFS}{eid.hex()}/")]).get(eid)

    def advance(self, eid: bytes, seq: int, new: bytes | None, record: dict[str, Any]) -> int:
        """Create log entry ``seq`` + 1 pointing at ``new``: its claim (create-only: the
        compare-and-swap), then its name. RefConflict if another writer claimed it first.
        Returns the new seq."""
        body = json.dumps({**record, "new": new.hex() if new else None, "seq": seq + 1},
                          sort_keys=True).encode()
        try:
            self.remote.put(claim_key(eid, seq + 1), body, create_only=True)
        except RemoteExists:
            raise RefConflict(f"experiment {eid.hex()[:7]} was updated by another writer") from None
        try:
            self.remote.put(ref_key(eid, seq + 1, new), body)
        except RemoteError:
            pass  # the claim holds: readers take the head from its body
        if self._heads is not None:
            self._heads[eid] = (seq + 1, new)
        return seq + 1

    def tombstones(self) -> set[bytes]:
        """Checkpoints whose files were removed."""
        out = set()
        for k in self.remote.list(REMOVED):
            name = k.key[len(REMOVED):]
            if len(name) == 64:
                try:
                    out.add(bytes.fromhex(name))
                except ValueError:
                    continue
        return out

    def add_tombstone(self, cid: bytes) -> None:
        """Record that a checkpoint's files were removed."""
        try:
            self.remote.put(f"{REMOVED}{cid.hex()}", cid.hex().encode(), create_only=True)
        except RemoteExists:
            pass

    # RefStore-compatible reading (history.py and query.py use these)
    def read(self, name: str) -> bytes | None:
        kind, _, h = name.partition("/")
        if kind == "experiments":
            v = self.heads().get(bytes.fromhex(h))
            return None if v is None else v[1]
        if kind == "removed":
            cid = bytes.fromhex(h)
            return cid if cid in self.tombstones() else None
        return None

    def list(self, kind: str = "experiments") -> dict[str, bytes]:
        if kind == "experiments":
            return {f"experiments/{e.hex()}": h for e, (_s, h) in self.heads().items() if h}
        if kind == "removed":
            return {f"removed/{c.hex()}": c for c in self.tombstones()}
        return {}


class MetaCache:
    """Structured objects read from a remote, kept locally (they never change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS obj (id BLOB PRIMARY KEY, raw BLOB)")
                self._db = db
            except sqlite3.Error:
                return None
        return self._db

    def get(self, oid: bytes) -> bytes | None:
        with self._lock:
            db = self._conn()
            if db is None:
                return None
            try:
                row = db.execute("SELECT raw FROM obj WHERE id = ?", (oid,)).fetchone()
            except sqlite3.Error:
                return None
        return None if row is None else bytes(row[0])

    def put(self, oid: bytes, raw: bytes) -> None:
        self.put_many([(oid, raw)])

    def put_many(self, rows: list[tuple[bytes, bytes]]) -> None:
        with self._lock:
            db = self._conn()
            if db is None:
                return
            try:
                with db:
                    db.executemany("INSERT OR IGNORE INTO obj VALUES (?, ?)", rows)
            except sqlite3.Error:
                pass


class RemoteObjectStore(ObjectStore):
    """Read access to a remote's objects: the remote index mirrored into ``cache_dir/index``,
    structured objects cached, chunks fetched with range reads (verified like local reads)."""

    # A metadata pack is fetched whole (all its objects verified and cached: one request
    # instead of one per object) when it is small, or once a walk has read a few objects of it.
    WHOLE_PACK_SMALL = 1024 * 1024
    WHOLE_PACK_AFTER = 8  # objects read from one pack by range reads
    WHOLE_PACK_MAX = 64 * 1024 * 1024
    PACK_MEMORY = 64 * 1024 * 1024  # bytes of whole packs kept in memory (read_stored, pull)

    def __init__(self, remote: Remote, cache_dir: Path) -> None:
        self.remote = remote
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.meta = MetaCache(cache_dir / "objects.db")
        super().__init__(cache_dir)
        self._synced = False
        self._pack_stats: dict[bytes, tuple[int, int]] | None = None  # pack -> (bytes, chunks)
        self._range_reads: dict[bytes, int] = {}
        self._packs_mem: dict[bytes, bytes] = {}  # insertion order = age
        self._pack_locks: dict[bytes, threading.Lock] = {}
        self._lock = threading.Lock()

    def pack_path(self, pack_id: bytes) -> Path:  # used only in messages here
        return Path(pack_key(pack_id))

    def refresh(self) -> None:
        """Mirror the remote's index segments (fetching only new ones)."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        remote_names = {
            k.key[len("index/"):-4]
            for k in self.remote.list("index/")
            if k.key.endswith(".idx")
        }
        local = {n[:-4] for n in os.listdir(self.index_dir) if n.endswith(".idx")}
        for n in sorted(remote_names - local):
            try:
                data = self.remote.get(f"index/{n}.idx")
            except RemoteNotFound:
                continue  # compacted away meanwhile; its successor is listed too
            write_atomic(self.index_dir / f"{n}.idx", data, durable=False)
        gone = local - remote_names
        for n in gone:
            (self.index_dir / f"{n}.idx").unlink(missing_ok=True)
        if gone:
            from replicate.objects.index import Index

            self.index = Index(self.index_dir)
        self.index.refresh()
        self._synced = True
        self._pack_stats = None

    def reset_mirror(self) -> None:
        """Forget the mirrored index (the remote was just created: anything mirrored before
        belonged to an earlier repository at this URL)."""
        from replicate.objects.index import Index

        self.index_dir.mkdir(parents=True, exist_ok=True)
        for n in os.listdir(self.index_dir):
            if n.endswith(".idx"):
                (self.index_dir / n).unlink(missing_ok=True)
        self.index = Index(self.index_dir)
        self._synced = True
        self._pack_stats = None

    def _ensure(self) -> None:
        if not self._synced:
            self.refresh()

    def has(self, oid: bytes) -> bool:
        self._ensure()
        return self.index.contains(oid)

    def locate(self, oid: bytes) -> Location:
        self._ensure()
        return super().locate(oid)

    def list_packs(self) -> list[bytes]:
        out = []
        for k in self.remote.list("packs/"):
            name = k.key.rsplit("/", 1)[-1]
            if name.endswith(".pack") and len(name) == 69:
                try:
                    out.append(bytes.fromhex(name[:64]))
                except ValueError:
                    continue
        return out

    def read_stored(self, loc: Location) -> bytes:
        data = self.pack_in_memory(loc.pack)
        if data is not None and loc.offset + loc.stored_len <= len(data):
            return data[loc.offset : loc.offset + loc.stored_len]
        return self.remote.get_range(pack_key(loc.pack), loc.offset, loc.offset + loc.stored_len)

    def pack_in_memory(self, pack_id: bytes) -> bytes | None:
        """A whole pack fetched recently (for metadata walks), if still held."""
        with self._lock:
            return self._packs_mem.get(pack_id)

    def _stats(self, pack_id: bytes) -> tuple[int, int] | None:
        with self._lock:
            if self._pack_stats is None:
                import numpy as np

                recs = self.index.all_records()
                stats: dict[bytes, tuple[int, int]] = {}
                if len(recs):
                    n = len(self.index.packs)
                    sizes = np.bincount(recs["pack"], weights=recs["stored"].astype(np.float64),
                                        minlength=n)
                    chunks = np.bincount(recs["pack"], weights=(recs["type"] == codec.CHUNK),
                                         minlength=n)
                    for i, pid in enumerate(self.index.packs):
                        stats[pid] = (int(sizes[i]), int(chunks[i]))
                self._pack_stats = stats
            return self._pack_stats.get(pack_id)

    def _whole_pack(self, oid: bytes, loc: Location) -> bytes | None:
        """Fetch the metadata pack holding ``oid`` whole and cache all its objects, when worth
        it (see WHOLE_PACK_*). Returns ``oid``'s raw bytes, or None to read just the object."""
        stats = self._stats(loc.pack)
        if stats is None or stats[1] or stats[0] > self.WHOLE_PACK_MAX:
            return None  # unknown, holds chunks, or big: range reads
        with self._lock:
            reads = self._range_reads.get(loc.pack, 0) + 1
            self._range_reads[loc.pack] = reads
            lock = self._pack_locks.setdefault(loc.pack, threading.Lock())
        if stats[0] > self.WHOLE_PACK_SMALL and reads <= self.WHOLE_PACK_AFTER:
            return None
        with lock:
            cached = self.meta.get(oid)
            if cached is not None and hash_object(cached) == oid:
                return cached
            data = self.pack_in_memory(loc.pack)
            if data is None:
                data = self.remote.get(pack_key(loc.pack))
                self._remember_pack(loc.pack, data)
            from replicate.objects import compress

            found = None
            rows = []
            recs = self.index.all_records()
            if loc.pack not in self.index.packs:
                return None  # the index was reloaded meanwhile
            pno = self.index.packs.index(loc.pack)
            for r in recs[recs["pack"] == pno]:
                rid = bytes(r["id"]).ljust(32, b"\0")
                off, slen = int(r["offset"]), int(r["stored"])
                try:
                    raw = compress.decompress(int(r["codec"]), data[off : off + slen],
                                              int(r["raw"]))
                except ValueError:
                    continue
                if hash_object(raw) != rid:
                    continue  # a damaged entry: reading it alone reports it
                rows.append((rid, raw))
                if rid == oid:
                    found = raw
            self.meta.put_many(rows)
            return found

    def _remember_pack(self, pack_id: bytes, data: bytes) -> None:
        with self._lock:
            self._packs_mem[pack_id] = data
            total = sum(len(d) for d in self._packs_mem.values())
            while total > self.PACK_MEMORY and len(self._packs_mem) > 1:
                old = next(iter(self._packs_mem))
                total -= len(self._packs_mem.pop(old))

    def read_raw(self, oid: bytes, loc: Location | None = None) -> bytes:
        cached = self.meta.get(oid)
        if cached is not None and hash_object(cached) == oid:
            return cached
        loc = loc or self.locate(oid)
        if loc.type != codec.CHUNK:
            raw = self._whole_pack(oid, loc)
            if raw is not None:
                return raw
        raw = super().read_raw(oid, loc)
        if loc.type != codec.CHUNK:
            self.meta.put(oid, raw)
        return raw

    # Chunks read in order (checkout, iter_content) come from the same packs, mostly back to
    # back: one range request covers neighbours up to COALESCE_BYTES, bridging gaps (other
    # entries, padding) of up to COALESCE_GAP.
    COALESCE_BYTES = 16 * 1024 * 1024
    COALESCE_GAP = 256 * 1024
    coalesces_reads = True  # FileReader reads ahead through read_chunks

    def read_chunks(self, oids: list[bytes]) -> list[bytes]:
        locs = [self.locate(o) for o in oids]
        out: list[bytes | None] = [None] * len(oids)
        i = 0
        while i < len(oids):
            first = locs[i]
            if self.pack_in_memory(first.pack) is not None:
                out[i] = self.read_raw(oids[i], first)
                i += 1
                continue
            start, end, j = first.offset, first.offset + first.stored_len, i + 1
            while j < len(oids):
                nxt = locs[j]
                nend = max(end, nxt.offset + nxt.stored_len)
                if (nxt.pack != first.pack or not 0 <= nxt.offset - end <= self.COALESCE_GAP
                        or nend - start > self.COALESCE_BYTES):
                    break
                end, j = nend, j + 1
            if j == i + 1:
                out[i] = self.read_raw(oids[i], first)
                i += 1
                continue
            data = self.remote.get_range(pack_key(first.pack), start, end)
            if len(data) != end - start:
                raise CorruptObjectError("pack truncated", location=str(self.pack_path(first.pack)))
            for k in range(i, j):
                off = locs[k].offset - start
                out[k] = self.decode_stored(oids[k], locs[k], data[off : off + locs[k].stored_len])
            i = j
        return out  # type: ignore[return-value]

    def read_object(self, oid: bytes) -> codec.StructuredObject:
        cached = self.meta.get(oid)
        if cached is not None and hash_object(cached) == oid:
            return codec.decode(cached, oid.hex(), "remote cache")
        return super().read_object(oid)

    def type_of(self, oid: bytes) -> int | None:
        self._ensure()
        return super().type_of(oid)

    def transaction(self) -> Any:
        raise IncompatibleRepository("a remote repository is read-only here; use push")

    def verify_chunk(self, oid: bytes, raw: bytes) -> None:
        """Raise unless ``raw`` hashes to ``oid``."""
        if hash_chunk(raw) != oid:
            raise CorruptObjectError("hash mismatch", oid.hex(), self.remote.url)


def _no_bucket(e: RemoteNotFound) -> bool:
    """True when the error says the bucket itself is missing (replicate.remotes' wording)."""
    return "does not exist" in str(e)


def quiet_backend_loggers() -> None:
    """gcsfs logs a full traceback (logger.exception) for every request that runs out of
    retries; with no logging configured Python prints those to stderr, burying the one-line
    error replicate reports. A NullHandler stops that fallback output; records still
    propagate to any handler the application configures."""
    for name in ("gcsfs", "gcsfs.retry", "s3fs", "fsspec"):
        lg = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
            lg.addHandler(logging.NullHandler())


class RemoteRepository:
    """A remote repository, read through local caches. Quacks like Repository for reading
    (``objects``, ``refs``, ``experiment_ref``, ``root``)."""

    def __init__(self, url: str, remote: Remote | None = None, cache_dir: Path | None = None,
                 base: Path | None = None) -> None:
        quiet_backend_loggers()
        self.remote = remote if remote is not None else open_remote(url, base)
        self.url = self.remote.url
        self.root = cache_dir if cache_dir is not None else user_cache_root() / cache_key(self.url)
        self.objects = RemoteObjectStore(self.remote, self.root)
        self.refs = RemoteRefs(self.remote, on_empty=self._check_exists)
        self.heartbeats_dir = self.root / "heartbeats"  # unused for remotes (see catalog)
        self._config: dict[str, Any] | None = None
        # where _config came from: "cache" (read before), "remote" (read now), "created" (by us)
        self.config_source: str | None = None

    def get_immutable(self, key: str, cache: str) -> bytes | None:
        """The content of ``key`` (None if absent), cached under ``root/cache`` for good: only
        for keys written once and never changed (catalog records, condemned sets)."""
        p = self.root / cache / key.replace("/", "_")
        try:
            return p.read_bytes()
        except FileNotFoundError:
            pass
        try:
            data = self.remote.get(key)
        except RemoteNotFound:
            return None
        try:
            write_atomic(p, data, durable=False)
        except OSError:
            pass  # a cache: the next call fetches again
        return data

    def experiment_ref(self, experiment_id: bytes) -> str:
        return f"experiments/{experiment_id.hex()}"

    def _check_exists(self) -> None:
        """Raise when there is no repository (or no bucket) at the URL."""
        if self.cached_config() is None:
            self.config()

    def _config_cache(self) -> Path:
        return self.root / "remote-config.json"

    def cached_config(self) -> dict[str, Any] | None:
        """The remote's config as read before (it is created once and never changes)."""
        if self._config is None:
            try:
                cfg = json.loads(self._config_cache().read_bytes())
                check_config(cfg, self.url)
            except (OSError, ValueError, IncompatibleRepository):
                return None
            self._config = cfg
            self.config_source = "cache"
        return self._config

    def config(self) -> dict[str, Any]:
        """The remote's config; RepositoryNotFound if nothing was pushed there yet."""
        if self._config is None:
            try:
                raw = self.remote.get("config")
            except RemoteNotFound as e:
                if _no_bucket(e):
                    raise
                raise RepositoryNotFound(
                    f"no replicate repository at {self.url}; push to it first "
                    "(replicate push URL)"
                ) from None
            try:
                cfg = json.loads(raw)
            except ValueError:
                raise IncompatibleRepository(f"{self.url}/config is not valid JSON") from None
            check_config(cfg, self.url)
            self._config = cfg
            self.config_source = "remote"
            self._remember_config(raw)
        return self._config

    def _remember_config(self, raw: bytes) -> None:
        try:
            write_atomic(self._config_cache(), raw, durable=False)
        except OSError:
            pass

    def ensure_config(self, cfg: dict[str, Any]) -> None:
        """Create the remote's config (once; racing writers agree). ``config_source`` is
        "created" afterwards when this call created it (the remote was new)."""
        data = json.dumps(cfg, indent=1, sort_keys=True).encode() + b"\n"
        try:
            self.remote.put("config", data, create_only=True)
        except RemoteExists:
            self._config = None
            self.config()
            return
        except RemoteNotFound as e:
            if _no_bucket(e):
                raise
            raise RemoteNotFound(f"{self.url}: the bucket does not exist; create it first") from None
        self._config = cfg
        self.config_source = "created"
        self._remember_config(data)

    def close(self) -> None:
        self.objects.close()


def check_config(cfg: Any, where: str) -> None:
    """Refuse configs of another format or a newer version."""
    from replicate.objects import chunker
    from replicate.repository import FORMAT, FORMAT_VERSION

    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise IncompatibleRepository(f"{where} is not a replicate repository")
    v = cfg.get("version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise IncompatibleRepository(
            f"{where} has format version {v}, newer than this replicate understands; "
            "upgrade: pip install -U replicate"
        )
    if cfg.get("chunker") != chunker.PARAMS:
        raise IncompatibleRepository(f"{where} uses different chunker parameters")
