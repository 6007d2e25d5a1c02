"""Object IDs: BLAKE3-256 digests, shown as 64 hex characters.

Chunks are hashed raw. Structured objects (file, segment, tree, experiment, checkpoint) are
hashed in BLAKE3's key-derivation mode with a fixed context string, so no chunk can ever share an
ID with a structured object whose encoding happens to equal the chunk's bytes.
"""

from __future__ import annotations

import re

import blake3

ID_BYTES = 32
HEX_LEN = 64
SHORT_LEN = 7
OBJECT_CONTEXT = "replicate 2026-11 structured object v1"

_HEX_RE = re.compile(r"^[0-9a-f]+$")


def hash_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """ID of a chunk: BLAKE3-256 of its raw bytes."""
    return blake3.blake3(data).digest()


def hash_object(canonical: bytes | bytearray | memoryview) -> bytes:
    """ID of a structured object: BLAKE3-256 (derive-key mode) of its canonical encoding."""
    return blake3.blake3(canonical, derive_key_context=OBJECT_CONTEXT).digest()


def to_hex(oid: bytes) -> str:
    """Full 64-character hex form of an ID."""
    return oid.hex()


def short(oid: bytes | str) -> str:
    """The 7-character short form shown in tables."""
    h = oid if isinstance(oid, str) else oid.hex()
    return h[:SHORT_LEN]


def from_hex(text: str) -> bytes:
    """Parse a full 64-character hex ID. Raises ValueError on anything else."""
    t = text.strip().lower()
    if len(t) != HEX_LEN or not _HEX_RE.match(t):
        raise ValueError(f"not a 64-character hex object ID: {text!r}")
    return bytes.fromhex(t)


def is_hex_prefix(text: str) -> bool:
    """True if ``text`` could be a (prefix of a) hex ID."""
    t = text.strip().lower()
    return 0 < len(t) <= HEX_LEN and bool(_HEX_RE.match(t))
