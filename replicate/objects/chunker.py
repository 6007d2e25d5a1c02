"""Content-defined chunking (FastCDC-2020 via pyfastcdc, pinned).

Parameters are part of the on-disk format: the same bytes must cut at the same boundaries on
every machine, so they are fixed here, recorded in the repository config and frozen by golden
tests. pyfastcdc's real mean chunk is avg + min (about 320 KiB here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyfastcdc

MIN_SIZE = 64 * 1024
AVG_SIZE = 256 * 1024
MAX_SIZE = 1024 * 1024
NORMALIZATION = 1
SEED = 0

PARAMS = {
    "algorithm": "fastcdc-2020",
    "implementation": "pyfastcdc==0.3.1",
    "min": MIN_SIZE,
    "avg": AVG_SIZE,
    "max": MAX_SIZE,
    "normalization": NORMALIZATION,
    "seed": SEED,
}

_CHUNKER = pyfastcdc.FastCDC(
    AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=NORMALIZATION, seed=SEED
)


def is_compiled() -> bool:
    """True when pyfastcdc's compiled extension is in use (the fallback is ~400x slower)."""
    return pyfastcdc.FastCDC.__module__ == "pyfastcdc.cy.fastcdc"


def cut(buf: bytes | bytearray | memoryview) -> Iterator[memoryview]:
    """Split ``buf`` into content-defined chunks; yields memoryviews into ``buf``.

    Buffers no longer than MIN_SIZE are one chunk; the empty buffer yields nothing.
    """
    mv = memoryview(buf).cast("B")
    n = len(mv)
    if n == 0:
        return
    if n <= MIN_SIZE:
        yield mv
        return
    for c in _CHUNKER.cut_buf(mv):
        yield mv[c.offset : c.offset + c.length]


def boundaries(buf: bytes | bytearray | memoryview) -> list[int]:
    """Chunk lengths of ``buf``, in order (for tests and tools)."""
    return [len(c) for c in cut(buf)]
