"""kill -9 at random moments of checkpointing: afterwards fsck is clean and every checkpoint whose
write completed (its ref was updated before the kill) reads back byte for byte.

A child process (tests/helpers/crash_writer.py) checkpoints new 8-14 MB random files in a loop
and announces each step before taking it; the parent picks a step for every kill (cycling through
all of them: start-up, writing the file, snapshot/chunk/pack, commit of packs and index, ref
update, between iterations), waits for the child to announce it, lets it run for a random
fraction of that step's duration, then SIGKILLs it and starts the next child on the same
repository.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import pytest

from replicate import fsck
from replicate.checkout import find_entry
from replicate.objects.codec import Checkpoint, Experiment
from replicate.objects.reader import iter_content, read_file_object
from replicate.repository import Repository

HELPER = Path(__file__).resolve().parent / "helpers" / "crash_writer.py"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
KILLS = 25
# Upper bound of the random delay between a step's announcement and the kill (seconds).
STAGES = {"start": 0.3, "file": 0.03, "snapshot": 0.12, "commit": 0.05, "ref": 0.004, "done": 0.0}
WAIT = 60.0  # bound on waiting for a step to be announced
OWNED_LOCK = re.compile(r"^\d+ \S+\n$")  # what RefStore writes into a lock it holds


def clear_ownerless_lock(lock: Path) -> bool:
    """A lock file that names no owner would block the ref for 60 s (a library bug, now fixed:
    locks appear with their owner already written). Remove such a lock and say so (True).
    Locks that name their (dead) owner are left for the next writer to break."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return False
    if OWNED_LOCK.match(text):
        return False
    lock.unlink()
    return True


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A writer process whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=child_env(),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, deadline: float) -> str | None:
        try:
            return self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            self.kill()
            pytest.fail(f"the writer announced nothing for {WAIT} s; stderr:\n{self.errors()}")

    def errors(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def rest(self) -> list[str]:
        """Every line printed before the process ended."""
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive()
        out = []
        while True:
            line = self.lines.get_nowait()
            if line is None:
                return out
            out.append(line)

    def close(self) -> None:
        self.kill()
        self.stderr.close()


def parse_done(line: str, completed: list[tuple[str, str]]) -> None:
    if line.startswith("D ") and line.endswith("\n"):
        _, cid, digest = line.split()
        completed.append((cid, digest))


@pytest.mark.slow
def test_kill_9_while_checkpointing(tmp_path: Path) -> None:
    root = tmp_path / ".replicate"
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("import torch\n")
    repo = Repository.init(root)
    with repo.objects.transaction() as txn:
        eid = txn.put_object(
            Experiment(
                1, os.urandom(16), {"lr": 0.1}, None, None, "u", "h", "c", "3", (), None, {}, "0"
            )
        )
    name = f"experiments/{eid.hex()}"
    repo.refs.update(name, eid, old=None)

    rng = random.Random(20261127)
    completed: list[tuple[str, str]] = []
    at_least_done = 0
    for k in range(KILLS):
        stage = list(STAGES)[k % len(STAGES)]
        occurrence = 0 if stage == "start" else rng.randint(0, 1)
        args = [str(root), str(project), eid.hex(), str(rng.getrandbits(32))]
        child = Child(args, tmp_path / f"stderr-{k}.txt")
        try:
            seen = 0
            deadline = time.monotonic() + WAIT
            while True:
                line = child.next_line(deadline)
                if line is None:
                    child.proc.wait()
                    pytest.fail(
                        f"writer {k} exited (rc={child.proc.returncode}) before step {stage!r}; "
                        f"stderr:\n{child.errors()}"
                    )
                parse_done(line, completed)
                if line == f"S {stage}\n":
                    if seen == occurrence:
                        break
                    seen += 1
            time.sleep(rng.uniform(0, STAGES[stage]))  # a random point inside that step
            child.kill()
            assert child.proc.returncode == -signal.SIGKILL, child.errors()
            for line in child.rest():
                parse_done(line, completed)
        finally:
            child.close()
        if stage == "done":
            at_least_done += occurrence + 1
        # a lock left by the kill always names its (dead) owner, so the next writer breaks it
        assert not clear_ownerless_lock(root / "refs" / f"{name}.lock")

    # One more writer, run to the end, proves the repository is still writable (stale ref locks
    # of killed writers are broken, leftovers do not get in the way).
    final_args = [str(root), str(project), eid.hex(), "1", "--iterations", "1"]
    final = Child(final_args, tmp_path / "stderr-final.txt")
    try:
        assert final.proc.wait(timeout=WAIT) == 0, final.errors()
        for line in final.rest():
            parse_done(line, completed)
    finally:
        final.close()

    assert len(completed) >= at_least_done + 1
    assert len({c for c, _ in completed}) == len(completed)

    repo = Repository.open(root)
    rep = fsck.fsck(repo, read_data=True)
    assert rep.ok, rep.errors
    assert rep.refs == 1

    # The final head is the last completed write; every completed write is in its history.
    head = repo.refs.read(name)
    assert head is not None and head.hex() == completed[-1][0]
    history: list[str] = []
    cur: bytes | None = head
    while cur is not None:
        obj = repo.objects.read_object(cur)
        assert isinstance(obj, Checkpoint) and obj.experiment == eid
        history.append(cur.hex())
        cur = obj.parent
    assert [c for c, _ in completed] == [h for h in reversed(history) if h in dict(completed)]
    assert set(dict(completed)) <= set(history)

    # Every completed write reads back byte for byte.
    for cid, digest in completed:
        cp = repo.objects.read_object(bytes.fromhex(cid))
        assert isinstance(cp, Checkpoint) and cp.files is not None
        entry = find_entry(repo.objects, cp.files, "model.bin")
        assert entry is not None
        h = blake3.blake3()
        for data in iter_content(repo.objects, read_file_object(repo.objects, entry.id)):
            h.update(data)
        assert h.hexdigest() == digest, f"checkpoint {cid} reads back wrong bytes"
        assert find_entry(repo.objects, cp.files, "train.py") is not None
