"""The training-like loop of benchmarks/bench_latency.py, run in a fresh process per tool.

Six checkpoints of one float32 file (512 MiB by default), each step changing it as training
might:

1. new            the file is written for the first time
2. 10% changed    10% of its 4 MiB blocks get small perturbations (some layers fine-tuned)
3. identical      the same bytes are written again (new mtime, same content)
4. untouched      the file is not written at all
5. all changed    every value changes (an ordinary training step)
6. shifted        1 KiB of bytes is inserted at the front

``--tool`` picks who records the checkpoints: ``replicate`` (this checkout), ``keepsake`` (run
with keepsake's own venv; needs keepsake.yaml in the working directory) or ``none`` (the same
loop without checkpointing: the baseline). ``--hashes`` prints the SHA-256 of the file at every
step instead of checkpointing (the expected content, to verify what the repositories hold).

The time spent inside ``checkpoint()`` is measured per step; the loop prints one JSON line on
stdout when it ends (before the interpreter exit, where saving may still go on: the parent
measures the process wall time). Works with numpy only (keepsake's venv has no replicate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402

MODEL = "model.bin"
STEPS = ("new", "10% changed", "identical", "untouched", "all changed", "shifted")
BLOCK = 4 << 20  # bytes per block in the "10% changed" step


def steps(mib: int, seed: int):
    """Yield (step index, name) after bringing model.bin into that step's state."""
    n = (mib << 20) // 4
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n, dtype=np.float32)
    floats = BLOCK // 4
    nblocks = n // floats
    for i, name in enumerate(STEPS):
        if name == "new":
            w.tofile(MODEL)
        elif name == "10% changed":
            k = max(1, round(nblocks * 0.1))
            for b in rng.choice(nblocks, k, replace=False):
                s = slice(int(b) * floats, (int(b) + 1) * floats)
                w[s] += 1e-3 * rng.standard_normal(floats, dtype=np.float32)
            w.tofile(MODEL)
        elif name == "identical":
            w.tofile(MODEL)
        elif name == "untouched":
            pass
        elif name == "all changed":
            w += np.float32(1e-3)
            w.tofile(MODEL)
        elif name == "shifted":
            with open(MODEL, "wb") as f:
                f.write(rng.bytes(1024))
                w.tofile(f)
        yield i, name


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", choices=("replicate", "keepsake", "none"), required=True)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hashes", action="store_true")
    args = ap.parse_args()

    if args.hashes:
        out = [sha256_file(MODEL) for _i, _name in steps(args.mib, args.seed)]
        print(json.dumps({"hashes": out}), flush=True)
        return

    exp = None
    if args.tool == "replicate":
        import replicate

        exp = replicate.init(params={"bench": "latency"})
    elif args.tool == "keepsake":
        import keepsake

        exp = keepsake.init(params={"bench": "latency"})
    t_ready = time.perf_counter()
    blocked: list[float] = []
    ids: list[object] = []
    for i, _name in steps(args.mib, args.seed):
        t = time.perf_counter()
        if exp is not None:
            cp = exp.checkpoint(path=MODEL, step=i, metrics={"step": i})
            assert cp is not None, "checkpoint() failed"
            ids.append(cp)
        blocked.append(time.perf_counter() - t)
    t_end = time.perf_counter()
    print(json.dumps({
        "tool": args.tool,
        "blocked": blocked,
        "startup": t_ready - T0,  # imports and init()
        "loop": t_end - t_ready,
        "pid": os.getpid(),
    }), flush=True)
    sys.stdout.flush()
    # the interpreter exits now: each tool finishes saving on its own (exit drain)


if __name__ == "__main__":
    main()
