"""The diff library: changed-byte counting from chunk lists, file views, metadata sections."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from replicate.build import snapshot
from replicate.checkout import find_entry
from replicate.diff import (
    MISSING,
    ByteChange,
    count_changed,
    diff_views,
    map_diff,
    value_str,
)
from replicate.objects import chunker
from replicate.objects.codec import File
from replicate.objects.reader import file_chunk_refs, read_file_object
from replicate.repository import Repository

MIB = 1024 * 1024


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository.init(tmp_path / ".replicate")
    yield r
    r.close()


def weights(n_bytes: int, seed: int = 0) -> np.ndarray:
    """float32 N(0, 1) values, ``n_bytes`` long."""
    return np.random.default_rng(seed).standard_normal(n_bytes // 4, dtype=np.float32)


def save(repo: Repository, files: dict[str, bytes]) -> bytes:
    """Write ``files`` into the project directory and snapshot it; returns the tree ID."""
    root = repo.root.parent
    for p in root.iterdir():
        if p.is_file():
            p.unlink()
    for name, data in files.items():
        (root / name).write_bytes(data)
        os.chmod(root / name, 0o644)
    with repo.objects.transaction() as txn:
        tree, _ = snapshot(txn, root, ".")
    return tree


def file_of(repo: Repository, tree: bytes, name: str = "w.bin") -> File:
    e = find_entry(repo.objects, tree, name)
    assert e is not None
    return read_file_object(repo.objects, e.id)


def two(repo: Repository, a: bytes, b: bytes) -> tuple[File, File]:
    return file_of(repo, save(repo, {"w.bin": a})), file_of(repo, save(repo, {"w.bin": b}))


def not_covered(repo: Repository, a: File, b: File) -> int:
    """Bytes of B's chunks whose IDs A does not have (the chunk-granular count)."""
    ida = {r.id for r in file_chunk_refs(repo.objects, a)}
    return sum(r.size for r in file_chunk_refs(repo.objects, b) if r.id not in ida)


class CountReads:
    """Counts chunk reads of a store (and can forbid them)."""

    def __init__(self, repo: Repository, monkeypatch: pytest.MonkeyPatch, forbid: bool = False):
        self.n = 0
        real = repo.objects.read_chunk

        def read_chunk(oid: bytes) -> bytes:
            if forbid:
                raise AssertionError("no chunk may be read")
            self.n += 1
            return real(oid)

        monkeypatch.setattr(repo.objects, "read_chunk", read_chunk)


# --- byte counting ----------------------------------------------------------------------------


def test_identical_files_read_nothing(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    data = weights(3 * MIB).tobytes()
    a, b = two(repo, data, data)
    assert a == b
    CountReads(repo, monkeypatch, forbid=True)
    assert count_changed(repo.objects, a, b) == ByteChange(0, True)
    tree = save(repo, {"w.bin": data})
    assert diff_views(repo.objects, [tree], [tree]) == []


def test_in_place_change_is_exact_and_reads_only_the_changed_region(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = weights(6 * MIB)
    changed = base.copy()
    lo, hi = 1_000_003, 1_300_001  # float indexes: 1.2 MB of 24 MB, away from both ends
    rng = np.random.default_rng(1)
    changed[lo:hi] += np.float32(1e-3) * rng.standard_normal(hi - lo, dtype=np.float32)
    a, b = two(repo, base.tobytes(), changed.tobytes())
    n_chunks = len(file_chunk_refs(repo.objects, b))
    assert n_chunks > 10  # chunking matters at this size
    reads = CountReads(repo, monkeypatch)
    got = count_changed(repo.objects, a, b)
    # truth: the span from the first to the last differing byte
    diff = np.flatnonzero(np.frombuffer(base.tobytes(), np.uint8)
                          != np.frombuffer(changed.tobytes(), np.uint8))
    truth = int(diff[-1] - diff[0] + 1)
    assert got.exact
    assert got.changed_bytes == truth
    assert abs(truth - (hi - lo) * 4) < 8
    # per-byte equality would undercount: some bytes of perturbed floats stay equal
    assert len(diff) < truth
    # the chunk-granular count is larger than the exact one
    assert not_covered(repo, a, b) > got.changed_bytes
    # only the first and last chunks of the run, of both files, were read
    assert 0 < reads.n <= 8 < n_chunks


def test_several_in_place_runs_add_up(repo: Repository) -> None:
    base = bytearray(weights(8 * MIB, seed=2).tobytes())
    new = bytearray(base)
    spans = [(100, 5_000), (3 * MIB, 3 * MIB + 200_000), (8 * MIB - 10, 8 * MIB)]
    for s, e in spans:
        for k in (s, e - 1):  # first and last byte flip; the middle is rewritten too
            new[k] ^= 0xFF
        new[s + 1 : e - 1] = bytes(x ^ 0x55 for x in new[s + 1 : e - 1])
    a, b = two(repo, bytes(base), bytes(new))
    got = count_changed(repo.objects, a, b)
    assert got.exact
    assert got.changed_bytes == sum(e - s for s, e in spans)


def test_first_and_last_byte(repo: Repository) -> None:
    base = bytearray(weights(3 * MIB, seed=3).tobytes())
    new = bytearray(base)
    new[0] ^= 1
    new[-1] ^= 1
    a, b = two(repo, bytes(base), bytes(new))
    assert count_changed(repo.objects, a, b) == ByteChange(2, True, 2 * 2)


def test_insertion_at_the_start_counts_chunks_of_b_not_in_a(repo: Repository) -> None:
    base = weights(4 * MIB, seed=4).tobytes()
    a, b = two(repo, base, os.urandom(1024) + base)
    got = count_changed(repo.objects, a, b)
    assert not got.exact
    assert got.changed_bytes == not_covered(repo, a, b)
    # content-defined chunking resynchronises: one or two chunks differ, not the whole file
    assert 1024 <= got.changed_bytes <= 1024 + 2 * chunker.MAX_SIZE
    assert got.changed_bytes < len(base) // 2


def test_appended_bytes(repo: Repository) -> None:
    base = weights(3 * MIB, seed=5).tobytes()
    a, b = two(repo, base, base + b"tail" * 5000)
    got = count_changed(repo.objects, a, b)
    assert not got.exact  # sizes differ: the end is no anchor
    assert got.changed_bytes == not_covered(repo, a, b)
    assert 20_000 <= got.changed_bytes <= 20_000 + chunker.MAX_SIZE


def test_deletion_in_the_middle(repo: Repository) -> None:
    base = weights(4 * MIB, seed=6).tobytes()
    a, b = two(repo, base, base[: 2 * MIB] + base[2 * MIB + 4096 :])
    got = count_changed(repo.objects, a, b)
    assert got.changed_bytes == not_covered(repo, a, b)
    assert 0 < got.changed_bytes <= 2 * chunker.MAX_SIZE


def test_small_files_are_one_chunk(repo: Repository) -> None:
    a, b = two(repo, b"hello world\n" * 10, b"hello World\n" * 10)
    got = count_changed(repo.objects, a, b)
    assert got.exact
    assert got.changed_bytes == 12 * 9 + 1  # from the first 'W' to the last


def test_segmented_files(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of more than SEGMENT_THRESHOLD chunks store segment objects; counting expands
    them."""
    from replicate.objects import codec

    monkeypatch.setattr(codec, "SEGMENT_THRESHOLD", 4)
    base = weights(4 * MIB, seed=7)
    new = base.copy()
    new[500_000:500_100] = 0
    a, b = two(repo, base.tobytes(), new.tobytes())
    assert a.segments and b.segments
    got = count_changed(repo.objects, a, b)
    assert got.exact
    assert 390 <= got.changed_bytes <= 400


# --- views ------------------------------------------------------------------------------------


def test_added_removed_changed_and_mode(repo: Repository) -> None:
    big = weights(2 * MIB, seed=8).tobytes()
    t1 = save(repo, {"same.txt": b"same\n", "gone.txt": b"bye\n", "w.bin": big,
                     "mode.sh": b"#!/bin/sh\n"})
    big2 = bytearray(big)
    big2[MIB] ^= 0xFF
    root = repo.root.parent
    t2 = save(repo, {"same.txt": b"same\n", "new.txt": b"hello\n", "w.bin": bytes(big2),
                     "mode.sh": b"#!/bin/sh\n"})
    os.chmod(root / "mode.sh", 0o755)
    with repo.objects.transaction() as txn:
        t2, _ = snapshot(txn, root, ".")
    changes = {c.path: c for c in diff_views(repo.objects, [t1], [t2])}
    assert set(changes) == {"gone.txt", "new.txt", "w.bin", "mode.sh"}
    assert changes["gone.txt"].status == "removed"
    assert changes["gone.txt"].size_a == 4 and changes["gone.txt"].changed_bytes == 4
    assert changes["new.txt"].status == "added"
    assert changes["new.txt"].size_b == 6 and changes["new.txt"].changed_bytes == 6
    assert changes["w.bin"].status == "changed" and changes["w.bin"].changed_bytes == 1
    m = changes["mode.sh"]
    assert (m.status, m.changed_bytes, m.mode_a, m.mode_b) == ("changed", 0, 0o644, 0o755)


def test_overlay_later_trees_win(repo: Repository) -> None:
    code = save(repo, {"train.py": b"print(1)\n", "model.pth": b"old"})
    files = save(repo, {"model.pth": b"new"})
    changes = diff_views(repo.objects, [code], [code, files])
    assert [(c.path, c.status, c.changed_bytes) for c in changes] == [("model.pth", "changed", 3)]


def test_symlinks(repo: Repository) -> None:
    root = repo.root.parent
    t1 = save(repo, {"target": b"x"})
    os.symlink("target", root / "link")
    with repo.objects.transaction() as txn:
        t2, _ = snapshot(txn, root, ".")
    (root / "link").unlink()
    os.symlink("elsewhere", root / "link")
    with repo.objects.transaction() as txn:
        t3, _ = snapshot(txn, root, ".")
    (root / "link").unlink()
    [added] = diff_views(repo.objects, [t1], [t2])
    assert (added.path, added.status, added.kind_b) == ("link", "added", "link")
    [changed] = diff_views(repo.objects, [t2], [t3])
    assert (changed.path, changed.status, changed.changed_bytes) == ("link", "changed", 9)


# --- values and sections ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (1.0, "1"),
        (0.3333, "0.3333"),
        (0.001, "0.001"),
        (1e-05, "0.00001"),
        (1e-07, "1e-7"),
        (1.5e-10, "1.5e-10"),
        (1e21, "1e+21"),
        (123456789.0, "123456789"),
        (-2.5, "-2.5"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (3, "3"),
        (True, "true"),
        (None, "null"),
        ("adam", "adam"),
        ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
    ],
)
def test_value_str(value: object, text: str) -> None:
    assert value_str(value) == text


def test_map_diff_compares_what_is_shown() -> None:
    rows = map_diff(
        {"int_float": 1, "nan": math.nan, "same": "x", "only_a": 1, "lr": 0.01},
        {"int_float": 1.0, "nan": math.nan, "same": "x", "only_b": 2, "lr": 0.001},
    )
    assert [(r.key, r.a, r.b) for r in rows] == [
        ("lr", 0.01, 0.001),
        ("only_a", 1, MISSING),
        ("only_b", MISSING, 2),
    ]


def test_map_diff_times_to_the_second() -> None:
    sec = 1_000_000_000
    assert map_diff({"Created": 5 * sec + 1}, {"Created": 5 * sec + 2}, frozenset({"Created"})) == []
    assert len(map_diff({"Created": 5 * sec}, {"Created": 6 * sec}, frozenset({"Created"}))) == 1
