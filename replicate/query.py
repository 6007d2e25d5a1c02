"""Listing experiments fast: per-experiment summaries kept in a rebuildable cache, plus the
``--filter`` / ``--sort`` grammar of ``replicate ls``.

A summary holds everything ``ls``, ``ps``, ``--filter``, ``--sort`` and ``--json`` need: the
experiment's fields, the number of checkpoints and the best and latest checkpoints. Summaries are
cached in ``cache/summaries.msgpack`` keyed by experiment ID and the head they were computed at;
when a head moves, only the new checkpoints are read. Deleting the cache is always safe.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from replicate.errors import ReplicateError
from replicate.fsutil import write_atomic
from replicate.heartbeat import is_running
from replicate.history import experiment_ids, read_checkpoint_object, read_experiment_object
from replicate.objects import codec
from replicate.repository import Repository

CACHE_VERSION = 3


class FilterError(ReplicateError, ValueError):
    """A --filter or --sort expression is malformed or cannot be applied."""


@dataclass
class CheckpointSummary:
    """What listings show of a checkpoint."""

    id: bytes
    step: int
    created_ns: int
    path: str | None
    metrics: dict[str, Any]
    primary_metric: tuple[str, str] | None

    def to_list(self) -> list[Any]:
        return [self.id, self.step, self.created_ns, self.path, self.metrics,
                list(self.primary_metric) if self.primary_metric else None]

    @classmethod
    def from_list(cls, v: list[Any]) -> CheckpointSummary:
        return cls(bytes(v[0]), v[1], v[2], v[3], v[4], tuple(v[5]) if v[5] else None)

    @classmethod
    def of(cls, cid: bytes, c: codec.Checkpoint) -> CheckpointSummary:
        return cls(cid, c.step, c.created_ns, c.path, dict(c.metrics), c.primary_metric)


@dataclass
class Summary:
    """What listings show of an experiment."""

    id: bytes
    head: bytes
    created_ns: int
    user: str
    host: str
    command: str
    path: str | None
    params: dict[str, Any]
    num_checkpoints: int = 0
    primary_metric: tuple[str, str] | None = None
    best: CheckpointSummary | None = None
    latest: CheckpointSummary | None = None
    running: bool = field(default=False, compare=False)

    def to_list(self) -> list[Any]:
        return [self.id, self.head, self.created_ns, self.user, self.host, self.command,
                self.path, self.params, self.num_checkpoints,
                list(self.primary_metric) if self.primary_metric else None,
                # True: the best checkpoint is the latest (stored once, shared when loaded)
                True if self.best is not None and self.latest is not None
                and self.best.id == self.latest.id
                else self.best.to_list() if self.best else None,
                self.latest.to_list() if self.latest else None]

    @classmethod
    def from_list(cls, v: list[Any]) -> Summary:
        latest = CheckpointSummary.from_list(v[11]) if v[11] else None
        best = latest if v[10] is True else CheckpointSummary.from_list(v[10]) if v[10] else None
        return cls(bytes(v[0]), bytes(v[1]), v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                   tuple(v[9]) if v[9] else None, best, latest)

    def add(self, cid: bytes, c: codec.Checkpoint) -> None:
        """Fold in the next checkpoint (oldest first)."""
        cs = CheckpointSummary.of(cid, c)
        self.num_checkpoints += 1
        self.latest = cs
        self.head = cid
        if self.primary_metric is None and c.primary_metric is not None:
            self.primary_metric = c.primary_metric
        if self.primary_metric is not None:
            name, goal = self.primary_metric
            v = c.metrics.get(name)
            if _is_num(v):
                b = self.best.metrics.get(name) if self.best else None
                if self.best is None or not _is_num(b) or (
                    v < b if goal == "minimize" else v > b
                ):
                    self.best = cs


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _fresh_summary(eid: bytes, e: codec.Experiment) -> Summary:
    return Summary(eid, eid, e.created_ns, e.user, e.host, e.command, e.path, dict(e.params))


def _advance(repo: Repository, s: Summary, head: bytes) -> Summary:
    """Summary ``s`` brought forward to ``head`` (reading only the new checkpoints)."""
    new: list[tuple[bytes, codec.Checkpoint]] = []
    cur: bytes | None = head if head != s.id else None
    while cur is not None and cur != s.head:
        c = read_checkpoint_object(repo, cur)
        new.append((cur, c))
        cur = c.parent
    if cur != s.head and s.head != s.id:
        # history was rewritten under us (not possible through replicate): start over
        return _advance(repo, _fresh_summary(s.id, read_experiment_object(repo, s.id)), head)
    for cid, c in reversed(new):
        s.add(cid, c)
    return s


# The cache also records the mtime of refs/experiments/ it was computed at. Every ref change
# (RefStore: lock file created, then renamed over the ref; delete: unlink) changes that
# directory's mtime, so while it is unchanged the cached heads are the refs and listing reads
# none of the (thousands of) ref files. As with Git's racy-clean index, the recorded mtime is
# trusted only when the cache file is RACY_NS younger than it, and it is recorded only when the
# refs were read within SAVE_WINDOW_S of the stat: so the refs were read at least
# RACY_NS - SAVE_WINDOW_S after their last change, later than any coarse timestamp tick.
RACY_NS = 3_000_000_000
SAVE_WINDOW_S = 0.5


class SummaryCache:
    """The on-disk cache of summaries (best-effort; rebuilt when unreadable)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.path = repo.root / "cache" / "summaries.msgpack"
        self.refs_mtime: int | None = None  # as recorded in the file
        self.trusted = False  # the recorded refs mtime is old enough to rely on

    def load(self) -> dict[bytes, Summary]:
        try:
            with open(self.path, "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime_ns
                raw = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
            if raw[0] != CACHE_VERSION:
                return {}
            items = {bytes(k): Summary.from_list(v) for k, v in raw[1].items()}
        except Exception:
            return {}
        refs_mtime = raw[2]
        if isinstance(refs_mtime, int):
            self.refs_mtime = refs_mtime
            self.trusted = mtime - refs_mtime >= RACY_NS
        return items

    def save(self, items: dict[bytes, Summary], refs_mtime: int | None = None) -> None:
        data = msgpack.packb(
            [CACHE_VERSION, {k: v.to_list() for k, v in items.items()}, refs_mtime],
            use_bin_type=True,
        )
        try:
            write_atomic(self.path, data, durable=False)
        except OSError:
            pass

    def touch(self) -> None:
        """Mark the cache as checked against the refs now (its mtime is the check time)."""
        try:
            os.utime(self.path)
        except OSError:
            pass


def _refs_mtime(repo: Repository) -> int | None:
    """mtime of a local repository's refs/experiments/ (None: unknown, read the refs)."""
    refs_dir = getattr(repo.refs, "refs_dir", None)
    if refs_dir is None:
        return None
    try:
        return os.stat(refs_dir / "experiments").st_mtime_ns
    except OSError:
        return None


def summaries(repo: Repository) -> list[Summary]:
    """A summary of every experiment, oldest first (running status filled in).

    A remote repository answers from its catalog; a project merged with its shared remote
    lists local experiments plus the remote's others."""
    remote_only = getattr(repo, "remote", None) is not None
    merged_remote = getattr(repo, "remote_repo", None)
    if remote_only or merged_remote is not None:
        from replicate import catalog

        if remote_only:
            return catalog.summaries(repo)  # type: ignore[arg-type]
        local = summaries(repo.local)  # type: ignore[attr-defined]
        seen = {s.id for s in local}
        try:
            others = [s for s in catalog.summaries(merged_remote) if s.id not in seen]
        except ReplicateError:
            others = []
        return sorted(local + others, key=lambda s: (s.created_ns, s.id))
    cache = SummaryCache(repo)
    cached = cache.load()
    t_stat = time.monotonic()
    refs_mtime = _refs_mtime(repo)
    if refs_mtime is not None and cache.trusted and cache.refs_mtime == refs_mtime:
        out = cached  # no ref changed since the cache was written
    else:
        heads = {
            bytes.fromhex(n.split("/", 1)[1]): h for n, h in repo.refs.list("experiments").items()
        }
        out = {}
        dirty = len(cached) != len(heads)
        for eid, head in heads.items():
            s = cached.get(eid)
            if s is not None and s.head == head:
                out[eid] = s
                continue
            dirty = True
            if s is None:
                s = _fresh_summary(eid, read_experiment_object(repo, eid))
            out[eid] = _advance(repo, s, head)
        quick = time.monotonic() - t_stat < SAVE_WINDOW_S
        record = refs_mtime if quick else None
        if dirty or record != cache.refs_mtime:
            cache.save(out, record)
        elif record is not None:
            cache.touch()
    now = time.time_ns()
    hb = repo.heartbeats_dir
    running = set()
    try:
        for n in os.listdir(hb):
            if len(n) == 64:
                running.add(n)
    except FileNotFoundError:
        pass
    if running:
        for s in out.values():
            s.running = s.id.hex() in running and _fresh(hb / s.id.hex(), now)
    return sorted(out.values(), key=lambda s: (s.created_ns, s.id))


def _fresh(p: Path, now: int) -> bool:
    return is_running(p, now)


def experiment_count(repo: Repository) -> int:
    """Number of experiments."""
    return len(experiment_ids(repo))


# --- filters ----------------------------------------------------------------------------------

_FILTER_RE = re.compile(r"^\s*([A-Za-z0-9_\-. /:]+?)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")
_OPS = ("=", "!=", "<", "<=", ">", ">=")
_FILTER_HELP = (
    'filters look like "NAME OP VALUE" with OP one of = != < <= > >=, e.g. '
    '"val_loss < 0.2", "optimizer = adam", "status = running"'
)


@dataclass(frozen=True)
class Filter:
    """One parsed ``--filter`` expression."""

    name: str
    op: str
    value: Any
    text: str


def parse_value(text: str) -> Any:
    """Filter value typing: null/None, int, float, true/false, JSON object/array, else text."""
    t = text.strip()
    if t in ("null", "None"):
        return None
    if t.lower() == "true":
        return True
    if t.lower() == "false":
        return False
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    try:
        f = float(t)
        return f
    except ValueError:
        pass
    if t[:1] in ("{", "[", '"'):
        try:
            return json.loads(t)
        except ValueError:
            pass
    return t


def parse_filter(text: str) -> Filter:
    """Parse ``NAME OP VALUE``; FilterError when malformed."""
    m = _FILTER_RE.match(text)
    if not m or m.group(2) not in _OPS or not m.group(1).strip():
        raise FilterError(f"malformed filter {text!r}: {_FILTER_HELP}")
    name, op, raw = m.group(1).strip(), m.group(2), m.group(3)
    if raw == "":
        raise FilterError(f"malformed filter {text!r}: missing value; {_FILTER_HELP}")
    if raw[:1] in "=<>":  # "a == 1", "a => 1": a mistyped operator, not a value "= 1"
        raise FilterError(f"malformed filter {text!r}: unknown operator; {_FILTER_HELP}")
    value: Any = parse_value(raw)
    if name in ("created", "started"):
        value = _parse_time(raw)
    return Filter(name, op, value, text)


def _parse_time(raw: str) -> float:
    t = raw.strip()
    try:
        d = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"cannot read {raw!r} as a time; use ISO 8601 like 2026-11-27 or 2026-11-27T10:00"
        ) from None
    if d.tzinfo is None:
        d = d.astimezone()  # local time, as the predecessor
    return d.timestamp()


def lookup(s: Summary, name: str) -> tuple[bool, Any]:
    """(found, value) of a filter/sort key for an experiment."""
    if name in ("created", "started"):
        return True, s.created_ns / 1e9
    if name == "step":
        return True, s.latest.step if s.latest else 0
    if name in ("user", "host", "command"):
        return True, getattr(s, name)
    if name == "status":
        return True, "running" if s.running else "stopped"
    if name == "id":
        return True, s.id.hex()
    if s.best is not None and name in s.best.metrics:
        return True, s.best.metrics[name]
    if name in s.params:
        return True, s.params[name]
    return False, None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "object"


def compare(a: Any, b: Any, where: str) -> int:
    """-1/0/1 for comparable values; FilterError for different types (int vs float is fine)."""
    ta, tb = _type_name(a), _type_name(b)
    num = ("int", "float")
    if not (ta == tb or (ta in num and tb in num)):
        raise FilterError(
            f"error applying {where}: comparing values of different types: {ta} and {tb}"
        )
    if ta == "object":
        ja, jb = json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)
        return (ja > jb) - (ja < jb)
    return (a > b) - (a < b)


def matches(s: Summary, f: Filter) -> bool:
    """True if experiment ``s`` passes filter ``f``."""
    found, v = lookup(s, f.name)
    if f.value is None:
        present = found and v is not None
        return (not present) if f.op == "=" else present
    if not found or v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return f.op == "!="
    c = compare(v, f.value, f"filter {f.text!r} to experiment {s.id.hex()[:7]}")
    return {"=": c == 0, "!=": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[f.op]


def apply(items: list[Summary], filters: list[Filter]) -> list[Summary]:
    """Experiments passing every filter (AND)."""
    return [s for s in items if all(matches(s, f) for f in filters)]


def parse_sort(key: str) -> tuple[str, bool]:
    """``KEY``, ``KEY-asc`` or ``KEY-desc`` -> (name, descending)."""
    k = key.strip()
    if not k:
        raise FilterError("empty --sort key")
    if k.endswith("-desc"):
        return k[:-5], True
    if k.endswith("-asc"):
        return k[:-4], False
    return k, False


def sort(items: list[Summary], key: str) -> list[Summary]:
    """Sort by a filter name; experiments without the key go last."""
    name, desc = parse_sort(key)
    have = []
    missing = []
    for s in items:
        found, v = lookup(s, name)
        if not found or v is None or (isinstance(v, float) and math.isnan(v)):
            missing.append(s)
        else:
            have.append((v, s))
    import functools

    def cmp(x: tuple[Any, Summary], y: tuple[Any, Summary]) -> int:
        return compare(x[0], y[0], f"--sort {key!r}")

    have.sort(key=functools.cmp_to_key(cmp), reverse=desc)
    return [s for _, s in have] + missing


def summarize(repo: Repository, eid: bytes, head: bytes) -> Summary:
    """A fresh summary of one experiment at ``head`` (reads its whole chain)."""
    return _advance(repo, _fresh_summary(eid, read_experiment_object(repo, eid)), head)
