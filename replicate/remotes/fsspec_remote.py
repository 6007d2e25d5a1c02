"""One Remote implementation over fsspec: file://, memory://, s3://, gs:// and any other
fsspec URL. Backend errors are translated to RemoteError subclasses here, in one place.

Credentials and endpoints come from each cloud's standard environment: ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``;
``STORAGE_EMULATOR_HOST``, ``GOOGLE_APPLICATION_CREDENTIALS``. Network calls have bounded
timeouts, so an unreachable endpoint is an error, never a hang.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import threading
import types
from pathlib import Path
from typing import Any
from urllib.parse import quote

from replicate.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteExists,
    RemoteNotFound,
    RemoteUnavailable,
)
from replicate.fsutil import create_exclusive, fsync_dir, tmp_name, write_atomic
from replicate.remotes.base import KeyInfo, RemoteProperties

CONNECT_TIMEOUT = 5  # seconds to open a connection
READ_TIMEOUT = 60  # seconds of silence on an open connection (not a limit on a whole transfer)
# Attempts per call inside the cloud client (botocore / gcsfs). RetryingRemote retries on top, so
# an unreachable endpoint fails in a few seconds instead of minutes (gcsfs alone makes 6 attempts
# over ~33 s per call, botocore 4 with up to 7 s of backoff).
CLIENT_ATTEMPTS = 2
# GCS uploads below these sizes are one multipart request, which we send ourselves (see
# _gcs_upload); larger ones are gcsfs's resumable uploads. The put_file limit is gcsfs's own
# (fixed in its _put_file); the pipe limit is passed to gcsfs as its chunk size (a multiple of
# 256 KiB). Note: fake-gcs-server 1.54 enforces create-only on multipart uploads only.
GCS_PIPE_RESUMABLE = 50 * 2**20
GCS_PUT_FILE_RESUMABLE = 5 * 2**20

_MEMORY_LOCK = threading.Lock()  # memory:// is process-local: a lock makes create-only atomic

_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "AuthFailure",
    "UnrecognizedClientException",
    "Forbidden",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "ConditionalRequestConflict",
}
_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "TimeoutError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "ProxyConnectionError",
    "ServerTimeoutError",
    "TransportError",
    "ClientPayloadError",
    "IncompleteRead",
    "ResponseStreamingError",
    "FSTimeoutError",
    "ProxyError",
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


def bucket_of(url: str) -> str:
    """The bucket of an s3:// or gs:// URL ("" for other schemes)."""
    scheme, rest = split_url(url)
    if scheme in ("s3", "s3a", "gs", "gcs"):
        return rest.split("/", 1)[0]
    return ""


def _bucket_missing(url: str) -> RemoteNotFound:
    return RemoteNotFound(f"{url}: bucket {bucket_of(url)!r} does not exist; create it first")


def translate(e: BaseException, url: str, what: str) -> RemoteError:
    """The RemoteError for a backend exception."""
    if isinstance(e, RemoteError):
        return e
    for x in _chain(e):
        name = type(x).__name__
        code = ""
        http = None
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
            http = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or "NoSuchBucket" in str(x):
            return _bucket_missing(url)
        if code in _AUTH_CODES or name in ("NoCredentialsError", "PartialCredentialsError"):
            return RemoteAuthError(
                f"{url}: credentials refused ({code or name}) while trying to {what}; check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or GOOGLE_APPLICATION_CREDENTIALS"
            )
        if code == "PreconditionFailed":  # we only send If-None-Match: * (create-only puts)
            return RemoteExists(f"{url}: {what}: already exists")
        if (
            code in _TRANSIENT_CODES
            or name in _TRANSIENT_NAMES
            or (
                isinstance(x, OSError)
                and x.errno
                in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ECONNRESET)
            )
        ):
            return RemoteUnavailable(
                f"{url}: cannot reach the remote while trying to {what} ({code or name}: {x})"
            )
        status = getattr(x, "code", None) or getattr(x, "status", None) or http
        if isinstance(status, int) and status in (401, 403):
            return RemoteAuthError(
                f"{url}: access denied ({status}) while trying to {what}; check credentials"
            )
        if isinstance(status, int) and status in (408, 429, 500, 502, 503, 504):
            return RemoteUnavailable(f"{url}: transient error {status} while trying to {what}")
        if type(x) is OSError and str(x).startswith("Forbidden"):  # gcsfs: 403
            return RemoteAuthError(
                f"{url}: access denied while trying to {what}; check credentials"
            )
    if isinstance(e, FileExistsError):
        return RemoteExists(f"{url}: {what}: already exists")
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):  # a/b/c where a/b is a file
        return RemoteNotFound(f"{url}: {what}: not found")
    if isinstance(e, PermissionError):
        return RemoteAuthError(
            f"{url}: permission denied while trying to {what}; check credentials"
        )
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
                "retries": {"total_max_attempts": CLIENT_ATTEMPTS, "mode": "standard"},
            },
        }
        ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if ep:
            opts["endpoint_url"] = ep
        return opts
    if scheme in ("gs", "gcs"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import aiohttp

        # A number here would be aiohttp's *total* time per request (a large download would
        # fail); bound connecting and each read instead.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        opts = {"skip_instance_cache": True, "requests_timeout": timeout, "cache_timeout": 0}
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


def _bound_client_retries(fs: Any, scheme: str) -> None:
    """Fewer attempts inside the cloud client (RetryingRemote retries on top of it)."""
    if scheme in ("s3", "s3a"):
        fs.retries = CLIENT_ATTEMPTS  # s3fs's own loop around botocore's
    elif scheme in ("gs", "gcs"):
        # gcsfs fixes 6 attempts at class definition; re-wrap this instance's request methods.
        try:
            from gcsfs.retry import retry_request
        except ImportError:  # pragma: no cover
            return
        for name in ("_request", "_get_file_request", "_get_file_concurrent"):
            inner = getattr(getattr(type(fs), name, None), "__wrapped__", None)
            if inner is not None:
                bound = retry_request(retries=CLIENT_ATTEMPTS)(inner)
                setattr(fs, name, types.MethodType(bound, fs))


def check_upload(reply: dict[str, Any], data: bytes) -> str:
    """Why a GCS upload reply does not describe ``data`` ("" when it does)."""
    if "size" in reply and int(reply["size"]) != len(data):
        return f"stored {reply['size']} bytes of {len(data)}"
    md5 = reply.get("md5Hash")
    if md5 and base64.b64decode(md5) != hashlib.md5(data, usedforsecurity=False).digest():
        return "stored bytes differ from the bytes sent (MD5)"
    return ""


class FsspecRemote:
    """A Remote over any fsspec file system."""

    def __init__(
        self, url: str, options: dict[str, Any] | None = None, connections: int = 8
    ) -> None:
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
        _bound_client_retries(self.fs, scheme)
        self.root = root.rstrip("/")
        self.scheme = scheme
        self._gcs = scheme in ("gs", "gcs")
        self._bucket = bucket_of(self.url)
        self._bucket_ok = False
        self._lock: Any = _MEMORY_LOCK if scheme == "memory" else contextlib.nullcontext()
        atomic = scheme in ("s3", "s3a", "gs", "gcs", "memory", "file")
        self.properties = RemoteProperties(scheme, connections, atomic)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def _rel(self, path: str) -> str:
        p = path.rstrip("/")
        r = self.root.lstrip("/")
        q = p.lstrip("/")
        if r and q.startswith(r + "/"):
            return q[len(r) + 1 :]
        return q

    def _check_bucket(self) -> None:
        """Raise RemoteNotFound if the bucket is missing (checked once per remote), so that a
        missing bucket is an error and never an empty listing or ``exists() == False``."""
        if not self._bucket or self._bucket_ok:
            return
        try:
            if self._gcs:
                self.fs.call("GET", "b/{}", self._bucket, json_out=True)
            else:
                self.fs.call_s3("head_bucket", Bucket=self._bucket)
        except FileNotFoundError:
            raise _bucket_missing(self.url) from None
        except PermissionError:
            pass  # 403: the bucket exists, we may not look at it (object rights can suffice)
        except Exception as e:
            err = translate(e, self.url, "check the bucket")
            if isinstance(err, RemoteAuthError):
                pass
            elif isinstance(err, RemoteNotFound):
                raise _bucket_missing(self.url) from e
            else:
                raise err from e
        self._bucket_ok = True

    def _fail(self, e: Exception, what: str) -> RemoteError:
        """The error to raise for ``e``; a not-found first rules out a missing bucket."""
        err = translate(e, self.url, what)
        if isinstance(err, RemoteNotFound):
            self._check_bucket()
        return err

    def get(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except Exception as e:
            raise self._fail(e, f"read {key}") from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise RemoteError(f"{self.url}: invalid range {start}-{end} of {key}")
        try:
            if start == end:  # an empty range: servers answer it with the whole object
                size = int(self.fs.info(self._path(key))["size"])
                if start > size:
                    raise RemoteError(
                        f"{self.url}: range {start}-{end} is past the end of {key} ({size} bytes)"
                    )
                return b""
            data = bytes(self.fs.cat_file(self._path(key), start=start, end=end))
        except Exception as e:
            raise self._fail(e, f"read {key}") from e
        if len(data) != end - start:
            raise RemoteError(
                f"{self.url}: short read of {key} ({len(data)} of {end - start} "
                f"bytes at {start}; past the end?)"
            )
        return data

    def put(self, key: str, data: bytes, create_only: bool = False) -> None:
        try:
            mode = "create" if create_only else "overwrite"
            if self._gcs:
                if len(data) < GCS_PIPE_RESUMABLE:
                    self._gcs_upload(key, bytes(data), create_only)
                else:  # resumable upload of raw bytes; chunksize: never gcsfs's multipart path
                    self.fs.pipe_file(
                        self._path(key), data, mode=mode, chunksize=GCS_PIPE_RESUMABLE
                    )
                return
            with self._lock:
                self.fs.pipe_file(self._path(key), data, mode=mode)
        except Exception as e:
            raise self._fail(e, f"write {key}") from e

    def put_file(self, key: str, path: str, create_only: bool = False) -> None:
        try:
            if self._gcs and os.path.getsize(path) < GCS_PUT_FILE_RESUMABLE:
                with open(path, "rb") as f:
                    self._gcs_upload(key, f.read(), create_only)
                return
            with self._lock:
                self.fs.put_file(
                    path, self._path(key), mode="create" if create_only else "overwrite"
                )
        except Exception as e:
            raise self._fail(e, f"upload {key}") from e

    def _gcs_upload(self, key: str, data: bytes, create_only: bool) -> None:
        """One multipart upload with a boundary that does not occur in ``data``.

        gcsfs frames every small upload with the fixed boundary ``==0==`` and bare LF line
        breaks, so a payload containing a line ``--==0==`` is rejected or cut short, and one
        ending in CR can lose it. The reply is checked (size, MD5) before we return.
        """
        path = self._path(key)
        bucket, name, _gen = self.fs.split_path(path)
        boundary = secrets.token_hex(16)
        while data.find(boundary.encode()) >= 0:  # pragma: no cover (p = 2**-128 per position)
            boundary = secrets.token_hex(16)
        head = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'name': name})}\r\n--{boundary}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body = b"".join((head, data, f"\r\n--{boundary}--\r\n".encode()))
        params = {"ifGenerationMatch": "0"} if create_only else {}
        reply = self.fs.call(
            "POST",
            f"{self.fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            uploadType="multipart",
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
            data=body,
            json_out=True,
            **params,
        )
        self.fs.invalidate_cache(path)
        problem = check_upload(reply, data)
        if problem:
            with contextlib.suppress(Exception):  # remove what we stored, and only that
                self.fs.call(
                    "DELETE",
                    f"{self.fs.base}b/{quote(bucket, safe='')}/o/{quote(name, safe='')}",
                    ifGenerationMatch=str(reply.get("generation", "")),
                )
            raise RemoteError(f"{self.url}: write {key}: {problem}; the object was removed")

    def get_file(self, key: str, path: str) -> None:
        try:
            self.fs.get_file(self._path(key), path)
        except Exception as e:
            raise self._fail(e, f"download {key}") from e

    def list(self, prefix: str) -> list[KeyInfo]:
        prefix = prefix.strip("/")
        base = self._path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base, detail=True, withdirs=False)
        except FileNotFoundError:
            found = {}
        except Exception as e:
            raise translate(e, self.url, f"list {prefix}") from e
        out = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            key = self._rel(path)
            if prefix and not key.startswith(prefix + "/"):
                continue  # the prefix itself when it is a key, or a sibling (index2 for index)
            out.append(KeyInfo(key, int(info.get("size") or 0)))
        if not out:
            self._check_bucket()
        out.sort(key=lambda k: k.key)
        return out

    def exists(self, key: str) -> bool:
        try:
            info = self.fs.info(self._path(key))
        except Exception as e:
            err = translate(e, self.url, f"check {key}")
            if not isinstance(err, RemoteNotFound):
                raise err from e
            self._check_bucket()
            return False
        if info.get("type") == "directory":  # a prefix of other keys, not a key
            self._check_bucket()
            return False
        return True

    def delete(self, key: str) -> None:
        self._check_bucket()  # S3 deletes of a missing key succeed, even in a missing bucket
        try:
            with self._lock:
                self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            return
        except Exception as e:
            raise translate(e, self.url, f"delete {key}") from e


class LocalRemote(FsspecRemote):
    """file:// (a shared directory): atomic, durable writes with temp file + rename (fsspec's
    local writes are neither), create-only through link()."""

    def __init__(
        self, url: str, options: dict[str, Any] | None = None, connections: int = 4
    ) -> None:
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
        if start < 0 or end < start:
            raise RemoteError(f"{self.url}: invalid range {start}-{end} of {key}")
        try:
            with open(self.base / key, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(start)
                data = f.read(end - start)
        except Exception as e:
            raise translate(e, self.url, f"read {key}") from e
        if len(data) != end - start or start > size:
            raise RemoteError(
                f"{self.url}: short read of {key} ({len(data)} of {end - start} bytes at "
                f"{start}; past the end?)"
            )
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
