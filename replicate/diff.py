"""Compare two checkpoints: their metadata, section by section as the predecessor's ``diff``
showed it, and (new) their files, with the number of bytes that differ.

Everything here returns data; ``replicate.cli.diff`` renders it.

How changed bytes are counted, from chunk lists only (see :func:`count_changed`):

- identical file object IDs: unchanged, nothing is read;
- otherwise the chunk ID lists are compared: the bytes of B that no chunk shared with A covers;
- where content changed in place (a run of B's differing chunks lies between shared chunks that
  sit at the same offsets in A and B, or between such a chunk and the start or the end of two
  files of equal size), the count is made exact: the region is the same byte range in both
  files, and only its first and last chunks are read, just far enough to find the first and the
  last differing byte. The run counts the span between them: a float perturbed slightly keeps
  some of its bytes, so per-byte equality would undercount what users call "changed".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from replicate.checkout import flatten
from replicate.errors import CorruptObjectError, DoesNotExist
from replicate.history import resolve_any
from replicate.objects.codec import KIND_FILE, KIND_TREE, ChunkRef, File, TreeEntry
from replicate.objects.reader import file_chunk_refs, read_file_object
from replicate.objects.store import ObjectStore

if TYPE_CHECKING:
    from replicate.experiment import Checkpoint, Experiment
    from replicate.project import Project

SEC = 1_000_000_000


class _Missing:
    """A key one side does not have (the predecessor's "(not set)")."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


# --- picking what to compare ------------------------------------------------------------------


@dataclass
class Picked:
    """What an ID prefix named: an experiment and one of its checkpoints (None when the
    experiment has none). ``how`` is "checkpoint" (the prefix named a checkpoint), "best" or
    "latest" (it named an experiment), or "experiment" (an experiment without checkpoints)."""

    experiment: Experiment
    checkpoint: Checkpoint | None
    how: str


def pick(project: Project, prefix: str) -> Picked:
    """Resolve ``prefix`` to a checkpoint: a checkpoint ID, or an experiment ID, which means its
    best checkpoint, else its latest. Raises DoesNotExist / AmbiguousID."""
    from replicate.experiment import Experiment
    from replicate.history import load_experiment

    repo = project.repo()
    kind, eid, cid = resolve_any(repo, prefix)
    exp = Experiment(project, load_experiment(repo, eid))
    if kind == "checkpoint":
        assert cid is not None
        for c in exp.checkpoints:
            if c.id == cid.hex():
                return Picked(exp, c, "checkpoint")
        raise DoesNotExist(f"checkpoint {cid.hex()[:7]} is not in experiment {exp.short_id()}")
    best = exp.best()
    if best is not None:
        return Picked(exp, best, "best")
    latest = exp.latest()
    if latest is not None:
        return Picked(exp, latest, "latest")
    return Picked(exp, None, "experiment")


# --- values -----------------------------------------------------------------------------------


def _go_float(f: float) -> str:
    """A float as the predecessor printed it (Go's JSON encoding): shortest digits, '1' for
    1.0, exponent form below 1e-6 and from 1e21."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        mant, _, exp = repr(f).partition("e")  # shortest round-trip digits, exponent form
        sign, digits = exp[0], exp[1:].lstrip("0")
        if sign == "+" and len(digits) < 2:  # Go writes e+21, and e-7 (not e-07) in JSON
            digits = digits.rjust(2, "0")
        return f"{mant}e{sign}{digits}"
    s = format(Decimal(repr(f)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def value_str(v: Any) -> str:
    """A param, metric or metadata value as one line of text, untruncated (the predecessor's
    ``Value.String``): strings as they are, floats with their shortest digits, objects as
    compact JSON."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


# --- metadata sections ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One differing key of a section; ``a``/``b`` are raw values or MISSING."""

    key: str
    a: Any
    b: Any


@dataclass
class Section:
    """A section of the diff. ``ids`` is the ID row (Experiment and Checkpoint sections);
    ``rows`` holds only the keys whose values differ, sorted. ``compared`` is False when the
    rows were not compared at all (the Experiment section of two checkpoints of one
    experiment, as the predecessor showed it)."""

    name: str
    rows: list[Row] = field(default_factory=list)
    ids: tuple[str, str] | None = None
    compared: bool = True


def map_diff(
    a: dict[str, Any], b: dict[str, Any], times: frozenset[str] = frozenset()
) -> list[Row]:
    """Keys whose values differ as displayed (so 1 and 1.0 do not, and two NaNs do not), sorted;
    MISSING for a side without the key. Keys in ``times`` hold ns times, shown to the second."""

    def shown(k: str, v: Any) -> str:
        if k in times and isinstance(v, int):
            return str(v // SEC)
        return value_str(v)

    rows = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, MISSING), b.get(k, MISSING)
        if va is MISSING or vb is MISSING or shown(k, va) != shown(k, vb):
            rows.append(Row(k, va, vb))
    return rows


_TIMES = frozenset({"Created"})


def experiment_map(exp: Experiment) -> dict[str, Any]:
    """What the Experiment section compares (times as ns)."""
    out: dict[str, Any] = {
        "Command": exp.command,
        "Created": exp._obj.created_ns,
        "Host": exp.host,
        "Python version": exp.python_version,
        "User": exp.user,
    }
    if exp.git:
        out["Git branch"] = exp.git.get("branch")
        out["Git commit"] = exp.git.get("commit")
        out["Git dirty"] = exp.git.get("dirty")
    return out


def checkpoint_map(cp: Checkpoint) -> dict[str, Any]:
    """What the Checkpoint section compares (times as ns)."""
    out: dict[str, Any] = {
        "Created": cp._rec.obj.created_ns,
        "Path": cp.path or "",
        "Step": cp.step,
        "Files removed": cp.files_removed,  # shown only when the two differ
    }
    return out


def metadata_sections(a: Checkpoint, b: Checkpoint) -> list[Section]:
    """Experiment, Params, Python Packages, System, Checkpoint and Metrics sections."""
    ea, eb = a.experiment, b.experiment
    same = ea.id == eb.id
    exp = Section("Experiment", ids=(ea.id, eb.id), compared=not same)
    if not same:
        exp.rows = map_diff(experiment_map(ea), experiment_map(eb), _TIMES)
    return [
        exp,
        Section("Params", map_diff(ea.params, eb.params)),
        Section("Python Packages", map_diff(ea.python_packages, eb.python_packages)),
        Section("System", map_diff(ea.system, eb.system)),
        Section(
            "Checkpoint", map_diff(checkpoint_map(a), checkpoint_map(b), _TIMES), ids=(a.id, b.id)
        ),
        Section("Metrics", map_diff(a.metrics, b.metrics)),
    ]


# --- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteChange:
    """How much of a file changed: ``changed_bytes`` of B differ from A; ``exact`` when every
    differing run was measured byte-exactly (content changed in place) rather than counted as
    the bytes of B's chunks that A does not have (insertions, deletions, resizes)."""

    changed_bytes: int
    exact: bool
    chunks_read: int = 0


@dataclass(frozen=True)
class FileChange:
    """A path that differs between the two views."""

    path: str
    status: str  # "added", "removed" or "changed"
    size_a: int | None
    size_b: int | None
    changed_bytes: int
    exact: bool
    kind_a: str | None = None
    kind_b: str | None = None
    mode_a: int | None = None
    mode_b: int | None = None


def _offsets(refs: list[ChunkRef]) -> list[int]:
    out = []
    pos = 0
    for r in refs:
        out.append(pos)
        pos += r.size
    return out


class _ChunkCache:
    """Chunks read while measuring a file's regions (each read once, verified by the store, and
    dropped once its region is measured). ``prefetch`` starts reading chunks in the worker pool (decompression and hashing release
    the GIL), so the first and last chunks of many regions are read in parallel."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.data: dict[bytes, bytes] = {}
        self.pending: dict[bytes, Future[bytes]] = {}

    def prefetch(self, oids: list[bytes]) -> None:
        from replicate.objects.ingest import pool

        for oid in oids:
            if oid not in self.data and oid not in self.pending:
                self.pending[oid] = pool().submit(self.store.read_chunk, oid)

    def get(self, oid: bytes) -> bytes:
        d = self.data.get(oid)
        if d is None:
            fut = self.pending.pop(oid, None)
            d = fut.result() if fut is not None else self.store.read_chunk(oid)
            self.data[oid] = d
        return d

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()


def _pieces(
    cache: _ChunkCache, refs: list[ChunkRef], start: int, backward: bool
) -> Iterator[tuple[int, bytes]]:
    """(absolute offset, content) of the chunks of a region, forward or backward."""
    offs = []
    pos = start
    for r in refs:
        offs.append(pos)
        pos += r.size
    order = range(len(refs) - 1, -1, -1) if backward else range(len(refs))
    for k in order:
        data = cache.get(refs[k].id)
        if len(data) != refs[k].size:
            raise CorruptObjectError(
                "chunk length differs from the file's record", refs[k].id.hex()
            )
        yield offs[k], data


def _find_diff(
    ga: Iterator[tuple[int, bytes]], gb: Iterator[tuple[int, bytes]], backward: bool
) -> int | None:
    """The offset of the first (or, backward, the last) byte where two streams covering the
    same region differ; None when they are equal. Reads only as far as needed."""
    ca, cb = next(ga, None), next(gb, None)
    while ca is not None and cb is not None:
        (oa, da), (ob, db) = ca, cb
        lo = max(oa, ob)
        hi = min(oa + len(da), ob + len(db))
        if hi > lo:
            x = np.frombuffer(da, np.uint8, hi - lo, lo - oa)
            y = np.frombuffer(db, np.uint8, hi - lo, lo - ob)
            neq = np.flatnonzero(x != y)
            if len(neq):
                return lo + int(neq[-1] if backward else neq[0])
        if backward:
            # advance whichever starts later (its remaining bytes are all compared)
            if oa >= ob:
                ca = next(ga, None)
            if ob >= oa:
                cb = next(gb, None)
        else:
            ea, eb = oa + len(da), ob + len(db)
            if ea <= eb:
                ca = next(ga, None)
            if eb <= ea:
                cb = next(gb, None)
    return None


def _span(cache: _ChunkCache, a_refs: list[ChunkRef], b_refs: list[ChunkRef], start: int) -> int:
    """Span from the first to the last differing byte of a region that is the same byte range
    in both files (0 if none differs)."""
    first = _find_diff(
        _pieces(cache, a_refs, start, False), _pieces(cache, b_refs, start, False), False
    )
    if first is None:
        return 0
    last = _find_diff(
        _pieces(cache, a_refs, start, True), _pieces(cache, b_refs, start, True), True
    )
    assert last is not None
    return last - first + 1


def _ends(refs: list[ChunkRef]) -> list[bytes]:
    return [refs[0].id, refs[-1].id]


PREFETCH_RUNS = 8


def count_changed(store: ObjectStore, a: File, b: File) -> ByteChange:
    """How many bytes of file B differ from file A (see the module docstring)."""
    if a == b:
        return ByteChange(0, True)
    ra, rb = file_chunk_refs(store, a), file_chunk_refs(store, b)
    oa, ob = _offsets(ra), _offsets(rb)
    a_at: dict[bytes, set[int]] = {}
    for r, o in zip(ra, oa):
        a_at.setdefault(r.id, set()).add(o)
    a_index = {o: k for k, o in enumerate(oa)}
    a_index[a.size] = len(ra)

    def aligned(k: int) -> bool:
        return ob[k] in a_at.get(rb[k].id, ())

    changed = 0
    exact = True
    regions: list[tuple[list[ChunkRef], list[ChunkRef], int]] = []
    m = len(rb)
    i = 0
    while i < m:
        if rb[i].id in a_at:
            i += 1
            continue
        j = i
        while j < m and rb[j].id not in a_at:
            j += 1
        s = ob[i]
        e = ob[j] if j < m else b.size
        left = i == 0 or aligned(i - 1)
        right = (j < m and aligned(j)) or (j == m and a.size == b.size)
        ka, kb = a_index.get(s), a_index.get(e)
        if left and right and ka is not None and kb is not None and kb > ka:
            regions.append((ra[ka:kb], rb[i:j], s))
        else:
            changed += e - s
            exact = False
        i = j
    read = 0
    cache = _ChunkCache(store)
    try:
        for k, (xa, xb, s) in enumerate(regions):
            for ya, yb, _ in regions[k : k + PREFETCH_RUNS]:
                cache.prefetch(_ends(ya) + _ends(yb))
            changed += _span(cache, xa, xb, s)
            read += len(cache.data)
            for r in (*xa, *xb):  # keep memory bounded: drop what this region read
                cache.data.pop(r.id, None)
    finally:
        cache.close()
    return ByteChange(changed, exact, read)


def _view(
    store: ObjectStore, trees: list[bytes], cache: dict[bytes, list[tuple[str, TreeEntry]]]
) -> dict[str, TreeEntry]:
    """Path -> entry (files and links) of trees laid over each other, later ones on top."""
    out: dict[str, TreeEntry] = {}
    for t in trees:
        items = cache.get(t)
        if items is None:
            items = cache[t] = [
                (it.rel, it.entry) for it in flatten(store, t) if it.entry.kind != KIND_TREE
            ]
        for rel, e in items:
            out[rel] = e
    return out


def checkpoint_trees(cp: Checkpoint) -> list[bytes]:
    """The trees making up a checkpoint's full view: its experiment's code, then its files
    (unless they were removed)."""
    out = []
    if cp.experiment._obj.code is not None:
        out.append(cp.experiment._obj.code)
    if cp._rec.obj.files is not None and not cp._rec.removed:
        out.append(cp._rec.obj.files)
    return out


def diff_views(store: ObjectStore, trees_a: list[bytes], trees_b: list[bytes]) -> list[FileChange]:
    """Paths added, removed or changed between two views (lists of trees overlaid)."""
    if trees_a == trees_b:
        return []
    cache: dict[bytes, list[tuple[str, TreeEntry]]] = {}
    va, vb = _view(store, trees_a, cache), _view(store, trees_b, cache)
    out: list[FileChange] = []
    for path in sorted(set(va) | set(vb)):
        ea, eb = va.get(path), vb.get(path)
        if ea is None:
            assert eb is not None
            out.append(
                FileChange(
                    path, "added", None, eb.size, eb.size, True, kind_b=eb.kind, mode_b=eb.mode
                )
            )
        elif eb is None:
            out.append(
                FileChange(
                    path, "removed", ea.size, None, ea.size, True, kind_a=ea.kind, mode_a=ea.mode
                )
            )
        elif (ea.kind, ea.id, ea.mode) != (eb.kind, eb.id, eb.mode):
            if ea.kind == eb.kind == KIND_FILE and ea.id != eb.id:
                bc = count_changed(
                    store, read_file_object(store, ea.id), read_file_object(store, eb.id)
                )
                n, exact = bc.changed_bytes, bc.exact
            elif ea.kind == eb.kind and ea.id == eb.id:
                n, exact = 0, True  # only the mode changed
            else:  # a link changed, or a file became a link (or the reverse)
                n, exact = eb.size, True
            out.append(
                FileChange(
                    path, "changed", ea.size, eb.size, n, exact, ea.kind, eb.kind, ea.mode, eb.mode
                )
            )
    return out


# --- the whole diff ---------------------------------------------------------------------------


@dataclass
class Diff:
    """Everything ``replicate diff`` shows."""

    a: Checkpoint
    b: Checkpoint
    sections: list[Section]
    files: list[FileChange]
    files_removed: tuple[bool, bool]

    @property
    def changed_bytes(self) -> int:
        """Bytes that differ, summed over every changed, added or removed path."""
        return sum(f.changed_bytes for f in self.files)


def diff(a: Checkpoint, b: Checkpoint, files: bool = True) -> Diff:
    """Compare checkpoint ``a`` with checkpoint ``b`` (B relative to A)."""
    removed = (a.files_removed, b.files_removed)  # (also waits for a checkpoint being saved)
    store = a.experiment._project.repo().objects
    changes = diff_views(store, checkpoint_trees(a), checkpoint_trees(b)) if files else []
    return Diff(a, b, metadata_sections(a, b), changes, removed)


__all__ = [
    "MISSING",
    "ByteChange",
    "Diff",
    "FileChange",
    "Picked",
    "Row",
    "Section",
    "count_changed",
    "diff",
    "diff_views",
    "pick",
    "value_str",
]
