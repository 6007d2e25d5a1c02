"""Reading experiment histories: refs -> checkpoint chains -> experiment objects, and resolving
ID prefixes. Returns plain records; the notebook API and the CLI render them."""

from __future__ import annotations

from dataclasses import dataclass, field

from replicate.errors import AmbiguousID, CorruptObjectError, DoesNotExist
from replicate.objects import codec, ids
from replicate.repository import Repository


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint object with its ID; ``removed`` when its files were removed (rm)."""

    id: bytes
    obj: codec.Checkpoint
    removed: bool = False


@dataclass
class ExperimentRecord:
    """An experiment object with its ID and its checkpoints, oldest first."""

    id: bytes
    obj: codec.Experiment
    head: bytes
    checkpoints: list[CheckpointRecord] = field(default_factory=list)


def experiment_ids(repo: Repository) -> list[bytes]:
    """IDs of every experiment that has a ref."""
    return [bytes.fromhex(n.split("/", 1)[1]) for n in repo.refs.list("experiments")]


def removed_checkpoints(repo: Repository) -> set[bytes]:
    """Checkpoints whose files were removed (tombstones)."""
    return set(repo.refs.list("removed").values())


def read_experiment_object(repo: Repository, eid: bytes) -> codec.Experiment:
    """Read and type-check an experiment object."""
    obj = repo.objects.read_object(eid)
    if not isinstance(obj, codec.Experiment):
        raise CorruptObjectError("expected an experiment", eid.hex())
    return obj


def read_checkpoint_object(repo: Repository, cid: bytes) -> codec.Checkpoint:
    """Read and type-check a checkpoint object."""
    obj = repo.objects.read_object(cid)
    if not isinstance(obj, codec.Checkpoint):
        raise CorruptObjectError("expected a checkpoint", cid.hex())
    return obj


def load_chain(repo: Repository, eid: bytes, head: bytes, removed: set[bytes]) -> list[CheckpointRecord]:
    """Checkpoints from ``head`` back to the first, returned oldest first."""
    out: list[CheckpointRecord] = []
    cur: bytes | None = head if head != eid else None
    seen: set[bytes] = set()
    while cur is not None:
        if cur in seen:
            raise CorruptObjectError("checkpoint chain has a cycle", cur.hex())
        seen.add(cur)
        c = read_checkpoint_object(repo, cur)
        if c.experiment != eid:
            raise CorruptObjectError("checkpoint belongs to another experiment", cur.hex())
        out.append(CheckpointRecord(cur, c, cur in removed))
        cur = c.parent
    out.reverse()
    return out


def load_experiment(repo: Repository, eid: bytes, removed: set[bytes] | None = None) -> ExperimentRecord:
    """An experiment and its checkpoints; DoesNotExist if it has no ref."""
    head = repo.refs.read(repo.experiment_ref(eid))
    if head is None:
        raise DoesNotExist(f"experiment {eid.hex()[:7]} does not exist")
    obj = read_experiment_object(repo, eid)
    rem = removed if removed is not None else removed_checkpoints(repo)
    return ExperimentRecord(eid, obj, head, load_chain(repo, eid, head, rem))


def _check_prefix(prefix: str) -> str:
    p = prefix.strip().lower()
    if not ids.is_hex_prefix(p):
        raise DoesNotExist(f"{prefix!r} is not an ID or ID prefix (IDs are hexadecimal)")
    return p


def resolve_experiment(repo: Repository, prefix: str) -> bytes:
    """The experiment whose ID starts with ``prefix``."""
    p = _check_prefix(prefix)
    matches = [e for e in experiment_ids(repo) if e.hex().startswith(p)]
    if not matches:
        raise DoesNotExist(f"no experiment matches {prefix!r}")
    if len(matches) > 1:
        raise AmbiguousID(
            f"prefix {prefix!r} is ambiguous: {len(matches)} experiments match; use more characters"
        )
    return matches[0]


def checkpoint_candidates(repo: Repository, prefix: str) -> list[tuple[bytes, bytes]]:
    """(experiment id, checkpoint id) of live checkpoints whose ID starts with ``prefix``."""
    p = _check_prefix(prefix)
    repo.objects.refresh()
    live = set(experiment_ids(repo))
    out = []
    for cid in repo.objects.index.find_prefix(p, codec.CHECKPOINT):
        try:
            c = read_checkpoint_object(repo, cid)
        except (CorruptObjectError, DoesNotExist):
            continue
        if c.experiment in live and _reachable(repo, c.experiment, cid):
            out.append((c.experiment, cid))
    return out


def _reachable(repo: Repository, eid: bytes, cid: bytes) -> bool:
    head = repo.refs.read(repo.experiment_ref(eid))
    cur = head if head != eid else None
    while cur is not None:
        if cur == cid:
            return True
        cur = read_checkpoint_object(repo, cur).parent
    return False


def resolve_checkpoint(repo: Repository, prefix: str) -> tuple[bytes, bytes]:
    """(experiment id, checkpoint id) of the checkpoint whose ID starts with ``prefix``."""
    found = checkpoint_candidates(repo, prefix)
    if not found:
        raise DoesNotExist(f"no checkpoint matches {prefix!r}")
    if len(found) > 1:
        raise AmbiguousID(
            f"prefix {prefix!r} is ambiguous: {len(found)} checkpoints match; use more characters"
        )
    return found[0]


def resolve_any(repo: Repository, prefix: str) -> tuple[str, bytes, bytes | None]:
    """Resolve a prefix across experiments and checkpoints.

    Returns ("experiment", experiment id, None) or ("checkpoint", experiment id, checkpoint id).
    """
    p = _check_prefix(prefix)
    exps = [e for e in experiment_ids(repo) if e.hex().startswith(p)]
    cps = checkpoint_candidates(repo, p)
    n = len(exps) + len(cps)
    if n == 0:
        raise DoesNotExist(f"no experiment or checkpoint matches {prefix!r}")
    if n > 1:
        raise AmbiguousID(
            f"prefix {prefix!r} is ambiguous: it matches {len(exps)} experiment(s) and "
            f"{len(cps)} checkpoint(s); use more characters"
        )
    if exps:
        return "experiment", exps[0], None
    return "checkpoint", cps[0][0], cps[0][1]
