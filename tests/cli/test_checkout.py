"""``replicate checkout``: code then checkpoint files, safe without -f, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicate.objects import codec
from replicate.repository import Repository

from .conftest import SEC, T0
from .invoke import flip_byte_in_chunk, invoke, one_line_error, run_subprocess

Seeded = tuple[Path, dict[str, list[str]]]
TRAIN = b"print('training')\n"


def model(i: int, step: int) -> bytes:
    """model.pth as the seeded experiment ``i`` saved it at ``step``."""
    return bytes([i, step]) * 1000


def ids(seeded: Seeded) -> tuple[list[str], list[list[str]]]:
    return list(seeded[1]), list(seeded[1].values())


def test_checkpoint_into_a_new_directory(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    (e0, _, _), cps = ids(seeded)
    out = tmp_path / "out" / "deeper"
    r = invoke("-D", str(project), "checkout", cps[0][1][:7], "-o", str(out))
    assert r.code == 0, r
    assert (out / "train.py").read_bytes() == TRAIN
    assert (out / "model.pth").read_bytes() == model(0, 1)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == (f"═══╡ Checking out files from checkpoint {cps[0][1][:7]} and its "
                        f"experiment {e0[:7]}")
    assert f'Copied files from experiment {e0[:7]} to "{out.resolve()}/train.py"' in r.stderr
    assert f'Copied files from checkpoint {cps[0][1][:7]} to "{out.resolve()}/model.pth"' \
        in r.stderr
    assert r.stderr.endswith(
        "═══╡ If you want to run this experiment again, this is how it was run:\n\n"
        "  train.py 0.01 2\n"
    )


def test_experiment_picks_best_checkpoint(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    (_, e1, _), cps = ids(seeded)
    r = invoke("-D", str(project), "checkout", e1[:5], "-o", str(tmp_path / "o"))
    assert r.code == 0, r
    assert (tmp_path / "o" / "model.pth").read_bytes() == model(1, 2)  # lowest loss
    assert (f"Checking out files from experiment {e1[:7]} and its best checkpoint "
            f"{cps[1][2][:7]}") in r.stderr


def test_experiment_without_checkpoints_checks_out_code(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    repo = Repository.open(project / ".replicate")
    e0 = repo.objects.read_object(bytes.fromhex(ids(seeded)[0][0]))
    exp = codec.Experiment(**{**e0.__dict__, "nonce": b"x" * 16, "created_ns": T0 + 99 * SEC})
    with repo.objects.transaction() as txn:
        eid = txn.put_object(exp)
    repo.refs.update(repo.experiment_ref(eid), eid, old=None)
    repo.close()
    r = invoke("-D", str(project), "checkout", eid.hex(), "-o", str(tmp_path / "o"))
    assert r.code == 0, r
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["train.py"]
    assert f"Checking out files from experiment {eid.hex()[:7]}\n" in r.stderr


def test_default_directory_is_the_project(seeded: Seeded, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    monkeypatch.chdir(tmp_path)
    r = invoke("-D", str(project), "checkout", cps[2][0])
    assert r.code == 0, r
    assert (project / "model.pth").read_bytes() == model(2, 0)
    assert "1 file written, 1 already up to date" in r.stderr  # train.py was already right
    assert not (tmp_path / "model.pth").exists()


def test_refuses_to_overwrite_and_writes_nothing(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.pth").write_bytes(b"my precious changes")
    (out / "extra.txt").write_text("keep me")
    r = invoke("-D", str(project), "checkout", cps[0][2], "-o", str(out))
    assert r.code == 1
    assert "Traceback" not in r.stderr
    assert "would overwrite 1 file" in r.stderr and "nothing was written" in r.stderr
    assert "-f" in r.stderr
    assert "  model.pth\n" in r.stderr
    assert (out / "model.pth").read_bytes() == b"my precious changes"
    assert not (out / "train.py").exists()  # nothing at all was written
    # -f overwrites; extra files are never deleted
    r = invoke("-D", str(project), "checkout", cps[0][2], "-o", str(out), "-f")
    assert r.code == 0, r
    assert (out / "model.pth").read_bytes() == model(0, 2)
    assert (out / "train.py").read_bytes() == TRAIN
    assert (out / "extra.txt").read_text() == "keep me"


def test_identical_files_are_no_conflict(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    out = tmp_path / "o"
    assert invoke("-D", str(project), "checkout", cps[0][2], "-o", str(out)).code == 0
    r = invoke("-D", str(project), "checkout", cps[0][2], "-o", str(out))
    assert r.code == 0, r
    assert "0 files written, 2 already up to date" in r.stderr


def test_path_option(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    out = tmp_path / "o"
    r = invoke("-D", str(project), "checkout", cps[1][0], "-o", str(out), "--path", "model.pth")
    assert r.code == 0, r
    assert sorted(p.name for p in out.iterdir()) == ["model.pth"]
    assert f'Copied model.pth to "{out.resolve()}/model.pth"' in r.stderr
    r = invoke("-D", str(project), "checkout", cps[1][0], "-o", str(out), "--path", "nope.txt")
    assert r.code == 1
    line = one_line_error(r)
    assert "'nope.txt'" in line and cps[1][0][:7] in line
    assert sorted(p.name for p in out.iterdir()) == ["model.pth"]


def test_removed_checkpoint(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    assert invoke("-D", str(project), "rm", "-f", cps[0][2]).code == 0
    out = tmp_path / "o"
    r = invoke("-D", str(project), "checkout", cps[0][2], "-o", str(out))
    assert r.code == 0, r
    assert f"The files of checkpoint {cps[0][2][:7]} were removed" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.py"]
    r = invoke("-D", str(project), "checkout", cps[0][2], "-o", str(out), "--path", "model.pth")
    assert r.code == 1
    assert "were removed" in one_line_error(r)


def test_bad_input(seeded: Seeded, tmp_path: Path) -> None:
    project, exps = seeded
    _, cps = ids(seeded)
    r = invoke("-D", str(project), "checkout", "0000")
    assert r.code == 1 and "no experiment or checkpoint matches" in one_line_error(r)
    r = invoke("-D", str(project), "checkout", "d")  # an experiment and two checkpoints
    assert r.code == 2 and "ambiguous" in one_line_error(r)
    (tmp_path / "file").write_text("x")
    r = invoke("-D", str(project), "checkout", cps[0][0], "-o", str(tmp_path / "file"))
    assert r.code == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    r = invoke("-D", str(tmp_path), "checkout", cps[0][0])
    assert r.code == 1 and "no replicate repository" in one_line_error(r)


def test_corrupt_repository(seeded: Seeded, tmp_path: Path) -> None:
    from replicate.checkout import find_entry
    from replicate.objects.reader import read_file_object

    project, _ = seeded
    _, cps = ids(seeded)
    repo = Repository.open(project / ".replicate")
    cp = repo.objects.read_object(bytes.fromhex(cps[0][2]))
    e = find_entry(repo.objects, cp.files, "model.pth")
    chunk = read_file_object(repo.objects, e.id).chunks[0].id
    repo.close()
    flip_byte_in_chunk(project / ".replicate", chunk)
    r = invoke("-D", str(project), "checkout", cps[0][2], "-o", str(tmp_path / "o"))
    assert r.code == 1
    line = one_line_error(r)
    assert "corrupt" in line and chunk.hex() in line
    assert not (tmp_path / "o" / "model.pth").exists()


def test_repository_option_and_subprocess(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    out = tmp_path / "o"
    r = run_subprocess("checkout", cps[2][2][:8], "-R", str(project / ".replicate"),
                       "-o", str(out), cwd=tmp_path)
    assert r.code == 0, r
    assert (out / "model.pth").read_bytes() == model(2, 2)
    (out / "model.pth").write_bytes(b"changed")
    r = run_subprocess("checkout", cps[2][2][:8], "-R", str(project / ".replicate"),
                       "-o", str(out), cwd=tmp_path)
    assert r.code == 1 and "model.pth" in r.stderr and "Traceback" not in r.stderr
