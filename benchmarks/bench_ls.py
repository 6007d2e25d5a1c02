"""Benchmark of ``replicate ls`` on repositories of 1,000 and 10,000 experiments.

Builds each repository quickly: every experiment and checkpoint object goes into the store in
one transaction (``Transaction.put_object``) and each experiment's ref file is written directly
in the layout of ``replicate.refs.store`` (no lock, no reflog, no fsync: a benchmark fixture,
not a way to record experiments). Then times ``replicate ls`` in-process (the click command via
CliRunner) and as a subprocess (``python -m replicate ls``): cold (no summary cache: every
experiment and checkpoint object is read), warm (the cache is up to date and trusted: no ref
file is read) and refs-changed (a ref was updated just now, as by a running experiment's
checkpoint: every ref file is read and the cache rewritten).

    .venv/bin/python benchmarks/bench_ls.py [--sizes 1000,10000] [--checkpoints 3] [--runs 5]

Prints median and best wall times and median CPU time (user + system), in seconds. Results:
docs/performance.md, section "ls".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T0 = 1_795_000_000_000_000_000
SEC = 1_000_000_000


def build_repo(project: Path, n: int, checkpoints: int = 3) -> Path:
    """A project whose ``.replicate`` holds ``n`` experiments of ``checkpoints`` checkpoints."""
    from replicate.objects import codec
    from replicate.repository import Repository

    project.mkdir(parents=True, exist_ok=True)
    repo = Repository.init(project / ".replicate")
    heads: dict[bytes, bytes] = {}
    packages = tuple((f"package-{i}", f"1.{i}.0") for i in range(40))
    with repo.objects.transaction() as txn:
        for i in range(n):
            created = T0 + i * SEC
            exp = codec.Experiment(
                created_ns=created, nonce=i.to_bytes(16, "big"),
                params={"learning_rate": [0.1, 0.01, 0.001][i % 3], "num_layers": 2 + i % 4,
                        "optimizer": "adam", "seed": i},
                path=None, code=None, user="ben", host="", command=f"train.py --seed {i}",
                python_version="3.11.7", packages=packages,
                git={"commit": "a" * 40, "branch": "main", "dirty": False},
                system={"os": "Linux", "cpu_count": 2}, replicate_version="0.1.0",
            )
            eid = txn.put_object(exp)
            parent = None
            for step in range(checkpoints):
                cp = codec.Checkpoint(
                    experiment=eid, parent=parent, created_ns=created + (step + 1) * SEC // 10,
                    step=step, path=None, files=None,
                    metrics={"loss": 1.0 / (step + 1 + i % 7), "accuracy": 0.5 + step / 10},
                    primary_metric=("loss", "minimize"),
                )
                parent = txn.put_object(cp)
            heads[eid] = parent if parent is not None else eid
    refs = repo.root / "refs" / "experiments"
    for eid, head in heads.items():
        (refs / eid.hex()).write_text(head.hex() + "\n")
    repo.close()
    return project


def _drop_cache(project: Path) -> None:
    (project / ".replicate" / "cache" / "summaries.msgpack").unlink(missing_ok=True)


def _touch_refs(project: Path) -> None:
    """What any ref update does to the refs directory (a checkpoint was just recorded)."""
    os.utime(project / ".replicate" / "refs" / "experiments")


PREPARE = {"cold": _drop_cache, "warm": lambda project: None, "refs-changed": _touch_refs}


def time_in_process(project: Path, state: str, runs: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of the click command run through CliRunner."""
    from click.testing import CliRunner

    from replicate.cli.app import cli

    runner = CliRunner()
    out = []
    for _ in range(runs):
        PREPARE[state](project)
        t, c = time.perf_counter(), time.process_time()
        r = runner.invoke(cli, ["-D", str(project), "ls"], catch_exceptions=False)
        out.append((time.perf_counter() - t, time.process_time() - c))
        assert r.exit_code == 0, r.output
    return out


def time_subprocess(project: Path, state: str, runs: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of ``python -m replicate ls``, interpreter start-up included."""
    import resource

    env = dict(os.environ, NO_COLOR="1", PYTHONPATH=str(ROOT))
    out = []
    for _ in range(runs):
        PREPARE[state](project)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "replicate", "-D", str(project), "ls"], env=env,
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        wall = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append((wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="build repositories here and keep them")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-ls-"))
    rows = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            project = base / f"ls-{n}"
            if not (project / ".replicate").exists():
                t = time.perf_counter()
                build_repo(project, n, args.checkpoints)
                print(f"built {n} experiments in {time.perf_counter() - t:.1f} s", file=sys.stderr)
                old = time.time() - 60  # as if the last ref changed a minute ago
                os.utime(project / ".replicate" / "refs" / "experiments", (old, old))
            for how, fn in (("in-process", time_in_process), ("subprocess", time_subprocess)):
                for state in ("cold", "warm", "refs-changed"):
                    if state == "warm":
                        fn(project, "warm", 2)  # cache written, then trusted
                    ts = fn(project, state, args.runs)
                    walls = [w for w, _ in ts]
                    rows.append((n, how, state, statistics.median(walls), min(walls),
                                 statistics.median(c for _, c in ts)))
                if how == "in-process":
                    _touch_refs(project)  # leave the cache to be re-validated
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'experiments':>11}  {'how':<10}  {'cache':<12}  {'median s':>8}  {'best s':>7}  "
          f"{'cpu s':>6}")
    for n, how, state, med, best, cpu in rows:
        print(f"{n:>11}  {how:<10}  {state:<12}  {med:8.3f}  {best:7.3f}  {cpu:6.3f}")


if __name__ == "__main__":
    main()
