"""gc on a remote, safe while training jobs keep pushing, with no lock on the write path.

Protocol (after kopia and rustic: two phases, condemned sets, commit-time validation):

- A push registers a **session** (``sessions/<token>/<time>``, refreshed while it runs) before
  it reads the index, never dedupes against a **condemned** object (it uploads a new copy, into
  a new pack), and just before it moves a ref re-reads the condemned sets: if one appeared
  meanwhile, it uploads whatever it relied on that was condemned, and checks again.
- gc takes a **lease** (``gc/lease/<time>-<token>``, refreshed while it runs: one gc at a time)
  and then, in this order:
  1. lists the push sessions alive now, and picks the condemned sets that are **ready**: every
     session alive when the set was written has ended since (those pushes may have missed it;
     any later push saw it) and the set is older than the grace period;
  2. **marks** from every remote ref (each experiment's newest ref log entry; a deleted
     experiment keeps nothing), skipping the files of tombstoned checkpoints. The mark comes
     after the session check, so the refs moved by those finished pushes are seen;
  3. **condemns**: writes ``gc/condemned/<time>-<token>.set`` naming the unreachable copies
     ``(object, pack)`` in packs older than the grace period (only in packs a sweep would act
     on), then lists the sessions alive right after and records them (``.sessions``). A copy
     a push uploads later lands in a new pack, which no existing set names. A pack's age is
     counted from when it was last indexed (the newest index segment naming it; the listing's
     LastModified too where the backend reports it);
  4. **sweeps** the ready sets: copies still unreachable are removed: packs holding only such
     copies are deleted, packs whose dead share passes the threshold are rewritten; the new
     packs and an index segment superseding the segments read are written before anything is
     deleted, and nothing is deleted once the lease cannot be confirmed. A pack uploaded again
     under its old name after it was condemned (a push uploads a big local pack verbatim) is
     left alone: its records then appear twice in the index.
  With ``--grace 0`` and no push running, one gc run condemns and sweeps at once (marking
  again after recording the sessions). A run with nothing to sweep still compacts the index
  when it has more than ``COMPACT_SEGMENTS`` segments (one per push).

Sets written by a gc killed before it recorded the sessions, and sets in an older format, are
dropped (un-condemning is always safe: a later run condemns those objects again).
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack
import numpy as np

from replicate.errors import LockError, RemoteError, RemoteNotFound
from replicate.gc import (
    DEFAULT_GRACE_NS,
    REPACK_THRESHOLD,
    GcResult,
    Marker,
    _is_in,
    compacted_segment,
    copy_objects,
    count_distinct_sorted,
    lost_objects,
    plan_sweep,
    sorted_unique,
)
from replicate.objects.store import PackWriter
from replicate.remote_repo import REFS, RemoteRepository, pack_key, parse_ref_key

SESSIONS = "sessions/"
CONDEMNED = "gc/condemned/"
LEASES = "gc/lease/"
SESSION_REFRESH_S = 40.0  # 3 refreshes fit in the TTL; fewer requests per long push
SESSION_TTL_NS = 120 * 10**9
SET_MAGIC = b"RPLCOND2"
COMPACT_SEGMENTS = 32  # more index segments than this: gc compacts them into one


def lease_ttl_ns() -> int:
    """How long a gc lease lasts without a refresh (``REPLICATE_GC_LEASE_TTL`` seconds, default
    120; at least 4 s). A gc refreshes its lease 8 times per TTL, so a killed gc blocks others
    for at most one TTL."""
    try:
        s = float(os.environ.get("REPLICATE_GC_LEASE_TTL", "120"))
    except ValueError:
        s = 120.0
    return int(max(4.0, s) * 10**9)


def _ts(name: str) -> int:
    head = name.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _fresh(key_ns: int, mtime: float | None, now_ns: int, server_now: float | None,
           ttl_ns: int) -> bool:
    """Alive by the writer's clock (in the key) or by the store's (LastModified): either
    suffices, so a skewed clock can only keep something alive longer."""
    if now_ns - key_ns < ttl_ns:
        return True
    return mtime is not None and server_now is not None and (server_now - mtime) * 1e9 < ttl_ns


# --- push sessions ----------------------------------------------------------------------------


class _RefreshedKey:
    """A key that says "I am alive", rewritten under a new name in the background (the
    previous one deleted) until the ``with`` block ends; then deleted."""

    JOIN_S = 5.0

    def __init__(self, rrepo: RemoteRepository) -> None:
        self.rrepo = rrepo
        self.key: str | None = None
        self.last_ok = 0.0  # time.monotonic() of the last successful write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, key: str, data: bytes, create_only: bool = False) -> None:
        t = time.monotonic()
        self.rrepo.remote.put(key, data, create_only=create_only)
        self.last_ok = t
        old, self.key = self.key, key
        if old is not None:
            try:
                self.rrepo.remote.delete(old)
            except RemoteError:
                pass

    def _refresh(self) -> None:
        raise NotImplementedError

    def _start(self, name: str, every_s: float) -> None:
        def run() -> None:
            while not self._stop.wait(every_s):
                try:
                    self._refresh()
                except RemoteError:
                    pass

        self._thread = threading.Thread(target=run, daemon=True, name=name)
        self._thread.start()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.JOIN_S)
        if self.key is not None:
            try:
                self.rrepo.remote.delete(self.key)
            except RemoteError:
                pass


class PushSession(_RefreshedKey):
    """Marks a push as in progress (``sessions/<token>/<time>``), refreshed in the background."""

    def __init__(self, rrepo: RemoteRepository) -> None:
        super().__init__(rrepo)
        self.token = secrets.token_hex(8)

    def _refresh(self) -> None:
        self._write(f"{SESSIONS}{self.token}/{time.time_ns():020d}", b"push")

    def fresh(self) -> bool:
        """True while gc must consider this session alive (refreshed within half the TTL):
        a push should re-validate before it commits when this turns False."""
        return time.monotonic() - self.last_ok < SESSION_TTL_NS / 2e9

    def __enter__(self) -> PushSession:
        self._refresh()
        self._start("replicate-session", SESSION_REFRESH_S)
        return self


def live_sessions(rrepo: RemoteRepository, now_ns: int | None = None,
                  server_now: float | None = None) -> set[str]:
    """Tokens of push sessions refreshed within the TTL (by the pusher's clock, or by the
    store's when ``server_now``, the store's current time, is known)."""
    now = now_ns or time.time_ns()
    out = set()
    for k in rrepo.remote.list(SESSIONS):
        parts = k.key[len(SESSIONS):].split("/")
        if len(parts) == 2 and parts[1].isdigit() and _fresh(
                int(parts[1]), k.mtime, now, server_now, SESSION_TTL_NS):
            out.add(parts[0])
    return out


# --- condemned sets ---------------------------------------------------------------------------


@dataclass
class CondemnedSet:
    name: str  # key without the .set suffix
    ts: int  # when it was written (the writer's clock, ns)
    ids: np.ndarray  # condemned object IDs, sorted, unique (S32): what pushes must not reuse
    keys: np.ndarray | None  # condemned copies: id + pack id (S64), sorted; None: old format
    sessions: set[str] | None  # sessions alive right after it was written (None: unknown)
    mtime: float | None = None  # the store's time of the .set (LastModified), when known


def encode_set(keys: np.ndarray) -> bytes:
    """Bytes of a condemned set: magic, then sorted 64-byte (object id, pack id) records."""
    return SET_MAGIC + np.sort(np.asarray(keys, dtype="S64")).tobytes()


def decode_set(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids, keys) of a condemned set's bytes (keys None for the older ids-only format)."""
    if data.startswith(SET_MAGIC) and (len(data) - len(SET_MAGIC)) % 64 == 0:
        keys = np.frombuffer(data[len(SET_MAGIC):], dtype="S64")
        ids = np.frombuffer(keys.tobytes(), dtype="S32")[::2] if len(keys) else keys[:0]
        return sorted_unique(ids.astype("S32")), keys
    usable = len(data) - len(data) % 32
    return sorted_unique(np.frombuffer(data[:usable], dtype="S32")), None


def _cache_dir(rrepo: RemoteRepository) -> Any:
    return rrepo.root / "gc"


def _cached_get(rrepo: RemoteRepository, key: str) -> bytes | None:
    return rrepo.get_immutable(key, "gc")


def condemned_sets(rrepo: RemoteRepository) -> list[CondemnedSet]:
    """Every condemned set on the remote (contents cached locally: they never change)."""
    listed = {k.key: k for k in rrepo.remote.list(CONDEMNED)}
    out = []
    for key in sorted(k for k in listed if k.endswith(".set")):
        data = _cached_get(rrepo, key)
        if data is None:
            continue  # swept meanwhile
        name = key[:-4]
        ids, keys = decode_set(data)
        sessions: set[str] | None = None
        if f"{name}.sessions" in listed:
            raw = _cached_get(rrepo, f"{name}.sessions")
            if raw is not None:
                try:
                    sessions = set(msgpack.unpackb(raw, raw=False))
                except (ValueError, TypeError, msgpack.UnpackException):
                    sessions = None
        out.append(CondemnedSet(name, _ts(name), ids, keys, sessions, listed[key].mtime))
    # forget cached sets that are gone from the remote
    cached = _cache_dir(rrepo)
    if cached.is_dir():
        names = {k.replace("/", "_") for k in listed}
        for n in os.listdir(cached):
            if n not in names and n.startswith(CONDEMNED.replace("/", "_")):
                try:
                    (cached / n).unlink()
                except OSError:
                    pass
    return out


def condemned_ids(sets: list[CondemnedSet]) -> np.ndarray:
    """The union of condemned IDs, sorted."""
    parts = [s.ids for s in sets if len(s.ids)]
    return sorted_unique(np.concatenate(parts)) if parts else np.empty(0, dtype="S32")


def not_condemned(has: Any, condemned: np.ndarray) -> Any:
    """Wrap ``contains_many``: a condemned object counts as absent (uploaded again)."""

    def have(oids: list[bytes]) -> np.ndarray:
        present = np.asarray(has(oids))
        if len(condemned) and len(oids):
            present = present & ~_is_in(condemned, np.array(oids, dtype="S32"))
        return present

    return have


def _record_keys(recs: np.ndarray, packs: list[bytes]) -> np.ndarray:
    """For each index record, its copy key: object id + pack id (S64)."""
    n = len(recs)
    if not n:
        return np.empty(0, dtype="S64")
    pack_ids = np.array(packs, dtype="S32") if packs else np.empty(0, dtype="S32")
    both = np.empty((n, 2), dtype="S32")
    both[:, 0] = recs["id"]
    both[:, 1] = pack_ids[recs["pack"].astype(np.int64)]
    return both.reshape(-1).view("S64")


# --- the lease ----------------------------------------------------------------------------------


class _Lease(_RefreshedKey):
    """One gc at a time: a create-only key, refreshed in the background. A gc that finds any
    other live lease after writing its own gives up, so two can never both proceed."""

    JOIN_S = 10.0

    def __init__(self, rrepo: RemoteRepository) -> None:
        super().__init__(rrepo)
        self.token = secrets.token_hex(6)
        self.ttl_ns = lease_ttl_ns()
        self.server_now: float | None = None  # the store's clock when the lease was taken
        self._server_at: tuple[float, float] | None = None  # (LastModified, monotonic)

    def _refresh(self) -> None:
        self._write(f"{LEASES}{time.time_ns():020d}-{self.token}", b"gc", create_only=True)

    def __enter__(self) -> _Lease:
        r = self.rrepo.remote
        self._refresh()
        now = time.time_ns()
        listed = r.list(LEASES)
        mine = [k for k in listed if k.key == self.key]
        if mine and mine[0].mtime is not None:
            self._server_at = (mine[0].mtime, time.monotonic())
        self.server_now = self.server_time()
        others = [k for k in listed if not k.key.endswith(f"-{self.token}")]
        live = [k for k in others
                if _fresh(_ts(k.key), k.mtime, now, self.server_now, self.ttl_ns)]
        if live:
            try:
                r.delete(self.key)  # type: ignore[arg-type]
            except RemoteError:
                pass
            self.key = None
            raise LockError(f"another gc is running on {self.rrepo.url}; try again later (a gc "
                            f"that was killed blocks others for {self.ttl_ns // 10**9} s)")
        for k in others:  # expired leases of killed gcs
            try:
                r.delete(k.key)
            except RemoteError:
                pass
        self._start("replicate-gc-lease", self.ttl_ns / 8e9)
        return self

    def server_time(self) -> float | None:
        """The store's clock now (seconds), from the LastModified of our first lease write
        plus the time elapsed since; None when the store reports no times."""
        if self._server_at is None:
            return None
        mtime, at = self._server_at
        return mtime + (time.monotonic() - at)

    def check(self) -> None:
        """Raise unless the lease was refreshed recently enough that no other gc can have
        taken over (called before anything is deleted)."""
        if time.monotonic() - self.last_ok > self.ttl_ns / 2e9:
            raise LockError("gc could not keep its lease on the remote (refreshing it failed); "
                            "stopped before deleting anything; try again")


class _NoLease:
    server_now: float | None = None

    def server_time(self) -> float | None:
        return None

    def __enter__(self) -> _NoLease:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def check(self) -> None:
        return None


# --- gc ---------------------------------------------------------------------------------------


def remote_roots(rrepo: RemoteRepository, now: int = 0, expire_ns: int = 0) -> list[bytes]:
    """Every experiment's head (its newest ref log entry; a deleted experiment keeps nothing),
    resolved from one listing exactly as readers resolve it (``RemoteRefs.resolve``: a claimed
    entry whose name key is missing takes its head from the claim). Older entries need not be
    roots: every checkpoint is an ancestor of its experiment's head (history is never
    rewritten)."""
    keys = [k.key for k in rrepo.remote.list(REFS)]
    resolve = getattr(rrepo.refs, "resolve", None)
    if resolve is not None:
        heads = resolve(keys)
    else:  # ref logs of names only
        heads = {}
        for key in keys:
            p = parse_ref_key(key)
            if p is not None and (p[0] not in heads or p[1] > heads[p[0]][0]):
                heads[p[0]] = (p[1], p[2])
    return [head for _seq, head in heads.values() if head is not None]


def _drop_unusable(rrepo: RemoteRepository, sets: list[CondemnedSet]) -> list[CondemnedSet]:
    """Delete sets that can never be swept (no sessions record: their gc was killed; the older
    ids-only format) and session records whose set is gone. Called under the lease."""
    keep = []
    for s in sets:
        if s.sessions is not None and s.keys is not None:
            keep.append(s)
            continue
        for suffix in (".set", ".sessions"):
            try:
                rrepo.remote.delete(s.name + suffix)
            except RemoteError:
                pass
    names = {s.name for s in sets}
    for k in rrepo.remote.list(CONDEMNED):
        if k.key.endswith(".sessions") and k.key[:-9] not in names:
            try:
                rrepo.remote.delete(k.key)
            except RemoteError:
                pass
    return keep


def gc(rrepo: RemoteRepository, grace_ns: int = DEFAULT_GRACE_NS, dry_run: bool = False,
       repack_threshold: float = REPACK_THRESHOLD, now_ns: int | None = None) -> GcResult:
    """Collect garbage on a remote (see the module docstring)."""
    res = GcResult(dry_run=dry_run)
    wall0 = time.time_ns()
    now = now_ns if now_ns is not None else wall0  # ``now_ns``: a clock shifted for tests
    rrepo.config()
    lease: _Lease | _NoLease = _Lease(rrepo) if not dry_run else _NoLease()
    with lease:
        store = rrepo.objects
        sets = condemned_sets(rrepo)
        if dry_run:
            sets = [s for s in sets if s.sessions is not None and s.keys is not None]
        else:
            sets = _drop_unusable(rrepo, sets)
        # 1. the sets no running push can have missed (sessions listed BEFORE the mark)
        current = live_sessions(rrepo, server_now=lease.server_time())
        wall = now + (time.time_ns() - wall0)
        ready = [s for s in sets if s.sessions is not None and not (s.sessions & current)
                 and wall - s.ts >= grace_ns]
        # 2. mark. The refs are listed before the index is read: a push writes its index
        # segment before it moves a ref, so every object a listed ref reaches is indexed.
        heads = remote_roots(rrepo)
        store.refresh()
        if store.index.corrupt:
            res.errors.extend(f"index segment {n} is damaged ({e})"
                              for n, e in sorted(store.index.corrupt.items()))
            return res
        marker = Marker(store, rrepo.refs.tombstones())
        t0 = time.monotonic()
        marker.mark(heads)
        res.mark_seconds = time.monotonic() - t0
        missing = marker.missing + marker.missing_chunks()
        if missing:
            res.errors.extend(f"reachable object missing: {m}" for m in missing)
            return res
        recs = store.index.all_records()
        packs = list(store.index.packs)
        ids = recs["id"]
        stored = recs["stored"].astype(np.int64)
        pack_of = recs["pack"].astype(np.int64)
        is_live = _is_in(marker.live_ids(), ids)
        res.live_objects = count_distinct_sorted(ids[is_live])
        res.live_bytes = int(stored[is_live].sum())
        listing = {k.key: k for k in rrepo.remote.list("packs/")}
        info = [listing.get(pack_key(p)) for p in packs]
        present = np.array([k is not None for k in info], dtype=bool)
        lost = lost_objects(ids, is_live, present[pack_of] if len(recs) else is_live)
        if lost:
            res.errors.extend(f"reachable object missing: {x} (its pack is gone)" for x in lost)
            return res
        # 3. condemn the unreachable copies in old packs that a sweep would act on
        if grace_ns == 0:
            old = present.copy()
        else:
            indexed = indexed_times(store)
            old = np.array([k is not None and now - pack_time(p, k, indexed) >= grace_ns
                            for p, k in zip(packs, info)], dtype=bool)
        rec_old = old[pack_of] if len(recs) else np.zeros(0, dtype=bool)
        unreachable = ~is_live
        res.kept_young_objects = count_distinct_sorted(ids[unreachable & ~rec_old])
        keys = _record_keys(recs, packs)
        all_keys = [s.keys for s in sets if s.keys is not None and len(s.keys)]
        already = (_is_in64(sorted_unique(np.concatenate(all_keys), "S64"), keys) if all_keys
                   else np.zeros(len(recs), dtype=bool))
        qualifying = plan_sweep(recs, len(packs), unreachable & rec_old, present,
                                repack_threshold).gone
        fresh = unreachable & rec_old & ~already & (qualifying[pack_of] if len(recs) else rec_old)
        res.condemned_objects = count_distinct_sorted(ids[fresh])
        res.condemned_bytes = int(stored[fresh].sum())
        if dry_run:
            ready_keys = [s.keys for s in ready if s.keys is not None and len(s.keys)]
            if not current and grace_ns == 0 and fresh.any():
                ready_keys.append(keys[fresh])  # a real run would condemn and sweep at once
            dead = (_is_in64(sorted_unique(np.concatenate(ready_keys), "S64"), keys) & unreachable
                    if ready_keys else np.zeros(len(recs), dtype=bool))
            dead &= _not_reput(ready, keys, listing, packs, pack_of)
            plan = plan_sweep(recs, len(packs), dead, present, repack_threshold)
            _account(res, recs, plan, packs, listing)
            res.bytes_freed = sum(listing[pack_key(packs[p])].size
                                  for p in plan.delete + plan.repack) - sum(plan.new_sizes)
            res.waiting_sets = len(sets) - len(ready)
            return res
        need_remark = False
        if fresh.any():
            name = f"{CONDEMNED}{now + (time.time_ns() - wall0):020d}-{secrets.token_hex(6)}"
            new_keys = np.sort(keys[fresh])
            rrepo.remote.put(f"{name}.set", encode_set(new_keys))
            sess = live_sessions(rrepo, server_now=lease.server_time())
            rrepo.remote.put(f"{name}.sessions", msgpack.packb(sorted(sess)))
            mtime = next((k.mtime for k in rrepo.remote.list(CONDEMNED)
                          if k.key == f"{name}.set"), None)
            ns = CondemnedSet(name, _ts(name), sorted_unique(ids[fresh]), new_keys, sess, mtime)
            sets.append(ns)
            if not sess and grace_ns == 0:
                ready.append(ns)  # nobody can have missed it: sweep now (after a re-mark)
                need_remark = True
        res.waiting_sets = len(sets) - len(ready)
        if not ready:
            if len(store.index.segment_names()) > COMPACT_SEGMENTS:
                lease.check()
                _sweep(rrepo, lease, recs, packs, store.index.segment_names(),
                       np.zeros(len(recs), dtype=bool), listing, repack_threshold, res)
            return res
        # 4. sweep
        if need_remark:
            # pushes may have moved refs between the mark and the sessions listing
            heads = remote_roots(rrepo)
            store.refresh()
            marker.mark(heads)
            missing = marker.missing + marker.missing_chunks()
            if missing:
                res.errors.extend(f"reachable object missing: {m}" for m in missing)
                return res
            recs = store.index.all_records()
            packs = list(store.index.packs)
            pack_of = recs["pack"].astype(np.int64)
            keys = _record_keys(recs, packs)
            is_live = _is_in(marker.live_ids(), recs["id"])
            listing = {k.key: k for k in rrepo.remote.list("packs/")}
        segments = store.index.segment_names()  # the segments `recs` came from
        ready_keys = [s.keys for s in ready if s.keys is not None and len(s.keys)]
        dead = (_is_in64(sorted_unique(np.concatenate(ready_keys), "S64"), keys) & ~is_live
                if ready_keys else np.zeros(len(recs), dtype=bool))
        dead &= _not_reput(ready, keys, listing, packs, pack_of)
        lease.check()
        _sweep(rrepo, lease, recs, packs, segments, dead, listing, repack_threshold, res)
        for s in ready:
            for suffix in (".set", ".sessions"):
                try:
                    rrepo.remote.delete(s.name + suffix)
                except RemoteError:
                    pass
    return res


def _is_in64(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Membership of S64 keys (object id + pack id): by the object id first (fast), then the
    whole key for the few candidates."""
    if not len(sorted_keys) or not len(query):
        return np.zeros(len(query), dtype=bool)
    k_ids = np.frombuffer(sorted_keys.tobytes(), dtype="S32")[::2]
    q_ids = np.frombuffer(np.ascontiguousarray(query, dtype="S64").tobytes(), dtype="S32")[::2]
    cand = np.nonzero(_is_in(sorted_unique(k_ids), q_ids))[0]
    out = np.zeros(len(query), dtype=bool)
    if len(cand):
        q = query[cand]
        pos = np.searchsorted(sorted_keys, q)
        pc = np.minimum(pos, len(sorted_keys) - 1)
        out[cand] = (pos < len(sorted_keys)) & (sorted_keys[pc] == q)
    return out


def indexed_times(store: Any) -> dict[bytes, int]:
    """For each pack, when it was last indexed: the newest creation time (the writer's clock)
    of the index segments naming it, read from the mirrored segments' headers."""
    out: dict[bytes, int] = {}
    for name in store.index.segment_names():
        try:
            with open(store.index_dir / f"{name}.idx", "rb") as f:
                head = f.read(12)
                (hlen,) = struct.unpack_from("<I", head, 8)
                _v, seg_packs, _sup, created = msgpack.unpackb(f.read(hlen), raw=False)
        except (OSError, ValueError, struct.error, TypeError, msgpack.UnpackException):
            continue  # unreadable here: its packs count as young (no time)
        for p in seg_packs:
            pid = bytes(p)
            if created > out.get(pid, 0):
                out[pid] = int(created)
    return out


def pack_time(pack_id: bytes, info: Any, indexed: dict[bytes, int]) -> int:
    """A pack's age reference (ns): the youngest of when it was last indexed and, when the
    backend reports it, its LastModified. Unknown: now (young)."""
    t = indexed.get(pack_id, 0)
    if info is not None and info.mtime is not None:
        t = max(t, int(info.mtime * 1e9))
    return t or time.time_ns()


def _not_reput(ready: list[CondemnedSet], keys: np.ndarray, listing: dict[str, Any],
               packs: list[bytes], pack_of: np.ndarray) -> np.ndarray:
    """False for copies in packs that were uploaded again under the same name after the set
    condemning them (a push uploads a big local pack verbatim, under the local pack's name):
    such a pack must not be deleted. Seen as (object, pack) records indexed twice (the
    re-upload's index segment repeats them; compaction folds them back), or, where the backend
    reports LastModified, as a pack modified after the set."""
    ok = np.ones(len(keys), dtype=bool)
    if not len(keys):
        return ok
    # keys are in index order (sorted by object id): repeated records of a copy are neighbours
    # unless another copy of the same object sits between them; sort to be sure
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    dup = np.zeros(len(keys), dtype=bool)
    same = sk[1:] == sk[:-1]
    dup[order[1:][same]] = True
    dup[order[:-1][same]] = True
    if dup.any():
        reput_packs = np.unique(pack_of[dup])
        ok &= ~np.isin(pack_of, reput_packs)
    stamped = [s for s in ready if s.mtime is not None]
    if not stamped:
        return ok
    earliest = min(s.mtime for s in stamped)  # type: ignore[type-var]
    reput = np.array([(k := listing.get(pack_key(p))) is not None and k.mtime is not None
                      and k.mtime > earliest for p in packs], dtype=bool)
    for pno in np.nonzero(reput)[0]:
        mt = listing[pack_key(packs[pno])].mtime
        rows = np.nonzero(pack_of == pno)[0]
        for s in stamped:
            if s.keys is not None and mt > s.mtime:
                ok[rows[_is_in64(s.keys, keys[rows])]] = False
    return ok


def _account(res: GcResult, recs: np.ndarray, plan: Any, packs: list[bytes],
             listing: dict[str, Any]) -> None:
    stored = recs["stored"].astype(np.int64)
    res.removed_objects += count_distinct_sorted(recs["id"][plan.removed])
    res.removed_bytes += int(stored[plan.removed].sum())
    res.packs_deleted += len(plan.delete)
    res.packs_repacked += len(plan.repack)
    res.packs_written += len(plan.groups)


def _sweep(rrepo: RemoteRepository, lease: Any, recs: np.ndarray, packs: list[bytes],
           segments: list[str], dead: np.ndarray, listing: dict[str, Any], threshold: float,
           res: GcResult) -> None:
    store = rrepo.objects
    present = np.array([pack_key(p) in listing for p in packs], dtype=bool)
    plan = plan_sweep(recs, len(packs), dead, present, threshold)
    gone = plan.delete + plan.repack
    if not gone and len(segments) <= COMPACT_SEGMENTS:
        return  # nothing to remove, and few segments: leave the index as it is
    pack_of = recs["pack"].astype(np.int64)
    # 1. rewrite the live objects of partly dead packs, upload them
    written = []
    new_bytes = 0
    tmp = rrepo.root / "tmp"
    for rows in plan.groups:
        w = PackWriter(None, tmp)
        try:
            copy_objects(store, recs, packs, rows, w)
            pid, entries, path = w.finish()
        except BaseException:
            w.discard()
            raise
        try:
            new_bytes += os.path.getsize(path)
            rrepo.remote.put_file(pack_key(pid), str(path))
        finally:
            path.unlink(missing_ok=True)
        written.append((pid, entries))
    # 2. one index segment superseding the segments read (not any written since: a push's)
    remote_segments = {k.key[len("index/"):-4] for k in rrepo.remote.list("index/")
                       if k.key.endswith(".idx")}
    leftovers = remote_segments & set(getattr(store.index, "_superseded", set()))
    old = sorted(set(segments) | leftovers)
    keep = ~plan.gone[pack_of]
    data = compacted_segment(recs, packs, keep, written, old)
    name = blake3.blake3(data).hexdigest()
    lease.check()
    rrepo.remote.put(f"index/{name}.idx", data)
    # 3. deletions: old segments, then the packs
    lease.check()
    for n in old:
        if n != name and n in remote_segments:
            try:
                rrepo.remote.delete(f"index/{n}.idx")
            except RemoteNotFound:
                pass
    freed = 0
    for n, p in enumerate(gone):
        if n % 32 == 31:
            lease.check()  # stop deleting as soon as another gc could have taken over
        key = pack_key(packs[p])
        freed += listing[key].size
        try:
            rrepo.remote.delete(key)
        except RemoteNotFound:
            pass
    _account(res, recs, plan, packs, listing)
    res.bytes_freed += freed - new_bytes
    store.refresh()
