"""A training loop that checkpoints in the background until it ends or is killed
(tests/test_background_save.py, the kill -9 test).

Each step brings model.bin (float32) into a new state, cycling through what training does to
weights: new values, 10% of 4 MiB blocks changed, identical bytes rewritten, untouched, every
value changed, 1 KiB inserted at the front. It prints, one line each, flushed at once:

    I <experiment id>            after replicate.init() (the repository has been opened)
    B <step> <blake3>            before checkpoint(): the bytes model.bin holds for that step
    R <step>                     checkpoint() returned (the bytes are captured)
    D <step> <checkpoint id>     the checkpoint is committed (a sidecar thread's cp.wait())
    E                            the loop is over; the interpreter exits (exit drain) next

Usage: bg_loop.py MIB SEED STEPS
"""

from __future__ import annotations

import queue
import sys
import threading

import blake3
import numpy as np

import replicate

MODEL = "model.bin"
_out = threading.Lock()


def say(*parts: object) -> None:
    line = " ".join(map(str, parts)) + "\n"
    with _out:  # one write per line: a kill never leaves half a line behind a whole one
        sys.stdout.write(line)
        sys.stdout.flush()


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest()


def waiter(q: queue.Queue) -> None:
    while True:
        step, cp = q.get()
        cp.wait()  # raises if the background save failed: the thread dies loudly
        say("D", step, cp.id)


def main() -> None:
    mib, seed, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    n = (mib << 20) // 4
    block = (4 << 20) // 4
    w = rng.standard_normal(n, dtype=np.float32)
    exp = replicate.init(params={"seed": seed})
    say("I", exp.id)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=waiter, args=(q,), daemon=True).start()
    for step in range(steps):
        kind = step % 6
        if kind == 0:
            w = rng.standard_normal(n, dtype=np.float32)
            w.tofile(MODEL)
        elif kind == 1:
            for b in rng.choice(n // block, max(1, n // block // 10), replace=False):
                w[b * block:(b + 1) * block] += 1e-3 * rng.standard_normal(block, np.float32)
            w.tofile(MODEL)
        elif kind == 2:
            w.tofile(MODEL)
        elif kind == 4:
            w += np.float32(1e-3)
            w.tofile(MODEL)
        elif kind == 5:
            with open(MODEL, "wb") as f:
                f.write(rng.bytes(1024))
                w.tofile(f)
        say("B", step, digest(MODEL))
        cp = exp.checkpoint(path=MODEL, step=step, metrics={"step": step})
        assert cp is not None
        say("R", step)
        q.put((step, cp))
    say("E")


if __name__ == "__main__":
    main()
