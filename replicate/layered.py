"""Which repository a command reads, and the merged view of a project with a shared remote.

- a plain local project: its ``.replicate/``;
- ``-R URL`` / ``Project(repository=URL)``: that repository only (a remote read through the
  user cache directory, or a local repository when the URL points at one);
- a project whose ``replicate.yaml`` names a ``repository:``: the local ``.replicate/`` merged
  with the remote (refs of both; objects read locally first, then from the remote). If the
  remote cannot be reached, the local repository alone answers, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from replicate.errors import RemoteError, RepositoryNotFound
from replicate.objects import codec
from replicate.objects.index import Location
from replicate.remote_repo import RemoteRepository
from replicate.repository import Repository

logger = logging.getLogger("replicate")


def _path_of(spec: str, base: Path) -> Path | None:
    if spec.startswith("file://"):
        rest = spec[len("file://"):]
        p = Path(rest)
        return p if p.is_absolute() else (base / p).resolve()
    if "://" in spec:
        return None
    p = Path(spec).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def is_local_layout(path: Path) -> bool:
    """True for a local repository directory (``.replicate/`` layout)."""
    return (path / "config").is_file() and ((path / "logs").is_dir() or (path / "tmp").is_dir())


def open_repository(spec: str, base: Path, cache_dir: Path | None = None) -> Any:
    """The repository named by ``spec`` (a URL or path) for reading."""
    p = _path_of(spec, base)
    if p is not None:
        if (p / ".replicate").is_dir() and not (p / "config").exists():
            return Repository.open(p / ".replicate")
        if is_local_layout(p):
            return Repository.open(p)
        if not p.exists():
            raise RepositoryNotFound(f"no replicate repository at {spec}")
        if not (p / "config").exists():
            # might be a predecessor's repository or an empty directory
            return Repository.open(p)
        return RemoteRepository("file://" + str(p), cache_dir=cache_dir)
    return RemoteRepository(spec, cache_dir=cache_dir)


class _LayeredIndex:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def find_prefix(self, prefix_hex: str, type_code: int | None = None) -> list[bytes]:
        return sorted(set(self.a.find_prefix(prefix_hex, type_code))
                      | set(self.b.find_prefix(prefix_hex, type_code)))

    def contains(self, oid: bytes) -> bool:
        return bool(self.a.contains(oid) or self.b.contains(oid))

    def contains_many(self, oids: list[bytes]) -> Any:
        import numpy as np

        return np.asarray(self.a.contains_many(oids)) | np.asarray(self.b.contains_many(oids))

    def lookup(self, oid: bytes) -> Location | None:
        return self.a.lookup(oid) or self.b.lookup(oid)


class LayeredObjects:
    """Objects read from the local store first, then from the remote."""

    coalesces_reads = True  # the remote part fetches neighbours together

    def __init__(self, local: Any, remote: Any) -> None:
        self.local, self.remote = local, remote
        self.index = _LayeredIndex(local.index, remote.index)

    def refresh(self) -> None:
        self.local.refresh()
        self.remote.refresh()

    def _pick(self, oid: bytes) -> Any:
        return self.local if self.local.has(oid) else self.remote

    def has(self, oid: bytes) -> bool:
        return bool(self.local.has(oid) or self.remote.has(oid))

    def locate(self, oid: bytes) -> Location:
        return self._pick(oid).locate(oid)  # type: ignore[no-any-return]

    def read_raw(self, oid: bytes, loc: Location | None = None) -> bytes:
        return self._pick(oid).read_raw(oid)  # type: ignore[no-any-return]

    def read_chunk(self, oid: bytes) -> bytes:
        return self._pick(oid).read_chunk(oid)  # type: ignore[no-any-return]

    def read_chunks(self, oids: list[bytes]) -> list[bytes]:
        """Local chunks from the local store, the rest in one batch from the remote."""
        out: list[bytes | None] = [None] * len(oids)
        remote = []
        for i, o in enumerate(oids):
            if self.local.has(o):
                out[i] = self.local.read_chunk(o)
            else:
                remote.append(i)
        for i, data in zip(remote, self.remote.read_chunks([oids[i] for i in remote])):
            out[i] = data
        return out  # type: ignore[return-value]

    def read_object(self, oid: bytes) -> codec.StructuredObject:
        return self._pick(oid).read_object(oid)  # type: ignore[no-any-return]

    def type_of(self, oid: bytes) -> int | None:
        t = self.local.type_of(oid)
        return t if t is not None else self.remote.type_of(oid)

    def transaction(self) -> Any:
        return self.local.transaction()

    def close(self) -> None:
        self.local.close()
        self.remote.close()


class _LayeredRefs:
    def __init__(self, local: Any, remote: Any) -> None:
        self.local, self.remote = local, remote

    def read(self, name: str) -> bytes | None:
        v = self.local.read(name)
        return v if v is not None else self.remote.read(name)

    def list(self, kind: str = "experiments") -> dict[str, bytes]:
        out = dict(self.remote.list(kind))
        out.update(self.local.list(kind))
        return out

    def __getattr__(self, name: str) -> Any:  # writes and reflogs go to the local refs
        return getattr(self.local, name)


class LayeredRepository:
    """A local repository merged with its project's shared remote, for reading."""

    def __init__(self, local: Repository, remote: RemoteRepository) -> None:
        self.local = local
        self.remote_repo = remote
        self.root = local.root
        self.config = local.config
        self.heartbeats_dir = local.heartbeats_dir
        self.objects = LayeredObjects(local.objects, remote.objects)
        self.refs = _LayeredRefs(local.refs, remote.refs)

    @property
    def statcache(self) -> Any:
        return self.local.statcache

    def experiment_ref(self, experiment_id: bytes) -> str:
        return f"experiments/{experiment_id.hex()}"

    def close(self) -> None:
        self.local.close()
        self.remote_repo.close()


def merged(local: Repository, remote: RemoteRepository) -> Any:
    """The merged view, or the local repository alone (with a warning) when the remote cannot
    be reached."""
    try:
        remote.refs.heads()
        remote.objects.refresh()
    except RepositoryNotFound:
        return local  # nothing was pushed there yet (the first push creates it)
    except RemoteError as e:
        logger.warning("replicate: cannot reach %s (%s); showing local experiments only",
                       remote.url, e)
        return local
    return LayeredRepository(local, remote)
