"""Heartbeats: a running experiment refreshes ``heartbeats/<experiment id>`` every 5 s.

An experiment is running while its heartbeat is fresh (younger than 30 s) and not marked
stopped. ``stop()`` and a clean interpreter exit mark it stopped at once; a process killed
with SIGKILL simply stops refreshing, so it shows as stopped within 30 s. A stopped experiment has no heartbeat
file, so listing thousands of finished experiments costs no heartbeat reads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from replicate.fsutil import write_atomic

INTERVAL = 5.0
TIMEOUT_NS = 30_000_000_000


def heartbeat_path(heartbeats_dir: Path, experiment_id: bytes) -> Path:
    """The heartbeat file of an experiment."""
    return heartbeats_dir / experiment_id.hex()


def write(path: Path, stopped: bool = False) -> None:
    """Write a heartbeat record now."""
    rec = {"last_ns": time.time_ns(), "pid": os.getpid(), "stopped": stopped}
    write_atomic(path, json.dumps(rec).encode(), durable=False)


def read(path: Path) -> dict[str, object] | None:
    """The heartbeat record, or None when absent or unreadable."""
    try:
        rec = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def is_running(path: Path, now_ns: int | None = None) -> bool:
    """True if the heartbeat is fresh and not marked stopped."""
    rec = read(path)
    if rec is None or rec.get("stopped"):
        return False
    last = rec.get("last_ns")
    if not isinstance(last, int):
        return False
    return (now_ns or time.time_ns()) - last < TIMEOUT_NS


def mark_stopped(path: Path) -> None:
    """Mark stopped: the heartbeat file is removed (absent means stopped)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


class Heartbeat:
    """A daemon thread refreshing one experiment's heartbeat."""

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the first heartbeat now and keep refreshing in the background."""
        write(self.path)
        self._thread = threading.Thread(
            target=self._run, name="replicate-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                write(self.path)
            except OSError:
                pass  # never break training; the next beat may succeed

    def stop(self) -> None:
        """Stop refreshing and mark the experiment stopped."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        mark_stopped(self.path)

    @property
    def active(self) -> bool:
        """True until stopped."""
        return not self._stop.is_set()
