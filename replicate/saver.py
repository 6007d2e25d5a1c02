"""Background saving of checkpoints: capture -> process -> commit.

``checkpoint()`` only *captures* (reads the bytes into memory while the file is still in the
page cache, or copies them to a staging file when the memory budget is used up) and returns. A
worker thread then *processes* (chunk, hash, compress, pack) and *commits* (index, then the ref)
each checkpoint, in the order they were taken. Memory stays within the budget: when captures in
flight would exceed it, ``checkpoint()`` waits (and says so).

Guarantees: a checkpoint is either fully committed or absent (the ref moves last); everything
in flight is committed before the interpreter exits (a message says so if it takes more than a
moment); an error in the background is reported loudly and raised by ``wait()``. Staging
directories of processes that died are removed by the next process that opens the repository
(see replicate.repository).
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replicate.build import MEMORY, STAGED, Capture

logger = logging.getLogger("replicate")

DEFAULT_FRACTION = 8  # default memory budget: 1/8 of RAM ...
DEFAULT_MIN = 256 * 1024 * 1024  # ... but at least 256 MiB ...
DEFAULT_MAX = 8 * 1024 * 1024 * 1024  # ... and at most 8 GiB
PIPELINE_RESERVE = 96 * 1024 * 1024  # the pipeline's working memory, within the budget
MIN_CAPTURE = 32 * 1024 * 1024
STAGING_FACTOR = 4  # staged bytes in flight may reach 4x the memory budget
EXIT_MESSAGE_AFTER = 1.0
SPARE_BUFFERS = 1  # warm buffers kept ready for the next capture (2 measured worse: more
# background page faults competing with training, median blocked 0.21 s vs 0.12 s)
MAX_FREE = SPARE_BUFFERS + 1  # free buffers kept (more are unmapped: idle memory is given back)
SMALL = 4 * 1024 * 1024  # smaller captures use plain bytearrays (no pool, no mmap)
ROUND = 2 * 1024 * 1024  # buffer sizes are multiples of this
WARM_PIECE = 16 * 1024 * 1024  # the warmer checks between pieces whether a capture wants it


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5GiB', '1000000' -> bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        v = float(t) * mult
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size; use e.g. 512M or 2G") from None
    if v <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return int(v)


def total_memory() -> int:
    """Physical memory in bytes (a guess of 8 GiB when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_budget() -> int:
    """The capture memory budget: REPLICATE_MEMORY_BUDGET, else 1/8 of RAM in [256 MiB, 8 GiB]."""
    env = os.environ.get("REPLICATE_MEMORY_BUDGET")
    if env:
        return parse_size(env)
    return max(DEFAULT_MIN, min(DEFAULT_MAX, total_memory() // DEFAULT_FRACTION))


class Budget:
    """Bytes of captures in flight: memory and staging, each with a limit."""

    def __init__(self, memory: int) -> None:
        # The configured budget covers everything saving adds to the process: captures, and
        # the processing pipeline's own working memory (batches in flight, pack buffers,
        # about 80 MiB measured), which is set aside first.
        self.configured = memory
        self.memory_limit = max(memory - PIPELINE_RESERVE, min(memory, MIN_CAPTURE))
        self.staging_limit = memory * STAGING_FACTOR
        self.memory = 0
        self.staged = 0
        self.cv = threading.Condition()

    def place(self, size: int, on_wait: Callable[[], None]) -> str:
        """Reserve ``size`` bytes in memory, else in staging; wait while neither fits."""
        with self.cv:
            while True:
                if self.memory + size <= self.memory_limit:
                    self.memory += size
                    return MEMORY
                if self.staged + size <= self.staging_limit or (
                    self.staged == 0 and size > self.staging_limit
                ):
                    self.staged += size
                    return STAGED
                on_wait()
                self.cv.wait(timeout=1.0)

    def release(self, memory: int, staged: int) -> None:
        with self.cv:
            self.memory -= memory
            self.staged -= staged
            self.cv.notify_all()


class BufferPool:
    """Capture buffers, reused: touching fresh memory is slow (page faults; measured 3-10x
    slower than reading into pages already mapped on the machines we test on). Buffers in use
    plus free buffers never exceed ``limit`` bytes; the saver warms a spare buffer in the
    background so that the training thread rarely touches fresh memory.

    Buffers are anonymous private mappings (see :func:`_alloc`), sized with a little slack
    (:func:`buffer_size`) so that a file that grew a little (a header, one more layer) still
    fits a warm buffer. Small files (under ``SMALL``) bypass the pool. A capture that needs a
    buffer while the warmer is still warming one takes it over (the pages the warmer already
    touched are not touched twice). At most ``MAX_FREE`` free buffers are kept; the others, and
    all of them once the interpreter exits (:meth:`close`), are unmapped in a background
    thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free: list[mmap.mmap] = []
        self.in_use = 0
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.want = (0, 0)
        self.warmer: threading.Thread | None = None
        self.warming: mmap.mmap | None = None  # the buffer being warmed
        self.claimed = False  # a capture wants ``warming``: the warmer hands it over
        self.warmed = 0  # buffers warmed so far (for tests and benchmarks)
        self.closing = False  # no more captures expected (exit): give memory back at once
        self.unmapping: deque[mmap.mmap] = deque()
        self.unmapper: threading.Thread | None = None

    @property
    def total(self) -> int:
        return self.in_use + sum(len(b) for b in self.free)

    def _take(self, n: int) -> mmap.mmap | None:
        best = None
        for b in self.free:
            if len(b) >= n and (best is None or len(b) < len(best)):
                best = b
        if best is not None:
            self.free.remove(best)
        return best

    def _claim_warming(self, n: int) -> mmap.mmap | None:
        """Take over the buffer being warmed if it is big enough (lock held; waits at most
        for one piece of warming)."""
        buf = self.warming
        if buf is None or len(buf) < n or self.claimed:
            return None
        self.claimed = True
        while self.warming is buf:
            self.cv.wait(timeout=1.0)
        return buf

    def get(self, n: int) -> tuple[Any, Callable[[], None]]:
        """A buffer of exactly ``n`` bytes and the function that gives it back."""
        if n < SMALL:
            return bytearray(n), _nothing
        with self.lock:
            buf = self._take(n)
            if buf is None:
                buf = self._claim_warming(n)  # already counted in in_use
                if buf is None:
                    size = buffer_size(n)
                    # make room: drop free buffers too small to be useful
                    while self.free and self.total + size > self.limit:
                        self._discard(self.free.pop())
                    self.in_use += size
            else:
                self.in_use += len(buf)
        if buf is None:
            buf = _alloc(size)
        done = False

        def give_back() -> None:
            nonlocal done
            if done:
                return
            done = True
            with self.lock:
                self.in_use -= len(buf)
                if (not self.closing and self.total + len(buf) <= self.limit
                        and len(self.free) < MAX_FREE):
                    self.free.append(buf)
                    self.free.sort(key=len, reverse=True)
                else:
                    self._discard(buf)
                self.cv.notify_all()

        return memoryview(buf)[:n], give_back

    def warm(self, n: int) -> bool:
        """Add one free buffer for captures of ``n`` bytes, its first ``n`` bytes already
        faulted, if the limit allows. Pages are faulted by reading /dev/zero, which releases the
        GIL. Returns False when full, closing, or when a capture took the buffer over."""
        size = buffer_size(n)
        with self.lock:
            if self.closing or self.total + size > self.limit:
                return False
            self.in_use += size
        buf = _alloc(size)
        with self.lock:
            self.warming = buf
        try:
            with open("/dev/zero", "rb", buffering=0) as z:
                mv = memoryview(buf)[:n]  # the slack stays untouched (not resident)
                k = 0
                while k < n and not self.claimed:
                    r = z.readinto(mv[k : k + WARM_PIECE])
                    if not r:
                        break
                    k += r
                del mv
        except OSError:
            pass
        with self.lock:
            self.warming = None
            if self.claimed:  # a capture owns it now (and it stays counted in in_use)
                self.claimed = False
                self.cv.notify_all()
                return False
            self.in_use -= size
            if self.closing:
                self._discard(buf)
                return False
            self.free.append(buf)
            self.free.sort(key=len, reverse=True)
            self.warmed += 1
            self.cv.notify_all()
        return True

    def prefetch(self, n: int, count: int = SPARE_BUFFERS) -> None:
        """In the background, keep up to ``count`` free warm buffers for captures of ``n``
        bytes ready (within the limit)."""
        if n < SMALL or count <= 0:
            return
        with self.lock:
            self.want = (n, count)
            if self.warmer is not None and self.warmer.is_alive():
                return
            self.warmer = threading.Thread(target=self._warm_loop, name="replicate-warm",
                                           daemon=True)
            self.warmer.start()

    def close(self) -> None:
        """No more captures are expected (the interpreter is exiting): stop warming, and from
        now on unmap buffers as soon as they are free, in a background thread. Unmapping
        4 KiB pages is slow on our VMs (0.35-1.1 s per 1.5 GiB): done at exit by the kernel,
        it would come after the drain; done here, it overlaps with the checkpoints still
        being processed."""
        with self.lock:
            self.closing = True
            while self.free:
                self._discard(self.free.pop())

    def _discard(self, buf: mmap.mmap) -> None:
        """Unmap ``buf`` in the background (lock held)."""
        self.unmapping.append(buf)
        if self.unmapper is None or not self.unmapper.is_alive():
            self.unmapper = threading.Thread(target=self._unmap_loop, name="replicate-unmap",
                                             daemon=True)
            self.unmapper.start()

    def _unmap_loop(self) -> None:
        while True:
            with self.lock:
                if not self.unmapping:
                    self.unmapper = None
                    return
                buf = self.unmapping.popleft()
            try:
                buf.close()  # munmap, without the GIL
            except BufferError:  # a view is still alive: freed when the last one goes
                pass
            del buf

    def _warm_loop(self) -> None:
        while True:
            with self.lock:
                n, count = self.want
                ready = sum(1 for b in self.free if len(b) >= n)
                if ready >= count:
                    self.warmer = None
                    return
            if not self.warm(n):
                with self.lock:
                    self.warmer = None
                return


def _nothing() -> None:
    pass


def buffer_size(n: int) -> int:
    """The size of a pooled buffer for ``n`` bytes: ``n`` plus 1/64 (at least 1 byte),
    rounded up to 2 MiB, so that a file that grew a little still fits."""
    return -(-(n + max(1, n >> 6)) // ROUND) * ROUND


@dataclass
class Job:
    """One checkpoint on its way to the repository."""

    commit: Callable[[Job], Any]  # does the processing and commit; returns the record
    capture: Capture | None
    memory: int = 0
    staged: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    on_done: Callable[[Job], None] | None = None

    @property
    def nbytes(self) -> int:
        return self.memory + self.staged

    def wait(self, timeout: float | None = None) -> Any:
        """Wait until committed; raise the background error if it failed."""
        if not self.done.wait(timeout):
            raise TimeoutError("checkpoint is still being saved")
        if self.error is not None:
            raise self.error
        return self.result


class Saver:
    """A worker thread committing jobs in order."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        # Buffers carry up to 1/64 + 2 MiB of slack (buffer_size) that stays untouched unless a
        # file grew: allow for it, so that two captures of half the budget share the pool.
        self.pool = BufferPool(budget.memory_limit + budget.memory_limit // 32)
        self.queue: deque[Job] = deque()
        self.cv = threading.Condition()
        self.thread: threading.Thread | None = None
        self.pending: list[Job] = []
        self.recent: dict[str, Any] = {}  # path -> latest CapturedFile (see build.capture)
        self.after_drain: list[Callable[[], None]] = []  # run at exit after the drain
        self._exit_registered = False

    def submit(self, job: Job) -> None:
        """Queue a job (started in order)."""
        with self.cv:
            self.queue.append(job)
            self.pending.append(job)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="replicate-saver", daemon=True
                )
                self.thread.start()
            self.register_exit()
            self.cv.notify_all()

    def register_exit(self) -> None:
        """Make sure the exit drain runs (idempotent)."""
        if not self._exit_registered:
            _register_exit(self.drain_at_exit)
            self._exit_registered = True

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue:
                    if not self.cv.wait(timeout=30) and not self.queue:
                        self.thread = None
                        return
                job = self.queue.popleft()
            t0 = time.perf_counter()
            try:
                job.result = job.commit(job)
            except BaseException as e:  # reported loudly; wait() raises it
                job.error = e
            finally:
                logger.debug("saved a checkpoint of %s in %.3f s", human(job.nbytes),
                             time.perf_counter() - t0)
                if job.capture is not None:
                    job.capture.release()
                self.budget.release(job.memory, job.staged)
                job.done.set()
                if job.on_done is not None:  # before the job leaves `pending`: a drain that
                    try:  # sees nothing pending must also see what on_done queued (uploads)
                        job.on_done(job)
                    except Exception:
                        pass
                with self.cv:
                    if job in self.pending:
                        self.pending.remove(job)
                    self.cv.notify_all()

    def in_flight(self) -> tuple[int, int]:
        """(number of jobs, bytes) not yet committed."""
        with self.cv:
            return len(self.pending), sum(j.nbytes for j in self.pending)

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight. True if drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while self.pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cv.wait(timeout=left if left is not None else 1.0)
        return True

    def drain_at_exit(self) -> None:
        """Commit everything in flight before the interpreter exits, then run the
        ``after_drain`` hooks (background uploads)."""
        try:
            self._drain()
        finally:
            for fn in list(self.after_drain):
                try:
                    fn()
                except Exception as e:  # pragma: no cover - defensive
                    logger.warning("replicate: %s", e)

    def _drain(self) -> None:
        self.pool.close()
        if self.wait_all(EXIT_MESSAGE_AFTER):
            return
        n, nbytes = self.in_flight()
        logger.warning(
            "replicate is still saving %d checkpoint%s (%s); it will exit when it has finished. "
            "If you force quit, those checkpoints will be lost.",
            n, "" if n == 1 else "s", human(nbytes),
        )
        self.wait_all()
        logger.warning("replicate has finished saving.")


def _alloc(n: int) -> mmap.mmap:
    """Anonymous private memory: mapped lazily, so allocating never touches pages while
    holding the GIL (``bytearray(n)`` zero-fills every page first); pages are faulted by the
    kernel during the read that fills them, with the GIL released.

    Private, not shared (``mmap.mmap(-1, n)`` is MAP_SHARED, i.e. shmem): first touches of
    private pages measured 0.57-0.63 s per 512 MiB against 0.82-1.02 s shared. No transparent
    huge pages: on VMs that report free memory to the host (virtio-balloon free page
    reporting, as on our CI machines), fresh 2 MiB pages are the ones the host took back, and
    touching them measured 0.23-2.2 s per 512 MiB (bimodal)."""
    size = max(n, 1)
    private = getattr(mmap, "MAP_PRIVATE", None)
    if private is None:  # Windows
        return mmap.mmap(-1, size)
    return mmap.mmap(-1, size, flags=private | mmap.MAP_ANONYMOUS)


def human(n: float) -> str:
    """1.0 GiB, 512.0 MiB ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _register_exit(fn: Callable[[], None]) -> None:
    # threading's exit hooks run before concurrent.futures shuts its pools down (and before
    # atexit), so the worker can still use them; fall back to atexit elsewhere.
    reg = getattr(threading, "_register_atexit", None)
    if reg is not None:
        try:
            reg(fn)
            return
        except RuntimeError:
            pass
    import atexit

    atexit.register(fn)


_SAVER: Saver | None = None
_SAVER_PID = 0
_SAVER_LOCK = threading.Lock()


def get_saver() -> Saver:
    """The process-wide saver (one worker keeps every experiment's checkpoints in order)."""
    global _SAVER, _SAVER_PID
    with _SAVER_LOCK:
        if _SAVER is None or os.getpid() != _SAVER_PID:
            _SAVER = Saver(Budget(default_budget()))
            _SAVER_PID = os.getpid()
        return _SAVER
