"""Cross-cutting behaviour as wrappers implementing the same interface: retries of transient
errors, and request counting (for benchmarks and ``--verbose``)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from replicate.errors import RemoteExists, RemoteUnavailable
from replicate.remotes.base import KeyInfo, Remote

T = TypeVar("T")


class RetryingRemote:
    """Retries RemoteUnavailable with bounded exponential backoff and jitter; every other
    error passes straight through.

    A create-only put whose first attempt failed in transit may have been stored anyway; when
    the retry then finds the key holding exactly our bytes, that write was ours (or an identical
    one) and the put succeeds instead of raising RemoteExists.
    """

    def __init__(
        self, inner: Remote, attempts: int = 4, base_delay: float = 0.2, max_delay: float = 5.0
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.properties = inner.properties
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def _retry(self, fn: Callable[[], T]) -> T:
        delay = self.base_delay
        for attempt in range(self.attempts):
            try:
                return fn()
            except RemoteUnavailable:
                if attempt == self.attempts - 1:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, key: str) -> bytes:
        return self._retry(lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self._retry(lambda: self.inner.get_range(key, start, end))

    def _create(self, key: str, write: Callable[[], None], same: Callable[[], bool]) -> None:
        """A create-only write, retried; RemoteExists after a failed attempt is checked."""
        failed = False

        def attempt() -> None:
            nonlocal failed
            try:
                write()
            except RemoteUnavailable:
                failed = True
                raise
            except RemoteExists:
                if not (failed and same()):
                    raise

        self._retry(attempt)

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        if not create_only:
            self._retry(lambda: self.inner.put(key, data))
            return
        self._create(
            key,
            lambda: self.inner.put(key, data, True),
            lambda: self._retry(lambda: self.inner.get(key)) == bytes(data),
        )

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        if not create_only:
            self._retry(lambda: self.inner.put_file(key, path))
            return

        def same() -> bool:
            with open(path, "rb") as f:
                return self._retry(lambda: self.inner.get(key)) == f.read()

        self._create(key, lambda: self.inner.put_file(key, path, True), same)

    def get_file(self, key: str, path: str) -> None:
        self._retry(lambda: self.inner.get_file(key, path))

    def list(self, prefix: str) -> list[KeyInfo]:
        return self._retry(lambda: self.inner.list(prefix))

    def exists(self, key: str) -> bool:
        return self._retry(lambda: self.inner.exists(key))

    def delete(self, key: str) -> None:
        self._retry(lambda: self.inner.delete(key))


class CountingRemote:
    """Counts calls by method (a LIST may cost several requests when paginated)."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.url = inner.url
        self.properties = inner.properties
        self.counts: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self._lock = threading.Lock()

    def _count(self, name: str, n_in: int = 0, n_out: int = 0) -> None:
        with self._lock:
            self.counts[name] += 1
            self.bytes_in += n_in
            self.bytes_out += n_out

    def total(self) -> int:
        return sum(self.counts.values())

    # A call is counted whether it succeeds or fails (a failed request is still a request);
    # bytes are counted when they were transferred.

    def get(self, key: str) -> bytes:
        d = b""
        try:
            d = self.inner.get(key)
            return d
        finally:
            self._count("get", n_in=len(d))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        d = b""
        try:
            d = self.inner.get_range(key, start, end)
            return d
        finally:
            self._count("get_range", n_in=len(d))

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        n = 0
        try:
            self.inner.put(key, data, create_only)
            n = len(data)
        finally:
            self._count("put", n_out=n)

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        n = 0
        try:
            self.inner.put_file(key, path, create_only)
            n = os.path.getsize(path)
        finally:
            self._count("put_file", n_out=n)

    def get_file(self, key: str, path: str) -> None:
        n = 0
        try:
            self.inner.get_file(key, path)
            n = os.path.getsize(path)
        finally:
            self._count("get_file", n_in=n)

    def list(self, prefix: str) -> list[KeyInfo]:
        try:
            return self.inner.list(prefix)
        finally:
            self._count("list")

    def exists(self, key: str) -> bool:
        try:
            return self.inner.exists(key)
        finally:
            self._count("exists")

    def delete(self, key: str) -> None:
        try:
            self.inner.delete(key)
        finally:
            self._count("delete")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
