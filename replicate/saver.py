"""Background saving of checkpoints: capture -> process -> commit.

``checkpoint()`` only *captures* (reads the bytes into memory while the file is still in the
page cache, or copies them to a staging file when the memory budget is used up) and returns. A
worker thread then *processes* (chunk, hash, compress, pack) and *commits* (index, then the ref)
each checkpoint, in the order they were taken. Memory stays within the budget: when captures in
flight would exceed it, ``checkpoint()`` waits (and says so once).

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
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replicate.build import MEMORY, STAGED, Capture

logger = logging.getLogger("replicate")

DEFAULT_FRACTION = 8  # default memory budget: 1/8 of RAM ...
DEFAULT_MIN = 256 * 1024 * 1024  # ... but at least 256 MiB ...
DEFAULT_MAX = 8 * 1024 * 1024 * 1024  # ... and at most 8 GiB
STAGING_FACTOR = 4  # staged bytes in flight may reach 4x the memory budget
EXIT_MESSAGE_AFTER = 1.0
SPARE_BUFFERS = 2  # warm buffers kept ready for the next captures


class SaveWarning(UserWarning):
    """A checkpoint could not be saved; training goes on."""


warnings.simplefilter("always", SaveWarning)


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
        self.memory_limit = memory
        self.staging_limit = memory * STAGING_FACTOR
        self.memory = 0
        self.staged = 0
        self.cv = threading.Condition()
        self.told = False

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
    """Capture buffers, reused: touching fresh memory is slow (page faults; measured 3-5x
    slower than reading into pages already mapped on the machines we test on). Buffers in use
    plus free buffers never exceed ``limit`` bytes; the saver warms a spare buffer in the
    background so that the training thread rarely touches fresh memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free: list[mmap.mmap] = []
        self.in_use = 0
        self.lock = threading.Lock()
        self.want = (0, 0)
        self.warmer: threading.Thread | None = None

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

    def get(self, n: int) -> tuple[Any, Callable[[], None]]:
        """A buffer of exactly ``n`` bytes and the function that gives it back."""
        with self.lock:
            buf = self._take(n)
            if buf is None:
                # make room: drop free buffers too small to be useful
                while self.free and self.total + n > self.limit:
                    self.free.pop()
            size = len(buf) if buf is not None else n
            self.in_use += size
        if buf is None:
            buf = _alloc(n)
        done = False

        def give_back() -> None:
            nonlocal done
            if done:
                return
            done = True
            with self.lock:
                self.in_use -= len(buf)
                if self.total + len(buf) <= self.limit:
                    self.free.append(buf)
                    self.free.sort(key=len, reverse=True)

        return memoryview(buf)[:n], give_back

    def warm(self, n: int) -> bool:
        """Add one free, already-faulted buffer of ``n`` bytes if the limit allows. Pages are
        faulted by reading /dev/zero, which releases the GIL. Returns False when full."""
        with self.lock:
            if self.total + n > self.limit:
                return False
            self.in_use += n
        buf = _alloc(n)
        try:
            with open("/dev/zero", "rb", buffering=0) as z:
                mv = memoryview(buf)
                k = 0
                while k < n:
                    r = z.readinto(mv[k : k + (64 << 20)])
                    if not r:
                        break
                    k += r
                del mv
        except OSError:
            pass
        with self.lock:
            self.in_use -= n
            self.free.append(buf)
            self.free.sort(key=len, reverse=True)
        return True

    def prefetch(self, n: int, count: int = SPARE_BUFFERS) -> None:
        """In the background, keep up to ``count`` free warm buffers of ``n`` bytes ready for
        the next captures (within the limit)."""
        with self.lock:
            self.want = (n, count)
            if self.warmer is not None and self.warmer.is_alive():
                return
            self.warmer = threading.Thread(target=self._warm_loop, name="replicate-warm",
                                           daemon=True)
            self.warmer.start()

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
        self.pool = BufferPool(budget.memory_limit)
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
    """Anonymous memory: mapped lazily, so allocating never touches pages while holding the
    GIL (``bytearray(n)`` zero-fills every page first); pages are faulted by the kernel during
    the read that fills them, with the GIL released."""
    return mmap.mmap(-1, max(n, 1))


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
