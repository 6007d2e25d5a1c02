"""Child process of tests/test_crash.py: checkpoints new random files into a repository forever
(or ``--iterations`` times), printing what it does so the parent can kill it at chosen steps.

Usage: crash_writer.py REPO PROJECT EXPERIMENT_HEX SEED [--iterations N]

stdout protocol (one flushed line each):
    S <stage>            about to start <stage> (start, file, snapshot, commit, ref, done)
    D <checkpoint> <b3>  a completed write: the ref points at <checkpoint>, whose model.bin has
                         BLAKE3 <b3>
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import blake3


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    root, project, exp_hex, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    iterations = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--iterations" else -1

    from replicate.build import snapshot
    from replicate.objects.codec import Checkpoint
    from replicate.repository import Repository

    say("S start")
    repo = Repository.init(root)
    eid = bytes.fromhex(exp_hex)
    name = f"experiments/{exp_hex}"
    rng = random.Random(seed)
    i = 0
    while iterations < 0 or i < iterations:
        say("S file")
        data = rng.randbytes(rng.randint(8 << 20, 14 << 20))
        # Half the files share their second half with a fixed block: dedup across crashes.
        if i % 2:
            data = data[: len(data) // 2] + random.Random(0).randbytes(len(data) - len(data) // 2)
        (project / "model.bin").write_bytes(data)
        digest = blake3.blake3(data).hexdigest()
        say("S snapshot")
        head = repo.refs.read(name)
        with repo.objects.transaction() as txn:
            files, _ = snapshot(txn, project, ".", repo.statcache)
            cid = txn.put_object(
                Checkpoint(
                    experiment=eid,
                    parent=None if head == eid else head,
                    created_ns=time.time_ns(),
                    step=i,
                    path="model.bin",
                    files=files,
                    metrics={"i": i, "pid": os.getpid()},
                    primary_metric=None,
                )
            )
            say("S commit")
        say("S ref")
        repo.refs.update(name, cid, old=head, message=f"checkpoint {i}")
        say(f"D {cid.hex()} {digest}")
        say("S done")
        i += 1


if __name__ == "__main__":
    main()
