"""Per-chunk compression. The codec is recorded per stored entry, so the policy can change
without changing any ID.

Codecs: 0 = raw, 1 = zstd. A chunk is stored raw when zstd saves less than 3% (random or
already-compressed data; fp32 weights save about 8% and stay compressed).
"""

from __future__ import annotations

import threading

import zstandard

RAW = 0
ZSTD = 1
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd"}

DATA_LEVEL = 1  # binary chunks: zstd-1 is as good as zstd-3 on floats and ~40% faster
TEXT_LEVEL = 3  # text-like chunks and metadata objects
MIN_SAVING = 0.03

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cs = getattr(_local, "c", None)
    if cs is None:
        cs = _local.c = {}
    c = cs.get(level)
    if c is None:
        c = cs[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def looks_like_text(data: bytes | memoryview) -> bool:
    """Git's heuristic: no NUL byte in the first 8000 bytes."""
    return b"\x00" not in bytes(data[:8000])


def compress(data: bytes | memoryview, level: int | None = None) -> tuple[int, bytes]:
    """Compress one chunk. Returns (codec, stored bytes); raw when zstd saves < 3%."""
    if level is None:
        level = TEXT_LEVEL if looks_like_text(data) else DATA_LEVEL
    n = len(data)
    if n < 64:
        return RAW, bytes(data)
    out = _compressor(level).compress(data)
    if len(out) > n * (1.0 - MIN_SAVING):
        return RAW, bytes(data)
    return ZSTD, out


def decompress(codec: int, stored: bytes | memoryview, raw_len: int) -> bytes:
    """Inverse of :func:`compress`. Raises ValueError on a bad codec or size."""
    if codec == RAW:
        out = bytes(stored)
    elif codec == ZSTD:
        try:
            # Never trust the frame's own size field for allocation: check it first.
            declared = zstandard.frame_content_size(stored)
            if declared != raw_len:
                raise ValueError(f"zstd frame declares {declared} bytes, expected {raw_len}")
            out = _decompressor().decompress(stored, max_output_size=raw_len)
        except (zstandard.ZstdError, MemoryError) as e:
            raise ValueError(f"zstd: {e}") from None
    else:
        raise ValueError(f"unknown codec {codec}")
    if len(out) != raw_len:
        raise ValueError(f"decoded {len(out)} bytes, expected {raw_len}")
    return out
