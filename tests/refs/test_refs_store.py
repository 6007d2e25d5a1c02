"""Refs: compare-and-swap updates through lock files, reflogs, deletion, and lock recovery."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicate.errors import LockError, RefConflict
from replicate.refs.store import RefStore, check_ref_name

A, B, C = (bytes([i]) * 32 for i in (0xA1, 0xB2, 0xC3))
NAME = "experiments/" + "e" * 64


@pytest.fixture
def refs(tmp_path: Path) -> RefStore:
    return RefStore(tmp_path / ".replicate")


def lock_path(refs: RefStore, name: str = NAME) -> Path:
    return refs.refs_dir / (name + ".lock")


def test_update_and_read(refs: RefStore) -> None:
    assert refs.read(NAME) is None
    refs.update(NAME, A, old=None)
    assert refs.read(NAME) == A
    assert (refs.refs_dir / NAME).read_text() == A.hex() + "\n"
    refs.update(NAME, B, old=A)
    assert refs.read(NAME) == B
    refs.update(NAME, C)  # no expectation: unconditional
    assert refs.read(NAME) == C
    assert RefStore(refs.root).read(NAME) == C  # another process sees it
    assert not lock_path(refs).exists()
    assert refs.list() == {NAME: C}


def test_compare_and_swap_conflicts(refs: RefStore) -> None:
    with pytest.raises(RefConflict):
        refs.update(NAME, A, old=B)  # expected B, ref does not exist
    assert refs.read(NAME) is None
    refs.update(NAME, A, old=None)
    with pytest.raises(RefConflict):
        refs.update(NAME, B, old=None)  # create, but it exists
    with pytest.raises(RefConflict) as ei:
        refs.update(NAME, B, old=C)
    assert A.hex() in str(ei.value)
    assert refs.read(NAME) == A
    assert not lock_path(refs).exists()  # a failed update releases its lock
    assert [(e.old, e.new) for e in refs.reflog(NAME)] == [(None, A)]  # failures are not logged
    assert isinstance(ei.value, LockError)  # RefConflict is a kind of LockError


def test_reflog_records_every_change_in_order(refs: RefStore) -> None:
    refs.update(NAME, A, old=None, message="create")
    refs.update(NAME, B, old=A, message="checkpoint\nstep 1")
    refs.update(NAME, C, old=B, message="checkpoint step 2")
    log = refs.reflog(NAME)
    assert [(e.old, e.new) for e in log] == [(None, A), (A, B), (B, C)]
    assert [e.message for e in log] == ["create", "checkpoint step 1", "checkpoint step 2"]
    assert log[0].time_ns <= log[1].time_ns <= log[2].time_ns
    assert abs(log[-1].time_ns - time.time_ns()) < 60 * 10**9


def test_reflog_skips_a_torn_last_line(refs: RefStore) -> None:
    refs.update(NAME, A, old=None)
    with open(refs.logs_dir / NAME, "a") as f:
        f.write(A.hex() + " " + B.hex()[:20])  # a writer died mid-line
    assert [(e.old, e.new) for e in refs.reflog(NAME)] == [(None, A)]


def test_delete_removes_ref_and_reflog(refs: RefStore) -> None:
    other = "experiments/" + "f" * 64
    refs.update(NAME, A, old=None)
    refs.update(NAME, B, old=A)
    refs.update(other, C, old=None)
    with pytest.raises(RefConflict):
        refs.delete(NAME, old=A)
    assert refs.read(NAME) == B
    refs.delete(NAME, old=B)
    assert refs.read(NAME) is None
    assert refs.reflog(NAME) == []
    assert not (refs.logs_dir / NAME).exists()
    assert not (refs.refs_dir / NAME).exists()
    assert not lock_path(refs).exists()
    assert refs.list() == {other: C}  # the other ref is untouched
    assert len(refs.reflog(other)) == 1


def test_tombstone_refs(refs: RefStore) -> None:
    name = "removed/" + "1" * 64
    refs.update(name, A, old=None)
    assert refs.list("removed") == {name: A}
    assert refs.list("experiments") == {}


@pytest.mark.parametrize(
    "bad",
    ["experiments/abc", "experiments/" + "E" * 64, "heads/" + "a" * 64, "experiments/../x",
     "experiments/" + "a" * 64 + "/x", "../" + "a" * 64, ""],
)  # fmt: skip
def test_invalid_ref_names(refs: RefStore, bad: str) -> None:
    with pytest.raises(ValueError):
        check_ref_name(bad)
    with pytest.raises(ValueError):
        refs.update(bad, A)
    with pytest.raises(ValueError):
        refs.read(bad)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_of_a_dead_process_is_broken(refs: RefStore) -> None:
    refs.update(NAME, A, old=None)
    lock = lock_path(refs)
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    t0 = time.monotonic()
    refs.update(NAME, B, old=A, timeout=20)
    assert time.monotonic() - t0 < 10  # broken at once, not waited out
    assert refs.read(NAME) == B
    assert not lock.exists()
    assert [p.name for p in lock.parent.iterdir() if "lock" in p.name] == []
    assert refs.stale_locks() == []


@pytest.fixture
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait()


def test_lock_of_a_live_process_is_respected(refs: RefStore, live_pid: int) -> None:
    refs.update(NAME, A, old=None)
    lock = lock_path(refs)
    held = f"{live_pid} {socket.gethostname()}\n"
    lock.write_text(held)
    with pytest.raises(LockError) as ei:
        refs.update(NAME, B, old=A, timeout=0.3)
    assert not isinstance(ei.value, RefConflict)
    assert str(lock) in str(ei.value)
    assert refs.read(NAME) == A  # unchanged
    assert lock.read_text() == held  # someone else's lock is never removed
    assert refs.stale_locks() == [lock]
    assert [(e.old, e.new) for e in refs.reflog(NAME)] == [(None, A)]
    lock.unlink()  # the holder finishes
    refs.update(NAME, B, old=A, timeout=0.3)
    assert refs.read(NAME) == B


def test_lock_of_another_host_is_respected(refs: RefStore) -> None:
    refs.update(NAME, A, old=None)
    lock_path(refs).write_text(f"{_dead_pid()} some-other-host-{os.getpid()}\n")
    with pytest.raises(LockError):
        refs.update(NAME, B, timeout=0.2)
    assert refs.read(NAME) == A


def test_old_garbage_lock_is_broken(refs: RefStore) -> None:
    refs.update(NAME, A, old=None)
    lock = lock_path(refs)
    lock.write_text("")
    past = time.time() - 3600
    os.utime(lock, (past, past))
    refs.update(NAME, B, old=A, timeout=5)
    assert refs.read(NAME) == B


KILLER = Path(__file__).resolve().parents[1] / "helpers" / "ref_killer.py"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def kill_during_update(refs: RefStore, new: bytes, point: str) -> None:
    """Run RefStore.update(NAME, new) in a child that SIGKILLs itself at ``point``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    p = subprocess.run(
        [sys.executable, str(KILLER), str(refs.root), NAME, new.hex(), point],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == -9, p.stderr
    assert lock_path(refs).exists()  # the kill left the lock behind


@pytest.mark.parametrize(
    "point",
    [
        "logging",
        "renaming",
        "locked",
    ],
)
def test_lock_left_by_a_killed_writer_is_broken(refs: RefStore, point: str) -> None:
    """A writer killed (kill -9) in the middle of an update must not block the ref: a
    preempted training job that restarts at once resumes its experiment."""
    refs.update(NAME, A, old=None)
    kill_during_update(refs, B, point)
    assert refs.read(NAME) == A  # the killed update never happened
    refs.update(NAME, C, old=A, timeout=1)
    assert refs.read(NAME) == C
    assert [e.new for e in refs.reflog(NAME)][-1] == C
