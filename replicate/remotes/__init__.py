"""Remotes move bytes by key (file://, memory://, s3://, gs://, any fsspec URL).

``open_remote(url)`` is the one place that turns a URL into a Remote (wrapped with retries).
"""

from __future__ import annotations

from pathlib import Path

from replicate.remotes.base import KeyInfo, Remote, RemoteProperties

__all__ = ["KeyInfo", "Remote", "RemoteProperties", "is_remote_url", "open_remote"]

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "memory", "file")


def is_remote_url(url: str) -> bool:
    """True for a URL with a scheme (file:// included); False for a plain path."""
    return "://" in url


def resolve_file_url(url: str, base: Path) -> str:
    """file://relative/path is relative to ``base`` (the project directory)."""
    if url.startswith("file://"):
        rest = url[len("file://"):]
        if not rest.startswith("/"):
            return "file://" + str((base / rest).resolve())
    return url


def open_remote(url: str, base: Path | None = None, retries: bool = True) -> Remote:
    """The Remote for ``url`` (plain paths and file:// use atomic local writes)."""
    from replicate.remotes.fsspec_remote import FsspecRemote, LocalRemote, split_url
    from replicate.remotes.wrappers import RetryingRemote

    if not is_remote_url(url):
        p = Path(url).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        url = "file://" + str(p.resolve())
    if base is not None:
        url = resolve_file_url(url, base)
    scheme, _ = split_url(url)
    r: Remote = LocalRemote(url) if scheme == "file" else FsspecRemote(url)
    return RetryingRemote(r) if retries else r
