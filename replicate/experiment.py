"""The public Experiment and Checkpoint classes: recording a run and reading it back."""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from replicate.errors import DoesNotExist
from replicate.heartbeat import Heartbeat, heartbeat_path, is_running, mark_stopped
from replicate.history import CheckpointRecord, ExperimentRecord, load_experiment
from replicate.lists import CheckpointList
from replicate.objects import codec, ids
from replicate.objects.codec import KIND_TREE

if TYPE_CHECKING:
    from replicate.checkout import CheckoutResult
    from replicate.project import Project
    from replicate.saver import Job


class CheckpointWarning(UserWarning):
    """A checkpoint could not be saved; training goes on."""


warnings.simplefilter("always", CheckpointWarning)


def _warn_failed(exp: Experiment, step: int, e: BaseException, stacklevel: int) -> None:
    warnings.warn(
        f"replicate: could not save checkpoint (step {step}) of experiment "
        f"{exp.short_id()}: {type(e).__name__}: {e}; training continues",
        CheckpointWarning,
        stacklevel=stacklevel + 1,
    )


def _dt_from_ns(ns: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)


def validate_metrics(metrics: Any) -> dict[str, Any]:
    """Metrics as stored: a dict of str -> JSON-able values (NaN/Inf kept). ValueError else."""
    from replicate.metadata import to_jsonable

    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of name -> value, not {type(metrics).__name__}")
    for k in metrics:
        if not isinstance(k, str) or not k:
            raise ValueError(f"metric names must be non-empty strings, got {k!r}")
    out = to_jsonable(metrics, kind="metric")
    assert isinstance(out, dict)
    return out


def validate_primary_metric(pm: Any) -> tuple[str, str] | None:
    """``(name, "minimize"|"maximize")`` or None. ValueError else."""
    if pm is None:
        return None
    if not isinstance(pm, (tuple, list)) or len(pm) != 2:
        raise ValueError('primary_metric must be a tuple (name, "minimize" or "maximize")')
    name, goal = pm
    if not isinstance(name, str) or not name:
        raise ValueError("primary_metric name must be a non-empty string")
    if goal not in codec.GOALS:
        raise ValueError(f'primary_metric goal must be "minimize" or "maximize", not {goal!r}')
    return (name, goal)


class Checkpoint:
    """One checkpoint of an experiment: metrics, step and (optionally) saved files.

    A checkpoint returned by ``experiment.checkpoint()`` may still be being saved in the
    background: its metrics, step and path are there at once; ``id`` (and reading its files)
    waits until it is committed, and :meth:`wait` waits explicitly.
    """

    def __init__(self, experiment: Experiment, record: CheckpointRecord | None = None,
                 job: Job | None = None, obj: codec.Checkpoint | None = None) -> None:
        self.experiment = experiment
        self._rec = record
        self._job = job
        o = record.obj if record is not None else obj
        assert o is not None
        self.created: _dt.datetime = _dt_from_ns(o.created_ns)
        self.step: int = o.step
        self.path: str | None = o.path
        self.metrics: dict[str, Any] = dict(o.metrics)
        self.primary_metric: dict[str, str] | None = (
            None if o.primary_metric is None
            else {"name": o.primary_metric[0], "goal": o.primary_metric[1]}
        )

    def wait(self, timeout: float | None = None) -> Checkpoint:
        """Wait until this checkpoint is durably committed; raise if saving it failed."""
        if self._rec is None:
            assert self._job is not None
            self._rec = self._job.wait(timeout)
        return self

    @property
    def saved(self) -> bool:
        """True once committed (False while saving in the background or if it failed)."""
        if self._rec is not None:
            return True
        assert self._job is not None
        return self._job.done.is_set() and self._job.error is None

    @property
    def id(self) -> str:
        """The 64-hex ID (waits for the commit of a checkpoint still being saved)."""
        self.wait()
        assert self._rec is not None
        return self._rec.id.hex()

    @property
    def files_removed(self) -> bool:
        """True when this checkpoint's files were removed with ``replicate rm``."""
        self.wait()
        assert self._rec is not None
        return self._rec.removed

    def short_id(self) -> str:
        """The first 7 characters of the ID."""
        return self.id[: ids.SHORT_LEN]

    def _trees(self) -> list[bytes]:
        self.wait()
        assert self._rec is not None
        out = []
        if self.experiment._obj.code is not None:
            out.append(self.experiment._obj.code)
        if self._rec.obj.files is not None and not self._rec.removed:
            out.append(self._rec.obj.files)
        return out

    def open(self, path: str) -> IO[bytes]:
        """A seekable binary file with the content of ``path`` (project-relative) as saved by
        this checkpoint, or by its experiment when the checkpoint did not save it. Bytes are
        read from the store on demand, so huge files use little memory."""
        from replicate.checkout import find_entry  # lazily: `replicate ls` needs no numpy
        from replicate.objects.reader import open_file, read_file_object

        store = self.experiment._project.repo().objects
        rel = codec.check_relpath(path)
        for tree in reversed(self._trees()):
            e = find_entry(store, tree, rel)
            if e is not None:
                if e.kind == KIND_TREE:
                    raise IsADirectoryError(f"{path} is a directory in checkpoint {self.short_id()}")
                if e.kind != codec.KIND_FILE:
                    raise DoesNotExist(f"{path} is a symbolic link in checkpoint {self.short_id()}")
                return open_file(store, read_file_object(store, e.id), name=rel)
        removed = " (its files were removed)" if self._rec.removed else ""
        raise DoesNotExist(
            f"{path} is not in checkpoint {self.short_id()}{removed} or its experiment"
        )

    def checkout(self, output_directory: str | os.PathLike[str], force: bool = False,
                 path: str | None = None) -> CheckoutResult:
        """Write the experiment's code and then this checkpoint's files into a directory."""
        from replicate.checkout import checkout_items, select

        store = self.experiment._project.repo().objects
        trees = self._trees()
        if not trees:
            raise DoesNotExist(
                f"checkpoint {self.short_id()} and its experiment have no files; pass path= to "
                "init() or checkpoint() to save files"
            )
        merged: dict[str, Any] = {}
        missing = 0
        for t in trees:
            try:
                for it in select(store, t, path):
                    merged[it.rel] = it
            except DoesNotExist:
                missing += 1
        if missing == len(trees):
            raise DoesNotExist(f"path {path!r} is not in checkpoint {self.short_id()} or its experiment")
        items = sorted(merged.values(), key=lambda it: it.rel.count("/"))
        return checkout_items(store, items, Path(output_directory), force=force)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (times as datetime)."""
        return {
            "id": self.id,
            "created": self.created,
            "step": self.step,
            "path": self.path,
            "metrics": self.metrics,
            "primary_metric": self.primary_metric,
            "experiment": self.experiment.id,
            "files_removed": self.files_removed,
        }

    def __repr__(self) -> str:
        sid = self._rec.id.hex()[: ids.SHORT_LEN] if self._rec is not None else "(saving)"
        return (
            f"Checkpoint(id={sid!r}, step={self.step}, "
            f"metrics={self.metrics!r}, path={self.path!r})"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in [
                ("id", self.short_id()), ("step", self.step), ("created", self.created),
                ("path", self.path), *sorted(self.metrics.items()),
            ]
        )
        return f"<table>{rows}</table>"


class Experiment:
    """A training run: params, environment, code and its checkpoints.

    Returned by :func:`replicate.init` (to record) and by ``experiments.get/list`` (to read; a
    read experiment can also record, resuming its chain).
    """

    def __init__(self, project: Project, record: ExperimentRecord) -> None:
        self._project = project
        self._load(record)
        self._heartbeat: Heartbeat | None = None
        self._resumed = True  # set False by init(): a resumed run starts its heartbeat lazily

    def _load(self, record: ExperimentRecord) -> None:
        self._rec = record
        o = self._obj = record.obj
        self.id: str = record.id.hex()
        self.created: _dt.datetime = _dt_from_ns(o.created_ns)
        self.params: dict[str, Any] = dict(o.params)
        self.path: str | None = o.path
        self.user: str = o.user
        self.host: str = o.host
        self.command: str = o.command
        self.python_version: str = o.python_version
        self.python_packages: dict[str, str] = dict(o.packages)
        self.git: dict[str, Any] | None = o.git
        self.system: dict[str, Any] = dict(o.system)
        self.replicate_version: str = o.replicate_version
        self.checkpoints = CheckpointList(Checkpoint(self, c) for c in record.checkpoints)

    # -- identity ---------------------------------------------------------------------------

    def short_id(self) -> str:
        """The first 7 characters of the ID."""
        return self.id[: ids.SHORT_LEN]

    @property
    def _eid(self) -> bytes:
        return self._rec.id

    # -- recording --------------------------------------------------------------------------

    def checkpoint(
        self,
        path: str | os.PathLike[str] | None = None,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
        primary_metric: tuple[str, str] | None = None,
        quiet: bool = False,
        wait: bool = False,
    ) -> Checkpoint | None:
        """Record a checkpoint: the bytes of ``path`` (a file or directory in the project),
        ``metrics`` and ``step`` (auto-incremented when None).

        The bytes are captured before this returns, so overwriting the file afterwards is safe;
        chunking, compression and the commit happen in the background, in order (``wait=True``
        does everything before returning). Invalid arguments raise ValueError; a failure to save
        (disk full...) is a loud warning and training goes on: None is returned, or, in the
        background, the checkpoint's :meth:`Checkpoint.wait` raises the error.
        """
        rel = self._project.relpath(path) if path is not None else None
        if self._heartbeat is None and self._resumed:
            self._resume_heartbeat()
        m = validate_metrics(metrics)
        pm = validate_primary_metric(primary_metric)
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            if hasattr(step, "item") and isinstance(step.item(), int):
                step = int(step.item())
            else:
                raise ValueError(f"step must be an int, not {type(step).__name__}")
        if step is None:
            last = self.checkpoints[-1].step if self.checkpoints else None
            step = 0 if last is None else last + 1
        try:
            if wait:
                self.wait(raise_errors=False)
                rec = self._project._save_checkpoint_now(self._eid, rel, step, m, pm)
                cp = Checkpoint(self, rec)
                self._request_push()
            else:
                job, obj = self._project._save_checkpoint_later(self._eid, rel, step, m, pm)
                cp = Checkpoint(self, job=job, obj=obj)
                job.on_done = self._background_done(cp)
                from replicate.saver import get_saver

                get_saver().submit(job)
        except Exception as e:  # never break training
            _warn_failed(self, step, e, stacklevel=3)
            return None
        self.checkpoints.append(cp)
        return cp

    def _background_done(self, cp: Checkpoint) -> Any:
        def done(job: Job) -> None:
            if job.error is not None:
                if cp in self.checkpoints:
                    self.checkpoints.remove(cp)
                _warn_failed(self, cp.step, job.error, stacklevel=1)
            else:
                self._request_push()

        return done

    def wait(self, timeout: float | None = None, raise_errors: bool = True) -> None:
        """Wait until every checkpoint of this experiment taken so far is committed; raises
        the first background error (unless ``raise_errors`` is False)."""
        for cp in list(self.checkpoints):
            if cp._rec is None and cp._job is not None:
                try:
                    cp.wait(timeout)
                except TimeoutError:
                    raise
                except Exception:
                    if raise_errors:
                        raise

    def _request_push(self) -> None:
        try:
            pusher = self._project.pusher()
            if pusher is not None:
                pusher.request(self._eid)
        except Exception as e:  # never break training
            warnings.warn(f"replicate: cannot schedule the upload: {e}", CheckpointWarning,
                          stacklevel=2)

    def _resume_heartbeat(self) -> None:
        """A run resumed in another process (experiments.get(id).checkpoint(...)) shows as
        running while it checkpoints, as a new run does."""
        self._resumed = False
        try:
            from replicate.project import _RUNNING

            self._start_heartbeat()
            _RUNNING.add(self)
        except Exception:
            pass

    def _start_heartbeat(self) -> None:
        self._heartbeat = Heartbeat(
            heartbeat_path(self._project.local_repo().heartbeats_dir, self._eid)
        )
        self._heartbeat.start()

    def stop(self) -> None:
        """Mark the experiment stopped now (done automatically at interpreter exit)."""
        try:
            pusher = self._project.pusher()
            if pusher is not None:
                pusher.stopped(self._eid)
        except Exception:
            pass
        if self._heartbeat is not None:
            self._heartbeat.stop()
        else:
            mark_stopped(heartbeat_path(self._project.local_repo().heartbeats_dir, self._eid))

    def is_running(self) -> bool:
        """True while the run's heartbeat is fresh (refreshed within 30 s)."""
        repo = self._project.repo()
        if is_running(heartbeat_path(repo.heartbeats_dir, self._eid)):
            return True
        rrepo = getattr(repo, "remote_repo", None) or (repo if hasattr(repo, "remote") else None)
        if rrepo is None:
            return False
        from replicate.catalog import running

        return self._eid in running(rrepo)

    def refresh(self) -> None:
        """Reload checkpoints written since this object was read."""
        self._load(load_experiment(self._project.repo(), self._eid))

    def delete(self) -> None:
        """Delete the experiment (its ref and reflog); gc reclaims the bytes."""
        self._project._delete_experiment(self._eid)

    # -- reading ----------------------------------------------------------------------------

    def latest(self) -> Checkpoint | None:
        """The last checkpoint, or None."""
        return self.checkpoints[-1] if self.checkpoints else None

    def primary_metric(self) -> tuple[str, str] | None:
        """(name, goal) of the first checkpoint that defines a primary metric."""
        for c in self.checkpoints:
            if c.primary_metric:
                return c.primary_metric["name"], c.primary_metric["goal"]
        return None

    def best(self) -> Checkpoint | None:
        """The checkpoint with the best primary metric (None and NaN values are skipped)."""
        pm = self.primary_metric()
        if pm is None:
            return None
        name, goal = pm
        best: Checkpoint | None = None
        best_v = 0.0
        for c in self.checkpoints:
            v = c.metrics.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                continue
            if best is None or (v < best_v if goal == "minimize" else v > best_v):
                best, best_v = c, float(v)
        return best

    @property
    def duration(self) -> _dt.timedelta | None:
        """Time from creation to the latest checkpoint."""
        last = self.latest()
        return None if last is None else last.created - self.created

    def checkout(self, output_directory: str | os.PathLike[str], force: bool = False,
                 path: str | None = None) -> CheckoutResult:
        """Write the code and the best (else latest) checkpoint's files into a directory."""
        cp = self.best() or self.latest()
        if cp is not None:
            return cp.checkout(output_directory, force=force, path=path)
        if self._obj.code is None:
            raise DoesNotExist(f"experiment {self.short_id()} has no files")
        from replicate.checkout import checkout_items, select

        store = self._project.repo().objects
        return checkout_items(store, select(store, self._obj.code, path), Path(output_directory), force)

    def plot(self, metric: str | None = None, logy: bool = False) -> Any:
        """Plot a metric over steps (matplotlib)."""
        from replicate.lists import ExperimentList

        return ExperimentList([self]).plot(metric, logy=logy)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        best, latest = self.best(), self.latest()
        return {
            "id": self.id,
            "created": self.created,
            "params": self.params,
            "path": self.path,
            "command": self.command,
            "user": self.user,
            "host": self.host,
            "python_version": self.python_version,
            "python_packages": self.python_packages,
            "git": self.git,
            "system": self.system,
            "replicate_version": self.replicate_version,
            "num_checkpoints": len(self.checkpoints),
            "best_checkpoint": best.to_dict() if best else None,
            "latest_checkpoint": latest.to_dict() if latest else None,
            "running": self.is_running(),
        }

    def __repr__(self) -> str:
        return (
            f"Experiment(id={self.short_id()!r}, created={self.created:%Y-%m-%d %H:%M:%S}, "
            f"params={self.params!r}, checkpoints={len(self.checkpoints)})"
        )

    def _repr_html_(self) -> str:
        from replicate.lists import ExperimentList

        return ExperimentList([self])._repr_html_()

