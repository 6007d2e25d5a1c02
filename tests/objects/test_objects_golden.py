"""Golden vectors: they freeze the on-disk format. If one of these fails, the chunk boundaries,
hashes or encodings changed, so every existing repository would stop deduplicating against new
data, or stop verifying. Never "fix" a value here without a format version bump.

Inputs come from ``random.Random`` (its byte stream is stable across CPython versions), never from
NumPy, whose generators may change.
"""

from __future__ import annotations

import math
import random
import string

from replicate.objects import chunker, codec, compress, ids
from replicate.objects.codec import (
    KIND_FILE,
    KIND_LINK,
    KIND_TREE,
    Checkpoint,
    ChunkRef,
    Experiment,
    File,
    Segment,
    SegmentRef,
    TreeEntry,
    make_tree,
)
from replicate.repository import repository_config


def ID(c: int) -> bytes:
    return bytes([c]) * 32


def random_buffer() -> bytes:
    return random.Random(1234).randbytes(3_000_000)


def text_buffer() -> bytes:
    """5 MB of a ~217 KB pseudo-random text block, repeated."""
    r = random.Random(7)
    vocab = [
        "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(2, 9)))
        for _ in range(500)
    ]
    lines = [
        f"{i:05d} " + " ".join(r.choice(vocab) for _ in range(r.randint(3, 12))) + "\n"
        for i in range(4000)
    ]
    block = "".join(lines).encode()
    return (block * (5_000_000 // len(block) + 1))[:5_000_000]


def periodic_buffer() -> bytes:
    """5 MB of one short line repeated: no content-defined cut, only max-size cuts."""
    line = b"epoch 17: loss=0.1234 accuracy=0.9876 lr=0.001 -- the quick brown fox\n"
    return (line * (5_000_000 // len(line) + 1))[:5_000_000]


# --- chunker ----------------------------------------------------------------------------------


def test_chunker_parameters() -> None:
    assert (chunker.MIN_SIZE, chunker.AVG_SIZE, chunker.MAX_SIZE) == (65536, 262144, 1048576)
    assert chunker.PARAMS == {
        "algorithm": "fastcdc-2020",
        "implementation": "pyfastcdc==0.3.1",
        "min": 65536,
        "avg": 262144,
        "max": 1048576,
        "normalization": 1,
        "seed": 0,
    }
    assert repository_config()["chunker"] == chunker.PARAMS


def test_random_buffer_boundaries() -> None:
    assert chunker.boundaries(random_buffer()) == [
        417245, 172389, 553221, 355547, 89002, 402423, 381215, 628958,
    ]  # fmt: skip


def test_text_buffer_boundaries() -> None:
    assert chunker.boundaries(text_buffer()) == [
        290732, 288217, 305584, 276191, 288217, 305584, 276191, 288217, 305584,
        276191, 288217, 305584, 276191, 288217, 305584, 276191, 288217, 71091,
    ]  # fmt: skip


def test_periodic_buffer_boundaries() -> None:
    assert chunker.boundaries(periodic_buffer()) == [1048576, 1048576, 1048576, 1048576, 805696]


def test_small_buffers_are_one_chunk() -> None:
    assert chunker.boundaries(b"") == []
    assert chunker.boundaries(b"x") == [1]
    assert chunker.boundaries(bytes(chunker.MIN_SIZE)) == [chunker.MIN_SIZE]


# --- hashes -----------------------------------------------------------------------------------


def test_chunk_hashes() -> None:
    assert ids.hash_chunk(b"").hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )
    assert ids.hash_chunk(b"replicate").hex() == (
        "c470230001a030fdca1ff3d9760c22d3545752dcc1fa85290b203c1b6a472ae4"
    )


def test_object_hashes_are_domain_separated() -> None:
    assert ids.OBJECT_CONTEXT == "replicate 2026-11 structured object v1"
    assert ids.hash_object(b"replicate").hex() == (
        "ce6e89bcdf906b644ad682ae9684b7b6e621d46bba8474d30ff48884108b8eef"
    )
    assert ids.hash_object(b"").hex() == (
        "12c792b6cf304b12a39fd76e6c10cb5240ccfbc251cc002572547d51b6434fd0"
    )
    assert ids.hash_object(b"replicate") != ids.hash_chunk(b"replicate")


def test_id_text_forms() -> None:
    oid = ids.hash_chunk(b"replicate")
    assert ids.to_hex(oid) == oid.hex() and len(ids.to_hex(oid)) == ids.HEX_LEN
    assert ids.short(oid) == "c470230" == ids.short(oid.hex())
    assert ids.from_hex(" " + oid.hex().upper() + "\n") == oid
    for bad in ("c470230", oid.hex() + "0", "g" * 64, ""):
        try:
            ids.from_hex(bad)
        except ValueError:
            continue
        raise AssertionError(f"from_hex accepted {bad!r}")
    assert ids.is_hex_prefix("c47") and ids.is_hex_prefix("C47")
    assert not ids.is_hex_prefix("") and not ids.is_hex_prefix("xyz")
    assert not ids.is_hex_prefix("a" * 65)


# --- structured objects -----------------------------------------------------------------------

FILE = File(300, (ChunkRef(ID(1), 100), ChunkRef(ID(2), 200)))
FILE_SEGMENTED = File(5000, (), (SegmentRef(ID(3), 2000, 7), SegmentRef(ID(4), 3000, 9)))
SEGMENT = Segment((ChunkRef(ID(5), 10), ChunkRef(ID(6), 20)))
TREE = make_tree(
    [
        TreeEntry("train.py", 0o755, KIND_FILE, ID(7), 1234),
        TreeEntry("data", 0o755, KIND_TREE, ID(8), 99),
        TreeEntry("latest", 0o777, KIND_LINK, ID(9), 9),
        TreeEntry("ünï.txt", 0o644, KIND_FILE, ID(14), 0),
    ]
)
EXPERIMENT = Experiment(
    created_ns=1_700_000_000_123_456_789,
    nonce=bytes(range(16)),
    params={
        "lr": 0.01,
        "layers": [64, 32],
        "nan": math.nan,
        "inf": math.inf,
        "opt": {"name": "adam", "betas": [0.9, 0.999]},
        "flag": True,
        "none": None,
    },
    path=".",
    code=ID(10),
    user="alice",
    host="gpu-1",
    command="train.py --lr 0.01",
    python_version="3.11.9",
    packages=(("numpy", "1.26.4"), ("torch", "2.3.0")),
    git={"commit": "a" * 40, "branch": "main", "dirty": False},
    system={"os": "Linux", "cpu": "x86_64", "gpus": []},
    replicate_version="0.1.0",
)
CHECKPOINT = Checkpoint(
    experiment=ID(11),
    parent=ID(12),
    created_ns=1_700_000_001_000_000_000,
    step=5,
    path="model.pth",
    files=ID(13),
    metrics={"val_loss": 0.125, "acc": -math.inf, "bad": math.nan},
    primary_metric=("val_loss", "minimize"),
)


def test_object_ids() -> None:
    got = {
        "file": codec.object_id(FILE).hex(),
        "file with segments": codec.object_id(FILE_SEGMENTED).hex(),
        "segment": codec.object_id(SEGMENT).hex(),
        "tree": codec.object_id(TREE).hex(),
        "experiment": codec.object_id(EXPERIMENT).hex(),
        "checkpoint": codec.object_id(CHECKPOINT).hex(),
    }
    assert got == {
        "file": "9b2bbfe33c855545e54b004d1bb5ee104954bc9731626c0aa87c4d0c83725a2d",
        "file with segments": "39bc8967e030d5f08d4affcdbad45b6620102558a03c65997bb625b200005de8",
        "segment": "c674454a59ddae20c227c40c0ef20ccaed49435eb3b39e5b3d48b2f360cf84c9",
        "tree": "fa0b8f575bd4da65f8a46ddda6ce41a3bef8e46be321f497bdb2d8cb7a0a8799",
        "experiment": "ba33545e4a83cbc07515d686824231c83dba088d6d59c18117c38beb2c950a19",
        "checkpoint": "2af4626d5723bfba7646dd660bc9336013ed3ae308101e4e1b6ffea442a5eb32",
    }


def test_small_tree_encoding() -> None:
    tree = make_tree(
        [
            TreeEntry("b", 0o644, KIND_FILE, ID(0xBB), 3),
            TreeEntry("a", 0o755, KIND_TREE, ID(0xAA), 0),
        ]
    )
    assert codec.encode(tree).hex() == (
        "93a474726565019295a161cd01eda474726565c420"
        + "aa" * 32
        + "0095a162cd01a4a466696c65c420"
        + "bb" * 32
        + "03"
    )


def test_type_codes() -> None:
    assert codec.TYPE_NAMES == {
        0: "chunk", 1: "file", 2: "segment", 3: "tree", 4: "experiment", 5: "checkpoint",
    }  # fmt: skip
    assert (compress.RAW, compress.ZSTD) == (0, 1)
