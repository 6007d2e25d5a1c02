"""Process-wide background threads that survive fork.

A ThreadPoolExecutor created before ``os.fork()`` is unusable in the child (its threads do not
exist there), and training code forks: data loader workers, multiprocessing. :class:`Shared`
creates its executor on first use in each process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Shared:
    """A lazily created executor, one per process (created again after fork)."""

    def __init__(self, name: str, workers: int | Callable[[], int]) -> None:
        self.name = name
        self.workers = workers
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def get(self) -> ThreadPoolExecutor:
        """The executor of this process."""
        with self._lock:
            if self._executor is None or self._pid != os.getpid():
                n = self.workers() if callable(self.workers) else self.workers
                self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix=self.name)
                self._pid = os.getpid()
            return self._executor

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # it may have been held by a thread of the parent
