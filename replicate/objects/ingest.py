"""The write path for file content: read, chunk, hash, compress and pack, in parallel.

The calling thread reads the file in blocks and cuts chunks (pyfastcdc releases the GIL);
a bounded pool of worker threads hashes and compresses batches of chunks (BLAKE3 and zstd
release the GIL); the calling thread appends the results, in order, to the transaction's packs.
Memory stays bounded: at most ``MAX_INFLIGHT`` batches are in flight.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from replicate.objects import chunker, codec, compress
from replicate.objects.codec import ChunkRef, File, Segment, SegmentRef
from replicate.objects.ids import hash_chunk
from replicate.objects.store import Transaction

BLOCK = 16 * 1024 * 1024
BATCH_BYTES = 4 * 1024 * 1024
MAX_INFLIGHT = 6
SMALL_FILE = chunker.MIN_SIZE

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def workers() -> int:
    """Worker threads for hashing and compression (all cores, at least 2)."""
    env = os.environ.get("REPLICATE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(2, os.cpu_count() or 2)


def pool() -> ThreadPoolExecutor:
    """The shared worker pool (recreated after fork)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="replicate-cpu")
            _pool_pid = os.getpid()
        return _pool


Processed = list[tuple[bytes, int, int, bytes | None]]  # (id, raw_len, codec, stored or None)


def _process(txn: Transaction, batch: list[memoryview], level: int | None) -> Processed:
    out: Processed = []
    for data in batch:
        oid = hash_chunk(data)
        if txn.has(oid):
            out.append((oid, len(data), 0, None))
            continue
        c, stored = compress.compress(data, level)
        out.append((oid, len(data), c, stored))
    return out


def file_chunks(f: BinaryIO, block: int = BLOCK) -> Iterator[memoryview]:
    """Content-defined chunks of an open file, read in blocks (never mmap: a file truncated
    while we read must not crash the process). Each yielded view stays valid."""
    carry = b""
    while True:
        buf = bytearray(len(carry) + block)
        buf[: len(carry)] = carry
        mv = memoryview(buf)
        n = len(carry)
        while n < len(buf):
            r = f.readinto(mv[n:])
            if not r:
                break
            n += r
        eof = n < len(buf)
        data = mv[:n]
        if not n:
            return
        pending: memoryview | None = None
        for c in chunker.cut(data):
            if pending is not None:
                yield pending
            pending = c
        if eof:
            if pending is not None:
                yield pending
            return
        assert pending is not None
        # The last chunk may have been cut by the block end: rescan it with the next block.
        carry = bytes(pending)


def ingest_chunks(
    txn: Transaction, chunks: Iterable[memoryview], level: int | None = None
) -> File:
    """Store a sequence of chunks; returns the file object (not yet added to ``txn``)."""
    refs: list[ChunkRef] = []
    inflight: deque[Future[Processed]] = deque()
    ex = pool()

    def drain_one() -> None:
        for oid, raw_len, c, stored in inflight.popleft().result():
            if stored is not None:
                txn.put_stored(oid, codec.CHUNK, stored, raw_len, c)
            refs.append(ChunkRef(oid, raw_len))

    batch: list[memoryview] = []
    size = 0
    try:
        for ch in chunks:
            batch.append(ch)
            size += len(ch)
            if size >= BATCH_BYTES:
                inflight.append(ex.submit(_process, txn, batch, level))
                batch, size = [], 0
                while len(inflight) >= MAX_INFLIGHT:
                    drain_one()
        if batch:
            inflight.append(ex.submit(_process, txn, batch, level))
        while inflight:
            drain_one()
    finally:
        for fut in inflight:
            fut.cancel()
    return make_file(txn, refs)


def make_file(txn: Transaction, refs: list[ChunkRef]) -> File:
    """A file object for ``refs``; large files get content-defined segment objects (added to
    ``txn``)."""
    size = sum(r.size for r in refs)
    if len(refs) <= codec.SEGMENT_THRESHOLD:
        return File(size, tuple(refs))
    segs: list[SegmentRef] = []
    cur: list[ChunkRef] = []
    for r in refs:
        cur.append(r)
        if r.id[0] == 0 or len(cur) >= codec.SEGMENT_MAX:
            segs.append(_segment(txn, cur))
            cur = []
    if cur:
        segs.append(_segment(txn, cur))
    return File(size, (), tuple(segs))


def _segment(txn: Transaction, refs: list[ChunkRef]) -> SegmentRef:
    oid = txn.put_object(Segment(tuple(refs)))
    return SegmentRef(oid, sum(r.size for r in refs), len(refs))


def ingest_bytes(txn: Transaction, data: bytes | bytearray | memoryview) -> File:
    """Store in-memory content; returns its file object (not yet added to ``txn``)."""
    if len(data) <= SMALL_FILE:
        if not len(data):
            return File(0)
        oid = txn.put_chunk(data)
        return File(len(data), (ChunkRef(oid, len(data)),))
    return ingest_chunks(txn, chunker.cut(data))


def ingest_file(txn: Transaction, f: BinaryIO) -> File:
    """Store an open file's content; returns its file object (not yet added to ``txn``)."""
    head = f.read(SMALL_FILE + 1)
    if len(head) <= SMALL_FILE:
        return ingest_bytes(txn, head)

    def chained() -> Iterator[memoryview]:
        yield from file_chunks(_Prefixed(head, f))

    return ingest_chunks(txn, chained())


class _Prefixed:
    """A reader yielding ``head`` then the rest of ``f``."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self.head = memoryview(head)
        self.f = f

    def readinto(self, b: memoryview) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.f.readinto(b)  # type: ignore[attr-defined]


def iter_file_chunks(file: File, read_segment: Callable[[bytes], Segment]) -> Iterator[ChunkRef]:
    """The chunk refs of a file object, expanding segments with ``read_segment``."""
    if file.chunks:
        yield from file.chunks
        return
    for s in file.segments:
        yield from read_segment(s.id).chunks
