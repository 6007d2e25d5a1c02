"""``replicate show`` (an experiment or a checkpoint) and ``replicate log`` (an experiment's
checkpoints, newest first).

The views are the predecessor's (``shared/reference/limits.md`` section 5, verbatim), laid out
by :func:`tabwrite`, an emulation of Go's ``text/tabwriter`` as the predecessor used it:
consecutive lines that have a cell in a column form a block aligned together, every cell but
a line's last is padded to the block's widest cell plus 2. The predecessor's section titles
were bold and its tabwriter counted the 8 bytes of the bold escapes as width; so does this one,
with colour or without, which is why the key column is 25 wide and section titles are followed
by spaces (``Params           ``) exactly as in the predecessor's output.

Additions: a ``Git:`` line, System fields (OS, CPU, GPUs, CUDA) when recorded, ``(files
removed)`` on checkpoints whose files ``rm`` removed, metric columns for every metric of any
checkpoint (not only the first's). One fix: the "... and N more. Use --all to view." line no
longer breaks the alignment of the lines after it (the predecessor's own code comment called
that a bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from replicate.cli.app import Context, pass_ctx, repository_option
from replicate.cli.ls import full_value, now_ns, short_value

if TYPE_CHECKING:
    from replicate.history import CheckpointRecord, ExperimentRecord
    from replicate.repository import Repository

# Packages shown when an experiment records more than 5 (the predecessor's list, plus the
# PEP 503 names under which they are installed).
INTERESTING_PACKAGES = frozenset({
    "cntk", "keras", "jax", "mxnet", "numpy", "pandas", "pytorch-lightning", "pytorch_lightning",
    "scikit-learn", "sklearn", "tensorflow", "torch",
})
PACKAGES_SHOWN = 5
STYLE_WIDTH = 8  # bytes of an ANSI style + reset, which Go's tabwriter counted as width


# --- computing --------------------------------------------------------------------------------


@dataclass
class Shown:
    """What ``show`` and ``log`` display: an experiment (all its checkpoints) and, when the ID
    named a checkpoint, that checkpoint."""

    experiment: ExperimentRecord
    checkpoint: CheckpointRecord | None
    best: bytes | None  # ID of the best checkpoint (by the primary metric), if any
    running: bool


def lookup(repo: Repository, prefix: str) -> Shown:
    """Resolve an experiment or checkpoint ID prefix and load its experiment."""
    from replicate.errors import DoesNotExist
    from replicate.heartbeat import heartbeat_path, is_running
    from replicate.history import load_experiment, resolve_any

    kind, eid, cid = resolve_any(repo, prefix)
    rec = load_experiment(repo, eid)
    checkpoint = None
    if kind == "checkpoint":
        checkpoint = next((c for c in rec.checkpoints if c.id == cid), None)
        if checkpoint is None:  # its experiment moved on to another history meanwhile
            raise DoesNotExist(f"checkpoint {prefix!r} is no longer in its experiment")
    running = is_running(heartbeat_path(repo.heartbeats_dir, eid))
    return Shown(rec, checkpoint, best_checkpoint(rec), running)


def best_checkpoint(rec: ExperimentRecord) -> bytes | None:
    """ID of the best checkpoint, by the same rule as ``ls`` (query.Summary)."""
    from replicate.query import Summary

    o = rec.obj
    s = Summary(rec.id, rec.id, o.created_ns, o.user, o.host, o.command, o.path, dict(o.params))
    for c in rec.checkpoints:
        s.add(c.id, c.obj)
    return s.best.id if s.best is not None else None


# --- rendering: a Go tabwriter ----------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """Text and the width the tabwriter counts for it (more than shown when styled)."""

    text: str
    width: int


@dataclass(frozen=True)
class Raw:
    """A line printed as it is, which does not end the column block around it."""

    text: str


Line = Sequence[Cell]


def cell(text: str) -> Cell:
    return Cell(text, len(text))


def styled(text: str, **kw: Any) -> Cell:
    """A bold cell (colour terminals only; bold headers are all the colour there is), counted
    8 wider either way, as the predecessor's tabwriter counted its escape bytes."""
    from replicate.cli.output import style

    return Cell(style(text, **kw), len(text) + STYLE_WIDTH)


def row(*texts: str | Cell) -> list[Cell]:
    """A line of cells (every one but the last is tab-terminated, in Go's terms)."""
    return [t if isinstance(t, Cell) else cell(t) for t in texts]


def tabwrite(lines: Sequence[Line | Raw], padding: int = 2, minwidth: int = 0) -> str:
    """Lay out lines of cells as Go's ``tabwriter.NewWriter(w, minwidth, 8, padding, ' ', 0)``
    (a cell's counted width may exceed its shown text: see :func:`styled`)."""
    cells = [ln for ln in lines if not isinstance(ln, Raw)]
    text: list[str] = []
    _format(cells, [], 0, len(cells), padding, minwidth, text)
    out, it = [], iter(text)
    for ln in lines:
        out.append(ln.text if isinstance(ln, Raw) else next(it))
    return "".join(s + "\n" for s in out)


def _format(lines: Sequence[Line], widths: list[int], line0: int, line1: int, padding: int,
            minwidth: int, out: list[str]) -> None:
    """Go's ``Writer.format``: the column blocks of ``widths``' next column, recursively."""
    column = len(widths)
    this = line0
    while this < line1:
        if column >= len(lines[this]) - 1:
            this += 1
            continue
        _write(lines, widths, line0, this, out)
        line0 = this
        width = minwidth
        while this < line1 and column < len(lines[this]) - 1:
            width = max(width, lines[this][column].width + padding)
            this += 1
        widths.append(width)
        _format(lines, widths, line0, this, padding, minwidth, out)
        widths.pop()
        line0 = this
    _write(lines, widths, line0, line1, out)


def _write(lines: Sequence[Line], widths: list[int], line0: int, line1: int,
           out: list[str]) -> None:
    for ln in lines[line0:line1]:
        parts = []
        for j, c in enumerate(ln):
            parts.append(c.text)
            if j < len(widths):
                parts.append(" " * (widths[j] - c.width))
        out.append("".join(parts))


# --- rendering: views -------------------------------------------------------------------------


def _git(git: dict[str, Any] | None) -> str | None:
    if not git:
        return None
    notes = []
    if git.get("branch"):
        notes.append(f"branch {git['branch']}")
    elif git.get("commit"):
        notes.append("detached HEAD")
    if git.get("dirty"):
        notes.append("dirty")
    commit = git.get("commit") or "(no commit yet)"
    return commit + (f" ({', '.join(notes)})" if notes else "")


def _system(system: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    if system.get("os"):
        out.append(("OS:", str(system["os"])))
    cpu, n = system.get("cpu"), system.get("cpu_count")
    if cpu or n:
        count = f"{n} CPUs" if n else ""
        out.append(("CPU:", f"{cpu} ({count})" if cpu and count else str(cpu or count)))
    gpus = system.get("gpus") or []
    if gpus:
        names: dict[str, int] = {}
        for g in gpus:
            name = str(g.get("name") or "unknown") if isinstance(g, dict) else str(g)
            names[name] = names.get(name, 0) + 1
        out.append(("GPUs:", ", ".join(f"{k} x{v}" if v > 1 else k for k, v in names.items())))
    if system.get("cuda"):
        out.append(("CUDA:", str(system["cuda"])))
    return out


def _packages(packages: Sequence[tuple[str, str]], show_all: bool) -> tuple[list[tuple[str, str]], int]:
    """(packages to show, how many are hidden)."""
    pkgs = sorted(packages)
    if show_all or len(pkgs) <= PACKAGES_SHOWN:
        return pkgs, 0
    shown = [p for p in pkgs if p[0].lower() in INTERESTING_PACKAGES] or pkgs[:PACKAGES_SHOWN]
    return shown, len(pkgs) - len(shown)


def _experiment_common(shown: Shown, show_all: bool) -> list[Line | Raw]:
    """The predecessor's ``writeExperimentCommon`` (with our additions)."""
    from replicate.cli.output import rfc1123

    o = shown.experiment.obj
    lines: list[Line | Raw] = [
        row("Created:", rfc1123(o.created_ns)),
        row("Status:", "running" if shown.running else "stopped"),
        row("Host:", o.host),
        row("User:", o.user),
        row("Command:", o.command),
    ]
    git = _git(o.git)
    if git:
        lines.append(row("Git:", git))
    lines += [row("", ""), row(styled("Params", bold=True), "")]
    if o.params:
        lines += [row(f"{k}:", full_value(v)) for k, v in sorted(o.params.items())]
    else:
        lines.append(row("(none)", ""))
    system = _system(o.system or {})
    if o.python_version or system:
        lines += [row("", ""), row(styled("System", bold=True), "")]
        if o.python_version:
            lines.append(row("Python version:", o.python_version))
        lines += [row(k, v) for k, v in system]
    lines += [row("", ""), row(styled("Python packages", bold=True), "")]
    if o.packages:
        pkgs, hidden = _packages(o.packages, show_all)
        lines += [row(f"{name}:", version) for name, version in pkgs]
        if hidden:
            lines.append(Raw(f"... and {hidden} more. Use --all to view."))
    else:
        lines.append(row("(none)", ""))
    lines.append(row("", ""))
    return lines


def _metric_names(checkpoints: Sequence[CheckpointRecord]) -> list[str]:
    names: set[str] = set()
    for c in checkpoints:
        names.update(c.obj.metrics)
    return sorted(names)


def checkpoints_table(shown: Shown, newest_first: bool = False, now: int | None = None) -> str:
    """ID, STEP, CREATED and one column per metric; ``(best)`` on the best checkpoint's
    primary metric, ``(files removed)`` after checkpoints whose files were removed."""
    from replicate.cli.output import time_ago

    now = now_ns() if now is None else now
    cps = shown.experiment.checkpoints
    names = _metric_names(cps)
    removed = any(c.removed for c in cps)
    lines: list[Line] = [row("ID", "STEP", "CREATED", *[n.upper() for n in names],
                             *([""] if removed else []))]
    for c in reversed(cps) if newest_first else cps:
        o = c.obj
        values = []
        for n in names:
            v = short_value(o.metrics[n], 10) if n in o.metrics else ""
            if c.id == shown.best and o.primary_metric and o.primary_metric[0] == n:
                v += " (best)"
            values.append(v)
        extra = (["(files removed)" if c.removed else ""] if removed else [])
        lines.append(row(c.id.hex()[:7], str(o.step), time_ago(o.created_ns, now), *values,
                         *extra))
    return tabwrite(lines)


def render_experiment(shown: Shown, show_all: bool = False, now: int | None = None) -> str:
    """The experiment view."""
    from replicate.cli.output import style

    title = style(f"Experiment: {shown.experiment.id.hex()}", bold=True)
    return (
        f"{title}\n\n"
        + tabwrite(_experiment_common(shown, show_all))
        + style("Checkpoints", bold=True) + "\n"
        + checkpoints_table(shown, now=now)
        + "\nTo see more details about a checkpoint, run:\n"
        + "  replicate show <checkpoint ID>\n"
    )


def render_checkpoint(shown: Shown, show_all: bool = False) -> str:
    """The checkpoint view."""
    from replicate.cli.output import rfc1123, style

    cp = shown.checkpoint
    assert cp is not None
    o = cp.obj
    path = o.path or ""
    if cp.removed:
        path = f"{path} (files removed)" if path else "(files removed)"
    lines: list[Line | Raw] = [
        row("Created:", rfc1123(o.created_ns)),
        row("Path:", path),
        row("Step:", str(o.step)),
        row("", ""),
        row(styled("Experiment", bold=True), ""),
        row("ID:", shown.experiment.id.hex()),
        *_experiment_common(shown, show_all),
        row(styled("Metrics", bold=True), ""),
    ]
    if o.metrics:
        pm = o.primary_metric
        for k, v in sorted(o.metrics.items()):
            note = f" (primary, {pm[1]})" if pm and pm[0] == k else ""
            lines.append(row(f"{k}:", full_value(v) + note))
    else:
        lines.append(row("(none)", ""))
    lines.append(row(""))
    title = style(f"Checkpoint: {cp.id.hex()}", bold=True)
    return f"{title}\n\n" + tabwrite(lines)


# --- rendering: JSON --------------------------------------------------------------------------


def checkpoint_json(c: CheckpointRecord, experiment_id: bytes | None = None) -> dict[str, Any]:
    """A checkpoint for ``--json``."""
    from replicate.cli.output import rfc3339

    o = c.obj
    out: dict[str, Any] = {
        "id": c.id.hex(),
        "created": rfc3339(o.created_ns),
        "step": o.step,
        "path": o.path,
        "metrics": dict(o.metrics),
        "primary_metric": (
            {"name": o.primary_metric[0], "goal": o.primary_metric[1]}
            if o.primary_metric else None
        ),
        "files_removed": c.removed,
    }
    if experiment_id is not None:
        out["experiment"] = experiment_id.hex()
    return out


def experiment_json(shown: Shown) -> dict[str, Any]:
    """An experiment and all its checkpoints for ``--json``."""
    from replicate.cli.output import rfc3339

    rec = shown.experiment
    o = rec.obj
    cps = [checkpoint_json(c) for c in rec.checkpoints]
    by_id = {c.id: j for c, j in zip(rec.checkpoints, cps)}
    return {
        "id": rec.id.hex(),
        "created": rfc3339(o.created_ns),
        "params": dict(o.params),
        "command": o.command,
        "path": o.path,
        "user": o.user,
        "host": o.host,
        "python_version": o.python_version,
        "python_packages": dict(o.packages),
        "git": o.git,
        "system": dict(o.system),
        "replicate_version": o.replicate_version,
        "running": shown.running,
        "num_checkpoints": len(cps),
        "best_checkpoint": by_id.get(shown.best) if shown.best else None,
        "latest_checkpoint": cps[-1] if cps else None,
        "checkpoints": cps,
    }


# --- commands ---------------------------------------------------------------------------------


@click.command("show")
@click.argument("id_", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Show every Python package.")
@repository_option
@pass_ctx
def show(ctx: Context, id_: str, as_json: bool, show_all: bool, repository: str | None) -> None:
    """Show an experiment or a checkpoint.

    ID is any unique prefix of an experiment's or a checkpoint's ID.
    """
    from replicate.cli import output

    ctx.use_repository(repository)
    shown = lookup(ctx.repo(), id_)
    if as_json:
        if shown.checkpoint is not None:
            obj = checkpoint_json(shown.checkpoint, shown.experiment.id)
        else:
            obj = experiment_json(shown)
        click.echo(output.dumps(obj))
    elif shown.checkpoint is not None:
        click.echo(render_checkpoint(shown, show_all), nl=False)
    else:
        click.echo(render_experiment(shown, show_all), nl=False)


@click.command("log")
@click.argument("id_", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, newest first.")
@click.option("-q", "--quiet", is_flag=True, help="Print full checkpoint IDs only.")
@repository_option
@pass_ctx
def log(ctx: Context, id_: str, as_json: bool, quiet: bool, repository: str | None) -> None:
    """List an experiment's checkpoints, newest first.

    ID is any unique prefix of the experiment's ID, or of one of its checkpoints' IDs.
    """
    from replicate.cli import output

    if quiet and as_json:
        raise click.UsageError("-q/--quiet cannot be combined with --json")
    ctx.use_repository(repository)
    shown = lookup(ctx.repo(), id_)
    cps = shown.experiment.checkpoints
    if quiet:
        if cps:
            click.echo("\n".join(c.id.hex() for c in reversed(cps)))
    elif as_json:
        click.echo(output.dumps([checkpoint_json(c) for c in reversed(cps)]))
    elif not cps:
        output.message(f"Experiment {shown.experiment.id.hex()[:7]} has no checkpoints")
    else:
        click.echo(checkpoints_table(shown, newest_first=True), nl=False)
