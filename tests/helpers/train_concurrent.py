"""One of several training processes checkpointing into one project at once:
tests/test_tracking_processes.py starts 8 of them together.

Each waits for a start file (so all begin at the same moment), then checkpoints
runs/<index>/model.bin several times. The model is a block shared by every process (the same
chunks are written concurrently by all of them) followed by a block of its own. Prints one JSON
object per checkpoint: {"event": "checkpoint", "index": ..., "step": ..., "sha256": ...} (not the
ID: reading it would wait for the commit, and the processes should overlap as much as possible).

Usage: train_concurrent.py INDEX START_FILE [--checkpoints N] [--size BYTES]
"""

import argparse
import hashlib
import json
import os
import time

import numpy as np

import replicate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("index", type=int)
    parser.add_argument("start_file")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    shared = np.random.default_rng(12345).integers(0, 2**64, args.size // 16, dtype=np.uint64)
    rng = np.random.default_rng(args.index)
    out = os.path.join("runs", str(args.index))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.bin")

    deadline = time.monotonic() + 60
    while not os.path.exists(args.start_file):
        if time.monotonic() > deadline:
            raise SystemExit("start file never appeared")
        time.sleep(0.005)

    experiment = replicate.init(path="train_concurrent.py", params={"index": args.index})
    for i in range(args.checkpoints):
        own = rng.integers(0, 2**64, args.size // 16, dtype=np.uint64)
        data = shared.tobytes() + own.tobytes()
        with open(path, "wb") as f:
            f.write(data)
        cp = experiment.checkpoint(path=path, metrics={"loss": 1.0 / (i + 1), "index": args.index},
                                   primary_metric=("loss", "minimize"))
        print(json.dumps({"event": "checkpoint", "index": args.index, "step": cp.step,
                          "sha256": hashlib.sha256(data).hexdigest()}), flush=True)


if __name__ == "__main__":
    main()
