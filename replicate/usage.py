"""``du``: how much the repository holds, logically and on disk.

- ``logical_bytes``: every live checkpoint's files counted in full (a 1 GiB file saved by 10
  checkpoints counts 10 GiB), plus each experiment's code once. Checkpoints whose files were
  removed (``rm``) count nothing.
- ``unique_bytes``: the raw size of the distinct chunks all of that references.
- ``stored_entries_bytes``: what those chunks take in the packs (after compression).
- ``stored_bytes``: the size of every pack file on disk (metadata and garbage included).
- ``dedup_ratio`` = logical / unique; ``compression_ratio`` = unique / stored entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replicate.checkout import read_tree
from replicate.history import experiment_ids, load_experiment, removed_checkpoints
from replicate.objects.codec import KIND_FILE, KIND_LINK, KIND_TREE
from replicate.objects.reader import file_chunk_refs, read_file_object
from replicate.repository import Repository


@dataclass(frozen=True)
class Usage:
    """The figures ``du`` prints."""

    logical_bytes: int
    unique_bytes: int
    stored_entries_bytes: int
    stored_bytes: int
    experiments: int
    checkpoints: int
    removed_checkpoints: int
    chunks: int
    packs: int
    missing_chunks: int = 0

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per unique byte (1.0 for an empty repository)."""
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        """Unique bytes per stored byte (1.0 for an empty repository)."""
        return self.unique_bytes / self.stored_entries_bytes if self.stored_entries_bytes else 1.0


class _Walker:
    """Sums logical bytes per tree (memoised: unchanged trees are read once) and collects the
    distinct chunks referenced."""

    def __init__(self, repo: Repository) -> None:
        self.store = repo.objects
        self.tree_bytes: dict[bytes, int] = {}
        self.files: set[bytes] = set()
        self.chunks: set[bytes] = set()

    def tree(self, tid: bytes) -> int:
        n = self.tree_bytes.get(tid)
        if n is not None:
            return n
        n = 0
        for e in read_tree(self.store, tid).entries:
            if e.kind == KIND_TREE:
                n += self.tree(e.id)
            elif e.kind == KIND_FILE:
                n += e.size
                if e.id not in self.files:
                    self.files.add(e.id)
                    f = read_file_object(self.store, e.id)
                    self.chunks.update(r.id for r in file_chunk_refs(self.store, f))
            elif e.kind == KIND_LINK:
                n += e.size
                self.chunks.add(e.id)
        self.tree_bytes[tid] = n
        return n


def usage(repo: Repository) -> Usage:
    """Compute the figures of ``du`` for a local repository."""
    store = repo.objects
    store.refresh()
    removed = removed_checkpoints(repo)
    w = _Walker(repo)
    logical = n_exp = n_cp = n_removed = 0
    for eid in experiment_ids(repo):
        rec = load_experiment(repo, eid, removed)
        n_exp += 1
        if rec.obj.code is not None:
            logical += w.tree(rec.obj.code)
        for c in rec.checkpoints:
            n_cp += 1
            if c.removed:
                n_removed += 1
            elif c.obj.files is not None:
                logical += w.tree(c.obj.files)

    unique = stored_entries = missing = 0
    if w.chunks:
        recs = store.index.all_records()
        q = np.array(sorted(w.chunks), dtype="S32")
        if len(recs):
            ids = recs["id"]
            pos = np.minimum(np.searchsorted(ids, q), len(ids) - 1)
            found = ids[pos] == q
            unique = int(recs["raw"][pos][found].sum(dtype=np.int64))
            stored_entries = int(recs["stored"][pos][found].sum(dtype=np.int64))
            missing = int((~found).sum())
        else:
            missing = len(q)
    packs = store.list_packs()
    stored = 0
    remote = getattr(store, "remote", None)
    if remote is not None:  # a remote: one listing gives every pack's size
        stored = sum(k.size for k in remote.list("packs/") if k.key.endswith(".pack"))
    for pid in packs if remote is None else ():
        try:
            stored += store.pack_path(pid).stat().st_size
        except FileNotFoundError:
            continue
    return Usage(
        logical_bytes=logical,
        unique_bytes=unique,
        stored_entries_bytes=stored_entries,
        stored_bytes=stored,
        experiments=n_exp,
        checkpoints=n_cp,
        removed_checkpoints=n_removed,
        chunks=len(w.chunks),
        packs=len(packs),
        missing_chunks=missing,
    )
