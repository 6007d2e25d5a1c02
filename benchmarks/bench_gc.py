"""gc benchmark: the mark phase over a repository of ~1,000,000 objects (DESIGN.md section 7:
"gc mark over 1,000,000 objects: < 10 s, < 500 MB").

The synthetic repository is written through the store API (``Transaction.put_chunk`` /
``put_object``, one transaction per experiment) and the ref store: ``--experiments`` experiments
(default 100) of ``--checkpoints`` checkpoints each (default 100), every checkpoint a files tree
holding one file of ``--chunks`` tiny distinct chunks (default 100): 100 x 100 x 100 = 1,000,000
chunks, plus 10,000 files, 10,000 trees, 10,000 checkpoints and 100 experiments. Each
experiment's reflog holds one entry per checkpoint (10,000 reflog roots, as real training
leaves them). ``--garbage`` extra experiments (default 5) are written and then deleted, so the
sweep analysis has something to find.

Each measurement runs in a fresh child process (cold Python, warm page cache) and reports:

- **open**: opening the repository and loading the index (every segment, merged);
- **mark**: ``Marker.mark`` from every root (what the DESIGN target names);
- **gc --dry-run**: the whole ``replicate.gc.gc(dry_run=True)`` call (reflog expiry check, mark,
  the re-mark, and the sweep analysis), index load excluded;
- with ``--real``: a real ``gc(grace_ns=0)`` (removes the garbage, compacts the index into one
  segment), then open + mark again;
- **peak RSS** of the child (ru_maxrss: everything, Python and numpy included) and the
  **tracemalloc peak** of the measured step (Python and numpy allocations made by it).

Usage::

    .venv/bin/python benchmarks/bench_gc.py --real             # ~1M objects, 3 runs each
    .venv/bin/python benchmarks/bench_gc.py --experiments 10   # ~100k objects, a quick look
    .venv/bin/python benchmarks/bench_gc.py --keep DIR         # build once into DIR, reuse it

Run it from the repository root (or with PYTHONPATH pointing there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(root: Path, experiments: int, checkpoints: int, chunks: int, garbage: int) -> dict:
    """Write the synthetic repository at ``root`` (a .replicate directory)."""
    from replicate.objects import codec
    from replicate.refs.store import ReflogEntry
    from replicate.repository import Repository

    repo = Repository.init(root)
    t0 = time.monotonic()
    base_ns = time.time_ns() - 3600 * 10**9
    n_objects = 0
    deleted = []
    for e in range(experiments + garbage):
        with repo.objects.transaction() as txn:
            exp = codec.Experiment(
                created_ns=base_ns + e, nonce=e.to_bytes(16, "little"), params={"e": e},
                path=None, code=None, user="bench", host="bench", command="bench_gc.py",
                python_version="3.11", packages=(), git=None, system={},
                replicate_version="0",
            )
            eid = txn.put_object(exp)
            parent = None
            log = []
            for c in range(checkpoints):
                refs = []
                for k in range(chunks):
                    data = f"{e:06d}/{c:06d}/{k:06d} tiny distinct chunk".encode()
                    refs.append(codec.ChunkRef(txn.put_chunk(data), len(data)))
                fid = txn.put_object(codec.File(sum(r.size for r in refs), tuple(refs)))
                tree = codec.make_tree([codec.TreeEntry("weights.bin", 0o644, codec.KIND_FILE,
                                                        fid, sum(r.size for r in refs))])
                tid = txn.put_object(tree)
                cp = codec.Checkpoint(experiment=eid, parent=parent, created_ns=base_ns + c,
                                      step=c, path="weights.bin", files=tid,
                                      metrics={"loss": 1.0 / (c + 1)})
                cid = txn.put_object(cp)
                log.append(ReflogEntry(parent or eid, cid, base_ns + c, f"checkpoint step {c}"))
                parent = cid
            n_objects += txn.new_objects
        name = repo.experiment_ref(eid)
        repo.refs.update(name, eid, old=None, message="init")
        repo.refs.update(name, parent, old=eid, message="bench head")
        repo.refs.rewrite_reflog(name, log)
        if e >= experiments:
            deleted.append(eid)
            repo.refs.delete(name, message="rm")
    repo.close()
    return {"objects": n_objects, "build_s": time.monotonic() - t0,
            "garbage_experiments": len(deleted)}


CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
root, what = sys.argv[2], sys.argv[3]
from pathlib import Path
from replicate.repository import Repository
import replicate.gc as G
import numpy  # imported before measuring: part of the baseline, not of the mark

rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
repo = Repository.open(Path(root))
store = repo.objects
open_s = time.perf_counter() - t
rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
t = time.perf_counter()
out = {"open_s": open_s, "index_records": len(store.index)}
if what == "mark":
    now = time.time_ns()
    tomb = set(repo.refs.list("removed").values())
    m = G.Marker(store, tomb)
    roots = G.roots(repo, now, G.REFLOG_EXPIRE_NS)
    m.mark(roots)
    live = m.live_ids()
    out.update(seconds=time.perf_counter() - t, roots=len(roots), live=int(len(live)),
               missing=len(m.missing))
else:
    res = G.gc(repo, grace_ns=0, dry_run=(what == "dry-run"))
    out.update(seconds=time.perf_counter() - t, live=res.live_objects,
               would_remove=res.removed_objects, would_free=res.bytes_freed,
               mark_s=res.mark_seconds, errors=res.errors)
cur, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
out.update(tracemalloc_peak=peak, rss_before=rss0, rss_open=rss_open,
           rss_peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(out))
"""

# tracemalloc slows allocation-heavy Python code down: time without it, in separate runs
CHILD_FAST = CHILD.replace("tracemalloc.start()", "pass").replace(
    "cur, peak = tracemalloc.get_traced_memory()", "cur, peak = 0, 0"
).replace("tracemalloc.stop()", "pass")


def child(root: Path, what: str, traced: bool) -> dict:
    src = str(Path(__file__).resolve().parent.parent)
    p = subprocess.run([sys.executable, "-c", CHILD if traced else CHILD_FAST, src, str(root),
                        what], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"child failed: {p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=100)
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--garbage", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--real", action="store_true",
                    help="then run a real gc (grace 0: it removes the garbage experiments and "
                         "compacts the index) and time the mark again")
    ap.add_argument("--keep", type=Path, default=None,
                    help="build into (or reuse) this directory and keep it")
    args = ap.parse_args()

    tmp = None
    if args.keep is not None:
        root = args.keep
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench-gc-"))
        root = tmp / ".replicate"
    try:
        if not (root / "config").exists():
            info = build(root, args.experiments, args.checkpoints, args.chunks, args.garbage)
            print(f"built {info['objects']:,} objects ({info['garbage_experiments']} garbage "
                  f"experiments) in {info['build_s']:.1f} s at {root}", flush=True)
        du = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"repository: {mib(du)} on disk; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)

        rows = []
        for what in ("mark", "dry-run"):
            child(root, what, traced=False)  # warm-up (page cache)
            times = [child(root, what, traced=False) for _ in range(args.runs)]
            traced = child(root, what, traced=True)
            rows.append((what, times, traced))
        if args.real:
            real = child(root, "gc", traced=False)
            after = [child(root, "mark", traced=False) for _ in range(args.runs)]
            rows.append(("gc", [real], None))
            rows.append(("after", after, child(root, "mark", traced=True)))

        print()
        print("| step | median time | runs | peak RSS (whole process) | tracemalloc peak (step) |")
        print("| --- | --- | --- | --- | --- |")
        mark_times, _ = rows[0][1], rows[0][2]
        opens = [r["open_s"] for r in mark_times]
        print(f"| open repository + load index ({mark_times[0]['index_records']:,} records) | "
              f"{statistics.median(opens):.2f} s | {', '.join(f'{x:.2f}' for x in opens)} | "
              f"{mib(statistics.median(r['rss_open'] for r in mark_times))} | |")
        for what, times, traced in rows:
            secs = [r["seconds"] for r in times]
            if what == "mark":
                label = (f"Marker.mark ({times[0]['roots']:,} roots, {times[0]['live']:,} live "
                         "objects)")
            elif what == "dry-run":
                label = (f"gc --dry-run (would remove {times[0]['would_remove']:,} objects, "
                         f"{mib(times[0]['would_free'])})")
            elif what == "gc":
                label = (f"gc --grace 0 (removed {times[0]['would_remove']:,} objects, freed "
                         f"{mib(times[0]['would_free'])}; index compacted to one segment)")
            else:
                label = (f"after that gc: open {statistics.median(r['open_s'] for r in times):.2f} s"
                         f" (RSS {mib(statistics.median(r['rss_open'] for r in times))}), then "
                         "Marker.mark")
            traced_peak = mib(traced["tracemalloc_peak"]) if traced else ""
            print(f"| {label} | {statistics.median(secs):.2f} s | "
                  f"{', '.join(f'{x:.2f}' for x in secs)} | "
                  f"{mib(max(r['rss_peak'] for r in times))} | {traced_peak} |")
        m = rows[0][1]
        ok_t = statistics.median(r["seconds"] for r in m) < 10
        ok_m = max(r["rss_peak"] for r in m) < 500e6
        print()
        print(f"target (mark < 10 s, < 500 MB): {'met' if ok_t and ok_m else 'MISSED'}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
