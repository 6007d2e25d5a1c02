"""Projects: where a run's files live and which repository records them; ``init()``."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replicate.config import REPO_DIR, find_project_dir, load_project_config
from replicate.errors import ConfigError, DoesNotExist, RefConflict, RepositoryNotFound
from replicate.experiment import Checkpoint, Experiment
from replicate.fsutil import flocked
from replicate.history import (
    CheckpointRecord,
    ExperimentRecord,
    experiment_ids,
    load_experiment,
    removed_checkpoints,
    resolve_checkpoint,
    resolve_experiment,
)
from replicate.lists import ExperimentList, Filter
from replicate.objects import codec
from replicate.repository import Repository
from replicate.version import __version__

if TYPE_CHECKING:
    from replicate.build import Capture
    from replicate.saver import Job

logger = logging.getLogger("replicate")


def _human(n: float) -> str:
    from replicate.saver import human

    return human(n)


class Project:
    """A project directory and the repository that records its experiments.

    Args:
        directory: the project directory (default: the nearest parent holding replicate.yaml
            or .replicate/, else the working directory).
        repository: a repository to read instead of the project's: a URL (s3://, gs://,
            file://, any fsspec URL) or a local path (default: ``<directory>/.replicate``,
            merged with the remote named by replicate.yaml's ``repository:`` if any).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 repository: str | None = None) -> None:
        self.directory = (
            Path(directory).resolve() if directory is not None else find_project_dir()
        )
        self._repository_arg = repository
        self._local: Repository | None = None
        self._read: Any = None
        self.experiments = ExperimentCollection(self)
        self.checkpoints = CheckpointCollection(self)

    def remote_url(self) -> str | None:
        """The shared remote named by replicate.yaml (None without one, or with an explicit
        ``repository`` argument)."""
        if self._repository_arg:
            return None
        return load_project_config(self.directory).repository

    def local_repo(self, create: bool = False) -> Repository:
        """The local repository that records new experiments (created when ``create``)."""
        if self._local is None:
            if self._repository_arg:
                from replicate.layered import _path_of, open_repository

                p = _path_of(self._repository_arg, Path.cwd())
                if create and p is not None and (not p.exists() or not any(p.iterdir())):
                    self._local = Repository.init(p)  # a new local repository at that path
                    return self._local
                r = open_repository(self._repository_arg, Path.cwd())
                if not isinstance(r, Repository):
                    raise ConfigError(
                        f"{self._repository_arg} is a remote repository: it can be read, but new "
                        "experiments are recorded locally and pushed (set 'repository:' in "
                        "replicate.yaml)"
                    )
                self._local = r
            else:
                path = self.directory / REPO_DIR
                self._local = Repository.init(path) if create else Repository.open(path)
        return self._local

    def repo(self, create: bool = False) -> Any:
        """The repository to read (see replicate.layered); with ``create``, the local one."""
        if create:
            return self.local_repo(create=True)
        if self._read is None:
            if self._repository_arg:
                from replicate.layered import open_repository

                self._read = open_repository(self._repository_arg, Path.cwd())
            else:
                url = self.remote_url()
                try:
                    local: Repository | None = self.local_repo()
                except RepositoryNotFound:
                    if url is None:
                        raise
                    local = None
                if url is None:
                    self._read = local  # the common case imports nothing more
                elif local is None:
                    from replicate.remote_repo import RemoteRepository

                    self._read = RemoteRepository(url, base=self.directory)
                else:
                    from replicate.layered import merged
                    from replicate.sync import open_remote_repo

                    self._read = merged(local, open_remote_repo(local, url, self.directory))
        return self._read

    def relpath(self, path: str | os.PathLike[str]) -> str:
        """``path`` as a POSIX path relative to the project directory (ValueError if it does
        not exist or lies outside the project)."""
        raw = os.fspath(path)
        if not isinstance(raw, str) or raw == "":
            raise ValueError("path must be a non-empty string")
        p = Path(raw)
        absolute = p if p.is_absolute() else self.directory / p
        absolute = Path(os.path.normpath(absolute))
        try:
            rel = absolute.relative_to(self.directory)
        except ValueError:
            raise ValueError(
                f"path {raw!r} is outside the project directory {self.directory}"
            ) from None
        if not os.path.lexists(absolute):
            raise ValueError(f"path {raw!r} does not exist (looked for {absolute})")
        r = rel.as_posix()
        if r == REPO_DIR or r.startswith(REPO_DIR + "/"):
            raise ValueError(f"path {raw!r} is inside the repository ({REPO_DIR}/); "
                             "checkpoint your files, not replicate's own")
        return "." if r in ("", ".") else codec.check_relpath(r)

    # -- writing ----------------------------------------------------------------------------

    def _create_experiment(self, path: str | None, params: Any,
                           disable_heartbeat: bool = False) -> Experiment:
        from replicate import metadata
        from replicate.build import snapshot

        p = metadata.to_jsonable(params if params is not None else {})
        if not isinstance(p, dict):
            raise ValueError(f"params must be a dict of name -> value, not {type(params).__name__}")
        rel = self.relpath(path) if path is not None else None
        meta = metadata.collect(str(self.directory))
        repo = self.local_repo(create=True)
        with flocked(repo.root / "gc.lock"), repo.objects.transaction() as txn:
            code = snapshot(txn, self.directory, rel, repo.statcache)[0] if rel else None
            obj = codec.Experiment(
                created_ns=time.time_ns(),
                nonce=secrets.token_bytes(16),
                params=p,
                path=rel,
                code=code,
                user=meta.get("user") or "",
                host=meta.get("host") or "",
                command=meta.get("command") or "",
                python_version=meta.get("python_version") or "",
                packages=tuple(sorted((meta.get("python_packages") or {}).items())),
                git=meta.get("git"),
                system=meta.get("system") or {},
                replicate_version=__version__,
            )
            eid = txn.put_object(obj)
            txn.commit()
            repo.refs.update(repo.experiment_ref(eid), eid, old=None, message="init")
        exp = Experiment(self, ExperimentRecord(eid, obj, eid, []))
        exp._resumed = False
        if not disable_heartbeat:
            exp._start_heartbeat()
            _RUNNING.add(exp)
            _stop_in_multiprocessing_children()
        pusher = self.pusher()
        if pusher is not None:
            if disable_heartbeat:
                pusher.request(eid)
            else:
                pusher.started(eid)
        return exp

    def pusher(self) -> Any:
        """The background pusher when replicate.yaml names a shared repository, else None."""
        url = self.remote_url()
        if url is None:
            return None
        from replicate.autopush import pusher_for

        return pusher_for(self.local_repo(), url, self.directory)

    def _save_checkpoint_now(self, eid: bytes, rel: str | None, step: int,
                             metrics: dict[str, Any],
                             pm: tuple[str, str] | None) -> CheckpointRecord:
        """Capture, process and commit in the caller's thread (reading files as it goes)."""
        from replicate.build import capture

        repo = self.local_repo()
        created = time.time_ns()
        cap = capture(self.directory, rel, repo.statcache, repo.objects.has) if rel else None
        try:
            return self._commit(eid, cap, step, metrics, pm, created)
        finally:
            if cap is not None:
                cap.release()

    def _save_checkpoint_later(self, eid: bytes, rel: str | None, step: int,
                               metrics: dict[str, Any], pm: tuple[str, str] | None
                               ) -> tuple[Job, codec.Checkpoint]:
        """Capture now (memory within the budget, else a staging copy); return the job that
        will process and commit it, and the checkpoint's fields."""
        from replicate.build import MEMORY, capture
        from replicate.saver import Job, get_saver

        repo = self.local_repo()
        _preflight(repo, 0)
        saver = get_saver()
        created = time.time_ns()
        reserved = {"memory": 0, "staged": 0}

        def on_wait() -> None:  # says so once per process
            if not getattr(saver, "told_backpressure", False):
                saver.told_backpressure = True  # type: ignore[attr-defined]
                n, nbytes = saver.in_flight()
                logger.warning(
                    "replicate: %d checkpoint(s) (%s) are still being saved; waiting for "
                    "memory before capturing the next one (budget %s, set "
                    "REPLICATE_MEMORY_BUDGET to change it)",
                    n, _human(nbytes), _human(saver.budget.memory_limit),
                )

        def placement(size: int) -> str:
            where = saver.budget.place(size, on_wait)
            reserved["memory" if where == MEMORY else "staged"] += size
            return where

        cap = None
        try:
            if rel:
                cap = capture(self.directory, rel, repo.statcache, repo.objects.has,
                              placement=placement, staging_dir=repo.new_staging_dir(),
                              buffers=saver.pool.get, recent=saver.recent)
        except BaseException:
            saver.budget.release(reserved["memory"], reserved["staged"])
            raise
        try:
            _preflight(repo, cap.memory_bytes if cap is not None else 0)
        except OSError:
            if cap is not None:
                cap.release()
            saver.budget.release(reserved["memory"], reserved["staged"])
            raise
        if cap is not None and cap.memory_bytes:
            saver.pool.prefetch(max(len(f) for f in _memory_sizes(cap)))
        obj = codec.Checkpoint(experiment=eid, parent=None, created_ns=created, step=step,
                               path=rel, files=None, metrics=metrics, primary_metric=pm)

        def commit(job: Job) -> CheckpointRecord:
            return self._commit(eid, cap, step, metrics, pm, created)

        return Job(commit, cap, memory=reserved["memory"], staged=reserved["staged"]), obj

    def _commit(self, eid: bytes, cap: Capture | None, step: int, metrics: dict[str, Any],
                pm: tuple[str, str] | None, created: int) -> CheckpointRecord:
        """Store a capture and move the experiment's ref to a new checkpoint (ref last)."""

        repo = self.local_repo()
        with flocked(repo.root / "gc.lock"):
            return self._commit_locked(repo, eid, cap, step, metrics, pm, created)

    def _commit_locked(self, repo: Repository, eid: bytes, cap: Capture | None, step: int,
                       metrics: dict[str, Any], pm: tuple[str, str] | None,
                       created: int) -> CheckpointRecord:
        from replicate.build import build

        # gc may have removed unreferenced objects since this process loaded the index: see
        # its current index before deduplicating against it (we hold gc.lock shared now)
        repo.objects.refresh()
        ref = repo.experiment_ref(eid)
        files = None
        if cap is not None:
            with repo.objects.transaction() as txn:
                files = build(txn, cap, repo.statcache)
        for _attempt in range(100):
            head = repo.refs.read(ref)
            if head is None:
                raise DoesNotExist(f"experiment {eid.hex()[:7]} was deleted")
            obj = codec.Checkpoint(
                experiment=eid,
                parent=None if head == eid else head,
                created_ns=created,
                step=step,
                path=cap.rel if cap is not None else None,
                files=files,
                metrics=metrics,
                primary_metric=pm,
            )
            with repo.objects.transaction() as txn:
                cid = txn.put_object(obj)
            try:
                repo.refs.update(ref, cid, old=head, message=f"checkpoint step {step}")
            except RefConflict:
                continue  # another process checkpointed this experiment: rebase and retry
            return CheckpointRecord(cid, obj)
        raise RefConflict(f"experiment {eid.hex()[:7]} keeps moving; checkpoint not recorded")

    def _delete_experiment(self, eid: bytes) -> None:
        from replicate.history import load_experiment
        from replicate.remove import remove_experiment

        repo = self.local_repo()
        rec = load_experiment(repo, eid)
        remove_experiment(repo, eid, tuple(c.id for c in rec.checkpoints))


def _preflight(repo: Repository, nbytes: int) -> None:
    """Fail now, not in the background, when the repository clearly cannot take a checkpoint
    (so checkpoint() can warn and return None): its temp directory is unusable, or the disk
    lacks room for the captured bytes."""
    import errno

    tmp = repo.root / "tmp"
    if not tmp.is_dir() or not os.access(tmp, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"cannot write to {tmp}; the repository is not writable")
    try:
        st = os.statvfs(repo.root)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if nbytes and free < nbytes + (16 << 20):
        raise OSError(errno.ENOSPC, f"not enough free space in {repo.root} "
                      f"({free >> 20} MiB free, the checkpoint needs up to {nbytes >> 20} MiB)")


def _memory_sizes(cap: Capture) -> list[bytes]:
    from replicate.build import MEMORY, CapturedDir, CapturedFile

    out = []
    stack = [cap.root]
    while stack:
        d = stack.pop()
        for n in d.children.values():
            if isinstance(n, CapturedDir):
                stack.append(n)
            elif isinstance(n, CapturedFile) and n.source == MEMORY:
                out.append(n.data)
    return out


class ExperimentCollection:
    """``project.experiments``: create, get and list experiments."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def create(self, path: str | None = None, params: dict[str, Any] | None = None,
               disable_heartbeat: bool = False) -> Experiment:
        """Start recording a new experiment (what :func:`replicate.init` does)."""
        return self.project._create_experiment(path, params, disable_heartbeat)

    def get(self, experiment_id: str) -> Experiment:
        """The experiment whose ID starts with ``experiment_id``."""
        repo = self.project.repo()
        eid = resolve_experiment(repo, experiment_id)
        return Experiment(self.project, load_experiment(repo, eid))

    def list(self, filter: Filter | None = None) -> ExperimentList:  # noqa: A002
        """Every experiment, oldest first; ``filter`` keeps those for which it returns True."""
        try:
            repo = self.project.repo()
        except RepositoryNotFound:
            return ExperimentList()
        removed = removed_checkpoints(repo)
        exps = [Experiment(self.project, load_experiment(repo, e, removed))
                for e in experiment_ids(repo)]
        exps.sort(key=lambda e: (e.created, e.id))
        if filter is not None:
            kept = []
            for e in exps:
                try:
                    if filter(e):
                        kept.append(e)
                except Exception as err:  # as the predecessor: warn and exclude
                    warnings.warn(f"filter failed on experiment {e.short_id()}: {err}",
                                  stacklevel=2)
            exps = kept
        return ExperimentList(exps)


class CheckpointCollection:
    """``project.checkpoints``: look up a checkpoint by ID prefix."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def get(self, checkpoint_id: str) -> Checkpoint:
        """The checkpoint whose ID starts with ``checkpoint_id``."""
        repo = self.project.repo()
        eid, cid = resolve_checkpoint(repo, checkpoint_id)
        exp = Experiment(self.project, load_experiment(repo, eid))
        for c in exp.checkpoints:
            if c.id == cid.hex():
                return c
        raise DoesNotExist(f"checkpoint {checkpoint_id} not found")  # pragma: no cover


_RUNNING: weakref.WeakSet[Experiment] = weakref.WeakSet()


def _stop_in_multiprocessing_children() -> None:
    """A multiprocessing child (fork) leaves through os._exit, skipping atexit: multiprocessing
    runs its own finalizers then, so stop heartbeats there too."""
    import sys

    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.current_process().name == "MainProcess":
        return
    from multiprocessing import util

    util.Finalize(None, _stop_all, exitpriority=10)


@atexit.register
def _stop_all() -> None:
    for exp in list(_RUNNING):
        try:
            exp.stop()
        except Exception:
            pass


def init(path: str | None = None, params: dict[str, Any] | None = None,
         disable_heartbeat: bool = False) -> Experiment:
    """Start recording an experiment in the project containing the working directory.

    Args:
        path: a file or directory (relative to the project directory) whose code to save,
            "." for the whole project, None to save no code.
        params: hyperparameters (JSON-able values; numpy/torch values are converted).
        disable_heartbeat: do not mark the experiment running (for notebooks).
    """
    return Project().experiments.create(path, params, disable_heartbeat)
