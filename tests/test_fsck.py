"""fsck: a clean repository is clean, and each planted fault is found."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from replicate import fsck
from replicate.build import snapshot
from replicate.checkout import find_entry
from replicate.objects import codec, index
from replicate.objects.codec import Checkpoint, Experiment, TreeEntry
from replicate.objects.reader import iter_content, read_file_object
from replicate.repository import Repository


def make_experiment(repo: Repository, project: Path, steps: int = 2) -> tuple[bytes, list[bytes]]:
    """An experiment (code tree) with ``steps`` checkpoints (files trees), its ref at the head."""
    with repo.objects.transaction() as txn:
        code, _ = snapshot(txn, project, "train.py")
        exp = Experiment(
            created_ns=1,
            nonce=random.Random(0).randbytes(16),
            params={"lr": 0.1},
            path=".",
            code=code,
            user="u",
            host="h",
            command="train.py",
            python_version="3.11",
            packages=(),
            git=None,
            system={},
            replicate_version="0",
        )
        eid = txn.put_object(exp)
    name = f"experiments/{eid.hex()}"
    repo.refs.update(name, eid, old=None)
    head, cps = eid, []
    for step in range(steps):
        (project / "model.bin").write_bytes(random.Random(step).randbytes(400_000))
        with repo.objects.transaction() as txn:
            files, _ = snapshot(txn, project, "model.bin")
            cid = txn.put_object(
                Checkpoint(
                    experiment=eid,
                    parent=cps[-1] if cps else None,
                    created_ns=10 + step,
                    step=step,
                    path="model.bin",
                    files=files,
                    metrics={"loss": 1.0 / (step + 1)},
                    primary_metric=("loss", "minimize"),
                )
            )
        repo.refs.update(name, cid, old=head)
        head = cid
        cps.append(cid)
    return eid, cps


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Repository, bytes, list[bytes]]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('train')\n" * 50)
    r = Repository.init(tmp_path / ".replicate")
    eid, cps = make_experiment(r, project)
    return r, eid, cps


def fresh(r: Repository) -> Repository:
    """The repository as a new process opens it."""
    return Repository.open(r.root)


def model_chunk(r: Repository, cp: bytes) -> bytes:
    obj = r.objects.read_object(cp)
    assert isinstance(obj, Checkpoint) and obj.files is not None
    e = find_entry(r.objects, obj.files, "model.bin")
    assert e is not None
    return read_file_object(r.objects, e.id).chunks[0].id


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_clean_repository(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, eid, cps = repo
    for read_data in (False, True):
        rep = fsck.fsck(fresh(r), read_data=read_data)
        assert rep.ok, rep.errors
        assert rep.errors == [] and rep.warnings == []
        assert rep.refs == 1
        # experiment, code tree (root + file + chunk), 2 checkpoints x (tree, file, chunks...)
        assert rep.reachable >= 10
        assert rep.objects == sum(
            len(fsck.read_pack_entries(r.objects, p)) for p in r.objects.list_packs()
        )
        assert rep.packs == len(r.objects.list_packs())


def test_empty_repository(tmp_path: Path) -> None:
    rep = fsck.fsck(Repository.init(tmp_path / ".replicate"), read_data=True)
    assert rep.ok and rep.refs == 0 and rep.packs == 0 and rep.objects == 0


def test_dangling_ref(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, _, _ = repo
    ghost = bytes(range(32))
    r.refs.update(f"experiments/{'ab' * 32}", ghost, old=None)
    rep = fsck.fsck(fresh(r))
    assert not rep.ok
    assert rep.refs == 2
    assert any(ghost.hex() in e and "ab" * 32 in e for e in rep.errors), rep.errors


def test_missing_parent_checkpoint(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / ".replicate")
    lost = b"\x77" * 32
    with r.objects.transaction() as txn:
        cid = txn.put_object(Checkpoint(b"\x66" * 32, lost, 0, 1, None, None, {}))
    r.refs.update(f"experiments/{'66' * 32}", cid, old=None)
    rep = fsck.fsck(fresh(r))
    assert any(lost.hex() in e for e in rep.errors)
    assert any(("66" * 32) in e for e in rep.errors)  # the experiment is missing too


@pytest.mark.parametrize("which", ["data", "metadata"])
def test_missing_pack(repo: tuple[Repository, bytes, list[bytes]], which: str) -> None:
    r, _, cps = repo
    loc = r.objects.locate(model_chunk(r, cps[-1]) if which == "data" else cps[-1])
    r.objects.pack_path(loc.pack).unlink()
    rep = fsck.fsck(fresh(r))
    assert not rep.ok
    assert any(loc.pack.hex() in e and "missing" in e for e in rep.errors), rep.errors


def test_index_pack_mismatch(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, _, cps = repo
    oid = model_chunk(r, cps[0])
    loc = r.objects.locate(oid)
    recs = np.zeros(1, dtype=index.RECORD)
    recs[0] = (oid, 0, loc.offset + 1, loc.stored_len, loc.raw_len, loc.codec, loc.type, b"\0\0")
    index.write_segment(r.objects.index_dir, index.encode_segment([loc.pack], recs))
    rep = fsck.fsck(fresh(r))
    assert not rep.ok
    assert any(oid.hex() in e and "disagrees" in e for e in rep.errors), rep.errors
    # The index is a cache: rebuilding it from the packs repairs the mismatch.
    fsck.rebuild_index(fresh(r))
    assert fsck.fsck(fresh(r), read_data=True).ok


def test_index_names_an_object_the_pack_lacks(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, _, cps = repo
    loc = r.objects.locate(cps[0])
    ghost = b"\x99" * 32
    recs = np.zeros(1, dtype=index.RECORD)
    recs[0] = (ghost, 0, loc.offset, loc.stored_len, loc.raw_len, loc.codec, loc.type, b"\0\0")
    index.write_segment(r.objects.index_dir, index.encode_segment([loc.pack], recs))
    rep = fsck.fsck(fresh(r))
    assert any(ghost.hex() in e for e in rep.errors), rep.errors


def test_flipped_chunk_byte_needs_read_data(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, _, cps = repo
    oid = model_chunk(r, cps[0])  # random bytes: stored raw
    loc = r.objects.locate(oid)
    path = r.objects.pack_path(loc.pack)
    flip(path, loc.offset + loc.stored_len // 2)
    assert fsck.fsck(fresh(r)).ok  # structure and connectivity are intact
    rep = fsck.fsck(fresh(r), read_data=True)
    assert not rep.ok
    assert any(oid.hex() in e and str(path) in e for e in rep.errors), rep.errors


def test_flipped_metadata_byte_is_found_by_connectivity(
    repo: tuple[Repository, bytes, list[bytes]],
) -> None:
    r, _, cps = repo
    loc = r.objects.locate(cps[0])
    flip(r.objects.pack_path(loc.pack), loc.offset + loc.stored_len - 1)
    rep = fsck.fsck(fresh(r))  # reachable objects are read and verified even without read_data
    assert any(cps[0].hex() in e for e in rep.errors), rep.errors


def test_damaged_pack_footer(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, _, cps = repo
    loc = r.objects.locate(cps[0])
    path = r.objects.pack_path(loc.pack)
    flip(path, path.stat().st_size - 60)  # inside the footer
    rep = fsck.fsck(fresh(r))
    assert any(loc.pack.hex() in e for e in rep.errors), rep.errors


def test_unsafe_tree_name_is_an_error(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / ".replicate")
    with r.objects.transaction() as txn:
        cid = txn.put_chunk(b"x")
        bad = txn.put_object(codec.Tree((TreeEntry("../evil", 0o777, codec.KIND_LINK, cid, 1),)))
        eid = txn.put_object(Experiment(0, b"", {}, None, None, "", "", "", "", (), None, {}, ""))
        cp = txn.put_object(Checkpoint(eid, None, 0, 0, None, bad, {}))
    r.refs.update(f"experiments/{eid.hex()}", cp, old=None)
    rep = fsck.fsck(fresh(r))
    assert any(bad.hex() in e and "../evil" in e for e in rep.errors), rep.errors


def test_tombstoned_checkpoint_files_may_be_gone(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / ".replicate")
    with r.objects.transaction() as txn:
        eid = txn.put_object(Experiment(0, b"", {}, None, None, "", "", "", "", (), None, {}, ""))
        cp = txn.put_object(Checkpoint(eid, None, 0, 0, "m", b"\x55" * 32, {}))
    r.refs.update(f"experiments/{eid.hex()}", cp, old=None)
    assert not fsck.fsck(fresh(r)).ok  # files tree missing
    r.refs.update(f"removed/{cp.hex()}", cp, old=None)
    rep = fsck.fsck(fresh(r))
    assert rep.ok, rep.errors


def test_leftovers_are_warnings(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, eid, _ = repo
    (r.root / "tmp" / "pack-123-abc.tmp").write_bytes(b"RPLPACK1 half written")
    before = set((r.root / "index").glob("*.idx"))
    with r.objects.transaction() as txn:
        txn.put_chunk(b"orphan")
    (newest,) = set((r.root / "index").glob("*.idx")) - before
    newest.unlink()  # as if the writer died between sealing the pack and writing the index
    lock = r.refs.refs_dir / f"experiments/{eid.hex()}.lock"
    lock.write_text("1 elsewhere\n")
    rep = fsck.fsck(fresh(r), read_data=True)
    assert rep.ok, rep.errors
    assert len(rep.warnings) == 3, rep.warnings
    assert any("not indexed" in w for w in rep.warnings)
    assert any("temporary" in w for w in rep.warnings)
    assert any(str(lock) in w for w in rep.warnings)


def test_content_survives_fsck_and_rebuild(repo: tuple[Repository, bytes, list[bytes]]) -> None:
    r, _, cps = repo
    for p in (r.root / "index").glob("*.idx"):
        p.unlink()
    blind = fresh(r)
    rep = fsck.fsck(blind)
    assert not rep.ok  # the ref now points at an unindexed object
    fsck.rebuild_index(blind)
    again = fresh(r)
    assert fsck.fsck(again, read_data=True).ok
    obj = again.objects.read_object(cps[1])
    assert isinstance(obj, Checkpoint) and obj.files is not None
    e = find_entry(again.objects, obj.files, "model.bin")
    assert e is not None
    got = b"".join(iter_content(again.objects, read_file_object(again.objects, e.id)))
    assert got == random.Random(1).randbytes(400_000)
