"""Child process of tests/test_concurrency.py.

Usage:
    concurrent_writer.py checkpoints REPO WORKDIR WORKER N GO_FILE
        Create an experiment and N checkpoints; files are partly shared with the other workers
        (same bytes at the same moment: dedup races) and partly this worker's own. Prints one
        JSON line: {"experiment": hex, "checkpoints": [{"id": hex, "files": {name: b3hex}}]}.
    concurrent_writer.py cas REPO REF_NAME WORKER N GO_FILE
        Advance REF_NAME N times with compare-and-swap, retrying on conflicts. Prints one JSON
        line: {"updates": [new hex...], "conflicts": count}.

Both wait for GO_FILE to exist (bounded polling) so that all workers start together.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import blake3


def wait_for(go: Path) -> None:
    (go.parent / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)


def checkpoints(root: Path, work: Path, worker: int, n: int, go: Path) -> None:
    from replicate.build import snapshot
    from replicate.objects.codec import Checkpoint, Experiment
    from replicate.repository import Repository

    project = work / f"worker-{worker}"
    project.mkdir(parents=True)
    wait_for(go)
    repo = Repository.init(root)  # every worker races to create it
    shared_weights = random.Random(42).randbytes(3_000_000)  # identical in every worker
    (project / "shared.bin").write_bytes(shared_weights)
    (project / "config.yaml").write_text("lr: 0.1\nlayers: [64, 64]\n")
    with repo.objects.transaction() as txn:
        code, _ = snapshot(txn, project, "config.yaml")
        eid = txn.put_object(
            Experiment(
                created_ns=time.time_ns(),
                nonce=os.urandom(16),
                params={"worker": worker},
                path=".",
                code=code,
                user="u",
                host="h",
                command="train.py",
                python_version="3",
                packages=(),
                git=None,
                system={},
                replicate_version="0",
            )
        )
    name = f"experiments/{eid.hex()}"
    repo.refs.update(name, eid, old=None)
    head = eid
    out = []
    for k in range(n):
        # Same bytes in every worker for step k, written at about the same time.
        epoch = random.Random(1000 + k).randbytes(1_200_000)
        own = random.Random(10_000 * (worker + 1) + k).randbytes(400_000 + 1000 * worker)
        (project / "epoch.bin").write_bytes(epoch)
        (project / "own.bin").write_bytes(own)
        files = {
            "shared.bin": blake3.blake3(shared_weights).hexdigest(),
            "config.yaml": blake3.blake3((project / "config.yaml").read_bytes()).hexdigest(),
            "epoch.bin": blake3.blake3(epoch).hexdigest(),
            "own.bin": blake3.blake3(own).hexdigest(),
        }
        with repo.objects.transaction() as txn:
            tree, _ = snapshot(txn, project, ".", repo.statcache)
            cid = txn.put_object(
                Checkpoint(
                    experiment=eid,
                    parent=None if head == eid else head,
                    created_ns=time.time_ns(),
                    step=k,
                    path=None,
                    files=tree,
                    metrics={"loss": 1.0 / (k + 1), "worker": worker},
                    primary_metric=("loss", "minimize"),
                )
            )
        repo.refs.update(name, cid, old=head)
        head = cid
        out.append({"id": cid.hex(), "files": files})
    print(json.dumps({"experiment": eid.hex(), "checkpoints": out}), flush=True)


def cas(root: Path, name: str, worker: int, n: int, go: Path) -> None:
    from replicate.errors import RefConflict
    from replicate.refs.store import RefStore

    refs = RefStore(root)
    wait_for(go)
    updates, conflicts = [], 0
    for i in range(n):
        while True:
            cur = refs.read(name)
            new = os.urandom(32)
            try:
                refs.update(name, new, old=cur, message=f"worker {worker} update {i}")
            except RefConflict:
                conflicts += 1
                continue
            updates.append(new.hex())
            break
    print(json.dumps({"updates": updates, "conflicts": conflicts}), flush=True)


def main() -> None:
    mode, root, arg, worker, n, go = sys.argv[1:7]
    if mode == "checkpoints":
        checkpoints(Path(root), Path(arg), int(worker), int(n), Path(go))
    else:
        cas(Path(root), arg, int(worker), int(n), Path(go))


if __name__ == "__main__":
    main()
