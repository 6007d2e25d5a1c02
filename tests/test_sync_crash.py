"""kill -9 of ``replicate push`` at many points, against the moto S3 server: after every kill no
remote ref points at an object that is missing from the remote index or whose pack is missing;
the next push that runs to the end completes the job (remote heads = local heads, the catalog
lists every experiment at its head) and ``replicate fsck -R`` is clean.

A child process (tests/helpers/sync_push.py) runs the real push, announcing each remote write
just before it starts. The kill points, in three rounds over growing data (3 experiments of
10, 20 and 30 MB, then a new checkpoint of each, twice):

- at a step: while uploading packs (twice in a row: the second push resumes from the journal of
  the first), right after the index segment is sent, between ref entries, while the catalog
  record is sent;
- after a random delay from the start.

Each kill waits for its step's announcement, then a random extra delay (seeded), then SIGKILLs.
"""

from __future__ import annotations

import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import replicate
from replicate import catalog, sync
from replicate.fsck import fsck
from replicate.remote_repo import RemoteRepository
from replicate.repository import Repository
from tests.helpers.sync_common import (
    HELPERS,
    cli_env,
    local_heads,
    random_weights,
    record_experiment,
    remote_heads,
    remote_problems,
    run_cli,
)

pytestmark = pytest.mark.s3

MB = 1_000_000
# step -> (announcement prefix, bound of the extra random delay in seconds)
STEPS = {
    "pack": ("put_file packs/", 0.4),
    "index": ("put index/", 0.02),
    "ref": ("put refs/experiments/", 0.02),
    "catalog": ("put catalog/", 0.01),
    "random": ("start", 2.0),
}
ROUNDS = [
    ["pack", "pack", "index", "ref", "catalog"],
    ["random", "random", "random"],
    ["pack", "ref"],
]
WAIT = 40.0  # bound on waiting for an announcement


def kill_push_at(project: Path, url: str, step: str, rng: random.Random) -> str:
    """Run the push child; kill it once it announces ``step`` (plus a random delay). Returns
    what happened: "killed after <last line>" or "finished"."""
    prefix, extra = STEPS[step]
    child = subprocess.Popen(
        [sys.executable, str(HELPERS / "sync_push.py"), str(project), url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    last = ""
    deadline = time.monotonic() + WAIT
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                child.wait(timeout=WAIT)
                assert child.stderr is not None
                err = child.stderr.read()
                assert child.returncode == 0, err
                return "finished"
            last = line
            if line.startswith(prefix):
                break
        time.sleep(rng.uniform(0, extra))
        while True:  # the last announcement before the kill, for the report
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            last = line
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=WAIT)
        if child.returncode != -signal.SIGKILL:
            return "finished"
        return f"killed after {last.split(' ')[0]} {last.split(' ')[-1].split('/')[0]}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def assert_complete(project: Path, url: str, cache: Path) -> None:
    """The remote holds every local experiment at its local head, listed by the catalog."""
    heads = local_heads(project)
    assert remote_heads(url) == heads
    items = catalog.load(RemoteRepository(url, cache_dir=cache))
    assert {e.hex(): s.head.hex() for e, s in items.items()} == heads
    assert remote_problems(url, cache / "walk") == []


def add_checkpoints(project: Path, eids: list[str], seed: int) -> None:
    rng = random.Random(seed)
    for i, eid in enumerate(eids):
        exp = replicate.Project(directory=project).experiments.get(eid)
        (project / "model.bin").write_bytes(random_weights(rng.randint(10, 20) * MB, seed + i))
        assert exp.checkpoint(path="model.bin", metrics={"loss": 1 / (seed + i)},
                              wait=True) is not None


def test_kill_push_at_random_points(s3_url: str, tmp_path: Path) -> None:
    url = s3_url + "/crash"
    project = tmp_path / "project"
    project.mkdir()
    eids = [
        record_experiment(project, [{"model.bin": random_weights(mb * MB, i)}], {"i": i})[0]
        for i, mb in enumerate((10, 20, 30))
    ]
    rng = random.Random(20261127)
    outcomes: list[str] = []
    checks = 0
    for n, steps in enumerate(ROUNDS):
        for step in steps:
            outcomes.append(f"{step}: {kill_push_at(project, url, step, rng)}")
            checks += 1
            problems = remote_problems(url, tmp_path / f"check{checks}")
            assert problems == [], (outcomes, problems)
        if n < len(ROUNDS) - 1:
            repo = Repository.open(project / ".replicate")
            sync.push(repo, sync.open_remote_repo(repo, url))  # the next push completes
            assert_complete(project, url, tmp_path / f"complete{n}")
            add_checkpoints(project, eids, seed=100 * (n + 1))

    killed = [o for o in outcomes if "killed" in o]
    assert len(killed) >= 7, outcomes  # most pushes were really interrupted ...
    steps_hit = {o.split(" ")[-1] for o in killed}
    assert {"packs", "refs"} <= steps_hit, outcomes  # ... at different steps

    env = cli_env(tmp_path / "cache")
    r = run_cli("push", url, cwd=project, env=env)
    assert r.code == 0, r
    assert_complete(project, url, tmp_path / "final")
    r = run_cli("fsck", "-R", url, cwd=tmp_path, env=env)
    assert r.code == 0 and "no errors found" in r.stdout, r
    assert "3 refs" in r.stdout, r
    rep = fsck(RemoteRepository(url, cache_dir=tmp_path / "fsck"))
    assert rep.ok and not [w for w in rep.warnings if "catalog" in w], rep
