"""List types of the notebook API: CheckpointList and ExperimentList, with plots, a pandas
DataFrame and HTML tables (pandas and matplotlib are imported only when used)."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

if TYPE_CHECKING:
    from replicate.experiment import Checkpoint, Experiment


class _Column:
    """``checkpoints.metrics["loss"]``: a list aligned with the checkpoints."""

    def __init__(self, cps: CheckpointList) -> None:
        self._cps = cps

    def __getitem__(self, name: str) -> list[Any]:
        vals = [c.metrics.get(name) for c in self._cps]
        if self._cps and all(v is None for v in vals):
            raise KeyError(f"no checkpoint has a metric called {name!r}")
        return vals


class CheckpointList(list):  # type: ignore[type-arg]
    """The checkpoints of an experiment, in order."""

    @property
    def metrics(self) -> _Column:
        """``.metrics["name"]``: values aligned with the list (None where absent)."""
        return _Column(self)

    @property
    def step(self) -> list[int]:
        """Steps aligned with the list."""
        return [c.step for c in self]

    @overload
    def __getitem__(self, i: SupportsIndex) -> Checkpoint: ...

    @overload
    def __getitem__(self, i: slice) -> CheckpointList: ...

    def __getitem__(self, i: Any) -> Any:
        r = super().__getitem__(i)
        return CheckpointList(r) if isinstance(i, slice) else r

    def plot(self, metric: str | None = None, logy: bool = False) -> Any:
        """Plot a metric over steps."""
        plt = _pyplot()
        if metric is None:
            names = [c.primary_metric["name"] for c in self if c.primary_metric]
            if not names:
                raise ValueError("no primary metric: pass the metric to plot")
            metric = names[0]
        ys = self.metrics[metric]
        pts = [(s, y) for s, y in zip(self.step, ys) if _is_number(y)]
        plt.plot([p[0] for p in pts], [p[1] for p in pts])
        plt.xlabel("step")
        plt.ylabel(metric)
        if logy:
            plt.yscale("log")
        return plt.gca()


class ExperimentList(list):  # type: ignore[type-arg]
    """Experiments, oldest first."""

    @overload
    def __getitem__(self, i: SupportsIndex) -> Experiment: ...

    @overload
    def __getitem__(self, i: slice) -> ExperimentList: ...

    def __getitem__(self, i: Any) -> Any:
        r = super().__getitem__(i)
        return ExperimentList(r) if isinstance(i, slice) else r

    def primary_metric(self) -> str:
        """The primary metric name shared by the experiments (ValueError if they differ)."""
        names = {pm[0] for e in self if (pm := e.primary_metric())}
        if len(names) != 1:
            raise ValueError(
                "experiments have " + ("no primary metric" if not names else
                                       f"different primary metrics: {sorted(names)}")
                + "; pass the metric explicitly"
            )
        return names.pop()

    def plot(self, metric: str | None = None, logy: bool = False) -> Any:
        """One line per experiment: ``metric`` over steps."""
        plt = _pyplot()
        metric = metric or self.primary_metric()
        for e in self:
            pts = [(c.step, c.metrics.get(metric)) for c in e.checkpoints]
            pts = [p for p in pts if _is_number(p[1])]
            plt.plot([p[0] for p in pts], [p[1] for p in pts], label=e.short_id())
        plt.xlabel("step")
        plt.ylabel(metric)
        if logy:
            plt.yscale("log")
        plt.legend()
        return plt.gca()

    def scatter(self, param: str, metric: str | None = None, logx: bool = False,
                logy: bool = False) -> Any:
        """A param against a metric of each experiment's best (else latest) checkpoint."""
        plt = _pyplot()
        metric = metric or self.primary_metric()
        xs, ys = [], []
        for e in self:
            cp = e.best() or e.latest()
            if cp is None or param not in e.params or not _is_number(cp.metrics.get(metric)):
                continue
            xs.append(e.params[param])
            ys.append(cp.metrics[metric])
        plt.scatter(xs, ys)
        plt.xlabel(param)
        plt.ylabel(metric)
        if logx:
            plt.xscale("log")
        if logy:
            plt.yscale("log")
        return plt.gca()

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per experiment: id, created, running, num_checkpoints,
        params.<name>, best.<metric>, latest.<metric>, and the checkpoints' ids and steps."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "to_dataframe() needs pandas: pip install 'replicate[notebook]'"
            ) from None
        rows = []
        for e in self:
            best, latest = e.best(), e.latest()
            row: dict[str, Any] = {
                "id": e.id,
                "created": e.created,
                "running": e.is_running(),
                "num_checkpoints": len(e.checkpoints),
                "user": e.user,
                "host": e.host,
                "command": e.command,
            }
            for k, v in e.params.items():
                row[f"params.{k}"] = v
            for prefix, cp in (("best", best), ("latest", latest)):
                row[f"{prefix}.id"] = cp.id if cp else None
                row[f"{prefix}.step"] = cp.step if cp else None
                if cp is not None:
                    for k, v in cp.metrics.items():
                        row[f"{prefix}.{k}"] = v
            rows.append(row)
        return pd.DataFrame(rows)

    def delete(self) -> None:
        """Delete every experiment in the list."""
        for e in self:
            e.delete()

    def _repr_html_(self) -> str:
        head = "<tr><th>id</th><th>created</th><th>params</th><th>best checkpoint</th>" \
               "<th>latest checkpoint</th></tr>"
        body = []
        for e in self:
            def cell(cp: Checkpoint | None) -> str:
                if cp is None:
                    return ""
                ms = "<br>".join(f"{html.escape(k)}={html.escape(_fmt(v))}"
                                 for k, v in sorted(cp.metrics.items()))
                return f"{cp.short_id()} (step {cp.step})<br>{ms}"

            params = "<br>".join(f"{html.escape(k)}={html.escape(_fmt(v))}"
                                 for k, v in sorted(e.params.items()))
            body.append(
                f"<tr><td>{e.short_id()}</td><td>{e.created:%Y-%m-%d %H:%M:%S}</td>"
                f"<td>{params}</td><td>{cell(e.best())}</td><td>{cell(e.latest())}</td></tr>"
            )
        return f"<table>{head}{''.join(body)}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (
        isinstance(v, float) and math.isnan(v)
    )


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'replicate[notebook]'") from None
    return plt


Filter = Callable[["Experiment"], bool]
