"""The catalog: what ``ls`` needs of every experiment in a remote, in a handful of requests.

Each push adds an immutable record ``catalog/log/<time>-<rand>.rec`` holding the summaries of
the experiments it moved (and deletions). Any client compacts: it writes a snapshot
``catalog/snap/<watermark>.snap`` holding every summary up to the newest record it read (the
watermark), and removes records older than the previous snapshot after a safety margin.
Reading = one LIST of ``catalog/`` + the newest snapshot + the records after its watermark,
all cached locally (they never change). Running status comes from heartbeat keys
``heartbeats/<eid>/<time_ns>`` (one LIST).
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack

from replicate.errors import RemoteError
from replicate.heartbeat import TIMEOUT_NS
from replicate.query import Summary
from replicate.remote_repo import RemoteRepository

LOG = "catalog/log/"
SNAP = "catalog/snap/"
HEARTBEATS = "heartbeats/"
COMPACT_AT = 256  # records after the newest snapshot that trigger a compaction
DELETE_MARGIN_NS = 3600 * 10**9  # records are removed only this long after being compacted


def _key_time(key: str) -> int:
    name = key.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _fetch(rrepo: RemoteRepository, key: str) -> bytes | None:
    return rrepo.get_immutable(key, "catalog")


def _decode_record(data: bytes) -> tuple[list[Summary], list[bytes]]:
    v = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return [Summary.from_list(s) for s in v[2]], [bytes(d) for d in v[3]]


def _decode_snap(data: bytes) -> tuple[str, dict[bytes, Summary]]:
    v = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return v[1], {bytes(k): Summary.from_list(s) for k, s in v[2].items()}


def _apply(items: dict[bytes, Summary], summaries: list[Summary], deleted: list[bytes]) -> None:
    for s in summaries:
        cur = items.get(s.id)
        if cur is None or s.num_checkpoints >= cur.num_checkpoints or s.head != cur.head:
            items[s.id] = s
    for d in deleted:
        items.pop(d, None)


def load(rrepo: RemoteRepository, compact: bool = True) -> dict[bytes, Summary]:
    """Every experiment's summary from the catalog (compacting when the tail is long)."""
    for _attempt in range(3):
        keys = [k.key for k in rrepo.remote.list("catalog/")]
        if not keys and rrepo.cached_config() is None:
            rrepo.config()  # a missing bucket or repository is an error, not an empty list
        snaps = sorted(k for k in keys if k.startswith(SNAP) and k.endswith(".snap"))
        logs = sorted(k for k in keys if k.startswith(LOG) and k.endswith(".rec"))
        items: dict[bytes, Summary] = {}
        watermark = ""
        if snaps:
            data = _fetch(rrepo, snaps[-1])
            if data is None:
                continue  # replaced meanwhile: list again
            watermark, items = _decode_snap(data)
        tail = [k for k in logs if k > watermark]
        with ThreadPoolExecutor(max_workers=16) as ex:
            datas = list(ex.map(lambda k: _fetch(rrepo, k), tail))
        if any(d is None for d in datas):
            continue  # compacted meanwhile: list again
        for d in datas:
            assert d is not None
            s, dl = _decode_record(d)
            _apply(items, s, dl)
        if compact and len(tail) >= COMPACT_AT:
            try:
                _compact(rrepo, items, tail[-1], snaps, logs)
            except RemoteError:
                pass  # compaction is an optimisation; another client will do it
        return items
    raise RemoteError(f"{rrepo.url}: the catalog keeps changing while reading it; try again")


def _compact(rrepo: RemoteRepository, items: dict[bytes, Summary], watermark: str,
             snaps: list[str], logs: list[str]) -> None:
    body = msgpack.packb([1, watermark, {k: v.to_list() for k, v in items.items()}],
                         use_bin_type=True)
    key = f"{SNAP}{_key_time(watermark):020d}-{secrets.token_hex(4)}.snap"
    rrepo.remote.put(key, body)
    now = time.time_ns()
    # Records already in the previous snapshot, and older than the margin, can go.
    if snaps:
        prev = _fetch(rrepo, snaps[-1])
        prev_mark = _decode_snap(prev)[0] if prev else ""
        for k in logs:
            if k <= prev_mark and now - _key_time(k) > DELETE_MARGIN_NS:
                rrepo.remote.delete(k)
        for s in snaps[:-1]:
            if now - _key_time(s) > DELETE_MARGIN_NS:
                rrepo.remote.delete(s)


def running(rrepo: RemoteRepository, now_ns: int | None = None) -> set[bytes]:
    """Experiments whose remote heartbeat is fresh (one LIST)."""
    now = now_ns or time.time_ns()
    out = set()
    for k in rrepo.remote.list(HEARTBEATS):
        parts = k.key[len(HEARTBEATS):].split("/")
        fresh = len(parts) == 2 and parts[1].isdigit() and now - int(parts[1]) < TIMEOUT_NS
        if fresh and len(parts[0]) == 64:
            try:
                out.add(bytes.fromhex(parts[0]))
            except ValueError:
                continue
    return out


def summaries(rrepo: RemoteRepository) -> list[Summary]:
    """Summaries of every live experiment of a remote, oldest first, with running status."""
    items = load(rrepo)
    run = running(rrepo)
    for s in items.values():
        s.running = s.id in run
    return sorted(items.values(), key=lambda s: (s.created_ns, s.id))


class RemoteHeartbeat:
    """Publishes an experiment's heartbeat to a remote: ``heartbeats/<eid>/<time_ns>``
    (a new key, then the previous one deleted), so one LIST tells who is running."""

    def __init__(self, rrepo: RemoteRepository, eid: bytes) -> None:
        self.rrepo = rrepo
        self.eid = eid
        self.key: str | None = None

    def beat(self) -> None:
        key = f"{HEARTBEATS}{self.eid.hex()}/{time.time_ns():020d}"
        self.rrepo.remote.put(key, str(os.getpid()).encode())
        old, self.key = self.key, key
        if old is not None:
            self.rrepo.remote.delete(old)

    def stop(self) -> None:
        if self.key is not None:
            self.rrepo.remote.delete(self.key)
            self.key = None

