"""Property tests of the structured-object codec: round trips, stable IDs, name validation, and
decoding of damaged bytes (which must raise CorruptObjectError and nothing else)."""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from replicate.errors import CorruptObjectError
from replicate.objects import codec
from replicate.objects.codec import (
    GOALS,
    KINDS,
    Checkpoint,
    ChunkRef,
    Experiment,
    File,
    Segment,
    SegmentRef,
    Tree,
    TreeEntry,
)
from replicate.objects.ids import hash_object

PROPS = settings(deadline=None, derandomize=True, max_examples=150)
FEW = settings(deadline=None, derandomize=True, max_examples=40)

# --- strategies -------------------------------------------------------------------------------

ids32 = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=24)

chunk_refs = st.builds(ChunkRef, ids32, st.integers(0, 2**32))
files_with_chunks = st.lists(chunk_refs, max_size=20).map(
    lambda cs: File(sum(c.size for c in cs), tuple(cs))
)
segment_refs = st.builds(SegmentRef, ids32, st.integers(0, 2**40), st.integers(1, 1024))
files_with_segments = st.lists(segment_refs, min_size=1, max_size=10).map(
    lambda ss: File(sum(s.size for s in ss), (), tuple(ss))
)
segments = st.lists(chunk_refs, max_size=30).map(lambda cs: Segment(tuple(cs)))


def _valid_name(name: str) -> bool:
    try:
        codec.check_name(name)
    except ValueError:
        return False
    return True


names = st.text(min_size=1, max_size=20).filter(_valid_name)
tree_entries = st.builds(
    TreeEntry, names, st.integers(0, 0o7777), st.sampled_from(KINDS), ids32, st.integers(0, 2**40)
)
trees = st.lists(tree_entries, max_size=12, unique_by=lambda e: e.name).map(codec.make_tree)

# User data: msgpack values with every float (NaN, +-Inf, -0.0), nested maps and lists.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
    | st.text(max_size=12)
)
user_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
user_maps = st.dictionaries(st.text(max_size=12), user_values, max_size=6)

gits = st.none() | st.fixed_dictionaries(
    {"commit": st.none() | text, "branch": st.none() | text, "dirty": st.booleans()}
)
experiments = st.builds(
    Experiment,
    created_ns=i64,
    nonce=st.binary(max_size=16),
    params=user_maps,
    path=st.none() | text,
    code=st.none() | ids32,
    user=text,
    host=text,
    command=text,
    python_version=text,
    packages=st.lists(st.tuples(text, text), max_size=5).map(tuple),
    git=gits,
    system=user_maps,
    replicate_version=text,
)
checkpoints = st.builds(
    Checkpoint,
    experiment=ids32,
    parent=st.none() | ids32,
    created_ns=i64,
    step=i64,
    path=st.none() | text,
    files=st.none() | ids32,
    metrics=user_maps,
    primary_metric=st.none() | st.tuples(text, st.sampled_from(GOALS)),
)
structured = files_with_chunks | files_with_segments | segments | trees | experiments | checkpoints

# --- helpers ----------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN, -0.0 differs from 0.0 and types must match
    exactly (True is not 1, 1 is not 1.0, a list is not a tuple)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return a == b


def test_same_helper_is_strict() -> None:
    assert same({"a": [math.nan, 1]}, {"a": [math.nan, 1]})
    assert not same(1, True)
    assert not same(1, 1.0)
    assert not same(0.0, -0.0)
    assert not same([1], (1,))
    assert not same({"a": 1}, {"a": 1, "b": 2})


# --- round trips ------------------------------------------------------------------------------


@PROPS
@given(structured)
def test_round_trip_and_stable_id(obj: codec.StructuredObject) -> None:
    data = codec.encode(obj)
    back = codec.decode(data)
    assert type(back) is type(obj)
    assert same(back, obj)
    assert codec.encode(back) == data  # canonical: re-encoding gives the same bytes
    assert codec.object_id(back) == codec.object_id(obj) == hash_object(data)
    assert codec.type_code(back) == codec.type_code(obj)
    assert same(codec.decode_verified(codec.object_id(obj), data), obj)


@PROPS
@given(experiments)
@example(
    Experiment(
        created_ns=-1,
        nonce=b"",
        params={
            "nan": math.nan,
            "inf": math.inf,
            "-inf": -math.inf,
            "neg zero": -0.0,
            "nested": {"b": [1, 2.5, None, True, False], "a": {"x": "ünïcødé ✓ 日本"}},
            "list": [math.nan, [math.inf, {"k": None}]],
            "big": 2**64 - 1,
            "small": -(2**63),
        },
        path=None,
        code=None,
        user="",
        host="h",
        command="train.py --lr 0.1",
        python_version="3.11.9",
        packages=(("numpy", "2.0"), ("torch", "2.4")),
        git={"commit": None, "branch": "main", "dirty": True},
        system={"gpus": [{"name": "A100", "memory": 40.0}], "os": "Linux"},
        replicate_version="0.0.0",
    )
)
def test_experiment_params_survive(exp: Experiment) -> None:
    back = codec.decode(codec.encode(exp))
    assert isinstance(back, Experiment)
    assert same(back.params, exp.params)
    assert same(back.system, exp.system)
    assert back.git == exp.git
    assert codec.object_id(back) == codec.object_id(exp)


@PROPS
@given(st.dictionaries(st.text(max_size=8), user_values, max_size=6), st.randoms())
def test_param_key_order_does_not_change_the_id(params: dict[str, Any], rnd: Any) -> None:
    items = list(params.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    base = dict(experiment=b"e" * 32, parent=None, created_ns=0, step=0, path=None, files=None)
    a = Checkpoint(**base, metrics=params)
    b = Checkpoint(**base, metrics=shuffled)
    assert codec.encode(a) == codec.encode(b)


@PROPS
@given(checkpoints)
@example(
    Checkpoint(
        experiment=b"\x01" * 32,
        parent=None,
        created_ns=1_700_000_000_000_000_000,
        step=3,
        path="model.pth",
        files=b"\x02" * 32,
        metrics={"val_loss": math.nan, "acc": math.inf, "worst": -math.inf, "n": 3, "ok": True},
        primary_metric=("val_loss", "minimize"),
    )
)
def test_checkpoint_metrics_survive(cp: Checkpoint) -> None:
    back = codec.decode(codec.encode(cp))
    assert isinstance(back, Checkpoint)
    assert same(back.metrics, cp.metrics)
    assert back.primary_metric == cp.primary_metric
    assert codec.object_id(back) == codec.object_id(cp)


def test_floats_are_always_float64() -> None:
    # 0.1 is not representable in float32: a float32 encoding would change the value.
    cp = Checkpoint(b"\x00" * 32, None, 0, 0, None, None, metrics={"x": 0.1})
    data = codec.encode(cp)
    assert struct.pack(">Bd", 0xCB, 0.1) in data
    assert codec.decode(data).metrics["x"] == 0.1


# --- names ------------------------------------------------------------------------------------


@PROPS
@given(st.lists(tree_entries, max_size=12, unique_by=lambda e: e.name), st.randoms())
def test_make_tree_sorts_by_utf8_bytes(entries: list[TreeEntry], rnd: Any) -> None:
    rnd.shuffle(entries)
    tree = codec.make_tree(entries)
    keys = [e.name.encode("utf-8") for e in tree.entries]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert codec.make_tree(list(reversed(entries))) == tree


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/etc", "../x", "a\x00b", "a\\b", "\x00"])
def test_make_tree_rejects_unsafe_names(bad: str) -> None:
    entry = TreeEntry(bad, 0o644, codec.KIND_FILE, b"\x00" * 32, 0)
    with pytest.raises(ValueError):
        codec.make_tree([entry])


def test_make_tree_rejects_duplicates_and_bad_kinds() -> None:
    e = TreeEntry("a", 0o644, codec.KIND_FILE, b"\x00" * 32, 0)
    with pytest.raises(ValueError):
        codec.make_tree([e, e])
    with pytest.raises(ValueError):
        codec.make_tree([TreeEntry("a", 0o644, "socket", b"\x00" * 32, 0)])


@pytest.mark.parametrize("bad", ["/abs", "..", "../x", "a/../../x", "a\x00", "", "C:x"])
def test_check_relpath_rejects_escapes(bad: str) -> None:
    with pytest.raises(ValueError):
        codec.check_relpath(bad)


@pytest.mark.parametrize(
    ("path", "norm"), [(".", "."), ("./a/b/", "a/b"), ("a//b", "a/b"), ("a/../b", "b")]
)
def test_check_relpath_normalises(path: str, norm: str) -> None:
    assert codec.check_relpath(path) == norm


def test_decode_rejects_unsorted_or_duplicate_tree_entries() -> None:
    a = TreeEntry("a", 0o644, codec.KIND_FILE, b"\x00" * 32, 0)
    b = TreeEntry("b", 0o644, codec.KIND_FILE, b"\x00" * 32, 0)
    for entries in ((b, a), (a, a)):
        with pytest.raises(CorruptObjectError):
            codec.decode(codec.encode(Tree(entries)))


def test_decode_rejects_inconsistent_file_size() -> None:
    f = File(10, (ChunkRef(b"\x00" * 32, 9),))
    with pytest.raises(CorruptObjectError):
        codec.decode(codec.encode(f))


# --- damaged bytes ----------------------------------------------------------------------------


def _decode_or_corrupt(data: bytes) -> None:
    """decode either succeeds or raises CorruptObjectError (anything else fails the test)."""
    try:
        obj = codec.decode(data)
    except CorruptObjectError:
        return
    assert codec.type_code(obj) in codec.TYPE_NAMES


@FEW
@given(structured)
def test_every_truncation_is_corrupt(obj: codec.StructuredObject) -> None:
    data = codec.encode(obj)
    oid = codec.object_id(obj)
    for n in range(len(data)):
        with pytest.raises(CorruptObjectError):
            codec.decode(data[:n])
        with pytest.raises(CorruptObjectError):
            codec.decode_verified(oid, data[:n])
    with pytest.raises(CorruptObjectError):
        codec.decode(data + b"\x00")  # trailing garbage


@PROPS
@given(structured, st.data())
def test_flipped_bytes_never_raise_anything_else(obj: codec.StructuredObject, data: Any) -> None:
    enc = codec.encode(obj)
    oid = codec.object_id(obj)
    for _ in range(8):
        i = data.draw(st.integers(0, len(enc) - 1), label="offset")
        mask = data.draw(st.integers(1, 255), label="mask")
        bad = bytearray(enc)
        bad[i] ^= mask
        _decode_or_corrupt(bytes(bad))
        with pytest.raises(CorruptObjectError) as ei:
            codec.decode_verified(oid, bytes(bad), location="somewhere")
        assert oid.hex() in str(ei.value)


@FEW
@given(
    st.sampled_from([files_with_chunks, segments, trees, experiments, checkpoints]).flatmap(
        lambda s: s
    )
)
def test_every_single_bit_flip_of_small_objects(obj: codec.StructuredObject) -> None:
    enc = codec.encode(obj)
    oid = codec.object_id(obj)
    for i in range(min(len(enc), 200)):
        for bit in range(8):
            bad = bytearray(enc)
            bad[i] ^= 1 << bit
            _decode_or_corrupt(bytes(bad))
            with pytest.raises(CorruptObjectError):
                codec.decode_verified(oid, bytes(bad))


@PROPS
@given(st.binary(max_size=200))
def test_garbage_is_corrupt_or_valid(blob: bytes) -> None:
    _decode_or_corrupt(blob)


# A well-formed experiment as a msgpack value, to be damaged field by field.
EXP: list[Any] = [
    "experiment", 1, 0, b"nonce", {"lr": 1}, None, None, "u", "h", "c", "3.11",
    [["numpy", "2.0"]], [None, None, False], {}, "0.1",
]  # fmt: skip


def test_exp_template_is_valid() -> None:
    import msgpack

    assert isinstance(codec.decode(msgpack.packb(EXP, use_bin_type=True)), Experiment)


@pytest.mark.parametrize(
    "value",
    [
        [],
        ["file"],
        ["file", 2, 0, [], []],  # unknown version
        ["blob", 1],  # unknown type
        ["tree", 1, [["a", 0o644, "socket", b"\x00" * 32, 0]]],  # unknown kind
        ["tree", 1, [["a", True, "file", b"\x00" * 32, 0]]],  # bool is not an int
        ["tree", 1, [["a", 0o644, "file", b"\x00" * 31, 0]]],  # short id
        ["file", 1, -1, [], []],  # negative size
        ["checkpoint", 1, b"\x00" * 32, None, 0, 0, None, None, {}, ["m", "sideways"]],
        ["checkpoint", 1, b"\x00" * 32, None, 0, 0, None, None, {1: 2}, None],
        {"type": "file"},
        "file",
        EXP[:12] + [[None, None, 1]] + EXP[13:],  # git dirty is not a bool
        EXP[:12] + [[None, None]] + EXP[13:],  # git has 2 fields
        EXP[:3] + ["nonce"] + EXP[4:],  # nonce is not bytes
        EXP[:11] + [[["numpy"]]] + EXP[12:],  # package without a version
        EXP[:4] + [{"lr": 1, 2: 3}] + EXP[5:],  # a non-string param name
        EXP[:6] + [b"\x00" * 31] + EXP[7:],  # code tree id too short
        EXP[:-1],  # a field missing
    ],
)
def test_malformed_values_are_corrupt(value: Any) -> None:
    import msgpack

    with pytest.raises(CorruptObjectError):
        codec.decode(msgpack.packb(value, use_bin_type=True))


def test_corrupt_error_names_object_and_location() -> None:
    with pytest.raises(CorruptObjectError) as ei:
        codec.decode(b"\xc1", object_id="ab" * 32, location="packs/x.pack")
    assert ei.value.object_id == "ab" * 32
    assert ei.value.location == "packs/x.pack"
    assert "ab" * 32 in str(ei.value) and "packs/x.pack" in str(ei.value)


def test_children_of_every_type() -> None:
    """The references gc, sync and fsck follow: links' targets count as chunks; a tombstoned
    checkpoint keeps its experiment and parent, not its files."""
    a, b, c, d = (bytes([i]) * 32 for i in range(1, 5))
    cp = codec.Checkpoint(a, b, 1, 2, "m.pth", c, {"loss": 1.0})
    assert codec.children(cp) == ([a, b, c], [])
    assert codec.children(cp, with_files=False) == ([a, b], [])
    first = codec.Checkpoint(a, None, 1, 0, None, None, {})
    assert codec.children(first) == ([a], [])
    tree = codec.make_tree([codec.TreeEntry("f", 0o644, codec.KIND_FILE, a, 1),
                            codec.TreeEntry("l", 0o777, codec.KIND_LINK, b, 1),
                            codec.TreeEntry("t", 0o755, codec.KIND_TREE, c, 0)])
    assert codec.children(tree) == ([a, c], [b])
    f = codec.File(20, (), (codec.SegmentRef(a, 10, 1), codec.SegmentRef(b, 10, 1)))
    assert codec.children(f) == ([a, b], [])
    assert codec.children(codec.File(3, (codec.ChunkRef(d, 3),))) == ([], [d])
    assert codec.children(codec.Segment((codec.ChunkRef(c, 1), codec.ChunkRef(d, 1)))) == ([], [c, d])
