"""Three checkpoints of new 64 MiB files, then an immediate exit: the interpreter must commit
them all before it ends (tests/test_background_save.py).

Prints ``B <step> <blake3>`` before each checkpoint and ``R <step>`` after it returned, then
``E`` and returns from main. ``--message-after S`` overrides how long the exit drain waits
before it says that replicate is still saving.

Usage: bg_exit.py MIB [--message-after S]
"""

from __future__ import annotations

import sys

import blake3
import numpy as np

import replicate
import replicate.saver

MODEL = "model.bin"


def main() -> None:
    mib = int(sys.argv[1])
    if "--message-after" in sys.argv:
        replicate.saver.EXIT_MESSAGE_AFTER = float(sys.argv[sys.argv.index("--message-after") + 1])
    rng = np.random.default_rng(1)
    exp = replicate.init(params={"exit": True})
    for step in range(3):
        data = rng.integers(0, 2**63, (mib << 20) // 8, dtype=np.int64).tobytes()
        with open(MODEL, "wb") as f:
            f.write(data)
        print("B", step, blake3.blake3(data).hexdigest(), flush=True)
        assert exp.checkpoint(path=MODEL, step=step) is not None
        print("R", step, flush=True)
    print("E", flush=True)


if __name__ == "__main__":
    main()
