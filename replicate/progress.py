"""Progress reporting without printing: the library calls a callback, the CLI draws."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress events. All methods are optional no-ops in :class:`NoProgress`."""

    def start(self, what: str, total: int | None = None) -> None: ...

    def advance(self, n: int) -> None: ...

    def done(self) -> None: ...


class NoProgress:
    """The default progress sink: ignores everything."""

    def start(self, what: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def done(self) -> None:
        pass


NO_PROGRESS = NoProgress()
