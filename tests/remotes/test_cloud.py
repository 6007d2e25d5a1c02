"""S3 and GCS specifics: remotes at a bucket's root, and the two GCS upload paths (one multipart
request below a size limit, gcsfs's resumable upload above it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicate.errors import RemoteExists
from replicate.remotes import KeyInfo, open_remote
from replicate.remotes import fsspec_remote as fr

from .contract import KiB, MiB, payload, tricky_big


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_remote_at_the_bucket_root(request: pytest.FixtureRequest, kind: str) -> None:
    bucket_url = request.getfixturevalue(f"{kind}_url")
    r = open_remote(bucket_url)
    r.put("index/a", b"1")
    r.put("index2/b", b"22")
    r.put("config", b"{}", create_only=True)
    assert r.list("") == [KeyInfo("config", 2), KeyInfo("index/a", 1), KeyInfo("index2/b", 2)]
    assert r.list("index") == [KeyInfo("index/a", 1)]
    assert r.exists("config") and not r.exists("index")
    assert r.get_range("index2/b", 1, 2) == b"2"
    # a remote one level down sees the same keys, relative to its own root
    assert open_remote(bucket_url + "/index").list("") == [KeyInfo("a", 1)]


@pytest.mark.gcs
def test_gcs_resumable_path_round_trip(
    gcs_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Above the limit, put() goes through gcsfs's resumable upload (limit lowered here so
    that it takes 3 MiB, not 50); put_file() does above 5 MiB."""
    monkeypatch.setattr(fr, "GCS_PIPE_RESUMABLE", 1 * MiB)
    r = open_remote(gcs_url + "/store")
    data = tricky_big(3 * MiB)
    r.put("piped", data)
    assert r.get("piped") == data
    src = tmp_path / "big"
    src.write_bytes(tricky_big(6 * MiB))
    r.put_file("uploaded", str(src))
    assert r.get("uploaded") == src.read_bytes()


@pytest.mark.gcs
def test_gcs_create_only_up_to_the_multipart_limit(gcs_url: str, tmp_path: Path) -> None:
    """put(create_only) is one multipart request below 50 MiB: fake-gcs-server enforces it."""
    r = open_remote(gcs_url + "/store")
    data = payload(6 * MiB, 6)
    r.put("big", data, create_only=True)
    with pytest.raises(RemoteExists):
        r.put("big", b"other", create_only=True)
    with pytest.raises(RemoteExists):
        r.put("big", payload(4 * MiB, 4), create_only=True)
    src = tmp_path / "small"
    src.write_bytes(payload(64 * KiB, 64))
    with pytest.raises(RemoteExists):
        r.put_file("big", str(src), create_only=True)
    assert r.get("big") == data


@pytest.mark.gcs
@pytest.mark.xfail(
    strict=True,
    reason="fake-gcs-server 1.54.0 ignores ifGenerationMatch=0 on resumable uploads (put_file "
    "of 5 MiB or more, put of 50 MiB or more); real GCS enforces it. replicate uses create-only "
    "for small keys only (ref log entries, config, tombstones). Remove this mark when the "
    "emulator is upgraded (upstream PRs #2260, #2308, #2343).",
)
def test_gcs_create_only_on_the_resumable_path(gcs_url: str, tmp_path: Path) -> None:
    r = open_remote(gcs_url + "/store")
    r.put("k", b"first", create_only=True)
    src = tmp_path / "big"
    src.write_bytes(payload(6 * MiB, 1))
    with pytest.raises(RemoteExists):
        r.put_file("k", str(src), create_only=True)
    if r.get("k") != b"first":  # (no assert: pytest would diff 6 MiB of bytes)
        pytest.fail("the original bytes were overwritten")
