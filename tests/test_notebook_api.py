"""Acceptance tests of the notebook API: lists of experiments and checkpoints, DataFrames, plots,
HTML reprs, explicit projects, checkout and delete. Everything runs in this process; plots use
matplotlib's Agg backend (no display)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest

import replicate
from replicate import CheckoutConflict, DoesNotExist, Project
from replicate.lists import CheckpointList, ExperimentList

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
pd = pytest.importorskip("pandas")

import matplotlib.axes  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

NAN = float("nan")


def committed(cp):
    """The checkpoint, once committed (reading .id waits for a checkpoint saved in the
    background)."""
    assert cp is not None and len(cp.id) == 64
    return cp


@pytest.fixture
def runs(repo_dir):
    """Three experiments, oldest first:

    e1  lr=0.1, layers=2, code train.py; loss 1.0, 0.5, 0.7 (acc only on steps 0 and 2),
        model.pth saved at every step
    e2  lr=0.01, layers=3; loss 0.9, 0.4 (metrics only)
    e3  lr=0.001, name "<b>bold</b>", running (heartbeat on); loss NaN, 0.6
    """
    (repo_dir / "train.py").write_text("print('training')\n")
    project = Project(directory=repo_dir)
    e1 = project.experiments.create(path="train.py", params={"lr": 0.1, "layers": 2},
                                    disable_heartbeat=True)
    weights = []
    for step, metrics in enumerate([{"loss": 1.0, "acc": 0.5}, {"loss": 0.5},
                                    {"loss": 0.7, "acc": 0.8}]):
        data = f"weights {step}".encode() * 1000
        weights.append(data)
        (repo_dir / "model.pth").write_bytes(data)
        committed(e1.checkpoint(path="model.pth", metrics=metrics,
                                primary_metric=("loss", "minimize")))
    time.sleep(0.002)
    e2 = project.experiments.create(params={"lr": 0.01, "layers": 3}, disable_heartbeat=True)
    for loss in (0.9, 0.4):
        committed(e2.checkpoint(metrics={"loss": loss}, primary_metric=("loss", "minimize")))
    time.sleep(0.002)
    e3 = project.experiments.create(params={"lr": 0.001, "name": "<b>bold</b>"})
    for loss in (NAN, 0.6):
        committed(e3.checkpoint(metrics={"loss": loss}, primary_metric=("loss", "minimize")))
    yield SimpleNamespace(dir=repo_dir, project=project, e1=e1, e2=e2, e3=e3, weights=weights)
    e3.stop()
    plt.close("all")


def fresh(runs) -> ExperimentList:
    """Experiments as a notebook in another process would read them."""
    return Project(directory=runs.dir).experiments.list()


def test_checkpoint_list_metrics_and_step_are_aligned(runs):
    e1 = fresh(runs)[0]
    cps = e1.checkpoints
    assert isinstance(cps, CheckpointList) and len(cps) == 3
    assert cps.step == [0, 1, 2]
    assert cps.metrics["loss"] == [1.0, 0.5, 0.7]
    assert cps.metrics["acc"] == [0.5, None, 0.8]  # None where a checkpoint lacks it
    with pytest.raises(KeyError, match="nope"):
        cps.metrics["nope"]
    tail = cps[1:]
    assert isinstance(tail, CheckpointList)
    assert tail.step == [1, 2] and tail.metrics["loss"] == [0.5, 0.7]
    with pytest.raises(KeyError):
        cps[1:2].metrics["acc"]  # the only checkpoint of that slice has no acc
    e3 = fresh(runs)[2]
    loss = e3.checkpoints.metrics["loss"]
    assert math.isnan(loss[0]) and loss[1] == 0.6


def test_experiments_list_is_oldest_first_and_filters(runs):
    exps = fresh(runs)
    assert isinstance(exps, ExperimentList)
    assert [e.id for e in exps] == [runs.e1.id, runs.e2.id, runs.e3.id]
    assert [e.created for e in exps] == sorted(e.created for e in exps)
    assert isinstance(exps[1:], ExperimentList) and len(exps[1:]) == 2
    small = Project(directory=runs.dir).experiments.list(filter=lambda e: e.params["lr"] < 0.05)
    assert [e.id for e in small] == [runs.e2.id, runs.e3.id]
    # A filter that raises excludes that experiment, with a warning (as the predecessor did).
    with pytest.warns(UserWarning, match=runs.e3.short_id()):
        deep = Project(directory=runs.dir).experiments.list(
            filter=lambda e: e.params["layers"] > 2)
    assert [e.id for e in deep] == [runs.e2.id]
    assert Project(directory=runs.dir / "elsewhere").experiments.list() == []


def test_best_latest_and_primary_metric(runs):
    e1, e2, e3 = fresh(runs)
    assert e1.best().step == 1 and e1.latest().step == 2
    assert e2.best().metrics["loss"] == 0.4
    assert e3.best().metrics["loss"] == 0.6  # NaN skipped
    assert fresh(runs).primary_metric() == "loss"


def test_to_dataframe_has_one_row_per_experiment(runs):
    df = fresh(runs).to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == 3
    required = {"id", "created", "running", "num_checkpoints", "params.lr", "params.layers",
                "params.name", "best.loss", "latest.loss", "latest.acc"}
    assert required <= set(df.columns)
    assert list(df["id"]) == [runs.e1.id, runs.e2.id, runs.e3.id]
    assert list(df["num_checkpoints"]) == [3, 2, 2]
    assert list(df["running"]) == [False, False, True]
    assert list(df["params.lr"]) == [0.1, 0.01, 0.001]
    assert df["params.layers"].iloc[0] == 2 and pd.isna(df["params.layers"].iloc[2])
    assert list(df["best.loss"]) == [0.5, 0.4, 0.6]
    assert list(df["latest.loss"]) == [0.7, 0.4, 0.6]
    assert df["latest.acc"].iloc[0] == 0.8 and pd.isna(df["latest.acc"].iloc[1])
    assert pd.api.types.is_datetime64_any_dtype(df["created"])
    assert df["created"].is_monotonic_increasing
    assert ExperimentList().to_dataframe().empty


def test_plots_return_matplotlib_axes(runs):
    exps = fresh(runs)
    ax = exps.plot("loss")
    assert isinstance(ax, matplotlib.axes.Axes)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {e.short_id() for e in exps}
    assert list(lines[runs.e1.short_id()].get_xdata()) == [0, 1, 2]
    assert list(lines[runs.e1.short_id()].get_ydata()) == [1.0, 0.5, 0.7]
    assert list(lines[runs.e3.short_id()].get_xdata()) == [1]  # the NaN point is left out
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    plt.close("all")

    assert isinstance(exps.plot(), matplotlib.axes.Axes)  # the shared primary metric
    plt.close("all")
    ax = exps[0].plot("loss", logy=True)
    assert isinstance(ax, matplotlib.axes.Axes) and ax.get_yscale() == "log"
    plt.close("all")
    ax = exps[0].checkpoints.plot("acc")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert list(ax.get_lines()[0].get_xdata()) == [0, 2]
    plt.close("all")

    ax = exps.scatter("lr", "loss", logx=True)
    assert isinstance(ax, matplotlib.axes.Axes) and ax.get_xscale() == "log"
    points = sorted(map(tuple, ax.collections[0].get_offsets().tolist()))
    assert points == [(0.001, 0.6), (0.01, 0.4), (0.1, 0.5)]  # lr vs the best loss
    assert ax.get_xlabel() == "lr" and ax.get_ylabel() == "loss"
    plt.close("all")


def test_html_reprs_show_short_ids_and_escape_values(runs):
    exps = fresh(runs)
    html = exps._repr_html_()
    for e in exps:
        assert e.short_id() in html
    assert exps[0].best().short_id() in html and exps[0].latest().short_id() in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert exps[1].short_id() in exps[1]._repr_html_()
    cp = exps[0].checkpoints[0]
    assert cp.short_id() in cp._repr_html_()


def test_an_explicit_project_with_its_own_repository(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hello')\n")
    shared = tmp_path / "shared"  # a project whose repository the code project records into
    Project(directory=shared).experiments.create(params={"other": True}, disable_heartbeat=True)
    store = shared / ".replicate"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths are relative to the project directory, not the cwd
    project = Project(directory=code, repository=str(store))
    exp = project.experiments.create(path="train.py", params={"a": 1}, disable_heartbeat=True)
    (code / "model.pth").write_bytes(b"m" * 100)
    cp = committed(exp.checkpoint(path="model.pth", metrics={"loss": 0.1}))
    assert not (code / ".replicate").exists() and not (elsewhere / ".replicate").exists()
    for again in (Project(directory=code, repository=str(store)),
                  Project(repository=f"file://{store}"),
                  Project(directory=shared)):
        other, read = again.experiments.list()
        assert other.params == {"other": True} and read.id == exp.id
        assert again.checkpoints.get(cp.id[:9]).open("model.pth").read() == b"m" * 100
        assert again.experiments.get(exp.id[:7]).checkpoints[0].open("train.py").read() == (
            b"print('hello')\n")
    assert Project(directory=code).experiments.list() == []  # its default repository is empty
    assert replicate.Project is Project


def test_an_explicit_repository_path_is_created_on_first_use(tmp_path):
    (tmp_path / "code").mkdir()
    store = tmp_path / "store" / "repo"
    project = Project(directory=tmp_path / "code", repository=str(store))
    exp = project.experiments.create(params={"a": 1}, disable_heartbeat=True)
    assert (store / "config").is_file()
    assert Project(repository=str(store)).experiments.get(exp.id).params == {"a": 1}


def test_checkout_writes_code_and_checkpoint_files(runs, tmp_path):
    e1 = fresh(runs)[0]
    out = tmp_path / "out"
    e1.checkpoints[0].checkout(out)
    assert (out / "train.py").read_text() == "print('training')\n"
    assert (out / "model.pth").read_bytes() == runs.weights[0]
    assert not (out / ".replicate").exists()
    # Another checkpoint's file differs: refused without force, nothing written.
    with pytest.raises(CheckoutConflict):
        e1.checkpoints[2].checkout(out)
    assert (out / "model.pth").read_bytes() == runs.weights[0]
    e1.checkpoints[2].checkout(out, force=True)
    assert (out / "model.pth").read_bytes() == runs.weights[2]
    # An experiment checks out its best checkpoint.
    best = tmp_path / "best"
    e1.checkout(best)
    assert (best / "model.pth").read_bytes() == runs.weights[1]
    assert (best / "train.py").exists()
    # Metrics-only checkpoints and no code: nothing to check out.
    with pytest.raises(DoesNotExist):
        fresh(runs)[1].checkpoints[0].checkout(tmp_path / "nothing")


def test_delete_removes_an_experiment(runs):
    e2 = fresh(runs)[1]
    cp_id = e2.checkpoints[0].id
    e2.delete()
    assert [e.id for e in fresh(runs)] == [runs.e1.id, runs.e3.id]
    with pytest.raises(DoesNotExist):
        runs.project.experiments.get(runs.e2.id)
    with pytest.raises(DoesNotExist):
        runs.project.checkpoints.get(cp_id)
    fresh(runs)[1:].delete()
    assert [e.id for e in fresh(runs)] == [runs.e1.id]


def test_refresh_stop_and_is_running(runs):
    reader = runs.project.experiments.get(runs.e1.id)
    assert len(reader.checkpoints) == 3
    committed(runs.e1.checkpoint(metrics={"loss": 0.1}))
    assert len(reader.checkpoints) == 3
    reader.refresh()
    assert len(reader.checkpoints) == 4 and reader.best().metrics["loss"] == 0.1
    assert fresh(runs)[2].is_running() is True
    runs.e3.stop()
    assert fresh(runs)[2].is_running() is False
    assert runs.e3.is_running() is False
    d = reader.to_dict()
    assert d["id"] == runs.e1.id and d["num_checkpoints"] == 4
    assert d["best_checkpoint"]["metrics"] == {"loss": 0.1} and d["running"] is False
