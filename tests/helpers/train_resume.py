"""Resume an experiment in a new process (as after a preemption): tests/test_tracking.py.

``replicate.experiments.get(ID).checkpoint(...)`` must continue the experiment's checkpoint chain
and its step counter. Prints one JSON object per checkpoint, as train_basic.py does (without
reading the checkpoint's ID, so the last ones are still being saved when the script exits).

Usage: train_resume.py ID_PREFIX [--count N] [--seed N] [--size BYTES] [--step N]
"""

import argparse
import hashlib
import json

import numpy as np

import replicate

MODEL = "model.bin"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("id")
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=400_000)
    parser.add_argument("--step", type=int, default=None, help="explicit step of the first")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    experiment = replicate.experiments.get(args.id)
    for i in range(args.count):
        data = rng.integers(0, 2**64, args.size // 8, dtype=np.uint64).tobytes()
        with open(MODEL, "wb") as f:
            f.write(data)
        cp = experiment.checkpoint(path=MODEL, step=args.step if i == 0 else None,
                                   metrics={"loss": 0.1 + i / 100, "resumed": True},
                                   primary_metric=("loss", "minimize"))
        print(json.dumps({"event": "checkpoint", "step": cp.step,
                          "sha256": hashlib.sha256(data).hexdigest()}), flush=True)


if __name__ == "__main__":
    main()
