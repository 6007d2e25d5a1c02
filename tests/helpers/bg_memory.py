"""Checkpoints of a large file taken back to back, measuring the process's peak memory
(tests/test_background_save.py). Run with REPLICATE_MEMORY_BUDGET set.

The peak resident set size (VmHWM) is reset (/proc/self/clear_refs) once the data exists, then
read after every checkpoint is committed. Prints one JSON object: the resident size before
the checkpoints, the peak during them, and where each capture went (memory or staging bytes).

Usage: bg_memory.py MIB COUNT
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import replicate
from replicate.saver import get_saver

MODEL = "model.bin"


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    mib, count = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    w = np.empty((mib << 20) // 8, dtype=np.float64)
    exp = replicate.init(params={"memory": True})
    rng.random(out=w)
    w.tofile(MODEL)
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    before = status("VmRSS")
    t0 = time.perf_counter()
    jobs = []
    for step in range(count):
        rng.random(out=w)  # new bytes, same array: no allocation
        w.tofile(MODEL)
        cp = exp.checkpoint(path=MODEL, step=step)
        assert cp is not None
        jobs.append(cp._job)
    returned = time.perf_counter() - t0
    exp.wait()
    print(json.dumps({
        "budget": get_saver().budget.configured,
        "rss_before": before,
        "peak": status("VmHWM"),
        "memory": [j.memory for j in jobs],
        "staged": [j.staged for j in jobs],
        "returned_s": returned,
        "total_s": time.perf_counter() - t0,
        "pool_total": get_saver().pool.total,
    }), flush=True)


if __name__ == "__main__":
    main()
