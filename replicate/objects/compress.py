"""Per-chunk compression. The codec is recorded per stored entry, so the policy can change
without changing any ID.

Codecs:

- 0 = raw;
- 1 = zstd: one zstd frame of the whole chunk;
- 2 = bg4-zstd ("byte-grouped, 4 planes"): the chunk's bytes split by position modulo 4 into
  four planes, each stored raw or as its own zstd frame (layout in docs/format.md section 6).
  Floating-point weights put their sign and exponent bits in one byte of every 4 (fp32) or 2
  (fp16, bf16): that plane compresses about 3x, the mantissa planes not at all. Compressing
  only that plane saves twice what zstd-1 saves on the whole chunk (16.6% against 7.6% on fp32
  N(0,1)) for 60% of its CPU time (docs/performance.md, "Compression").

Policy (any choice is readable): text-like chunks and structured objects zstd-3; binary chunks
are probed (distinct byte values per position modulo 4 in a 512-byte sample): when one
position is much more predictable than another, bg4-zstd; otherwise zstd-1. A chunk is
stored raw whenever the encoding saves less than 3% (random or already-compressed data).
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING, Any

import zstandard

if TYPE_CHECKING:
    import numpy as np

RAW = 0
ZSTD = 1
BG4 = 2
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BG4: "bg4-zstd"}

DATA_LEVEL = 1  # binary chunks: zstd-1 is as good as zstd-3 on floats and ~40% faster
TEXT_LEVEL = 3  # text-like chunks and metadata objects
MIN_SAVING = 0.03

# bg4 policy (see probe and bg4_planes). Planes with more than PLANE_COMPRESS_MAX distinct
# values of the 64 sampled are stored without trying (uniform bytes give 57 +- 2.5). BG4_SPREAD:
# the least varied plane must have this many times fewer values than the most varied one
# (float64 weights: 32-36 against 56-59; int8 or uint8 data: 41-46 against 45-52).
BG4_MIN_SIZE = 16 * 1024
PROBE_PIECES = 4
PROBE_PIECE = 64
PLANE_COMPRESS_MAX = 50
BG4_SPREAD = 1.5
# Plane frames: zstd's fast strategy with a 7-byte minimum match. An exponent plane has few
# long repeats and many short ones; chasing the short ones (level 1: min match 6... 4) costs
# 3-4x the time for a worse ratio (2.58x against 2.98x, measured on fp32 N(0,1)).
_PLANE_PARAMS = dict(
    window_log=18, chain_log=6, hash_log=6, search_log=1, min_match=7, target_length=0,
    strategy=zstandard.STRATEGY_FAST, write_content_size=True,
)  # fmt: skip

Buffer = bytes | bytearray | memoryview
ENCODE_SLACK = 64  # stored bytes never exceed raw bytes + this (bg4 header 17, tail 3)
Parts = list[Buffer]  # stored bytes as a sequence of buffers (written with one writev)

_local = threading.local()
_np: Any = None


def _numpy() -> Any:
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return _np


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cs = getattr(_local, "c", None)
    if cs is None:
        cs = _local.c = {}
    c = cs.get(level)
    if c is None:
        if level == BG4:  # not a level: the plane compressor's key
            params = zstandard.ZstdCompressionParameters(**_PLANE_PARAMS)
            c = zstandard.ZstdCompressor(compression_params=params)
        else:
            c = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cs[level] = c
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def looks_like_text(data: Buffer) -> bool:
    """Git's heuristic: no NUL byte in the first 8000 bytes."""
    return b"\x00" not in bytes(data[:8000])


# -- the bg4 probe ---------------------------------------------------------------------------


def probe(data: Buffer) -> list[int]:
    """For each plane k (bytes at offset % 4 == k), the number of distinct values among its
    64 sampled bytes (PROBE_PIECES pieces spread over ``data``, aligned so that every piece
    starts on plane 0). Uniform bytes give about 57; the sign-and-exponent plane of float
    weights 7-11 (fp32, bf16) to 30-34 (fp16).

    It runs for every binary chunk, so it is plain bytes operations (6 us, no NumPy
    call: an earlier histogram-entropy probe with NumPy cost 2x more CPU in the pipeline
    than alone, as its calls dropped and retook the GIL). ``data`` must hold at least
    PROBE_PIECES * PROBE_PIECE bytes."""
    step = len(data) // PROBE_PIECES & ~3
    sample = b"".join(bytes(data[i * step : i * step + PROBE_PIECE]) for i in range(PROBE_PIECES))
    return [len(set(sample[k::4])) for k in range(4)]


def bg4_planes(distinct: list[int]) -> int:
    """The planes worth compressing as a bit mask, or 0 when byte grouping does not pay: it
    pays when some plane is much more predictable than another (structure with a period of
    2 or 4 bytes: floats, small integers)."""
    if min(distinct) * BG4_SPREAD > max(distinct):
        return 0
    return sum(1 << k for k, d in enumerate(distinct) if d <= PLANE_COMPRESS_MAX)


def _bg4_into(data: Buffer, planes_mask: int, out: np.ndarray) -> int:
    """Encode as codec 2 straight into ``out``, trying zstd on the planes in ``planes_mask``:
    the planes are transposed into place, each compressed plane's frame overwrites the start of
    its own plane and the raw planes after it move down. A plane whose frame comes out no
    smaller stays raw (the encoding starts again without it: rare). Returns the length."""
    np = _numpy()
    q, t = divmod(len(data), 4)
    nc = bin(planes_mask).count("1")
    h = 1 + 4 * nc
    planes = out[h : h + 4 * q].reshape(4, q)
    np.copyto(planes, np.frombuffer(data, np.uint8, count=4 * q).reshape(q, 4).T)
    comp = _compressor(BG4)
    lens: list[int] = []
    cur = h
    for k in range(4):
        src = h + k * q
        if planes_mask >> k & 1:
            frame = comp.compress(planes[k])
            if len(frame) >= q:
                return _bg4_into(data, planes_mask & ~(1 << k), out)
            out.data[cur : cur + len(frame)] = frame
            lens.append(len(frame))
            cur += len(frame)
        else:
            if cur != src:
                out[cur : cur + q] = out[src : src + q]  # NumPy copes with the overlap
            cur += q
    struct.pack_into(f"<B{nc}I", out.data, 0, planes_mask, *lens)
    if t:
        out.data[cur : cur + t] = memoryview(data)[4 * q :]
    return cur + t


def _bg4_decode(stored: Buffer, raw_len: int) -> bytes:
    np = _numpy()
    mv = memoryview(stored)
    q, t = divmod(raw_len, 4)
    if not len(mv) or mv[0] & 0xF0:
        raise ValueError("bg4: bad plane mask")
    mask = mv[0]
    nc = bin(mask).count("1")
    pos = 1 + 4 * nc
    if len(mv) < pos:
        raise ValueError("bg4: truncated header")
    lens = list(struct.unpack_from(f"<{nc}I", mv, 1))
    if len(mv) != pos + sum(lens) + (4 - nc) * q + t:
        raise ValueError(f"bg4: {len(mv)} stored bytes do not match the header")
    out = bytearray(raw_len)
    grid = np.frombuffer(out, np.uint8, count=4 * q).reshape(q, 4)
    for k in range(4):
        if mask >> k & 1:
            n = lens.pop(0)
            plane = _zstd_decode(mv[pos : pos + n], q)
        else:
            n = q
            plane = mv[pos : pos + n]
        grid[:, k] = np.frombuffer(plane, np.uint8)
        pos += n
    if t:
        out[4 * q :] = mv[pos:]
    return bytes(out)


def _zstd_decode(stored: Buffer, raw_len: int) -> bytes:
    try:
        # Never trust the frame's own size field for allocation: check it first.
        declared = zstandard.frame_content_size(stored)
        if declared != raw_len:
            raise ValueError(f"zstd frame declares {declared} bytes, expected {raw_len}")
        out = _decompressor().decompress(stored, max_output_size=raw_len)
    except (zstandard.ZstdError, MemoryError) as e:
        raise ValueError(f"zstd: {e}") from None
    if len(out) != raw_len:
        raise ValueError(f"decoded {len(out)} bytes, expected {raw_len}")
    return out


# -- the public functions --------------------------------------------------------------------


def encode_into(
    data: Buffer, out: np.ndarray, level: int | None = None, planes: int | None = None
) -> tuple[int, int, int | None]:
    """Compress one chunk into ``out`` (a uint8 array of at least ``len(data) + ENCODE_SLACK``
    bytes); raw when the encoding saves < 3%. ``level`` forces whole-chunk zstd at that level;
    ``planes``: the bg4 plane mask to use instead of probing (the ingest pipeline knows the
    neighbouring chunk's). Writing into the caller's buffer saves the pipeline a copy: bg4
    planes are transposed straight into the pack write buffer.

    Returns (codec, stored length, bg4 plane mask used), the mask None when none was
    considered (text, small chunk or a forced level)."""
    n = len(data)
    mask: int | None = None
    if n >= 64:
        if level is None:
            if looks_like_text(data):
                level = TEXT_LEVEL
            else:
                level = DATA_LEVEL
                if n >= BG4_MIN_SIZE:
                    mask = bg4_planes(probe(data)) if planes is None else planes
        if mask:
            size = _bg4_into(data, mask, out)
            if size <= n * (1.0 - MIN_SAVING):
                return BG4, size, mask
        else:
            z = _compressor(level).compress(data)
            if len(z) <= n * (1.0 - MIN_SAVING):
                out.data[: len(z)] = z
                return ZSTD, len(z), mask
    out.data[:n] = data
    return RAW, n, mask


def compress_parts(data: Buffer, level: int | None = None) -> tuple[int, Parts, int]:
    """:func:`encode_into` a new buffer. Returns (codec, stored bytes as buffers, length)."""
    out = _numpy().empty(len(data) + ENCODE_SLACK, "u1")
    c, size, _ = encode_into(data, out, level)
    return c, [out.data[:size]], size


def compress(data: Buffer, level: int | None = None) -> tuple[int, bytes]:
    """Compress one chunk. Returns (codec, stored bytes); see :func:`encode_into`."""
    c, parts, _ = compress_parts(data, level)
    return c, bytes(parts[0])


def decompress(codec: int, stored: Buffer, raw_len: int) -> bytes:
    """Inverse of :func:`compress`. Raises ValueError on a bad codec, layout or size."""
    if codec == RAW:
        out = bytes(stored)
        if len(out) != raw_len:
            raise ValueError(f"decoded {len(out)} bytes, expected {raw_len}")
        return out
    if codec == ZSTD:
        return _zstd_decode(stored, raw_len)
    if codec == BG4:
        return _bg4_decode(stored, raw_len)
    raise ValueError(f"unknown codec {codec}")
