"""``replicate du`` and ``replicate fsck``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from replicate.build import snapshot
from replicate.objects import codec
from replicate.repository import Repository
from replicate.usage import usage

from .conftest import SEC, T0
from .invoke import flip_byte_in_chunk, invoke, one_line_error, run_subprocess

Seeded = tuple[Path, dict[str, list[str]]]
MIB = 1024 * 1024


def ids(seeded: Seeded) -> tuple[list[str], list[list[str]]]:
    return list(seeded[1]), list(seeded[1].values())


def du_json(project: Path) -> dict:
    r = invoke("-D", str(project), "du", "--json")
    assert r.code == 0, r
    return json.loads(r.stdout)


# --- du ---------------------------------------------------------------------------------------


def test_du_seeded(seeded: Seeded) -> None:
    project, _ = seeded
    d = du_json(project)
    # 3 experiments' code (train.py, 18 bytes) + 9 checkpoints' model.pth (2000 bytes each)
    assert d["logical_bytes"] == 3 * 18 + 9 * 2000
    # distinct chunks: one train.py, nine different model.pth
    assert d["unique_bytes"] == 18 + 9 * 2000
    assert d["chunks"] == 10
    assert (d["experiments"], d["checkpoints"], d["removed_checkpoints"]) == (3, 9, 0)
    assert d["dedup_ratio"] == pytest.approx(d["logical_bytes"] / d["unique_bytes"])
    assert d["compression_ratio"] == pytest.approx(d["unique_bytes"] / d["stored_entries_bytes"])
    packs = list((project / ".replicate" / "packs").rglob("*.pack"))
    assert d["packs"] == len(packs)
    assert d["stored_bytes"] == sum(p.stat().st_size for p in packs)
    assert isinstance(d["logical_bytes"], int) and isinstance(d["dedup_ratio"], float)


def test_du_table(seeded: Seeded) -> None:
    project, _ = seeded
    r = invoke("-D", str(project), "du")
    assert r.code == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Logical size:  17.6 KiB  3 experiments, 9 checkpoints")
    assert lines[1].startswith("Unique data:   17.6 KiB  10 chunks; dedup ratio 1.00")
    assert lines[2].startswith("Stored:") and "compression ratio" in lines[2]


def test_du_after_rm(seeded: Seeded) -> None:
    project, _ = seeded
    (e0, _, _), cps = ids(seeded)
    assert invoke("-D", str(project), "rm", "-f", cps[2][1]).code == 0
    d = du_json(project)
    assert d["logical_bytes"] == 3 * 18 + 8 * 2000
    assert d["removed_checkpoints"] == 1 and d["checkpoints"] == 9
    assert invoke("-D", str(project), "rm", "-f", e0).code == 0
    d = du_json(project)
    assert d["logical_bytes"] == 2 * 18 + 5 * 2000
    assert d["experiments"] == 2


def test_du_dedup(tmp_path: Path) -> None:
    """Two checkpoints of one 3 MiB file, 1 MiB changed the second time."""
    project = tmp_path / "p"
    project.mkdir()
    repo = Repository.init(project / ".replicate")
    data = np.random.default_rng(0).standard_normal(3 * MIB // 4, dtype=np.float32)
    exp = codec.Experiment(T0, b"\0" * 16, {}, None, None, "u", "h", "c", "3", (), None, {}, "0")
    with repo.objects.transaction() as txn:
        eid = txn.put_object(exp)
    repo.refs.update(repo.experiment_ref(eid), eid, old=None)
    head = eid
    for step in range(3):
        if step == 2:
            data[: MIB // 4] += 1
        (project / "w.bin").write_bytes(data.tobytes())
        with repo.objects.transaction() as txn:
            files, _ = snapshot(txn, project, "w.bin")
            cid = txn.put_object(codec.Checkpoint(eid, None if head == eid else head,
                                                  T0 + step * SEC, step, "w.bin", files))
        repo.refs.update(repo.experiment_ref(eid), cid, old=head)
        head = cid
    u = usage(repo)
    repo.close()
    assert u.logical_bytes == 3 * 3 * MIB
    assert 4 * MIB < u.unique_bytes < 4 * MIB + 2 * MIB  # + the changed MiB and its chunks
    assert 1.5 < u.dedup_ratio < 3.0
    assert u.compression_ratio > 1.0  # fp32 N(0,1) compresses a little
    assert u.stored_bytes >= u.stored_entries_bytes
    r = invoke("-D", str(project), "du")
    assert "Logical size:  9.0 MiB" in r.stdout, r


def test_du_subprocess(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    r = run_subprocess("du", "--json", cwd=project)
    assert r.code == 0, r
    assert json.loads(r.stdout)["logical_bytes"] == 3 * 18 + 9 * 2000
    r = run_subprocess("du", "-R", str(project / ".replicate"), cwd=tmp_path)
    assert r.code == 0 and r.stdout.startswith("Logical size:  17.6 KiB"), r


def test_du_no_repository(tmp_path: Path) -> None:
    r = invoke("-D", str(tmp_path), "du")
    assert r.code == 1 and "no replicate repository" in one_line_error(r)


# --- fsck -------------------------------------------------------------------------------------


def test_fsck_clean(seeded: Seeded) -> None:
    project, _ = seeded
    r = invoke("-D", str(project), "fsck")
    assert r.code == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].startswith("checked ") and "3 refs" in lines[0] and "reachable" in lines[0]
    assert lines[-1] == "no errors found"
    r = invoke("-D", str(project), "fsck", "--read-data")
    assert r.code == 0 and "data re-read and verified" in r.stdout, r


def test_fsck_warnings_are_ok(seeded: Seeded) -> None:
    project, _ = seeded
    (project / ".replicate" / "tmp" / "pack-1-x.tmp").write_bytes(b"junk")
    r = invoke("-D", str(project), "fsck")
    assert r.code == 0, r
    assert any(ln.startswith("warning: ") and "temporary" in ln for ln in r.stdout.splitlines())
    assert r.stdout.splitlines()[-1] == "no errors found (1 warning)"


def test_fsck_flipped_byte(seeded: Seeded, tmp_path: Path) -> None:
    from replicate.checkout import find_entry
    from replicate.objects.reader import read_file_object

    project, _ = seeded
    _, cps = ids(seeded)
    repo = Repository.open(project / ".replicate")
    cp = repo.objects.read_object(bytes.fromhex(cps[1][1]))
    e = find_entry(repo.objects, cp.files, "model.pth")
    chunk = read_file_object(repo.objects, e.id).chunks[0].id
    repo.close()
    flip_byte_in_chunk(project / ".replicate", chunk)
    r = invoke("-D", str(project), "fsck", "--read-data")
    assert r.code == 1, r
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and chunk.hex() in errors[0]
    assert r.stdout.splitlines()[-1] == "fsck found 1 error"
    # the commands that need the chunk say so in one line
    r = invoke("-D", str(project), "checkout", cps[1][1], "-o", str(tmp_path / "o"))
    assert r.code == 1 and "corrupt" in one_line_error(r)


def test_fsck_rebuild_index(seeded: Seeded) -> None:
    project, _ = seeded
    index = project / ".replicate" / "index"
    for f in index.iterdir():
        f.unlink()
    r = invoke("-D", str(project), "fsck")
    assert r.code == 1, r
    assert any(ln.startswith("error: missing object") for ln in r.stdout.splitlines())
    r = invoke("-D", str(project), "fsck", "--rebuild-index")
    assert r.code == 0, r
    assert "Rebuilt the index from" in r.stderr
    assert r.stdout.splitlines()[-1] == "no errors found"
    assert invoke("-D", str(project), "fsck").code == 0


def test_fsck_tombstone_is_clean(seeded: Seeded) -> None:
    project, _ = seeded
    _, cps = ids(seeded)
    assert invoke("-D", str(project), "rm", "-f", cps[0][0]).code == 0
    assert invoke("-D", str(project), "fsck", "--read-data").code == 0


def test_fsck_repository_option_and_subprocess(seeded: Seeded, tmp_path: Path) -> None:
    project, _ = seeded
    r = run_subprocess("fsck", "-R", str(project / ".replicate"), cwd=tmp_path)
    assert r.code == 0 and r.stdout.splitlines()[-1] == "no errors found", r
    pack = next((project / ".replicate" / "packs").rglob("*.pack"))
    os.truncate(pack, pack.stat().st_size - 10)
    r = run_subprocess("fsck", "-R", f"file://{project / '.replicate'}", cwd=tmp_path)
    assert r.code == 1 and "Traceback" not in r.stderr, r
    assert any(ln.startswith("error: ") for ln in r.stdout.splitlines())
    r = run_subprocess("fsck", "-R", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.code == 1 and r.stderr.startswith("error: no replicate repository"), r
