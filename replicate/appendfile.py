"""An append-only writer for a new file, bypassing the page cache where it can.

Pack files are written once, sequentially, and fsynced before they are used. Through the page
cache, every byte is copied into a cache page by the kernel (4 KiB at a time, in the writing
thread) and copied again to the disk by writeback: about 0.3 CPU-seconds per GiB on the 2-core
machine of docs/performance.md, a fifth of a checkpoint's CPU. With ``direct=True`` the writer
stages bytes in a page-aligned buffer and writes whole buffers with ``O_DIRECT`` (the disk
reads them straight from memory: 0.04 CPU-seconds per GiB measured), so the cores stay with
hashing and compression. The last partial block is written padded and the file truncated to
its true length; :meth:`close` fsyncs either way (O_DIRECT alone does not make the size and
extents durable). :meth:`write_buffer` hands over a whole aligned buffer (the ingest pipeline
encodes a batch of chunks straight into one), which is written without any copy; in direct
mode it starts on a 4 KiB boundary, so zero padding may precede it.

Where O_DIRECT is not available (tmpfs, some network and FUSE filesystems, other systems),
or a direct write is refused, the writer falls back to ordinary writes, silently: the result
is the same file.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from replicate.threads import Shared

# 4 KiB satisfies every logical block size in practice (512 or 4096); mmap-backed buffers are
# page-aligned, which satisfies the memory alignment.
ALIGN = 4096
STAGE = 4 * 1024 * 1024
_DIRECT = getattr(os, "O_DIRECT", 0)

Buffer = bytes | bytearray | memoryview


def round_up(n: int) -> int:
    """``n`` rounded up to a multiple of ALIGN."""
    return -(-n // ALIGN) * ALIGN


class AppendFile:
    """Creates ``path`` (it must not exist) and appends to it; :meth:`close` makes it durable.

    Direct writes are synchronous, so they run in a background thread (one in flight) while
    the caller goes on: the disk and the CPU work at the same time, as with the page cache.
    ``size`` is the logical length, padding included. Not thread-safe: one thread appends.
    """

    def __init__(self, path: Path, direct: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(path, flags, 0o666)
        self.size = 0
        self._written = 0  # bytes handed to the disk (the last block may be padding)
        self._stages: list[np.ndarray] = []
        self._cur = 0
        self._pos = 0
        self._pending: Future[None] | None = None
        self._plain = True
        if direct and _DIRECT:
            try:
                fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fl | _DIRECT)
                self._plain = False
            except OSError:
                pass

    @property
    def direct(self) -> bool:
        """True while writes bypass the page cache."""
        return not self._plain

    def write(self, bufs: list[Buffer]) -> None:
        """Append ``bufs`` in order (copied: the caller keeps them)."""
        views = [memoryview(b).cast("B") for b in bufs]
        n = sum(len(v) for v in views)
        if self._plain:
            self._settle()
            _write_all(self.fd, views)
            self._written += n
        else:
            if not self._stages:
                self._stages = [take_buffer(STAGE), take_buffer(STAGE)]
            for v in views:
                while v:
                    k = min(len(v), STAGE - self._pos)
                    self._stages[self._cur].data[self._pos : self._pos + k] = v[:k]
                    self._pos += k
                    v = v[k:]
                    if self._pos == STAGE:
                        self._flush_stage(STAGE)
        self.size += n

    def write_buffer(self, buf: np.ndarray, n: int) -> int:
        """Append ``buf[:n]``, taking ``buf`` over (from :func:`take_buffer`; it goes back to
        the pool once written). Returns the offset where it starts: in direct mode the next
        4 KiB boundary, after zero padding, and ``buf`` is padded too."""
        if self._plain:
            try:
                self._settle()
                start = self.size
                _write_all(self.fd, [buf.data[:n]])
                self.size += n
                self._written += n
            finally:
                give_buffer(buf)
            return start
        try:
            if self.size % ALIGN:
                self.write([bytes(ALIGN - self.size % ALIGN)])
            if self._pos:
                self._flush_stage(self._pos)
            start = self.size
            padded = round_up(n)
            buf[n:padded] = 0
        except BaseException:
            give_buffer(buf)
            raise
        self._submit(buf, padded, release=True)
        self.size += padded
        return start

    def close(self) -> None:
        """Write what is staged, fsync and close."""
        try:
            if self._pos:
                padded = round_up(self._pos)
                self._stages[self._cur][self._pos : padded] = 0
                self._flush_stage(padded)
            self._wait()
            if self._written != self.size:
                os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close without making anything durable (the caller deletes the file)."""
        try:
            self._wait()
        except OSError:
            pass
        finally:
            for b in self._stages:
                give_buffer(b)
            self._stages = []
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _wait(self) -> None:
        if self._pending is not None:
            fut, self._pending = self._pending, None
            fut.result()

    def _settle(self) -> None:
        """Before a plain write: everything handed over earlier is on its way to the file, in
        order (bytes still staged when a direct write was refused included)."""
        if self._pos:
            self._flush_stage(self._pos)  # written plainly by the I/O thread, any length
        self._wait()

    def _flush_stage(self, n: int) -> None:
        """Write the first ``n`` staged bytes (n a multiple of ALIGN); the other stage is
        filled meanwhile."""
        self._submit(self._stages[self._cur], n, release=False)
        self._cur ^= 1
        self._pos = 0

    def _submit(self, buf: np.ndarray, n: int, release: bool) -> None:
        try:
            self._wait()
            self._pending = _io().submit(self._write_direct, buf, n, release)
            self._written += n
        except BaseException:
            if release:
                give_buffer(buf)
            raise

    def _write_direct(self, buf: np.ndarray, n: int, release: bool) -> None:
        """(I/O thread) Write ``buf[:n]``. If a direct write is refused or comes back short,
        the rest goes through the page cache, and so does everything after."""
        try:
            view = buf.data
            done = 0
            if not self._plain:
                try:
                    while done < n:
                        w = os.write(self.fd, view[done:n])
                        done += w
                        if w % ALIGN:  # the offset is no longer aligned
                            break
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                if done < n:
                    fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                    fcntl.fcntl(self.fd, fcntl.F_SETFL, fl & ~_DIRECT)
                    self._plain = True
            if done < n:
                _write_all(self.fd, [view[done:n]])
        finally:
            if release:
                give_buffer(buf)


def _write_all(fd: int, views: list[memoryview]) -> None:
    while views:
        w = os.writev(fd, views)
        while views and w >= len(views[0]):
            w -= len(views[0])
            views.pop(0)
        if views and w:
            views[0] = views[0][w:]


# -- page-aligned buffers --------------------------------------------------------------------
# Buffers are kept for reuse: fresh pages cost a page fault each on first touch (0.1
# CPU-seconds per GiB written when every pack made new ones). At most KEEP_BYTES are kept.

KEEP_BYTES = 64 * 1024 * 1024
_buffers_lock = threading.Lock()
_free: dict[int, list[np.ndarray]] = {}
_kept = 0


def take_buffer(nbytes: int) -> np.ndarray:
    """A page-aligned uint8 array of ``round_up(nbytes)`` bytes (contents undefined)."""
    global _kept
    size = round_up(nbytes)
    with _buffers_lock:
        free = _free.get(size)
        if free:
            _kept -= size
            return free.pop()
    return np.frombuffer(mmap.mmap(-1, size), np.uint8)


def give_buffer(buf: np.ndarray) -> None:
    """Return a buffer from :func:`take_buffer` (dropped if the pool is full)."""
    global _kept
    with _buffers_lock:
        if _kept + buf.nbytes <= KEEP_BYTES:
            _free.setdefault(buf.nbytes, []).append(buf)
            _kept += buf.nbytes


def _after_fork() -> None:
    global _buffers_lock
    _buffers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


_IO = Shared("replicate-io", 1)  # the thread doing direct writes for every AppendFile


def _io() -> ThreadPoolExecutor:
    return _IO.get()


__all__ = ["ALIGN", "AppendFile", "give_buffer", "round_up", "take_buffer"]
