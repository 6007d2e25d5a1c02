"""``replicate ls`` and ``replicate ps``: list experiments.

Computing and rendering are separate: :func:`list_experiments` returns the summaries that pass
the filters, in order (from :mod:`replicate.query`, whose cache makes this cheap for thousands of
experiments); :func:`render_table`, :func:`to_json` and the ``-q`` branch turn them into text.

The table is the predecessor's, byte for byte (``shared/reference/limits.md`` section 5)::

    EXPERIMENT  STARTED  STATUS  [HOST]  [USER]  PARAMS  [BEST CHECKPOINT]  LATEST CHECKPOINT

laid out as Go's ``text/tabwriter`` laid it out (:func:`layout`): every line has a cell in
every column, cells are padded to the column width plus 2, the last column is not padded. So
the blank line that follows each experiment holds spaces up to where the last column starts,
exactly as the predecessor printed it (``output.table()`` strips trailing spaces; this table
keeps them, so that the output can be compared with the predecessor's verbatim).

Differences from the predecessor, on purpose: a param missing from some experiments counts as
differing (the predecessor only compared experiments that had it); int and float values that
are equal do not count as differing (the predecessor warned about comparing different types);
floats above 10^5 print in full when that fits the cell rather than with 20 significant digits.

Time-ago cells are relative to now, which tests pin with the environment variable
``REPLICATE_NOW_NS`` (nanoseconds since the epoch; for tests, not a user setting).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from replicate.cli.app import Context, pass_ctx, repository_option

if TYPE_CHECKING:
    from replicate.query import CheckpointSummary, Summary
    from replicate.repository import Repository

NOW_ENV = "REPLICATE_NOW_NS"
VALUE_MAX_LEN = 20
PRECISION = 5


def now_ns() -> int:
    """Now, in nanoseconds: ``$REPLICATE_NOW_NS`` when set (tests), else the clock."""
    v = os.environ.get(NOW_ENV)
    if v:
        try:
            return int(v)
        except ValueError:
            pass
    import time

    return time.time_ns()


# --- computing --------------------------------------------------------------------------------


def list_experiments(repo: Repository, filters: Sequence[str] = (), sort: str = "created",
                     running_only: bool = False) -> list[Summary]:
    """Summaries of the experiments passing every filter, sorted by ``sort``.

    ``running_only`` (``ps``) replaces any ``status`` filter with ``status = running``. Filter
    expressions are parsed before the repository is read, so a malformed one fails fast.
    """
    from replicate import query

    parsed = [query.parse_filter(f) for f in filters]
    query.parse_sort(sort)
    if running_only:  # first, so the others only ever see running experiments
        parsed = [query.parse_filter("status = running"), *(f for f in parsed
                                                             if f.name != "status")]
    items = query.summaries(repo)
    items = query.apply(items, parsed)
    if sort.strip() not in ("created", "created-asc", "started", "started-asc"):
        items = query.sort(items, sort)  # summaries() are already oldest first
    return items


# --- rendering: values ------------------------------------------------------------------------


def short_value(v: Any, max_len: int = VALUE_MAX_LEN, precision: int = PRECISION) -> str:
    """A value for a table cell, as the predecessor's ``ShortString``: floats to ``precision``
    significant digits (big ones in full when they fit in ``max_len``), strings and objects
    truncated to ``max_len`` with '...', ints, bools and null in full."""
    if isinstance(v, float) and not isinstance(v, bool) and math.isfinite(v):
        if 10.0**precision < abs(v) < 10.0**max_len:
            s = full_value(v)
            if len(s) <= max_len:
                return s
        return f"{v:.{precision}g}"
    from replicate.cli.output import fmt_value

    return fmt_value(v, max_len)


def full_value(v: Any) -> str:
    """A value in full, as the predecessor's ``Value.String()``: strings as they are, anything
    else as JSON (floats in their shortest form without exponent where Go's JSON had none: 1
    for 1.0, 0.0001 for 1e-4)."""
    if isinstance(v, str):
        return v
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        r = repr(v)
        if r.endswith(".0"):
            return r[:-2]
        a = abs(v)
        if "e" in r and 1e-6 <= a < 1e21:
            from decimal import Decimal

            r = format(Decimal(r), "f")
        elif "e" in r:  # Go: 1e-07 -> 1e-7, but 1e+21 stays
            mant, _, exp = r.partition("e")
            sign = "-" if exp.startswith("-") else "+"
            digits = exp.lstrip("+-").lstrip("0") or "0"
            r = f"{mant}e{sign}{digits if sign == '-' else digits.rjust(2, '0')}"
        return r
    import json

    from replicate.cli.output import json_value

    return json.dumps(json_value(v), sort_keys=True, separators=(",", ":"))


def params_to_display(items: Sequence[Summary], show_all: bool) -> list[str]:
    """Names of the params the PARAMS column shows, sorted: those whose value differs between
    the experiments (or every one with ``show_all``); object and list params never."""
    values: dict[str, set[tuple[bool, Any]]] = {}
    count: dict[str, int] = {}
    for s in items:
        for k, v in s.params.items():
            vals = values.get(k)
            if vals is None:
                vals = values[k] = set()
                count[k] = 0
            try:
                vals.add((v.__class__ is bool, v))  # 1 == 1.0, but true is not 1
            except TypeError:  # a dict or list: never shown
                continue
            count[k] += 1
    if show_all:
        return sorted(k for k, n in count.items() if n)
    # a param that some experiments lack differs too
    return sorted(k for k, n in count.items() if n and (n != len(items) or len(values[k]) > 1))


def metrics_to_display(items: Sequence[Summary], show_all: bool) -> list[str]:
    """Names of the metrics checkpoint cells show, sorted: the primary metrics of the best
    checkpoints (with ``show_all``: every metric of the best, else latest, checkpoint)."""
    names: set[str] = set()
    for s in items:
        if show_all:
            c = s.best or s.latest
            if c is not None:
                names.update(c.metrics)
        elif s.best is not None and s.best.primary_metric is not None:
            names.add(s.best.primary_metric[0])
    return sorted(names)


# --- rendering: tables ------------------------------------------------------------------------


def layout(rows: Sequence[Sequence[Sequence[str]]], padding: int = 2,
           blank_after: bool = False) -> str:
    """Rows of cells, each cell a list of lines, laid out as Go's tabwriter laid out the
    predecessor's tables: each row becomes as many lines as its tallest cell (plus a blank line
    when ``blank_after``, except after the first row, the heading); every line has every
    column; columns are padded to their widest line plus ``padding``; the last column is not
    padded, so a line whose last cell is empty ends in spaces."""
    if not rows:
        return ""
    from itertools import chain, starmap, zip_longest

    ncol = max(len(r) for r in rows)
    widths = [
        max(map(len, chain.from_iterable([r[i] for r in rows if i < len(r)])), default=0)
        for i in range(ncol)
    ]
    fmt = "".join(f"{{:<{w + padding}}}" for w in widths[:-1]) + "{}"
    blank = fmt.format(*[""] * ncol)
    fill = [[""]] * ncol
    out: list[str] = []
    for n, r in enumerate(rows):
        cells = r if len(r) == ncol else [*r, *fill[len(r):]]
        out.extend(starmap(fmt.format, zip_longest(*cells, fillvalue="")))
        if blank_after and n:
            out.append(blank)
    out.append("")
    return "\n".join(out)


class _Formatter:
    """Memoised cell formatting (10,000 experiments share few distinct values and days)."""

    def __init__(self, now: int) -> None:
        from replicate.cli.output import time_ago

        self.now = now
        self._time_ago = time_ago
        self._days: dict[int, str] = {}
        self._pairs: dict[tuple[str, type, Any], str] = {}
        self._checkpoints: dict[bytes, list[str]] = {}

    def ago(self, ns: int) -> str:
        if self.now - ns < 73 * 3600 * 1_000_000_000:
            return self._time_ago(ns, self.now)
        day = ns // (86400 * 1_000_000_000)  # a date from then on
        s = self._days.get(day)
        if s is None:
            s = self._days[day] = self._time_ago(ns, self.now)
        return s

    def pairs(self, d: dict[str, Any], names: Sequence[str]) -> list[str]:
        """``name=value`` lines for those of ``names`` that ``d`` has."""
        out = []
        cache = self._pairs
        for k in names:
            if k in d:
                v = d[k]
                if isinstance(v, (dict, list)):
                    out.append(f"{k}={short_value(v)}")
                    continue
                key = (k, v.__class__, v)  # the class: 1 and 1.0 and True are equal keys
                s = cache.get(key)
                if s is None:
                    s = cache[key] = f"{k}={short_value(v)}"
                out.append(s)
        return out

    def checkpoint(self, c: CheckpointSummary, metrics: Sequence[str]) -> list[str]:
        """``<short id> (step N)`` then ``name=value`` per displayed metric it has."""
        cell = self._checkpoints.get(c.id)
        if cell is None:
            cell = [f"{c.id.hex()[:7]} (step {c.step})", *self.pairs(c.metrics, metrics)]
            self._checkpoints[c.id] = cell
        return cell


def render_table(items: Sequence[Summary], show_all: bool = False,
                 now: int | None = None, colour: bool = False) -> str:
    """The ``ls`` table (see the module docstring); empty string for no experiments."""
    if not items:
        return ""
    from replicate.cli.output import style

    fmt = _Formatter(now_ns() if now is None else now)
    params = params_to_display(items, show_all)
    metrics = metrics_to_display(items, show_all)
    has_best = any(s.best is not None for s in items)
    show_host = any(s.host != items[0].host for s in items)
    show_user = any(s.user != items[0].user for s in items)

    heading = ["EXPERIMENT", "STARTED", "STATUS"]
    heading += ["HOST"] * show_host + ["USER"] * show_user + ["PARAMS"]
    heading += ["BEST CHECKPOINT"] * has_best + ["LATEST CHECKPOINT"]
    rows: list[list[list[str]]] = [[[h] for h in heading]]
    ago, pairs, checkpoint = fmt.ago, fmt.pairs, fmt.checkpoint
    for s in items:
        row = [[s.id.hex()[:7]], [ago(s.created_ns)], ["running" if s.running else "stopped"]]
        if show_host:
            row.append([s.host])
        if show_user:
            row.append([s.user])
        row.append(pairs(s.params, params))
        if has_best:
            row.append(checkpoint(s.best, metrics) if s.best else [])
        row.append(checkpoint(s.latest, metrics) if s.latest else [])
        rows.append(row)
    text = layout(rows, blank_after=True)
    if colour:
        first, _, rest = text.partition("\n")
        text = style(first, bold=True) + "\n" + rest
    return text


# --- rendering: JSON --------------------------------------------------------------------------


def checkpoint_json(c: CheckpointSummary | None) -> dict[str, Any] | None:
    """A checkpoint as ``--json`` shows it."""
    if c is None:
        return None
    from replicate.cli.output import rfc3339

    return {
        "id": c.id.hex(),
        "created": rfc3339(c.created_ns),
        "step": c.step,
        "path": c.path,
        "metrics": c.metrics,
        "primary_metric": (
            {"name": c.primary_metric[0], "goal": c.primary_metric[1]}
            if c.primary_metric else None
        ),
    }


def to_json(s: Summary) -> dict[str, Any]:
    """An experiment as ``ls --json`` shows it (the predecessor's keys, plus ``path``)."""
    from replicate.cli.output import rfc3339

    return {
        "id": s.id.hex(),
        "created": rfc3339(s.created_ns),
        "params": s.params,
        "command": s.command,
        "path": s.path,
        "num_checkpoints": s.num_checkpoints,
        "latest_checkpoint": checkpoint_json(s.latest),
        "best_checkpoint": checkpoint_json(s.best),
        "user": s.user,
        "host": s.host,
        "running": s.running,
    }


# --- commands ---------------------------------------------------------------------------------


def _run(ctx: Context, filters: Sequence[str], sort: str, as_json: bool, quiet: bool,
         show_all: bool, repository: str | None, running_only: bool) -> None:
    if quiet and (as_json or show_all):
        raise click.UsageError("-q/--quiet cannot be combined with --json or --all")
    ctx.use_repository(repository)
    import gc

    # Tens of thousands of small objects come out of the summary cache and none is garbage:
    # the cyclic collector would only walk them over and over (a third of the run time).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _list_and_render(ctx, filters, sort, as_json, quiet, show_all, running_only)
    finally:
        if was_enabled:
            gc.enable()


def _list_and_render(ctx: Context, filters: Sequence[str], sort: str, as_json: bool,
                     quiet: bool, show_all: bool, running_only: bool) -> None:
    from replicate.cli import output

    items = list_experiments(ctx.repo(), filters, sort, running_only)
    if quiet:
        if items:
            click.echo("\n".join(s.id.hex() for s in items))
        return
    if as_json:
        click.echo(output.dumps([to_json(s) for s in items]))
        return
    if not items:
        output.message("No experiments found")
        return
    click.echo(render_table(items, show_all, colour=output.use_colour()), nl=False)


def _options(f: Any) -> Any:
    for opt in reversed([
        click.option("-f", "--filter", "filters", multiple=True, metavar="EXPR",
                     help='Keep experiments matching "NAME OP VALUE" (OP: = != < <= > >=; '
                          "NAME: a metric of the best checkpoint, a param, created, step, "
                          "user, host, command or status). Repeat to AND filters."),
        click.option("-s", "--sort", "sort", default="created", show_default=True,
                     metavar="KEY[-desc]", help="Sort by a filter NAME; add -desc to reverse."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON list."),
        click.option("-q", "--quiet", is_flag=True, help="Print full experiment IDs only."),
        click.option("--all", "show_all", is_flag=True,
                     help="Show every param and every metric."),
        repository_option,
    ]):
        f = opt(f)
    return f


@click.command("ls")
@_options
@pass_ctx
def ls(ctx: Context, filters: tuple[str, ...], sort: str, as_json: bool, quiet: bool,
       show_all: bool, repository: str | None) -> None:
    """List experiments, oldest first.

    By default PARAMS shows only the params whose values differ between the listed
    experiments, and checkpoint cells show the primary metric.
    """
    _run(ctx, filters, sort, as_json, quiet, show_all, repository, running_only=False)


@click.command("ps")
@_options
@pass_ctx
def ps(ctx: Context, filters: tuple[str, ...], sort: str, as_json: bool, quiet: bool,
       show_all: bool, repository: str | None) -> None:
    """List running experiments (ls with the filter "status = running")."""
    _run(ctx, filters, sort, as_json, quiet, show_all, repository, running_only=True)
