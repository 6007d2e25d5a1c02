"""The Remote interface: bytes by key, nothing more.

A remote never learns what a pack, tree or checkpoint is. Keys are '/'-separated relative
paths. The contract every implementation keeps (and tests/remotes/ checks against file,
memory, S3 and GCS):

- ``put`` makes the whole value visible at once, never a prefix of it; with
  ``create_only=True`` it raises :class:`RemoteExists` when the key exists (where the store
  supports it atomically: see ``properties.atomic_create``);
- ``get``/``get_range`` return exactly the stored bytes or raise :class:`RemoteNotFound`;
- ``list`` is consistent with completed writes (read-after-write);
- every failure raises a :class:`RemoteError` subclass; a failed check never returns False;
  :class:`RemoteUnavailable` marks transient failures that may be retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RemoteProperties:
    """What a remote can do."""

    scheme: str
    connections: int  # parallel requests worth making
    atomic_create: bool  # create-only puts are atomic (S3 If-None-Match, GCS generation 0, O_EXCL)


@dataclass(frozen=True)
class KeyInfo:
    """A listed key."""

    key: str
    size: int
    mtime: float | None = None  # seconds since the epoch, when the backend reports it


class Remote(Protocol):
    """Bytes by key."""

    url: str
    properties: RemoteProperties

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, end: int) -> bytes: ...

    def put(self, key: str, data: bytes, create_only: bool = False) -> None: ...

    def put_file(self, key: str, path: str, create_only: bool = False) -> None: ...

    def get_file(self, key: str, path: str) -> None: ...

    def list(self, prefix: str) -> list[KeyInfo]: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...
