"""replicate: version control for machine learning.

Two lines in a training script record code, params, weights, metrics and environment::

    experiment = replicate.init(path=".", params={"lr": 0.01})
    experiment.checkpoint(path="model.pth", metrics={"val_loss": v},
                          primary_metric=("val_loss", "minimize"))

and ``replicate.experiments.list()/get(id)`` read them back. Importing this package is cheap:
everything heavy is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicate.errors import (
    AmbiguousID,
    CheckoutConflict,
    ConfigError,
    CorruptObjectError,
    DoesNotExist,
    IncompatibleRepository,
    LockError,
    RefConflict,
    RemoteError,
    ReplicateError,
    RepositoryNotFound,
    UnsafePathError,
)
from replicate.version import __version__

if TYPE_CHECKING:
    from replicate.experiment import Checkpoint, Experiment
    from replicate.project import Project

__all__ = [
    "AmbiguousID",
    "Checkpoint",
    "CheckoutConflict",
    "ConfigError",
    "CorruptObjectError",
    "DoesNotExist",
    "Experiment",
    "IncompatibleRepository",
    "LockError",
    "Project",
    "RefConflict",
    "RemoteError",
    "ReplicateError",
    "RepositoryNotFound",
    "UnsafePathError",
    "__version__",
    "checkpoints",
    "experiments",
    "init",
]


def init(path: str | None = None, params: dict[str, Any] | None = None,
         disable_heartbeat: bool = False) -> Experiment:
    """Start recording an experiment; see :func:`replicate.project.init`."""
    from replicate.project import init as _init

    return _init(path=path, params=params, disable_heartbeat=disable_heartbeat)


_default: Project | None = None


def _default_project() -> Project:
    global _default
    from replicate.project import Project

    if _default is None:
        _default = Project()
    return _default


def __getattr__(name: str) -> Any:
    if name == "experiments":
        return _default_project().experiments
    if name == "checkpoints":
        return _default_project().checkpoints
    if name == "Project":
        from replicate.project import Project

        return Project
    if name in ("Experiment", "Checkpoint"):
        from replicate import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'replicate' has no attribute {name!r}")
