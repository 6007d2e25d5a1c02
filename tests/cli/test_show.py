"""``replicate show`` and ``replicate log``: the predecessor's views byte for byte, golden outputs
on the seeded repository, our additions (Git, System, removed files, collapsed packages), JSON
and errors. Helpers and fixtures come from test_ls.py; golden files from tests/cli/golden/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replicate.cli import show as show_mod
from replicate.history import CheckpointRecord, ExperimentRecord
from replicate.objects import codec
from replicate.repository import Repository
from tests.cli import test_ls
from tests.cli.conftest import SEC
from tests.cli.test_ls import (
    GOLDEN,
    K_T,
    add_experiment,
    assert_golden,
    corrupt_packs,
    run,
    run_subprocess,
)

# fixtures shared with test_ls.py (the seeded project built once per module, a private copy)
seeded_once = test_ls.seeded_once
project = test_ls.project

Seeded = tuple[Path, dict[str, list[str]]]


def first(seeded: Seeded) -> tuple[str, list[str]]:
    eid = next(iter(seeded[1]))
    return eid, seeded[1][eid]


# --- the predecessor's output, verbatim ---------------------------------------------------------

K_SHOW_NOW = K_T + 46_950_000_000  # every checkpoint "7 seconds ago"


def keepsake_shown(checkpoint: int | None = None) -> show_mod.Shown:
    """Experiment bf20e19 of shared/reference/limits.md section 5, as records."""
    eid = bytes.fromhex("bf20e19312e6e3f880d9c81be7e3a847fd5f6a0098294d1402cd478a3eabd2c0")
    created = K_T + 39_200_000_000
    exp = codec.Experiment(
        created_ns=created, nonce=b"\0" * 16,
        params={"learning_rate": 0.01, "num_layers": 2, "optimizer": "adam"}, path=".",
        code=None, user="root", host="", command="train.py 0.01 2", python_version="3.11.7",
        packages=(("keepsake", "0.4.2"),), git=None, system={}, replicate_version="0.4.2")
    cids = ["deae543" + "0" * 57, "8c15bb7" + "0" * 57,
            "13437fca941739f5931111571984086f91e7577288bf0dacfcf766ee02f8907e"]
    cps = []
    for step, (cid, loss, acc) in enumerate(zip(cids, [1.0, 0.5, 0.3333], [0.52, 0.62, 0.72])):
        cps.append(CheckpointRecord(bytes.fromhex(cid), codec.Checkpoint(
            experiment=eid, parent=None, created_ns=created + (step + 1) * SEC // 5, step=step,
            path="model.pth", files=None, metrics={"loss": loss, "accuracy": acc},
            primary_metric=("loss", "minimize"))))
    rec = ExperimentRecord(eid, exp, cps[-1].id, cps)
    cp = cps[checkpoint] if checkpoint is not None else None
    return show_mod.Shown(rec, cp, show_mod.best_checkpoint(rec), running=False)


def keepsake_text(name: str) -> str:
    return (GOLDEN / name).read_text().replace("keepsake show", "replicate show")


def test_experiment_view_is_the_predecessors_verbatim() -> None:
    text = show_mod.render_experiment(keepsake_shown(), now=K_SHOW_NOW)
    assert text == keepsake_text("keepsake_show_experiment.txt")


def test_checkpoint_view_is_the_predecessors_verbatim() -> None:
    text = show_mod.render_checkpoint(keepsake_shown(checkpoint=2))
    assert text == keepsake_text("keepsake_show_checkpoint.txt")


# --- golden outputs on the seeded repository -----------------------------------------------------


def test_show_experiment_golden(seeded_once: Seeded) -> None:
    eid, _ = first(seeded_once)
    r = run("-D", str(seeded_once[0]), "show", eid[:7])
    assert (r.code, r.stderr) == (0, "")
    assert_golden("show_experiment.txt", r.stdout)
    assert run("-D", str(seeded_once[0]), "show", eid[:7], "--all").stdout == r.stdout  # 3 packages


def test_show_checkpoint_golden(seeded_once: Seeded) -> None:
    _, cids = first(seeded_once)
    r = run("-D", str(seeded_once[0]), "show", cids[1][:5])
    assert (r.code, r.stderr) == (0, "")
    assert_golden("show_checkpoint.txt", r.stdout)


def test_show_and_log_read_another_repository(seeded_once: Seeded, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no project here
    eid, cids = first(seeded_once)
    repo = str(seeded_once[0] / ".replicate")
    r = run("show", eid[:7], "-R", repo)
    assert r.code == 0 and r.stdout == (GOLDEN / "show_experiment.txt").read_text()
    assert run("-R", repo, "log", "-q", eid).stdout.split() == cids[::-1]


def test_show_golden_through_a_subprocess(seeded_once: Seeded) -> None:
    eid, _ = first(seeded_once)
    p = run_subprocess("show", eid, cwd=seeded_once[0])
    assert (p.code, p.stderr) == (0, "")
    assert p.stdout == (GOLDEN / "show_experiment.txt").read_text()


@pytest.fixture(scope="module")
def many_packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project with one experiment that recorded 40 packages, two of them interesting."""
    project = tmp_path_factory.mktemp("packages")
    repo = Repository.init(project / ".replicate")
    pkgs = sorted([(f"package-{i:02d}", f"1.{i}") for i in range(38)]
                  + [("numpy", "2.4.6"), ("torch", "2.13.0")])
    eid, _ = add_experiment(repo, params={"lr": 0.1}, packages=tuple(pkgs),
                            metrics=[{"loss": 0.5}], primary=("loss", "minimize"))
    repo.close()
    return project, eid.hex()


def test_show_collapses_packages(many_packages: tuple[Path, str]) -> None:
    project, eid = many_packages
    r = run("-D", str(project), "show", eid[:7])
    assert r.code == 0
    assert_golden("show_experiment_packages.txt", r.stdout)
    lines = r.stdout.splitlines()
    i = lines.index("Python packages  ")
    assert lines[i + 1: i + 4] == ["numpy:                   2.4.6",
                                   "torch:                   2.13.0",
                                   "... and 38 more. Use --all to view."]
    assert lines[i + 4] == " " * 25  # alignment goes on after the "... and N more" line


def test_show_all_golden(many_packages: tuple[Path, str]) -> None:
    project, eid = many_packages
    r = run("-D", str(project), "show", eid[:7], "--all")
    assert r.code == 0
    assert_golden("show_experiment_all.txt", r.stdout)
    assert "package-37:              1.37" in r.stdout and "more. Use --all" not in r.stdout


def test_packages_without_interesting_ones_show_the_first_five() -> None:
    shown, hidden = show_mod._packages([(f"p{i}", "1") for i in range(9)], show_all=False)
    assert [p for p, _ in shown] == ["p0", "p1", "p2", "p3", "p4"] and hidden == 4
    shown, hidden = show_mod._packages([("scikit-learn", "1"), *[(f"p{i}", "1") for i in range(9)]],
                                       show_all=False)
    assert shown == [("scikit-learn", "1")] and hidden == 9


def test_log_golden(seeded_once: Seeded) -> None:
    eid, cids = first(seeded_once)
    r = run("-D", str(seeded_once[0]), "log", eid[:7])
    assert (r.code, r.stderr) == (0, "")
    assert_golden("log.txt", r.stdout)
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == [c[:7] for c in cids[::-1]]
    # a checkpoint's ID means its experiment
    assert run("-D", str(seeded_once[0]), "log", cids[0][:8]).stdout == r.stdout


def test_log_quiet_and_json(seeded_once: Seeded) -> None:
    eid, cids = first(seeded_once)
    r = run("-D", str(seeded_once[0]), "log", eid, "-q")
    assert (r.code, r.stdout) == (0, "".join(c + "\n" for c in cids[::-1]))
    r = run("-D", str(seeded_once[0]), "log", eid, "--json")
    data = json.loads(r.stdout)
    assert [c["id"] for c in data] == cids[::-1]
    assert data[0]["step"] == 2 and data[0]["metrics"] == {"loss": 0.3333, "accuracy": 0.72}
    assert data[0]["created"].endswith("Z") and data[0]["files_removed"] is False
    assert run("-D", str(seeded_once[0]), "log", eid, "-q", "--json").code == 2


def test_log_without_checkpoints(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / ".replicate")
    eid, _ = add_experiment(repo)
    r = run("-D", str(tmp_path), "log", eid.hex()[:7])
    assert (r.code, r.stdout) == (0, "")
    assert "no checkpoints" in r.stderr
    assert run("-D", str(tmp_path), "log", eid.hex(), "--json").stdout == "[]\n"
    r = run("-D", str(tmp_path), "show", eid.hex())
    assert "Checkpoints\nID  STEP  CREATED\n\n" in r.stdout and "Params           \n(none)" in r.stdout


# --- JSON -----------------------------------------------------------------------------------------


def test_show_experiment_json(seeded_once: Seeded) -> None:
    eid, cids = first(seeded_once)
    r = run("-D", str(seeded_once[0]), "show", eid[:7], "--json")
    assert r.code == 0
    data = json.loads(r.stdout)
    assert data["id"] == eid and data["created"] == "2026-11-18T11:06:40Z"
    assert [c["id"] for c in data["checkpoints"]] == cids
    assert data["best_checkpoint"]["id"] == cids[2] == data["latest_checkpoint"]["id"]
    assert data["git"] == {"commit": "a" * 40, "branch": "main", "dirty": False}
    assert data["python_packages"] == {"numpy": "2.4.6", "replicate": "0.1.0", "torch": "2.13.0"}
    assert (data["num_checkpoints"], data["running"], data["command"]) == (3, False,
                                                                          "train.py 0.01 2")


def test_show_checkpoint_json(seeded_once: Seeded) -> None:
    eid, cids = first(seeded_once)
    data = json.loads(run("-D", str(seeded_once[0]), "show", cids[0], "--json").stdout)
    assert data == {
        "id": cids[0], "created": "2026-11-18T11:06:41Z", "step": 0, "path": "model.pth",
        "metrics": {"loss": 1.0, "accuracy": 0.52},
        "primary_metric": {"name": "loss", "goal": "minimize"}, "files_removed": False,
        "experiment": eid,
    }


def test_show_json_nan(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / ".replicate")
    eid, _ = add_experiment(repo, params={"x": float("nan")}, metrics=[{"m": float("inf")}])
    data = json.loads(run("-D", str(tmp_path), "show", eid.hex(), "--json").stdout)
    assert data["params"] == {"x": "[NaN]"}
    assert data["checkpoints"][0]["metrics"] == {"m": "[+Infinity]"}


# --- our additions ---------------------------------------------------------------------------------


def test_files_removed_marker(project: Path) -> None:
    repo = Repository.open(project / ".replicate")
    eid = run("-D", str(project), "ls", "-q").stdout.split()[0]
    cid = repo.refs.read(repo.experiment_ref(bytes.fromhex(eid)))
    repo.refs.update(f"removed/{cid.hex()}", cid, old=None)
    out = run("-D", str(project), "show", eid).stdout
    row = next(ln for ln in out.splitlines() if ln.startswith(cid.hex()[:7]))
    assert row.endswith("0.3333 (best)  (files removed)")
    out = run("-D", str(project), "show", cid.hex()).stdout
    assert "Path:                    model.pth (files removed)\n" in out
    data = json.loads(run("-D", str(project), "show", cid.hex(), "--json").stdout)
    assert data["files_removed"] is True
    assert "(files removed)" in run("-D", str(project), "log", eid).stdout


def test_git_and_system_lines() -> None:
    assert show_mod._git({"commit": "c" * 40, "branch": None, "dirty": True}) == (
        "c" * 40 + " (detached HEAD, dirty)")
    assert show_mod._git({"commit": None, "branch": "main", "dirty": False}) == (
        "(no commit yet) (branch main)")
    assert show_mod._git(None) is None
    system = {"os": "Linux-6.1", "cpu": "AMD EPYC", "cpu_count": 8, "cuda": "12.4",
              "gpus": [{"name": "A100"}, {"name": "A100"}, {"name": "T4"}]}
    assert show_mod._system(system) == [("OS:", "Linux-6.1"), ("CPU:", "AMD EPYC (8 CPUs)"),
                                        ("GPUs:", "A100 x2, T4"), ("CUDA:", "12.4")]
    assert show_mod._system({"gpus": [], "cuda": None}) == []


def test_full_values_as_the_predecessor() -> None:
    from replicate.cli.ls import full_value, short_value

    cases = [(0.01, "0.01"), (1.0, "1"), (1e-7, "1e-7"), (1.5e-10, "1.5e-10"),
             (1e16, "10000000000000000"), (1e21, "1e+21"), (1e100, "1e+100"),
             (123456.5, "123456.5"), (-2.5, "-2.5"), (True, "true"), (None, "null"), (3, "3"),
             ("a b", "a b"), (float("nan"), "NaN"), (float("-inf"), "-Inf")]
    for v, s in cases:
        assert full_value(v) == s, v
    assert full_value({"b": [1, 2], "a": 0.5}) == '{"a":0.5,"b":[1,2]}'
    assert short_value(0.333333333) == "0.33333" and short_value(123456.0) == "123456"
    assert short_value(1234567.891, 10) == "1.2346e+06" and short_value("x" * 25) == "x" * 17 + "..."


def test_colour_styles_titles_but_keeps_the_layout(
        seeded_once: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from click.testing import CliRunner

    from replicate.cli import output
    from replicate.cli.app import cli

    eid, _ = first(seeded_once)
    plain = run("-D", str(seeded_once[0]), "show", eid).stdout
    monkeypatch.setattr(output, "use_colour", lambda stream=None: True)
    r = CliRunner().invoke(cli, ["-D", str(seeded_once[0]), "show", eid], env=test_ls.ENV,
                           color=True)
    assert "\x1b[1mParams\x1b[0m" in r.stdout
    assert re.sub(r"\x1b\[[0-9;]*m", "", r.stdout) == plain


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "log"])
def test_unknown_id_is_one_line_exit_1(seeded_once: Seeded, command: str) -> None:
    r = run("-D", str(seeded_once[0]), command, "ffffff")
    assert (r.code, r.stdout) == (1, "") and len(r.stderr.splitlines()) == 1
    assert "ffffff" in r.stderr and "Traceback" not in r.stderr
    r = run("-D", str(seeded_once[0]), command, "not-hex")
    assert r.code == 1 and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["show", "log"])
def test_ambiguous_prefix_is_exit_2(seeded_once: Seeded, command: str) -> None:
    # experiment 4a9e564... and checkpoint 44598bf... both start with "4"
    r = run("-D", str(seeded_once[0]), command, "4")
    assert (r.code, r.stdout) == (2, "") and "ambiguous" in r.stderr and len(r.stderr.splitlines()) == 1


def test_missing_argument_is_a_usage_error(seeded_once: Seeded) -> None:
    r = run("-D", str(seeded_once[0]), "show")
    assert r.code == 2 and "Missing argument" in r.stderr


def test_corrupt_repository(project: Path) -> None:
    eid = run("-D", str(project), "ls", "-q").stdout.split()[0]
    corrupt_packs(project)
    r = run("-D", str(project), "show", eid)
    assert (r.code, r.stdout) == (1, "") and len(r.stderr.splitlines()) == 1
    assert "corrupt" in r.stderr
    r = run("-v", "-D", str(project), "show", eid)
    assert r.code == 1 and "Traceback" in r.stderr


def test_errors_through_a_subprocess(seeded_once: Seeded) -> None:
    p = run_subprocess("-D", str(seeded_once[0]), "show", "ffffff")
    assert p.code == 1 and p.stdout == "" and len(p.stderr.splitlines()) == 1
    p = run_subprocess("-D", str(seeded_once[0]), "log", "4")
    assert p.code == 2 and len(p.stderr.splitlines()) == 1
    eid, _ = first(seeded_once)
    p = run_subprocess("-D", str(seeded_once[0]), "show", "--json", eid)
    assert p.code == 0 and json.loads(p.stdout)["id"] == eid


def test_tabwriter_blocks_as_go() -> None:
    row, raw = show_mod.row, show_mod.Raw
    # a line without a tab ends the column block; Raw lines do not
    assert show_mod.tabwrite([row("a", "1"), row("bbbb", "2"), row("no tabs"), row("c", "3")]) == (
        "a     1\nbbbb  2\nno tabs\nc  3\n")
    assert show_mod.tabwrite([row("a", "1"), raw("--------"), row("bbbb", "2")]) == (
        "a     1\n--------\nbbbb  2\n")
    # nested columns: the second column's block is the lines that have a third cell
    assert show_mod.tabwrite([row("a", "b", "c"), row("aa", "bbb"), row("a", "b", "c")]) == (
        "a   b  c\naa  bbb\na   b  c\n")
    assert show_mod.tabwrite([row("a", "1")], minwidth=8) == "a       1\n"
    # a styled cell counts 8 more than it shows
    assert show_mod.tabwrite([row(show_mod.styled("T", bold=True), ""), row("k:", "v")]) == (
        "T  \nk:         v\n")
