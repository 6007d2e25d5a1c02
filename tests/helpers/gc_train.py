"""A training run for the gc tests: writes ``--size-mib`` MiB of float32 random weights (seeded)
to weights.bin and checkpoints it ``--steps`` times with ``wait=True`` (each step rewrites the
file with new weights), through ``replicate.init`` in the working directory.

Prints one JSON line per returned checkpoint:
{"experiment": id, "checkpoint": id, "step": n, "sha256": ..., "size": ...}

Usage: gc_train.py [--size-mib N] [--seed N] [--steps N]
"""

import argparse
import hashlib
import json

import numpy as np

import replicate

PIECE = 1 << 24  # floats generated per piece (64 MiB)


def write_weights(path: str, nbytes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = nbytes // 4
        while left:
            n = min(left, PIECE)
            piece = rng.standard_normal(n, dtype=np.float32).tobytes()
            h.update(piece)
            f.write(piece)
            left -= n
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    experiment = replicate.init(path=None, params={"seed": args.seed, "size_mib": args.size_mib})
    for step in range(args.steps):
        digest = write_weights("weights.bin", args.size_mib << 20, args.seed * 1000 + step)
        cp = experiment.checkpoint(path="weights.bin", step=step,
                                   metrics={"loss": 1.0 / (step + 1)},
                                   primary_metric=("loss", "minimize"), wait=True)
        assert cp is not None
        print(json.dumps({"experiment": experiment.id, "checkpoint": cp.id, "step": step,
                          "sha256": digest, "size": args.size_mib << 20}), flush=True)
    experiment.stop()


if __name__ == "__main__":
    main()
