"""gc: reclaim the space of objects nothing references any more, never what something does.

Local repositories (this module's :func:`gc`):

1. **mark** every object reachable from the roots: each experiment ref, each reflog entry
   younger than the reflog expiry, skipping the files of tombstoned checkpoints (``rm`` of a
   checkpoint). Chunks are collected in sorted NumPy arrays (32 bytes each), so a million
   objects cost tens of MB.
2. **lock**: take ``gc.lock`` exclusively. Writers (checkpoint commits, pulls) hold it shared
   while they write objects and move refs, so gc waits for commits in flight and none starts
   until it is done; then **re-mark** incrementally from refs that moved meanwhile.
3. **sweep**: an unreachable object is removed only if its pack is older than the grace period
   (default 24 h; ``--grace 0`` for a repository with a single writer). Packs with no live
   object go; packs whose dead bytes pass ``REPACK_THRESHOLD`` are rewritten with their live
   objects. The new packs and a new index segment (superseding all others) are made durable
   before anything is deleted; then old segments and packs are deleted. Temporary files and
   unindexed packs (left by crashes) older than the grace period go too.

``dry_run`` reports exactly what would go and how many bytes that frees, and changes nothing.
Remote repositories: see :mod:`replicate.remote_gc`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from replicate.errors import CorruptObjectError, DoesNotExist, LockError
from replicate.fsutil import flocked
from replicate.objects import codec
from replicate.objects.codec import Checkpoint, Experiment, File, Segment, Tree
from replicate.objects.index import RECORD, Index, encode_segment, write_segment
from replicate.objects.store import ObjectStore, PackWriter
from replicate.repository import Repository

DAY_NS = 86_400 * 10**9
DEFAULT_GRACE_NS = DAY_NS
REFLOG_EXPIRE_NS = 90 * DAY_NS
REPACK_THRESHOLD = 0.10  # rewrite a pack when more than this share of its bytes is dead


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
    bytes_freed: int = 0  # disk space freed (pack files deleted minus written)
    tmp_files_removed: int = 0
    reflog_entries_expired: int = 0
    mark_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


# --- marking ----------------------------------------------------------------------------------


class Marker:
    """Walks the object graph; structured objects in a set, chunks in sorted arrays."""

    def __init__(self, read: Callable[[bytes], codec.StructuredObject],
                 type_of: Callable[[bytes], int | None], tombstones: set[bytes]) -> None:
        self.read = read
        self.type_of = type_of
        self.tombstones = tombstones
        self.structured: set[bytes] = set()
        self._chunks: list[bytes] = []
        self._chunk_arrays: list[np.ndarray] = []
        self.missing: list[str] = []

    def mark(self, roots: Iterable[bytes]) -> None:
        stack = [r for r in roots if r not in self.structured]
        while stack:
            oid = stack.pop()
            if oid in self.structured:
                continue
            t = self.type_of(oid)
            if t is None:
                self.missing.append(oid.hex())
                continue
            if t == codec.CHUNK:
                self._chunks.append(oid)
                continue
            self.structured.add(oid)
            try:
                obj = self.read(oid)
            except (CorruptObjectError, DoesNotExist) as e:
                self.missing.append(f"{oid.hex()} ({e})")
                continue
            if isinstance(obj, Checkpoint):
                stack.append(obj.experiment)
                if obj.parent is not None:
                    stack.append(obj.parent)
                if obj.files is not None and oid not in self.tombstones:
                    stack.append(obj.files)
            elif isinstance(obj, Experiment):
                if obj.code is not None:
                    stack.append(obj.code)
            elif isinstance(obj, Tree):
                for e in obj.entries:
                    if e.kind == codec.KIND_LINK:
                        self._chunks.append(e.id)
                    else:
                        stack.append(e.id)
            elif isinstance(obj, File):
                self._chunks.extend(c.id for c in obj.chunks)
                stack.extend(s.id for s in obj.segments)
            elif isinstance(obj, Segment):
                self._chunks.extend(c.id for c in obj.chunks)
            if len(self._chunks) > 1_000_000:
                self._flush()

    def _flush(self) -> None:
        if self._chunks:
            self._chunk_arrays.append(np.unique(np.array(self._chunks, dtype="S32")))
            self._chunks = []

    def live_ids(self) -> np.ndarray:
        """Every marked ID, sorted and unique (S32)."""
        self._flush()
        parts = [*self._chunk_arrays, np.array(sorted(self.structured), dtype="S32")]
        allids = np.concatenate(parts) if parts else np.empty(0, dtype="S32")
        out = np.unique(allids)
        self._chunk_arrays = [out]
        return out


def _is_in(sorted_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    if not len(sorted_ids) or not len(query):
        return np.zeros(len(query), dtype=bool)
    pos = np.searchsorted(sorted_ids, query)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    return (pos < len(sorted_ids)) & (sorted_ids[pos_c] == query)


def roots(repo: Repository, now_ns: int, reflog_expire_ns: int) -> list[bytes]:
    """Ref heads and unexpired reflog entries of every live ref."""
    out: list[bytes] = []
    for name, head in repo.refs.list("experiments").items():
        out.append(head)
        for entry in repo.refs.reflog(name):
            if entry.new is not None and now_ns - entry.time_ns < reflog_expire_ns:
                out.append(entry.new)
    return out


# --- locking ----------------------------------------------------------------------------------


def writer_lock(repo: Repository) -> Any:
    """Held (shared) by writers while they add objects and move refs; gc takes it
    exclusively only for its short sweep."""
    return flocked(repo.root / "gc.lock")


@contextmanager
def _exclusive(repo: Repository, timeout: float) -> Iterator[None]:
    with flocked(repo.root / "gc.lock", exclusive=True, timeout=timeout) as held:
        if not held:
            raise LockError("gc could not lock the repository: writers kept it busy; "
                            "try again")
        yield


@contextmanager
def _gc_running(repo: Repository) -> Iterator[None]:
    """One gc at a time."""
    with flocked(repo.root / "gc.run", exclusive=True, timeout=0) as held:
        if not held:
            raise LockError("another gc is running on this repository")
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
    now = now_ns if now_ns is not None else time.time_ns()
    store = repo.objects
    with _gc_running(repo):
        res.reflog_entries_expired = expire_reflogs(repo, now, reflog_expire_ns, dry_run)
        store.refresh()
        tombstones = set(repo.refs.list("removed").values())
        t0 = time.monotonic()
        marker = Marker(store.read_object, store.type_of, tombstones)
        marker.mark(roots(repo, now, reflog_expire_ns))
        res.mark_seconds = time.monotonic() - t0
        ctx = _exclusive(repo, lock_timeout) if not dry_run else _nothing()
        with ctx:
            # commits may have landed since the mark: walk from the refs as they are now
            store.refresh()
            marker.mark(roots(repo, time.time_ns(), reflog_expire_ns))
            if marker.missing:
                res.errors.extend(f"reachable object missing: {m}" for m in marker.missing)
                return res  # never delete anything from a repository that is already broken
            _sweep(repo, marker.live_ids(), now, grace_ns, dry_run, repack_threshold, res)
    return res


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _sweep(repo: Repository, live: np.ndarray, now: int, grace_ns: int, dry_run: bool,
           threshold: float, res: GcResult) -> None:
    store = repo.objects
    recs = store.index.all_records()
    packs = store.index.packs
    on_disk = set(store.list_packs())
    mtimes = _pack_mtimes(store, on_disk)
    # one record per (id, pack); an object may sit in several packs
    ids = recs["id"]
    is_live = _is_in(live, ids)
    pack_of = recs["pack"].astype(np.int64)
    stored = recs["stored"].astype(np.int64)
    old = np.array([now - mtimes.get(packs[p], now) >= grace_ns for p in range(len(packs))],
                   dtype=bool)
    rec_old = old[pack_of] if len(recs) else np.zeros(0, dtype=bool)
    dead = ~is_live & rec_old
    res.live_objects = int(len(np.unique(ids[is_live]))) if len(recs) else 0
    res.live_bytes = int(stored[is_live].sum()) if len(recs) else 0
    res.kept_young_objects = int((~is_live & ~rec_old).sum())
    # a live object that also has a copy elsewhere keeps only one copy alive: the first
    total_by_pack = np.bincount(pack_of, weights=stored, minlength=len(packs))
    dead_by_pack = np.bincount(pack_of[dead], weights=stored[dead], minlength=len(packs))
    delete: list[int] = []
    repack: list[int] = []
    for p in range(len(packs)):
        if packs[p] not in on_disk or total_by_pack[p] == 0 or dead_by_pack[p] == 0:
            continue
        if dead_by_pack[p] >= total_by_pack[p]:
            delete.append(p)
        elif dead_by_pack[p] > threshold * total_by_pack[p]:
            repack.append(p)
    gone = set(delete) | set(repack)
    removed_mask = dead & np.isin(pack_of, list(gone)) if gone else np.zeros(len(recs), bool)
    res.removed_objects = int(removed_mask.sum())
    res.removed_bytes = int(stored[removed_mask].sum())
    res.packs_deleted = len(delete)
    res.packs_repacked = len(repack)
    sizes = {p: os.path.getsize(store.pack_path(packs[p])) for p in gone}
    # crash leftovers: temp files and packs that no index names
    indexed = set(packs)
    stale_tmp = [p for p in (store.tmp_dir.iterdir() if store.tmp_dir.is_dir() else [])
                 if now - p.stat().st_mtime_ns >= grace_ns]
    orphan_packs = [p for p in on_disk - indexed if now - mtimes.get(p, now) >= grace_ns]
    freed = sum(sizes.values()) + sum(_size(p) for p in stale_tmp) + sum(
        _size(store.pack_path(p)) for p in orphan_packs)
    if dry_run:
        res.bytes_freed = freed - int(sum(stored[(pack_of == p) & ~dead].sum() for p in repack))
        res.tmp_files_removed = len(stale_tmp)
        return
    # 1. rewrite live objects of partly dead packs
    written: list[tuple[bytes, list]] = []
    w: PackWriter | None = None
    keep_rows = []
    for p in repack:
        sel = np.nonzero((pack_of == p) & ~dead)[0]
        for i in sel:
            r = recs[i]
            oid = bytes(r["id"]).ljust(32, b"\0")
            if w is None:
                w = PackWriter(store)
            from replicate.objects.index import Location

            loc = Location(packs[p], int(r["offset"]), int(r["stored"]), int(r["raw"]),
                           int(r["codec"]), int(r["type"]))
            w.append(oid, loc.type, store.read_stored(loc), loc.raw_len, loc.codec)
            if w.size >= 64 * 1024 * 1024:
                written.append(w.seal())
                w = None
    if w is not None:
        written.append(w.seal())
    res.packs_written = len(written)
    new_bytes = sum(os.path.getsize(store.pack_path(pid)) for pid, _ in written)
    # 2. one index segment for everything that stays, superseding every current segment
    keep_mask = ~np.isin(pack_of, list(gone)) if gone else np.ones(len(recs), bool)
    keep_rows.append(recs[keep_mask])
    new_packs = list(packs)
    extra = []
    for pid, entries in written:
        pno = len(new_packs)
        new_packs.append(pid)
        for e in entries:
            extra.append((e.id, pno, e.offset, e.stored_len, e.raw_len, e.codec, e.type, b"\0\0"))
    if extra:
        keep_rows.append(np.array(extra, dtype=RECORD))
    allrecs = np.concatenate(keep_rows) if keep_rows else np.zeros(0, dtype=RECORD)
    used = np.unique(allrecs["pack"]) if len(allrecs) else np.zeros(0, dtype=np.int64)
    remap = {int(old_no): i for i, old_no in enumerate(used)}
    final_packs = [new_packs[int(o)] for o in used]
    if len(allrecs):
        allrecs = allrecs.copy()
        allrecs["pack"] = np.array([remap[int(x)] for x in allrecs["pack"]], dtype="<u4")
    old_segments = sorted(n[:-4] for n in os.listdir(store.index_dir) if n.endswith(".idx"))
    data = encode_segment(final_packs, allrecs, supersedes=old_segments)
    name = write_segment(store.index_dir, data)
    # 3. only now delete: old segments, then dead packs, then crash leftovers
    for n in old_segments:
        if n != name:
            (store.index_dir / f"{n}.idx").unlink(missing_ok=True)
    store.close()
    for p in gone:
        store.pack_path(packs[p]).unlink(missing_ok=True)
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
    """'24h', '30m', '7d', '90s', '0' -> nanoseconds."""
    t = text.strip().lower()
    if t in ("0", "now"):
        return 0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    num, unit = t[:-1], t[-1:]
    if unit not in units or not num:
        if t.isdigit():
            return int(t) * 10**9
        raise ValueError(f"cannot read {text!r} as a duration; use e.g. 24h, 30m, 7d or 0")
    try:
        v = float(num)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a duration; use e.g. 24h, 30m, 7d or 0") from None
    if v < 0:
        raise ValueError("a duration cannot be negative")
    return int(v * units[unit] * 10**9)
