"""The write path for file content: read, chunk, hash, compress and pack, in parallel.

The calling thread reads the file in blocks and cuts chunks (pyfastcdc releases the GIL);
a bounded pool of worker threads hashes and compresses batches of chunks (BLAKE3 and zstd
release the GIL); one writer thread appends the results, in order, to the transaction's packs
(sealed with fsync by the transaction's own background thread). Memory stays bounded: at most
``MAX_INFLIGHT`` batches are in flight, and read buffers are recycled as soon as every chunk
cut from them has been hashed and compressed.

Measured costs and choices: docs/performance.md ("Storage engine"). The pool and the writer are
shared by every ingest in the process; never run an ingest inside them.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from replicate.appendfile import give_buffer, take_buffer
from replicate.objects import chunker, codec, compress
from replicate.objects.codec import ChunkRef, File, Segment, SegmentRef
from replicate.objects.ids import hash_chunk
from replicate.objects.store import EncodedSegment, Transaction
from replicate.threads import Shared

BLOCK = 16 * 1024 * 1024
BATCH_BYTES = 4 * 1024 * 1024
MAX_INFLIGHT = 6
SMALL_FILE = chunker.MIN_SIZE
# ingest_file reads into recycled buffers (a block plus the carried-over last chunk): a new
# zeroed 17 MiB bytearray per block cost 0.2 CPU-seconds per GiB in memset and page faults
# (fresh memory is slow to touch on a VM). At most KEEP_BUFFERS stay allocated between calls.
BUFFER_SIZE = BLOCK + chunker.MAX_SIZE
KEEP_BUFFERS = 4

_buffers_lock = threading.Lock()
_buffers: list[bytearray] = []
_malloc_tuned = False

def workers() -> int:
    """Worker threads for hashing and compression (all cores, at least 2)."""
    env = os.environ.get("REPLICATE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(2, os.cpu_count() or 2)


_POOL = Shared("replicate-cpu", workers)


def pool() -> ThreadPoolExecutor:
    """The shared worker pool (recreated after fork)."""
    return _POOL.get()


# A batch's chunk refs, and its new chunks encoded into one pack write buffer (or None).
Processed = tuple[list[ChunkRef], EncodedSegment | None]
# A batch's write buffer holds all its chunks, each grown by up to ENCODE_SLACK. One size
# (a batch closes at BATCH_BYTES, with a last chunk of up to MAX_SIZE) lets buffers be reused.
SEGMENT_BUFFER = BATCH_BYTES + chunker.MAX_SIZE + 128 * compress.ENCODE_SLACK


def _process(txn: Transaction, batch: list[memoryview], level: int | None) -> Processed:
    """Hash every chunk; encode the new ones back to back into a pack write buffer (bg4
    planes are transposed straight into it: no further copy before the disk).

    The chunks of a batch are consecutive bytes of one file, so a bg4 verdict of the probe
    carries over from chunk to chunk (its planes shifted by each chunk's offset): the probe
    runs again every PROBE_EVERY chunks, after a verdict that did not pay, and on every
    chunk while it finds no structure."""
    refs: list[ChunkRef] = []
    entries: list[tuple[bytes, int, int, int, int]] = []
    seen: set[bytes] = set()
    need = sum(len(d) for d in batch) + compress.ENCODE_SLACK * len(batch)
    buf = take_buffer(max(need, SEGMENT_BUFFER))
    pos = 0
    offset = 0  # of the chunk in the batch
    phases: int | None = None  # the last verdict, as a mask of byte offsets mod 4 in the batch
    since = 0
    try:
        for data in batch:
            oid = hash_chunk(data)
            refs.append(ChunkRef(oid, len(data)))
            if oid not in seen and not txn.has(oid):
                seen.add(oid)
                hint = None
                if phases is not None and since < PROBE_EVERY:
                    hint = _rotate(phases, offset)
                c, n, used = compress.encode_into(data, buf[pos:], level, hint)
                if used is not None:
                    if hint is None:  # probed: carry a verdict for bg4 only
                        phases, since = (_rotate(used, -offset), 0) if used else (None, 0)
                    elif c != compress.BG4:
                        phases = None
                    since += 1
                entries.append((oid, pos, n, len(data), c))
                pos += n
            offset += len(data)
    except BaseException:
        give_buffer(buf)
        raise
    if not entries:
        give_buffer(buf)
        return refs, None
    return refs, EncodedSegment(buf, pos, entries)


PROBE_EVERY = 8


def _rotate(mask: int, shift: int) -> int:
    """Plane k of ``mask`` becomes plane (k - shift) mod 4: from batch phases to the planes
    of a chunk starting ``shift`` bytes in (and back, with -shift)."""
    return sum(1 << ((k - shift) % 4) for k in range(4) if mask >> k & 1)


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


def ingest_chunks(txn: Transaction, chunks: Iterable[memoryview], level: int | None = None) -> File:
    """Store a sequence of chunks; returns the file object (not yet added to ``txn``)."""
    return make_file(txn, _ingest(txn, ((c, None) for c in chunks), level))


class _Block:
    """A read buffer shared by the chunks cut from it; recycled once none of them is needed.

    References: one held by the reader while it cuts the block, one per batch holding a chunk
    of it (dropped as soon as the batch is hashed and compressed: the results are copies).
    """

    __slots__ = ("buf", "refs")

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.refs = 1

    def acquire(self) -> None:
        with _buffers_lock:
            self.refs += 1

    def release(self) -> None:
        with _buffers_lock:
            self.refs -= 1
            if self.refs or self.buf is None:
                return
            buf, self.buf = self.buf, None  # type: ignore[assignment]
            if len(_buffers) < KEEP_BUFFERS and len(buf) == BUFFER_SIZE:
                _buffers.append(buf)


def _new_block() -> _Block:
    global _malloc_tuned
    with _buffers_lock:
        buf = _buffers.pop() if _buffers else None
        if not _malloc_tuned:
            # Freeing one large (mmap-backed) allocation raises glibc's dynamic mmap and trim
            # thresholds (as the per-block buffers freed before recycling used to). Without
            # it, every compressed chunk freed returns pages to the OS and the next chunk
            # faults them back in (~85k page faults per GiB stored).
            _malloc_tuned = True
            bytearray(BUFFER_SIZE)
    return _Block(buf if buf is not None else bytearray(BUFFER_SIZE))


def _after_fork() -> None:
    global _buffers_lock
    _buffers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _block_chunks(f: BinaryIO) -> Iterator[tuple[memoryview, _Block]]:
    """Like :func:`file_chunks` (same boundaries), but on recycled buffers: each view is only
    valid while its block is referenced (see :class:`_Block`)."""
    carry: memoryview | None = None
    prev: _Block | None = None
    try:
        while True:
            blk = _new_block()
            mv = memoryview(blk.buf)
            n = 0
            if carry is not None:
                n = len(carry)
                mv[:n] = carry
                carry = None
                assert prev is not None
                prev.release()
                prev = None
            end = n + BLOCK
            while n < end:
                r = f.readinto(mv[n:end])
                if not r:
                    break
                n += r
            eof = n < end
            if not n:
                blk.release()
                return
            prev = blk
            pending: memoryview | None = None
            for c in chunker.cut(mv[:n]):
                if pending is not None:
                    yield pending, blk
                pending = c
            assert pending is not None
            if eof:
                yield pending, blk
                return
            # The last chunk may have been cut by the block end: rescan it with the next block.
            carry = pending
    finally:
        if prev is not None:
            prev.release()


def _process_batch(
    txn: Transaction, batch: list[memoryview], level: int | None, blocks: list[_Block]
) -> Processed:
    """Hash and compress a batch, then release its read buffers (the results are copies)."""
    try:
        return _process(txn, batch, level)
    finally:
        batch.clear()
        for b in blocks:
            b.release()


class _Abort:
    """Set when an ingest fails, so its queued write tasks do nothing."""

    stop = False


def _write_batch(txn: Transaction, fut: Future[Processed], abort: _Abort) -> list[ChunkRef]:
    """Append a processed batch to the transaction (on the writer thread, in order)."""
    refs, seg = fut.result()
    if abort.stop:
        if seg is not None:
            give_buffer(seg.buf)
        return []
    if seg is not None:
        txn.put_segment(seg)
    return refs


_WRITER = Shared("replicate-write", 1)


def writer() -> ThreadPoolExecutor:
    """The one thread appending encoded batches to packs, in submission order (recreated after
    fork): a write may wait for the disk, and on the reading thread it would hold up reading
    and chunking."""
    return _WRITER.get()


def _ingest(
    txn: Transaction, items: Iterable[tuple[memoryview, _Block | None]], level: int | None
) -> list[ChunkRef]:
    """The pipeline: batches of chunks are hashed and compressed in the pool, then appended to
    the transaction by the writer thread, in order. At most MAX_INFLIGHT batches are pending.
    ``items`` pairs each chunk with the recycled block it lies in (or None)."""
    ex, wr = pool(), writer()
    abort = _Abort()
    refs: list[ChunkRef] = []
    pending: deque[tuple[Future[Processed], Future[list[ChunkRef]]]] = deque()
    batch: list[memoryview] = []
    blocks: list[_Block] = []
    size = 0

    def submit() -> None:
        pf = ex.submit(_process_batch, txn, batch, level, blocks)
        pending.append((pf, wr.submit(_write_batch, txn, pf, abort)))

    ok = False
    try:
        for ch, blk in items:
            batch.append(ch)
            size += len(ch)
            if blk is not None and (not blocks or blocks[-1] is not blk):
                blk.acquire()
                blocks.append(blk)
            if size >= BATCH_BYTES:
                submit()
                batch, blocks, size = [], [], 0
                while len(pending) >= MAX_INFLIGHT:
                    refs.extend(pending.popleft()[1].result())
        if batch:
            submit()
            batch, blocks = [], []
        while pending:
            refs.extend(pending.popleft()[1].result())
        ok = True
    finally:
        if not ok:
            abort.stop = True
            for pf, wf in pending:
                pf.cancel()
                wf.cancel()
            for _pf, wf in pending:  # nothing may touch the transaction once we return
                try:
                    wf.result()
                except Exception:
                    pass
            for b in blocks:
                b.release()
    return refs


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

    return make_file(txn, _ingest(txn, _block_chunks(_Prefixed(head, f)), None))


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
