"""A background save that fails: the repository's tmp/ directory is replaced by a file after
checkpoint() returned, before the background commit writes its packs, so writing them fails
(tests/test_background_save.py). Then tmp/ is put back and training checkpoints again.

To replace tmp/ at that moment deterministically, the script holds the repository's gc lock
exclusively (as ``replicate gc`` would) while it calls checkpoint(): the capture needs no
lock, the background commit waits for it.

Prints JSON lines: ``returned`` (what the Checkpoint knew at once), ``raised`` (what
Checkpoint.wait() raised), ``second`` (the next checkpoint, once tmp/ is back).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import replicate
from replicate.fsutil import flocked

MODEL = "model.bin"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    with open(MODEL, "wb") as f:
        f.write(os.urandom(8 << 20))
    exp = replicate.init(params={"error": True})
    tmp = os.path.join(".replicate", "tmp")
    with flocked(Path(".replicate") / "gc.lock", exclusive=True):
        cp = exp.checkpoint(path=MODEL, step=7, metrics={"loss": 0.5})
        emit(event="returned", none=cp is None, step=cp.step, metrics=cp.metrics,
             saved=cp.saved)
        shutil.rmtree(tmp)
        with open(tmp, "w") as f:
            f.write("not a directory\n")
    try:
        cp.wait(timeout=60)
        emit(event="raised", error=None)
    except Exception as e:
        emit(event="raised", error=type(e).__name__, message=str(e),
             listed=cp in exp.checkpoints, saved=cp.saved)
    os.unlink(tmp)
    os.mkdir(tmp)
    cp2 = exp.checkpoint(path=MODEL, step=8, metrics={"loss": 0.4})
    emit(event="second", id=cp2.id, steps=[c.step for c in exp.checkpoints])


if __name__ == "__main__":
    main()
