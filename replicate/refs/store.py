"""Refs: named pointers to objects, updated by lock file + rename, with a reflog.

Layout under the repository directory::

    refs/experiments/<experiment id>   head checkpoint (or the experiment itself), hex + "\\n"
    refs/removed/<checkpoint id>       tombstone: that checkpoint's files were removed
    logs/refs/<name>                   reflog: one line per change

An update takes ``refs/<name>.lock`` with O_CREAT|O_EXCL (as Git does), checks the current value
(compare-and-swap), appends to the reflog, writes the new value into the lock file, fsyncs and
renames it over the ref. Readers never block and see the old value or the new. A lock left by a
process that died (same host, pid gone) is broken; any other held lock is waited for.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from replicate.errors import LockError, RefConflict
from replicate.fsutil import fsync_dir, tmp_name, write_atomic

ZERO = "0" * 64
_NAME_RE = re.compile(r"^(experiments|removed)/[0-9a-f]{64}$")
LOCK_TIMEOUT = 30.0


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


@dataclass(frozen=True)
class ReflogEntry:
    """One change of a ref."""

    old: bytes | None
    new: bytes | None
    time_ns: int
    message: str


def check_ref_name(name: str) -> str:
    """Validate a ref name (``experiments/<hex>`` or ``removed/<hex>``)."""
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid ref name {name!r}")
    return name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RefStore:
    """Refs and reflogs of a local repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refs_dir = root / "refs"
        self.logs_dir = root / "logs" / "refs"

    def _path(self, name: str) -> Path:
        return self.refs_dir / check_ref_name(name)

    def read(self, name: str) -> bytes | None:
        """The ID a ref points at, or None."""
        try:
            text = self._path(name).read_text().strip()
        except FileNotFoundError:
            return None
        return bytes.fromhex(text) if text else None

    def list(self, kind: str = "experiments") -> dict[str, bytes]:
        """Every ref under ``refs/<kind>/``: name -> ID."""
        d = self.refs_dir / kind
        out: dict[str, bytes] = {}
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return out
        base = os.fspath(d) + os.sep
        for n in names:  # os-level reads: 3x faster than Path.read_text over 10,000 refs
            if len(n) != 64:
                continue
            try:
                fd = os.open(base + n, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                text = os.read(fd, 256).strip()
            finally:
                os.close(fd)
            if text:
                out[f"{kind}/{n}"] = bytes.fromhex(text.decode())
        return out

    # -- locking ----------------------------------------------------------------------------

    def _lock(self, path: Path, timeout: float) -> int:
        """Take the ref's lock file (waiting, and breaking a dead owner's lock)."""
        lock = path.with_name(path.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        delay = 0.001
        me = f"{os.getpid()} {socket.gethostname()}\n".encode()
        while True:
            # The lock appears with its owner already written (temp file + link), so a writer
            # killed at any instant leaves a lock naming a dead process, which is broken.
            tmp = tmp_name(lock)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
            try:
                os.link(tmp, lock)
                tmp.unlink(missing_ok=True)
                return 0
            except FileExistsError:
                tmp.unlink(missing_ok=True)
                if self._break_stale(lock):
                    continue
                if time.monotonic() > deadline:
                    raise LockError(
                        f"ref {path.name} is locked by another process ({lock}); "
                        "if no replicate process is running, delete that file"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _break_stale(self, lock: Path) -> bool:
        try:
            text = lock.read_text()
        except FileNotFoundError:
            return True
        parts = text.split()
        if len(parts) < 2 or not parts[0].isdigit():
            # Being written right now, or garbage: only break it when old.
            try:
                if time.time() - lock.stat().st_mtime > 60:
                    lock.unlink(missing_ok=True)
                    return True
            except FileNotFoundError:
                return True
            return False
        pid, host = int(parts[0]), parts[1]
        if host == socket.gethostname() and not _pid_alive(pid):
            # Rename first so two breakers cannot both remove a fresh lock.
            grave = lock.with_name(lock.name + f".stale.{os.getpid()}")
            try:
                os.rename(lock, grave)
            except FileNotFoundError:
                return True
            try:
                if grave.read_text() == text:
                    grave.unlink(missing_ok=True)
                else:  # we moved a fresh lock: put it back
                    os.rename(grave, lock)
            except FileNotFoundError:
                pass
            return True
        return False

    # -- updates ----------------------------------------------------------------------------

    def update(
        self,
        name: str,
        new: bytes | None,
        old: bytes | None | _Any = ANY,
        message: str = "",
        timeout: float = LOCK_TIMEOUT,
    ) -> None:
        """Set ``name`` to ``new`` (None deletes it) if it currently equals ``old``.

        Raises RefConflict if the ref moved, LockError if it stays locked past ``timeout``.
        """
        path = self._path(name)
        lock = path.with_name(path.name + ".lock")
        self._lock(path, timeout)
        try:
            cur = self.read(name)
            if old is not ANY and cur != old:
                raise RefConflict(
                    f"ref {name} moved: expected {old.hex() if isinstance(old, bytes) else None}, "
                    f"found {cur.hex() if cur else None}"
                )
            self._append_log(name, cur, new, message)
            if new is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, (new.hex() + "\n").encode())
            fsync_dir(path.parent)
        finally:
            lock.unlink(missing_ok=True)

    def delete(self, name: str, old: bytes | None | _Any = ANY, message: str = "delete") -> None:
        """Delete a ref and its reflog (as git does for a deleted branch). Deleted experiments
        are remembered in ``logs/deleted`` so that push can delete them on remotes too."""
        self.update(name, None, old, message)
        log = self.logs_dir / name
        log.unlink(missing_ok=True)
        if name.startswith("experiments/"):
            rec = self.logs_dir.parent / "deleted"
            fd = os.open(rec, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, f"{name.split('/', 1)[1]} {time.time_ns()}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def deleted_experiments(self) -> set[bytes]:
        """Experiments deleted here (``rm``), for push to propagate."""
        try:
            text = (self.logs_dir.parent / "deleted").read_text()
        except FileNotFoundError:
            return set()
        out = set()
        for line in text.splitlines():
            h = line.split(" ", 1)[0]
            if len(h) == 64:
                try:
                    out.add(bytes.fromhex(h))
                except ValueError:
                    continue
        return out

    def _append_log(self, name: str, old: bytes | None, new: bytes | None, msg: str) -> None:
        log = self.logs_dir / name
        log.parent.mkdir(parents=True, exist_ok=True)
        line = (
            f"{old.hex() if old else ZERO} {new.hex() if new else ZERO} {time.time_ns()}\t"
            + msg.replace("\n", " ")
            + "\n"
        )
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def rewrite_reflog(self, name: str, entries: list[ReflogEntry]) -> None:
        """Replace a ref's reflog (reflog expiry), atomically, under the ref's lock."""
        path = self._path(name)
        self._lock(path, LOCK_TIMEOUT)
        try:
            lines = "".join(
                f"{e.old.hex() if e.old else ZERO} {e.new.hex() if e.new else ZERO} "
                f"{e.time_ns}\t{e.message}\n"
                for e in entries
            )
            write_atomic(self.logs_dir / name, lines.encode())
        finally:
            path.with_name(path.name + ".lock").unlink(missing_ok=True)

    def reflog(self, name: str) -> list[ReflogEntry]:
        """The reflog of ``name``, oldest first (torn last lines are skipped)."""
        try:
            text = (self.logs_dir / check_ref_name(name)).read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            head, _, msg = line.partition("\t")
            parts = head.split()
            if len(parts) != 3 or len(parts[0]) != 64 or len(parts[1]) != 64:
                continue
            try:
                old = None if parts[0] == ZERO else bytes.fromhex(parts[0])
                new = None if parts[1] == ZERO else bytes.fromhex(parts[1])
                out.append(ReflogEntry(old, new, int(parts[2]), msg))
            except ValueError:
                continue
        return out

    def stale_locks(self) -> list[Path]:
        """Lock files present now (for fsck)."""
        if not self.refs_dir.is_dir():
            return []
        return [p for p in self.refs_dir.rglob("*.lock")]

