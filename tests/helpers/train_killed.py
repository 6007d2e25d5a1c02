"""A training loop checkpointing a large file until it is killed (tests/test_tracking_processes.py).

Each iteration writes new random bytes to model.bin, then checkpoints them, and prints (one JSON
object per line, flushed at once):

    {"event": "begin", "i": I, "sha256": ...}       before calling checkpoint()
    {"event": "returned", "i": I, "step": ...}      as soon as checkpoint() has returned
    {"event": "done", "i": I, "id": ..., "step": ...}  once the checkpoint is committed (its ID
                                                    is known: reading .id waits for the commit)

Usage: train_killed.py [--resume ID] [--size-mib N] [--seed N] [--max N]
"""

import argparse
import hashlib
import json

import numpy as np

import replicate

MODEL = "model.bin"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume", default=None, help="ID of an experiment to continue")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max", type=int, default=1000, help="iterations, then exit cleanly")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    if args.resume:
        experiment = replicate.experiments.get(args.resume)
    else:
        experiment = replicate.init(path=None, params={"seed": args.seed})
    emit(event="init", id=experiment.id)
    n = args.size_mib * (1 << 20) // 8
    for i in range(args.max):
        data = rng.integers(0, 2**64, n, dtype=np.uint64).tobytes()
        with open(MODEL, "wb") as f:
            f.write(data)
        emit(event="begin", i=i, sha256=hashlib.sha256(data).hexdigest())
        cp = experiment.checkpoint(path=MODEL, metrics={"i": i, "seed": args.seed})
        emit(event="returned", i=i, step=cp.step)
        emit(event="done", i=i, id=cp.id, step=cp.step)


if __name__ == "__main__":
    main()
