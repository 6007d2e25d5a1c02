"""Background sync: when replicate.yaml names a ``repository:``, every committed checkpoint is
pushed by a background worker, so ``replicate ls`` on another machine sees the run while it
trains, and running experiments publish heartbeats there.

Training never waits on the network: a request only marks an experiment as needing a push;
the worker pushes everything pending in one go (coalescing checkpoints taken meanwhile). At
exit the upload is finished (with a message when it takes more than a moment); if the process
dies, the next ``replicate push`` (or the next run) completes it. Remote errors are reported
loudly once and retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from replicate.errors import RemoteError
from replicate.repository import Repository

logger = logging.getLogger("replicate")

HEARTBEAT_EVERY = 10.0
RETRY_MAX = 60.0


class SyncWarning(UserWarning):
    """Uploading to the shared repository failed (it will be retried)."""


warnings.simplefilter("always", SyncWarning)


class AutoPusher:
    """Pushes one local repository's experiments to one remote, in the background."""

    def __init__(self, repo: Repository, url: str, base: Path) -> None:
        self.repo = repo
        self.url = url
        self.base = base
        self.pending: set[bytes] = set()
        self.running: set[bytes] = set()  # experiments of this process with heartbeats
        self.cv = threading.Condition()
        self.busy = False
        self.thread: threading.Thread | None = None
        self._rrepo: Any = None
        self._hb: dict[bytes, Any] = {}
        self._warned = False
        self.last_error: BaseException | None = None

    def _remote(self) -> Any:
        if self._rrepo is None:
            from replicate.sync import open_remote_repo

            self._rrepo = open_remote_repo(self.repo, self.url, self.base)
        return self._rrepo

    def request(self, eid: bytes) -> None:
        """Mark an experiment as needing a push (never blocks on the network)."""
        with self.cv:
            self.pending.add(eid)
            self._start()
            self.cv.notify_all()

    def started(self, eid: bytes) -> None:
        """An experiment of this process started: push it and publish heartbeats."""
        with self.cv:
            self.running.add(eid)
        self.request(eid)

    def stopped(self, eid: bytes) -> None:
        """An experiment of this process stopped."""
        with self.cv:
            self.running.discard(eid)
            self.cv.notify_all()

    def _start(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="replicate-push", daemon=True)
            self.thread.start()

    def _due(self, last_beat: float) -> bool:
        if self.pending:
            return True
        if any(e not in self.running for e in self._hb):
            return True  # a heartbeat to remove now
        return bool(self.running) and time.monotonic() - last_beat >= HEARTBEAT_EVERY

    def _run(self) -> None:
        delay = 1.0
        last_beat = 0.0
        while True:
            with self.cv:
                while not self._due(last_beat):
                    if not self.running and not self._hb:
                        if not self.cv.wait(timeout=5) and not self._due(last_beat):
                            self.thread = None
                            return
                    else:
                        left = HEARTBEAT_EVERY - (time.monotonic() - last_beat)
                        self.cv.wait(timeout=max(0.05, left))
                todo = set(self.pending)
                self.pending.clear()
                self.busy = True
            try:
                if todo:
                    from replicate.sync import push

                    push(self.repo, self._remote(), experiments=sorted(todo))
                self._beat()
                last_beat = time.monotonic()
                delay = 1.0
                self.last_error = None
            except (RemoteError, OSError) as e:
                self.last_error = e
                if not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"replicate: cannot upload to {self.url}: {e}; will keep retrying "
                        "(checkpoints are safe locally; `replicate push` uploads them later)",
                        SyncWarning, stacklevel=1,
                    )
                with self.cv:
                    self.pending |= todo
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            except Exception as e:  # never let the worker die silently
                self.last_error = e
                logger.warning("replicate: background upload failed: %s", e)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            finally:
                with self.cv:
                    self.busy = False
                    self.cv.notify_all()

    def _beat(self) -> None:
        from replicate.catalog import RemoteHeartbeat

        with self.cv:
            running = set(self.running)
        for eid in running:
            hb = self._hb.get(eid)
            if hb is None:
                hb = self._hb[eid] = RemoteHeartbeat(self._remote(), eid)
            hb.beat()
        for eid in list(self._hb):
            if eid not in running:
                self._hb.pop(eid).stop()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while self.pending or self.busy:
                if self.last_error is not None and not self.busy:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cv.wait(timeout=0.2 if left is None else min(left, 0.2))
        return True

    def finish_at_exit(self) -> None:
        """At interpreter exit: finish uploading, stop heartbeats."""
        with self.cv:
            self.running.clear()
        if not self.drain(1.0):
            logger.warning("replicate is uploading checkpoints to %s; it will exit when it has "
                           "finished (or run `replicate push` later if you stop it).", self.url)
            ok = self.drain(None if self.last_error is None else 0)
            if ok:
                logger.warning("replicate has finished uploading.")
            else:
                logger.warning("replicate could not finish uploading to %s (%s); run "
                               "`replicate push` to finish.", self.url, self.last_error)
        try:
            for hb in list(self._hb.values()):
                hb.stop()
            self._hb.clear()
        except RemoteError:
            pass


_PUSHERS: dict[tuple[str, str], AutoPusher] = {}
_LOCK = threading.Lock()


def pusher_for(repo: Repository, url: str, base: Path) -> AutoPusher:
    """The process's pusher for (local repository, remote URL)."""
    from replicate.saver import get_saver

    key = (str(repo.root), url)
    with _LOCK:
        p = _PUSHERS.get(key)
        if p is None:
            p = _PUSHERS[key] = AutoPusher(repo, url, base)
            saver = get_saver()
            saver.after_drain.append(p.finish_at_exit)
            saver.register_exit()
        return p
