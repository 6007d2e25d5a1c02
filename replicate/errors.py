"""The exception tree of replicate: everything the library raises on purpose derives from
:class:`ReplicateError`. The CLI maps each class to an exit code in one table."""

from __future__ import annotations


class ReplicateError(Exception):
    """Base class of every error replicate raises on purpose."""


class DoesNotExist(ReplicateError, KeyError):
    """An experiment, checkpoint, object or path that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we don't want that
        return str(self.args[0]) if self.args else ""


class AmbiguousID(ReplicateError, ValueError):
    """An ID prefix matches more than one experiment or checkpoint."""


class ConfigError(ReplicateError):
    """replicate.yaml, the repository config or an option is invalid."""


class RepositoryNotFound(ConfigError):
    """No replicate repository where one was expected."""


class IncompatibleRepository(ConfigError):
    """The repository was written by a newer or foreign format."""


class CorruptObjectError(ReplicateError):
    """Stored bytes do not hash to their ID, or cannot be decoded.

    Attributes:
        object_id: hex ID of the object (may be empty when unknown).
        location: where the bytes came from (a pack path, an index file...).
    """

    def __init__(self, message: str, object_id: str = "", location: str = "") -> None:
        self.object_id = object_id
        self.location = location
        parts = [message]
        if object_id:
            parts.append(f"object {object_id}")
        if location:
            parts.append(f"in {location}")
        super().__init__(": ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else ""))


class UnsafePathError(ReplicateError, ValueError):
    """A stored name would write outside the checkout target (``..``, absolute, NUL, symlink)."""


class CheckoutConflict(ReplicateError):
    """Checkout would overwrite files whose content differs; pass force to overwrite.

    Attributes:
        paths: the conflicting paths, relative to the target directory.
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
        super().__init__(
            f"checkout would overwrite {len(paths)} modified file(s): {shown}; "
            "use force (-f) to overwrite them"
        )


class LockError(ReplicateError):
    """A lock could not be taken (another process holds it)."""


class RefConflict(LockError):
    """A ref changed under us (compare-and-swap failed)."""


class RemoteError(ReplicateError):
    """A remote store failed or refused a request."""


class FsckError(ReplicateError):
    """fsck found problems."""


class RemoteNotFound(RemoteError):
    """A key, bucket or path does not exist on the remote."""


class RemoteExists(RemoteError):
    """A create-only write found the key already there (another writer won)."""


class RemoteUnavailable(RemoteError):
    """The remote could not be reached or answered with a transient error (retryable)."""


class RemoteAuthError(RemoteError):
    """The remote refused our credentials."""
