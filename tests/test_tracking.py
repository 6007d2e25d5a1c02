"""Acceptance tests of the tracking API: ``replicate.init()`` and ``Experiment.checkpoint()`` in
a real training script (a subprocess), read back by another process (this one).

The module fixture builds one project: a git repository (so git state is recorded) holding the
scripts of tests/helpers, in which train_basic.py runs twice (a clean work tree, then a dirty
one); the resume test adds checkpoints to the second experiment with train_resume.py. Tests that
need their own repository use the ``repo_dir`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import replicate
from replicate import AmbiguousID, DoesNotExist, Project
from replicate.experiment import CheckpointWarning
from replicate.heartbeat import heartbeat_path

HELPERS = Path(__file__).parent / "helpers"
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
       "-c", "commit.gpgsign=false"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def run_script(project: Path, script: str, *args: str, timeout: float = 120) -> list[dict]:
    """Run a helper script (already copied into ``project``) as ``python SCRIPT ARGS`` with the
    project as working directory; return the JSON objects it printed."""
    proc = subprocess.run([sys.executable, script, *args], cwd=project, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_through(f, block: int = 1 << 20) -> str:
    """SHA-256 of what a file object yields when read in ``block``-byte pieces."""
    h = hashlib.sha256()
    while chunk := f.read(block):
        h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    project = tmp_path_factory.mktemp("tracking") / "project"
    project.mkdir()
    for name in ("train_basic.py", "train_resume.py"):
        shutil.copy(HELPERS / name, project / name)
    (project / "README.md").write_text("a project\n")
    (project / ".gitignore").write_text("model.bin\n")
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "initial")
    commit = git(project, "rev-parse", "HEAD")

    clean = run_script(project, "train_basic.py", "--flag", "value")
    (project / "README.md").write_text("a project, edited\n")  # a tracked file: dirty
    dirty = run_script(project, "train_basic.py", "--flag", "dirty", "--seed", "7")
    return SimpleNamespace(project=project, commit=commit, clean=clean, dirty=dirty,
                           proj=Project(directory=project))


def checkpoints_of(run: list[dict]) -> list[dict]:
    return [e for e in run if e["event"] == "checkpoint"]


def experiment_of(t: SimpleNamespace, run: list[dict]):
    return t.proj.experiments.get(run[0]["id"])


@pytest.fixture
def default_project(trained, monkeypatch):
    """``replicate.experiments`` / ``replicate.checkpoints`` of the trained project."""
    monkeypatch.chdir(trained.project)
    monkeypatch.setattr(replicate, "_default", None)
    return trained


# -- what a training script records -------------------------------------------------------------


def test_params_are_recorded_with_numpy_values_converted(trained):
    exp = experiment_of(trained, trained.clean)
    assert exp.params == {
        "lr": 0.5,
        "batch_size": 64,
        "dropout": 0.25,
        "augment": True,
        "layers": [64, 32],
        "optimizer": {"name": "adam", "betas": [0.5, 0.999], "schedule": {"warmup": 10}},
        "flag": "value",
        "comment": None,
    }
    # Plain Python types, not numpy ones.
    assert type(exp.params["lr"]) is float
    assert type(exp.params["batch_size"]) is int
    assert type(exp.params["augment"]) is bool
    assert all(type(v) is int for v in exp.params["layers"])
    assert type(exp.params["optimizer"]["schedule"]["warmup"]) is int


def test_metrics_keep_nan_none_bools_and_numpy_floats(trained):
    exp = experiment_of(trained, trained.clean)
    cps = exp.checkpoints
    assert len(cps) == 5
    first = cps[0].metrics
    assert set(first) == {"loss", "accuracy", "converged", "improved", "epoch", "note"}
    assert isinstance(first["loss"], float) and math.isnan(first["loss"])
    assert cps[1].metrics["loss"] is None and "loss" in cps[1].metrics
    assert [c.metrics["loss"] for c in cps[2:]] == [0.8, 0.3, 0.6]
    assert [c.metrics["accuracy"] for c in cps] == [0.75 + i / 64 for i in range(5)]
    assert all(type(c.metrics["accuracy"]) is float for c in cps)
    assert [c.metrics["converged"] for c in cps] == [False, False, False, False, True]
    assert [c.metrics["improved"] for c in cps] == [False, False, False, True, True]
    assert all(type(c.metrics["improved"]) is bool for c in cps)
    assert [c.metrics["epoch"] for c in cps] == [0, 1, 2, 3, 4]
    assert all(c.metrics["note"] is None and "note" in c.metrics for c in cps)
    assert all(c.primary_metric == {"name": "loss", "goal": "minimize"} for c in cps)
    assert all(c.path == "model.bin" for c in cps)
    assert exp.primary_metric() == ("loss", "minimize")


def test_steps_auto_increment_and_an_explicit_step_resets_the_counter(trained):
    exp = experiment_of(trained, trained.clean)
    assert exp.checkpoints.step == [0, 1, 2, 10, 11]
    assert exp.checkpoints.step == [e["step"] for e in checkpoints_of(trained.clean)]
    assert len({c.id for c in exp.checkpoints}) == 5
    assert all(len(c.id) == 64 for c in exp.checkpoints)
    created = [c.created for c in exp.checkpoints]
    assert created == sorted(created) and exp.created <= created[0]
    assert exp.duration == created[-1] - exp.created


def test_best_skips_none_and_nan_and_latest_is_the_last(trained):
    exp = experiment_of(trained, trained.clean)
    # The first checkpoint's loss is NaN and the second's None: neither may win.
    assert exp.best().step == 10 and exp.best().metrics["loss"] == 0.3
    assert exp.latest().step == 11 and exp.latest().id == exp.checkpoints[-1].id


def test_each_checkpoint_reads_back_the_bytes_it_was_given(trained):
    """The script overwrote model.bin right after every checkpoint() call: each checkpoint still
    has the bytes it was given, read lazily through open()."""
    for run in (trained.clean, trained.dirty):
        exp = experiment_of(trained, run)
        expected = {e["step"]: e["sha256"] for e in checkpoints_of(run)}
        assert len(set(expected.values())) == len(expected) == 5  # every version differed
        assert exp.checkpoints.step[:5] == list(expected)  # (the resume test adds more)
        for cp in exp.checkpoints[:5]:
            with cp.open("model.bin") as f:
                assert read_through(f) == expected[cp.step]
            with cp.open("model.bin") as f:
                whole = f.read()
            assert len(whole) == 400_000 and sha256(whole) == expected[cp.step]
    # The working copy holds bytes never checkpointed.
    on_disk = sha256((trained.project / "model.bin").read_bytes())
    assert on_disk not in {e["sha256"] for e in checkpoints_of(trained.clean + trained.dirty)}


def test_open_is_seekable_and_falls_back_to_the_experiments_code(trained):
    exp = experiment_of(trained, trained.clean)
    cp = exp.checkpoints[2]
    with cp.open("model.bin") as f:
        whole = f.read()
        f.seek(123_456)
        assert f.read(1000) == whole[123_456:124_456]
        f.seek(-10, os.SEEK_END)
        assert f.read() == whole[-10:]
        assert f.seekable() and f.readable()
    # Files of the experiment's code (init(path=".")) are readable from any checkpoint.
    script = (HELPERS / "train_basic.py").read_bytes()
    assert cp.open("train_basic.py").read() == script
    assert cp.open("README.md").read() == b"a project\n"
    with pytest.raises(DoesNotExist):
        cp.open("no-such-file.txt")


def test_environment_is_recorded(trained):
    clean = experiment_of(trained, trained.clean)
    dirty = experiment_of(trained, trained.dirty)
    assert clean.command == "train_basic.py --flag value"
    assert dirty.command == "train_basic.py --flag dirty --seed 7"
    assert clean.python_version == platform.python_version()
    assert clean.python_packages.get("numpy") == np.__version__
    assert clean.python_packages.get("replicate") == replicate.__version__
    assert clean.replicate_version == replicate.__version__
    assert clean.git == {"commit": trained.commit, "branch": "main", "dirty": False}
    assert dirty.git == {"commit": trained.commit, "branch": "main", "dirty": True}
    assert clean.system["os"] and clean.system["cpu_count"] == os.cpu_count()
    assert isinstance(clean.system.get("gpus"), list)
    assert clean.user and clean.host
    assert len(clean.id) == 64 and clean.short_id() == clean.id[:7]
    assert clean.path == "."


def test_a_clean_exit_marks_the_experiment_stopped(trained):
    repo = trained.proj.repo()
    for run in (trained.clean, trained.dirty):
        exp = experiment_of(trained, run)
        assert exp.is_running() is False
        assert not heartbeat_path(repo.heartbeats_dir, bytes.fromhex(exp.id)).exists()
    assert [e.is_running() for e in trained.proj.experiments.list()] == [False, False]


def test_experiments_list_is_oldest_first(trained):
    exps = trained.proj.experiments.list()
    assert [e.id for e in exps] == [trained.clean[0]["id"], trained.dirty[0]["id"]]


# -- lookups by ID prefix ----------------------------------------------------------------------


def test_checkpoints_get_finds_a_checkpoint_by_id_prefix(default_project):
    t = default_project
    expected = {e["step"]: e["sha256"] for e in checkpoints_of(t.clean)}
    for read in experiment_of(t, t.clean).checkpoints:
        cp = replicate.checkpoints.get(read.id[:8])
        assert cp.id == read.id and cp.step == read.step
        assert cp.experiment.id == t.clean[0]["id"]
        with cp.open("model.bin") as f:
            assert read_through(f) == expected[cp.step]
    full = experiment_of(t, t.dirty).checkpoints[0].id
    assert replicate.checkpoints.get(full).id == full
    assert replicate.checkpoints.get(full[:12].upper()).id == full
    assert replicate.experiments.get(t.clean[0]["id"][:6]).id == t.clean[0]["id"]


def test_unknown_ids_raise_does_not_exist(default_project):
    t = default_project
    all_ids = [t.clean[0]["id"], t.dirty[0]["id"]] + [
        c.id for run in (t.clean, t.dirty) for c in experiment_of(t, run).checkpoints
    ]
    unknown = next(p for p in (f"{i:04x}" for i in range(65536))
                   if not any(x.startswith(p) for x in all_ids))
    with pytest.raises(DoesNotExist):
        replicate.checkpoints.get(unknown)
    with pytest.raises(DoesNotExist):
        replicate.experiments.get(unknown)
    with pytest.raises(DoesNotExist):
        replicate.checkpoints.get("not-hex")
    # An experiment's ID is not a checkpoint's, and the other way round.
    with pytest.raises(DoesNotExist):
        replicate.checkpoints.get(t.clean[0]["id"][:10])
    with pytest.raises(DoesNotExist):
        replicate.experiments.get(experiment_of(t, t.clean).checkpoints[0].id[:10])
    assert issubclass(DoesNotExist, replicate.ReplicateError)


def _first_shared_char(ids: list[str]) -> str | None:
    seen: set[str] = set()
    for i in ids:
        if i[0] in seen:
            return i[0]
        seen.add(i[0])
    return None


def test_ambiguous_prefixes_raise_ambiguous_id(repo_dir):
    project = Project(directory=repo_dir)
    # 17 IDs always share a first hex digit; stop as soon as two do.
    exps = []
    while _first_shared_char([e.id for e in exps]) is None:
        exps.append(project.experiments.create(params={"n": len(exps)}, disable_heartbeat=True))
    c = _first_shared_char([e.id for e in exps])
    with pytest.raises(AmbiguousID):
        project.experiments.get(c)
    cps = []
    while _first_shared_char([x.id for x in cps]) is None:
        cps.append(exps[0].checkpoint(metrics={"i": len(cps)}))
    c = _first_shared_char([x.id for x in cps])
    with pytest.raises(AmbiguousID):
        project.checkpoints.get(c)
    assert issubclass(AmbiguousID, replicate.ReplicateError)
    # A longer prefix resolves.
    assert project.checkpoints.get(cps[-1].id[:16]).id == cps[-1].id
    assert project.experiments.get(exps[-1].id[:16]).id == exps[-1].id


# -- resuming ------------------------------------------------------------------------------------


def test_resume_in_a_new_process_continues_the_chain_and_the_step_counter(trained):
    run = trained.dirty
    before = experiment_of(trained, run)
    assert before.checkpoints.step == [0, 1, 2, 10, 11]
    resumed = run_script(trained.project, "train_resume.py", run[0]["id"][:7], "--count", "2")
    assert [e["step"] for e in resumed] == [12, 13]
    after = experiment_of(trained, run)
    assert after.checkpoints.step == [0, 1, 2, 10, 11, 12, 13]
    assert [c.id for c in after.checkpoints[:5]] == [c.id for c in before.checkpoints]
    assert after.checkpoints.metrics["resumed"] == [None] * 5 + [True, True]
    expected = {e["step"]: e["sha256"] for e in checkpoints_of(run) + resumed}
    for cp in after.checkpoints:
        with cp.open("model.bin") as f:
            assert read_through(f) == expected[cp.step]
    assert after.best().step == 12  # loss 0.1
    assert after.latest().step == 13
    # The object read before the resume sees the new checkpoints after refresh().
    before.refresh()
    assert before.checkpoints.step == after.checkpoints.step


# -- in-process behaviour: validation, failures ----------------------------------------------


@pytest.fixture
def exp(repo_dir):
    (repo_dir / "model.pth").write_bytes(b"weights v1")
    e = replicate.init(params={"lr": 0.1}, disable_heartbeat=True)
    yield e
    with warnings.catch_warnings():  # let checkpoints saved in the background finish here
        warnings.simplefilter("ignore", CheckpointWarning)
        e.wait(raise_errors=False)
    e.stop()


def _state(e) -> tuple:
    """Everything a checkpoint would change in the repository."""
    repo = e._project.repo()
    root = repo.root
    ref = f"experiments/{e.id}"
    return (
        repo.refs.read(ref),
        (root / "logs" / "refs" / ref).read_bytes(),
        sorted(p.name for p in (root / "packs").rglob("*.pack")),
        sorted(p.name for p in (root / "index").iterdir()),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "missing.pth"},
        {"path": ""},
        {"path": "../outside.pth"},
        {"path": "/etc/hostname"},
        {"path": "model.pth", "metrics": [("loss", 0.1)]},
        {"path": "model.pth", "metrics": "loss=0.1"},
        {"metrics": {1: 0.5}},
        {"metrics": {("a", "b"): 0.5}},
        {"metrics": {"": 0.5}},
        {"metrics": {"when": object()}},
        {"metrics": {"loss": 0.1}, "primary_metric": "loss"},
        {"metrics": {"loss": 0.1}, "primary_metric": ("loss",)},
        {"metrics": {"loss": 0.1}, "primary_metric": ("loss", "min")},
        {"metrics": {"loss": 0.1}, "primary_metric": ("loss", "minimize", "extra")},
        {"metrics": {"loss": 0.1}, "primary_metric": (1, "minimize")},
        {"metrics": {"loss": 0.1}, "primary_metric": ("", "maximize")},
        {"step": "3"},
        {"step": 1.5},
    ],
    ids=lambda kw: repr(kw)[:60],
)
def test_invalid_arguments_raise_value_error_and_record_nothing(exp, kwargs):
    (exp._project.directory.parent / "outside.pth").write_bytes(b"x")  # exists, but outside
    before = _state(exp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ValueError, not a warning
        with pytest.raises(ValueError):
            exp.checkpoint(**kwargs)
    assert _state(exp) == before
    assert len(exp.checkpoints) == 0


def test_numpy_step_and_valid_arguments_are_accepted(exp):
    cp = exp.checkpoint(path="model.pth", step=np.int64(5), metrics={"acc": np.float64(0.5)},
                        primary_metric=["acc", "maximize"])
    assert cp.step == 5 and type(cp.step) is int
    assert cp.primary_metric == {"name": "acc", "goal": "maximize"}
    assert exp.checkpoint().step == 6  # no path, no metrics: still a checkpoint
    assert exp.checkpoints[-1].path is None and exp.checkpoints[-1].metrics == {}
    assert exp.best().step == 5


def test_init_validates_its_arguments(repo_dir):
    with pytest.raises(ValueError):
        replicate.init(path="missing", disable_heartbeat=True)
    with pytest.raises(ValueError):
        replicate.init(params=["lr", 0.1], disable_heartbeat=True)
    with pytest.raises(ValueError):
        replicate.init(params={"when": object()}, disable_heartbeat=True)
    assert Project(directory=repo_dir).experiments.list() == []


def break_tmp(exp) -> Path:
    """A real failure to save: .replicate/tmp (where packs are written before they are renamed
    into place) becomes a file, so no pack can be created."""
    exp.wait(raise_errors=False)  # earlier checkpoints finish first (they write into tmp/)
    tmp = exp._project.repo().root / "tmp"
    shutil.rmtree(tmp)
    tmp.write_text("not a directory")
    return tmp


def checkpoint_expecting_failure(exp, **kwargs):
    """Call checkpoint() and wait (up to 30 s) for its CheckpointWarning: emitted at once, or,
    when the checkpoint is saved in the background, as soon as saving it fails. Returns what
    checkpoint() returned and the CheckpointWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = exp.checkpoint(**kwargs)
        deadline = time.monotonic() + 30
        while not any(issubclass(w.category, CheckpointWarning) for w in caught):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    return result, [w for w in caught if issubclass(w.category, CheckpointWarning)]


def test_a_failure_to_save_returns_none_with_a_warning(exp):
    """INTERFACE.md: "a failure to save (disk full, remote down) is a loud warning and returns
    None"."""
    assert exp.checkpoint(path="model.pth", metrics={"loss": 1.0}) is not None
    break_tmp(exp)
    for kwargs in ({"path": "model.pth", "metrics": {"loss": 0.5}}, {"metrics": {"loss": 0.4}}):
        with pytest.warns(CheckpointWarning, match=r"could not save checkpoint"):
            assert exp.checkpoint(**kwargs) is None


def test_a_failure_to_save_leaves_nothing_half_visible_and_training_goes_on(exp):
    ok = exp.checkpoint(path="model.pth", metrics={"loss": 1.0})
    assert ok is not None and ok.id
    tmp = break_tmp(exp)
    before = _state(exp)
    (exp._project.directory / "model.pth").write_bytes(b"weights v2")
    for kwargs in ({"path": "model.pth", "metrics": {"loss": 0.5}}, {"metrics": {"loss": 0.4}}):
        _, caught = checkpoint_expecting_failure(exp, **kwargs)
        assert len(caught) == 1
        message = str(caught[0].message)
        assert "could not save checkpoint" in message and exp.short_id() in message
        assert _state(exp) == before  # no ref moved, no pack or index segment left
        assert [c.id for c in exp.checkpoints] == [ok.id]
    fresh = Project(directory=exp._project.directory).experiments.get(exp.id)
    assert [c.id for c in fresh.checkpoints] == [ok.id]

    tmp.unlink()
    tmp.mkdir()
    again = exp.checkpoint(path="model.pth", metrics={"loss": 0.3})
    assert again is not None and again.step == 1
    assert again.open("model.pth").read() == b"weights v2"
    assert ok.open("model.pth").read() == b"weights v1"
    fresh.refresh()
    assert [c.id for c in fresh.checkpoints] == [ok.id, again.id]


def test_checkpointing_a_deleted_experiment_warns(exp):
    assert exp.checkpoint(metrics={"loss": 1.0}).id  # .id: once it is committed
    Project(directory=exp._project.directory).experiments.get(exp.id).delete()
    _, caught = checkpoint_expecting_failure(exp, metrics={"loss": 0.5})
    assert len(caught) == 1 and "could not save checkpoint" in str(caught[0].message)
    assert Project(directory=exp._project.directory).experiments.list() == []


def test_directories_and_nested_paths(exp):
    d = exp._project.directory / "out" / "weights"
    d.mkdir(parents=True)
    (d / "a.bin").write_bytes(b"A" * 1000)
    (d / "b.bin").write_bytes(os.urandom(200_000))
    b = (d / "b.bin").read_bytes()
    cp = exp.checkpoint(path="out", metrics={"loss": 0.1})
    cp2 = exp.checkpoint(path="out/weights/a.bin")
    (d / "b.bin").write_bytes(b"changed")
    assert cp.path == "out" and cp2.path == "out/weights/a.bin"
    assert cp.open("out/weights/b.bin").read() == b
    assert cp.open("out/weights/a.bin").read() == b"A" * 1000
    with pytest.raises(IsADirectoryError):
        cp.open("out/weights")
    with pytest.raises(DoesNotExist):
        cp2.open("out/weights/b.bin")  # not saved by that checkpoint


def test_bytes_are_captured_even_when_the_stat_cache_could_be_fooled(exp):
    """Rewrite a file with the same size and the same mtime after a checkpoint that the stat
    cache remembered: the next checkpoint must still store the new bytes (the stat cache also
    compares ctime and inode, and distrusts entries younger than its racy window)."""
    path = exp._project.directory / "model.pth"
    old = time.time_ns() - 3_600_000_000_000
    path.write_bytes(b"a" * 100_000)
    os.utime(path, ns=(old, old))
    time.sleep(2.2)  # past the racy window (2 s): this checkpoint may enter the stat cache
    first = exp.checkpoint(path="model.pth")
    second = exp.checkpoint(path="model.pth")  # unchanged: may be served by the stat cache
    with open(path, "r+b") as f:  # same inode, size and mtime; new bytes
        f.write(b"b" * 100_000)
    os.utime(path, ns=(old, old))
    third = exp.checkpoint(path="model.pth")
    assert first.open("model.pth").read() == b"a" * 100_000
    assert second.open("model.pth").read() == b"a" * 100_000
    assert third.open("model.pth").read() == b"b" * 100_000
