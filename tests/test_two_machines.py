"""Two "machines" (two project directories, each with its own local repository and user cache)
train into one bucket at the same time: each runs a small training script whose replicate.yaml
names ``repository: s3://bucket/prefix`` (and a gs:// variant), both started together, so both
push in the background, create the remote's config, index segments, ref logs and catalog records
concurrently.

While both are training, ``ls -R`` from a third directory shows both running; afterwards each
machine's ``replicate ls`` and ``ls -R URL`` list both, stopped; a third directory checks out
either one byte-identical with ``checkout -R URL <id> -o DIR``; ``fsck -R`` is clean.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.sync_common import HELPERS, cli_env, remote_heads, remote_problems, run_cli

STEPS = 3
SIZE = 2_000_000
WAIT = 45.0


def start_machine(directory: Path, url: str, seed: int, hold: Path, cache: Path
                  ) -> subprocess.Popen[str]:
    directory.mkdir(parents=True)
    shutil.copy(HELPERS / "sync_train.py", directory / "train.py")
    (directory / "replicate.yaml").write_text(f"repository: {url}\n")
    return subprocess.Popen(
        [sys.executable, "train.py", "--seed", str(seed), "--steps", str(STEPS),
         "--size", str(SIZE), "--hold", str(hold)],
        cwd=directory, env=cli_env(cache), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def listed(url: str, cwd: Path, env: dict[str, str]) -> dict[str, dict]:
    r = run_cli("ls", "-R", url, "--json", cwd=cwd, env=env)
    if r.code != 0:
        return {}
    return {e["id"]: e for e in r.json()}


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_two_machines_train_into_one_bucket_at_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("s3_url" if kind == "s3" else "gcs_url") + "/team/shared"
    holds = [tmp_path / "go1", tmp_path / "go2"]
    machines = [tmp_path / "machine1", tmp_path / "machine2"]
    children = [start_machine(m, url, seed, hold, tmp_path / f"cache{seed}")
                for seed, (m, hold) in enumerate(zip(machines, holds), start=1)]
    third = tmp_path / "third"
    third.mkdir()
    env = cli_env(tmp_path / "cache-third")
    try:
        # while both train (each holds after its first checkpoint), both are visible, running
        deadline = time.monotonic() + WAIT
        seen: dict[str, dict] = {}
        while time.monotonic() < deadline:
            seen = listed(url, third, env)
            if len(seen) == 2 and all(e["running"] and e["num_checkpoints"] >= 1
                                      for e in seen.values()):
                break
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            time.sleep(0.3)
        else:
            pytest.fail(f"both experiments never showed running in {url}: {seen}")
        for hold in holds:
            hold.touch()
        outputs = []
        for c in children:
            out, err = c.communicate(timeout=WAIT)
            assert c.returncode == 0, err
            outputs.append([json.loads(line) for line in out.splitlines()])
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()

    ids = [o[0]["id"] for o in outputs]
    checkpoints = [[e for e in o if e["event"] == "checkpoint"] for o in outputs]
    assert len(set(ids)) == 2 and all(len(c) == STEPS for c in checkpoints)

    # every machine lists both (its local experiment merged with the bucket's)
    for m in machines:
        r = run_cli("ls", "-q", cwd=m, env=env)
        assert r.code == 0 and sorted(r.stdout.split()) == sorted(ids), r
    # ... and so does the bucket itself: both finished, all checkpoints pushed, stopped
    final = listed(url, third, env)
    assert sorted(final) == sorted(ids)
    assert remote_heads(url) == {eid: cps[-1]["id"] for eid, cps in zip(ids, checkpoints)}
    for eid, cps in zip(ids, checkpoints):
        assert final[eid]["num_checkpoints"] == STEPS
        assert final[eid]["latest_checkpoint"]["id"] == cps[-1]["id"]
        assert final[eid]["running"] is False

    # a third directory checks out either experiment (its best checkpoint: the last), and an
    # earlier checkpoint of each, byte-identical
    for n, (eid, cps) in enumerate(zip(ids, checkpoints)):
        for target, cp in ((eid[:7], cps[-1]), (cps[0]["id"][:7], cps[0])):
            out = tmp_path / f"out-{n}-{target}"
            r = run_cli("checkout", "-R", url, target, "-o", str(out), cwd=third, env=env)
            assert r.code == 0, r
            assert hashlib.sha256((out / "model.bin").read_bytes()).hexdigest() == cp["sha256"]
            assert (out / "train.py").read_bytes() == (HELPERS / "sync_train.py").read_bytes()
    assert list(third.iterdir()) == []

    r = run_cli("fsck", "-R", url, cwd=third, env=env)
    assert r.code == 0 and "no errors found" in r.stdout and "2 refs" in r.stdout, r
    assert remote_problems(url, tmp_path / "check") == []
