"""The object store: transactions, the index, dedup, large files (segments), lazy verified reads,
index rebuild, and what happens when pack or index bytes are damaged."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicate import fsck
from replicate.errors import CorruptObjectError, DoesNotExist
from replicate.objects import chunker, codec, compress, index, ingest, pack, reader, store
from replicate.objects.codec import Checkpoint, ChunkRef, File, Segment, TreeEntry
from replicate.objects.ids import hash_chunk
from replicate.objects.store import ObjectStore
from replicate.repository import Repository


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def text(n: int, seed: int) -> bytes:
    line = f"{seed}: the loss went down, the accuracy went up\n".encode()
    return (line * (n // len(line) + 1))[:n]


def floats(n: int, seed: int) -> bytes:
    """Like fp32 weights: random normal float32 (n bytes, n a multiple of 4)."""
    return np.random.default_rng(seed).standard_normal(n // 4, dtype=np.float32).tobytes()


def index_files(root: Path) -> list[Path]:
    return sorted((root / "index").glob("*.idx"))


# --- transactions and visibility ---------------------------------------------------------------


def test_commit_makes_objects_visible_to_another_store(repo: Repository) -> None:
    chunks = [rand(100_000, 1), text(50_000, 2), b"", b"tiny"]
    with repo.objects.transaction() as txn:
        cids = [txn.put_chunk(c) for c in chunks]
        tree = codec.make_tree([TreeEntry("a", 0o644, codec.KIND_FILE, cids[0], len(chunks[0]))])
        tid = txn.put_object(tree)
        # Not visible to anyone else before commit.
        assert not ObjectStore(repo.root).has(tid)
    other = ObjectStore(repo.root)  # a fresh instance, as another process would open it
    for cid, data in zip(cids, chunks):
        assert other.has(cid)
        assert other.read_chunk(cid) == data
        assert other.type_of(cid) == codec.CHUNK
    assert other.read_object(tid) == tree
    assert other.type_of(tid) == codec.TREE
    # A store opened *before* the commit sees it after refresh (has() refreshes on a miss).
    assert ObjectStore(repo.root).read_raw(tid) == codec.encode(tree)


def test_store_opened_earlier_sees_later_commits(repo: Repository) -> None:
    early = ObjectStore(repo.root)
    with repo.objects.transaction() as txn:
        cid = txn.put_chunk(b"later")
    assert early.has(cid)  # refreshes once on a miss
    assert early.read_chunk(cid) == b"later"


def test_abort_leaves_nothing_indexed(repo: Repository) -> None:
    txn = repo.objects.transaction()
    cid = txn.put_chunk(rand(70_000, 3))
    oid = txn.put_object(Segment((ChunkRef(cid, 70_000),)))
    assert txn.has(cid) and txn.has(oid)
    txn.abort()
    other = ObjectStore(repo.root)
    assert not other.has(cid) and not other.has(oid)
    assert not repo.objects.has(cid)
    assert index_files(repo.root) == []
    assert list((repo.root / "tmp").iterdir()) == []  # temp packs removed
    with pytest.raises(RuntimeError):
        txn.commit()


def test_exception_inside_transaction_aborts(repo: Repository) -> None:
    with pytest.raises(ZeroDivisionError):
        with repo.objects.transaction() as txn:
            cid = txn.put_chunk(b"doomed")
            raise ZeroDivisionError
    assert not ObjectStore(repo.root).has(cid)
    assert index_files(repo.root) == []


def test_empty_transaction_writes_nothing(repo: Repository) -> None:
    with repo.objects.transaction() as txn:
        pass
    assert txn.closed
    assert index_files(repo.root) == [] and repo.objects.list_packs() == []


def test_missing_object(repo: Repository) -> None:
    oid = b"\x42" * 32
    assert not repo.objects.has(oid)
    assert repo.objects.type_of(oid) is None
    with pytest.raises(DoesNotExist) as ei:
        repo.objects.read_raw(oid)
    assert oid.hex() in str(ei.value)


def test_read_object_of_a_chunk_is_corrupt(repo: Repository) -> None:
    with repo.objects.transaction() as txn:
        cid = txn.put_chunk(b"just bytes")
    with pytest.raises(CorruptObjectError):
        repo.objects.read_object(cid)


def test_metadata_and_data_go_to_separate_packs(repo: Repository) -> None:
    with repo.objects.transaction() as txn:
        cid = txn.put_chunk(rand(100_000, 4))
        oid = txn.put_object(File(100_000, (ChunkRef(cid, 100_000),)))
    s = repo.objects
    assert s.locate(cid).pack != s.locate(oid).pack
    assert len(s.list_packs()) == 2


def test_ids_ending_in_nul_bytes(repo: Repository) -> None:
    """IDs live in fixed-width numpy byte strings, which strip trailing NULs on access."""
    datas = []
    i = 0
    while len(datas) < 3:
        d = f"nul {i}".encode()
        if hash_chunk(d)[-1] == 0:
            datas.append(d)
        i += 1
    with repo.objects.transaction() as txn:
        oids = [txn.put_chunk(d) for d in datas]
    other = ObjectStore(repo.root)
    for oid, d in zip(oids, datas):
        assert other.has(oid) and other.read_chunk(oid) == d
    assert other.index.contains_many(oids).all()
    assert fsck.fsck(repo, read_data=True).ok


def test_many_segments_merge(repo: Repository) -> None:
    written = []
    for i in range(20):
        with repo.objects.transaction() as txn:
            written.append((txn.put_chunk(f"chunk {i}".encode()), f"chunk {i}".encode()))
    assert len(index_files(repo.root)) == 20
    other = ObjectStore(repo.root)
    assert len(other.index) == 20
    for oid, data in written:
        assert repo.objects.read_chunk(oid) == data
        assert other.read_chunk(oid) == data
    found = other.index.contains_many([w[0] for w in written] + [b"\x00" * 32, b"\xff" * 32])
    assert found.tolist() == [True] * 20 + [False, False]


def test_data_packs_roll_over(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "DATA_PACK_TARGET", 300_000)
    blobs = [rand(120_000, 100 + i) for i in range(12)]
    with repo.objects.transaction() as txn:
        oids = [txn.put_chunk(b) for b in blobs]
    other = ObjectStore(repo.root)
    packs = {other.locate(o).pack for o in oids}
    assert len(packs) >= 4  # sealed in the background as each pack filled up
    assert [other.read_chunk(o) for o in oids] == blobs
    assert len(index_files(repo.root)) == 1  # still one index segment per commit


# --- dedup --------------------------------------------------------------------------------------


def test_same_chunk_twice_is_stored_once(repo: Repository) -> None:
    data = rand(200_000, 5)
    with repo.objects.transaction() as txn:
        a = txn.put_chunk(data)
        b = txn.put_chunk(data)
        assert a == b
        assert txn.new_objects == 1
        assert txn.new_bytes == len(data)  # random: stored raw, counted once
    entries = [
        e for p in repo.objects.list_packs() for e in fsck.read_pack_entries(repo.objects, p)
    ]
    assert [e.id for e in entries] == [a]
    with repo.objects.transaction() as txn2:
        assert txn2.put_chunk(data) == a
        assert txn2.new_objects == 0 and txn2.new_bytes == 0
    assert len(index_files(repo.root)) == 1  # the second commit wrote nothing


def test_ingest_dedups_repeated_content(repo: Repository) -> None:
    block = rand(600_000, 6)
    data = block * 8  # the same chunks over and over once the chunker is in phase
    with repo.objects.transaction() as txn:
        f = ingest.ingest_bytes(txn, data)
        first = txn.new_bytes
        fid = txn.put_object(f)
    assert f.size == len(data)
    distinct = {c.id: c.size for c in f.chunks}
    assert first == sum(distinct.values())  # random bytes are stored raw, each chunk once
    assert txn.new_objects == len(distinct) + 1
    assert first < len(data) // 2
    assert sum(c.size for c in f.chunks) == len(data)
    with repo.objects.transaction() as txn:
        f2 = ingest.ingest_bytes(txn, data)
        assert txn.new_bytes == 0 and txn.new_objects == 0
        assert txn.put_object(f2) == fid
    assert b"".join(reader.iter_content(repo.objects, f)) == data


def test_ingest_file_equals_ingest_bytes(repo: Repository, tmp_path: Path) -> None:
    data = rand(1_500_000, 7) + text(700_000, 7)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    with repo.objects.transaction() as txn:
        with open(p, "rb") as fh:
            from_file = ingest.ingest_file(txn, fh)
        from_bytes = ingest.ingest_bytes(txn, data)
    assert from_file == from_bytes
    assert [c.size for c in from_file.chunks] == chunker.boundaries(data)
    assert [c.id for c in from_file.chunks] == [hash_chunk(c) for c in chunker.cut(data)]


@pytest.mark.parametrize("block", [100_000, chunker.MAX_SIZE, 2_500_000])
def test_ingest_file_in_small_blocks(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Chunks cut at a read-block end are re-cut with the next block: same boundaries as one
    pass over the whole buffer."""
    monkeypatch.setattr(ingest, "BLOCK", block)
    data = rand(1_300_000, 20) + text(900_000, 21) + bytes(2_600_000) + rand(500_000, 22)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    with repo.objects.transaction() as txn:
        with open(p, "rb") as fh:
            f = ingest.ingest_file(txn, fh)
    assert [c.size for c in f.chunks] == chunker.boundaries(data)
    assert b"".join(reader.iter_content(ObjectStore(repo.root), f)) == data


def test_ingest_of_mixed_content_codecs_and_round_trip(repo: Repository, tmp_path: Path) -> None:
    """A file of fp32 weights (at an odd offset), random bytes, text and fp16 weights: the
    probe's verdict carried between a batch's chunks still gives bg4 for every float chunk
    (what probing each chunk gives), and everything reads back, with a clean fsck."""
    half = np.random.default_rng(9).standard_normal(600_000).astype(np.float16).tobytes()
    data = b"abc" + floats(6_000_000, 8) + rand(1_500_000, 9) + text(700_000, 9) + half
    p = tmp_path / "mixed.bin"
    p.write_bytes(data)
    with repo.objects.transaction() as txn:
        with open(p, "rb") as fh:
            f = ingest.ingest_file(txn, fh)
        txn.put_object(f)
    s = ObjectStore(repo.root)
    assert b"".join(reader.iter_content(s, f)) == data
    pos = 0
    for c, piece in zip(f.chunks, chunker.cut(data)):
        expected = compress.compress(piece)[0]
        got = s.locate(c.id).codec
        inside_floats = pos + len(piece) <= 6_000_003 or pos >= len(data) - len(half)
        if inside_floats:
            assert got == expected == compress.BG4, pos
        pos += len(piece)
    assert not fsck.fsck(repo).errors


def test_transaction_counts_stored_bytes_not_padding(repo: Repository) -> None:
    data = floats(3_000_000, 4)
    with repo.objects.transaction() as txn:
        f = ingest.ingest_bytes(txn, data)
    stored = sum(repo.objects.locate(c.id).stored_len for c in f.chunks)
    assert txn.new_bytes == stored < len(data) * 0.9


@pytest.mark.parametrize("n", [0, 1, ingest.SMALL_FILE, ingest.SMALL_FILE + 1])
def test_ingest_small_sizes(repo: Repository, n: int) -> None:
    data = rand(n, n)
    with repo.objects.transaction() as txn:
        f = ingest.ingest_file(txn, io.BytesIO(data))
        txn.put_object(f)
    assert f.size == n
    assert len(f.chunks) == (0 if n == 0 else len(chunker.boundaries(data)))
    assert b"".join(reader.iter_content(repo.objects, f)) == data


# --- large files: segments -----------------------------------------------------------------------


def synthetic_refs(n: int, seed: int) -> list[ChunkRef]:
    r = random.Random(seed)
    return [ChunkRef(r.randbytes(32), r.randint(1, 1 << 20)) for _ in range(n)]


def test_small_files_have_no_segments(repo: Repository) -> None:
    refs = synthetic_refs(codec.SEGMENT_THRESHOLD, 1)
    with repo.objects.transaction() as txn:
        f = ingest.make_file(txn, refs)
        assert txn.new_objects == 0
    assert f.chunks == tuple(refs) and f.segments == ()
    assert f.size == sum(r.size for r in refs)


def test_large_files_are_segmented(repo: Repository) -> None:
    refs = synthetic_refs(3 * codec.SEGMENT_THRESHOLD + 17, 2)
    # Force a run longer than SEGMENT_MAX with no content-defined boundary.
    for i in range(100, 100 + codec.SEGMENT_MAX + 50):
        if refs[i].id[0] == 0:
            refs[i] = ChunkRef(b"\x01" + refs[i].id[1:], refs[i].size)
    with repo.objects.transaction() as txn:
        f = ingest.make_file(txn, refs)
        fid = txn.put_object(f)
    assert f.chunks == () and len(f.segments) > 1
    assert f.size == sum(r.size for r in refs)
    other = ObjectStore(repo.root)
    flat: list[ChunkRef] = []
    for s in f.segments:
        seg = other.read_object(s.id)
        assert isinstance(seg, Segment)
        assert 1 <= len(seg.chunks) <= codec.SEGMENT_MAX
        assert s.count == len(seg.chunks) and s.size == sum(c.size for c in seg.chunks)
        # A segment ends at a content-defined boundary or at the cap.
        assert (
            seg.chunks[-1].id[0] == 0 or len(seg.chunks) == codec.SEGMENT_MAX or s is f.segments[-1]
        )
        assert all(c.id[0] != 0 for c in seg.chunks[:-1])
        flat.extend(seg.chunks)
    assert flat == refs
    assert any(s.count == codec.SEGMENT_MAX for s in f.segments)
    stored = other.read_object(fid)
    assert stored == f
    assert reader.file_chunk_refs(other, stored) == refs
    assert list(ingest.iter_file_chunks(stored, other.read_object)) == refs  # type: ignore[arg-type]


def test_segments_survive_an_insertion(repo: Repository) -> None:
    """A chunk inserted at the start changes the first segment only (O(1) new metadata)."""
    refs = synthetic_refs(4000, 3)
    with repo.objects.transaction() as txn:
        before = ingest.make_file(txn, refs)
        edited = ingest.make_file(txn, [ChunkRef(b"\x07" * 32, 10)] + refs)
    old = {s.id for s in before.segments}
    new = [s.id for s in edited.segments]
    assert len(before.segments) > 5
    assert sum(s not in old for s in new) == 1
    assert new[1:] == [s.id for s in before.segments][1:]


# --- FileReader -----------------------------------------------------------------------------------

# ~6 MB: raw, zstd and bg4-zstd chunks
BIG = rand(2_000_000, 8) + text(1_500_000, 8) + floats(1_200_000, 3) + rand(1_700_000, 9)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[ObjectStore, File]:
    root = tmp_path_factory.mktemp("reader") / ".replicate"
    repo = Repository.init(root)
    src = root.parent / "big.bin"
    src.write_bytes(BIG)
    with repo.objects.transaction() as txn:
        with open(src, "rb") as fh:
            f = ingest.ingest_file(txn, fh)
        fid = txn.put_object(f)
    s = ObjectStore(root)
    stored = reader.read_file_object(s, fid)
    assert stored == f and len(f.chunks) > 10
    codecs = {s.locate(c.id).codec for c in f.chunks}
    assert codecs == {compress.RAW, compress.ZSTD, compress.BG4}
    return s, f


class ReadAheadStore(ObjectStore):
    """A local store that asks FileReader to read ahead (as remote stores do), counting calls."""

    coalesces_reads = True
    calls = 0

    def read_chunks(self, oids: list[bytes]) -> list[bytes]:
        ReadAheadStore.calls += 1
        return super().read_chunks(oids)


@settings(deadline=None, derandomize=True, max_examples=60)
@given(
    st.lists(st.tuples(st.integers(0, len(BIG) + 100), st.integers(0, 1_500_000)), max_size=8),
    st.booleans(),
)
def test_file_reader_random_seeks(
    big_file: tuple[ObjectStore, File], ops: list[Any], read_ahead: bool
) -> None:
    s, f = big_file
    if read_ahead:
        s = ReadAheadStore(s.root)
    r = reader.FileReader(s, f)
    for off, n in ops:
        assert r.seek(off) == off
        buf = bytearray(n)
        got = r.readinto(buf)
        assert bytes(buf[:got]) == BIG[off : off + n]
        assert r.tell() == min(off + n, max(off, len(BIG)))


def test_file_reader_whence_and_readall(big_file: tuple[ObjectStore, File]) -> None:
    s, f = big_file
    with reader.open_file(s, f, name="big.bin") as fh:
        assert fh.seekable() and fh.readable()
        assert fh.read() == BIG
        assert fh.read(10) == b""
        assert fh.seek(-10, io.SEEK_END) == len(BIG) - 10
        assert fh.read() == BIG[-10:]
        fh.seek(1000)
        fh.seek(500, io.SEEK_CUR)
        assert fh.read(4) == BIG[1500:1504]
        with pytest.raises(ValueError):
            fh.seek(-1)
    r = reader.FileReader(s, f)
    r.seek(len(BIG) - 3_000_000)
    assert r.readall() == BIG[-3_000_000:]


def test_file_reader_reads_ahead_when_sequential_only(big_file: tuple[ObjectStore, File]) -> None:
    s, f = big_file
    store = ReadAheadStore(s.root)
    ReadAheadStore.calls = 0
    r = reader.FileReader(store, f)
    assert r.readall() == BIG
    assert 0 < ReadAheadStore.calls <= 6  # windows of 2, 4, 8, ... chunks
    ReadAheadStore.calls = 0
    r = reader.FileReader(store, f)
    for off in (3_000_000, 100, 5_000_000):  # seeks and short reads: no read-ahead
        r.seek(off)
        assert r.read(10) == BIG[off : off + 10]
    assert ReadAheadStore.calls == 0


def test_file_reader_verifies_chunks(repo: Repository, flip: Any) -> None:
    data = rand(1_500_000, 10)
    with repo.objects.transaction() as txn:
        f = ingest.ingest_bytes(txn, data)
    loc = repo.objects.locate(f.chunks[1].id)
    flip(repo.objects.pack_path(loc.pack), loc.offset + 5)
    r = reader.FileReader(ObjectStore(repo.root), f)
    assert r.read(f.chunks[0].size) == data[: f.chunks[0].size]  # chunk 0 still fine
    with pytest.raises(CorruptObjectError) as ei:
        r.read(10)
    assert f.chunks[1].id.hex() in str(ei.value)


# --- index rebuild --------------------------------------------------------------------------------


def test_rebuild_index_restores_every_object(repo: Repository) -> None:
    made: dict[bytes, bytes] = {}
    for i in range(3):
        with repo.objects.transaction() as txn:
            for j in range(4):
                d = rand(40_000 + j * 30_000, 10 * i + j)
                made[txn.put_chunk(d)] = d
            tree = codec.make_tree([TreeEntry(f"f{i}", 0o644, codec.KIND_FILE, b"\x01" * 32, 1)])
            made[txn.put_object(tree)] = codec.encode(tree)
    for p in index_files(repo.root):
        p.unlink()
    blind = Repository.open(repo.root)
    assert not any(blind.objects.has(o) for o in made)
    packs, objects = fsck.rebuild_index(blind)
    assert (packs, objects) == (len(repo.objects.list_packs()), len(made))
    assert len(index_files(repo.root)) == 1
    fresh = ObjectStore(repo.root)
    for oid, raw in made.items():
        assert fresh.read_raw(oid) == raw
    assert fsck.fsck(Repository.open(repo.root), read_data=True).ok


def test_rebuild_index_replaces_existing_segments(repo: Repository) -> None:
    with repo.objects.transaction() as txn:
        a = txn.put_chunk(b"a")
    with repo.objects.transaction() as txn:
        b = txn.put_chunk(b"b")
    before = set(index_files(repo.root))
    assert len(before) == 2
    assert fsck.rebuild_index(repo) == (2, 2)
    after = set(index_files(repo.root))
    assert len(after) == 1 and not (after & before)
    fresh = ObjectStore(repo.root)
    assert fresh.read_chunk(a) == b"a" and fresh.read_chunk(b) == b"b"


def test_rebuild_index_recovers_from_a_damaged_segment(repo: Repository, flip: Any) -> None:
    with repo.objects.transaction() as txn:
        oid = txn.put_chunk(b"precious")
    (seg,) = index_files(repo.root)
    flip(seg, 30)
    fresh = Repository.open(repo.root)  # a new process running `replicate fsck --rebuild-index`
    assert not fresh.objects.has(oid)
    assert not fsck.fsck(fresh).ok
    fsck.rebuild_index(fresh)
    assert fsck.fsck(Repository.open(repo.root)).ok
    assert ObjectStore(repo.root).read_chunk(oid) == b"precious"


# --- damaged packs ----------------------------------------------------------------------------


@pytest.fixture
def packed(repo: Repository) -> tuple[Repository, dict[bytes, bytes]]:
    """A repository holding raw, zstd and bg4 chunks and structured objects; returns
    oid -> raw."""
    raw: dict[bytes, bytes] = {}
    with repo.objects.transaction() as txn:
        chunks = (rand(150_000, 11), text(30_000, 12), b"short chunk", rand(70_000, 13))
        for d in (*chunks, floats(40_000, 14)):
            raw[txn.put_chunk(d)] = d
        objs = [
            File(11, (ChunkRef(hash_chunk(b"short chunk"), 11),)),
            codec.make_tree(
                [
                    TreeEntry(f"file-{i}", 0o644, codec.KIND_FILE, bytes([i]) * 32, i)
                    for i in range(8)
                ]
            ),
            Checkpoint(b"\x01" * 32, None, 123, 4, "model.pth", b"\x02" * 32, {"loss": 0.5}),
        ]
        for o in objs:
            raw[txn.put_object(o)] = codec.encode(o)
    codecs = {repo.objects.locate(o).codec for o in raw}
    assert codecs == {compress.RAW, compress.ZSTD, compress.BG4}
    return repo, raw


def _entries(s: ObjectStore) -> list[tuple[bytes, pack.PackEntry]]:
    return [(p, e) for p in s.list_packs() for e in fsck.read_pack_entries(s, p)]


def _expect_corrupt(s: ObjectStore, oid: bytes, pack_path: Path) -> None:
    with pytest.raises(CorruptObjectError) as ei:
        s.read_raw(oid)
    assert oid.hex() in str(ei.value) and str(pack_path) in str(ei.value)
    assert ei.value.object_id == oid.hex() and ei.value.location == str(pack_path)
    if s.type_of(oid) != codec.CHUNK:
        with pytest.raises(CorruptObjectError) as ei2:
            s.read_object(oid)
        assert oid.hex() in str(ei2.value) and str(pack_path) in str(ei2.value)


def test_every_byte_of_every_entry(
    packed: tuple[Repository, dict[bytes, bytes]], flip: Any
) -> None:
    """Flip the low bit of each stored byte (sampled in big entries): reads raise
    CorruptObjectError naming the object and the pack, and never return wrong bytes."""
    repo, raw = packed
    s = ObjectStore(repo.root)
    for pid, e in _entries(s):
        path = s.pack_path(pid)
        n = e.stored_len
        positions = range(n) if n <= 600 else sorted(random.Random(n).sample(range(n), 200))
        for i in positions:
            flip(path, e.offset + i)
            try:
                _expect_corrupt(s, e.id, path)
            finally:
                flip(path, e.offset + i)
        assert s.read_raw(e.id) == raw[e.id]


@settings(deadline=None, derandomize=True, max_examples=80)
@given(st.data())
def test_random_flips_in_entries(packed_module: Any, data: Any) -> None:
    s, entries, raw, flipper = packed_module
    pid, e = data.draw(st.sampled_from(entries), label="entry")
    i = data.draw(st.integers(0, e.stored_len - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="mask")
    path = s.pack_path(pid)
    flipper(path, e.offset + i, mask)
    try:
        _expect_corrupt(s, e.id, path)
    finally:
        flipper(path, e.offset + i, mask)
    assert s.read_raw(e.id) == raw[e.id]


@pytest.fixture(scope="module")
def packed_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("flips") / ".replicate"
    repo = Repository.init(root)
    raw: dict[bytes, bytes] = {}
    with repo.objects.transaction() as txn:
        for d in (rand(5000, 1), text(3000, 2), b"abc", rand(100, 3)):
            raw[txn.put_chunk(d)] = d
        for o in (
            File(3, (ChunkRef(hash_chunk(b"abc"), 3),)),
            Checkpoint(b"\x01" * 32, None, 1, 2, None, None, {"m": [1.5] * 40}),
        ):
            raw[txn.put_object(o)] = codec.encode(o)
    s = ObjectStore(root)

    def flipper(path: Path, offset: int, mask: int) -> None:
        with open(path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ mask]))

    entries = _entries(s)
    assert {e.codec for _, e in entries} == {compress.RAW, compress.ZSTD}
    return s, entries, raw, flipper


@pytest.mark.parametrize("mask", [0x40, 0x80])
def test_flipped_zstd_frame_header_is_corrupt(repo: Repository, flip: Any, mask: int) -> None:
    """A flipped frame-size flag makes the frame claim an absurd size: CorruptObjectError, never
    MemoryError (the frame's size field must not size an allocation)."""
    tree = codec.make_tree(
        [TreeEntry(f"name-{i}", 0o644, codec.KIND_FILE, b"\x05" * 32, 1) for i in range(30)]
    )
    with repo.objects.transaction() as txn:
        oid = txn.put_object(tree)
    loc = repo.objects.locate(oid)
    assert loc.codec == compress.ZSTD
    flip(repo.objects.pack_path(loc.pack), loc.offset + 4, mask)
    _expect_corrupt(ObjectStore(repo.root), oid, repo.objects.pack_path(loc.pack))


def test_truncated_pack_is_corrupt(packed: tuple[Repository, dict[bytes, bytes]]) -> None:
    repo, raw = packed
    s = ObjectStore(repo.root)
    for pid in s.list_packs():
        path = s.pack_path(pid)
        data = path.read_bytes()
        for n in sorted(
            {0, 4, 8, 9, len(data) // 2, len(data) - 49, len(data) - 48, len(data) - 1}
        ):
            path.write_bytes(data[:n])
            with pytest.raises(CorruptObjectError):
                fsck.read_pack_entries(s, pid)
        path.write_bytes(data)


def test_every_footer_and_trailer_flip(
    packed: tuple[Repository, dict[bytes, bytes]], flip: Any
) -> None:
    repo, _ = packed
    s = ObjectStore(repo.root)
    for pid in s.list_packs():
        path = s.pack_path(pid)
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(size - pack.TRAILER_LEN)
            flen, _ = pack.parse_trailer(f.read(pack.TRAILER_LEN), str(path))
        start = size - pack.TRAILER_LEN - flen
        region = list(range(start, size)) + list(range(len(pack.HEADER)))
        for i in region:
            for mask in (0x01, 0x80):
                flip(path, i, mask)
                try:
                    with pytest.raises(CorruptObjectError) as ei:
                        fsck.read_pack_entries(s, pid)
                    assert str(path) in str(ei.value)
                finally:
                    flip(path, i, mask)
        assert fsck.read_pack_entries(s, pid)


def test_pack_is_self_describing(packed: tuple[Repository, dict[bytes, bytes]]) -> None:
    repo, raw = packed
    s = repo.objects
    found = {}
    for pid in s.list_packs():
        for e in fsck.read_pack_entries(s, pid):
            loc = s.locate(e.id)
            assert (loc.pack, loc.offset, loc.stored_len, loc.raw_len, loc.codec, loc.type) == (
                pid, e.offset, e.stored_len, e.raw_len, e.codec, e.type,
            )  # fmt: skip
            found[e.id] = e
            fsck.verify_entry(s, pid, e)
        with open(s.pack_path(pid), "rb") as f:
            assert f.read(8) == pack.HEADER
    assert set(found) == set(raw)


def test_missing_pack_is_corrupt(packed: tuple[Repository, dict[bytes, bytes]]) -> None:
    repo, raw = packed
    s = ObjectStore(repo.root)
    oid = next(iter(raw))
    path = s.pack_path(s.locate(oid).pack)
    path.unlink()
    with pytest.raises(CorruptObjectError) as ei:
        s.read_raw(oid)
    assert str(path) in str(ei.value)


# --- damaged index segments ---------------------------------------------------------------------


def test_index_segment_damage(packed: tuple[Repository, dict[bytes, bytes]]) -> None:
    repo, raw = packed
    (seg,) = index_files(repo.root)
    data = seg.read_bytes()
    name = seg.name[:-4]
    good = index.decode_segment(name, data)
    assert len(good.records) == len(raw) and len(good.packs) == 2
    for n in range(len(data)):
        with pytest.raises(CorruptObjectError):
            index.decode_segment(name, data[:n])
    for i in range(len(data)):
        for mask in (0x01, 0x10, 0x80):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(CorruptObjectError) as ei:
                index.decode_segment(name, bytes(bad))
            assert name in str(ei.value)
    # On disk: the store still opens (the index is a cache), skips the segment and says so.
    seg.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    s = ObjectStore(repo.root)
    assert list(s.index.corrupt) == [name]
    assert not any(s.has(bytes(r["id"]).ljust(32, b"\0")) for r in good.records)
    rep = fsck.fsck(Repository.open(repo.root))
    assert any(name in e for e in rep.errors), rep.errors


def test_index_segment_with_bad_pack_number_is_corrupt() -> None:
    recs = np.zeros(1, dtype=index.RECORD)
    recs[0] = (b"\x01" * 32, 3, 8, 1, 1, 0, 0, b"\0\0")
    data = index.encode_segment([b"\x02" * 32], recs)
    with pytest.raises(CorruptObjectError):
        index.decode_segment("x", data)


def test_index_segment_round_trip(tmp_path: Path) -> None:
    recs = np.zeros(3, dtype=index.RECORD)
    ids_ = [b"\x03" * 32, b"\x01" * 32, b"\x02" * 31 + b"\x00"]
    for i, oid in enumerate(ids_):
        recs[i] = (oid, i % 2, 8 + i, 10 * i, 20 * i, i % 2, codec.TREE, b"\0\0")
    packs = [b"\xaa" * 32, b"\xbb" * 32]
    name = index.write_segment(tmp_path, index.encode_segment(packs, recs, ["old"]))
    seg = index.decode_segment(name, (tmp_path / f"{name}.idx").read_bytes())
    assert seg.packs == packs and seg.supersedes == ["old"]
    assert [bytes(r).ljust(32, b"\0") for r in seg.records["id"]] == sorted(ids_)
    idx = index.Index(tmp_path)
    idx.refresh()
    loc = idx.lookup(b"\x02" * 31 + b"\x00")
    assert loc == index.Location(packs[0], 10, 20, 40, 0, codec.TREE)
    assert idx.lookup(b"\x02" * 32) is None
    assert os.listdir(tmp_path) == [f"{name}.idx"]
