"""Eight processes writing into one repository at once (tests/helpers/concurrent_writer.py):
no lost checkpoint, no dangling ref, no lost ref update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from replicate import fsck
from replicate.checkout import find_entry
from replicate.objects.codec import Checkpoint, Experiment
from replicate.objects.reader import iter_content, read_file_object
from replicate.refs.store import RefStore
from replicate.repository import Repository

HELPER = Path(__file__).resolve().parent / "helpers" / "concurrent_writer.py"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
WORKERS = 8
TIMEOUT = 120


def run_workers(args_of: list[list[str]], sync: Path) -> list[dict]:  # type: ignore[type-arg]
    """Start one child per argument list, release them together, return their JSON outputs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    sync.mkdir()
    go = sync / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), *args, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in args_of
    ]
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(sync.glob("ready-*"))) < len(procs):  # all imported and waiting
            assert time.monotonic() < deadline, "workers did not get ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, err
            results.append(json.loads(out))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_eight_writers_into_one_repository(tmp_path: Path) -> None:
    root = tmp_path / ".replicate"
    n = 4
    results = run_workers(
        [
            ["checkpoints", str(root), str(tmp_path / "work"), str(w), str(n)]
            for w in range(WORKERS)
        ],
        tmp_path / "sync",
    )
    repo = Repository.open(root)
    refs = repo.refs.list()
    assert len(refs) == WORKERS
    for w, res in enumerate(results):
        eid = bytes.fromhex(res["experiment"])
        cps = [bytes.fromhex(c["id"]) for c in res["checkpoints"]]
        assert len(cps) == n
        name = f"experiments/{eid.hex()}"
        assert refs[name] == cps[-1]  # no lost checkpoint: the head is the last one written
        assert [(e.old, e.new) for e in repo.refs.reflog(name)] == list(
            zip([None, eid, *cps[:-1]], [eid, *cps])
        )
        exp = repo.objects.read_object(eid)
        assert isinstance(exp, Experiment) and exp.params == {"worker": w}
        for k, (cid, info) in enumerate(zip(cps, res["checkpoints"])):
            cp = repo.objects.read_object(cid)
            assert isinstance(cp, Checkpoint)
            assert (cp.experiment, cp.step, cp.parent) == (eid, k, cps[k - 1] if k else None)
            assert cp.files is not None
            for fname, digest in info["files"].items():
                e = find_entry(repo.objects, cp.files, fname)
                assert e is not None, fname
                h = blake3.blake3()
                for chunk in iter_content(repo.objects, read_file_object(repo.objects, e.id)):
                    h.update(chunk)
                assert h.hexdigest() == digest, (w, k, fname)
    # Shared content is the same file object everywhere.
    shared = set()
    for res in results:
        for c in res["checkpoints"]:
            cp = repo.objects.read_object(bytes.fromhex(c["id"]))
            assert isinstance(cp, Checkpoint) and cp.files is not None
            e = find_entry(repo.objects, cp.files, "shared.bin")
            assert e is not None
            shared.add(e.id)
    assert len(shared) == 1
    rep = fsck.fsck(repo, read_data=True)
    assert rep.ok, rep.errors
    assert rep.refs == WORKERS
    assert not any("not indexed" in w or "lock" in w for w in rep.warnings), rep.warnings


def test_eight_writers_advance_one_ref(tmp_path: Path) -> None:
    root = tmp_path / ".replicate"
    name = "experiments/" + "c" * 64
    n = 25
    results = run_workers(
        [["cas", str(root), name, str(w), str(n)] for w in range(WORKERS)], tmp_path / "sync"
    )
    refs = RefStore(root)
    log = refs.reflog(name)
    assert len(log) == WORKERS * n  # no update lost
    # The reflog is one linear history: each change starts where the previous one ended.
    assert log[0].old is None
    for prev, cur in zip(log, log[1:]):
        assert cur.old == prev.new
    assert refs.read(name) == log[-1].new
    written = sorted(u for res in results for u in res["updates"])
    assert sorted(e.new.hex() for e in log if e.new is not None) == written
    for w in range(WORKERS):
        mine = [e.message for e in log if e.message.startswith(f"worker {w} ")]
        assert mine == [f"worker {w} update {i}" for i in range(n)]
    assert list((root / "refs" / "experiments").iterdir()) == [root / "refs" / name]
    if sum(res["conflicts"] for res in results) == 0:
        pytest.skip("the workers never raced (no CAS conflict happened)")  # pragma: no cover
