"""``replicate diff A B``: compare two checkpoints (an experiment means its best, else latest).

The table is the predecessor's, byte for byte (Go's tabwriter with a minimum cell width of 26
and 2 spaces of padding, only differing keys, sorted, "(not set)", "(no difference)", values cut
at 50 characters), with two sections added: System, and Files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from replicate.cli.app import Context, pass_ctx, repository_option
from replicate.cli.maint import human_bytes
from replicate.cli.output import dumps, message, rfc1123, rfc3339, use_colour

if TYPE_CHECKING:
    from replicate.diff import Diff, FileChange, Picked, Section

MIN_WIDTH = 26
PADDING = 2
MAX_VALUE = 50
# The predecessor always wrote bold / dim escapes (8 bytes each: ESC[1m ... ESC[0m) and its
# tabwriter counted them as width; its layout, escapes stripped, keeps those 8 columns.
ESCAPE_WIDTH = 8

# display key -> --json key
JSON_KEYS = {
    "Command": "command",
    "Files removed": "files_removed",
    "Created": "created",
    "Git branch": "git_branch",
    "Git commit": "git_commit",
    "Git dirty": "git_dirty",
    "Host": "host",
    "Path": "path",
    "Python version": "python_version",
    "Step": "step",
    "User": "user",
}
TIME_KEYS = {"Created"}
SECTION_KEYS = {
    "Experiment": "experiment",
    "Params": "params",
    "Python Packages": "python_packages",
    "System": "system",
    "Checkpoint": "checkpoint",
    "Metrics": "metrics",
}


class Cell:
    """A table cell; ``extra`` is width that counts but is not shown (escape sequences)."""

    def __init__(self, text: str, bold: bool = False, dim: bool = False) -> None:
        self.text = text
        self.bold = bold
        self.dim = dim
        self.extra = ESCAPE_WIDTH if (bold or dim) else 0

    @property
    def width(self) -> int:
        return len(self.text) + self.extra

    def render(self, colour: bool) -> str:
        if colour and (self.bold or self.dim):
            return click.style(self.text, bold=self.bold or None, dim=self.dim or None)
        return self.text


Line = tuple[Cell, Cell, Cell]


def _widths(lines: Sequence[Line], at_least: Sequence[int] = (0, 0)) -> list[int]:
    return [
        max(MIN_WIDTH, at_least[c], *(ln[c].width + PADDING for ln in lines)) for c in (0, 1)
    ]


def _render(lines: Sequence[Line], widths: Sequence[int], colour: bool) -> str:
    out = []
    for ln in lines:
        parts = []
        for c in (0, 1):
            parts.append(ln[c].render(colour) + " " * (widths[c] - ln[c].width))
        parts.append(ln[2].render(colour))
        out.append("".join(parts))
    return "".join(s + "\n" for s in out)


def truncate(s: str, n: int = MAX_VALUE) -> str:
    """The predecessor's truncation: at most ``n`` characters, '...' marking a cut."""
    return s[: n - 3] + "..." if len(s) > n else s


def _value(key: str, v: Any) -> str:
    from replicate.diff import MISSING, value_str

    if v is MISSING:
        return "(not set)"
    if key in TIME_KEYS and isinstance(v, int):
        return rfc1123(v)
    return truncate(value_str(v))


def _heading(name: str) -> Line:
    return Cell(name, bold=True), Cell(""), Cell("")


def _blank() -> Line:
    return Cell(""), Cell(""), Cell("")


def _no_difference() -> Line:
    return Cell("(no difference)", dim=True), Cell(""), Cell("")


def section_lines(s: Section) -> list[Line]:
    """Lines of one metadata section (heading, ID row, differing rows, blank line)."""
    from replicate.objects import ids

    lines: list[Line] = [_heading(s.name)]
    if s.ids is not None:
        lines.append((Cell("ID:"), Cell(ids.short(s.ids[0])), Cell(ids.short(s.ids[1]))))
    if s.compared:
        if s.rows:
            lines += [
                (Cell(f"{r.key}:"), Cell(_value(r.key, r.a)), Cell(_value(r.key, r.b)))
                for r in s.rows
            ]
        else:
            lines.append(_no_difference())
    lines.append(_blank())
    return lines


def file_cells(f: FileChange) -> Line:
    """One row of the Files section."""
    if f.status == "added":
        assert f.size_b is not None
        return Cell(f"{f.path}:"), Cell("(absent)"), Cell(f"{human_bytes(f.size_b)} (added)")
    if f.status == "removed":
        assert f.size_a is not None
        return Cell(f"{f.path}:"), Cell(human_bytes(f.size_a)), Cell("(removed)")
    assert f.size_a is not None and f.size_b is not None
    notes = []
    if f.kind_a != f.kind_b:
        notes.append(f"{f.kind_a} -> {f.kind_b}")
    if f.changed_bytes or f.kind_a == f.kind_b and f.mode_a == f.mode_b:
        approx = "" if f.exact else "~"
        notes.append(f"{approx}{human_bytes(f.changed_bytes)} changed")
    if f.mode_a != f.mode_b and f.mode_a is not None and f.mode_b is not None:
        notes.append(f"mode {f.mode_a:o} -> {f.mode_b:o}")
    b = f"{human_bytes(f.size_b)} ({', '.join(notes)})"
    return Cell(f"{f.path}:"), Cell(human_bytes(f.size_a)), Cell(b)


def files_lines(d: Diff) -> list[Line]:
    """The Files section (new)."""
    lines: list[Line] = [_heading("Files")]
    if d.files:
        lines += [file_cells(f) for f in d.files]
    else:
        lines.append(_no_difference())
    lines.append(_blank())
    return lines


def render_table(d: Diff, colour: bool = False) -> str:
    """The diff as the predecessor's table, then the Files section."""
    main: list[Line] = []
    for s in d.sections:
        main += section_lines(s)
    widths = _widths(main)
    files = files_lines(d)
    # The Files section is its own tabwriter block so that a long path does not widen the
    # predecessor's sections; it is at least as wide, so that columns line up.
    return _render(main, widths, colour) + _render(files, _widths(files, widths), colour)


def _json_value(key: str, v: Any) -> Any:
    if key in TIME_KEYS and isinstance(v, int):
        return rfc3339(v)
    return v


def to_json(d: Diff) -> dict[str, Any]:
    """Every section as data (full IDs, RFC 3339 times, exact byte counts)."""
    from replicate.diff import MISSING

    out: dict[str, Any] = {
        "a": {"experiment": d.a.experiment.id, "checkpoint": d.a.id},
        "b": {"experiment": d.b.experiment.id, "checkpoint": d.b.id},
    }
    for s in d.sections:
        diffs: dict[str, Any] = {}
        for r in s.rows:
            key = JSON_KEYS.get(r.key, r.key) if s.ids is not None else r.key
            entry = {}
            if r.a is not MISSING:
                entry["a"] = _json_value(r.key, r.a)
            if r.b is not MISSING:
                entry["b"] = _json_value(r.key, r.b)
            diffs[key] = entry
        name = SECTION_KEYS[s.name]
        if s.ids is not None:
            out[name] = {"a": s.ids[0], "b": s.ids[1], "differences": diffs}
        else:
            out[name] = diffs
    out["files"] = [
        {
            "path": f.path,
            "status": f.status,
            "size_a": f.size_a,
            "size_b": f.size_b,
            "changed_bytes": f.changed_bytes,
            "exact": f.exact,
            "kind_a": f.kind_a,
            "kind_b": f.kind_b,
            "mode_a": f.mode_a,
            "mode_b": f.mode_b,
        }
        for f in d.files
    ]
    out["files_removed"] = {"a": d.files_removed[0], "b": d.files_removed[1]}
    out["changed_bytes"] = d.changed_bytes
    return out


def pick_checkpoint(ctx: Context, prefix: str) -> Picked:
    """Resolve a diff argument to a checkpoint, saying which one an experiment ID picked."""
    from replicate.diff import pick
    from replicate.errors import DoesNotExist

    p = pick(ctx.project(), prefix)
    if p.how == "best":
        message(f'"{prefix}" matches an experiment, picking the best checkpoint')
    elif p.how == "latest":
        message(f'"{prefix}" is an experiment, picking the latest checkpoint')
    elif p.checkpoint is None:
        raise DoesNotExist(
            f"cannot pick a checkpoint of experiment {p.experiment.short_id()}: it does not "
            "have any checkpoints"
        )
    return p


@click.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--json", "as_json", is_flag=True, help="Print every section as JSON.")
@repository_option
@pass_ctx
def diff(ctx: Context, a: str, b: str, as_json: bool, repository: str | None) -> None:
    """Compare two checkpoints: metadata, params, packages, metrics and files.

    A and B are checkpoint IDs, or experiment IDs (meaning the experiment's best checkpoint, or
    its latest when it has no primary metric); any unique prefix works. Files compares the two
    full views (experiment code, then checkpoint files) and counts the bytes that differ.
    """
    from replicate.diff import diff as compute

    ctx.use_repository(repository)
    pa, pb = pick_checkpoint(ctx, a), pick_checkpoint(ctx, b)
    assert pa.checkpoint is not None and pb.checkpoint is not None
    d = compute(pa.checkpoint, pb.checkpoint)
    if as_json:
        click.echo(dumps(to_json(d)))
    else:
        click.echo(render_table(d, colour=use_colour()), nl=False)


__all__ = ["diff", "human_bytes", "render_table", "to_json"]
