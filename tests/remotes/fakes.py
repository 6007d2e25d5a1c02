"""Test doubles of the Remote *interface* (not of any storage service): a dict-backed Remote,
and a wrapper that fails the next N calls as a flaky network would."""

from __future__ import annotations

import threading

from replicate.errors import RemoteError, RemoteExists, RemoteNotFound, RemoteUnavailable
from replicate.remotes import KeyInfo, RemoteProperties


class DictRemote:
    """A Remote over a dict, keeping the whole contract (tests/remotes/contract.py checks it)."""

    def __init__(self, url: str = "dict://test") -> None:
        self.url = url
        self.properties = RemoteProperties("dict", connections=4, atomic_create=True)
        self.data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        try:
            return self.data[key]
        except KeyError:
            raise RemoteNotFound(f"{self.url}: {key}: not found") from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        data = self.get(key)
        if start < 0 or end < start or end > len(data):
            raise RemoteError(f"{self.url}: range {start}-{end} outside {key}")
        return data[start:end]

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        with self._lock:
            if create_only and key in self.data:
                raise RemoteExists(f"{self.url}: {key} already exists")
            self.data[key] = bytes(data)

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        with open(path, "rb") as f:
            self.put(key, f.read(), create_only)

    def get_file(self, key: str, path: str) -> None:
        data = self.get(key)
        with open(path, "wb") as f:
            f.write(data)

    def list(self, prefix: str) -> list[KeyInfo]:
        prefix = prefix.strip("/")
        with self._lock:
            items = list(self.data.items())
        return sorted(
            (KeyInfo(k, len(v)) for k, v in items if not prefix or k.startswith(prefix + "/")),
            key=lambda k: k.key,
        )

    def exists(self, key: str) -> bool:
        return key in self.data

    def delete(self, key: str) -> None:
        with self._lock:
            self.data.pop(key, None)


class FlakyRemote:
    """Passes calls to ``inner``, but the next ``failures`` calls raise ``error`` instead.

    With ``after=True`` a failing call is carried out first and then fails: the request
    reached the store but its answer was lost.
    """

    def __init__(
        self,
        inner: DictRemote,
        failures: int = 0,
        error: type[RemoteError] = RemoteUnavailable,
        after: bool = False,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.properties = inner.properties
        self.failures = failures
        self.error = error
        self.after = after
        self.calls = 0

    def _call(self, name: str, *args: object) -> object:
        self.calls += 1
        fail = self.failures > 0
        if fail:
            self.failures -= 1
            if not self.after:
                raise self.error(f"{self.url}: injected failure of {name}")
        result = getattr(self.inner, name)(*args)
        if fail:
            raise self.error(f"{self.url}: injected failure after {name}")
        return result

    def get(self, key: str) -> bytes:
        return self._call("get", key)  # type: ignore[return-value]

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self._call("get_range", key, start, end)  # type: ignore[return-value]

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        self._call("put", key, data, create_only)

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        self._call("put_file", key, path, create_only)

    def get_file(self, key: str, path: str) -> None:
        self._call("get_file", key, path)

    def list(self, prefix: str) -> list[KeyInfo]:
        return self._call("list", prefix)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        return self._call("exists", key)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        self._call("delete", key)
