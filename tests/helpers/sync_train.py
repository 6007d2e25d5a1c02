"""A small training job for tests/test_two_machines.py. The test copies it into a project
directory whose replicate.yaml names a shared ``repository:``, so every checkpoint is also pushed
in the background. It records one experiment with a few checkpoints of ``model.bin`` (float32
random weights, a new file each step, loss going down so the best checkpoint is the last), and
after its first checkpoint it waits until the parent creates the ``--hold`` file, so that the
parent can see both jobs running in the bucket at the same time.

One JSON object per line on stdout:

    {"event": "init", "id": ...}
    {"event": "checkpoint", "id": ..., "step": ..., "sha256": <of the bytes checkpointed>}

Usage: sync_train.py --seed N [--steps K] [--size BYTES] [--hold FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

import replicate


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=2_000_000)
    parser.add_argument("--hold", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    experiment = replicate.init(path="train.py", params={"seed": args.seed, "lr": 0.01})
    emit(event="init", id=experiment.id)
    for step in range(args.steps):
        data = rng.standard_normal(args.size // 4, dtype=np.float32).tobytes()
        with open("model.bin", "wb") as f:
            f.write(data)
        cp = experiment.checkpoint(path="model.bin", metrics={"loss": 1.0 / (step + 1)},
                                   primary_metric=("loss", "minimize"))
        assert cp is not None
        emit(event="checkpoint", id=cp.id, step=cp.step, sha256=hashlib.sha256(data).hexdigest())
        if step == 0 and args.hold:
            deadline = time.monotonic() + 60
            while not os.path.exists(args.hold) and time.monotonic() < deadline:
                time.sleep(0.05)
    # No stop(): a clean exit finishes the upload and marks the experiment stopped.


if __name__ == "__main__":
    main()
