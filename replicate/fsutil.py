"""Durable file-system primitives: temp file, fsync, rename, directory fsync; lock files."""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def flocked(path: Path, exclusive: bool = False, timeout: float | None = None) -> Iterator[bool]:
    """Hold an advisory lock (flock) on ``path``: shared by default, exclusive on request.

    Blocks until the lock is taken, or until ``timeout`` seconds pass; yields True when held
    and False on timeout (the body then runs without the lock and must check)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if timeout is None:
            fcntl.flock(fd, mode)
            held = True
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        yield held
    finally:
        os.close(fd)  # closing releases the lock
