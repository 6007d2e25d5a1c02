"""Background saving: ``checkpoint()`` captures the bytes and returns; a worker thread chunks,
compresses, packs and commits them (replicate/saver.py, replicate/build.py).

- kill -9 at random moments of a training loop (20+ times): fsck clean, every checkpoint
  announced as committed reads back byte-identical, no ref points at a partial checkpoint, and
  staging directories of killed processes are removed by the next process opening the repo;
- peak extra memory stays within the memory budget plus the pipeline's own working memory,
  with staging / back-pressure kicking in;
- ``wait=True`` is fully synchronous (the ref has moved when it returns; errors return None
  with a CheckpointWarning);
- everything in flight is committed before the interpreter exits, saying so on stderr;
- a background error is loud (CheckpointWarning on stderr) and raised by ``Checkpoint.wait()``;
- a returned Checkpoint has its metrics and step at once, ``.id`` waits for the commit, and
  overwriting the file right after ``checkpoint()`` returned does not change what is saved;
- the capture buffer pool (warm buffers, slack, taking over a buffer being warmed).

The child processes are tests/helpers/bg_*.py.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import pytest

import replicate.saver as saver_mod
from replicate import Project, build
from replicate.checkout import find_entry
from replicate.experiment import CheckpointWarning
from replicate.fsck import fsck
from replicate.objects.codec import Checkpoint as CheckpointObj
from replicate.objects.reader import iter_content, read_file_object
from replicate.repository import Repository

HELPERS = Path(__file__).resolve().parent / "helpers"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("REPLICATE_MEMORY_BUDGET", None)
    env.update(extra)
    return env


def content_digest(repo: Repository, files_tree: bytes, rel: str = "model.bin") -> str:
    entry = find_entry(repo.objects, files_tree, rel)
    assert entry is not None, f"{rel} missing from tree {files_tree.hex()}"
    h = blake3.blake3()
    for data in iter_content(repo.objects, read_file_object(repo.objects, entry.id)):
        h.update(data)
    return h.hexdigest()


def new_experiment(project: Path):
    return Project(directory=project).experiments.create(params={"t": 1}, disable_heartbeat=True)


# -- 2. kill -9 at random moments ----------------------------------------------------------------


KILLS = 20
KILL_MIB = 16  # 4 blocks of 4 MiB: the "10%" step changes one
KILL_BUDGET = "24M"  # one 16 MiB capture fits in memory; the next one in flight is staged
KILL_STEPS = 6
WAIT = 45.0


class LoopChild:
    """A bg_loop.py process whose stdout lines are collected by a thread."""

    def __init__(self, project: Path, seed: int, steps: int, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPERS / "bg_loop.py"), str(KILL_MIB), str(seed), str(steps)],
            cwd=project, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=child_env(REPLICATE_MEMORY_BUDGET=KILL_BUDGET),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[list[str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith("\n"):  # a line cut short by the kill is ignored
                self.lines.put(line)
        self.lines.put(None)

    def until(self, pred, deadline: float) -> list[str] | None:
        """Read lines until one satisfies ``pred`` (returned) or the process ends (None)."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"bg_loop.py said nothing for {WAIT} s:\n{self.errors()}")
            if line is None:
                return None
            parts = line.split()
            self.seen.append(parts)
            if pred(parts):
                return parts

    def rest(self) -> None:
        while self.until(lambda _p: False, time.monotonic() + WAIT) is not None:
            pass

    def kill(self) -> bool:
        """SIGKILL; True if the process was still running."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return alive and self.proc.returncode == -signal.SIGKILL

    def errors(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()

    def close(self) -> None:
        self.kill()
        self.stderr.close()


def staging_dirs(root: Path, pid: int | None = None) -> list[str]:
    try:
        names = os.listdir(root / "staging")
    except FileNotFoundError:
        return []
    return [n for n in names if pid is None or n.startswith(f"{pid}-")]


@pytest.mark.slow
def test_kill_9_at_random_moments_of_background_saving(tmp_path: Path) -> None:
    """20 training processes killed at random moments (start-up, capture, processing, commit,
    exit drain) in one project, each starting a new experiment, then one run to the end."""
    seed = int(os.environ.get("REPLICATE_TEST_SEED", "20261127"))
    rng = random.Random(seed)
    project = tmp_path / "project"
    project.mkdir()
    root = project / ".replicate"
    began: dict[tuple[str, int], str] = {}  # (experiment, step) -> blake3 of the bytes captured
    committed: list[tuple[str, int, str]] = []  # (experiment, step, checkpoint id) announced
    killed = 0
    left_staging = 0  # staging directories killed processes left behind
    cleaned = 0  # ... and that the next process removed when it opened the repository
    stale: list[str] = []
    k = 0
    t_start = time.monotonic()
    t_kills = 0.0
    while killed < KILLS:
        # On a quiet machine a child may finish before its kill lands: try more children.
        assert k < KILLS * 4, f"only {killed} of {k} children were still running at their kill"
        # A random moment: right after some line of the loop (the start-up, a capture, a
        # return, the end of the loop), then a random delay into what follows.
        step = rng.randrange(4)
        mark = rng.choice(["I", "B", "R", "R", "R", "R", "E"])
        delay = rng.uniform(0, 0.2)
        child = LoopChild(project, seed + k, KILL_STEPS, tmp_path / f"stderr-{k}.txt")
        try:
            deadline = time.monotonic() + WAIT
            first = child.until(lambda p: p[0] == "I", deadline)
            assert first is not None, child.errors()
            eid = first[1]
            # the repository is open in the new process: stale staging directories are gone
            remaining = [n for n in stale if n in staging_dirs(root)]
            assert not remaining, f"stale staging directories survived an open: {remaining}"
            cleaned += len(stale)
            stale = []
            if mark != "I":
                child.until(lambda p, m=mark, i=step: p[0] == m and (m == "E" or int(p[1]) == i),
                            deadline)
            time.sleep(delay)
            if child.kill():
                killed += 1
            child.rest()
            assert child.proc.returncode in (0, -signal.SIGKILL), child.errors()
            left = staging_dirs(root, child.proc.pid)
            left_staging += len(left)
            stale = left
            for p in child.seen:
                if p[0] == "B":
                    began[(eid, int(p[1]))] = p[2]
                elif p[0] == "D":
                    committed.append((eid, int(p[1]), p[2]))
        finally:
            child.close()
        k += 1

    # One more process, run to the end: the repository is still writable, and it removes the
    # staging directories of the last killed process when it opens the repository.
    final = LoopChild(project, seed + 1000, KILL_STEPS, tmp_path / "stderr-final.txt")
    try:
        final.rest()
        assert final.proc.wait(timeout=WAIT) == 0, final.errors()
        eid = next(p[1] for p in final.seen if p[0] == "I")
        for p in final.seen:
            if p[0] == "B":
                began[(eid, int(p[1]))] = p[2]
            elif p[0] == "D":
                committed.append((eid, int(p[1]), p[2]))
    finally:
        final.close()
    cleaned += len(stale)
    t_kills = time.monotonic() - t_start
    print(f"seed {seed}: {killed} kills in {k} runs, {len(committed)} checkpoints announced, "
          f"{left_staging} staging dirs left by kills ({cleaned} removed by the next open), "
          f"{t_kills:.1f} s")
    assert staging_dirs(root) == [], "staging directories remain"
    assert left_staging >= 1, "no kill left a staging directory: spills were not exercised"

    repo = Repository.open(root)
    rep = fsck(repo, read_data=True)
    assert rep.ok, rep.errors
    print(f"fsck: {rep.refs} refs, {rep.reachable} reachable objects, warnings {rep.warnings}")
    # Every checkpoint announced as committed is there with the bytes captured for its step.
    for eid, step, cid in committed:
        obj = repo.objects.read_object(bytes.fromhex(cid))
        assert isinstance(obj, CheckpointObj) and obj.step == step
        assert obj.experiment.hex() == eid and obj.files is not None
        assert content_digest(repo, obj.files) == began[(eid, step)], f"{cid}: wrong bytes"
    # No partial checkpoint is visible: every checkpoint on every experiment's chain is complete,
    # has the bytes of its step, and the chain is in step order.
    announced = {cid for _e, _s, cid in committed}
    on_chains = set()
    for name, head in repo.refs.list("experiments").items():
        eid = name.split("/")[-1]
        steps = []
        cur = head
        while cur is not None and cur.hex() != eid:
            obj = repo.objects.read_object(cur)
            assert isinstance(obj, CheckpointObj) and obj.files is not None, cur.hex()
            assert (eid, obj.step) in began, f"{cur.hex()}: step {obj.step} was never begun"
            assert content_digest(repo, obj.files) == began[(eid, obj.step)], \
                f"checkpoint {cur.hex()} (step {obj.step}) holds other bytes than its step's"
            on_chains.add(cur.hex())
            steps.append(obj.step)
            cur = obj.parent
        assert steps == sorted(steps, reverse=True), (eid, steps)
    assert announced <= on_chains
    print(f"checked in {time.monotonic() - t_start - t_kills:.1f} s")


# -- 3. memory budget ----------------------------------------------------------------------------


# The pipeline's own working memory, outside the capture budget: replicate/objects/ingest.py
# keeps up to KEEP_BUFFERS (6) read blocks of 16 MiB + one chunk (reading staged or live files),
# up to MAX_INFLIGHT (6) batches of 4 MiB of compressed output, zstd contexts per worker thread
# and Python objects. A synchronous checkpoint of a 128 MiB file (no capture at all) peaked at
# 82 MiB above its starting RSS here, a background run with everything staged at 88 MiB.
SLACK = 32 * MIB


def test_peak_memory_stays_within_the_budget(tmp_path: Path) -> None:
    """REPLICATE_MEMORY_BUDGET=256M and six 128 MiB checkpoints back to back: the peak RSS
    growth stays within the budget (+ a small slack); captures beyond the budget are staged."""
    project = tmp_path / "project"
    project.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "bg_memory.py"), "128", "6"], cwd=project,
        env=child_env(REPLICATE_MEMORY_BUDGET="256M"), capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = r["peak"] - r["rss_before"]
    print(f"peak extra {extra / MIB:.0f} MiB (budget 256 MiB); memory "
          f"{[m // MIB for m in r['memory']]}, staged {[s // MIB for s in r['staged']]}; "
          f"returned after {r['returned_s']:.2f} s, committed after {r['total_s']:.2f} s")
    assert r["budget"] == 256 * MIB
    # the budget covers captures and the pipeline's working memory (saver.PIPELINE_RESERVE);
    # a small allowance remains for the allocator and Python
    assert extra <= r["budget"] + SLACK, f"{extra / MIB:.0f} MiB over the start"
    # captures beyond the budget went to staging (or waited: back-pressure)
    assert sum(r["staged"]) > 0 or "waiting for memory" in proc.stderr
    assert all(m + s == 128 * MIB for m, s in zip(r["memory"], r["staged"]))
    # memory held by captures in flight never exceeded the budget (each is 128 MiB)
    assert sum(1 for m in r["memory"] if m) >= 2


def test_back_pressure_when_memory_and_staging_are_full(tmp_path: Path) -> None:
    """A budget far below the file size: each capture is staged, and the next checkpoint waits
    for the previous one (saying so) instead of piling up copies."""
    project = tmp_path / "project"
    project.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "bg_memory.py"), "32", "3"], cwd=project,
        env=child_env(REPLICATE_MEMORY_BUDGET="1M"), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["memory"] == [0, 0, 0] and r["staged"] == [32 * MIB] * 3
    assert "waiting for memory before capturing the next one" in proc.stderr
    assert not staging_dirs(project / ".replicate")


# -- 4. wait=True --------------------------------------------------------------------------------


def test_wait_true_is_synchronous(repo_dir: Path) -> None:
    exp = new_experiment(repo_dir)
    (repo_dir / "model.bin").write_bytes(os.urandom(6 * MIB))
    first = exp.checkpoint(path="model.bin", metrics={"loss": 1.0})  # in the background
    assert first is not None
    (repo_dir / "model.bin").write_bytes(b"second" * 1000)
    cp = exp.checkpoint(path="model.bin", metrics={"loss": 0.5}, wait=True)
    assert cp is not None and cp.saved and cp._job is None
    # the ref has moved already: seen by a fresh Repository ...
    ref = f"experiments/{exp.id}"
    assert Repository.open(repo_dir / ".replicate").refs.read(ref).hex() == cp.id
    # ... and by another process
    code = ("import sys; from pathlib import Path; from replicate.repository import Repository;"
            "print(Repository.open(Path(sys.argv[1])).refs.read(sys.argv[2]).hex())")
    out = subprocess.run([sys.executable, "-c", code, str(repo_dir / ".replicate"), ref],
                         capture_output=True, text=True, env=child_env(), check=True)
    assert out.stdout.strip() == cp.id
    # the earlier background checkpoint was committed first: it is the parent
    assert first.saved
    obj = Repository.open(repo_dir / ".replicate").objects.read_object(bytes.fromhex(cp.id))
    assert obj.parent is not None and obj.parent.hex() == first.id
    with cp.open("model.bin") as f:
        assert f.read() == b"second" * 1000


def test_wait_true_error_returns_none_with_a_warning(repo_dir: Path) -> None:
    exp = new_experiment(repo_dir)
    (repo_dir / "model.bin").write_bytes(os.urandom(6 * MIB))
    tmp = repo_dir / ".replicate" / "tmp"
    shutil.rmtree(tmp)
    tmp.write_text("not a directory")
    try:
        with pytest.warns(CheckpointWarning, match="could not save checkpoint"):
            assert exp.checkpoint(path="model.bin", wait=True) is None
    finally:
        tmp.unlink()
        tmp.mkdir()
    assert len(exp.checkpoints) == 0
    assert Repository.open(repo_dir / ".replicate").refs.read(f"experiments/{exp.id}").hex() \
        == exp.id


# -- 5. exit drain, errors, the returned Checkpoint ----------------------------------------------


def read_back(project: Path) -> dict[int, str]:
    """step -> blake3 of model.bin, for the project's only experiment."""
    repo = Repository.open(project / ".replicate")
    [(name, cur)] = repo.refs.list("experiments").items()
    out = {}
    while cur is not None and cur.hex() != name.split("/")[-1]:
        obj = repo.objects.read_object(cur)
        out[obj.step] = content_digest(repo, obj.files)
        cur = obj.parent
    return out


@pytest.mark.parametrize("message_after", [None, 0.0])
def test_everything_in_flight_is_committed_at_exit(tmp_path: Path, message_after) -> None:
    """Three 64 MiB checkpoints, then the script ends at once: all three are there afterwards.
    When the drain takes more than a moment (EXIT_MESSAGE_AFTER, 1 s; 0 in the second case)
    stderr says so."""
    project = tmp_path / "project"
    project.mkdir()
    args = [] if message_after is None else ["--message-after", str(message_after)]
    proc = subprocess.Popen([sys.executable, str(HELPERS / "bg_exit.py"), "64", *args],
                            cwd=project, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    began = {}
    for line in proc.stdout:
        p = line.split()
        if p[0] == "B":
            began[int(p[1])] = p[2]
        if p[0] == "E":
            break
    t_end = time.monotonic()
    _, err = proc.communicate(timeout=120)
    drain = time.monotonic() - t_end
    assert proc.returncode == 0, err
    assert read_back(project) == began and len(began) == 3
    threshold = saver_mod.EXIT_MESSAGE_AFTER if message_after is None else message_after
    said = "replicate is still saving" in err
    print(f"exit drain took {drain:.2f} s; message: {said}")
    if message_after is not None or drain > threshold + 1.0:
        assert said, err
    if said:
        assert "replicate has finished saving." in err
        assert "If you force quit, those checkpoints will be lost." in err
    assert not staging_dirs(project / ".replicate")


def test_background_error_is_loud_and_raised_by_wait(tmp_path: Path) -> None:
    """.replicate/tmp replaced by a file after checkpoint() returned: the background save fails, a
    CheckpointWarning is printed on stderr, Checkpoint.wait() raises the error, and training
    goes on (the next checkpoint, once tmp/ is back, is saved)."""
    project = tmp_path / "project"
    project.mkdir()
    proc = subprocess.run([sys.executable, str(HELPERS / "bg_error.py")], cwd=project,
                          env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ev = {e["event"]: e for e in map(json.loads, proc.stdout.splitlines())}
    assert ev["returned"] == {"event": "returned", "none": False, "step": 7,
                              "metrics": {"loss": 0.5}, "saved": False}
    raised = ev["raised"]
    assert raised["error"] in ("NotADirectoryError", "FileExistsError", "FileNotFoundError",
                               "OSError"), raised
    assert raised["listed"] is False and raised["saved"] is False
    assert "CheckpointWarning" in proc.stderr and "could not save checkpoint (step 7)" in \
        proc.stderr, proc.stderr
    assert ev["second"]["steps"] == [8]
    repo = Repository.open(project / ".replicate")
    [head_id] = repo.refs.list("experiments").values()
    head = repo.objects.read_object(head_id)
    assert head.step == 8 and head.parent is None
    assert fsck(repo).ok


def test_returned_checkpoint_has_metrics_at_once_and_id_waits_for_the_commit(
    repo_dir: Path, monkeypatch
) -> None:
    exp = new_experiment(repo_dir)
    original = (os.urandom(5 * MIB))
    (repo_dir / "model.bin").write_bytes(original)
    gate = threading.Event()
    from replicate.project import Project as ProjectClass

    commit = ProjectClass._commit

    def slow_commit(self, *a, **kw):
        assert gate.wait(30)
        return commit(self, *a, **kw)

    monkeypatch.setattr(ProjectClass, "_commit", slow_commit)
    cp = exp.checkpoint(path="model.bin", step=3, metrics={"loss": 0.25},
                        primary_metric=("loss", "minimize"))
    assert cp is not None
    assert (cp.step, cp.metrics, cp.path) == (3, {"loss": 0.25}, "model.bin")
    assert cp.primary_metric == {"name": "loss", "goal": "minimize"}
    assert not cp.saved and "saving" in repr(cp)
    # overwrite in place and with another size before anything is stored
    with open(repo_dir / "model.bin", "r+b") as f:
        f.write(b"\0" * MIB)
    (repo_dir / "model.bin").write_bytes(b"x" * 100)
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(cp.id))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got, ".id returned before the commit"
    gate.set()
    t.join(30)
    assert len(got[0]) == 64 and cp.saved
    with cp.open("model.bin") as f:
        assert f.read() == original


def test_overwrite_right_after_return_with_a_staged_capture(repo_dir: Path, monkeypatch) -> None:
    """The same with a memory budget so small that the capture is a staging copy."""
    tiny = saver_mod.Saver(saver_mod.Budget(1 * MIB))
    monkeypatch.setattr(saver_mod, "_SAVER", tiny)
    monkeypatch.setattr(saver_mod, "_SAVER_PID", os.getpid())
    exp = new_experiment(repo_dir)
    original = os.urandom(8 * MIB)
    (repo_dir / "model.bin").write_bytes(original)
    cp = exp.checkpoint(path="model.bin")
    assert cp is not None and cp._job is not None
    assert cp._job.staged == 8 * MIB and cp._job.memory == 0
    (repo_dir / "model.bin").write_bytes(os.urandom(8 * MIB))
    cp.wait()
    with cp.open("model.bin") as f:
        assert f.read() == original
    assert not staging_dirs(repo_dir / ".replicate")


def test_untouched_file_is_not_read_again(repo_dir: Path) -> None:
    """A file unchanged since the previous capture (even one not yet committed) is neither
    read nor stored again: its capture costs a stat."""
    exp = new_experiment(repo_dir)
    data = os.urandom(6 * MIB)
    (repo_dir / "model.bin").write_bytes(data)
    a = exp.checkpoint(path="model.bin")
    b = exp.checkpoint(path="model.bin")
    assert a is not None and b is not None
    assert a._job.memory + a._job.staged == 6 * MIB
    assert b._job.memory + b._job.staged == 0  # SAME (or CACHED): nothing captured
    exp.wait()
    with b.open("model.bin") as f:
        assert f.read() == data


# -- the capture buffer pool -------------------------------------------------------------------


def test_buffer_size_has_slack_for_a_file_that_grew() -> None:
    size = saver_mod.buffer_size(512 * MIB)
    assert size % saver_mod.ROUND == 0 and size >= 512 * MIB + 1024
    assert size <= 512 * MIB * 1.02 + saver_mod.ROUND


def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_pool_reuses_warm_buffers_within_its_limit() -> None:
    pool = saver_mod.BufferPool(3 * saver_mod.buffer_size(8 * MIB))
    buf, give = pool.get(8 * MIB)
    assert len(buf) == 8 * MIB
    pool.prefetch(8 * MIB)
    wait_for(lambda: pool.warmed == 1 and pool.warmer is None)
    assert len(pool.free) == 1
    warm = pool.free[0]
    buf2, give2 = pool.get(8 * MIB + 1000)  # grew a little: the warm buffer still fits
    assert buf2.obj is warm
    give()
    give2()
    give2()  # idempotent
    assert pool.in_use == 0 and pool.total <= pool.limit
    small, give_small = pool.get(1000)  # small captures bypass the pool
    assert isinstance(small, bytearray) and pool.in_use == 0
    give_small()
    # never more than the limit: a fourth buffer does not fit, so nothing is kept of it
    held = [pool.get(8 * MIB) for _ in range(4)]
    for _b, g in held:
        g()
    assert pool.total <= pool.limit and pool.in_use == 0
    assert len(pool.free) <= saver_mod.MAX_FREE  # idle memory is given back


def test_pool_gives_memory_back_at_exit() -> None:
    """At the exit drain no capture is expected any more: free buffers are unmapped at once (in
    a background thread, overlapping with the checkpoints still being processed), and so is
    every buffer given back after that; nothing is warmed."""
    pool = saver_mod.BufferPool(1 << 30)
    a, give_a = pool.get(8 * MIB)
    b, give_b = pool.get(8 * MIB)
    mapped_a, mapped_b = a.obj, b.obj
    del a, b
    give_a()
    assert pool.free == [mapped_a]
    pool.close()
    assert pool.free == []
    give_b()
    pool.prefetch(8 * MIB)
    wait_for(lambda: pool.unmapper is None and pool.warmer is None)
    assert mapped_a.closed and mapped_b.closed
    assert pool.free == [] and pool.in_use == 0 and pool.warmed == 0


def test_released_capture_keeps_no_reference_to_its_buffer(tmp_path: Path) -> None:
    """``recent`` (the earlier captures of this process) outlives a capture; it must not keep a
    pooled buffer alive (or see it reused) once the capture is released."""
    recent: dict = {}
    pool = saver_mod.BufferPool(1 << 30)
    (tmp_path / "f.bin").write_bytes(os.urandom(5 * MIB))
    cap = build.capture(tmp_path, "f.bin", placement=lambda _n: build.MEMORY,
                        buffers=pool.get, recent=recent)
    cf = recent[str(tmp_path / "f.bin")]
    assert cf.source == build.MEMORY and bytes(cf.data) == (tmp_path / "f.bin").read_bytes()
    cap.release()
    assert cf.data is None and pool.in_use == 0 and len(pool.free) == 1


class _SlowZero:
    """/dev/zero whose second read waits for ``release`` (to hold the warmer mid-buffer)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.reads = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def readinto(self, mv) -> int:
        self.reads += 1
        if self.reads > 1:
            assert self.release.wait(10)
        mv[:] = bytes(len(mv))
        return len(mv)


def test_capture_takes_over_a_buffer_being_warmed(monkeypatch) -> None:
    """A capture arriving while the warmer is busy takes that buffer instead of mapping a new
    one (the pages the warmer touched are not touched again)."""
    monkeypatch.setattr(saver_mod, "WARM_PIECE", 1 * MIB)
    release = threading.Event()
    zero = _SlowZero(release)
    monkeypatch.setattr(saver_mod, "open", lambda *a, **k: zero, raising=False)
    allocs: list[str] = []
    real_alloc = saver_mod._alloc
    monkeypatch.setattr(saver_mod, "_alloc",
                        lambda n: allocs.append(threading.current_thread().name) or real_alloc(n))
    pool = saver_mod.BufferPool(1 << 30)
    pool.prefetch(16 * MIB)
    wait_for(lambda: zero.reads >= 2)  # the warmer is holding a half-warmed buffer
    got: list = []
    t = threading.Thread(target=lambda: got.append(pool.get(16 * MIB)))
    t.start()
    wait_for(lambda: pool.claimed)
    release.set()
    t.join(10)
    assert got and allocs == ["replicate-warm"], allocs  # no second mapping
    assert zero.reads == 2  # the warmer stopped at once
    buf, give = got[0]
    assert len(buf) == 16 * MIB and pool.warmed == 0
    assert pool.in_use == saver_mod.buffer_size(16 * MIB)
    give()
    wait_for(lambda: pool.warmer is None)
    assert pool.in_use == 0 and len(pool.free) == 1 and not pool.claimed
