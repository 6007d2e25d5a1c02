"""``rm``: delete experiments, or remove the files of checkpoints.

- An experiment: its ref and reflog are deleted (as git does for a deleted branch), with its
  heartbeat and the tombstones of its checkpoints. Its objects stay in the packs until gc
  reclaims them.
- A checkpoint: IDs are hashes, so history cannot be rewritten. A tombstone ref
  ``removed/<checkpoint id>`` (holding the checkpoint's ID) records that its files are gone: gc
  does not keep its files tree, and show, checkout, open, diff and du treat it as having no
  files. Its metadata and metrics stay, so ``ls`` still counts it.

Every prefix is resolved before anything is deleted: one bad prefix deletes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicate.errors import CorruptObjectError
from replicate.heartbeat import heartbeat_path, is_running
from replicate.history import load_experiment, removed_checkpoints, resolve_any
from replicate.repository import Repository

REMOVED = "removed"


def tombstone_ref(checkpoint_id: bytes) -> str:
    """Ref name of a checkpoint's tombstone."""
    return f"{REMOVED}/{checkpoint_id.hex()}"


@dataclass(frozen=True)
class Target:
    """Something ``rm`` was asked to delete.

    ``checkpoint_id`` is None for an experiment; ``checkpoints`` lists an experiment's
    checkpoint IDs (oldest first; None when its history could not be read); ``running`` says
    whether the experiment's heartbeat is fresh; ``already_removed`` whether a checkpoint's
    files were removed before."""

    kind: str  # "experiment" or "checkpoint"
    experiment_id: bytes
    checkpoint_id: bytes | None
    checkpoints: tuple[bytes, ...] | None = None
    running: bool = False
    already_removed: bool = False

    @property
    def id(self) -> bytes:
        """The ID of what is deleted."""
        return self.checkpoint_id if self.checkpoint_id is not None else self.experiment_id


def resolve_targets(repo: Repository, prefixes: list[str]) -> list[Target]:
    """Resolve every prefix (DoesNotExist / AmbiguousID on the first that fails, before
    anything is deleted); duplicates are dropped, order kept."""
    removed = removed_checkpoints(repo)
    out: list[Target] = []
    seen: set[bytes] = set()
    for prefix in prefixes:
        kind, eid, cid = resolve_any(repo, prefix)
        key = cid if cid is not None else eid
        if key in seen:
            continue
        seen.add(key)
        running = is_running(heartbeat_path(repo.heartbeats_dir, eid))
        if kind == "checkpoint":
            out.append(Target(kind, eid, cid, running=running, already_removed=cid in removed))
            continue
        try:
            chain: tuple[bytes, ...] | None = tuple(
                c.id for c in load_experiment(repo, eid, removed).checkpoints
            )
        except CorruptObjectError:
            chain = None  # still deletable: the ref goes, the broken history with it
        out.append(Target(kind, eid, None, chain, running))
    return out


def remove_experiment(repo: Repository, eid: bytes, checkpoints: tuple[bytes, ...] | None) -> None:
    """Delete an experiment's ref and reflog, its heartbeat and its checkpoints' tombstones."""
    repo.refs.delete(repo.experiment_ref(eid), message="rm")
    heartbeat_path(repo.heartbeats_dir, eid).unlink(missing_ok=True)
    tombstones = repo.refs.list(REMOVED)
    for cid in checkpoints or ():
        name = tombstone_ref(cid)
        if name in tombstones:
            repo.refs.delete(name, message="rm experiment")


def remove_checkpoint_files(repo: Repository, cid: bytes) -> None:
    """Write the tombstone of a checkpoint (idempotent)."""
    repo.refs.update(tombstone_ref(cid), cid, message="rm")


def remove(repo: Repository, targets: list[Target]) -> None:
    """Delete resolved targets, checkpoints first."""
    for t in targets:
        if t.kind == "checkpoint":
            assert t.checkpoint_id is not None
            remove_checkpoint_files(repo, t.checkpoint_id)
    for t in targets:
        if t.kind == "experiment":
            remove_experiment(repo, t.experiment_id, t.checkpoints)
