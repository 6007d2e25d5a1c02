"""``replicate diff``: the predecessor's table (golden files), --json, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from replicate.build import snapshot
from replicate.objects import codec
from replicate.repository import Repository

from .conftest import SEC, T0
from .invoke import flip_byte_in_chunk, invoke, one_line_error, run_subprocess

GOLDEN = Path(__file__).parent / "golden"
Seeded = tuple[Path, dict[str, list[str]]]


def check_golden(name: str, text: str) -> None:
    """Compare with ``golden/<name>``; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


def ids(seeded: Seeded) -> tuple[list[str], list[list[str]]]:
    project, exps = seeded
    return list(exps), list(exps.values())


def without_sections(text: str, names: tuple[str, ...]) -> str:
    """The table with whole sections (heading to blank line) left out."""
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip() in names:
            skip = True
        if not skip:
            out.append(line)
        if skip and line.strip() == "":
            skip = False
    return "".join(out)


def add_experiment(project: Path, *, nonce: int, checkpoints: list[dict], primary: bool = True,
                   created: int = T0 + 3600 * SEC, step_ns: int = SEC, **fields) -> tuple[str, list[str]]:
    """Add an experiment to the seeded repository (fixed IDs); returns (id, checkpoint ids)."""
    repo = Repository.open(project / ".replicate")
    exp_fields = dict(
        created_ns=created, nonce=bytes([nonce]) * 16, params={"learning_rate": 0.01},
        path="train.py", code=None, user="ben", host="", command="train.py",
        python_version="3.11.7", packages=(("numpy", "2.4.6"),), git=None,
        system={"os": "Linux", "cpu_count": 2}, replicate_version="0.1.0",
    )
    exp_fields.update(fields)
    with repo.objects.transaction() as txn:
        exp_fields["code"], _ = snapshot(txn, project, "train.py")
        eid = txn.put_object(codec.Experiment(**exp_fields))
    repo.refs.update(repo.experiment_ref(eid), eid, old=None, message="init")
    parent, cids = None, []
    for step, metrics in enumerate(checkpoints):
        with repo.objects.transaction() as txn:
            cid = txn.put_object(codec.Checkpoint(
                experiment=eid, parent=parent, created_ns=created + (step + 1) * step_ns,
                step=step, path=None, files=None, metrics=metrics,
                primary_metric=("loss", "minimize") if primary else None,
            ))
        repo.refs.update(repo.experiment_ref(eid), cid, old=parent or eid, message="ckpt")
        parent = cid
        cids.append(cid.hex())
    repo.close()
    return eid.hex(), cids


# --- the table --------------------------------------------------------------------------------


def test_two_experiments_golden(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, e1, _e2), cps = ids(seeded)
    r = invoke("-D", str(project), "diff", e0[:7], e1[:7])
    assert r.code == 0, r
    assert r.stderr == (
        f'═══╡ "{e0[:7]}" matches an experiment, picking the best checkpoint\n'
        f'═══╡ "{e1[:7]}" matches an experiment, picking the best checkpoint\n'
    )
    check_golden("diff_experiments.txt", r.stdout)
    assert f"ID:                       {cps[0][2][:7]}" in r.stdout  # best = lowest loss = last


def test_layout_is_the_predecessors_verbatim(seeded: Seeded) -> None:
    """Without the new sections, the output is keepsake 0.4.2's byte for byte (limits.md §5):
    the seeded repository mirrors its example, so only IDs and dates differ."""
    project, _ = seeded
    (e0, e1, _e2), cps = ids(seeded)
    r = invoke("-D", str(project), "diff", e0, e1)
    ours = without_sections(r.stdout, ("System", "Files"))
    theirs = (GOLDEN / "diff_predecessor_experiments.txt").read_text()
    for old, new in [
        ("bf20e19", e0[:7]), ("3e1aa61", e1[:7]), ("13437fc", cps[0][2][:7]),
        ("bcff497", cps[1][2][:7]),
        ("Fri, 27 Nov 2026 04:00:39 UTC  Fri, 27 Nov 2026 04:00:40 UTC",
         "Wed, 18 Nov 2026 11:06:40 UTC  Wed, 18 Nov 2026 11:07:40 UTC"),
    ]:
        theirs = theirs.replace(old, new, 1)
    theirs = theirs.replace(
        "Fri, 27 Nov 2026 04:00:39 UTC  Fri, 27 Nov 2026 04:00:40 UTC",
        "Wed, 18 Nov 2026 11:06:43 UTC  Wed, 18 Nov 2026 11:07:43 UTC",
    )
    assert ours == theirs


def test_same_experiment_is_the_predecessors_verbatim(seeded: Seeded) -> None:
    """Two checkpoints of one experiment: the Experiment section shows only the ID row."""
    project, _ = seeded
    eid, cids = add_experiment(
        project, nonce=9, step_ns=1000,  # all checkpoints in the same second, as there
        checkpoints=[{"loss": 1.0, "accuracy": 0.52}, {"loss": 0.5, "accuracy": 0.62},
                     {"loss": 0.3333, "accuracy": 0.72}],
    )
    r = invoke("-D", str(project), "diff", cids[0], cids[2])
    assert r.code == 0 and r.stderr == "", r
    theirs = (GOLDEN / "diff_predecessor_same_experiment.txt").read_text()
    theirs = theirs.replace("bf20e19", eid[:7]).replace("deae543", cids[0][:7])
    theirs = theirs.replace("13437fc", cids[2][:7])
    assert without_sections(r.stdout, ("System", "Files")) == theirs


def test_same_experiment_golden(seeded: Seeded) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    r = invoke("-D", str(project), "diff", cps[0][0], cps[0][2])
    assert r.code == 0 and r.stderr == "", r
    check_golden("diff_same_experiment.txt", r.stdout)
    e0 = ids(seeded)[0][0]
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["ID:", e0[:7], e0[:7]]
    assert lines[2].strip() == ""  # no "(no difference)" under the Experiment ID row


def test_third_experiment_golden(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, e2), _ = ids(seeded)
    r = invoke("-D", str(project), "diff", e0[:3], e2[:3])
    assert r.code == 0, r
    check_golden("diff_e0_e2.txt", r.stdout)


def test_new_sections(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, _e2), _ = ids(seeded)
    other, _ = add_experiment(
        project, nonce=7, checkpoints=[{"loss": 0.2}],
        system={"os": "Linux", "cpu_count": 8, "gpus": ["A100"]},
        packages=(("numpy", "2.5.0"), ("pandas", "3.0")), host="gpu-1",
        git={"commit": "b" * 40, "branch": "main", "dirty": True},
    )
    r = invoke("-D", str(project), "diff", e0, other)
    assert r.code == 0, r
    out = r.stdout
    sections = [ln.rstrip() for ln in out.splitlines() if ln and not ln[0].isspace()
                and ":" not in ln and not ln.startswith("(")]
    assert sections == ["Experiment", "Params", "Python Packages", "System", "Checkpoint",
                        "Metrics", "Files"]
    assert "Git commit:                aaaaaaa" not in out  # values in full up to 50 chars
    assert "Git commit:" in out and "Git dirty:" in out and "Host:" in out
    assert "(not set)                      " in out  # a package only B has
    assert "pandas:" in out and "gpus:" in out and 'cpu_count:' in out
    # the 50-character cut (a git commit is 40 hex chars: in full)
    assert "a" * 40 in out and "b" * 40 in out
    # files: B (no checkpoint files) lacks model.pth; code is the same train.py
    assert "model.pth:" in out and "(removed)" in out


def test_truncates_values_at_50(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, _e2), _ = ids(seeded)
    other, _ = add_experiment(project, nonce=8, checkpoints=[{"loss": 0.2}],
                              command="train.py " + "x" * 100)
    r = invoke("-D", str(project), "diff", e0, other)
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("Command:")]
    assert line.endswith("  train.py " + "x" * 38 + "...")
    assert len("train.py " + "x" * 38 + "...") == 50


# --- --json -----------------------------------------------------------------------------------


def test_json(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, e1, _e2), cps = ids(seeded)
    r = invoke("-D", str(project), "diff", e0, e1, "--json")
    assert r.code == 0, r
    d = json.loads(r.stdout)
    assert d["a"] == {"experiment": e0, "checkpoint": cps[0][2]}
    assert d["b"] == {"experiment": e1, "checkpoint": cps[1][2]}
    assert d["experiment"]["a"] == e0 and d["experiment"]["b"] == e1
    assert d["experiment"]["differences"]["command"] == {"a": "train.py 0.01 2",
                                                        "b": "train.py 0.001 2"}
    assert d["experiment"]["differences"]["created"] == {"a": "2026-11-18T11:06:40Z",
                                                        "b": "2026-11-18T11:07:40Z"}
    assert d["params"] == {"learning_rate": {"a": 0.01, "b": 0.001}}
    assert d["python_packages"] == {} and d["system"] == {}
    assert d["checkpoint"]["a"] == cps[0][2]
    assert set(d["checkpoint"]["differences"]) == {"created"}
    assert d["metrics"] == {"loss": {"a": 0.3333, "b": 0.0333}}
    [f] = d["files"]
    # model.pth: bytes([0, 2]) * 1000 vs bytes([1, 2]) * 1000: from byte 0 to byte 1998
    assert f == {"path": "model.pth", "status": "changed", "size_a": 2000, "size_b": 2000,
                 "changed_bytes": 1999, "exact": True, "kind_a": "file", "kind_b": "file",
                 "mode_a": 0o644, "mode_b": 0o644}
    assert d["changed_bytes"] == 1999
    assert d["files_removed"] == {"a": False, "b": False}
    check_golden("diff_json.json", r.stdout)


def test_json_nan_and_missing(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, _e2), _ = ids(seeded)
    other, _ = add_experiment(project, nonce=10, checkpoints=[{"loss": float("nan"), "x": 1}],
                              primary=False)
    r = invoke("-D", str(project), "diff", e0, other, "--json")
    assert r.code == 0, r
    d = json.loads(r.stdout)  # valid JSON: no NaN token
    assert d["metrics"]["loss"] == {"a": 0.3333, "b": "[NaN]"}
    assert d["metrics"]["x"] == {"b": 1}  # not set on A: no "a" key
    assert d["metrics"]["accuracy"] == {"a": 0.72}
    assert f'"{other}" is an experiment, picking the latest checkpoint' in r.stderr


# --- picking ----------------------------------------------------------------------------------


def test_experiment_without_primary_metric_picks_latest(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, _e2), _ = ids(seeded)
    other, cids = add_experiment(project, nonce=11, primary=False,
                                 checkpoints=[{"loss": 0.1}, {"loss": 0.9}])
    r = invoke("-D", str(project), "diff", e0, other[:10])
    assert r.code == 0, r
    assert r.stderr.splitlines()[1] == (
        f'═══╡ "{other[:10]}" is an experiment, picking the latest checkpoint'
    )
    assert cids[1][:7] in r.stdout


def test_experiment_without_checkpoints_is_an_error(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, _e2), _ = ids(seeded)
    other, _ = add_experiment(project, nonce=12, checkpoints=[])
    r = invoke("-D", str(project), "diff", e0, other)
    assert r.code == 1
    line = one_line_error(r)
    assert "does not have any checkpoints" in line and other[:7] in line


# --- bad input --------------------------------------------------------------------------------


def test_unknown_id(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _e1, _e2), _ = ids(seeded)
    r = invoke("-D", str(project), "diff", e0, "0000")
    assert r.code == 1
    assert "no experiment or checkpoint matches '0000'" in one_line_error(r)
    r = invoke("-D", str(project), "diff", e0, "xyz")
    assert r.code == 1
    assert "not an ID" in one_line_error(r)


def test_ambiguous_prefix(seeded: Seeded) -> None:
    project, exps = seeded
    (e0, e1, _e2), cps = ids(seeded)
    first = e1[0]
    assert sum(i.startswith(first) for i in [*exps, *sum(cps, [])]) > 1  # seeded IDs share it
    r = invoke("-D", str(project), "diff", e0, first)
    assert r.code == 2
    assert "ambiguous" in one_line_error(r)


def test_usage_errors(seeded: Seeded) -> None:
    project, _ = seeded
    r = invoke("-D", str(project), "diff", "abc")
    assert r.code == 2 and "Traceback" not in r.stderr


def test_no_repository(tmp_path: Path) -> None:
    r = invoke("-D", str(tmp_path), "diff", "a", "b")
    assert r.code == 1
    assert "no replicate repository" in one_line_error(r)


def test_corrupt_chunk(seeded: Seeded) -> None:
    """A flipped byte in a chunk both sides need: one line saying the repository is corrupt."""
    project, _ = seeded
    (e0, e1, _e2), cps = ids(seeded)
    from replicate.checkout import find_entry
    from replicate.objects.reader import read_file_object

    repo = Repository.open(project / ".replicate")
    cp = repo.objects.read_object(bytes.fromhex(cps[1][2]))
    e = find_entry(repo.objects, cp.files, "model.pth")
    chunk = read_file_object(repo.objects, e.id).chunks[0].id
    repo.close()
    flip_byte_in_chunk(project / ".replicate", chunk)
    r = invoke("-D", str(project), "diff", e0, e1)
    assert r.code == 1
    assert "corrupt" in one_line_error(r)
    r = invoke("-D", str(project), "-v", "diff", e0, e1)
    assert "Traceback" in r.stderr  # -v shows it


# --- -R and a real process --------------------------------------------------------------------


def test_repository_option(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    (e0, e1, _e2), _ = ids(seeded)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ref = invoke("-D", str(project), "diff", e0, e1)
    r = invoke("-D", str(elsewhere), "diff", e0, e1, "-R", str(project / ".replicate"))
    assert r.code == 0 and r.stdout == ref.stdout, r
    r = invoke("-D", str(elsewhere), "-R", f"file://{project / '.replicate'}", "diff", e0, e1)
    assert r.code == 0 and r.stdout == ref.stdout, r


def test_subprocess(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, e1, _e2), _ = ids(seeded)
    r = run_subprocess("diff", e0[:7], e1[:7], cwd=project)
    assert r.code == 0, r
    assert r.stdout == (GOLDEN / "diff_experiments.txt").read_text()
    assert "picking the best checkpoint" in r.stderr
    r = run_subprocess("diff", e0[:7], e1[:7], "--json", cwd=project)
    assert json.loads(r.stdout)["changed_bytes"] == 1999
    r = run_subprocess("diff", e0[:7], "0000", cwd=project)
    assert r.code == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == "error: no experiment or checkpoint matches '0000'"


def test_colour_output_strips_to_the_plain_table(seeded: Seeded) -> None:
    """With colour, headings are bold and "(no difference)" dim; stripped of the escapes the
    output is the plain table (the predecessor counted escapes as width, and so do we)."""
    import re

    from replicate.cli.diff import render_table
    from replicate.diff import diff, pick
    from replicate.project import Project

    project, _ = seeded
    (e0, e1, _e2), _ = ids(seeded)
    p = Project(directory=project)
    d = diff(pick(p, e0).checkpoint, pick(p, e1).checkpoint)
    coloured = render_table(d, colour=True)
    assert "\x1b[1mExperiment\x1b[0m" in coloured and "\x1b[2m(no difference)\x1b[0m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == render_table(d, colour=False)
    assert render_table(d) == (GOLDEN / "diff_experiments.txt").read_text()
