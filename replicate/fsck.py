"""fsck: verify a repository's refs, objects, index and packs, and rebuild the index.

Checks (errors make fsck fail; warnings are garbage that gc collects):
- every pack's trailer and footer verify, and its name is the hash of its footer;
- every index record points into an existing pack and agrees with that pack's footer;
- every ref and reflog head points at an existing object, and everything reachable from
  the refs exists (checkpoint -> parent, experiment, files tree -> trees -> files -> segments ->
  chunks), with valid tree entry names;
- with ``read_data``: every entry of every pack decompresses and hashes to its ID.
Packs that no index segment names are warnings (a writer crashed after sealing them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from replicate.errors import CorruptObjectError, DoesNotExist, FsckError, RemoteNotFound
from replicate.objects import codec, compress, pack
from replicate.objects.codec import Tree
from replicate.objects.ids import hash_chunk, hash_object
from replicate.objects.index import RECORD, encode_segment, write_segment
from replicate.objects.store import ObjectStore
from replicate.repository import Repository


@dataclass
class FsckReport:
    """What fsck found."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    packs: int = 0
    objects: int = 0
    reachable: int = 0
    refs: int = 0

    @property
    def ok(self) -> bool:
        """True when no errors were found."""
        return not self.errors


def read_pack_entries(store: ObjectStore, pack_id: bytes) -> list[pack.PackEntry]:
    """Verify a pack's trailer and footer and return its entries."""
    p = store.pack_path(pack_id)
    where = str(p)
    size = p.stat().st_size
    with open(p, "rb") as f:
        if f.read(len(pack.HEADER)) != pack.HEADER:
            raise CorruptObjectError("bad pack header", location=where)
        if size < len(pack.HEADER) + pack.TRAILER_LEN:
            raise CorruptObjectError("pack too short", location=where)
        f.seek(size - pack.TRAILER_LEN)
        flen, fhash = pack.parse_trailer(f.read(pack.TRAILER_LEN), where)
        if flen > size - pack.TRAILER_LEN - len(pack.HEADER):
            raise CorruptObjectError("bad footer length", location=where)
        f.seek(size - pack.TRAILER_LEN - flen)
        footer = f.read(flen)
    if pack.pack_id_of_footer(footer) != pack_id:
        raise CorruptObjectError("pack name differs from its footer hash", location=where)
    return pack.decode_footer(footer, fhash, size, where)


def verify_entry(store: ObjectStore, pack_id: bytes, e: pack.PackEntry) -> None:
    """Re-read, decompress and re-hash one stored entry."""
    where = str(store.pack_path(pack_id))
    with open(store.pack_path(pack_id), "rb") as f:
        f.seek(e.offset)
        stored = f.read(e.stored_len)
    _verify_stored(stored, e, where)


def fsck(
    repo: Repository,
    read_data: bool = False,
    progress: Callable[[str], None] | None = None,
) -> FsckReport:
    """Check ``repo``; never raises for problems it finds (they go in the report).

    ``repo`` may also be a remote (``RemoteRepository``: see :func:`fsck_remote`); a project
    merged with its shared remote is checked through its local repository."""
    if _is_remote(repo):
        return fsck_remote(repo, read_data=read_data, progress=progress)
    repo = getattr(repo, "local", repo)  # a LayeredRepository: fsck acts on the local one
    rep = FsckReport()
    store = repo.objects
    store.refresh()
    say = progress or (lambda _m: None)

    # 1. packs
    say("checking packs")
    on_disk = store.list_packs()
    rep.packs = len(on_disk)
    footers: dict[bytes, dict[bytes, pack.PackEntry]] = {}
    for pid in on_disk:
        try:
            entries = read_pack_entries(store, pid)
        except (CorruptObjectError, OSError) as e:
            rep.errors.append(f"pack {pid.hex()}: {e}")
            continue
        footers[pid] = {e.id: e for e in entries}
        if read_data:
            for e in entries:
                try:
                    verify_entry(store, pid, e)
                except CorruptObjectError as exc:
                    rep.errors.append(str(exc))

    # 2. index <-> packs
    say("checking index")
    _check_index(store, footers, set(on_disk), rep)
    tmp = list(store.tmp_dir.glob("*")) if store.tmp_dir.is_dir() else []
    if tmp:
        rep.warnings.append(f"{len(tmp)} temporary file(s) in {store.tmp_dir} (interrupted writes)")

    # 3. refs and connectivity
    say("checking connectivity")
    seen: set[bytes] = set()
    tombstones = {v for v in repo.refs.list("removed").values()}
    for name, head in sorted(repo.refs.list("experiments").items()):
        rep.refs += 1
        _walk_ref(store, name, head, seen, tombstones, rep)
    rep.reachable = len(seen)
    for lock in repo.refs.stale_locks():
        rep.warnings.append(f"lock file {lock} exists (a writer is running or crashed)")
    return rep


def _check_index(store: ObjectStore, footers: dict[bytes, dict[bytes, pack.PackEntry]],
                 on_disk: set[bytes], rep: FsckReport, rebuild_hint: bool = True) -> None:
    """Every index record names an existing pack and agrees with its footer; every readable
    pack is indexed (else a warning: garbage of an interrupted write)."""
    hint = "; run fsck --rebuild-index" if rebuild_hint else ""
    for name, err in sorted(store.index.corrupt.items()):
        rep.errors.append(f"index segment {name}: {err}{hint}")
    recs = store.index.all_records()
    rep.objects = len(recs)
    indexed_packs: set[bytes] = set()
    missing_reported: set[bytes] = set()
    for r in recs:
        pid = store.index.packs[int(r["pack"])]
        oid = bytes(r["id"]).ljust(32, b"\0")
        indexed_packs.add(pid)
        ent = footers.get(pid, {}).get(oid)
        if pid not in footers:
            if pid not in on_disk and pid not in missing_reported:
                missing_reported.add(pid)
                rep.errors.append(f"index names missing pack {pid.hex()} (object {oid.hex()})")
            continue
        if ent is None or (ent.offset, ent.stored_len, ent.raw_len, ent.codec, ent.type) != (
            int(r["offset"]), int(r["stored"]), int(r["raw"]), int(r["codec"]), int(r["type"])
        ):
            rep.errors.append(
                f"index entry for {oid.hex()} disagrees with pack {pid.hex()}{hint}"
            )
    for pid in footers:
        if pid not in indexed_packs:
            rep.warnings.append(f"pack {pid.hex()} is not indexed (left by an interrupted write)")


def _walk_ref(
    store: ObjectStore,
    name: str,
    head: bytes,
    seen: set[bytes],
    tombstones: set[bytes],
    rep: FsckReport,
) -> None:
    stack: list[tuple[bytes, str]] = [(head, f"ref {name}")]
    while stack:
        oid, via = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        loc = store.index.lookup(oid)
        if loc is None:
            rep.errors.append(f"missing object {oid.hex()} (reached from {via})")
            continue
        if loc.type == codec.CHUNK:
            continue
        try:
            obj = store.read_object(oid)
        except (CorruptObjectError, DoesNotExist, RemoteNotFound) as e:
            rep.errors.append(f"{e} (reached from {via})")
            continue
        here = f"{codec.TYPE_NAMES[loc.type]} {oid.hex()[:12]}"
        if isinstance(obj, Tree):
            for e in obj.entries:
                try:
                    codec.check_name(e.name)
                except ValueError as exc:
                    rep.errors.append(f"tree {oid.hex()}: {exc}")
        subs, chunks = codec.children(obj, with_files=oid not in tombstones)
        stack.extend((x, here) for x in subs + chunks)


def rebuild_index(repo: Repository) -> tuple[int, int]:
    """Rebuild the index from pack footers alone: write one segment covering every readable
    pack that supersedes all current segments, then delete them. Returns (packs, objects)."""
    if _is_remote(repo):
        raise FsckError("--rebuild-index works on a local repository only (a remote's index is "
                        "rewritten by gc -R)")
    repo = getattr(repo, "local", repo)
    store = repo.objects
    store.refresh()
    old = store.index.segment_names()
    on_disk_names = sorted(n[:-4] for n in os.listdir(store.index_dir) if n.endswith(".idx"))
    packs: list[bytes] = []
    rows = []
    for pid in store.list_packs():
        try:
            entries = read_pack_entries(store, pid)
        except (CorruptObjectError, OSError):
            continue
        pno = len(packs)
        packs.append(pid)
        for e in entries:
            rows.append((e.id, pno, e.offset, e.stored_len, e.raw_len, e.codec, e.type, b"\0\0"))
    recs = np.array(rows, dtype=RECORD) if rows else np.zeros(0, dtype=RECORD)
    data = encode_segment(packs, recs, supersedes=sorted(set(old) | set(on_disk_names)))
    name = write_segment(store.index_dir, data)
    for n in set(old) | set(on_disk_names):
        if n != name:
            (store.index_dir / f"{n}.idx").unlink(missing_ok=True)
    repo.objects.index = type(store.index)(store.index_dir)
    repo.objects.index.refresh()
    return len(packs), len(rows)


# --- remotes --------------------------------------------------------------------------------

TAIL_READ = 64 * 1024  # one range read fetches the trailer and, usually, the whole footer


def _is_remote(repo: Any) -> bool:
    from replicate.remote_repo import RemoteRepository

    return isinstance(repo, RemoteRepository)


def _remote_pack_entries(remote: Any, key: str, size: int, pack_id: bytes,
                         data: bytes | None = None) -> list[pack.PackEntry]:
    """Verify a remote pack's trailer and footer with range reads (or from ``data``, the
    whole pack) and return its entries."""
    where = f"{remote.url}/{key}"
    if size < len(pack.HEADER) + pack.TRAILER_LEN:
        raise CorruptObjectError("pack too short", location=where)
    if data is not None:
        if len(data) != size:
            raise CorruptObjectError("pack size differs from its listing", location=where)
        if not data.startswith(pack.HEADER):
            raise CorruptObjectError("bad pack header", location=where)
        tail = data
    else:
        n = min(size, TAIL_READ)
        tail = remote.get_range(key, size - n, size)
    flen, fhash = pack.parse_trailer(tail[-pack.TRAILER_LEN:], where)
    if flen > size - pack.TRAILER_LEN - len(pack.HEADER):
        raise CorruptObjectError("bad footer length", location=where)
    if flen + pack.TRAILER_LEN <= len(tail):
        footer = tail[len(tail) - pack.TRAILER_LEN - flen : len(tail) - pack.TRAILER_LEN]
    else:
        footer = remote.get_range(key, size - pack.TRAILER_LEN - flen, size - pack.TRAILER_LEN)
    if pack.pack_id_of_footer(footer) != pack_id:
        raise CorruptObjectError("pack name differs from its footer hash", location=where)
    return pack.decode_footer(footer, fhash, size, where)


def _verify_entry_bytes(data: bytes, e: pack.PackEntry, where: str) -> None:
    _verify_stored(data[e.offset : e.offset + e.stored_len], e, where)


def _verify_stored(stored: bytes, e: pack.PackEntry, where: str) -> None:
    """Decompress and re-hash an entry's stored bytes."""
    try:
        raw = compress.decompress(e.codec, stored, e.raw_len)
    except ValueError as exc:
        raise CorruptObjectError(f"cannot decompress ({exc})", e.id.hex(), where) from None
    h = hash_chunk(raw) if e.type == codec.CHUNK else hash_object(raw)
    if h != e.id:
        raise CorruptObjectError("hash mismatch", e.id.hex(), where)


def fsck_remote(
    rrepo: Any,
    read_data: bool = False,
    progress: Callable[[str], None] | None = None,
) -> FsckReport:
    """Check a remote repository (``replicate fsck -R URL``): the same checks as locally,
    through the remote's API.

    - packs: one LIST of ``packs/``, then each pack's trailer and footer with one range read
      (two for a footer over 64 KiB), in parallel; with ``read_data`` every pack is
      downloaded and every entry re-hashed;
    - index <-> packs: the index segments (mirrored into the cache) against the footers;
    - refs: every experiment's ref log head, and everything it reaches (metadata read through
      the cache, chunks only looked up in the index);
    - the catalog (warnings only): every live experiment listed with its current head.

    Never raises for problems it finds; remote errors (unreachable, credentials) do raise."""
    from concurrent.futures import ThreadPoolExecutor

    from replicate.remote_repo import REFS, pack_key, parse_claim_key, parse_ref_key

    rep = FsckReport()
    say = progress or (lambda _m: None)
    remote = rrepo.remote
    rrepo.config()  # a missing bucket or repository is an error, not an empty report

    # 1. packs
    say("checking packs")
    sizes: dict[bytes, int] = {}
    for k in remote.list("packs/"):
        name = k.key.rsplit("/", 1)[-1]
        if not (name.endswith(".pack") and len(name) == 69):
            rep.warnings.append(f"unexpected key {k.key}")
            continue
        try:
            pid = bytes.fromhex(name[:64])
        except ValueError:
            rep.warnings.append(f"unexpected key {k.key}")
            continue
        if k.key != pack_key(pid):
            rep.warnings.append(f"pack {k.key} is not where its name says")
        sizes[pid] = k.size
    rep.packs = len(sizes)

    def check_pack(pid: bytes) -> tuple[bytes, list[pack.PackEntry] | None, list[str]]:
        key = pack_key(pid)
        errors: list[str] = []
        try:
            data = remote.get(key) if read_data else None
            entries = _remote_pack_entries(remote, key, sizes[pid], pid, data)
        except CorruptObjectError as e:
            return pid, None, [f"pack {pid.hex()}: {e}"]
        except RemoteNotFound:
            return pid, None, [f"pack {pid.hex()} vanished while checking it"]
        if data is not None:
            for e in entries:
                try:
                    _verify_entry_bytes(data, e, f"{remote.url}/{key}")
                except CorruptObjectError as exc:
                    errors.append(str(exc))
        return pid, entries, errors

    footers: dict[bytes, dict[bytes, pack.PackEntry]] = {}
    workers = max(1, min(16, getattr(remote.properties, "connections", 8)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replicate-fsck") as ex:
        for pid, entries, errors in ex.map(check_pack, sorted(sizes)):
            rep.errors.extend(errors)
            if entries is not None:
                footers[pid] = {e.id: e for e in entries}

    # 2. index <-> packs
    say("checking index")
    store = rrepo.objects
    store.refresh()
    _check_index(store, footers, set(sizes), rep, rebuild_hint=False)

    # 3. refs and connectivity
    say("checking connectivity")
    keys = [k.key for k in remote.list(REFS)]
    claimed: set[tuple[bytes, int]] = set()
    named: set[tuple[bytes, int]] = set()
    for key in keys:
        c, n = parse_claim_key(key), parse_ref_key(key)
        if c is not None:
            claimed.add(c)
        elif n is not None:
            named.add((n[0], n[1]))
        else:
            rep.warnings.append(f"unexpected key {key}")
    heads = rrepo.refs.resolve(keys)
    for eid, (seq, _head) in sorted(heads.items()):
        if (eid, seq) in claimed and (eid, seq) not in named:
            rep.warnings.append(
                f"the newest ref log entry of experiment {eid.hex()[:12]} has no name key (its "
                "push stopped in between: readers take the head from the entry; the next push "
                "of the experiment writes a complete one)")
    tombstones = rrepo.refs.tombstones()
    seen: set[bytes] = set()
    live: dict[bytes, bytes] = {}
    for eid, (_seq, head) in sorted(heads.items()):
        if head is None:
            continue  # deleted
        rep.refs += 1
        live[eid] = head
        _walk_ref(store, f"experiments/{eid.hex()}", head, seen, tombstones, rep)
    rep.reachable = len(seen)

    # 4. the catalog (what ls -R shows)
    say("checking catalog")
    from replicate import catalog

    items = catalog.load(rrepo, compact=False)
    for eid, head in sorted(live.items()):
        s = items.get(eid)
        if s is None:
            rep.warnings.append(f"experiment {eid.hex()[:12]} is not in the catalog (ls -R "
                                "does not list it); push it again to add it")
        elif s.head != head:
            rep.warnings.append(f"the catalog shows an older state of experiment "
                                f"{eid.hex()[:12]}; push it again to update it")
    for eid in sorted(set(items) - set(live)):
        rep.warnings.append(f"the catalog lists experiment {eid.hex()[:12]}, which has no ref")
    return rep
