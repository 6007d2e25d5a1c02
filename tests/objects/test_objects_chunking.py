"""Property tests of content-defined chunking, block-wise file chunking and per-chunk
compression."""

from __future__ import annotations

import io
import random
import struct
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from replicate.objects import chunker, compress, ingest

PROPS = settings(deadline=None, derandomize=True, max_examples=50)


# A buffer described by parts, so that examples mix incompressible runs (content-defined cuts),
# long constant runs (max-size cuts) and short periodic text.
def lengths(hi: int) -> st.SearchStrategy[int]:
    """Any length up to ``hi``, biased towards long runs (several chunks)."""
    return st.one_of(st.integers(1, hi), st.integers(hi // 4, hi), st.integers(hi // 4, hi))


part = st.one_of(
    st.tuples(st.just("random"), lengths(1_500_000), st.integers(0, 2**32)),
    st.tuples(st.just("zeros"), lengths(2_500_000), st.just(0)),
    st.tuples(st.just("text"), lengths(600_000), st.integers(0, 2**32)),
)


def build(parts: list[tuple[str, int, int]]) -> bytes:
    out = []
    for kind, n, seed in parts:
        if kind == "random":
            out.append(random.Random(seed).randbytes(n))
        elif kind == "zeros":
            out.append(bytes(n))
        else:
            line = f"step {seed} loss={seed % 997 / 1000:.3f}\n".encode()
            out.append((line * (n // len(line) + 1))[:n])
    return b"".join(out)


buffers = st.lists(part, min_size=1, max_size=4).map(build)
small_buffers = st.binary(max_size=3 * chunker.MIN_SIZE)


def check_chunks(data: bytes, chunks: list[Any]) -> None:
    assert b"".join(bytes(c) for c in chunks) == data
    if not data:
        assert chunks == []
        return
    assert all(len(c) > 0 for c in chunks)
    for c in chunks[:-1]:
        assert chunker.MIN_SIZE <= len(c) <= chunker.MAX_SIZE
    assert len(chunks[-1]) <= chunker.MAX_SIZE


def test_chunker_is_compiled() -> None:
    # The pure-Python fallback is ~400x slower: it must never be picked up silently.
    assert chunker.is_compiled()


@PROPS
@given(buffers)
def test_cut_concatenates_to_input_within_bounds(data: bytes) -> None:
    chunks = list(chunker.cut(data))
    check_chunks(data, chunks)
    assert chunker.boundaries(data) == [len(c) for c in chunks]


@PROPS
@given(small_buffers)
def test_cut_of_small_buffers(data: bytes) -> None:
    chunks = list(chunker.cut(data))
    check_chunks(data, chunks)
    if 0 < len(data) <= chunker.MIN_SIZE:
        assert len(chunks) == 1


@PROPS
@given(buffers, st.integers(0, 200_000), st.integers(0, 2**32))
def test_cut_resynchronises_after_an_insertion(data: bytes, at: int, seed: int) -> None:
    """Content-defined: a small insertion changes only the chunks around it."""
    at = min(at, len(data))
    edited = data[:at] + random.Random(seed).randbytes(100) + data[at:]
    before = {bytes(c) for c in chunker.cut(data)}
    after = [bytes(c) for c in chunker.cut(edited)]
    changed = sum(len(c) for c in after if c not in before)
    # Touched: the chunk holding the insertion and at most a couple of neighbours.
    assert changed <= 3 * chunker.MAX_SIZE + 100


class ShortReads(io.RawIOBase):
    """A reader that returns at most ``limit`` bytes per call (as pipes and some FUSE mounts do)."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.f = io.BytesIO(data)
        self.limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        mv = memoryview(b)[: self.limit]
        return self.f.readinto(mv)


blocks = st.one_of(
    st.sampled_from(
        [
            16_384,
            chunker.MIN_SIZE - 1,
            chunker.MIN_SIZE,
            chunker.MIN_SIZE + 1,
            chunker.AVG_SIZE,
            chunker.MAX_SIZE - 1,
            chunker.MAX_SIZE,
            chunker.MAX_SIZE + 1,
            4 * chunker.MAX_SIZE,
        ]
    ),
    st.integers(16_384, 3 * chunker.MAX_SIZE),
)


@PROPS
@given(buffers, blocks, st.booleans())
def test_file_chunks_match_whole_buffer_cut(data: bytes, block: int, short: bool) -> None:
    expected = chunker.boundaries(data)
    f = ShortReads(data, 7_777) if short else io.BytesIO(data)
    got = [bytes(c) for c in ingest.file_chunks(f, block=block)]
    assert [len(c) for c in got] == expected
    assert b"".join(got) == data


@pytest.mark.parametrize("block", [1, 1000, 65_537])
def test_file_chunks_with_tiny_blocks(block: int) -> None:
    data = random.Random(block).randbytes(300_000 if block > 1 else 70_000)
    got = [bytes(c) for c in ingest.file_chunks(io.BytesIO(data), block=block)]
    assert [len(c) for c in got] == chunker.boundaries(data)
    assert b"".join(got) == data


@pytest.mark.parametrize("n", [0, 1, chunker.MIN_SIZE, chunker.MIN_SIZE + 1])
def test_file_chunks_edge_sizes(n: int) -> None:
    data = random.Random(n).randbytes(n)
    got = [bytes(c) for c in ingest.file_chunks(io.BytesIO(data), block=chunker.MIN_SIZE)]
    assert got == [bytes(c) for c in chunker.cut(data)]


# --- compression ------------------------------------------------------------------------------


def expected_codec(data: bytes, level: int | None) -> int:
    """The policy, restated: text-like or forced level -> zstd; binary with a predictable
    byte position -> bg4; then raw when the saving is under 3%."""
    if len(data) < 64:
        return compress.RAW
    binary = level is None and not compress.looks_like_text(data)
    if binary and len(data) >= compress.BG4_MIN_SIZE and compress.bg4_planes(compress.probe(data)):
        c, stored = compress.compress(data)
        ok = len(stored) <= len(data) * (1 - compress.MIN_SAVING)
        return compress.BG4 if ok else compress.RAW
    if level is None:
        level = compress.TEXT_LEVEL if compress.looks_like_text(data) else compress.DATA_LEVEL
    out = zstandard.ZstdCompressor(level=level).compress(data)
    return compress.RAW if len(out) > len(data) * (1 - compress.MIN_SAVING) else compress.ZSTD


def floats(seed: int, n: int, scale: float, dtype: str) -> bytes:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(dtype).tobytes()


mixed = st.tuples(st.integers(0, 2**32), st.integers(0, 200_000), st.floats(0, 1)).map(
    # A random run followed by zeros: the saving sweeps across the 3% threshold.
    lambda t: random.Random(t[0]).randbytes(int(t[1] * t[2])) + bytes(t[1] - int(t[1] * t[2]))
)
# Weights-like arrays of every common float width, cut at any offset (chunks start anywhere).
weights = st.builds(
    lambda seed, n, scale, dtype, cut: floats(seed, n, scale, dtype)[cut:],
    st.integers(0, 2**32), st.integers(1, 60_000), st.sampled_from([1.0, 0.02, 1e4]),
    st.sampled_from(["float32", "float16", "float64"]), st.integers(0, 7),
)  # fmt: skip


@PROPS
@given(st.one_of(st.binary(max_size=5000), mixed, weights), st.sampled_from([None, 1, 3]))
def test_compress_round_trip_and_raw_rule(data: bytes, level: int | None) -> None:
    c, stored = compress.compress(data, level)
    assert compress.decompress(c, stored, len(data)) == data
    if c == compress.RAW:
        assert stored == data
    else:
        assert len(stored) <= len(data) * (1 - compress.MIN_SAVING)
    assert c == expected_codec(data, level)
    c2, parts, size = compress.compress_parts(data, level)
    assert (c2, b"".join(parts), size) == (c, stored, len(stored))
    out = np.full(len(data) + compress.ENCODE_SLACK, 0xAA, np.uint8)
    c3, n, _ = compress.encode_into(data, out, level)
    assert (c3, out[:n].tobytes()) == (c, stored)  # the pipeline's in-place encoder agrees


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_float_weights_are_byte_grouped_and_save_more_than_zstd(dtype: str, cut: int) -> None:
    """bg4 finds the exponent plane at any alignment and beats zstd-1 on the whole chunk."""
    data = floats(cut, 300_000, 0.02, dtype)[cut : cut + chunker.AVG_SIZE]
    c, stored = compress.compress(data)
    assert c == compress.BG4
    assert len(stored) < len(zstandard.ZstdCompressor(level=1).compress(data))
    assert compress.decompress(c, stored, len(data)) == data


def test_bg4_layout() -> None:
    """docs/format.md section 6: mask byte, u32 frame lengths, planes in order, tail."""
    data = floats(1, 70_000, 1.0, "float32")[:262_147]  # q = 65536 planes bytes, tail 3
    c, stored = compress.compress(data)
    q = len(data) // 4
    assert c == compress.BG4 and stored[0] == 0b1000  # only the exponent plane compressed
    (n,) = struct.unpack_from("<I", stored, 1)
    planes = [stored[5 + i * q : 5 + (i + 1) * q] for i in range(3)]
    assert planes == [data[i : 4 * q : 4] for i in range(3)]
    frame = stored[5 + 3 * q : 5 + 3 * q + n]
    assert zstandard.ZstdDecompressor().decompress(frame) == data[3 : 4 * q : 4]
    assert stored[5 + 3 * q + n :] == data[4 * q :]


def test_bg4_rejects_bad_layouts() -> None:
    data = floats(2, 70_000, 1.0, "float32")
    c, stored = compress.compress(data)
    assert c == compress.BG4
    for bad in (b"", b"\x10" + stored[1:], stored[:-1], stored + b"\0", stored[:3]):
        with pytest.raises(ValueError):
            compress.decompress(c, bad, len(data))
    with pytest.raises(ValueError):
        compress.decompress(c, stored, len(data) + 4)


def test_random_bytes_are_stored_raw() -> None:
    data = random.Random(5).randbytes(chunker.AVG_SIZE)
    c, stored = compress.compress(data)
    assert c == compress.RAW and stored == data


def test_text_is_compressed() -> None:
    data = b"epoch 1 loss 0.25\n" * 10_000
    c, stored = compress.compress(data)
    assert c == compress.ZSTD and len(stored) < len(data) // 10
    assert compress.decompress(c, stored, len(data)) == data


def test_decompress_rejects_wrong_length_and_codec() -> None:
    data = b"x" * 1000
    c, stored = compress.compress(data)
    with pytest.raises(ValueError):
        compress.decompress(c, stored, 999)
    with pytest.raises(ValueError):
        compress.decompress(compress.RAW, data, 1001)
    with pytest.raises(ValueError):
        compress.decompress(7, data, 1000)
    with pytest.raises(ValueError):
        compress.decompress(compress.ZSTD, b"not zstd at all", 1000)


@settings(deadline=None, derandomize=True, max_examples=60)
@given(st.integers(0, 2**32), st.data())
def test_decompress_of_damaged_frames_raises_value_error(seed: int, data: Any) -> None:
    """Flips anywhere in a zstd or bg4 entry: bytes of the right length or ValueError, nothing
    else."""
    if seed % 2:
        raw = (f"seed {seed} ".encode() * 500)[: 4000 + seed % 1000]
        c, stored = compress.compress(raw, compress.TEXT_LEVEL)
        assert c == compress.ZSTD
    else:
        raw = floats(seed, 5000 + seed % 1000, 1.0, "float32")[seed % 4 :]
        c, stored = compress.compress(raw)
        assert c == compress.BG4
    for _ in range(10):
        i = data.draw(st.integers(0, len(stored) - 1))
        bad = bytearray(stored)
        bad[i] ^= data.draw(st.integers(1, 255))
        try:
            out = compress.decompress(c, bytes(bad), len(raw))
        except ValueError:
            continue
        assert len(out) == len(raw)


@pytest.mark.parametrize("mask", [0x40, 0x80, 0xC0])
def test_decompress_of_frame_with_flipped_size_flag_raises_value_error(mask: int) -> None:
    """The frame's own content-size field must never size an allocation (a flipped flag makes
    it claim up to 2**64 bytes): ValueError, not MemoryError."""
    raw = b"hello world " * 1000
    c, stored = compress.compress(raw, compress.TEXT_LEVEL)
    assert c == compress.ZSTD
    bad = bytearray(stored)
    bad[4] ^= mask  # Frame_Header_Descriptor bits 6-7: the size of Frame_Content_Size
    with pytest.raises(ValueError):
        compress.decompress(c, bytes(bad), len(raw))


@pytest.mark.parametrize("mask", range(16))
@pytest.mark.parametrize("kind", ["fp32", "random", "zeros"])
def test_encode_into_with_any_plane_hint_round_trips(mask: int, kind: str) -> None:
    """A hint carried over from a neighbouring chunk may be wrong: never the bytes."""
    data = {
        "fp32": floats(mask, 30_000, 1.0, "float32")[1:],
        "random": random.Random(mask).randbytes(100_003),
        "zeros": bytes(70_001),
    }[kind]
    out = np.zeros(len(data) + compress.ENCODE_SLACK, np.uint8)
    c, n, used = compress.encode_into(data, out, None, mask)
    assert used == mask
    assert compress.decompress(c, out[:n].tobytes(), len(data)) == data
    assert n <= len(data)
