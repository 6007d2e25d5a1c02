"""Chaos: gc on a bucket while four machines train and push into it, with kill -9 everywhere.

Four project directories (each its own local repository, replicate.yaml naming
``repository: s3://bucket/chaos``) run training runs back to back (tests/helpers/
gc_chaos_trainer.py: checkpoints with ``wait=True``, pushed in the background by autopush);
one loop runs ``replicate push`` in each project in turn; one loop runs
``replicate gc --grace 0 -R URL`` over and over; another ``rm``s finished experiments and
some checkpoints (the deletions reach the bucket with the next push). A killer sends SIGKILL to
a random trainer, push or gc every few seconds. After at least two minutes everything stops;
each project pushes once more (what a killed autopush left is pushed by the next push), gc runs
twice more, and then:

- ``fsck -R`` and every project's ``fsck`` are clean, and an independent walk finds every
  remote ref's objects indexed and their packs present;
- every checkpoint that returned (printed after ``checkpoint(wait=True)``) and was not rm'd
  is read back through ``replicate.Project(repository=URL)``, byte-identical (sha256);
- gc freed bytes while the chaos ran (a chaos test counts only if gc actually freed bytes).

Remote sessions live 120 s after a killed push's last refresh, and a condemned set is swept
only when every session it recorded has ended, so the chaos phase runs until gc has freed
something (at least 120 s, at most 240 s). gc leases are set to expire after 8 s here
(``REPLICATE_GC_LEASE_TTL``) so a killed gc does not hold up the next for two minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import replicate
from tests.helpers.sync_common import HELPERS, cli_env, remote_problems, run_cli

TRAINERS = 4
KILL_WEIGHTS = {"trainer": 0.6, "push": 0.25, "gc": 0.15}
MIN_CHAOS_S = 120.0
MAX_CHAOS_S = 240.0
SEED = int(os.environ.get("REPLICATE_CHAOS_SEED", "20240611"))


class Actors:
    """Subprocesses started by the loops, for the killer to pick from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[int, tuple[str, subprocess.Popen]] = {}
        self.stop = threading.Event()
        self.kills: dict[str, int] = {}
        self.errors: list[str] = []

    def run(self, kind: str, cmd: list[str], cwd: Path, env: dict[str, str],
            stdout: object = subprocess.PIPE, timeout: float = 120,
            killable: bool = True) -> tuple[int, str, str]:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                             stderr=subprocess.PIPE, text=True)
        with self.lock:
            if killable:
                self.running[p.pid] = (kind, p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            self.errors.append(f"{kind} timed out: {err[-2000:]}")
        finally:
            with self.lock:
                self.running.pop(p.pid, None)
        return p.returncode, out or "", err or ""

    def kill_one(self, rnd: random.Random) -> None:
        with self.lock:
            victims = list(self.running.values())
        kinds = sorted({k for k, _p in victims})
        if kinds:
            # trainers most often; gc runs less (a killed gc holds its lease for a few seconds)
            weights = [KILL_WEIGHTS.get(k, 0.2) for k in kinds]
            kind = rnd.choices(kinds, weights)[0]
            _kind, p = rnd.choice([v for v in victims if v[0] == kind])
            try:
                p.send_signal(signal.SIGKILL)
                self.kills[kind] = self.kills.get(kind, 0) + 1
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        with self.lock:
            victims = list(self.running.values())
        for _kind, p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass


def replicate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "replicate", *args]


def read_log(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by kill -9
    return out


def _explain(problems: list[str], returned: list[dict], projects: list[Path], url: str) -> list:
    """Where each missing checkpoint's experiment stands, locally and on the remote."""
    from tests.helpers.sync_common import local_heads, remote_heads

    rheads = remote_heads(url)
    out = []
    for p in problems[:5]:
        cid = p.split(":")[0].split()[0]
        e = next((x for x in returned if x["checkpoint"].startswith(cid)), None)
        if e is None:
            continue
        eid = e["experiment"]
        local = {i: local_heads(d).get(eid) for i, d in enumerate(projects)}
        out.append({"checkpoint": cid, "experiment": eid[:12], "remote head": rheads.get(eid),
                    "local heads": {i: h for i, h in local.items() if h}})
    return out


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.timeout(600)
def test_gc_chaos_with_four_machines_pushing_into_one_bucket(s3_url: str, tmp_path: Path) -> None:
    url = s3_url + "/chaos"
    rnd = random.Random(SEED)
    projects = []
    for i in range(TRAINERS):
        d = tmp_path / f"machine{i}"
        d.mkdir()
        (d / "replicate.yaml").write_text(f"repository: {url}\n")
        projects.append(d)
    envs = [cli_env(tmp_path / f"cache{i}") for i in range(TRAINERS)]
    gc_env = cli_env(tmp_path / "gc-cache", REPLICATE_GC_LEASE_TTL="8")
    gc_dir = tmp_path / "gc"
    gc_dir.mkdir()
    logs = [tmp_path / f"trainer{i}.jsonl" for i in range(TRAINERS)]
    actors = Actors()
    gc_runs: list[dict] = []  # completed gc runs during the chaos
    gc_failures: list[str] = []
    removed_experiments: set[str] = set()
    removed_checkpoints: set[str] = set()
    pushes = {"ok": 0, "failed": 0}
    runs_started = [0] * TRAINERS

    def trainer(i: int) -> None:
        run = 0
        while not actors.stop.is_set():
            run += 1
            runs_started[i] += 1
            with open(logs[i], "a") as log:
                actors.run("trainer", [sys.executable, str(HELPERS / "gc_chaos_trainer.py"),
                                       "--seed", str(i * 10_000 + run)],
                           projects[i], envs[i], stdout=log)

    def pusher() -> None:
        i = 0
        while not actors.stop.is_set():
            code, _out, err = actors.run("push", replicate_cmd("push"), projects[i], envs[i])
            pushes["ok" if code == 0 else "failed"] += 1
            i = (i + 1) % TRAINERS
            actors.stop.wait(0.5)

    def collector() -> None:
        while not actors.stop.is_set():
            code, out, err = actors.run("gc", replicate_cmd("gc", "--grace", "0", "-R", url,
                                                            "--json"), gc_dir, gc_env)
            if code == 0:
                gc_runs.append(json.loads(out))
            elif code != -signal.SIGKILL:
                gc_failures.append(err.strip()[-500:])
            actors.stop.wait(0.2)

    def remover() -> None:
        while not actors.stop.wait(rnd.uniform(3, 6)):
            i = rnd.randrange(TRAINERS)
            entries = read_log(logs[i])
            # experiments whose run ended (finished or killed): every one but the newest
            seen = list(dict.fromkeys(e["experiment"] for e in entries if "experiment" in e))
            candidates = [e for e in seen[:-1] if e not in removed_experiments]
            if not candidates:
                continue
            eid = rnd.choice(candidates)
            # (rm itself is not killed: the test must know what it removed)
            if rnd.random() < 0.7:
                removed_experiments.add(eid)
                code, _o, err = actors.run("rm", replicate_cmd("rm", "-f", eid), projects[i],
                                           envs[i], killable=False)
                assert code == 0 or actors.stop.is_set(), err
                # push the deletion at once (the push loop would, a little later)
                code, _o, _e = actors.run("push", replicate_cmd("push"), projects[i], envs[i])
                pushes["ok" if code == 0 else "failed"] += 1
            else:  # remove one checkpoint's files (a tombstone)
                cps = [e["checkpoint"] for e in entries if e.get("experiment") == eid]
                if cps:
                    cid = rnd.choice(cps)
                    removed_checkpoints.add(cid)
                    code, _o, err = actors.run("rm", replicate_cmd("rm", "-f", cid),
                                               projects[i], envs[i], killable=False)
                    assert code == 0 or actors.stop.is_set(), err

    threads = [threading.Thread(target=trainer, args=(i,), daemon=True) for i in range(TRAINERS)]
    threads += [threading.Thread(target=f, daemon=True) for f in (pusher, collector, remover)]
    start = time.monotonic()
    for t in threads:
        t.start()
    freed_during = 0
    try:
        while True:
            elapsed = time.monotonic() - start
            freed_during = sum(r["bytes_freed"] for r in gc_runs)
            if elapsed >= MAX_CHAOS_S or (elapsed >= MIN_CHAOS_S and freed_during > 0):
                break
            time.sleep(rnd.uniform(2.0, 5.0))
            actors.kill_one(rnd)
    finally:
        actors.stop.set()
        actors.kill_all()
        for t in threads:
            t.join(60)
        actors.kill_all()
    chaos_s = time.monotonic() - start
    gc_during = list(gc_runs)
    assert not actors.errors, actors.errors
    # the only failures allowed: a lease held (by a gc killed a moment ago), and runs started
    # before the first push created the repository
    allowed = ("another gc is running", "no replicate repository at")
    assert all(any(a in f for a in allowed) for f in gc_failures), gc_failures

    # --- after the chaos: push what killed pushes left, collect, check -----------------------
    for i in range(TRAINERS):
        r = run_cli("push", cwd=projects[i], env=envs[i], timeout=300)
        assert r.code == 0, r
    final = []
    deadline = time.monotonic() + 60
    while len(final) < 2:
        r = run_cli("gc", "--grace", "0", "-R", url, "--json", cwd=gc_dir, env=gc_env,
                    timeout=300)
        if r.code != 0 and "another gc is running" in r.stderr and time.monotonic() < deadline:
            time.sleep(2)  # a lease of a killed gc: it expires within REPLICATE_GC_LEASE_TTL
            continue
        assert r.code == 0, r
        final.append(json.loads(r.stdout))

    r = run_cli("fsck", "-R", url, cwd=gc_dir, env=gc_env, timeout=300)
    assert r.code == 0, r
    assert remote_problems(url, tmp_path / "check-cache") == []
    for i in range(TRAINERS):
        r = run_cli("fsck", cwd=projects[i], env=envs[i], timeout=120)
        assert r.code == 0, r

    returned = []
    for log in logs:
        returned += [e for e in read_log(log) if "checkpoint" in e]
    expected = [e for e in returned if e["experiment"] not in removed_experiments
                and e["checkpoint"] not in removed_checkpoints]
    assert len(expected) >= 20, (len(returned), len(expected))
    reader = replicate.Project(directory=gc_dir, repository=url)
    problems: list[str] = []

    def check(e: dict) -> None:
        try:
            cp = reader.checkpoints.get(e["checkpoint"])
            for name, digest in e["files"].items():
                with cp.open(f"ckpt/{name}") as f:
                    got = hashlib.sha256(f.read()).hexdigest()
                if got != digest:
                    problems.append(f"{e['checkpoint'][:12]} {name}: different bytes")
        except Exception as exc:  # reported below, all at once
            problems.append(f"{e['checkpoint'][:12]}: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(check, expected))
    stats = {
        "chaos_seconds": round(chaos_s),
        "trainer_runs": sum(runs_started),
        "checkpoints_returned": len(returned),
        "checked": len(expected),
        "experiments_removed": len(removed_experiments),
        "checkpoints_removed": len(removed_checkpoints),
        "kills": actors.kills,
        "pushes": pushes,
        "gc_runs_completed": len(gc_during),
        "gc_runs_that_freed": sum(1 for r in gc_during if r["bytes_freed"] > 0),
        "freed_during_chaos": freed_during,
        "freed_after": sum(r["bytes_freed"] for r in final),
        "objects_removed_during_chaos": sum(r["removed_objects"] for r in gc_during),
    }
    print("chaos stats:", json.dumps(stats))
    assert problems == [], (problems[:20], _explain(problems, returned, projects, url))

    # a chaos test counts only if gc actually freed bytes during it
    assert freed_during > 0, stats
