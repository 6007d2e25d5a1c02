"""``replicate rm``: experiments (ref + reflog + heartbeat) and checkpoints (tombstones)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replicate.project import Project
from replicate.repository import Repository

from .invoke import ROOT, invoke, one_line_error, run_subprocess

Seeded = tuple[Path, dict[str, list[str]]]


def ids(seeded: Seeded) -> tuple[list[str], list[list[str]]]:
    return list(seeded[1]), list(seeded[1].values())


def refs(project: Path, kind: str) -> dict[str, bytes]:
    repo = Repository.open(project / ".replicate")
    try:
        return repo.refs.list(kind)
    finally:
        repo.close()


def test_rm_checkpoint_writes_a_tombstone(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _, _), cps = ids(seeded)
    cid = cps[0][1]
    r = invoke("-D", str(project), "rm", "-f", cid[:7])
    assert r.code == 0, r
    assert r.stderr == (f"═══╡ Removed the files of checkpoint {cid[:7]} (its metadata and "
                        "metrics stay)\n")
    assert refs(project, "removed") == {f"removed/{cid}": bytes.fromhex(cid)}
    repo = Repository.open(project / ".replicate")
    assert (repo.root / "refs" / "removed" / cid).read_text() == cid + "\n"
    assert [e.message for e in repo.refs.reflog(f"removed/{cid}")] == ["rm"]
    repo.close()
    # metadata and metrics stay; the files are gone for open() and checkout
    exp = Project(directory=project).experiments.get(e0)
    assert len(exp.checkpoints) == 3
    cp = exp.checkpoints[1]
    assert cp.metrics == {"loss": 0.5, "accuracy": 0.62}
    assert cp.files_removed
    with pytest.raises(KeyError, match="files were removed"):
        cp.open("model.pth")
    assert not exp.checkpoints[2].files_removed
    # the experiment itself is untouched
    assert f"experiments/{e0}" in refs(project, "experiments")
    # removing again is harmless
    r = invoke("-D", str(project), "rm", "-f", cid)
    assert r.code == 0 and "already removed" in r.stderr


def test_rm_experiment(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, e1, _), cps = ids(seeded)
    repo_dir = project / ".replicate"
    (repo_dir / "heartbeats" / e1).write_text('{"last_ns": 0, "stopped": true}')
    assert invoke("-D", str(project), "rm", "-f", cps[1][0]).code == 0  # a tombstone of e1
    assert (repo_dir / "logs" / "refs" / "experiments" / e1).exists()
    r = invoke("-D", str(project), "delete", "-f", e1[:7])  # the predecessor's alias
    assert r.code == 0, r
    assert f"Removed experiment {e1[:7]} and its 3 checkpoints" in r.stderr
    assert f"experiments/{e1}" not in refs(project, "experiments")
    assert f"experiments/{e0}" in refs(project, "experiments")
    assert not (repo_dir / "logs" / "refs" / "experiments" / e1).exists()  # reflog gone
    assert not (repo_dir / "heartbeats" / e1).exists()
    assert refs(project, "removed") == {}  # its checkpoints' tombstones went with it
    # history stays in the objects until gc
    repo = Repository.open(repo_dir)
    assert repo.objects.has(bytes.fromhex(e1)) and repo.objects.has(bytes.fromhex(cps[1][2]))
    repo.close()
    assert [e.id for e in Project(directory=project).experiments.list()] == [e0, ids(seeded)[0][2]]
    r = invoke("-D", str(project), "rm", "-f", e1)
    assert r.code == 1 and "no experiment or checkpoint matches" in one_line_error(r)


def test_prompt(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _, _), cps = ids(seeded)
    listing = (
        "You are about to delete the following:\n"
        f"* Experiment {e0[:7]} (3 checkpoints)\n"
        f"* Checkpoint {cps[1][0][:7]}\n"
    )
    # closed standard input: refuse, tell to pass -f
    r = invoke("-D", str(project), "rm", e0[:7], cps[1][0])
    assert r.code == 1, r
    assert r.stderr.startswith(listing)
    assert "pass -f" in r.stderr and "nothing was deleted" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(refs(project, "experiments")) == 3 and refs(project, "removed") == {}
    # default is No
    for answer in ("\n", "n\n", "no\n", "whatever\n"):
        r = invoke("-D", str(project), "rm", e0[:7], cps[1][0], input=answer)
        assert r.code == 1 and "nothing was deleted" in r.stderr, r
    assert len(refs(project, "experiments")) == 3 and refs(project, "removed") == {}
    # yes
    r = invoke("-D", str(project), "rm", e0[:7], cps[1][0], input="y\n")
    assert r.code == 0, r
    assert r.stderr.startswith(listing + "\nDo you want to continue? [y/N] \n")
    assert len(refs(project, "experiments")) == 2
    assert list(refs(project, "removed")) == [f"removed/{cps[1][0]}"]


def test_all_prefixes_resolve_before_anything_is_deleted(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, e1, _), cps = ids(seeded)
    r = invoke("-D", str(project), "rm", "-f", e0, cps[1][0], "0000")
    assert r.code == 1 and "'0000'" in one_line_error(r)
    r = invoke("-D", str(project), "rm", "-f", e0, "d")  # 'd': ambiguous
    assert r.code == 2 and "ambiguous" in one_line_error(r)
    r = invoke("-D", str(project), "rm", "-f", e0, "not-hex")
    assert r.code == 1 and "not an ID" in one_line_error(r)
    assert len(refs(project, "experiments")) == 3 and refs(project, "removed") == {}


def test_duplicates_and_usage(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _, _), _ = ids(seeded)
    r = invoke("-D", str(project), "rm", "-f", e0, e0[:7])
    assert r.code == 0 and r.stderr.count("Removed experiment") == 1, r
    r = invoke("-D", str(project), "rm")
    assert r.code == 2 and "Traceback" not in r.stderr


def test_documented_idiom(seeded: Seeded) -> None:
    """``replicate rm $(replicate ls -q --filter "loss > 0.2")`` in a real shell."""
    project, _ = seeded
    (e0, e1, e2), _ = ids(seeded)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1",
               REPLICATE=f"{sys.executable} -m replicate")
    p = subprocess.run(
        ["bash", "-c", '$REPLICATE rm -f $($REPLICATE ls -q --filter "loss > 0.2")'],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p
    assert sorted(refs(project, "experiments")) == [f"experiments/{e1}"]  # best loss 0.0333
    assert f"Removed experiment {e0[:7]}" in p.stderr and f"Removed experiment {e2[:7]}" in p.stderr


def test_subprocess_with_closed_stdin(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _, _), _ = ids(seeded)
    r = run_subprocess("rm", e0[:7], cwd=project)
    assert r.code == 1, r
    assert "pass -f" in r.stderr and "Traceback" not in r.stderr
    assert len(refs(project, "experiments")) == 3
    r = run_subprocess("rm", e0[:7], cwd=project, input="yes\n")
    assert r.code == 0, r
    assert len(refs(project, "experiments")) == 2
