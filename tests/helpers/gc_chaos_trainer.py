"""One training run of the gc chaos test (tests/test_gc_chaos.py), in a project directory whose
replicate.yaml names a shared ``repository:`` (so every checkpoint is pushed in the background).

Each step writes ``ckpt/weights.bin`` (new random float32 weights, unique to this run and step)
and ``ckpt/shared.bin`` (one of ``--pool`` fixed variants, the same bytes in every project: it
deduplicates across experiments, and after an ``rm`` it may be garbage that a later checkpoint
needs again), checkpoints ``ckpt`` with ``wait=True`` and prints one JSON line once the
checkpoint returned (it is committed):

    {"experiment": id, "checkpoint": id, "files": {"weights.bin": sha256, "shared.bin": sha256}}

and, after the last step, {"done": id}. Killed with SIGKILL at any moment by the test.

Usage: gc_chaos_trainer.py --seed N [--steps N] [--pool N] [--size BYTES]
"""

import argparse
import hashlib
import json
import os
import random
import time

import numpy as np

import replicate


def weights(nbytes: int, seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(nbytes // 4, dtype=np.float32).tobytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pool", type=int, default=5)
    ap.add_argument("--size", type=int, default=200_000)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    os.makedirs("ckpt", exist_ok=True)
    experiment = replicate.init(path=None, params={"seed": args.seed})
    for step in range(args.steps):
        files = {
            "weights.bin": weights(args.size, args.seed * 100 + step),
            "shared.bin": weights(args.size + 100_000, 10**6 + rnd.randrange(args.pool)),
        }
        for name, data in files.items():
            with open(os.path.join("ckpt", name), "wb") as f:
                f.write(data)
        cp = experiment.checkpoint(path="ckpt", step=step, metrics={"loss": 1.0 / (step + 1)},
                                   wait=True)
        if cp is None:  # saving failed (a warning was printed): training goes on
            continue
        print(json.dumps({"experiment": experiment.id, "checkpoint": cp.id,
                          "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}),
              flush=True)
        time.sleep(rnd.uniform(0.1, 0.6))
    experiment.stop()
    print(json.dumps({"done": experiment.id}), flush=True)


if __name__ == "__main__":
    main()
