"""gc on a remote, safe while training jobs keep pushing, with no lock on the write path.

Protocol (after kopia and rustic: two phases, condemned sets, commit-time validation):

- A push registers a **session** (``sessions/<token>/<time>``, refreshed while it runs) before
  it reads the index, never dedupes against a **condemned** object (it uploads a new copy), and
  just before it moves a ref re-reads the condemned sets: if one appeared meanwhile, it uploads
  whatever it relied on that was condemned, and checks again.
- gc takes a **lease** (``gc/lease/<time>-<token>``, one gc at a time), marks from every remote
  ref (each experiment's ref log: head and entries younger than the reflog expiry), then:
  1. **condemn**: writes ``gc/condemned/<time>-<token>.set`` with the unreachable objects
     whose packs are older than the grace period, then records which push sessions were alive
     right after (``.sessions``);
  2. **sweep** a condemned set only when every session alive when it was written has ended
     (those pushes may not have seen it) and it is older than the grace period: objects still
     unreachable now are removed: packs holding only such objects are deleted, packs whose dead
     share passes the threshold are rewritten; the new packs and an index segment superseding
     every other are written before any deletion.
With ``--grace 0`` and no push running, one gc run condemns and sweeps at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack
import numpy as np

from replicate.errors import LockError, RemoteError, RemoteNotFound
from replicate.fsutil import write_atomic
from replicate.gc import REFLOG_EXPIRE_NS, REPACK_THRESHOLD, GcResult, Marker, _is_in
from replicate.objects.index import RECORD, Location, encode_segment
from replicate.objects.store import PackWriter
from replicate.remote_repo import REFS, RemoteRepository, pack_key, parse_ref_key

SESSIONS = "sessions/"
CONDEMNED = "gc/condemned/"
LEASES = "gc/lease/"
SESSION_REFRESH_S = 15.0
SESSION_TTL_NS = 120 * 10**9
LEASE_TTL_NS = 30 * 60 * 10**9


def _ts(name: str) -> int:
    head = name.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(head) if head.isdigit() else 0


# --- push sessions ----------------------------------------------------------------------------


class PushSession:
    """Marks a push as in progress (``sessions/<token>/<time>``), refreshed in the background."""

    def __init__(self, rrepo: RemoteRepository) -> None:
        self.rrepo = rrepo
        self.token = secrets.token_hex(8)
        self.key: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        key = f"{SESSIONS}{self.token}/{time.time_ns():020d}"
        self.rrepo.remote.put(key, b"push")
        old, self.key = self.key, key
        if old is not None:
            try:
                self.rrepo.remote.delete(old)
            except RemoteError:
                pass

    def __enter__(self) -> PushSession:
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True, name="replicate-session")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SESSION_REFRESH_S):
            try:
                self._beat()
            except RemoteError:
                pass

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.key is not None:
            try:
                self.rrepo.remote.delete(self.key)
            except RemoteError:
                pass


def live_sessions(rrepo: RemoteRepository, now_ns: int | None = None) -> set[str]:
    """Tokens of push sessions refreshed within the TTL."""
    now = now_ns or time.time_ns()
    out = set()
    for k in rrepo.remote.list(SESSIONS):
        parts = k.key[len(SESSIONS):].split("/")
        if len(parts) == 2 and parts[1].isdigit() and now - int(parts[1]) < SESSION_TTL_NS:
            out.add(parts[0])
    return out


# --- condemned sets ---------------------------------------------------------------------------


@dataclass
class CondemnedSet:
    name: str  # key without the .set suffix
    ts: int
    ids: np.ndarray  # sorted S32
    sessions: set[str] | None  # sessions alive right after it was written (None: unknown)


def _cached_get(rrepo: RemoteRepository, key: str) -> bytes | None:
    p = rrepo.root / "gc" / key.replace("/", "_")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        pass
    try:
        data = rrepo.remote.get(key)
    except RemoteNotFound:
        return None
    try:
        write_atomic(p, data, durable=False)
    except OSError:
        pass
    return data


def condemned_sets(rrepo: RemoteRepository) -> list[CondemnedSet]:
    """Every condemned set on the remote (contents cached locally: they never change)."""
    keys = {k.key for k in rrepo.remote.list(CONDEMNED)}
    out = []
    for key in sorted(k for k in keys if k.endswith(".set")):
        data = _cached_get(rrepo, key)
        if data is None:
            continue  # swept meanwhile
        ids = np.frombuffer(data, dtype="S32") if data else np.empty(0, dtype="S32")
        name = key[:-4]
        sessions: set[str] | None = None
        if f"{name}.sessions" in keys:
            raw = _cached_get(rrepo, f"{name}.sessions")
            if raw is not None:
                sessions = set(msgpack.unpackb(raw, raw=False))
        out.append(CondemnedSet(name, _ts(name), np.sort(ids), sessions))
    return out


def condemned_ids(sets: list[CondemnedSet]) -> np.ndarray:
    """The union of condemned IDs, sorted."""
    parts = [s.ids for s in sets if len(s.ids)]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype="S32")


def not_condemned(has: Any, condemned: np.ndarray) -> Any:
    """Wrap ``contains_many``: a condemned object counts as absent (uploaded again)."""

    def have(oids: list[bytes]) -> np.ndarray:
        present = np.asarray(has(oids))
        if len(condemned) and len(oids):
            present = present & ~_is_in(condemned, np.array(oids, dtype="S32"))
        return present

    return have


# --- gc ---------------------------------------------------------------------------------------


class _Lease:
    def __init__(self, rrepo: RemoteRepository) -> None:
        self.rrepo = rrepo
        self.key = f"{LEASES}{time.time_ns():020d}-{secrets.token_hex(6)}"

    def __enter__(self) -> _Lease:
        r = self.rrepo.remote
        now = time.time_ns()
        r.put(self.key, b"gc", create_only=True)
        live = sorted(k.key for k in r.list(LEASES) if now - _ts(k.key) < LEASE_TTL_NS)
        if live and live[0] != self.key:
            r.delete(self.key)
            raise LockError(f"another gc is running on {self.rrepo.url} ({live[0]})")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.rrepo.remote.delete(self.key)
        except RemoteError:
            pass


def remote_roots(rrepo: RemoteRepository, now: int, expire_ns: int) -> list[bytes]:
    """Every head, and ref log entries younger than the expiry."""
    out: list[bytes] = []
    newest: dict[bytes, int] = {}
    entries = []
    for k in rrepo.remote.list(REFS):
        p = parse_ref_key(k.key)
        if p is None:
            continue
        entries.append(p)
        eid, seq, _h = p
        newest[eid] = max(newest.get(eid, -1), seq)
    for eid, seq, head in entries:
        if head is None:
            continue
        if seq == newest[eid]:
            out.append(head)
    # Older entries need not be roots: every checkpoint is an ancestor of its experiment's
    # head (history is never rewritten). A deleted experiment (head None) keeps nothing.
    del now, expire_ns
    return out


def gc(rrepo: RemoteRepository, grace_ns: int = 24 * 3600 * 10**9, dry_run: bool = False,
       repack_threshold: float = REPACK_THRESHOLD, now_ns: int | None = None) -> GcResult:
    """Collect garbage on a remote (see the module docstring)."""
    res = GcResult(dry_run=dry_run)
    now = now_ns if now_ns is not None else time.time_ns()
    rrepo.config()
    with _Lease(rrepo) if not dry_run else _NoLease():
        rrepo.objects.refresh()
        store = rrepo.objects
        tombstones = rrepo.refs.tombstones()
        t0 = time.monotonic()
        marker = Marker(store.read_object, store.type_of, tombstones)
        marker.mark(remote_roots(rrepo, now, REFLOG_EXPIRE_NS))
        res.mark_seconds = time.monotonic() - t0
        if marker.missing:
            res.errors.extend(f"reachable object missing: {m}" for m in marker.missing)
            return res
        live = marker.live_ids()
        recs = store.index.all_records()
        ids = recs["id"]
        is_live = _is_in(live, ids)
        res.live_objects = int(len(np.unique(ids[is_live]))) if len(recs) else 0
        res.live_bytes = int(recs["stored"][is_live].astype(np.int64).sum()) if len(recs) else 0
        sets = condemned_sets(rrepo)
        already = condemned_ids(sets)
        # 1. condemn
        dead_ids = np.unique(ids[~is_live]) if len(recs) else np.empty(0, dtype="S32")
        fresh = dead_ids[~_is_in(already, dead_ids)] if len(dead_ids) else dead_ids
        if grace_ns > 0 and len(fresh):
            fresh = _older_than(rrepo, recs, fresh, now, grace_ns, res)
        if dry_run:
            dead = _is_in(np.unique(np.concatenate([already, fresh])), ids) & ~is_live
            res.removed_objects = int(dead.sum())
            res.removed_bytes = int(recs["stored"][dead].astype(np.int64).sum())
            res.bytes_freed = res.removed_bytes
            return res
        if len(fresh):
            name = f"{CONDEMNED}{time.time_ns():020d}-{secrets.token_hex(6)}"
            rrepo.remote.put(f"{name}.set", np.sort(fresh).tobytes())
            sess = live_sessions(rrepo)
            rrepo.remote.put(f"{name}.sessions", msgpack.packb(sorted(sess)))
            sets.append(CondemnedSet(name, _ts(name), np.sort(fresh), sess))
        # 2. sweep the sets no running push can have missed
        current = live_sessions(rrepo)
        later = time.time_ns()
        ready = [s for s in sets if s.sessions is not None and not (s.sessions & current)
                 and later - s.ts >= grace_ns]
        if ready:
            sweep_ids = condemned_ids(ready)
            _sweep(rrepo, recs, is_live, sweep_ids, repack_threshold, res)
            for s in ready:
                for suffix in (".set", ".sessions"):
                    try:
                        rrepo.remote.delete(s.name + suffix)
                    except RemoteError:
                        pass
    return res


class _NoLease:
    def __enter__(self) -> _NoLease:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _older_than(rrepo: RemoteRepository, recs: np.ndarray, dead: np.ndarray, now: int,
                grace_ns: int, res: GcResult) -> np.ndarray:
    """Dead objects none of whose copies sits in a pack younger than the grace period (pack
    times from the listing; a backend that gives none counts as young)."""
    times = {k.key: k.mtime for k in rrepo.remote.list("packs/")}
    packs = rrepo.objects.index.packs
    young_pack = np.array(
        [(t := times.get(pack_key(p))) is None or now - int(t * 1e9) < grace_ns for p in packs],
        dtype=bool,
    )
    if not len(recs):
        return dead
    young_ids = recs["id"][young_pack[recs["pack"].astype(np.int64)]]
    keep = _is_in(np.unique(young_ids), dead) if len(young_ids) else np.zeros(len(dead), bool)
    res.kept_young_objects = int(keep.sum())
    return dead[~keep]


def _sweep(rrepo: RemoteRepository, recs: np.ndarray, is_live: np.ndarray,
           sweep_ids: np.ndarray, threshold: float, res: GcResult) -> None:
    store = rrepo.objects
    packs = list(store.index.packs)
    pack_of = recs["pack"].astype(np.int64)
    stored = recs["stored"].astype(np.int64)
    dead = _is_in(sweep_ids, recs["id"]) & ~is_live
    total = np.bincount(pack_of, weights=stored, minlength=len(packs))
    dead_b = np.bincount(pack_of[dead], weights=stored[dead], minlength=len(packs))
    on_remote = set(store.list_packs())
    delete = [p for p in range(len(packs)) if dead_b[p] > 0 and dead_b[p] >= total[p]
              and packs[p] in on_remote]
    repack = [p for p in range(len(packs)) if 0 < dead_b[p] < total[p]
              and dead_b[p] > threshold * total[p] and packs[p] in on_remote]
    gone = set(delete) | set(repack)
    if not gone:
        return
    sizes = {k.key: k.size for k in rrepo.remote.list("packs/")}
    # 1. rewrite live objects of partly dead packs, upload them
    written: list[tuple[bytes, list[Any]]] = []
    tmp = rrepo.root / "tmp"
    w: PackWriter | None = None

    def flush() -> None:
        nonlocal w
        if w is not None and w.entries:
            pid, entries, path = w.finish()
            try:
                rrepo.remote.put_file(pack_key(pid), str(path))
            finally:
                path.unlink(missing_ok=True)
            written.append((pid, entries))
        w = None

    for p in repack:
        for i in np.nonzero((pack_of == p) & ~dead)[0]:
            r = recs[i]
            loc = Location(packs[p], int(r["offset"]), int(r["stored"]), int(r["raw"]),
                           int(r["codec"]), int(r["type"]))
            if w is None:
                w = PackWriter(None, tmp)
            w.append(bytes(r["id"]).ljust(32, b"\0"), loc.type, store.read_stored(loc),
                     loc.raw_len, loc.codec)
            if w.size >= 64 * 1024 * 1024:
                flush()
    flush()
    # 2. one index segment superseding all, uploaded before any deletion
    keep = ~np.isin(pack_of, list(gone))
    rows = [recs[keep]]
    new_packs = list(packs)
    extra = []
    for pid, entries in written:
        pno = len(new_packs)
        new_packs.append(pid)
        for e in entries:
            extra.append((e.id, pno, e.offset, e.stored_len, e.raw_len, e.codec, e.type, b"\0\0"))
    if extra:
        rows.append(np.array(extra, dtype=RECORD))
    allrecs = np.concatenate(rows)
    used = np.unique(allrecs["pack"]) if len(allrecs) else np.zeros(0, dtype=np.int64)
    remap = np.zeros(len(new_packs), dtype="<u4")
    for i, o in enumerate(used):
        remap[int(o)] = i
    allrecs = allrecs.copy()
    if len(allrecs):
        allrecs["pack"] = remap[allrecs["pack"].astype(np.int64)]
    old_segments = sorted(k.key[len("index/"):-4] for k in rrepo.remote.list("index/")
                          if k.key.endswith(".idx"))
    data = encode_segment([new_packs[int(o)] for o in used], allrecs, supersedes=old_segments)
    name = blake3.blake3(data).hexdigest()
    rrepo.remote.put(f"index/{name}.idx", data)
    # 3. deletions: old segments, then the packs
    for n in old_segments:
        if n != name:
            try:
                rrepo.remote.delete(f"index/{n}.idx")
            except RemoteNotFound:
                pass
    freed = 0
    for p in gone:
        key = pack_key(packs[p])
        freed += sizes.get(key, 0)
        rrepo.remote.delete(key)
    new_bytes = sum(sum(e.stored_len for e in ents) for _, ents in written)
    res.packs_deleted += len(delete)
    res.packs_repacked += len(repack)
    res.packs_written += len(written)
    removed = dead & np.isin(pack_of, list(gone))
    res.removed_objects += int(removed.sum())
    res.removed_bytes += int(stored[removed].sum())
    res.bytes_freed += freed - new_bytes
    rrepo.objects.refresh()

