"""Rendering helpers shared by commands: colour, times, values and text tables."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

MSG_PREFIX = "═══╡ "


def use_colour(stream: Any = None) -> bool:
    """Colour only on a TTY and never with NO_COLOR set."""
    if os.environ.get("NO_COLOR"):
        return False
    s = stream or sys.stdout
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def style(text: str, *, bold: bool = False, dim: bool = False, underline: bool = False,
          colour: str | None = None, stream: Any = None) -> str:
    """ANSI-styled text when colour is on."""
    if not use_colour(stream):
        return text
    import click

    # None, not False: click.style(bold=False) emits a reset code that cancels the others
    return click.style(text, bold=bold or None, dim=dim or None,
                       underline=underline or None, fg=colour)


def message(text: str) -> None:
    """A status message on stderr, with the predecessor's prefix."""
    import click

    click.echo(style(MSG_PREFIX, dim=True, stream=sys.stderr) + text, err=True)


def to_datetime(ns: int) -> _dt.datetime:
    """UTC datetime from nanoseconds."""
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc)


def rfc3339(ns: int) -> str:
    """RFC 3339 UTC time for --json output."""
    return to_datetime(ns).isoformat().replace("+00:00", "Z")


def rfc1123(ns: int) -> str:
    """Time as show/diff print it (UTC): 'Fri, 27 Nov 2026 04:00:39 UTC'."""
    return to_datetime(ns).strftime("%a, %d %b %Y %H:%M:%S UTC")


def time_ago(ns: int, now_ns: int | None = None) -> str:
    """'2 minutes ago', 'about a second ago'; 73 h or older: '2026-11-27'."""
    import time

    now = now_ns if now_ns is not None else time.time_ns()
    secs = max(0.0, (now - ns) / 1e9)
    if secs >= 73 * 3600:
        return to_datetime(ns).strftime("%Y-%m-%d")
    if secs < 2:
        return "about a second ago"
    if secs < 60:
        return f"{int(secs)} seconds ago"
    if secs < 120:
        return "about a minute ago"
    if secs < 3600:
        return f"{int(secs // 60)} minutes ago"
    if secs < 7200:
        return "about an hour ago"
    return f"{int(secs // 3600)} hours ago"


def fmt_value(v: Any, max_len: int = 20) -> str:
    """A param or metric value as tables show it: floats to 5 significant digits, strings
    and objects truncated to ``max_len`` with '...'; ints, bools and null in full."""
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
        return f"{v:.5g}"
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= max_len else s[: max_len - 3] + "..."


def json_value(v: Any) -> Any:
    """A value for --json output: NaN and infinities as the predecessor's strings."""
    if isinstance(v, float):
        if math.isnan(v):
            return "[NaN]"
        if math.isinf(v):
            return "[+Infinity]" if v > 0 else "[-Infinity]"
        return v
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    """Valid JSON (no NaN tokens), pretty-printed."""
    return json.dumps(json_value(obj), indent=2, sort_keys=False, allow_nan=False)


def table(rows: Sequence[Sequence[str]], pad: int = 2) -> str:
    """A text table like Go's tabwriter: cells may hold several lines; columns padded by
    ``pad`` spaces; trailing spaces stripped."""
    if not rows:
        return ""
    ncol = max(len(r) for r in rows)
    cells = [[(r[i] if i < len(r) else "").split("\n") for i in range(ncol)] for r in rows]
    widths = [max(len(line) for row in cells for line in row[i]) for i in range(ncol)]
    out = []
    for row in cells:
        height = max(len(c) for c in row)
        for h in range(height):
            parts = []
            for i, c in enumerate(row):
                text = c[h] if h < len(c) else ""
                parts.append(text.ljust(widths[i]) if i < ncol - 1 else text)
            out.append((" " * pad).join(parts).rstrip())
    return "\n".join(out) + "\n"
