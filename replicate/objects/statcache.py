"""The stat cache: (path, size, mtime, ctime, inode) -> file object ID, so re-saving an
unchanged multi-GB file costs a ``stat``, not a re-hash (as Git's index and DVC's md5 DB do).

Entries are recorded only when the file's mtime was already older than the file system's
timestamp granularity when it was read (Git's "racily clean" rule): a later write within the
same timestamp tick would otherwise go unnoticed. File systems with nanosecond timestamps tick
at most every few milliseconds (RACY_NS); whole-second timestamps get RACY_COARSE_NS. The cache is best-effort: any database error disables it silently.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

RACY_NS = 100_000_000
RACY_COARSE_NS = 2_000_000_000


class StatCache:
    """A small SQLite table shared by every process using the repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        if is_racy(st, read_start_ns):
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
