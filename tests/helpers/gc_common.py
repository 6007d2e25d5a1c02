"""Shared code of the gc tests (tests/test_gc.py, tests/test_gc_remote.py,
tests/test_gc_chaos.py): measuring what a repository or bucket stores, snapshots that show
whether anything changed, and experiments built through the public API or the store API."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tests.helpers.sync_common import random_weights, record_experiment  # noqa: F401

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 22):
            h.update(piece)
    return h.hexdigest()


def packs_bytes(repo_root: Path) -> int:
    """Bytes of every pack file of a local repository."""
    total = 0
    for d, _dirs, files in os.walk(repo_root / "packs"):
        for n in files:
            total += os.path.getsize(os.path.join(d, n))
    return total


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime_ns). Lock files that gc and
    writers create empty (``gc.lock``, ``gc.run``) are left out."""
    out = {}
    for d, _dirs, files in os.walk(root):
        for n in files:
            p = Path(d) / n
            rel = p.relative_to(root).as_posix()
            if rel in ("gc.lock", "gc.run"):
                continue
            st = p.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def bucket_listing(url: str) -> dict[str, int]:
    """Every key under a remote URL with its size (one listing through replicate's Remote)."""
    from replicate.remotes import open_remote

    remote = open_remote(url)
    return {k.key: k.size for k in remote.list("")}


def bucket_bytes(url: str, prefix: str = "packs/") -> int:
    """Bytes stored under ``prefix`` of a remote repository (packs by default)."""
    return sum(size for key, size in bucket_listing(url).items() if key.startswith(prefix))


def remote_repo(url: str, cache: Path) -> Any:
    """A RemoteRepository for ``url`` with its caches under ``cache``."""
    from replicate.remote_repo import RemoteRepository
    from replicate.remotes import open_remote

    remote = open_remote(url)
    return RemoteRepository(remote.url, remote, cache)


def stored_bytes_of(store: Any, ids: Any) -> int:
    """Stored bytes of the objects ``ids`` (sorted S32; one copy of each)."""
    import numpy as np

    from replicate.gc import _is_in

    recs = store.index.all_records()
    mask = _is_in(ids, recs["id"])
    got = recs["id"][mask]
    stored = recs["stored"][mask].astype(np.int64)
    first = np.ones(len(got), dtype=bool)
    first[1:] = got[1:] != got[:-1]
    return int(stored[first].sum())


def garbage_bytes(store: Any, roots_before: list[bytes], roots_after: list[bytes],
                  tombstones_before: frozenset[bytes] = frozenset(),
                  tombstones_after: frozenset[bytes] = frozenset()) -> int:
    """Stored bytes of the objects reachable before (roots, tombstones) and not after: what a
    gc after that change should free."""
    from replicate.gc import Marker, _is_in

    before = Marker(store, set(tombstones_before))
    before.mark(roots_before)
    after = Marker(store, set(tombstones_after))
    after.mark(roots_after)
    ids = before.live_ids()
    return stored_bytes_of(store, ids[~_is_in(after.live_ids(), ids)])


def unique_stored_bytes(store: Any, heads: dict[bytes, bytes], experiment: bytes) -> int:
    """Stored bytes of the objects reachable from ``experiment``'s head and from no other
    head (what deleting it should free). ``heads``: experiment id -> head."""
    return garbage_bytes(store, list(heads.values()),
                         [h for e, h in heads.items() if e != experiment])


def local_heads(repo: Any) -> dict[bytes, bytes]:
    """experiment id -> head of a local repository."""
    return {bytes.fromhex(n.split("/", 1)[1]): h for n, h in repo.refs.list("experiments").items()}
