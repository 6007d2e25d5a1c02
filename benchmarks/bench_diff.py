"""Benchmark of ``replicate diff`` on two checkpoints of a 1 GiB weights file, 10% changed.

The file is 256 blocks of 4 MiB of float32 N(0, 1) values; the second checkpoint perturbs 25
blocks chosen at random by +1e-3 * N(0, 1) (every value of those blocks changes, a few of their
bytes stay equal). Truth: 25 x 4 MiB changed. Both versions go into one repository through
``replicate.build.snapshot`` (``Repository.init``, one experiment, two checkpoints), then:

- the library: ``replicate.diff.diff(a, b)`` in this process (warm: metadata packs and chunks
  in the page cache), median and best of ``--runs`` after a warm-up;
- the CLI: ``python -m replicate diff A B --json`` as a subprocess (cold process: imports
  included), median and best of ``--runs``;
- the floor of that subprocess: starting Python and importing the modules it needs;
- for scale, once: a naive comparison that reads both versions in full from the store
  (``Checkpoint.open``) and compares every byte (``--no-naive`` skips it).

Acceptance (docs/performance.md, "diff"): the changed bytes within one chunk's maximum size
(1 MiB) of the truth, in less than 1 s.

    .venv/bin/python benchmarks/bench_diff.py [--size-mib 1024] [--changed 25] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BLOCK = 4 * 1024 * 1024
T0 = 1_795_000_000_000_000_000
SEC = 1_000_000_000


def write_weights(path: Path, blocks: int, seed: int) -> None:
    """``blocks`` x 4 MiB of float32 N(0, 1), written block by block (bounded memory)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for _ in range(blocks):
            f.write(rng.standard_normal(BLOCK // 4, dtype=np.float32).tobytes())


def perturb(path: Path, which: list[int], seed: int) -> None:
    """Add 1e-3 * N(0, 1) to every value of the given blocks, in place."""
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        for k in which:
            f.seek(k * BLOCK)
            v = np.frombuffer(f.read(BLOCK), dtype=np.float32).copy()
            v += np.float32(1e-3) * rng.standard_normal(len(v), dtype=np.float32)
            f.seek(k * BLOCK)
            f.write(v.tobytes())


def build(project: Path, blocks: int, changed: int, seed: int) -> tuple[str, str, int]:
    """A project with one experiment and two checkpoints of ``weights.bin``; returns the two
    checkpoint IDs and the true number of changed bytes."""
    from replicate.build import snapshot
    from replicate.objects import codec
    from replicate.repository import Repository

    project.mkdir(parents=True, exist_ok=True)
    repo = Repository.init(project / ".replicate")
    weights = project / "weights.bin"
    write_weights(weights, blocks, seed)
    exp = codec.Experiment(
        created_ns=T0, nonce=b"\0" * 16, params={"lr": 0.01}, path=None, code=None, user="bench",
        host="", command="train.py", python_version="3.11", packages=(), git=None, system={},
        replicate_version="0",
    )
    with repo.objects.transaction() as txn:
        eid = txn.put_object(exp)
    repo.refs.update(repo.experiment_ref(eid), eid, old=None, message="init")
    which = sorted(np.random.default_rng(seed + 1).choice(blocks, changed, replace=False).tolist())
    head = eid
    cids = []
    for step in range(2):
        if step == 1:
            perturb(weights, which, seed + 2)
        with repo.objects.transaction() as txn:
            files, _ = snapshot(txn, project, "weights.bin")
            cp = codec.Checkpoint(
                experiment=eid, parent=None if head == eid else head,
                created_ns=T0 + (step + 1) * SEC, step=step, path="weights.bin", files=files,
                metrics={"loss": 1.0 / (step + 1)}, primary_metric=("loss", "minimize"),
            )
            cid = txn.put_object(cp)
        repo.refs.update(repo.experiment_ref(eid), cid, old=head, message=f"step {step}")
        head = cid
        cids.append(cid.hex())
    weights.unlink()
    repo.close()
    return cids[0], cids[1], changed * BLOCK


def time_library(project: Path, a: str, b: str, runs: int) -> tuple[list[float], int, bool]:
    from replicate.diff import diff
    from replicate.project import Project

    def once() -> tuple[float, int, bool]:
        p = Project(directory=project)
        t = time.perf_counter()
        ca, cb = p.checkpoints.get(a), p.checkpoints.get(b)
        d = diff(ca, cb)
        dt = time.perf_counter() - t
        (f,) = d.files
        p.repo().close()
        return dt, f.changed_bytes, f.exact

    once()  # warm-up
    times = []
    n, exact = 0, False
    for _ in range(runs):
        dt, n, exact = once()
        times.append(dt)
    return times, n, exact


def time_cli(project: Path, a: str, b: str, runs: int) -> tuple[list[float], int]:
    cmd = [sys.executable, "-m", "replicate", "-D", str(project), "diff", a, b, "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # warm-up
    times = []
    n = 0
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, env=env).stdout
        times.append(time.perf_counter() - t)
        n = json.loads(out)["files"][0]["changed_bytes"]
    return times, n


def time_imports(runs: int) -> list[float]:
    """The floor of any ``replicate diff`` process: start Python, import what it imports."""
    cmd = [sys.executable, "-c", "import replicate.cli.app, replicate.cli.diff, replicate.diff"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        times.append(time.perf_counter() - t)
    return times


def naive(project: Path, a: str, b: str) -> tuple[float, int]:
    """Read both versions in full and count the span of differing bytes per 4 MiB block."""
    from replicate.project import Project

    p = Project(directory=project)
    t = time.perf_counter()
    fa = p.checkpoints.get(a).open("weights.bin")
    fb = p.checkpoints.get(b).open("weights.bin")
    n = 0
    while True:
        x, y = fa.read(BLOCK), fb.read(BLOCK)
        if not x:
            break
        d = np.flatnonzero(np.frombuffer(x, np.uint8) != np.frombuffer(y, np.uint8))
        if len(d):
            n += int(d[-1] - d[0] + 1)
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size (multiple of 4)")
    ap.add_argument("--changed", type=int, default=25, help="4 MiB blocks perturbed")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-naive", action="store_true", help="skip the full-read comparison")
    ap.add_argument("--workdir", default=None, help="where to build (default: a temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_diff_", dir=args.workdir))
    try:
        blocks = args.size_mib * 1024 * 1024 // BLOCK
        t = time.perf_counter()
        a, b, truth = build(work / "project", blocks, args.changed, args.seed)
        print(f"built {args.size_mib} MiB x 2 checkpoints in {time.perf_counter() - t:.1f} s "
              f"({args.changed} of {blocks} blocks of 4 MiB perturbed)")
        lib, n_lib, exact = time_library(work / "project", a, b, args.runs)
        cli, n_cli = time_cli(work / "project", a, b, args.runs)
        floor = time_imports(args.runs)
        mib = 1024 * 1024
        print(f"truth:          {truth} bytes ({truth / mib:.2f} MiB)")
        print(f"reported:       {n_lib} bytes ({n_lib / mib:.2f} MiB), exact={exact}, "
              f"error {n_lib - truth:+d} bytes ({(n_lib - truth) / mib:+.4f} MiB)")
        assert n_cli == n_lib, (n_cli, n_lib)
        print(f"library diff:   median {statistics.median(lib):.3f} s, best {min(lib):.3f} s "
              f"(n={len(lib)}, warm, in process)")
        print(f"replicate diff: median {statistics.median(cli):.3f} s, best {min(cli):.3f} s "
              f"(n={len(cli)}, subprocess, --json)")
        print(f"  of which start-up: median {statistics.median(floor):.3f} s, best "
              f"{min(floor):.3f} s (python -c 'import replicate.cli.diff, replicate.diff')")
        if not args.no_naive:
            dt, n = naive(work / "project", a, b)
            print(f"naive full read + compare (once): {dt:.2f} s, {n} bytes")
        ok = abs(n_lib - truth) <= mib and statistics.median(cli) < 1.0
        print("acceptance (within 1 MiB, < 1 s):", "PASS" if ok else "FAIL")
        print("load average (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
