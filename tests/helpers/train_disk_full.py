"""A training loop whose disk "fills up" mid-run: tests/test_tracking_processes.py.

RLIMIT_FSIZE caps the size of any file this process writes (SIGXFSZ ignored, so a write past
the cap fails with EFBIG, as on a full disk). The first checkpoint is small; then the cap is set
and a checkpoint of a file three times larger cannot be written (its pack would exceed the
cap); training must go on, and a metrics-only checkpoint afterwards still succeeds. Prints
one JSON object per step:

    {"event": "checkpoint", "i": I, "returned": "none" | "checkpoint", "id": ... (if saved)}
    {"event": "end"}

Usage: train_disk_full.py --limit BYTES
"""

import argparse
import json
import os
import resource
import signal

import replicate


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=2 << 20)
    args = parser.parse_args()
    experiment = replicate.init(path=None, params={"limit": args.limit})

    with open("small.bin", "wb") as f:
        f.write(os.urandom(100_000))
    cp = experiment.checkpoint(path="small.bin", metrics={"loss": 1.0})
    emit(event="checkpoint", i=0, returned="checkpoint", id=cp.id)

    with open("big.bin", "wb") as f:  # written before the cap: the pack holding it will not be
        f.write(os.urandom(3 * args.limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (args.limit, args.limit))
    cp = experiment.checkpoint(path="big.bin", metrics={"loss": 0.5})
    emit(event="checkpoint", i=1, returned="none" if cp is None else "checkpoint")

    # Training goes on: a checkpoint that needs little space still works.
    cp = experiment.checkpoint(metrics={"loss": 0.25})
    emit(event="checkpoint", i=2, returned="none" if cp is None else "checkpoint",
         id=None if cp is None else cp.id)
    emit(event="end")


if __name__ == "__main__":
    main()
