"""The local index: object ID -> (pack, offset, lengths, codec, type).

The index is a cache: it can always be rebuilt from pack footers. It is made of immutable
*segment* files in ``index/``; every commit writes one segment covering the packs it added, so
concurrent writers never touch the same file. A segment may name segments it *supersedes*
(compaction); readers ignore superseded ones.

Segment file::

    b"RPLIDX01" | u32 header_len | msgpack([1, [pack_id...], [superseded name...], created_ns])
    | N records of 56 bytes sorted by id | BLAKE3-256 of everything before (32 bytes)

A segment is named by the hex BLAKE3 of its content (``<hex>.idx``). In memory the segments are
merged into sorted NumPy arrays, searched with ``searchsorted``.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgpack
import numpy as np

from replicate.errors import CorruptObjectError
from replicate.fsutil import write_atomic
from replicate.objects.pack import PackEntry

MAGIC = b"RPLIDX01"
RECORD = np.dtype(
    [
        ("id", "S32"),
        ("pack", "<u4"),
        ("offset", "<u8"),
        ("stored", "<u4"),
        ("raw", "<u4"),
        ("codec", "u1"),
        ("type", "u1"),
        ("pad", "V2"),
    ]
)
assert RECORD.itemsize == 56


@dataclass(frozen=True)
class Location:
    """Where an object is stored."""

    pack: bytes
    offset: int
    stored_len: int
    raw_len: int
    codec: int
    type: int


@dataclass
class SegmentData:
    """One decoded index segment."""

    name: str
    packs: list[bytes]
    supersedes: list[str]
    records: np.ndarray  # RECORD, sorted by id


def records_of(sealed: list[tuple[bytes, list[PackEntry]]]) -> tuple[list[bytes], np.ndarray]:
    """The pack list and index records for packs just written: ``sealed`` pairs each pack ID
    with its entries (pack numbers are positions in the returned list)."""
    packs = [pid for pid, _ in sealed]
    recs = np.zeros(sum(len(e) for _, e in sealed), dtype=RECORD)
    i = 0
    for pno, (_, entries) in enumerate(sealed):
        for e in entries:
            recs[i] = (e.id, pno, e.offset, e.stored_len, e.raw_len, e.codec, e.type, b"\0\0")
            i += 1
    return packs, recs


def encode_segment(
    packs: list[bytes], records: np.ndarray, supersedes: list[str] | None = None
) -> bytes:
    """Bytes of a segment. ``records['pack']`` index into ``packs``; sorted here."""
    recs = np.sort(records, order="id", kind="stable") if len(records) > 1 else records
    header = msgpack.packb([1, packs, supersedes or [], time.time_ns()], use_bin_type=True)
    body = MAGIC + struct.pack("<I", len(header)) + header + recs.astype(RECORD).tobytes()
    return body + blake3.blake3(body).digest()


def decode_segment(name: str, data: bytes) -> SegmentData:
    """Verify and decode a segment file's bytes."""
    where = f"index/{name}.idx"
    if len(data) < len(MAGIC) + 4 + 32 or not data.startswith(MAGIC):
        raise CorruptObjectError("not an index segment", location=where)
    body, digest = data[:-32], data[-32:]
    if blake3.blake3(body).digest() != digest:
        raise CorruptObjectError("index segment checksum mismatch", location=where)
    try:
        (hlen,) = struct.unpack_from("<I", body, len(MAGIC))
        hstart = len(MAGIC) + 4
        version, packs, supersedes, _created = msgpack.unpackb(
            body[hstart : hstart + hlen], raw=False
        )
        if version != 1:
            raise ValueError("version")
        rec_bytes = body[hstart + hlen :]
        if len(rec_bytes) % RECORD.itemsize:
            raise ValueError("truncated records")
        records = np.frombuffer(rec_bytes, dtype=RECORD)
        if len(records) and int(records["pack"].max()) >= len(packs):
            raise ValueError("record names a pack outside the table")
    except Exception as e:
        raise CorruptObjectError(f"undecodable index segment ({e})", location=where) from None
    return SegmentData(name, [bytes(p) for p in packs], list(supersedes), records)


def write_segment(index_dir: Path, data: bytes) -> str:
    """Write segment bytes durably under their content name. Returns the name."""
    name = blake3.blake3(data).hexdigest()
    write_atomic(index_dir / f"{name}.idx", data)
    return name


def _id_key(oid: bytes) -> np.ndarray:
    return np.array([oid], dtype="S32")


class Index:
    """The merged in-memory view of every live segment in ``index_dir``."""

    def __init__(self, index_dir: Path) -> None:
        self.dir = index_dir
        self.packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._loaded: dict[str, SegmentData] = {}
        self._superseded: set[str] = set()
        self._base = np.empty(0, dtype=RECORD)  # merged, sorted, global pack numbers
        self._extra: list[np.ndarray] = []  # small sorted arrays not yet merged
        self.corrupt: dict[str, str] = {}  # damaged segments skipped: name -> error

    # -- loading ----------------------------------------------------------------------------

    def _pack_number(self, pack: bytes) -> int:
        n = self._pack_no.get(pack)
        if n is None:
            n = self._pack_no[pack] = len(self.packs)
            self.packs.append(pack)
        return n

    def _globalize(self, seg: SegmentData) -> np.ndarray:
        recs = seg.records.copy()
        if len(recs):
            table = np.array([self._pack_number(p) for p in seg.packs], dtype="<u4")
            recs["pack"] = table[recs["pack"]]
        return recs

    def refresh(self) -> None:
        """Load segments written since the last refresh (by any process)."""
        if not self.dir.is_dir():
            return
        for _attempt in range(20):
            names = sorted(
                n[:-4] for n in os.listdir(self.dir) if n.endswith(".idx") and len(n) == 68
            )
            new: list[SegmentData] = []
            vanished = False
            for n in names:
                if n in self._loaded or n in self._superseded:
                    continue
                if n in self.corrupt:
                    continue
                try:
                    data = (self.dir / f"{n}.idx").read_bytes()
                except FileNotFoundError:
                    vanished = True
                    continue
                try:
                    new.append(decode_segment(n, data))
                except CorruptObjectError as e:
                    # The index is a cache: skip a damaged segment (fsck reports it, and
                    # fsck --rebuild-index rebuilds the index from the packs).
                    self.corrupt[n] = str(e)
            if vanished and not any(s.supersedes for s in new):
                continue  # a compaction raced us: list again
            self._add_segments(new)
            # Segments we hold that are gone from disk (gc removed them, having written a
            # superseding segment we may have loaded long ago): drop them, or this process
            # would keep deduplicating against objects that no longer exist.
            listed = set(names)
            gone = [n for n in self._loaded if n not in listed]
            if gone:
                for n in gone:
                    self._loaded.pop(n, None)
                self._rebuild()
            return
        raise CorruptObjectError("index segments keep vanishing while loading", location=str(self.dir))

    def _add_segments(self, new: list[SegmentData]) -> None:
        if not new:
            return
        newly_superseded = {s for seg in new for s in seg.supersedes}
        for seg in new:
            self._loaded[seg.name] = seg
        if newly_superseded & set(self._loaded):
            self._superseded |= newly_superseded
            for s in newly_superseded:
                self._loaded.pop(s, None)
            self._rebuild()
            return
        self._superseded |= newly_superseded
        for seg in new:
            self._extra.append(self._globalize(seg))
        if len(self._extra) > 8 or sum(len(e) for e in self._extra) > 65536:
            self._merge()

    def _rebuild(self) -> None:
        self.packs, self._pack_no = [], {}
        self._base = np.empty(0, dtype=RECORD)
        self._extra = [self._globalize(s) for s in self._loaded.values()]
        self._merge()

    def _merge(self) -> None:
        parts = [self._base, *self._extra]
        allr = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._base = np.sort(allr, order="id", kind="stable") if len(allr) > 1 else allr
        self._extra = []

    def add_local(self, packs: list[bytes], records: np.ndarray, name: str) -> None:
        """Register a segment this process just wrote (no re-read)."""
        seg = SegmentData(name, packs, [], np.sort(records, order="id", kind="stable"))
        self._add_segments([seg])

    # -- queries ----------------------------------------------------------------------------

    def segment_names(self) -> list[str]:
        """Names of the live (not superseded) segments loaded."""
        return sorted(self._loaded)

    def _find(self, arr: np.ndarray, oid: bytes) -> int:
        if not len(arr):
            return -1
        ids = arr["id"]
        key = _id_key(oid)
        i = int(np.searchsorted(ids, key)[0])
        if i < len(ids) and bool(ids[i : i + 1] == key):
            return i
        return -1

    def lookup(self, oid: bytes) -> Location | None:
        """Where ``oid`` is stored, or None."""
        for arr in (self._base, *self._extra):
            i = self._find(arr, oid)
            if i >= 0:
                r = arr[i]
                return Location(
                    self.packs[int(r["pack"])],
                    int(r["offset"]),
                    int(r["stored"]),
                    int(r["raw"]),
                    int(r["codec"]),
                    int(r["type"]),
                )
        return None

    def contains(self, oid: bytes) -> bool:
        """True if ``oid`` is indexed."""
        return any(self._find(a, oid) >= 0 for a in (self._base, *self._extra))

    def contains_many(self, oids: list[bytes]) -> np.ndarray:
        """Vectorised :meth:`contains`: a bool array aligned with ``oids``."""
        q = np.array(oids, dtype="S32")
        found = np.zeros(len(q), dtype=bool)
        for arr in (self._base, *self._extra):
            if not len(arr) or not len(q):
                continue
            ids = arr["id"]
            pos = np.searchsorted(ids, q)
            pos_c = np.minimum(pos, len(ids) - 1)
            found |= (pos < len(ids)) & (ids[pos_c] == q)
        return found

    def all_records(self) -> np.ndarray:
        """Every record (global pack numbers), merged and sorted by id; may hold duplicates."""
        if self._extra:
            self._merge()
        return self._base

    def __len__(self) -> int:
        return len(self._base) + sum(len(e) for e in self._extra)

    def find_prefix(self, prefix_hex: str, type_code: int | None = None) -> list[bytes]:
        """Distinct IDs starting with the hex ``prefix_hex`` (optionally of one type)."""
        p = prefix_hex.lower()
        lo = _id_key(bytes.fromhex((p + "0" * 64)[:64]))
        hi = _id_key(bytes.fromhex((p + "f" * 64)[:64]))
        out: set[bytes] = set()
        for arr in (self._base, *self._extra):
            if not len(arr):
                continue
            ids = arr["id"]
            a = int(np.searchsorted(ids, lo, "left")[0])
            b = int(np.searchsorted(ids, hi, "right")[0])
            for r in arr[a:b]:
                if type_code is None or int(r["type"]) == type_code:
                    out.add(bytes(r["id"]).ljust(32, b"\0"))
        return sorted(out)
