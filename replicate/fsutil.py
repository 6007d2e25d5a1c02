"""Durable file-system primitives: temp file, fsync, rename, directory fsync; lock files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_name(target: Path) -> Path:
    """A unique temp name next to ``target`` (same directory, so rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(target: Path, data: bytes, *, mkdir: bool = True, durable: bool = True) -> None:
    """Write ``data`` to ``target`` atomically: temp file, fsync, rename, fsync the directory.

    Readers see the old content or the new, never a mix. On any error the temp file is removed.
    """
    if mkdir:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def create_exclusive(target: Path, data: bytes) -> bool:
    """Create ``target`` with ``data`` only if it does not exist (durably). Returns False if it
    already existed. The content appears atomically (written to a temp file, then linked)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return True
