"""Failures of real servers: each one a clear RemoteError subclass, in bounded time.

Remotes are opened with ``open_remote(url)`` as replicate opens them; with the retry wrapper
where the bound must cover every retry layer (RetryingRemote, s3fs/botocore, gcsfs), without it
where only the error class is checked (to keep the suite fast).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from replicate.errors import RemoteAuthError, RemoteError, RemoteNotFound, RemoteUnavailable
from replicate.remotes import Remote, fsspec_remote, open_remote

from .conftest import HOST, AuthS3, free_port

BOUND = 20.0  # seconds: no failure may take longer to surface
MISSING = "no-such-bucket-xyz"


@contextmanager
def within(seconds: float = BOUND) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    elapsed = time.monotonic() - t0
    assert elapsed < seconds, f"took {elapsed:.1f} s (bound {seconds} s)"


def operations(r: Remote, tmp_path: Path) -> dict[str, Callable[[], object]]:
    """One call of every Remote method."""
    src = tmp_path / "upload"
    src.write_bytes(b"x" * 100)
    return {
        "get": lambda: r.get("k"),
        "get_range": lambda: r.get_range("k", 0, 1),
        "put": lambda: r.put("k", b"x"),
        "put create_only": lambda: r.put("k", b"x", create_only=True),
        "put_file": lambda: r.put_file("k", str(src)),
        "get_file": lambda: r.get_file("k", str(tmp_path / "download")),
        "list": lambda: r.list(""),
        "exists": lambda: r.exists("k"),
        "delete": lambda: r.delete("k"),
    }


def assert_every_call_raises(
    r: Remote,
    tmp_path: Path,
    error: type[RemoteError],
    match: str | None = None,
    only: tuple[str, ...] = (),
) -> None:
    for name, call in operations(r, tmp_path).items():
        if only and name not in only:
            continue
        with within():
            with pytest.raises(error, match=match) as info:
                call()
        assert isinstance(info.value, error), name


# --- missing bucket ----------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    """Never an empty listing or exists() == False: the bucket is named in the error."""
    for url in (f"s3://{MISSING}/store", f"s3://{MISSING}"):
        assert_every_call_raises(open_remote(url), tmp_path, RemoteNotFound, MISSING)


@pytest.mark.gcs
def test_gcs_missing_bucket(gcs_endpoint: str, tmp_path: Path) -> None:
    for url in (f"gs://{MISSING}/store", f"gs://{MISSING}"):
        assert_every_call_raises(open_remote(url), tmp_path, RemoteNotFound, MISSING)


@pytest.mark.s3
def test_missing_key_in_existing_bucket_is_not_a_bucket_error(s3_url: str) -> None:
    r = open_remote(s3_url + "/store")
    with pytest.raises(RemoteNotFound) as info:
        r.get("k")
    assert "bucket" not in str(info.value)
    assert r.exists("k") is False
    assert r.list("") == []


# --- credentials -------------------------------------------------------------------------------


def _use_keys(monkeypatch: pytest.MonkeyPatch, server: AuthS3, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


@pytest.mark.s3
def test_s3_right_credentials_work(s3_auth: AuthS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the two tests below: the auth-checking server accepts the real key."""
    _use_keys(monkeypatch, s3_auth, s3_auth.key_id, s3_auth.secret)
    r = open_remote(f"s3://{s3_auth.bucket}/store")
    assert r.get("k") == b"secret bytes"
    r.put("k2", b"more")
    assert [k.key for k in r.list("")] == ["k", "k2"]


@pytest.mark.s3
@pytest.mark.parametrize("which", ["unknown key id", "wrong secret"])
def test_s3_wrong_credentials(
    s3_auth: AuthS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, which: str
) -> None:
    if which == "unknown key id":
        _use_keys(monkeypatch, s3_auth, "AKIAUNKNOWNUNKNOWN00", s3_auth.secret)
    else:
        _use_keys(monkeypatch, s3_auth, s3_auth.key_id, "not-the-secret")
    r = open_remote(f"s3://{s3_auth.bucket}/store")
    assert_every_call_raises(r, tmp_path, RemoteAuthError, "credentials")


# --- unreachable and silent endpoints ----------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(64)  # the kernel completes handshakes; nobody ever reads or replies
        yield s.getsockname()[1]


def test_s3_unreachable_endpoint(
    closed_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{HOST}:{closed_port}")
    r = open_remote("s3://bucket/store")  # with retries: the bound covers every retry layer
    with within():
        with pytest.raises(RemoteUnavailable, match="cannot reach"):
            r.get("k")
    bare = open_remote("s3://bucket/store", retries=False)
    assert_every_call_raises(bare, tmp_path, RemoteUnavailable, only=("put", "list", "exists"))


def test_gcs_unreachable_endpoint(
    closed_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the retry wrapper (~1.5 s a call: gcsfs makes 2 attempts); with it, a call
    fails after ~8 s (4 attempts), measured but not run here to keep the suite fast."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{HOST}:{closed_port}")
    bare = open_remote("gs://bucket/store", retries=False)
    assert_every_call_raises(bare, tmp_path, RemoteUnavailable, "cannot reach", ("get", "put"))


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_silent_endpoint_times_out(
    silent_port: int, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """A server that never answers is an error after the read timeout, never a hang."""
    monkeypatch.setattr(fsspec_remote, "READ_TIMEOUT", 0.3)
    endpoint = f"http://{HOST}:{silent_port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    r = open_remote(f"{scheme}://bucket/store", retries=False)
    with within(15):
        with pytest.raises(RemoteUnavailable):
            r.get("k")


# --- misuse ------------------------------------------------------------------------------------


def test_unknown_scheme() -> None:
    with pytest.raises(RemoteError, match="nosuchproto"):
        open_remote("nosuchproto://x/y")


def test_invalid_range(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path}", "memory://invalid-range"):
        r = open_remote(url)
        r.put("k", b"0123456789")
        with pytest.raises(RemoteError):
            r.get_range("k", 5, 4)
        with pytest.raises(RemoteError):
            r.get_range("k", -1, 4)
