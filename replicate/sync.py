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
from replicate.fsutil import flocked, write_atomic
from replicate.objects import codec, pack
from replicate.objects.codec import Checkpoint, Experiment, File, Segment, Tree
from replicate.objects.index import RECORD, Location, encode_segment, write_segment
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
) -> dict[bytes, Location]:
    """Every object reachable from ``heads`` that ``have`` says the destination lacks."""
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
            out[oid] = loc
            if loc.type == codec.CHUNK:
                continue
            obj = store.read_object(oid)
            if isinstance(obj, Checkpoint):
                todo.append(obj.experiment)
                if obj.parent is not None:
                    todo.append(obj.parent)
                if obj.files is not None and oid not in tombstones:
                    todo.append(obj.files)
            elif isinstance(obj, Experiment):
                if obj.code is not None:
                    todo.append(obj.code)
            elif isinstance(obj, Tree):
                todo.extend(e.id for e in obj.entries)
            elif isinstance(obj, File):
                todo.extend(c.id for c in obj.chunks)
                todo.extend(s.id for s in obj.segments)
            elif isinstance(obj, Segment):
                todo.extend(c.id for c in obj.chunks)
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


def _records(entries: list[tuple[bytes, list[pack.PackEntry]]]) -> tuple[list[bytes], np.ndarray]:
    packs = [p for p, _ in entries]
    n = sum(len(e) for _, e in entries)
    recs = np.zeros(n, dtype=RECORD)
    i = 0
    for pno, (_p, ents) in enumerate(entries):
        for e in ents:
            recs[i] = (e.id, pno, e.offset, e.stored_len, e.raw_len, e.codec, e.type, b"\0\0")
            i += 1
    return packs, recs


def _entries_of_local_pack(store: ObjectStore, pack_id: bytes) -> list[pack.PackEntry]:
    from replicate.fsck import read_pack_entries

    return read_pack_entries(store, pack_id)


# --- push -------------------------------------------------------------------------------------


class _Journal:
    """Packs uploaded by a push whose index segment is not written yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[bytes, list[pack.PackEntry]]] = []
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
            data = msgpack.packb(
                [[p, [[e.id, e.type, e.offset, e.stored_len, e.raw_len, e.codec] for e in ents]]
                 for p, ents in self.items],
                use_bin_type=True,
            )
            write_atomic(self.path, data)

    def clear(self) -> None:
        self.items = []
        self.path.unlink(missing_ok=True)


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
    packs, recs = _records(entries)
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
    rrepo.ensure_config(repo.config)
    journal = _Journal(rrepo.root / "push-journal")

    # 1. an interrupted push: index what it uploaded
    pending = journal.load()
    if pending:
        done = [(p, e) for p, e in pending if rrepo.remote.exists(pack_key(p))]
        if done:
            _write_remote_segment(rrepo, done)
            res.resumed_packs = len(done)
        journal.clear()

    from replicate.remote_gc import PushSession

    with PushSession(rrepo):
        _push_in_session(repo, rrepo, experiments, res, journal, say, connections)
    return res


def _push_in_session(repo: Repository, rrepo: RemoteRepository, experiments: list[bytes] | None,
                     res: TransferResult, journal: _Journal, say: Progress,
                     connections: int | None) -> None:
    from replicate.remote_gc import condemned_ids, condemned_sets, not_condemned

    sets = condemned_sets(rrepo)
    seen_sets = {s.name for s in sets}
    have = not_condemned(rrepo.objects.index.contains_many, condemned_ids(sets))
    rrepo.objects.refresh()
    repo.objects.refresh()
    local = {bytes.fromhex(n.split("/", 1)[1]): h for n, h in repo.refs.list("experiments").items()}
    if experiments is not None:
        local = {e: local[e] for e in experiments if e in local}
    remote_heads = rrepo.refs.heads(refresh=True)
    todo = {e: h for e, h in local.items() if remote_heads.get(e, (0, None))[1] != h}
    tomb_local = set(repo.refs.list("removed").values())
    tomb_remote = rrepo.refs.tombstones() if tomb_local else set()

    # 2. what the remote lacks (a condemned object counts as lacking: it is uploaded again)
    missing = missing_objects(repo.objects, list(todo.values()), have, tomb_local)
    res.objects = len(missing)

    # 3. upload; then, at the commit point, make sure no gc condemned what we rely on
    while missing:
        _upload(repo, rrepo, missing, journal, res, say, connections)
        _write_remote_segment(rrepo, journal.items)
        journal.clear()
        sets = condemned_sets(rrepo)
        if {s.name for s in sets} <= seen_sets:
            break
        seen_sets |= {s.name for s in sets}
        have = not_condemned(rrepo.objects.index.contains_many, condemned_ids(sets))
        missing = missing_objects(repo.objects, list(todo.values()), have, tomb_local)
        res.objects += len(missing)
    if not missing and todo:
        # nothing uploaded: still validate against sets that appeared since we looked
        sets = condemned_sets(rrepo)
        if not {s.name for s in sets} <= seen_sets:
            have = not_condemned(rrepo.objects.index.contains_many, condemned_ids(sets))
            again = missing_objects(repo.objects, list(todo.values()), have, tomb_local)
            if again:
                _upload(repo, rrepo, again, journal, res, say, connections)
                _write_remote_segment(rrepo, journal.items)
                journal.clear()

    # 4. refs, then the catalog
    moved: list[Summary] = []
    for eid, head in todo.items():
        for _attempt in range(20):
            cur = rrepo.refs.head(eid)
            seq, rhead = cur if cur is not None else (0, None)
            if rhead == head:
                break
            if rhead is not None and not is_ancestor(repo.objects, eid, rhead, head):
                if rrepo.objects.has(rhead) and is_ancestor(rrepo.objects, eid, head, rhead):
                    res.skipped.append(f"{eid.hex()[:7]}: the remote is ahead; pull first")
                else:
                    res.skipped.append(f"{eid.hex()[:7]}: histories diverged; not pushed")
                break
            record = {"old": rhead.hex() if rhead else None, "new": head.hex(),
                      "time_ns": time.time_ns(), "host": socket.gethostname()}
            try:
                rrepo.refs.advance(eid, seq, head, record)
            except RefConflict:
                continue
            res.experiments.append(eid.hex())
            moved.append(summarize(repo, eid, head))
            break
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
    rrepo.config()
    rrepo.objects.refresh()
    repo.objects.refresh()
    heads = {e: h for e, (_s, h) in rrepo.refs.heads(refresh=True).items() if h is not None}
    if experiments is not None:
        heads = {e: heads[e] for e in experiments if e in heads}
    todo = {e: h for e, h in heads.items()
            if repo.refs.read(repo.experiment_ref(e)) != h}
    tombs = rrepo.refs.tombstones()
    missing = missing_objects(rrepo.objects, list(todo.values()),
                              repo.objects.index.contains_many, tombs)
    res.objects = len(missing)
    with flocked(repo.root / "gc.lock"):
        _pull_locked(repo, rrepo, missing, todo, tombs, res, say, connections)
    return res


def _pull_locked(repo: Repository, rrepo: RemoteRepository, missing: dict[bytes, Location],
                 todo: dict[bytes, bytes], tombs: set[bytes], res: TransferResult,
                 say: Progress, connections: int | None) -> None:
    if missing:
        _download(repo, rrepo, missing, res, say, connections)
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
              res: TransferResult, say: Progress, connections: int | None) -> None:
    from replicate.objects.index import encode_segment as enc

    store = repo.objects
    by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
    for oid, loc in missing.items():
        by_pack[loc.pack].append((oid, loc))
    totals = _pack_totals(rrepo.objects)
    total_bytes = sum(loc.stored_len for loc in missing.values())
    got = 0
    lock = threading.Lock()
    workers = connections or rrepo.remote.properties.connections

    def install(entries: list[tuple[bytes, list[pack.PackEntry]]]) -> None:
        packs, recs = _records(entries)
        name = write_segment(store.index_dir, enc(packs, recs))
        store.index.add_local(packs, recs, name)

    def fetch_pack(pid: bytes, items: list[tuple[bytes, Location]]) -> None:
        nonlocal got
        need = sum(loc.stored_len for _, loc in items)
        tmp_dir = repo.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if need >= VERBATIM_SHARE * totals.get(pid, need + 1):
            tmp = tmp_dir / f"pull-{os.getpid()}-{secrets.token_hex(6)}.tmp"
            try:
                rrepo.remote.get_file(pack_key(pid), str(tmp))
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                entries = _verify_pack_file(tmp, pid)
                dest = store.pack_path(pid)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            with lock:
                install([(pid, entries)])
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
            with lock:
                install([(npid, entries)])
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

