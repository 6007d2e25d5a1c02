"""open_remote: URLs and plain paths to Remotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicate.errors import RemoteError
from replicate.remotes import is_remote_url, open_remote
from replicate.remotes.fsspec_remote import FsspecRemote, LocalRemote
from replicate.remotes.wrappers import RetryingRemote


def local(url: str, base: Path | None = None) -> LocalRemote:
    r = open_remote(url, base, retries=False)
    assert isinstance(r, LocalRemote)
    return r


def test_wrapped_with_retries_by_default(tmp_path: Path) -> None:
    r = open_remote(str(tmp_path))
    assert isinstance(r, RetryingRemote)
    assert isinstance(r.inner, LocalRemote)
    assert r.url == f"file://{tmp_path}" and r.properties.scheme == "file"


def test_plain_absolute_path(tmp_path: Path) -> None:
    r = local(str(tmp_path / "store"))
    assert r.url == f"file://{tmp_path}/store"
    r.put("packs/ab/p.pack", b"bytes")
    assert (tmp_path / "store/packs/ab/p.pack").read_bytes() == b"bytes"


def test_plain_relative_path_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = local("store/../shared")
    assert r.url == f"file://{tmp_path}/shared"
    r.put("k", b"v")
    assert (tmp_path / "shared/k").read_bytes() == b"v"


def test_plain_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert local("~/store").url == f"file://{tmp_path}/store"


def test_file_url_absolute(tmp_path: Path) -> None:
    r = local(f"file://{tmp_path}/store/", base=tmp_path / "elsewhere")
    assert r.url == f"file://{tmp_path}/store"  # base does not apply; trailing / dropped
    r.put("k", b"v")
    assert (tmp_path / "store/k").read_bytes() == b"v"
    assert [k.key for k in r.list("")] == ["k"]


def test_file_url_relative_to_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(tmp_path)  # not the base: must not matter
    r = local("file://../shared/store", base=project)
    assert r.url == f"file://{tmp_path}/shared/store"
    r.put("config", b"{}", create_only=True)
    assert (tmp_path / "shared/store/config").read_bytes() == b"{}"
    assert local("file://store", base=project).url == f"file://{project}/store"


def test_file_url_relative_without_base_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = local("file://store")
    r.put("k", b"v")
    assert (tmp_path / "store/k").read_bytes() == b"v"


def test_cloud_and_memory_urls_need_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    for url, scheme in [
        ("memory://x/y", "memory"),
        ("s3://bucket/path", "s3"),
        ("gs://bucket/path/", "gs"),
    ]:
        r = open_remote(url, retries=False)
        assert isinstance(r, FsspecRemote) and not isinstance(r, LocalRemote)
        assert r.properties.scheme == scheme
        assert r.properties.atomic_create
        assert r.url == url.rstrip("/")


def test_unknown_scheme_is_a_remote_error() -> None:
    with pytest.raises(RemoteError):
        open_remote("nosuchproto://bucket/x")


def test_is_remote_url() -> None:
    assert is_remote_url("s3://b/x") and is_remote_url("file:///x") and is_remote_url("memory://x")
    assert not is_remote_url("/abs/path") and not is_remote_url("rel/path")
