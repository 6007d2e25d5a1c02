"""The one table mapping errors to exit codes, and how a user error is printed."""

from __future__ import annotations

from replicate.errors import (
    AmbiguousID,
    CheckoutConflict,
    ConfigError,
    DoesNotExist,
    FsckError,
    LockError,
    RemoteError,
    ReplicateError,
    UnsafePathError,
)

OK = 0
ERROR = 1
USAGE = 2
INTERRUPTED = 130

# First match wins (subclasses before their bases).
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (AmbiguousID, USAGE),
    (DoesNotExist, ERROR),
    (CheckoutConflict, ERROR),
    (UnsafePathError, ERROR),
    (LockError, ERROR),
    (ConfigError, ERROR),
    (RemoteError, ERROR),
    (FsckError, ERROR),
    (ValueError, USAGE),
    (ReplicateError, ERROR),
]


def exit_code(err: BaseException) -> int:
    """Exit code for an error raised by a command."""
    for cls, code in EXIT_CODES:
        if isinstance(err, cls):
            return code
    return ERROR
