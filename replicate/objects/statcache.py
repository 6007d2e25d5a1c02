"""The stat cache: (path, size, mtime, ctime, inode) -> file object ID, so re-saving an
unchanged multi-GB file costs a ``stat``, not a re-hash (as Git's index and DVC's md5 DB do).

Entries are recorded only when the file's mtime was already older than the file system's
timestamp granularity when it was read (Git's "racily clean" rule): a later write within the
same timestamp tick would otherwise go unnoticed. File systems with nanosecond timestamps tick
at most every few milliseconds (RACY_NS); whole-second timestamps get RACY_COARSE_NS. Where
the file system has fine-grained ("multigrain") timestamps, any write after our stat changes
the mtime, so no entry is racy (probed once per device).

The cache is best-effort: any database error disables it silently.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

RACY_NS = 100_000_000
RACY_COARSE_NS = 2_000_000_000


_FINE: dict[int, bool] = {}


def fine_grained_timestamps(probe_dir: Path) -> bool:
    """True if the file system of ``probe_dir`` gives a write that follows a ``stat`` a newer
    timestamp even within one clock tick (Linux multigrain timestamps, 6.13+). Then a stat
    taken before reading a file is enough to detect any later change, and no file is ever
    "racily clean". Probed once per device and process with a temporary file."""
    try:
        dev = os.stat(probe_dir).st_dev
    except OSError:
        return False
    if dev in _FINE:
        return _FINE[dev]
    ok = False
    p = probe_dir / f".mtime-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(p, "wb") as f:
            f.write(b"a")
        fine = 0
        for _ in range(3):
            before = os.stat(p).st_mtime_ns
            with open(p, "r+b") as f:
                f.write(b"b")
            after = os.stat(p).st_mtime_ns
            if 0 < after - before < 1_000_000:  # changed, by less than any clock tick
                fine += 1
        ok = fine == 3
    except OSError:
        ok = False
    finally:
        try:
            p.unlink()
        except OSError:
            pass
    _FINE[dev] = ok
    return ok


class StatCache:
    """A small SQLite table shared by every process using the repository.

    Args:
        path: the database file.
        probe_dir: a directory on the file system holding the project (used once to learn
            whether its timestamps are fine-grained; see :func:`fine_grained_timestamps`).
    """

    def __init__(self, path: Path, probe_dir: Path | None = None) -> None:
        self.path = path
        self.probe_dir = probe_dir
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection | None:
        if self._broken:
            return None
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, size INTEGER,"
                    " mtime INTEGER, ctime INTEGER, ino INTEGER, dev INTEGER, file BLOB)"
                )
                self._db = db
            except sqlite3.Error:
                self._broken = True
                return None
        return self._db

    @staticmethod
    def key(st: os.stat_result) -> tuple[int, int, int, int, int]:
        """The stat fields that must all match."""
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def get(self, path: str, st: os.stat_result) -> bytes | None:
        """The file ID recorded for ``path`` if its stat is unchanged, else None."""
        with self._lock:
            db = self._conn()
            if db is None:
                return None
            try:
                row = db.execute(
                    "SELECT size, mtime, ctime, ino, dev, file FROM stat WHERE path = ?", (path,)
                ).fetchone()
            except sqlite3.Error:
                return None
        if row is None or tuple(row[:5]) != self.key(st):
            return None
        return bytes(row[5])

    def put(self, path: str, st: os.stat_result, file_id: bytes, read_start_ns: int) -> None:
        """Record ``file_id`` for ``path`` unless the stat is racy (mtime too recent)."""
        if not self.trusted(st, read_start_ns):
            return
        with self._lock:
            db = self._conn()
            if db is None:
                return
            try:
                with db:
                    db.execute(
                        "INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (path, *self.key(st), file_id),
                    )
            except sqlite3.Error:
                return

    def trusted(self, st: os.stat_result, read_start_ns: int) -> bool:
        """True if a file read at ``read_start_ns`` with stat ``st`` can be recognised as
        unchanged later by its stat alone."""
        return not is_racy(st, read_start_ns) or self._fine(st)

    def _fine(self, st: os.stat_result) -> bool:
        if self.probe_dir is None:
            return False
        try:
            same_fs = os.stat(self.probe_dir).st_dev == st.st_dev
        except OSError:
            return False
        return same_fs and fine_grained_timestamps(self.probe_dir)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def is_racy(st: os.stat_result, read_start_ns: int) -> bool:
    """True when ``st`` is too recent (relative to when the file was read) to be trusted."""
    coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    margin = RACY_COARSE_NS if coarse else RACY_NS
    return max(st.st_mtime_ns, st.st_ctime_ns) >= read_start_ns - margin


def now_ns() -> int:
    """Wall-clock nanoseconds (the clock file systems stamp mtimes with)."""
    return time.time_ns()
