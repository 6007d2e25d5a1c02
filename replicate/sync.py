"""push and pull: move objects and refs between the local repository and a remote.

push:
1. finish an interrupted push (packs uploaded but not yet indexed, from the journal);
2. find what the remote lacks by walking from each local head against the remote's index
   segments (mirrored locally: no per-object existence checks);
3. upload packs in parallel: a local pack goes up verbatim when the remote lacks nearly all
   of it, otherwise the missing entries are copied (still compressed) into new packs;
4. write one index segment for everything uploaded, then move each experiment's remote ref
   (a create-only log entry: losing the race means another writer won), then add a catalog
   record so ``ls`` on any machine sees the experiments.
pull mirrors it, and also moves refs last. Both resume after an interruption.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from replicate.errors import CorruptObjectError, RefConflict
from replicate.fsutil import flocked, fsync_dir, write_atomic
from replicate.objects import codec, pack
from replicate.objects.codec import Checkpoint
from replicate.objects.index import Location, encode_segment, records_of, write_segment
from replicate.objects.store import DATA_PACK_TARGET, META_PACK_TARGET, ObjectStore, PackWriter
from replicate.query import Summary, summarize
from replicate.remote_repo import RemoteRepository, cache_key, pack_key
from replicate.repository import Repository

VERBATIM_SHARE = 0.9  # upload a whole local pack when the remote lacks at least this share
VERBATIM_MIN = 16 * 1024 * 1024  # ... and it is big; small packs are merged (fewer requests)

Progress = Callable[[str, int, int], None]  # (phase, done, total) in bytes


@dataclass
class TransferResult:
    """What a push or pull did."""

    experiments: list[str] = field(default_factory=list)  # experiments whose ref moved
    packs: int = 0
    bytes: int = 0
    objects: int = 0
    skipped: list[str] = field(default_factory=list)  # "<id>: reason"
    resumed_packs: int = 0

    @property
    def up_to_date(self) -> bool:
        return not self.experiments and not self.packs


# --- walking ----------------------------------------------------------------------------------


def missing_objects(
    store: ObjectStore,
    heads: Iterable[bytes],
    have: Callable[[list[bytes]], np.ndarray],
    tombstones: set[bytes],
    resumed: Resumed | None = None,
) -> dict[bytes, Location]:
    """Every object reachable from ``heads`` that ``have`` says the destination lacks.

    The walk stops at objects the destination's index has: an index only ever lists objects
    whose whole closure is stored (a push or pull indexes what it transferred only once all of
    it is there). Objects of ``resumed`` (transferred by an interrupted run, not indexed yet)
    are not transferred again, but the walk goes on below them, and the ones reached are
    marked ``resumed.reused`` so that they are indexed with this run's objects."""
    out: dict[bytes, Location] = {}
    seen: set[bytes] = set()
    todo = [h for h in heads]
    while todo:
        batch = [o for o in dict.fromkeys(todo) if o not in seen]
        todo = []
        if not batch:
            continue
        seen.update(batch)
        present = have(batch)
        for oid, p in zip(batch, present):
            if p:
                continue
            loc = store.locate(oid)
            if resumed is not None and oid in resumed.entries:
                resumed.reused.add(oid)
            else:
                out[oid] = loc
            if loc.type == codec.CHUNK:
                continue
            subs, chunks = codec.children(store.read_object(oid), oid not in tombstones)
            todo.extend(subs)
            todo.extend(chunks)
    return out


def is_ancestor(store: ObjectStore, eid: bytes, ancestor: bytes, head: bytes) -> bool:
    """True if ``ancestor`` is ``head`` or lies on its checkpoint chain (the experiment's own
    ID stands for 'before the first checkpoint')."""
    if ancestor in (eid, head):
        return True
    cur: bytes | None = head if head != eid else None
    while cur is not None:
        if cur == ancestor:
            return True
        obj = store.read_object(cur)
        if not isinstance(obj, Checkpoint):
            return False
        cur = obj.parent
    return False


def _pack_totals(store: ObjectStore) -> dict[bytes, int]:
    recs = store.index.all_records()
    totals: dict[bytes, int] = defaultdict(int)
    if len(recs):
        packs = recs["pack"]
        sizes = recs["stored"].astype(np.int64)
        sums = np.bincount(packs, weights=sizes, minlength=len(store.index.packs))
        for i, s in enumerate(sums):
            if s:
                totals[store.index.packs[i]] = int(s)
    return totals


def _entries_of_local_pack(store: ObjectStore, pack_id: bytes) -> list[pack.PackEntry]:
    from replicate.fsck import read_pack_entries

    return read_pack_entries(store, pack_id)


# --- push -------------------------------------------------------------------------------------


class _Journal:
    """Packs uploaded by a push whose index segment is not written yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[bytes, list[pack.PackEntry]]] = []
        self.new = 0  # items added by this run (the others were loaded: an earlier run's)
        self.lock = threading.Lock()

    def load(self) -> list[tuple[bytes, list[pack.PackEntry]]]:
        try:
            raw = msgpack.unpackb(self.path.read_bytes(), raw=False)
            return [(bytes(p), [pack.PackEntry(bytes(e[0]), *e[1:]) for e in ents])
                    for p, ents in raw]
        except (OSError, ValueError, TypeError, msgpack.UnpackException):
            return []

    def add(self, pid: bytes, entries: list[pack.PackEntry]) -> None:
        with self.lock:
            self.items.append((pid, entries))
            self.new += 1
            data = msgpack.packb(
                [[p, [[e.id, e.type, e.offset, e.stored_len, e.raw_len, e.codec] for e in ents]]
                 for p, ents in self.items],
                use_bin_type=True,
            )
            write_atomic(self.path, data)

    def clear(self) -> None:
        self.items = []
        self.new = 0
        self.path.unlink(missing_ok=True)


class Resumed:
    """Packs transferred by an interrupted push or pull (from its journal) and still there:
    their objects need not be transferred again; those this run reaches (``reused``) are
    indexed together with what it transfers."""

    def __init__(self, items: list[tuple[bytes, list[pack.PackEntry]]]) -> None:
        self.items = items
        self.entries = {e.id for _p, ents in items for e in ents}
        self.reused: set[bytes] = set()

    def take(self) -> list[tuple[bytes, list[pack.PackEntry]]]:
        """The reused entries, by pack (once: afterwards they are indexed)."""
        out = [(p, [e for e in ents if e.id in self.reused]) for p, ents in self.items]
        out = [(p, ents) for p, ents in out if ents]
        self.items, self.entries = [], set()
        return out


def remote_cache_dir(repo: Repository, url: str) -> Path:
    """Where a local repository caches what it knows of a remote."""
    return repo.root / "remotes" / cache_key(url)


def open_remote_repo(repo: Repository, url: str, base: Path | None = None) -> RemoteRepository:
    """The remote repository at ``url`` with its caches inside the local repository."""
    from replicate.remotes import open_remote

    remote = open_remote(url, base)
    return RemoteRepository(remote.url, remote, remote_cache_dir(repo, remote.url))


def _write_remote_segment(rrepo: RemoteRepository,
                          entries: list[tuple[bytes, list[pack.PackEntry]]]) -> None:
    packs, recs = records_of(entries)
    data = encode_segment(packs, recs)
    import blake3

    name = blake3.blake3(data).hexdigest()
    rrepo.remote.put(f"index/{name}.idx", data)
    # keep our mirror of the remote index current without listing again
    write_atomic(rrepo.objects.index_dir / f"{name}.idx", data, durable=False)
    rrepo.objects.index.refresh()


def push(
    repo: Repository,
    rrepo: RemoteRepository,
    experiments: list[bytes] | None = None,
    progress: Progress | None = None,
    connections: int | None = None,
) -> TransferResult:
    """Push experiments (all by default) from ``repo`` to ``rrepo``."""
    res = TransferResult()
    say = progress or (lambda _p, _d, _t: None)
    if rrepo.cached_config() is None:  # else known to exist: it is created once, never changed
        rrepo.ensure_config(repo.config)
    journal = _Journal(rrepo.root / "push-journal")

    # 1. an interrupted push: what it uploaded is reused (indexed with this push's packs, and
    # only the objects this push reaches: an index must never list an object whose closure is
    # not all there). The journal keeps naming those packs until then.
    pending = journal.load()
    done = [(p, e) for p, e in pending if rrepo.remote.exists(pack_key(p))]
    journal.items = list(done)
    resumed = Resumed(done)

    from replicate.remote_gc import PushSession

    try:
        with PushSession(rrepo):
            _push_in_session(repo, rrepo, experiments, res, journal, say, connections, resumed)
    finally:
        if rrepo.config_source == "created":
            rrepo.config_source = "remote"  # a later push with this object: not new any more
    return res


def _index_uploads(rrepo: RemoteRepository, journal: _Journal, resumed: Resumed,
                   res: TransferResult) -> None:
    """Write the index segment for what this push uploaded and the resumed objects it reached
    (before any ref moves), then forget the journal."""
    carried = resumed.take()
    res.resumed_packs += len(carried)
    fresh = journal.items[len(journal.items) - journal.new:]
    entries = carried + fresh
    if entries:
        _write_remote_segment(rrepo, entries)
    journal.clear()


def _push_in_session(repo: Repository, rrepo: RemoteRepository, experiments: list[bytes] | None,
                     res: TransferResult, journal: _Journal, say: Progress,
                     connections: int | None, resumed: Resumed) -> None:
    from replicate.remote_gc import condemned_ids, condemned_sets, not_condemned

    sets = condemned_sets(rrepo)
    seen_sets = {s.name for s in sets}
    if rrepo.config_source == "created":
        rrepo.objects.reset_mirror()  # a new repository: nothing is indexed there yet
    else:
        rrepo.objects.refresh()  # may replace the index object: `have` is bound after it
    if rrepo.config_source == "cache" and not rrepo.objects.index.segment_names():
        rrepo.ensure_config(repo.config)  # an emptied remote? make sure its config exists
    have = not_condemned(rrepo.objects.index.contains_many, condemned_ids(sets))
    repo.objects.refresh()
    local = {bytes.fromhex(n.split("/", 1)[1]): h for n, h in repo.refs.list("experiments").items()}
    if experiments is not None:
        local = {e: local[e] for e in experiments if e in local}
    # A remote whose config this push just created has no refs yet: no need to list them
    # (were that wrong, the create-only ref writes below would still catch it).
    remote_heads = {} if rrepo.config_source == "created" else rrepo.refs.heads(refresh=True)
    todo = {e: h for e, h in local.items() if remote_heads.get(e, (0, None))[1] != h}
    tomb_local = set(repo.refs.list("removed").values())
    tomb_remote = rrepo.refs.tombstones() if tomb_local else set()

    # 2. what the remote lacks (a condemned object counts as lacking: it is uploaded again)
    missing = missing_objects(repo.objects, list(todo.values()), have, tomb_local, resumed)
    res.objects = len(missing)
    if not missing and resumed.reused:
        _index_uploads(rrepo, journal, resumed, res)  # all there already, from the last push

    # 3. upload; then, at the commit point, make sure no gc condemned what we rely on
    if missing:
        _upload(repo, rrepo, missing, journal, res, say, connections)
        _index_uploads(rrepo, journal, resumed, res)
    # Commit-time validation: a gc that condemned objects since we looked may have condemned
    # some this push relies on without uploading them (anywhere below the heads, not only at
    # the frontier of what was missing). Upload those again until no new set appears.
    while todo:
        sets = condemned_sets(rrepo)
        new = [x for x in sets if x.name not in seen_sets]
        if not new:
            break
        seen_sets |= {x.name for x in new}
        cond = condemned_ids(new)
        everything = missing_objects(repo.objects, list(todo.values()),
                                     lambda oids: np.zeros(len(oids), dtype=bool), tomb_local)
        ids = list(everything)
        hit = not_condemned(lambda o: np.ones(len(o), dtype=bool), cond)(ids) if ids else []
        again = {o: everything[o] for o, ok in zip(ids, hit) if not ok}
        if again:
            res.objects += len(again)
            _upload(repo, rrepo, again, journal, res, say, connections)
            _index_uploads(rrepo, journal, resumed, res)

    # 4. refs, then the catalog. Experiments whose ref is about to move are noted locally
    # first, so that a push interrupted before its catalog record adds it next time.
    pending = _CatalogPending(rrepo.root / "catalog-pending")
    pending.add(todo)
    moved_heads = _move_refs(repo, rrepo, todo, remote_heads, res, connections)
    moved: list[Summary] = [summarize(repo, eid, head) for eid, head in moved_heads]
    recorded = dict(moved_heads)
    for eid, head in pending.load().items():
        if eid not in recorded and local.get(eid) == head and \
                remote_heads.get(eid, (0, None))[1] == head:
            moved.append(summarize(repo, eid, head))  # its ref moved in an interrupted push
            recorded[eid] = head
    for cid in tomb_local - tomb_remote:
        rrepo.refs.add_tombstone(cid)
    # experiments deleted here (rm) and still alive on the remote
    deleted: list[bytes] = []
    gone = getattr(repo.refs, "deleted_experiments", lambda: set())()
    for eid in sorted(gone):
        if eid in local or (experiments is not None and eid not in experiments):
            continue
        cur = remote_heads.get(eid)
        if cur is None or cur[1] is None:
            continue
        record = {"old": cur[1].hex(), "new": None, "time_ns": time.time_ns(),
                  "host": socket.gethostname(), "message": "rm"}
        try:
            rrepo.refs.advance(eid, cur[0], None, record)
            deleted.append(eid)
        except RefConflict:
            res.skipped.append(f"{eid.hex()[:7]}: changed on the remote; not deleted there")
    if moved or deleted:
        add_catalog_record(rrepo, moved, deleted)
    pending.remove({e: h for e, h in pending.load().items()
                    if recorded.get(e) == h or e in todo and e not in recorded})


REF_WORKERS = 32  # create-only ref PUTs in flight (pushing 10,000 experiments = 10,000 PUTs)


def _move_refs(repo: Repository, rrepo: RemoteRepository, todo: dict[bytes, bytes],
               listed: dict[bytes, tuple[int, bytes | None]], res: TransferResult,
               connections: int | None) -> list[tuple[bytes, bytes]]:
    """Create each experiment's next ref log entry, in parallel, starting from the heads
    listed at the start of the push (re-read only when another writer got there first).
    Returns the (experiment, head) pairs moved, in ``todo`` order."""

    def move(eid: bytes, head: bytes) -> str | None:
        cur = listed.get(eid)
        for _attempt in range(20):
            seq, rhead = cur if cur is not None else (0, None)
            if rhead == head:
                return ""  # already there (another push of the same head)
            if rhead is not None and not is_ancestor(repo.objects, eid, rhead, head):
                if rrepo.objects.has(rhead) and is_ancestor(rrepo.objects, eid, head, rhead):
                    return f"{eid.hex()[:7]}: the remote is ahead; pull first"
                return f"{eid.hex()[:7]}: histories diverged; not pushed"
            record = {"old": rhead.hex() if rhead else None, "new": head.hex(),
                      "time_ns": time.time_ns(), "host": socket.gethostname()}
            try:
                rrepo.refs.advance(eid, seq, head, record)
                return None
            except RefConflict:
                cur = rrepo.refs.head(eid)
        return f"{eid.hex()[:7]}: the remote ref keeps changing; not pushed"

    items = list(todo.items())
    if len(items) <= 1:
        outcomes = [move(e, h) for e, h in items]
    else:
        n = min(len(items), max(REF_WORKERS, connections or 0))
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="replicate-refs") as ex:
            outcomes = list(ex.map(lambda it: move(*it), items))
    moved = []
    for (eid, head), outcome in zip(items, outcomes):
        if outcome is None:
            res.experiments.append(eid.hex())
            moved.append((eid, head))
        elif outcome:
            res.skipped.append(outcome)
    return moved


class _CatalogPending:
    """Experiments whose remote ref a push is moving, until their catalog record is written
    (a small local file: experiment id -> head)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[bytes, bytes]:
        try:
            raw = msgpack.unpackb(self.path.read_bytes(), raw=False)
            return {bytes(k): bytes(v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError, msgpack.UnpackException):
            return {}

    def _save(self, items: dict[bytes, bytes]) -> None:
        if items:
            write_atomic(self.path, msgpack.packb(items, use_bin_type=True))
        else:
            self.path.unlink(missing_ok=True)

    def add(self, items: dict[bytes, bytes]) -> None:
        if items:
            cur = self.load()
            cur.update(items)
            self._save(cur)

    def remove(self, items: dict[bytes, bytes]) -> None:
        if items:
            cur = self.load()
            self._save({e: h for e, h in cur.items() if items.get(e) != h})


def _upload(repo: Repository, rrepo: RemoteRepository, missing: dict[bytes, Location],
            journal: _Journal, res: TransferResult, say: Progress,
            connections: int | None) -> None:
    store = repo.objects
    by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
    for oid, loc in missing.items():
        by_pack[loc.pack].append((oid, loc))
    totals = _pack_totals(store)
    total_bytes = sum(loc.stored_len for loc in missing.values())
    sent = 0
    lock = threading.Lock()
    tmp_dir = repo.root / "tmp"
    workers = connections or rrepo.remote.properties.connections
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replicate-push")
    inflight: list[Future[None]] = []

    def upload(pid: bytes, path: Path, entries: list[pack.PackEntry], temp: bool) -> None:
        nonlocal sent
        try:
            rrepo.remote.put_file(pack_key(pid), str(path))
        finally:
            if temp:
                path.unlink(missing_ok=True)
        journal.add(pid, entries)
        size = sum(e.stored_len for e in entries)
        with lock:
            sent += size
            res.packs += 1
            res.bytes += size
        say("upload", sent, total_bytes)

    def submit(pid: bytes, path: Path, entries: list[pack.PackEntry], temp: bool) -> None:
        while len([f for f in inflight if not f.done()]) > workers:
            for f in inflight:
                if not f.done():
                    f.result()
                    break
        inflight.append(ex.submit(upload, pid, path, entries, temp))

    writers: dict[bool, PackWriter | None] = {True: None, False: None}

    def flush(is_chunk: bool) -> None:
        w = writers[is_chunk]
        if w is not None and w.entries:
            pid, entries, path = w.finish()
            submit(pid, path, entries, True)
        writers[is_chunk] = None

    try:
        for pid, items in by_pack.items():
            need = sum(loc.stored_len for _, loc in items)
            total = totals.get(pid, need + 1)
            if (need >= VERBATIM_SHARE * total and total >= VERBATIM_MIN
                    and all(loc.type == codec.CHUNK for _, loc in items)):
                entries = _entries_of_local_pack(store, pid)
                if all(e.type == codec.CHUNK for e in entries):
                    submit(pid, store.pack_path(pid), entries, False)
                    continue
            for oid, loc in items:
                is_chunk = loc.type == codec.CHUNK
                w = writers[is_chunk]
                if w is None:
                    w = writers[is_chunk] = PackWriter(None, tmp_dir)
                w.append(oid, loc.type, store.read_stored(loc), loc.raw_len, loc.codec)
                if w.size >= (DATA_PACK_TARGET if is_chunk else META_PACK_TARGET):
                    flush(is_chunk)
        flush(True)
        flush(False)
        for f in inflight:
            f.result()
    finally:
        for w in writers.values():
            if w is not None:
                w.discard()
        ex.shutdown(wait=True)


# --- catalog ----------------------------------------------------------------------------------


def add_catalog_record(rrepo: RemoteRepository, summaries: list[Summary],
                       deleted: list[bytes]) -> None:
    """Add one catalog record (summaries of experiments just pushed, deletions)."""
    body = msgpack.packb(
        [1, time.time_ns(), [s.to_list() for s in summaries], list(deleted)], use_bin_type=True
    )
    key = f"catalog/log/{time.time_ns():020d}-{secrets.token_hex(4)}.rec"
    rrepo.remote.put(key, body)


# --- pull -------------------------------------------------------------------------------------


def pull(
    repo: Repository,
    rrepo: RemoteRepository,
    experiments: list[bytes] | None = None,
    progress: Progress | None = None,
    connections: int | None = None,
) -> TransferResult:
    """Pull experiments (all by default) from ``rrepo`` into ``repo``."""
    res = TransferResult()
    say = progress or (lambda _p, _d, _t: None)
    if rrepo.cached_config() is None:
        rrepo.config()
    rrepo.objects.refresh()
    # Plan under the writers' (shared) gc lock: what the plan counts on finding locally must
    # not be collected by a gc before the refs that need it move.
    with flocked(repo.root / "gc.lock"):
        repo.objects.refresh()
        heads = {e: h for e, (_s, h) in rrepo.refs.heads(refresh=True).items() if h is not None}
        if experiments is not None:
            heads = {e: heads[e] for e in experiments if e in heads}
        todo = {e: h for e, h in heads.items() if repo.refs.read(repo.experiment_ref(e)) != h}
        tombs = rrepo.refs.tombstones()
        # packs downloaded by an interrupted pull are reused (see push)
        journal = _Journal(rrepo.root / "pull-journal")
        done = [(p, e) for p, e in journal.load() if repo.objects.pack_path(p).is_file()]
        journal.items = list(done)
        resumed = Resumed(done)
        missing = missing_objects(
            rrepo.objects, list(todo.values()), repo.objects.index.contains_many, tombs, resumed
        )
        res.objects = len(missing)
        _pull_locked(repo, rrepo, missing, todo, tombs, res, say, connections, journal, resumed)
    return res


def _pull_locked(repo: Repository, rrepo: RemoteRepository, missing: dict[bytes, Location],
                 todo: dict[bytes, bytes], tombs: set[bytes], res: TransferResult,
                 say: Progress, connections: int | None, journal: _Journal,
                 resumed: Resumed) -> None:
    if missing:
        _download(repo, rrepo, missing, res, say, connections, journal)
    # index everything at once, before any ref moves: an index lists only complete closures
    carried = resumed.take()
    res.resumed_packs += len(carried)
    entries = carried + journal.items[len(journal.items) - journal.new:]
    if entries:
        from replicate.objects.index import encode_segment as enc

        packs, recs = records_of(entries)
        name = write_segment(repo.objects.index_dir, enc(packs, recs))
        repo.objects.index.add_local(packs, recs, name)
    journal.clear()
    for eid, head in todo.items():
        ref = repo.experiment_ref(eid)
        cur = repo.refs.read(ref)
        if cur is not None and not is_ancestor(repo.objects, eid, cur, head):
            if is_ancestor(repo.objects, eid, head, cur):
                res.skipped.append(f"{eid.hex()[:7]}: the local copy is ahead; push it")
            else:
                res.skipped.append(f"{eid.hex()[:7]}: histories diverged; not pulled")
            continue
        try:
            repo.refs.update(ref, head, old=cur, message=f"pull {rrepo.url}")
        except RefConflict:
            res.skipped.append(f"{eid.hex()[:7]}: changed locally during the pull")
            continue
        res.experiments.append(eid.hex())
    for cid in tombs:
        name = f"removed/{cid.hex()}"
        if repo.refs.read(name) is None:
            repo.refs.update(name, cid, message=f"pull {rrepo.url}")


def _download(repo: Repository, rrepo: RemoteRepository, missing: dict[bytes, Location],
              res: TransferResult, say: Progress, connections: int | None,
              journal: _Journal) -> None:
    """Download what is missing into local packs (durable, not indexed yet: the caller
    indexes them all at once), noting each pack in the journal."""
    store = repo.objects
    by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
    for oid, loc in missing.items():
        by_pack[loc.pack].append((oid, loc))
    totals = _pack_totals(rrepo.objects)
    total_bytes = sum(loc.stored_len for loc in missing.values())
    got = 0
    lock = threading.Lock()
    workers = connections or rrepo.remote.properties.connections

    def fetch_pack(pid: bytes, items: list[tuple[bytes, Location]]) -> None:
        nonlocal got
        need = sum(loc.stored_len for _, loc in items)
        tmp_dir = repo.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if need >= VERBATIM_SHARE * totals.get(pid, need + 1):
            tmp = tmp_dir / f"pull-{os.getpid()}-{secrets.token_hex(6)}.tmp"
            try:
                held = rrepo.objects.pack_in_memory(pid)  # fetched whole by the walk
                if held is not None:
                    with open(tmp, "xb") as f:
                        f.write(held)
                        os.fsync(f.fileno())
                else:
                    rrepo.remote.get_file(pack_key(pid), str(tmp))
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                entries = _verify_pack_file(tmp, pid)
                dest = store.pack_path(pid)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
                fsync_dir(dest.parent)
            finally:
                tmp.unlink(missing_ok=True)
            # index the chunks, and only the structured objects this pull walked (another
            # experiment's checkpoint in the same pack must not look complete locally)
            needed = {oid for oid, _loc in items}
            journal.add(pid, [e for e in entries if e.type == codec.CHUNK or e.id in needed])
        else:
            w = PackWriter(store)
            try:
                for oid, loc in items:
                    stored = rrepo.objects.read_stored(loc)
                    _verify_stored(oid, loc, stored, rrepo.url)
                    w.append(oid, loc.type, stored, loc.raw_len, loc.codec)
                npid, entries = w.seal()
            except BaseException:
                w.discard()
                raise
            journal.add(npid, entries)
        with lock:
            got += need
            res.packs += 1
            res.bytes += need
        say("download", got, total_bytes)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replicate-pull") as ex:
        futs = [ex.submit(fetch_pack, p, items) for p, items in by_pack.items()]
        for f in futs:
            f.result()


def _verify_stored(oid: bytes, loc: Location, stored: bytes, where: str) -> None:
    from replicate.objects import compress
    from replicate.objects.ids import hash_chunk, hash_object

    try:
        raw = compress.decompress(loc.codec, stored, loc.raw_len)
    except ValueError as e:
        raise CorruptObjectError(f"cannot decompress ({e})", oid.hex(), where) from None
    h = hash_chunk(raw) if loc.type == codec.CHUNK else hash_object(raw)
    if h != oid:
        raise CorruptObjectError("hash mismatch", oid.hex(), where)


def _verify_pack_file(path: Path, pid: bytes) -> list[pack.PackEntry]:
    size = path.stat().st_size
    where = str(path)
    with open(path, "rb") as f:
        if f.read(len(pack.HEADER)) != pack.HEADER:
            raise CorruptObjectError("bad pack header", location=where)
        f.seek(size - pack.TRAILER_LEN)
        flen, fhash = pack.parse_trailer(f.read(pack.TRAILER_LEN), where)
        f.seek(size - pack.TRAILER_LEN - flen)
        footer = f.read(flen)
    if pack.pack_id_of_footer(footer) != pid:
        raise CorruptObjectError("downloaded pack does not match its name", location=where)
    return pack.decode_footer(footer, fhash, size, where)


def describe(res: TransferResult) -> dict[str, Any]:
    """A JSON-friendly summary."""
    return {"experiments": res.experiments, "packs": res.packs, "bytes": res.bytes,
            "objects": res.objects, "skipped": res.skipped, "resumed_packs": res.resumed_packs}

