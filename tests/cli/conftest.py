"""A seeded repository with fixed IDs and times, for CLI golden tests.

Three experiments as in the predecessor's example (train.py with learning_rate / num_layers /
optimizer params, three checkpoints each with loss and accuracy, primary metric loss minimize),
written straight through the object store so every ID is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replicate.build import snapshot
from replicate.objects import codec
from replicate.repository import Repository

T0 = 1_795_000_000_000_000_000  # 2026-11-18T08:26:40Z, fixed
SEC = 1_000_000_000
NOW = T0 + 3600 * SEC  # what tests pass as "now" for time-ago columns

EXPERIMENTS = [
    # (params, command, losses, accuracies)
    ({"learning_rate": 0.01, "num_layers": 2, "optimizer": "adam"}, "train.py 0.01 2",
     [1.0, 0.5, 0.3333], [0.52, 0.62, 0.72]),
    ({"learning_rate": 0.001, "num_layers": 2, "optimizer": "adam"}, "train.py 0.001 2",
     [0.1, 0.05, 0.0333], [0.52, 0.62, 0.72]),
    ({"learning_rate": 0.01, "num_layers": 4, "optimizer": "adam"}, "train.py 0.01 4",
     [1.0, 0.5, 0.3333], [0.54, 0.64, 0.74]),
]


def seed(project: Path) -> dict[str, list[str]]:
    """Create the seeded project; returns {experiment id: [checkpoint ids]} (hex)."""
    project.mkdir(parents=True, exist_ok=True)
    (project / "train.py").write_text("print('training')\n")
    (project / "train.py").chmod(0o644)
    repo = Repository.init(project / ".replicate")
    out: dict[str, list[str]] = {}
    for i, (params, command, losses, accs) in enumerate(EXPERIMENTS):
        created = T0 + i * 60 * SEC
        with repo.objects.transaction() as txn:
            code, _ = snapshot(txn, project, "train.py")
            exp = codec.Experiment(
                created_ns=created, nonce=bytes([i]) * 16, params=params, path="train.py",
                code=code, user="ben", host="", command=command, python_version="3.11.7",
                packages=(("numpy", "2.4.6"), ("replicate", "0.1.0"), ("torch", "2.13.0")),
                git={"commit": "a" * 40, "branch": "main", "dirty": False},
                system={"os": "Linux", "cpu_count": 2}, replicate_version="0.1.0",
            )
            eid = txn.put_object(exp)
        repo.refs.update(repo.experiment_ref(eid), eid, old=None, message="init")
        parent = None
        cids = []
        for step, (loss, acc) in enumerate(zip(losses, accs)):
            (project / "model.pth").write_bytes(bytes([i, step]) * 1000)
            (project / "model.pth").chmod(0o644)
            with repo.objects.transaction() as txn:
                files, _ = snapshot(txn, project, "model.pth")
                cp = codec.Checkpoint(
                    experiment=eid, parent=parent, created_ns=created + (step + 1) * SEC,
                    step=step, path="model.pth", files=files,
                    metrics={"loss": loss, "accuracy": acc},
                    primary_metric=("loss", "minimize"),
                )
                cid = txn.put_object(cp)
            repo.refs.update(repo.experiment_ref(eid), cid, old=parent or eid, message="ckpt")
            parent = cid
            cids.append(cid.hex())
        out[eid.hex()] = cids
    (project / "model.pth").unlink()
    repo.close()
    return out


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """(project dir, {experiment id: [checkpoint ids]})."""
    project = tmp_path / "project"
    return project, seed(project)
