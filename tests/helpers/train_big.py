"""Write a large pseudo-random model file and checkpoint it once: tests/test_tracking_processes.py
(the memory test of Checkpoint.open()) creates its 1 GiB checkpoint with this.

Prints {"event": "checkpoint", "id": ..., "sha256": ..., "size": ...}.

Usage: train_big.py [--size-mib N] [--seed N]
"""

import argparse
import hashlib
import json

import numpy as np

import replicate

PIECE = 64 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    size = args.size_mib << 20
    h = hashlib.sha256()
    with open("big.bin", "wb") as f:
        for _ in range(0, size, PIECE):
            piece = rng.integers(0, 2**64, PIECE // 8, dtype=np.uint64).tobytes()
            h.update(piece)
            f.write(piece)
    experiment = replicate.init(path=None, params={"size_mib": args.size_mib})
    cp = experiment.checkpoint(path="big.bin", metrics={"loss": 0.5})
    print(json.dumps({"event": "checkpoint", "id": cp.id, "sha256": h.hexdigest(),
                      "size": size}), flush=True)


if __name__ == "__main__":
    main()
