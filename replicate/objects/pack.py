"""Pack file format (pure: bytes in, values out).

A pack is self-describing, so the index can always be rebuilt from packs alone::

    header   8 bytes   b"RPLPACK1"
    entries  ...       stored bytes of each object, in order (raw, zstd or bg4-zstd); zero
                       padding may separate them (direct-I/O data packs align batches)
    footer   F bytes   zstd(msgpack([1, nonce(16 B), created_ns, [[id, type, offset,
                                     stored_len, raw_len, codec], ...]]))
    trailer  48 bytes  footer_len (u64 LE) | BLAKE3-256(footer) | b"RPLPEND1"

The pack's name (its ID) is the BLAKE3 of the footer, which names every entry by its content
hash plus a random nonce: unique per write, verifiable without reading the data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3
import msgpack
import zstandard

from replicate.errors import CorruptObjectError
from replicate.objects.codec import TYPE_NAMES
from replicate.objects.compress import CODEC_NAMES
from replicate.objects.ids import ID_BYTES

HEADER = b"RPLPACK1"
TRAILER_MAGIC = b"RPLPEND1"
TRAILER = struct.Struct("<Q32s8s")
TRAILER_LEN = TRAILER.size  # 48
MAX_FOOTER = 1 << 30


@dataclass(frozen=True)
class PackEntry:
    """Where one object lies in a pack."""

    id: bytes
    type: int
    offset: int
    stored_len: int
    raw_len: int
    codec: int


def encode_footer(entries: list[PackEntry], nonce: bytes, created_ns: int) -> bytes:
    """Footer bytes for a pack holding ``entries``."""
    body = msgpack.packb(
        [
            1,
            nonce,
            created_ns,
            [[e.id, e.type, e.offset, e.stored_len, e.raw_len, e.codec] for e in entries],
        ],
        use_bin_type=True,
    )
    return zstandard.ZstdCompressor(level=3).compress(body)


def pack_id_of_footer(footer: bytes) -> bytes:
    """A pack's ID: BLAKE3 of its footer."""
    return blake3.blake3(footer).digest()


def encode_trailer(footer: bytes) -> bytes:
    """Trailer bytes following ``footer``."""
    return TRAILER.pack(len(footer), blake3.blake3(footer).digest(), TRAILER_MAGIC)


def parse_trailer(trailer: bytes, where: str) -> tuple[int, bytes]:
    """(footer_len, footer_hash) from the last 48 bytes of a pack."""
    if len(trailer) != TRAILER_LEN:
        raise CorruptObjectError("pack too short for a trailer", location=where)
    flen, fhash, magic = TRAILER.unpack(trailer)
    if magic != TRAILER_MAGIC or flen > MAX_FOOTER:
        raise CorruptObjectError("bad pack trailer", location=where)
    return flen, fhash


def decode_footer(footer: bytes, footer_hash: bytes, pack_size: int, where: str) -> list[PackEntry]:
    """Verify and decode a footer; checks every entry lies inside the data region."""
    if blake3.blake3(footer).digest() != footer_hash:
        raise CorruptObjectError("pack footer hash mismatch", location=where)
    try:
        body = zstandard.ZstdDecompressor().decompress(footer, max_output_size=MAX_FOOTER)
        value = msgpack.unpackb(body, raw=False)
        version, nonce, _created, rows = value
        if version != 1 or not isinstance(nonce, bytes) or not isinstance(rows, list):
            raise ValueError("bad footer header")
        data_end = pack_size - TRAILER_LEN - len(footer)
        out = []
        for r in rows:
            oid, typ, off, slen, rlen, codec = r
            if not (isinstance(oid, bytes) and len(oid) == ID_BYTES):
                raise ValueError("bad id")
            if typ not in TYPE_NAMES or codec not in CODEC_NAMES:
                raise ValueError("bad type or codec")
            if not (len(HEADER) <= off and off + slen <= data_end and slen >= 0 and rlen >= 0):
                raise ValueError("entry outside data region")
            out.append(PackEntry(oid, typ, off, slen, rlen, codec))
        return out
    except CorruptObjectError:
        raise
    except Exception as e:
        raise CorruptObjectError(f"undecodable pack footer ({e})", location=where) from None
