"""One Remote implementation over fsspec: file://, memory://, s3://, gs:// and any other
fsspec URL. Backend errors are translated to RemoteError subclasses here, in one place.

Credentials and endpoints come from each cloud's standard environment: ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``;
``STORAGE_EMULATOR_HOST``, ``GOOGLE_APPLICATION_CREDENTIALS``. Network calls have bounded
timeouts, so an unreachable endpoint is an error, never a hang.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from replicate.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteExists,
    RemoteNotFound,
    RemoteUnavailable,
)
from replicate.fsutil import create_exclusive, fsync_dir, tmp_name, write_atomic
from replicate.remotes.base import KeyInfo, RemoteProperties

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 120

_AUTH_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
    "InvalidToken", "AuthFailure", "UnrecognizedClientException", "Forbidden",
}
_TRANSIENT_NAMES = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError",
    "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ProxyConnectionError",
    "ServerTimeoutError", "TransportError",
}


def split_url(url: str) -> tuple[str, str]:
    """(scheme, rest) of a repository URL; plain paths are file://."""
    if "://" not in url:
        return "file", url
    scheme, rest = url.split("://", 1)
    return scheme.lower(), rest


def _chain(e: BaseException) -> list[BaseException]:
    out = []
    cur: BaseException | None = e
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def translate(e: BaseException, url: str, what: str) -> RemoteError:
    """The RemoteError for a backend exception."""
    if isinstance(e, RemoteError):
        return e
    for x in _chain(e):
        name = type(x).__name__
        code = ""
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket" or "NoSuchBucket" in str(x) or "bucket does not exist" in str(
            x
        ).lower():
            return RemoteNotFound(f"{url}: the bucket does not exist; create it first")
        if code in _AUTH_CODES or name in ("NoCredentialsError", "PartialCredentialsError"):
            return RemoteAuthError(
                f"{url}: credentials refused ({code or name}); check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or GOOGLE_APPLICATION_CREDENTIALS"
            )
        if name in _TRANSIENT_NAMES or (
            isinstance(x, OSError) and x.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT,
                                                   errno.EHOSTUNREACH, errno.ECONNRESET)
        ):
            return RemoteUnavailable(f"{url}: cannot reach the remote while trying to {what} "
                                     f"({name}: {x})")
        status = getattr(x, "code", None) or getattr(x, "status", None)
        if isinstance(status, int) and status in (401, 403):
            return RemoteAuthError(f"{url}: access denied ({status}); check credentials")
        if isinstance(status, int) and status in (429, 500, 502, 503, 504):
            return RemoteUnavailable(f"{url}: transient error {status} while trying to {what}")
    if isinstance(e, FileExistsError):
        return RemoteExists(f"{url}: {what}: already exists")
    if isinstance(e, FileNotFoundError):
        return RemoteNotFound(f"{url}: {what}: not found")
    if isinstance(e, PermissionError):
        return RemoteAuthError(f"{url}: permission denied while trying to {what}")
    return RemoteError(f"{url}: failed to {what}: {type(e).__name__}: {e}")


def storage_options(scheme: str) -> dict[str, Any]:
    """Options for fsspec from the standard environment, with bounded timeouts."""
    if scheme in ("s3", "s3a"):
        opts: dict[str, Any] = {
            "skip_instance_cache": True,
            "use_listings_cache": False,
            "config_kwargs": {
                "connect_timeout": CONNECT_TIMEOUT,
                "read_timeout": READ_TIMEOUT,
                "retries": {"max_attempts": 3, "mode": "standard"},
            },
        }
        ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if ep:
            opts["endpoint_url"] = ep
        return opts
    if scheme in ("gs", "gcs"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        opts = {"skip_instance_cache": True, "requests_timeout": READ_TIMEOUT,
                "cache_timeout": 0}
        emu = os.environ.get("STORAGE_EMULATOR_HOST")
        if emu:
            opts["endpoint_url"] = emu if "://" in emu else f"http://{emu}"
            if not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                opts["token"] = "anon"
        return opts
    if scheme == "memory":
        return {}
    if scheme == "file":
        return {"auto_mkdir": True}
    return {"skip_instance_cache": True}


class FsspecRemote:
    """A Remote over any fsspec file system."""

    def __init__(self, url: str, options: dict[str, Any] | None = None,
                 connections: int = 8) -> None:
        import fsspec

        self.url = url.rstrip("/")
        scheme, _rest = split_url(self.url)
        opts = storage_options(scheme)
        opts.update(options or {})
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **opts)
        except ImportError as e:
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
            hint = f": pip install 'replicate[{extra}]'" if extra else ""
            raise RemoteError(f"{self.url}: support for {scheme}:// is not installed{hint}") from e
        except ValueError as e:
            raise RemoteError(f"{self.url}: {e}") from None
        self.root = root.rstrip("/")
        atomic = scheme in ("s3", "s3a", "gs", "gcs", "memory", "file")
        self.properties = RemoteProperties(scheme, connections, atomic)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def _rel(self, path: str) -> str:
        p = path.rstrip("/")
        r = self.root.lstrip("/")
        q = p.lstrip("/")
        if r and q.startswith(r + "/"):
            return q[len(r) + 1:]
        return q

    def get(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except Exception as e:
            raise translate(e, self.url, f"read {key}") from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            data = bytes(self.fs.cat_file(self._path(key), start=start, end=end))
        except Exception as e:
            raise translate(e, self.url, f"read {key}") from e
        if len(data) != end - start:
            raise RemoteError(f"{self.url}: short read of {key} ({len(data)} of {end - start})")
        return data

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        try:
            self.fs.pipe_file(self._path(key), data, mode="create" if create_only else "overwrite")
        except Exception as e:
            raise translate(e, self.url, f"write {key}") from e

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        try:
            self.fs.put_file(path, self._path(key), mode="create" if create_only else "overwrite")
        except Exception as e:
            raise translate(e, self.url, f"upload {key}") from e

    def get_file(self, key: str, path: str) -> None:
        try:
            self.fs.get_file(self._path(key), path)
        except Exception as e:
            raise translate(e, self.url, f"download {key}") from e

    def list(self, prefix: str) -> list[KeyInfo]:
        base = self._path(prefix.rstrip("/"))
        try:
            found = self.fs.find(base, detail=True, withdirs=False)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise translate(e, self.url, f"list {prefix}") from e
        out = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            out.append(KeyInfo(self._rel(path), int(info.get("size") or 0)))
        out.sort(key=lambda k: k.key)
        return out

    def exists(self, key: str) -> bool:
        try:
            self.fs.info(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except Exception as e:
            err = translate(e, self.url, f"check {key}")
            if isinstance(err, RemoteNotFound) and "bucket" not in str(err):
                return False
            raise err from e

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            return
        except Exception as e:
            raise translate(e, self.url, f"delete {key}") from e


class LocalRemote(FsspecRemote):
    """file:// (a shared directory): atomic, durable writes with temp file + rename (fsspec's
    local writes are neither), create-only through link()."""

    def __init__(self, url: str, options: dict[str, Any] | None = None,
                 connections: int = 4) -> None:
        super().__init__(url, options, connections)
        self.base = Path(self.root)

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        target = self.base / key
        try:
            if create_only:
                if not create_exclusive(target, data):
                    raise RemoteExists(f"{self.url}: {key} already exists")
            else:
                write_atomic(target, data)
        except RemoteError:
            raise
        except Exception as e:
            raise translate(e, self.url, f"write {key}") from e

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        target = self.base / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_name(target)
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                if create_only:
                    try:
                        os.link(tmp, target)
                    except FileExistsError:
                        raise RemoteExists(f"{self.url}: {key} already exists") from None
                else:
                    os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            fsync_dir(target.parent)
        except RemoteError:
            raise
        except Exception as e:
            raise translate(e, self.url, f"upload {key}") from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self.base / key, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
        except Exception as e:
            raise translate(e, self.url, f"read {key}") from e
        if len(data) != end - start:
            raise RemoteError(f"{self.url}: short read of {key}")
        return data

    def list(self, prefix: str) -> list[KeyInfo]:
        base = self.base / prefix.rstrip("/")
        out: list[KeyInfo] = []
        if not base.exists():
            return out
        try:
            for dirpath, _dirs, files in os.walk(base):
                for n in files:
                    if n.startswith(".") and n.endswith(".tmp"):
                        continue  # a write in progress
                    p = Path(dirpath) / n
                    try:
                        size = p.stat().st_size
                    except FileNotFoundError:
                        continue
                    out.append(KeyInfo(p.relative_to(self.base).as_posix(), size))
        except Exception as e:
            raise translate(e, self.url, f"list {prefix}") from e
        out.sort(key=lambda k: k.key)
        return out
