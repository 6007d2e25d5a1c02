"""Benchmark of push, pull and ``ls -R`` against a loopback S3 server (moto), which this script
starts itself the way tests/conftest.py does (``moto_server`` subprocess on a free 127.0.0.1
port, dummy keys, AWS_ENDPOINT_URL).

1. push and pull of a 1 GiB checkpoint (float32 random normal, recorded with the public API)
   against s3fs ``put_file``/``get_file`` of the same file, same endpoint, same process:
   alternating, after a warm-up round, median of ``--runs``. Every replicate run starts cold
   (fresh bucket prefix, empty remote cache; pull into a new local repository, verifying every
   pack and fsyncing). The baseline get is followed by an fsync of the file too (a pull counts
   once its packs are durable). Between rounds the server is reset (moto keeps objects in RAM).
2. Requests for N new bytes, counted with ``CountingRemote`` around the remote the push uses.
3. A push with nothing new: in-process (``replicate.sync.push``) and as a new process
   (``python -m replicate push URL``), median of ``--runs``.
4. ``ls -R`` of a bucket holding ``--experiments`` experiments (3 checkpoints each; built with
   one store transaction + ref files, then one push), cold: a new process (imports included)
   with an empty user cache (a fresh XDG_CACHE_HOME) each run; and the requests it makes
   (the same cold read in-process through ``CountingRemote``).

    .venv/bin/python benchmarks/bench_remote.py [--size-mib 1024] [--runs 5]
        [--experiments 10000]

Prints one table. Results: docs/performance.md, section "Remotes".
"""

from __future__ import annotations

import argparse
import os

# The environment of tests/conftest.py, before anything imports botocore or s3fs.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)

import resource  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
HOST = "127.0.0.1"
T0 = 1_795_000_000_000_000_000
SEC = 1_000_000_000


# --- the server --------------------------------------------------------------------------------


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([exe, "-H", HOST, "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.05)
    os.environ["AWS_ENDPOINT_URL"] = url
    return proc, url


def reset_moto(endpoint: str) -> None:
    """Drop everything the server holds (it keeps objects in memory)."""
    urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset", method="POST"),
                           timeout=30).close()


def s3fs_fs(endpoint: str):  # noqa: ANN201
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                             skip_instance_cache=True, use_listings_cache=False)


def new_bucket(endpoint: str) -> str:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3fs_fs(endpoint).mkdir(bucket)
    return bucket


# --- building local repositories --------------------------------------------------------------


def checkpoint_project(project: Path, size: int) -> tuple[Path, Path]:
    """A project holding one experiment with one checkpoint of a ``size``-byte float32 file."""
    import numpy as np

    import replicate

    project.mkdir(parents=True)
    model = project / "model.bin"
    rng = np.random.default_rng(0)
    with open(model, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.standard_normal(n // 4, dtype=np.float32).tobytes())
            left -= n
    exp = replicate.Project(directory=project).experiments.create(
        path=None, params={"lr": 0.01}, disable_heartbeat=True)
    assert exp.checkpoint(path="model.bin", metrics={"loss": 0.5}, wait=True) is not None
    exp.stop()
    return project / ".replicate", model


def many_experiments_project(project: Path, n: int, checkpoints: int = 3) -> Path:
    """``n`` experiments of ``checkpoints`` checkpoints each, in one store transaction; refs
    written directly in the RefStore layout (a benchmark fixture, as in bench_ls.py)."""
    from replicate.objects import codec
    from replicate.repository import Repository

    project.mkdir(parents=True)
    repo = Repository.init(project / ".replicate")
    heads: dict[bytes, bytes] = {}
    packages = tuple((f"package-{i}", f"1.{i}.0") for i in range(40))
    with repo.objects.transaction() as txn:
        for i in range(n):
            created = T0 + i * SEC
            eid = txn.put_object(codec.Experiment(
                created_ns=created, nonce=i.to_bytes(16, "big"),
                params={"learning_rate": [0.1, 0.01, 0.001][i % 3], "num_layers": 2 + i % 4,
                        "optimizer": "adam", "seed": i},
                path=None, code=None, user="ben", host="node-1", command=f"train.py --seed {i}",
                python_version="3.11.7", packages=packages,
                git={"commit": "a" * 40, "branch": "main", "dirty": False},
                system={"os": "Linux", "cpu_count": 2}, replicate_version="0.1.0",
            ))
            parent = None
            for step in range(checkpoints):
                parent = txn.put_object(codec.Checkpoint(
                    experiment=eid, parent=parent, created_ns=created + (step + 1) * SEC // 10,
                    step=step, path=None, files=None,
                    metrics={"loss": 1.0 / (step + 1 + i % 7), "accuracy": 0.5 + step / 10},
                    primary_metric=("loss", "minimize"),
                ))
            heads[eid] = parent if parent is not None else eid
    refs = repo.root / "refs" / "experiments"
    for eid, head in heads.items():
        (refs / eid.hex()).write_text(head.hex() + "\n")
    repo.close()
    return project / ".replicate"


# --- measurements ------------------------------------------------------------------------------


def counted_remote_repo(url: str, cache_dir: Path):  # noqa: ANN201
    from replicate.remote_repo import RemoteRepository
    from replicate.remotes import open_remote
    from replicate.remotes.wrappers import CountingRemote

    counter = CountingRemote(open_remote(url))
    return RemoteRepository(counter.url, counter, cache_dir), counter


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``python -m replicate ARGS``: (wall seconds, CPU seconds of the child, stdout)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "replicate", *args], cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"replicate {' '.join(args)} failed: {p.stderr}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return dt, cpu, p.stdout


def bench_transfer(work: Path, endpoint: str, size: int, runs: int) -> dict[str, object]:
    from replicate import sync
    from replicate.repository import Repository

    repo_root, model = checkpoint_project(work / "project", size)
    repo = Repository.open(repo_root)
    fs = s3fs_fs(endpoint)
    times: dict[str, list[float]] = {"put": [], "push": [], "get": [], "pull": []}
    push_requests: list[int] = []
    push_bytes: list[int] = []
    pull_requests: list[int] = []
    url = ""
    for run in range(runs + 1):  # run 0 is the warm-up
        reset_moto(endpoint)
        bucket = new_bucket(endpoint)
        url = f"s3://{bucket}/repo"

        t = time.perf_counter()
        fs.put_file(str(model), f"{bucket}/baseline/model.bin")
        t_put = time.perf_counter() - t

        cache = sync.remote_cache_dir(repo, url)
        shutil.rmtree(cache, ignore_errors=True)
        rrepo, counter = counted_remote_repo(url, cache)
        t = time.perf_counter()
        res = sync.push(repo, rrepo)
        t_push = time.perf_counter() - t

        copy = work / "copy.bin"
        t = time.perf_counter()
        fs.get_file(f"{bucket}/baseline/model.bin", str(copy))
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
        t_get = time.perf_counter() - t
        copy.unlink()

        dest = Repository.init(work / f"pulled-{run}" / ".replicate")
        prrepo, pcounter = counted_remote_repo(url, sync.remote_cache_dir(dest, url))
        t = time.perf_counter()
        pres = sync.pull(dest, prrepo)
        t_pull = time.perf_counter() - t
        assert len(pres.experiments) == 1
        shutil.rmtree(work / f"pulled-{run}")
        if run == 0:
            continue
        times["put"].append(t_put)
        times["push"].append(t_push)
        times["get"].append(t_get)
        times["pull"].append(t_pull)
        push_requests.append(counter.total())
        push_bytes.append(res.bytes)
        pull_requests.append(pcounter.total())
        print(f"  run {run}: put {t_put:.2f} s, push {t_push:.2f} s ({counter.total()} requests:"
              f" {dict(counter.counts)}), get {t_get:.2f} s, pull {t_pull:.2f} s "
              f"({pcounter.total()} requests)", file=sys.stderr)

    # a push with nothing new, in-process (warm remote cache, as a re-run) and as a new process
    noop = []
    noop_requests = 0
    for _ in range(runs):
        rrepo, counter = counted_remote_repo(url, sync.remote_cache_dir(repo, url))
        t = time.perf_counter()
        assert sync.push(repo, rrepo).up_to_date
        noop.append(time.perf_counter() - t)
        noop_requests = counter.total()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli(["push", url], work / "project", env)  # warm-up (the project's own remote cache)
    noop_cli = [cli(["push", url], work / "project", env)[:2] for _ in range(runs)]
    return {
        "size": size, "times": times, "push_requests": push_requests, "push_bytes": push_bytes,
        "pull_requests": pull_requests, "noop": noop, "noop_requests": noop_requests,
        "noop_cli": noop_cli,
    }


def bench_ls(work: Path, endpoint: str, n: int, runs: int) -> dict[str, object]:
    from replicate import catalog, sync
    from replicate.repository import Repository

    reset_moto(endpoint)
    t = time.perf_counter()
    repo = Repository.open(many_experiments_project(work / "many", n))
    t_build = time.perf_counter() - t
    bucket = new_bucket(endpoint)
    url = f"s3://{bucket}/many"
    rrepo, counter = counted_remote_repo(url, sync.remote_cache_dir(repo, url))
    t = time.perf_counter()
    res = sync.push(repo, rrepo)
    t_push = time.perf_counter() - t
    assert len(res.experiments) == n, res
    print(f"  {n} experiments: built in {t_build:.1f} s, pushed in {t_push:.1f} s "
          f"({counter.total()} requests: {dict(counter.counts)})", file=sys.stderr)

    cold: list[tuple[float, float]] = []
    table: list[tuple[float, float]] = []
    for run in range(runs + 1):
        for args, out in ((["ls", "-R", url, "-q"], cold), (["ls", "-R", url], table)):
            cache_home = work / f"xdg-{run}"
            env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache_home))
            wall, cpu, stdout = cli(args, work, env)
            shutil.rmtree(cache_home)
            if "-q" in args:
                assert len(stdout.split()) == n
            if run:
                out.append((wall, cpu))

    crrepo, ccounter = counted_remote_repo(url, work / "counted-cache")
    assert len(catalog.summaries(crrepo)) == n
    return {"n": n, "cold": cold, "table": table, "requests": ccounter.total(),
            "counts": dict(ccounter.counts), "push_time": t_push,
            "push_requests": counter.total()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--experiments", type=int, default=10_000)
    args = parser.parse_args()

    proc, endpoint = start_moto()
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        print(f"moto at {endpoint}; work in {work}", file=sys.stderr)
        tr = bench_transfer(work, endpoint, args.size_mib * MiB, args.runs)
        ls = bench_ls(work, endpoint, args.experiments, args.runs)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    size = tr["size"]
    t = tr["times"]
    gib = size / (1024 * MiB)
    rows = []

    def row(what: str, value: str, target: str, ok: bool) -> None:
        rows.append((what, value, target, "yes" if ok else "NO"))

    up_ratio = med(t["put"]) / med(t["push"])  # type: ignore[index]
    down_ratio = med(t["get"]) / med(t["pull"])  # type: ignore[index]
    mbps = lambda s: size / s / MiB  # noqa: E731
    row(f"push {gib:g} GiB: replicate vs s3fs put_file",
        f"{mbps(med(t['push'])):.0f} vs {mbps(med(t['put'])):.0f} MiB/s = {up_ratio:.2f}x",
        ">= 0.8x", up_ratio >= 0.8)
    row(f"pull {gib:g} GiB: replicate vs s3fs get_file (+fsync)",
        f"{mbps(med(t['pull'])):.0f} vs {mbps(med(t['get'])):.0f} MiB/s = {down_ratio:.2f}x",
        ">= 0.8x", down_ratio >= 0.8)
    stored = med(tr["push_bytes"])  # type: ignore[arg-type]
    bound = size / (64 * MiB) + 10
    bound_stored = stored / (64 * MiB) + 10
    reqs = int(med(tr["push_requests"]))  # type: ignore[arg-type]
    most = max(tr["push_requests"])  # type: ignore[type-var]
    row(f"push requests, N = {size / MiB:.0f} MiB new ({stored / MiB:.0f} MiB stored)",
        f"{reqs} (max {most})", f"<= N / 64 MiB + 10 = {bound:.1f} (stored: {bound_stored:.1f})",
        reqs <= bound)
    preqs = max(tr["pull_requests"])  # type: ignore[type-var]
    row("pull requests, same data", f"{preqs}", f"<= {bound:.1f} (stored: {bound_stored:.1f})",
        preqs <= bound)
    row("push with nothing new, in-process",
        f"{med(tr['noop']):.3f} s, {tr['noop_requests']} requests", "< 1 s",
        med(tr["noop"]) < 1)
    def wall_cpu(pairs: list[tuple[float, float]]) -> tuple[float, float, str]:
        w, c = med([x[0] for x in pairs]), med([x[1] for x in pairs])
        return w, c, f"{w:.2f} s (CPU {c:.2f} s)"

    w, _c, text = wall_cpu(tr["noop_cli"])  # type: ignore[arg-type]
    row("push with nothing new, new process", text, "< 1 s", w < 1)
    w, _c, text = wall_cpu(ls["cold"])  # type: ignore[arg-type]
    row(f"ls -R -q, {ls['n']:,} experiments, cold (new process, empty cache)", text, "< 2 s",
        w < 2)
    w, _c, text = wall_cpu(ls["table"])  # type: ignore[arg-type]
    row(f"ls -R (table), {ls['n']:,} experiments, cold", text, "< 2 s", w < 2)
    row(f"ls -R, {ls['n']:,} experiments: requests (cold)", f"{ls['requests']} {ls['counts']}",
        "constant", True)

    widths = [max(len(r[i]) for r in rows + [("what", "measured", "target", "met")])
              for i in range(4)]
    header = ("what", "measured", "target", "met")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\n(median of {args.runs} runs after a warm-up; push of {ls['n']:,} experiments for "
          f"the listing: {ls['push_time']:.1f} s, {ls['push_requests']} requests; load average "
          f"at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
