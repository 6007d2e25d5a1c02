"""Benchmark of ``Experiment.checkpoint()`` on a 1 GiB file: the time a training loop waits.

Three cases, each in a fresh temporary project on the same file system as ``--dir``:

unchanged  A training loop checkpoints a 1 GiB file that it does not touch between steps
           (frozen weights, a file re-saved only now and then): after the first call(s), the
           stat cache turns each call into a ``stat``. Calls are back to back (no training work
           in between), the worst case for the stat cache's racy-clean rule: a file's stat is
           only trusted when its mtime and ctime were older than the file system's timestamp
           granularity when it was read (100 ms for nanosecond timestamps, 2 s for whole-second
           ones; no wait at all on file systems with fine-grained "multigrain" timestamps, Linux
           6.13+). Calls within that window of writing the file read it again (the bytes are
           already stored: a read and a hash, no write). ``--simulate-racy 2`` applies a 2 s
           window even here, to show that case. The first few calls are reported one by one,
           then the median of the rest.
identical  The 1 GiB file is rewritten with the same bytes before each call (mtime changed,
           content not): a full read and hash, nothing new stored.
new        The file is rewritten with new pseudo-random bytes before each call: everything is
           chunked, hashed, compressed (probed: random bytes stay raw), packed and fsynced.
           Baseline, for scale: ``cp FILE COPY && sync`` of the same file.

For each call two times are reported: ``returned`` (how long checkpoint() blocked the training
loop) and ``committed`` (until the checkpoint is durable: reading ``Checkpoint.id`` waits for it
when the checkpoint is saved in the background). The file is warm in the page cache.

    .venv/bin/python benchmarks/bench_checkpoint.py [--size-mib 1024] [--steps 20] [--runs 3]
        [--dir /tmp]

Results: docs/performance.md, "checkpoint()".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PIECE = 64 << 20


def write_random(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, size, PIECE):
            n = min(PIECE, size - start)
            f.write(rng.integers(0, 2**64, n // 8, dtype=np.uint64).tobytes())


def rewrite_same(path: Path) -> None:
    """Rewrite a file with its own bytes (new mtime and ctime, same content)."""
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, path)


def timed_checkpoint(exp, step: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    cp = exp.checkpoint(path="model.bin", metrics={"loss": 1.0 / (step + 1)})
    returned = time.perf_counter() - t0
    assert cp is not None, "checkpoint failed"
    assert len(cp.id) == 64  # waits for the commit of a checkpoint saved in the background
    return returned, time.perf_counter() - t0


def new_experiment(project: Path):
    from replicate import Project

    return Project(directory=project).experiments.create(params={"bench": True},
                                                         disable_heartbeat=True)


def bench_unchanged(base: Path, size: int, steps: int) -> list[tuple[float, float]]:
    project = base / "unchanged"
    project.mkdir()
    write_random(project / "model.bin", size, seed=0)
    exp = new_experiment(project)
    return [timed_checkpoint(exp, i) for i in range(steps)]


def bench_identical(base: Path, size: int, runs: int) -> list[tuple[float, float]]:
    project = base / "identical"
    project.mkdir()
    write_random(project / "model.bin", size, seed=1)
    exp = new_experiment(project)
    timed_checkpoint(exp, 0)  # store the bytes once
    out = []
    for i in range(runs):
        rewrite_same(project / "model.bin")
        out.append(timed_checkpoint(exp, i + 1))
    return out


def bench_new(base: Path, size: int, runs: int) -> tuple[list[tuple[float, float]], list[float]]:
    project = base / "new"
    project.mkdir()
    exp = new_experiment(project)
    out, baseline = [], []
    for i in range(runs):
        write_random(project / "model.bin", size, seed=100 + i)
        os.sync()
        t0 = time.perf_counter()
        shutil.copyfile(project / "model.bin", base / "copy.bin")
        os.sync()
        baseline.append(time.perf_counter() - t0)
        (base / "copy.bin").unlink()
        out.append(timed_checkpoint(exp, i))
    return out, baseline


def fmt(ts: list[float]) -> str:
    return f"{statistics.median(ts):.3f} s (min {min(ts):.3f}, max {max(ts):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20, help="calls in the unchanged case")
    parser.add_argument("--first", type=int, default=4, help="first calls reported one by one")
    parser.add_argument("--runs", type=int, default=3, help="calls in the identical/new cases")
    parser.add_argument("--dir", default=None, help="where to create the temporary projects")
    parser.add_argument("--simulate-racy", type=float, default=None, metavar="SECONDS",
                        help="trust a file's stat only SECONDS after its last change (as on a "
                        "file system with coarse timestamps)")
    parser.add_argument("--only-unchanged", action="store_true")
    args = parser.parse_args()
    size = args.size_mib << 20
    import replicate
    from replicate.objects import statcache

    base = Path(tempfile.mkdtemp(prefix="bench-checkpoint-", dir=args.dir))
    if args.simulate_racy is not None:
        statcache.RACY_NS = statcache.RACY_COARSE_NS = int(args.simulate_racy * 1e9)
        statcache.fine_grained_timestamps = lambda _dir: False
        window = f"{args.simulate_racy} s (simulated)"
    elif statcache.fine_grained_timestamps(base):
        window = "none (fine-grained timestamps)"
    else:
        window = "100 ms (2 s for whole-second timestamps)"
    print(f"replicate {replicate.__version__}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, file {args.size_mib} MiB, in {base}, racy window: {window}")
    try:
        calls = bench_unchanged(base, size, args.steps)
        print("\nunchanged file, back-to-back calls (returned / committed):")
        for i, (r, c) in enumerate(calls[: args.first]):
            print(f"  call {i + 1}: {r:.3f} s / {c:.3f} s")
        rest = calls[args.first:]
        if rest:
            print(f"  calls {args.first + 1}-{len(calls)}: median returned "
                  f"{fmt([r for r, _ in rest])}; committed {fmt([c for _, c in rest])}")
        if args.only_unchanged:
            return

        same = bench_identical(base, size, args.runs)
        print(f"\nrewritten with identical bytes ({args.runs} runs): returned "
              f"{fmt([r for r, _ in same])}; committed {fmt([c for _, c in same])}")

        new, baseline = bench_new(base, size, args.runs)
        print(f"\nnew bytes ({args.runs} runs): returned {fmt([r for r, _ in new])}; committed "
              f"{fmt([c for _, c in new])}")
        print(f"  baseline cp && sync: {fmt(baseline)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
