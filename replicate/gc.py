"""gc: reclaim the space of objects nothing references any more, never what something does.

Local repositories (this module's :func:`gc`):

1. **mark** every object reachable from the roots: each experiment ref, each reflog entry
   younger than the reflog expiry, skipping the files of tombstoned checkpoints (``rm`` of a
   checkpoint). The walk goes breadth first, looking a whole level up in the index at once;
   chunk IDs are collected in NumPy arrays (32 bytes each), so a million objects cost tens of
   MB and a few seconds (``benchmarks/bench_gc.py``).
2. **lock**: take ``gc.lock`` exclusively. Writers (checkpoint commits, pulls) hold it shared
   while they write objects and move refs, so gc waits for commits in flight and none starts
   until it is done; then **re-mark** incrementally from refs that moved meanwhile.
3. **sweep**: an unreachable object is removed only if its pack is older than the grace period
   (default 24 h; ``--grace 0`` for a repository with a single writer). Packs with no live
   object go; packs whose dead bytes pass ``REPACK_THRESHOLD`` are rewritten with their live
   objects. The new packs and a new index segment (superseding all others) are made durable
   before anything is deleted; then old segments and packs are deleted. Temporary files of
   processes that no longer run and unindexed packs (left by crashes) older than the grace
   period go too.

Nothing is removed from a repository that is already broken (a reachable object missing, a
damaged index segment): gc reports it and leaves the repair to ``fsck``.

``dry_run`` reports what would go and how many bytes that frees, and changes nothing.
Remote repositories: see :mod:`replicate.remote_gc`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from replicate.errors import CorruptObjectError, DoesNotExist, LockError, RemoteNotFound
from replicate.fsutil import flocked
from replicate.objects import codec, compress, pack
from replicate.objects.ids import hash_object
from replicate.objects.index import RECORD, Index, Location, encode_segment, write_segment
from replicate.objects.store import DATA_PACK_TARGET, ObjectStore, PackWriter
from replicate.repository import Repository

DAY_NS = 86_400 * 10**9
DEFAULT_GRACE_NS = DAY_NS
REFLOG_EXPIRE_NS = 90 * DAY_NS
REPACK_THRESHOLD = 0.10  # rewrite a pack when more than this share of its bytes is dead
NEW_PACK_TARGET = DATA_PACK_TARGET  # repacked objects go to packs of up to this size


@dataclass
class GcResult:
    """What gc kept, removed and freed (or would, with dry_run)."""

    dry_run: bool = False
    live_objects: int = 0
    live_bytes: int = 0
    removed_objects: int = 0
    removed_bytes: int = 0  # stored bytes of the objects removed
    kept_young_objects: int = 0  # unreachable but younger than the grace period
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0  # storage freed: pack files deleted minus pack files written
    tmp_files_removed: int = 0
    reflog_entries_expired: int = 0
    mark_seconds: float = 0.0
    # remotes: unreachable objects condemned by this run (removed by a later run once no push
    # that could have missed the condemnation is running), and condemned sets still waiting
    condemned_objects: int = 0
    condemned_bytes: int = 0
    waiting_sets: int = 0
    errors: list[str] = field(default_factory=list)


# --- sorted ID arrays -------------------------------------------------------------------------
# IDs are 32-byte strings (NumPy "S32"). Comparing S32 keys is slow in searchsorted and
# np.unique; their first 8 bytes as a big-endian integer sort the same way, so lookups
# search those integers (sorted queries) and then compare the whole IDs.


def id_prefix(ids: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each ID as an unsigned integer (same order as the IDs)."""
    if not len(ids):
        return np.zeros(0, dtype=np.uint64)
    return np.asarray(ids).astype("S8").view(">u8").astype(np.uint64)


def sorted_unique(ids: np.ndarray, dtype: str = "S32") -> np.ndarray:
    """Sorted distinct IDs (``dtype``: S32, or S64 for id + pack keys): a sort and a
    neighbour comparison."""
    if not len(ids):
        return np.empty(0, dtype=dtype)
    s = np.sort(np.asarray(ids, dtype=dtype))
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def count_distinct_sorted(ids: np.ndarray) -> int:
    """Number of distinct values of an already sorted S32 array."""
    if not len(ids):
        return 0
    return int(np.count_nonzero(ids[1:] != ids[:-1])) + 1


def positions(sorted_ids: np.ndarray, query: np.ndarray,
              sorted_prefix: np.ndarray | None = None) -> np.ndarray:
    """For each query ID, the index of an equal ID in ``sorted_ids`` (the first of its run of
    equal prefixes that matches), or -1."""
    n = len(sorted_ids)
    query = np.asarray(query, dtype="S32")
    out = np.full(len(query), -1, dtype=np.int64)
    if not n or not len(query):
        return out
    sp = id_prefix(sorted_ids) if sorted_prefix is None else sorted_prefix
    qp = id_prefix(query)
    order = np.argsort(qp, kind="stable")  # sorted queries: cache-friendly searchsorted
    pos = np.empty(len(query), dtype=np.int64)
    pos[order] = np.searchsorted(sp, qp[order], "left")
    pc = np.minimum(pos, n - 1)
    inside = pos < n
    hit = inside & (sorted_ids[pc] == query)
    # several stored IDs share this prefix: the exact one may come later in the run
    amb = np.nonzero(~hit & inside & (sp[pc] == qp))[0]
    if len(amb):
        p2 = np.searchsorted(sorted_ids, query[amb])
        p2c = np.minimum(p2, n - 1)
        ok = (p2 < n) & (sorted_ids[p2c] == query[amb])
        pos[amb[ok]] = p2[ok]
        hit[amb[ok]] = True
    out[hit] = pos[hit]
    return out


def _is_in(sorted_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Membership of each query ID in the sorted ID array."""
    return positions(sorted_ids, query) >= 0


# --- marking ----------------------------------------------------------------------------------


class _Lookup:
    """The index's merged records with the prefix array for fast lookups (rebuilt when the
    index changes)."""

    def __init__(self, index: Any) -> None:
        self.recs = index.all_records()
        self.ids = self.recs["id"]
        self.prefix = id_prefix(self.ids)


def _reader(store: Any) -> Callable[[bytes, np.void, list[bytes]], bytes]:
    """A function reading an object's verified raw bytes given its index record."""
    if type(store) is ObjectStore:
        # local: read and verify directly (no Location/path objects per object)
        def read_local(oid: bytes, r: np.void, packs: list[bytes]) -> bytes:
            loc = Location(packs[int(r["pack"])], int(r["offset"]), int(r["stored"]),
                           int(r["raw"]), int(r["codec"]), int(r["type"]))
            stored = store.read_stored(loc)
            try:
                raw = compress.decompress(loc.codec, stored, loc.raw_len)
            except ValueError as e:
                raise CorruptObjectError(f"cannot decompress ({e})", oid.hex(),
                                         str(store.pack_path(loc.pack))) from None
            if hash_object(raw) != oid:
                raise CorruptObjectError("hash mismatch", oid.hex(), str(store.pack_path(loc.pack)))
            return raw

        return read_local

    def read_any(oid: bytes, r: np.void, packs: list[bytes]) -> bytes:
        loc = Location(packs[int(r["pack"])], int(r["offset"]), int(r["stored"]),
                       int(r["raw"]), int(r["codec"]), int(r["type"]))
        return store.read_raw(oid, loc)

    return read_any


def _is_ids(xs: list[Any]) -> bool:
    return all(type(x) is bytes and len(x) == 32 for x in xs)


def children(oid: bytes, typ: int, raw: bytes,
             tombstones: set[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(structured children, chunk IDs) of a verified object's canonical bytes. A fast path
    over the msgpack arrays; anything unexpected goes through the full decoder, which raises
    CorruptObjectError for malformed objects."""
    try:
        v = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if v[0] != codec.TYPE_NAMES[typ] or v[1] != 1:
            raise ValueError("type")
        subs: list[bytes]
        chunks: list[bytes]
        if typ == codec.FILE:
            chunks = [c[0] for c in v[3]]
            subs = [s[0] for s in v[4]]
        elif typ == codec.SEGMENT:
            chunks, subs = [c[0] for c in v[2]], []
        elif typ == codec.TREE:
            subs, chunks = [], []
            for e in v[2]:
                (chunks if e[2] == codec.KIND_LINK else subs).append(e[3])
        elif typ == codec.CHECKPOINT:
            chunks = []
            subs = [v[2]]
            if v[3] is not None:
                subs.append(v[3])
            if v[7] is not None and oid not in tombstones:
                subs.append(v[7])
        elif typ == codec.EXPERIMENT:
            chunks = []
            subs = [v[6]] if v[6] is not None else []
        else:
            raise ValueError("type")
        if not (_is_ids(chunks) and _is_ids(subs)):
            raise ValueError("ids")
        return subs, chunks
    except Exception:
        pass
    obj = codec.decode(raw, oid.hex())  # raises CorruptObjectError when malformed
    if codec.type_code(obj) != typ:
        raise CorruptObjectError("object type differs from its index entry", oid.hex())
    return codec.children(obj, with_files=oid not in tombstones)


class Marker:
    """Walks the object graph from roots, breadth first. Structured objects are kept in a set
    (they are few: one per file, tree and checkpoint); chunk IDs in NumPy arrays.

    ``store`` is an object store (local or remote) with an ``index``; calling :meth:`mark` again
    (after refreshing the store) adds what is reachable from new roots."""

    FLUSH = 1 << 18  # chunk IDs buffered as bytes before they become a sorted array

    def __init__(self, store: Any, tombstones: set[bytes]) -> None:
        self.store = store
        self.tombstones = tombstones
        self.structured: set[bytes] = set()
        self._parts: list[np.ndarray] = []
        self._buf: list[bytes] = []
        self._nbuf = 0
        self.missing: list[str] = []
        self._read = _reader(store)
        self._lookup: _Lookup | None = None

    def _index(self) -> _Lookup:
        recs = self.store.index.all_records()
        if self._lookup is None or self._lookup.recs is not recs:
            self._lookup = _Lookup(self.store.index)
        return self._lookup

    def mark(self, roots: Iterable[bytes]) -> None:
        """Mark everything reachable from ``roots``."""
        lk = self._index()
        packs = self.store.index.packs
        frontier = list(roots)
        while frontier:
            todo = [o for o in dict.fromkeys(frontier) if o not in self.structured]
            frontier = []
            if not todo:
                break
            pos = positions(lk.ids, np.array(todo, dtype="S32"), lk.prefix)
            types = lk.recs["type"][np.maximum(pos, 0)] if len(lk.recs) else pos
            for oid, p, t in zip(todo, pos.tolist(), types.tolist()):
                if p < 0:
                    self.missing.append(oid.hex())
                    continue
                if t == codec.CHUNK:
                    self._add_chunks([oid])
                    continue
                self.structured.add(oid)
                try:
                    raw = self._read(oid, lk.recs[p], packs)
                    subs, chunks = children(oid, t, raw, self.tombstones)
                except (CorruptObjectError, DoesNotExist, RemoteNotFound) as e:
                    self.missing.append(f"{oid.hex()} ({e})")
                    continue
                if subs:
                    frontier.extend(subs)
                if chunks:
                    self._add_chunks(chunks)

    def _add_chunks(self, chunks: list[bytes]) -> None:
        self._buf.append(b"".join(chunks))
        self._nbuf += len(chunks)
        if self._nbuf >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            arr = np.frombuffer(b"".join(self._buf), dtype="S32")
            self._buf, self._nbuf = [], 0
            self._parts.append(sorted_unique(arr))
            if len(self._parts) > 8:
                self._parts = [sorted_unique(np.concatenate(self._parts))]

    def chunk_ids(self) -> np.ndarray:
        """Every marked chunk ID, sorted and unique."""
        self._flush()
        if len(self._parts) != 1:
            self._parts = [sorted_unique(np.concatenate(self._parts))] if self._parts else []
        return self._parts[0] if self._parts else np.empty(0, dtype="S32")

    def live_ids(self) -> np.ndarray:
        """Every marked ID, sorted and unique (S32)."""
        chunks = self.chunk_ids()
        structured = np.array(list(self.structured), dtype="S32")
        return sorted_unique(np.concatenate([chunks, structured]))

    def missing_chunks(self) -> list[str]:
        """Marked chunks the index does not know (checked in bulk)."""
        chunks = self.chunk_ids()
        lk = self._index()
        gone = chunks[positions(lk.ids, chunks, lk.prefix) < 0]
        return [bytes(c).ljust(32, b"\0").hex() for c in gone[:100]] + (
            [f"... and {len(gone) - 100} more"] if len(gone) > 100 else [])


def roots(repo: Repository, now_ns: int, reflog_expire_ns: int) -> list[bytes]:
    """Ref heads and unexpired reflog entries of every live ref."""
    out: list[bytes] = []
    for name, head in repo.refs.list("experiments").items():
        out.append(head)
        for entry in repo.refs.reflog(name):
            if entry.new is not None and now_ns - entry.time_ns < reflog_expire_ns:
                out.append(entry.new)
    return out


# --- planning a sweep (shared with remote gc) -------------------------------------------------


@dataclass
class SweepPlan:
    """What a sweep does to the packs of an index (``recs`` as returned by all_records)."""

    delete: list[int]  # pack numbers whose every record goes
    repack: list[int]  # pack numbers rewritten without their dead records
    gone: np.ndarray  # bool per pack number: deleted or rewritten
    removed: np.ndarray  # bool per record: dropped with its pack
    groups: list[np.ndarray]  # record numbers copied into each new pack, in order
    new_sizes: list[int]  # estimated size of each new pack file


def plan_sweep(recs: np.ndarray, npacks: int, dead: np.ndarray, present: np.ndarray,
               threshold: float) -> SweepPlan:
    """Which packs to delete (every record dead) and which to rewrite (dead bytes above
    ``threshold`` of the pack); ``present`` marks packs that exist in storage."""
    pack_of = recs["pack"].astype(np.int64)
    stored = recs["stored"].astype(np.int64)
    n_all = np.bincount(pack_of, minlength=npacks)
    n_dead = np.bincount(pack_of[dead], minlength=npacks)
    b_all = np.bincount(pack_of, weights=stored, minlength=npacks)
    b_dead = np.bincount(pack_of[dead], weights=stored[dead], minlength=npacks)
    delete_m = present & (n_all > 0) & (n_dead == n_all)
    repack_m = present & ~delete_m & (n_dead > 0) & (b_dead > threshold * b_all)
    gone = delete_m | repack_m
    rec_gone = gone[pack_of] if len(recs) else np.zeros(0, dtype=bool)
    removed = rec_gone & dead
    # what to copy: live records of rewritten packs, once per ID, unless a kept pack has it
    sel = np.nonzero(rec_gone & ~dead)[0]
    if len(sel):
        ids = recs["id"]
        kept_ids = ids[~rec_gone]  # sorted: recs are sorted by id
        if len(kept_ids):
            sel = sel[positions(kept_ids, ids[sel]) < 0]
        if len(sel) > 1:  # one copy per ID (recs sorted by id: duplicates are neighbours)
            first = np.ones(len(sel), dtype=bool)
            first[1:] = ids[sel[1:]] != ids[sel[:-1]]
            sel = sel[first]
    # group into new packs the way PackWriter fills them: chunks apart from metadata (which
    # stays in small packs), in pack then offset order
    groups: list[np.ndarray] = []
    if len(sel):
        is_chunk = recs["type"][sel] == codec.CHUNK
        for part in (sel[is_chunk], sel[~is_chunk]):
            if len(part):
                part = part[np.lexsort((recs["offset"][part], pack_of[part]))]
                groups.extend(_fill(part, stored[part]))
    sizes = [_pack_size(recs, g) for g in groups]
    return SweepPlan(
        delete=[int(p) for p in np.nonzero(delete_m)[0]],
        repack=[int(p) for p in np.nonzero(repack_m)[0]],
        gone=gone, removed=removed, groups=groups, new_sizes=sizes,
    )


def _fill(rows: np.ndarray, stored: np.ndarray) -> list[np.ndarray]:
    """Split ``rows`` into packs as a PackWriter sealed at NEW_PACK_TARGET would."""
    out = []
    cum = np.cumsum(stored)
    start = 0
    while start < len(rows):
        before = int(cum[start - 1]) if start else 0
        # first i whose pack reaches the target once entry i is appended
        i = int(np.searchsorted(cum, before + NEW_PACK_TARGET - len(pack.HEADER), "left"))
        end = min(i + 1, len(rows))
        out.append(rows[start:end])
        start = end
    return out


def _pack_size(recs: np.ndarray, rows: np.ndarray) -> int:
    """Size of a pack holding ``rows`` (its footer encoded as PackWriter will: exact up to the
    few bytes its random nonce changes in the compressed footer)."""
    entries = []
    off = len(pack.HEADER)
    for r in recs[rows]:
        n = int(r["stored"])
        entries.append(pack.PackEntry(bytes(r["id"]).ljust(32, b"\0"), int(r["type"]), off, n,
                                      int(r["raw"]), int(r["codec"])))
        off += n
    footer = pack.encode_footer(entries, secrets.token_bytes(16), time.time_ns())
    return off + len(footer) + pack.TRAILER_LEN


def copy_objects(store: Any, recs: np.ndarray, packs: list[bytes], rows: np.ndarray,
                 writer: PackWriter) -> None:
    """Append the stored bytes of ``rows`` to ``writer`` (verbatim: no recompression)."""
    for r in recs[rows]:
        loc = Location(packs[int(r["pack"])], int(r["offset"]), int(r["stored"]),
                       int(r["raw"]), int(r["codec"]), int(r["type"]))
        writer.append(bytes(r["id"]).ljust(32, b"\0"), loc.type, store.read_stored(loc),
                      loc.raw_len, loc.codec)


def compacted_segment(recs: np.ndarray, packs: list[bytes], keep: np.ndarray,
                      written: list[tuple[bytes, list[pack.PackEntry]]],
                      supersedes: list[str]) -> bytes:
    """One index segment holding the kept records and the new packs' entries, superseding
    ``supersedes``."""
    kept = recs[keep]
    if len(kept) > 1:  # the same copy indexed twice (a pack uploaded again): keep one record
        ids = kept["id"]
        multi = np.nonzero(ids[1:] == ids[:-1])[0]
        if len(multi):
            drop = np.zeros(len(kept), dtype=bool)
            seen: set[tuple[bytes, int]] = set()
            for i in np.unique(np.concatenate([multi, multi + 1])):
                k = (bytes(kept["id"][i]), int(kept["pack"][i]))
                if k in seen:
                    drop[i] = True
                seen.add(k)
            kept = kept[~drop]
    rows = [kept]
    all_packs = list(packs)
    extra = []
    for pid, entries in written:
        pno = len(all_packs)
        all_packs.append(pid)
        for e in entries:
            extra.append((e.id, pno, e.offset, e.stored_len, e.raw_len, e.codec, e.type, b"\0\0"))
    if extra:
        rows.append(np.array(extra, dtype=RECORD))
    # a new array either way (boolean indexing copies): renumbering its packs changes no index
    allrecs = rows[0] if len(rows) == 1 else np.concatenate(rows)
    if len(allrecs):
        used = np.unique(allrecs["pack"])
        remap = np.zeros(len(all_packs), dtype="<u4")
        remap[used] = np.arange(len(used), dtype="<u4")
        allrecs["pack"] = remap[allrecs["pack"].astype(np.int64)]
        final = [all_packs[int(u)] for u in used]
    else:
        final = []
    return encode_segment(final, allrecs, supersedes=supersedes)


# --- locking ----------------------------------------------------------------------------------


def writer_lock(repo: Repository) -> Any:
    """Held (shared) by writers while they add objects and move refs; gc takes it
    exclusively only for its short sweep. A writer must refresh its index after taking it
    (gc may have removed objects an older in-memory index still lists)."""
    return flocked(repo.root / "gc.lock")


@contextmanager
def _exclusive(repo: Repository, timeout: float) -> Iterator[None]:
    with flocked(repo.root / "gc.lock", exclusive=True, timeout=timeout) as held:
        if not held:
            raise LockError("gc could not lock the repository: writers kept it busy for "
                            f"{timeout:.0f} s; try again")
        yield


@contextmanager
def _gc_running(repo: Repository) -> Iterator[None]:
    """One gc at a time."""
    with flocked(repo.root / "gc.run", exclusive=True, timeout=0) as held:
        if not held:
            raise LockError(f"another gc is running on {repo.root}; wait for it to finish")
        yield


# --- sweeping ---------------------------------------------------------------------------------


def _pack_mtimes(store: ObjectStore, packs: Iterable[bytes]) -> dict[bytes, int]:
    out = {}
    for p in packs:
        try:
            out[p] = os.stat(store.pack_path(p)).st_mtime_ns
        except FileNotFoundError:
            continue
    return out


def expire_reflogs(repo: Repository, now_ns: int, expire_ns: int, dry_run: bool) -> int:
    """Drop reflog entries older than ``expire_ns`` (keeping each ref's newest entry)."""
    n = 0
    for name in repo.refs.list("experiments"):
        entries = repo.refs.reflog(name)
        keep = [e for e in entries[:-1] if now_ns - e.time_ns < expire_ns] + entries[-1:]
        dropped = len(entries) - len(keep)
        if dropped and not dry_run:
            repo.refs.rewrite_reflog(name, keep)
        n += dropped
    return n


def gc(
    repo: Repository,
    grace_ns: int = DEFAULT_GRACE_NS,
    dry_run: bool = False,
    reflog_expire_ns: int = REFLOG_EXPIRE_NS,
    repack_threshold: float = REPACK_THRESHOLD,
    lock_timeout: float = 60.0,
    now_ns: int | None = None,
) -> GcResult:
    """Collect garbage in a local repository (see the module docstring)."""
    res = GcResult(dry_run=dry_run)
    wall0 = time.time_ns()
    now = now_ns if now_ns is not None else wall0
    store = repo.objects
    with _gc_running(repo):
        res.reflog_entries_expired = expire_reflogs(repo, now, reflog_expire_ns, dry_run)
        # the refs are read before the index: a writer indexes its objects before it moves a
        # ref, so every object a ref read here reaches is in the index read after
        tombstones = set(repo.refs.list("removed").values())
        heads = roots(repo, now, reflog_expire_ns)
        store.refresh()
        t0 = time.monotonic()
        marker = Marker(store, tombstones)
        marker.mark(heads)
        res.mark_seconds = time.monotonic() - t0
        ctx = _exclusive(repo, lock_timeout) if not dry_run else _nothing()
        with ctx:
            # commits may have landed since the mark: walk from the refs as they are now
            heads = roots(repo, now + (time.time_ns() - wall0), reflog_expire_ns)
            store.refresh()
            marker.mark(heads)
            if store.index.corrupt:
                res.errors.extend(f"index segment {n} is damaged ({e}); run "
                                  "`replicate fsck --rebuild-index` first"
                                  for n, e in sorted(store.index.corrupt.items()))
                return res
            missing = marker.missing + marker.missing_chunks()
            if missing:
                res.errors.extend(f"reachable object missing: {m}" for m in missing)
                return res  # never delete anything from a repository that is already broken
            live = marker.live_ids()
            del marker  # its arrays are not needed any more: keep the sweep's peak memory down
            _sweep(repo, live, now, grace_ns, dry_run, repack_threshold, res)
    return res


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _stale_tmp(store: ObjectStore, now: int, grace_ns: int) -> list[Path]:
    """Temporary files older than the grace period whose writer (named in the file name:
    ``pack-<pid>-...``, ``pull-<pid>-...``) no longer runs."""
    out = []
    try:
        names = os.listdir(store.tmp_dir)
    except FileNotFoundError:
        return out
    for n in names:
        p = store.tmp_dir / n
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if not os.path.isfile(p) or now - st.st_mtime_ns < grace_ns:
            continue
        parts = n.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and _pid_running(int(parts[1])):
            continue  # its writer is still running (a push building a pack, for example)
        out.append(p)
    return out


def lost_objects(ids: np.ndarray, is_live: np.ndarray, rec_present: np.ndarray) -> list[str]:
    """Live objects none of whose copies sits in an existing pack (hex; at most 100)."""
    gone = ids[is_live & ~rec_present]
    if not len(gone):
        return []
    kept = ids[is_live & rec_present]  # sorted (records are sorted by id)
    lost = sorted_unique(gone[~_is_in(kept, gone)] if len(kept) else gone)
    out = [bytes(x).ljust(32, b"\0").hex() for x in lost[:100]]
    return out + ([f"... and {len(lost) - 100} more"] if len(lost) > 100 else [])


def _sweep(repo: Repository, live: np.ndarray, now: int, grace_ns: int, dry_run: bool,
           threshold: float, res: GcResult) -> None:
    store = repo.objects
    recs = store.index.all_records()
    packs = list(store.index.packs)
    npacks = len(packs)
    on_disk = set(store.list_packs())
    mtimes = _pack_mtimes(store, on_disk)
    ids = recs["id"]
    pack_of = recs["pack"].astype(np.int64)
    stored = recs["stored"].astype(np.int64)
    is_live = _is_in(live, ids)
    present = np.array([p in on_disk for p in packs], dtype=bool)
    lost = lost_objects(ids, is_live, present[pack_of] if len(recs) else is_live)
    if lost:
        res.errors.extend(f"reachable object missing: {x} (its pack is gone)" for x in lost)
        return  # never delete anything from a repository that is already broken
    old = np.array([now - mtimes.get(p, now) >= grace_ns for p in packs], dtype=bool)
    rec_old = old[pack_of] if len(recs) else np.zeros(0, dtype=bool)
    dead = ~is_live & rec_old
    res.live_objects = count_distinct_sorted(ids[is_live])
    res.live_bytes = int(stored[is_live].sum())
    res.kept_young_objects = count_distinct_sorted(ids[~is_live & ~rec_old])
    plan = plan_sweep(recs, npacks, dead, present, threshold)
    res.removed_objects = count_distinct_sorted(ids[plan.removed])
    res.removed_bytes = int(stored[plan.removed].sum())
    res.packs_deleted = len(plan.delete)
    res.packs_repacked = len(plan.repack)
    res.packs_written = len(plan.groups)
    gone_packs = [packs[p] for p in plan.delete + plan.repack]
    sizes = {p: _size(store.pack_path(p)) for p in gone_packs}
    # crash leftovers: temp files of dead processes, and packs that no index names
    referenced = {packs[int(p)] for p in np.unique(pack_of)} if len(recs) else set()
    stale_tmp = _stale_tmp(store, now, grace_ns)
    orphan_packs = [p for p in on_disk - referenced if now - mtimes.get(p, now) >= grace_ns]
    freed = (sum(sizes.values()) + sum(_size(p) for p in stale_tmp)
             + sum(_size(store.pack_path(p)) for p in orphan_packs))
    if dry_run:
        res.bytes_freed = freed - sum(plan.new_sizes)
        res.tmp_files_removed = len(stale_tmp)
        return
    old_segments = sorted(n[:-4] for n in os.listdir(store.index_dir) if n.endswith(".idx"))
    if not gone_packs and not orphan_packs and not stale_tmp and len(old_segments) <= 1:
        return  # nothing to remove and nothing to compact
    # 1. rewrite the live objects of partly dead packs
    written: list[tuple[bytes, list[pack.PackEntry]]] = []
    for rows in plan.groups:
        w = PackWriter(store)
        try:
            copy_objects(store, recs, packs, rows, w)
            written.append(w.seal())
        except BaseException:
            w.discard()
            raise
    new_bytes = sum(_size(store.pack_path(pid)) for pid, _ in written)
    # 2. one index segment for everything that stays, superseding every current segment
    # (under the exclusive lock no writer adds one meanwhile)
    keep = ~plan.gone[pack_of] if len(recs) else np.zeros(0, dtype=bool)
    data = compacted_segment(recs, packs, keep, written, old_segments)
    name = write_segment(store.index_dir, data)
    # 3. only now delete: old segments, then dead packs, then crash leftovers
    for n in old_segments:
        if n != name:
            (store.index_dir / f"{n}.idx").unlink(missing_ok=True)
    store.close()
    for p in gone_packs:
        store.pack_path(p).unlink(missing_ok=True)
    for p in orphan_packs:
        store.pack_path(p).unlink(missing_ok=True)
    for t in stale_tmp:
        t.unlink(missing_ok=True)
    res.tmp_files_removed = len(stale_tmp)
    res.bytes_freed = freed - new_bytes
    repo.objects.index = Index(store.index_dir)
    repo.objects.index.refresh()


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def parse_duration(text: str) -> int:
    """'24h', '30m', '7d', '2w', '90s', '90' (seconds), '0' -> nanoseconds."""
    bad = f"cannot read {text!r} as a duration; use e.g. 24h, 30m, 7d or 0"
    t = text.strip().lower()
    if t in ("0", "now"):
        return 0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if t.isdigit():
        return int(t) * 10**9
    num, unit = t[:-1].strip(), t[-1:]
    if unit not in units or not num:
        raise ValueError(bad)
    try:
        v = float(num)
    except ValueError:
        raise ValueError(bad) from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(bad)
    if v < 0:
        raise ValueError("a duration cannot be negative")
    return int(v * units[unit] * 10**9)
