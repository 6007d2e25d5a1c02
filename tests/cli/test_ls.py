"""``replicate ls`` / ``ps``: the predecessor's table byte for byte, golden outputs on the seeded
repository, JSON, quiet mode, filters, errors, the summary cache, and --help start-up time.

Golden files live in tests/cli/golden/; regenerate ours with ``UPDATE_GOLDEN=1 pytest tests/cli``
(the ``keepsake_*.txt`` files are the predecessor's verbatim output, copied from
shared/reference/limits.md section 5, and are never regenerated). They keep trailing spaces.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from replicate.cli import ls as ls_mod
from replicate.cli.app import COMMANDS, cli
from replicate.objects import codec
from replicate.query import CheckpointSummary, Summary
from replicate.repository import Repository
from tests.cli.conftest import NOW, SEC, T0, seed
from tests.cli.invoke import ROOT, Run, invoke
from tests.cli.invoke import run_subprocess as invoke_subprocess

GOLDEN = Path(__file__).parent / "golden"
ENV = {"REPLICATE_NOW_NS": str(NOW), "NO_COLOR": "1"}


# --- helpers (test_show.py imports these) ------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> Run:
    """``replicate ARGS`` in-process (tests/cli/invoke.py), "now" pinned, no colour."""
    return invoke(*args, env={**ENV, **(env or {})})


def run_subprocess(*args: str, cwd: Path | None = None) -> Run:
    """``python -m replicate ARGS`` in a subprocess (tests/cli/invoke.py), "now" pinned."""
    old = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        return invoke_subprocess(*args, cwd=cwd or ROOT)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def assert_golden(name: str, text: str) -> None:
    """``text`` equals tests/cli/golden/<name> (rewritten instead when UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}; generate it with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


@pytest.fixture(scope="module")
def seeded_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """The seeded project, built once per module (tests that change it use ``project``)."""
    project = tmp_path_factory.mktemp("seeded") / "project"
    return project, seed(project)


@pytest.fixture
def project(seeded_once: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> Path:
    """A private copy of the seeded project."""
    dst = tmp_path / "project"
    shutil.copytree(seeded_once[0], dst)
    return dst


def ids_of(seeded_once: tuple[Path, dict[str, list[str]]]) -> list[str]:
    return list(seeded_once[1])


def corrupt_packs(project: Path) -> None:
    """Flip bytes in the middle of every pack file."""
    packs = list((project / ".replicate" / "packs").rglob("*.pack"))
    assert packs
    for p in packs:
        data = bytearray(p.read_bytes())
        for i in range(len(data) // 3, 2 * len(data) // 3):
            data[i] ^= 0x5A
        p.chmod(0o644)
        p.write_bytes(bytes(data))
    shutil.rmtree(project / ".replicate" / "cache", ignore_errors=True)


# --- the predecessor's output, verbatim ---------------------------------------------------------

# keepsake 0.4.2's repository of shared/reference/limits.md section 5, rebuilt as summaries.
K_T = int(dt.datetime(2026, 11, 27, 4, 0, tzinfo=dt.timezone.utc).timestamp()) * SEC
K_NOW = K_T + 46_500_000_000  # "7 seconds ago" / "5 seconds ago"
K_EXPERIMENTS = [
    # id, created (s after K_T), params, best = latest checkpoint id, loss, accuracy
    ("bf20e19312e6e3f880d9c81be7e3a847fd5f6a0098294d1402cd478a3eabd2c0", 39.2, 0.01, 2,
     "13437fca941739f5931111571984086f91e7577288bf0dacfcf766ee02f8907e", 0.3333, 0.72),
    ("3e1aa61256eca170f3d10cf9f0b42751cc795f925ee26983aecb216eb4ef338a", 40.9, 0.001, 2,
     "bcff497" + "0" * 57, 0.0333, 0.72),
    ("cf14a958cf9390c98ed2566c6bf7fac822c8304c64098cbbefdf42669eb73472", 40.95, 0.01, 4,
     "d987de3" + "0" * 57, 0.3333, 0.74),
]


def keepsake_summaries() -> list[Summary]:
    out = []
    for eid, t, lr, layers, cid, loss, acc in K_EXPERIMENTS:
        created = K_T + int(t * SEC)
        cp = CheckpointSummary(bytes.fromhex(cid), 2, created + SEC // 2, "model.pth",
                               {"loss": loss, "accuracy": acc}, ("loss", "minimize"))
        out.append(Summary(
            bytes.fromhex(eid), cp.id, created, "root", "", "train.py", ".",
            {"learning_rate": lr, "num_layers": layers, "optimizer": "adam"},
            num_checkpoints=3, primary_metric=("loss", "minimize"), best=cp, latest=cp,
        ))
    return out


def test_table_is_the_predecessors_verbatim() -> None:
    items = keepsake_summaries()
    assert ls_mod.render_table(items, now=K_NOW) == (GOLDEN / "keepsake_ls.txt").read_text()


def test_table_all_is_the_predecessors_verbatim() -> None:
    items = keepsake_summaries()
    text = ls_mod.render_table(items, show_all=True, now=K_NOW)
    assert text == (GOLDEN / "keepsake_ls_all.txt").read_text()


def test_table_filtered_and_sorted_is_the_predecessors_verbatim() -> None:
    from replicate import query

    items = query.apply(keepsake_summaries(), [query.parse_filter("learning_rate = 0.01")])
    items = query.sort(items, "loss")
    text = ls_mod.render_table(items, now=K_NOW)
    assert text == (GOLDEN / "keepsake_ls_filter_sort.txt").read_text()


# --- golden outputs on the seeded repository -----------------------------------------------------


def test_ls_golden(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls")
    assert (r.code, r.stderr) == (0, "")
    assert_golden("ls.txt", r.stdout)


def test_ls_all_golden(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "--all")
    assert (r.code, r.stderr) == (0, "")
    assert_golden("ls_all.txt", r.stdout)


def test_ls_filter_sort_golden(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "--filter", "num_layers = 2", "--sort", "loss")
    assert (r.code, r.stderr) == (0, "")
    assert_golden("ls_filter_sort.txt", r.stdout)
    # the aliases of the predecessor give the same
    assert run("-D", str(seeded_once[0]), "list", "-f", "num_layers = 2", "-s", "loss").stdout == r.stdout


def test_ls_golden_through_a_subprocess(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    p = run_subprocess("ls", cwd=seeded_once[0])
    assert (p.code, p.stderr) == (0, "")
    assert p.stdout == (GOLDEN / "ls.txt").read_text()


def test_blank_line_after_each_experiment_pads_to_the_last_column(
        seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    lines = run("-D", str(seeded_once[0]), "ls").stdout.split("\n")
    start = lines[0].index("LATEST CHECKPOINT")
    blanks = [ln for ln in lines[1:-1] if not ln.strip()]
    assert len(blanks) == 3 and all(ln == " " * start for ln in blanks)
    assert lines[-1] == ""


# --- quiet, JSON, ps ------------------------------------------------------------------------------


def test_quiet_prints_full_ids_oldest_first(
        seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "-q")
    assert r.code == 0
    assert r.stdout == "".join(e + "\n" for e in ids_of(seeded_once))


@pytest.mark.parametrize("other", ["--json", "--all"])
def test_quiet_with_json_or_all_is_a_usage_error(
        seeded_once: tuple[Path, dict[str, list[str]]], other: str) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "-q", other)
    assert r.code == 2 and r.stdout == ""
    assert "-q" in r.stderr


def test_json(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "--json")
    assert r.code == 0
    data = json.loads(r.stdout)
    assert [e["id"] for e in data] == ids_of(seeded_once)
    first = data[0]
    assert {"id", "created", "params", "command", "num_checkpoints", "latest_checkpoint",
            "best_checkpoint", "user", "host", "running"} <= set(first)
    assert first["created"] == "2026-11-18T11:06:40Z"
    assert first["params"] == {"learning_rate": 0.01, "num_layers": 2, "optimizer": "adam"}
    assert (first["num_checkpoints"], first["running"], first["user"]) == (3, False, "ben")
    best = first["best_checkpoint"]
    assert best["id"] == seeded_once[1][first["id"]][2]
    assert best["primary_metric"] == {"name": "loss", "goal": "minimize"}
    assert best["metrics"] == {"loss": 0.3333, "accuracy": 0.72}
    assert {"id", "created", "step", "path", "metrics", "primary_metric"} <= set(best)
    assert first["latest_checkpoint"] == best


def test_json_writes_nan_and_infinities_as_the_predecessor(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / ".replicate")
    add_experiment(repo, params={"x": float("nan")}, metrics=[{"loss": float("inf"),
                                                               "acc": float("-inf")}])
    r = run("-D", str(tmp_path), "ls", "--json")
    assert r.code == 0
    data = json.loads(r.stdout)
    assert data[0]["params"] == {"x": "[NaN]"}
    assert data[0]["latest_checkpoint"]["metrics"] == {"loss": "[+Infinity]",
                                                        "acc": "[-Infinity]"}


def test_empty_repository(tmp_path: Path) -> None:
    Repository.init(tmp_path / ".replicate")
    r = run("-D", str(tmp_path), "ls")
    assert (r.code, r.stdout, r.stderr) == (0, "", "═══╡ No experiments found\n")
    assert run("-D", str(tmp_path), "ls", "--json").stdout == "[]\n"
    assert run("-D", str(tmp_path), "ls", "-q").stdout == ""


def test_ps_lists_only_running_experiments(project: Path) -> None:
    r = run("-D", str(project), "ps")
    assert (r.code, r.stdout, r.stderr) == (0, "", "═══╡ No experiments found\n")
    from replicate import heartbeat

    eid = run("-D", str(project), "ls", "-q").stdout.split()[1]
    heartbeat.write(project / ".replicate" / "heartbeats" / eid)
    r = run("-D", str(project), "ps", "-q")
    assert r.stdout == eid + "\n"
    # a user's status filter is replaced, not ANDed
    assert run("-D", str(project), "processes", "-q", "-f", "status = stopped").stdout == eid + "\n"
    out = run("-D", str(project), "ps").stdout
    assert out.splitlines()[1].startswith(eid[:7]) and " running " in out
    assert " stopped " in run("-D", str(project), "ls").stdout  # the others


# --- columns --------------------------------------------------------------------------------------


def add_experiment(repo: Repository, params: dict | None = None, metrics: list[dict] | None = None,
                   primary: tuple[str, str] | None = None, user: str = "ben", host: str = "",
                   created: int = T0, nonce: int = 0,
                   packages: tuple[tuple[str, str], ...] = ()) -> tuple[bytes, list[bytes]]:
    """An experiment with one checkpoint per metrics dict, written straight to the store."""
    with repo.objects.transaction() as txn:
        eid = txn.put_object(codec.Experiment(
            created_ns=created, nonce=nonce.to_bytes(16, "big"), params=params or {}, path=None,
            code=None, user=user, host=host, command="train.py", python_version="3.11.7",
            packages=packages, git=None, system={}, replicate_version="0.1.0"))
        parent = None
        cids = []
        for step, m in enumerate(metrics or []):
            parent = txn.put_object(codec.Checkpoint(
                experiment=eid, parent=parent, created_ns=created + (step + 1) * SEC, step=step,
                path=None, files=None, metrics=m, primary_metric=primary))
            cids.append(parent)
    repo.refs.update(repo.experiment_ref(eid), parent or eid, old=None)
    return eid, cids


def test_host_and_user_columns_only_when_they_differ(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / ".replicate")
    add_experiment(repo, user="ben", host="h1", nonce=1)
    add_experiment(repo, user="ben", host="h2", nonce=2, created=T0 + SEC)
    head = run("-D", str(tmp_path), "ls").stdout.splitlines()[0]
    assert head.split() == ["EXPERIMENT", "STARTED", "STATUS", "HOST", "PARAMS", "LATEST",
                            "CHECKPOINT"]
    add_experiment(repo, user="andreas", host="h2", nonce=3, created=T0 + 2 * SEC)
    head = run("-D", str(tmp_path), "ls").stdout.splitlines()[0]
    assert head.split()[3:6] == ["HOST", "USER", "PARAMS"]


def test_params_shown(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / ".replicate")
    common = {"same": 1, "obj": {"a": 1}, "lst": [1, 2]}
    add_experiment(repo, params={**common, "lr": 0.1, "n": 1}, nonce=1)
    add_experiment(repo, params={**common, "lr": 0.2, "n": 1.0, "extra": "x" * 30}, nonce=2,
                   created=T0 + SEC)
    out = run("-D", str(tmp_path), "ls").stdout
    assert "lr=0.1" in out and "lr=0.2" in out
    assert "extra=xxxxxxxxxxxxxxxxx..." in out  # strings truncated to 20 characters
    assert "same=" not in out and "n=" not in out  # equal values (1 == 1.0) are not shown
    assert "obj=" not in out and "lst=" not in out
    out = run("-D", str(tmp_path), "ls", "--all").stdout
    assert "same=1" in out and "n=1" in out and "obj=" not in out and "lst=" not in out


def test_best_checkpoint_column_only_with_a_primary_metric(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / ".replicate")
    _, cids = add_experiment(repo, metrics=[{"loss": 1.0}, {"loss": 2.0}])
    out = run("-D", str(tmp_path), "ls").stdout
    assert "BEST CHECKPOINT" not in out
    assert f"{cids[1].hex()[:7]} (step 1)" in out and "loss=" not in out
    assert "loss=2" in run("-D", str(tmp_path), "ls", "--all").stdout
    _, cids = add_experiment(repo, metrics=[{"loss": 1.0}, {"loss": 2.0}], nonce=1,
                             primary=("loss", "minimize"), created=T0 + SEC)
    lines = run("-D", str(tmp_path), "ls").stdout.splitlines()
    assert "BEST CHECKPOINT" in lines[0]
    # the other experiment's latest checkpoint shows the primary metric too
    assert lines[2].split() == ["loss=2"]
    assert f"{cids[0].hex()[:7]} (step 0)  {cids[1].hex()[:7]} (step 1)" in lines[4]
    assert lines[5].split() == ["loss=1", "loss=2"]


def test_time_ago_comes_from_now(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    later = str(T0 + 80 * 3600 * SEC)
    out = run("-D", str(seeded_once[0]), "ls", env={"REPLICATE_NOW_NS": later}).stdout
    assert out.splitlines()[1].split()[1] == "2026-11-18"


def test_colour_only_on_a_terminal_and_never_with_no_color(
        seeded_once: tuple[Path, dict[str, list[str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert "\x1b[" not in run("-D", str(seeded_once[0]), "ls").stdout
    from replicate.cli import output

    monkeypatch.setattr(output, "use_colour", lambda stream=None: True)  # a terminal
    r = CliRunner().invoke(cli, ["-D", str(seeded_once[0]), "ls"], env=ENV, color=True)
    assert r.exit_code == 0
    assert r.stdout.startswith("\x1b[1mEXPERIMENT") and r.stdout.count("\x1b[") == 2
    monkeypatch.undo()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not output.use_colour()


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["loss", "loss == 1", "loss ~ 2", "= 3", "loss <"])
def test_malformed_filter_is_a_usage_error(
        seeded_once: tuple[Path, dict[str, list[str]]], expr: str) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "--filter", expr)
    assert r.code == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert "NAME OP VALUE" in r.stderr and "Traceback" not in r.stderr


def test_comparing_different_types_is_a_usage_error(
        seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "--filter", "optimizer > 3")
    assert r.code == 2 and r.stdout == ""
    assert "different types: string and int" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run("-D", str(seeded_once[0]), "ps", "--filter", "optimizer > 3")
    assert r.code == 0  # nothing is running: nothing to compare


@pytest.mark.parametrize(("expr", "n"), [
    ("learning_rate = 0.01", 2), ("num_layers >= 3", 1), ("loss < 0.1", 1), ("step = 2", 3),
    ("user != ben", 0), ("optimizer = adam", 3), ("missing = None", 3), ("loss = None", 0),
    ("status = stopped", 3), ("created > 2026-01-01", 3),
])
def test_filters(seeded_once: tuple[Path, dict[str, list[str]]], expr: str, n: int) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "-q", "-f", expr)
    assert r.code == 0 and len(r.stdout.split()) == n


def test_filters_and_together(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    r = run("-D", str(seeded_once[0]), "ls", "-q", "-f", "learning_rate = 0.01",
            "-f", "num_layers = 4")
    assert r.stdout.split() == [ids_of(seeded_once)[2]]


def test_sort(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    ids = ids_of(seeded_once)
    q = lambda *a: run("-D", str(seeded_once[0]), "ls", "-q", *a).stdout.split()  # noqa: E731
    assert q("--sort", "created-desc") == ids[::-1]
    assert q("--sort", "loss") == [ids[1], ids[0], ids[2]]
    assert q("--sort", "num_layers-desc") == [ids[2], ids[0], ids[1]]


@pytest.mark.parametrize("where", ["after", "before", "url"])
def test_repository_option(seeded_once: tuple[Path, dict[str, list[str]]], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.chdir(tmp_path)  # no project here
    repo = str(seeded_once[0] / ".replicate")
    args = {"after": ["ls", "-q", "-R", repo], "before": ["-R", repo, "ls", "-q"],
            "url": ["ls", "-q", "--repository", "file://" + repo]}[where]
    r = run(*args)
    assert (r.code, r.stdout.split()) == (0, ids_of(seeded_once))


def test_no_repository_is_one_line(tmp_path: Path) -> None:
    r = run("-D", str(tmp_path), "ls")
    assert r.code == 1 and r.stdout == "" and len(r.stderr.splitlines()) == 1


def test_corrupt_repository_is_one_line_and_v_shows_the_traceback(project: Path) -> None:
    corrupt_packs(project)
    r = run("-D", str(project), "ls")
    assert r.code == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ")
    r = run("-v", "-D", str(project), "ls")
    assert r.code == 1 and "Traceback" in r.stderr


def test_errors_through_a_subprocess(seeded_once: tuple[Path, dict[str, list[str]]]) -> None:
    p = run_subprocess("-D", str(seeded_once[0]), "ls", "--filter", "optimizer > 3")
    assert p.code == 2 and p.stdout == "" and len(p.stderr.splitlines()) == 1
    p = run_subprocess("-D", str(seeded_once[0]), "ls", "-q", "--json")
    assert p.code == 2
    p = run_subprocess("-D", str(seeded_once[0]), "ls", "--json")
    assert p.code == 0 and len(json.loads(p.stdout)) == 3


# --- the summary cache ----------------------------------------------------------------------------


def _trust_cache(project: Path) -> None:
    """Age the refs directory so the cache written by the next ls is trusted at once."""
    d = project / ".replicate" / "refs" / "experiments"
    old = time.time() - 60
    os.utime(d, (old, old))


def test_cache_skips_reading_refs_when_nothing_changed(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from replicate.refs.store import RefStore

    _trust_cache(project)
    first = run("-D", str(project), "ls").stdout
    calls = []
    real = RefStore.list
    monkeypatch.setattr(RefStore, "list", lambda self, kind="experiments": calls.append(kind)
                        or real(self, kind))
    assert run("-D", str(project), "ls").stdout == first
    assert calls == []


def test_cache_sees_new_checkpoints_and_experiments(project: Path) -> None:
    _trust_cache(project)
    run("-D", str(project), "ls")
    repo = Repository.open(project / ".replicate")
    eid = bytes.fromhex(run("-D", str(project), "ls", "-q").stdout.split()[0])
    head = repo.refs.read(repo.experiment_ref(eid))
    with repo.objects.transaction() as txn:
        cid = txn.put_object(codec.Checkpoint(
            experiment=eid, parent=head, created_ns=T0 + 10 * SEC, step=7, path=None,
            files=None, metrics={"loss": 0.001, "accuracy": 0.9},
            primary_metric=("loss", "minimize")))
    repo.refs.update(repo.experiment_ref(eid), cid, old=head)
    out = run("-D", str(project), "ls").stdout
    assert f"{cid.hex()[:7]} (step 7)" in out and "loss=0.001" in out
    new, _ = add_experiment(repo, nonce=9, created=T0 + 999 * SEC)
    assert run("-D", str(project), "ls", "-q").stdout.split()[-1] == new.hex()
    repo.refs.delete(repo.experiment_ref(new))
    assert new.hex() not in run("-D", str(project), "ls", "-q").stdout
    repo.close()


def test_unreadable_cache_is_rebuilt(project: Path) -> None:
    first = run("-D", str(project), "ls").stdout
    cache = project / ".replicate" / "cache" / "summaries.msgpack"
    cache.write_bytes(b"\x93garbage")
    assert run("-D", str(project), "ls").stdout == first


# --- start-up time --------------------------------------------------------------------------------

HELP_BUDGET_S = 0.300


def _help_commands() -> list[list[str]]:
    import importlib.util

    out = [["--help"]]
    for name, (module, _fn, _help) in sorted(COMMANDS.items()):
        if importlib.util.find_spec(module) is not None:
            out.append([name, "--help"])
    return out


@pytest.mark.parametrize("args", _help_commands(), ids=lambda a: " ".join(a))
def test_help_starts_quickly(args: list[str]) -> None:
    """A budget check: best of 3 wall times of a fresh interpreter."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        p = run_subprocess(*args)
        times.append(time.perf_counter() - t)
        assert p.code == 0, p.stderr
        assert "Usage:" in p.stdout
    assert min(times) < HELP_BUDGET_S, f"replicate {' '.join(args)}: best of 3 {min(times):.3f} s"
