"""A small "training script" run as a subprocess by tests/test_tracking.py.

It records an experiment the way a user's script does: ``replicate.init(path=".", params=...)``
with numpy values and nested dicts, then several ``checkpoint(path="model.bin", ...)`` calls. After
each call it OVERWRITES model.bin with new random bytes (same size) before the next call, so the
test can check that every checkpoint kept the bytes it was given. One JSON object per line on
stdout tells the test what to expect::

    {"event": "init", "id": ...}
    {"event": "checkpoint", "step": ..., "sha256": <of the bytes checkpointed>}

It never reads a checkpoint's ``id`` (which waits until the checkpoint is committed): the file
is overwritten the moment checkpoint() returns, and the script exits right after its last
checkpoint() call, so whatever is still being saved must be saved at exit.

Usage: train_basic.py --flag VALUE [--seed N] [--size BYTES]
"""

import argparse
import hashlib
import json

import numpy as np

import replicate

MODEL = "model.bin"

# (step, loss) of each checkpoint: NaN and None must be skipped by best(); an explicit step
# (10) resets the counter, so the steps are 0, 1, 2, 10, 11.
PLAN = [(None, float("nan")), (None, None), (None, 0.8), (10, 0.3), (None, 0.6)]


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def write_model(rng: np.random.Generator, size: int) -> str:
    """Overwrite MODEL with ``size`` new random bytes; return their SHA-256."""
    data = rng.integers(0, 2**64, size // 8, dtype=np.uint64).tobytes()
    with open(MODEL, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=400_000)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    params = {
        "lr": np.float32(0.5),
        "batch_size": np.int64(64),
        "dropout": np.float64(0.25),
        "augment": np.bool_(True),
        "layers": np.array([64, 32], dtype=np.int32),
        "optimizer": {"name": "adam", "betas": (np.float32(0.5), 0.999),
                      "schedule": {"warmup": np.int16(10)}},
        "flag": args.flag,
        "comment": None,
    }
    experiment = replicate.init(path=".", params=params)
    emit(event="init", id=experiment.id)

    sha = write_model(rng, args.size)
    for i, (step, loss) in enumerate(PLAN):
        metrics = {
            "loss": loss,
            "accuracy": np.float32(0.75 + i / 64),  # exact in float32
            "converged": i == len(PLAN) - 1,
            "improved": np.bool_(loss is not None and loss < 0.7),
            "epoch": np.int64(i),
            "note": None,
        }
        cp = experiment.checkpoint(path=MODEL, step=step, metrics=metrics,
                                   primary_metric=("loss", "minimize"))
        sha_next = write_model(rng, args.size)  # at once: the checkpoint must hold its bytes
        emit(event="checkpoint", step=cp.step, sha256=sha)
        sha = sha_next
    # No stop(): a clean exit marks the experiment stopped.


if __name__ == "__main__":
    main()
