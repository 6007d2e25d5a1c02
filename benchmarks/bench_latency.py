"""Training-loop latency: replicate vs keepsake 0.4.2 vs no tool, on one training-like loop.

Each run starts a fresh process in a fresh project directory per tool, and runs the loop of
benchmarks/latency/loop.py: six checkpoints of a 512 MiB float32 file (new; 10% of its 4 MiB
blocks changed; identical bytes rewritten; untouched; every value changed; 1 KiB inserted at
the front). For every tool it reports:

blocked   seconds spent inside ``checkpoint()`` (what leaves a GPU idle): the median over the
          six calls, and the largest
wall      the wall time of the whole child process, from its start until it exits, including
          the exit drain (both tools finish saving before the interpreter ends)
+sync     wall plus an ``os.sync()`` right after the child exits (replicate fsyncs its packs;
          keepsake does not, so this is the durable comparison)
repo      bytes under the repository directory (.replicate or .keepsake), and that size as a
          fraction of the logical bytes checkpointed (6 x 512 MiB)

The baseline ("none") is the same loop without a tool: what the loop costs by itself. Tools are
run in a rotating order (replicate, keepsake, none; then keepsake, none, replicate; ...) so slow
phases of a noisy machine do not always hit the same tool. ``--verify`` reads every checkpoint
back and compares it with the bytes the loop wrote (SHA-256).

    .venv/bin/python benchmarks/bench_latency.py [--runs 3] [--mib 512] [--verify]
        [--keepsake-python /work/ksvenv/bin/python] [--dir /tmp] [--json out.json]

keepsake needs its own venv (keepsake==0.4.2 protobuf==3.20.3 "setuptools<70"; see
shared/reference/limits.md 6.1); without it, ``--tools replicate,none``.

Results: docs/performance.md, "Training-loop latency".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = ROOT / "benchmarks" / "latency" / "loop.py"
REPO_DIRS = {"replicate": ".replicate", "keepsake": ".keepsake", "none": None}
DEFAULT_KEEPSAKE = "/work/ksvenv/bin/python"


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def run_child(tool: str, python: str, project: Path, mib: int, seed: int) -> dict:
    """Run the loop in a fresh process; returns its report plus wall time, peak RSS, stderr."""
    env = dict(os.environ)
    env["KEEPSAKE_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("REPLICATE_MEMORY_BUDGET", None)
    if tool == "replicate":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if tool == "keepsake":
        (project / "keepsake.yaml").write_text('repository: "file://.keepsake"\n')
    cmd = [python, str(LOOP), "--tool", tool, "--mib", str(mib), "--seed", str(seed)]
    with open(project.parent / f"{project.name}.stderr", "w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()  # small: one JSON line
        _pid, status, usage = os.wait4(proc.pid, 0)  # (not proc.wait(): we want its rusage)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        t1 = time.perf_counter()
        os.sync()
        sync = time.perf_counter() - t1
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} loop failed (rc={proc.returncode}):\n{stderr[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    report.update(wall=wall, sync=sync, stderr=stderr, peak_rss=usage.ru_maxrss << 10)
    return report


def expected_hashes(python: str, base: Path, mib: int, seed: int) -> list[str]:
    d = base / "hashes"
    d.mkdir()
    out = subprocess.run([python, str(LOOP), "--tool", "none", "--hashes", "--mib", str(mib),
                          "--seed", str(seed)], cwd=d, check=True, capture_output=True, text=True)
    shutil.rmtree(d)
    return json.loads(out.stdout)["hashes"]


def sha256_stream(f) -> str:
    h = hashlib.sha256()
    while True:
        b = f.read(8 << 20)
        if not b:
            return h.hexdigest()
        h.update(b)


def verify_replicate(project: Path) -> list[str]:
    """SHA-256 of model.bin in each checkpoint, in step order."""
    sys.path.insert(0, str(ROOT))
    from replicate import Project

    p = Project(directory=project)
    [exp] = p.experiments.list()
    out = []
    for cp in sorted(exp.checkpoints, key=lambda c: c.step):
        with cp.open("model.bin") as f:
            out.append(sha256_stream(f))
    p.repo().close()
    return out


def verify_keepsake(project: Path) -> list[str]:
    meta_dir = project / ".keepsake" / "metadata" / "experiments"
    [meta] = list(meta_dir.glob("*.json"))
    cps = sorted(json.loads(meta.read_text())["checkpoints"], key=lambda c: c["step"])
    out = []
    for c in cps:
        with tarfile.open(project / ".keepsake" / "checkpoints" / f"{c['id']}.tar.gz") as t:
            [member] = [m for m in t.getmembers() if m.name.endswith("model.bin")]
            f = t.extractfile(member)
            assert f is not None
            out.append(sha256_stream(f))
    return out


def fmt_range(xs: list[float], unit: str = "s", digits: int = 2) -> str:
    if not xs:
        return "-"
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tools", default="replicate,keepsake,none")
    ap.add_argument("--keepsake-python", default=DEFAULT_KEEPSAKE)
    ap.add_argument("--dir", default=None, help="where to create the temporary projects")
    ap.add_argument("--verify", action="store_true", help="read every checkpoint back")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the project directories")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    python = {"replicate": sys.executable, "none": sys.executable,
              "keepsake": args.keepsake_python}
    if "keepsake" in tools and not Path(args.keepsake_python).exists():
        sys.exit(f"no keepsake venv at {args.keepsake_python} (--keepsake-python, or "
                 "--tools replicate,none)")
    logical = 6 * (args.mib << 20)
    base = Path(tempfile.mkdtemp(prefix="bench-latency-", dir=args.dir))
    print(f"{args.runs} runs of 6 checkpoints of a {args.mib} MiB file; logical bytes "
          f"{logical:,}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; in {base}",
          flush=True)
    expected = expected_hashes(sys.executable, base, args.mib, args.seed) if args.verify else None
    results: dict[str, list[dict]] = {t: [] for t in tools}
    try:
        for run in range(args.runs):
            order = tools[run % len(tools):] + tools[: run % len(tools)]
            for tool in order:
                project = base / f"{tool}-{run}"
                project.mkdir()
                os.sync()  # earlier runs' dirty pages must not slow this one down
                r = run_child(tool, python[tool], project, args.mib, args.seed)
                repo_dir = REPO_DIRS[tool]
                r["repo_bytes"] = dir_bytes(project / repo_dir) if repo_dir else 0
                r["exit_message"] = ("still saving" in r["stderr"]
                                     or "still saving data" in r["stderr"])
                if expected is not None and tool != "none":
                    got = (verify_replicate if tool == "replicate" else verify_keepsake)(project)
                    r["verified"] = got == expected
                    r["verify_detail"] = [g == e for g, e in zip(got, expected)]
                r.pop("stderr")
                results[tool].append(r)
                b = r["blocked"]
                print(f"run {run + 1} {tool:9s} blocked median {statistics.median(b):.3f} s, "
                      f"max {max(b):.3f} s [{' '.join(f'{x:.2f}' for x in b)}]; wall "
                      f"{r['wall']:.2f} s (+sync {r['sync']:.2f}); loop {r['loop']:.2f} s; repo "
                      f"{r['repo_bytes'] / logical:.2f}x; peak RSS {r['peak_rss'] / 2**30:.2f} GiB"
                      + (f"; verified {r['verified']}" if "verified" in r else ""), flush=True)
                if not args.keep:
                    shutil.rmtree(project, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print("\nmedians over runs (min-max):")
    print(f"{'tool':10s} {'blocked/ckpt':22s} {'max blocked':22s} {'wall':22s} "
          f"{'wall+sync':22s} {'repo/logical':18s}")
    summary = {}
    for tool in tools:
        rs = results[tool]
        med_b = [statistics.median(r["blocked"]) for r in rs]
        max_b = [max(r["blocked"]) for r in rs]
        wall = [r["wall"] for r in rs]
        wsync = [r["wall"] + r["sync"] for r in rs]
        size = [r["repo_bytes"] / logical for r in rs]
        summary[tool] = {"blocked": statistics.median(med_b), "wall": statistics.median(wall),
                         "size": statistics.median(size)}
        print(f"{tool:10s} {fmt_range(med_b, digits=3):22s} {fmt_range(max_b):22s} "
              f"{fmt_range(wall):22s} {fmt_range(wsync):22s} {fmt_range(size, 'x'):18s}")
    print("\nper step, blocked seconds (median over runs):")
    for tool in tools:
        per = [statistics.median(r["blocked"][i] for r in results[tool]) for i in range(6)]
        print(f"  {tool:10s} " + " ".join(f"{x:6.3f}" for x in per))
    if "replicate" in summary and "keepsake" in summary:
        r, k = summary["replicate"], summary["keepsake"]
        print("\ntargets (medians):")
        print(f"  blocked: replicate {r['blocked']:.3f} s <= 0.5 x keepsake "
              f"{k['blocked']:.3f} s: {r['blocked'] <= 0.5 * k['blocked']}")
        print(f"  wall: replicate {r['wall']:.2f} s <= keepsake {k['wall']:.2f} s: "
              f"{r['wall'] <= k['wall']}")
        print(f"  repo: replicate {r['size']:.2f}x <= 0.4x (keepsake {k['size']:.2f}x): "
              f"{r['size'] <= 0.4}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
