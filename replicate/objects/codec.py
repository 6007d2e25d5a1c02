"""Structured object types and their canonical msgpack encodings.

Every structured object is a msgpack array ``[type, version, field...]`` with positional fields
(no maps in headers), so its bytes -- and therefore its ID -- are canonical. User data (params,
metrics, system info) are msgpack values; maps inside them are written with sorted keys, and
floats are always float64, so NaN and +-Inf survive. Times are ints (nanoseconds since the Unix
epoch, UTC). IDs are 32 raw bytes.

``decode`` accepts only well-formed objects; anything else raises :class:`CorruptObjectError`,
never another exception.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

import msgpack

from replicate.errors import CorruptObjectError
from replicate.objects.ids import ID_BYTES, hash_object

# Type codes used in pack footers and index records.
CHUNK = 0
FILE = 1
SEGMENT = 2
TREE = 3
EXPERIMENT = 4
CHECKPOINT = 5
TYPE_NAMES = {
    CHUNK: "chunk",
    FILE: "file",
    SEGMENT: "segment",
    TREE: "tree",
    EXPERIMENT: "experiment",
    CHECKPOINT: "checkpoint",
}
TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}

# Tree entry kinds.
KIND_FILE = "file"
KIND_TREE = "tree"
KIND_LINK = "link"
KINDS = (KIND_FILE, KIND_TREE, KIND_LINK)

GOALS = ("minimize", "maximize")

# A file with more chunks than this is stored as a list of segment objects.
SEGMENT_THRESHOLD = 1024
# Content-defined segment boundary: a chunk whose ID's first byte is 0 ends a segment
# (mean 256 chunks), capped at SEGMENT_MAX chunks. Boundaries survive insertions.
SEGMENT_MAX = 1024


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its ID and raw length."""

    id: bytes
    size: int


@dataclass(frozen=True)
class SegmentRef:
    """One segment of a large file: the segment object's ID, its byte size and chunk count."""

    id: bytes
    size: int
    count: int


@dataclass(frozen=True)
class File:
    """A file's content: its size and either its chunks or (large files) its segments."""

    size: int
    chunks: tuple[ChunkRef, ...] = ()
    segments: tuple[SegmentRef, ...] = ()


@dataclass(frozen=True)
class Segment:
    """A run of consecutive chunks of a large file."""

    chunks: tuple[ChunkRef, ...]


@dataclass(frozen=True)
class TreeEntry:
    """A name in a tree. ``id`` is a file object (file), a tree (tree) or a chunk holding the
    link target (link). ``mode`` holds permission bits; ``size`` is bytes (file, link) or the
    total size of everything below (tree)."""

    name: str
    mode: int
    kind: str
    id: bytes
    size: int


@dataclass(frozen=True)
class Tree:
    """A directory: entries sorted by the UTF-8 bytes of their names."""

    entries: tuple[TreeEntry, ...]

    def get(self, name: str) -> TreeEntry | None:
        """The entry called ``name``, or None."""
        for e in self.entries:
            if e.name == name:
                return e
        return None


@dataclass(frozen=True)
class Experiment:
    """An experiment: what was run, with which params, where and on what."""

    created_ns: int
    nonce: bytes
    params: dict[str, Any]
    path: str | None
    code: bytes | None
    user: str
    host: str
    command: str
    python_version: str
    packages: tuple[tuple[str, str], ...]
    git: dict[str, Any] | None
    system: dict[str, Any]
    replicate_version: str


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint: the commit of an experiment's history."""

    experiment: bytes
    parent: bytes | None
    created_ns: int
    step: int
    path: str | None
    files: bytes | None
    metrics: dict[str, Any] = field(default_factory=dict)
    primary_metric: tuple[str, str] | None = None


StructuredObject = File | Segment | Tree | Experiment | Checkpoint


def type_code(obj: StructuredObject) -> int:
    """The type code of a structured object."""
    return _CODE_OF[type(obj)]


# --- names ----------------------------------------------------------------------------------


def children(obj: StructuredObject, with_files: bool = True) -> tuple[list[bytes], list[bytes]]:
    """What ``obj`` refers to: (structured objects, chunks). A symlink's target is a chunk.
    ``with_files=False`` leaves out a checkpoint's file tree (a tombstoned checkpoint keeps its
    metrics, not its files)."""
    subs: list[bytes] = []
    chunks: list[bytes] = []
    if isinstance(obj, Checkpoint):
        subs.append(obj.experiment)
        if obj.parent is not None:
            subs.append(obj.parent)
        if obj.files is not None and with_files:
            subs.append(obj.files)
    elif isinstance(obj, Experiment):
        if obj.code is not None:
            subs.append(obj.code)
    elif isinstance(obj, Tree):
        for e in obj.entries:
            (chunks if e.kind == KIND_LINK else subs).append(e.id)
    elif isinstance(obj, File):
        chunks.extend(c.id for c in obj.chunks)
        subs.extend(s.id for s in obj.segments)
    elif isinstance(obj, Segment):
        chunks.extend(c.id for c in obj.chunks)
    return subs, chunks


def check_name(name: object) -> str:
    """Validate one tree entry name. Raises ValueError for names that could escape a directory."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid name {name!r}: must be a non-empty string")
    if name in (".", "..") or "/" in name or "\x00" in name or "\\" in name:
        raise ValueError(f"invalid name {name!r}: contains '/', '\\', NUL or is '.'/'..'")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid name {name!r}: not valid UTF-8") from e
    return name


def check_relpath(path: str) -> str:
    """Validate a project-relative POSIX path (no absolute, no '..', no NUL). Returns it
    normalised (no './', no trailing '/')."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ValueError(f"invalid path {path!r}")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"invalid path {path!r}: must be relative")
    norm = posixpath.normpath(path)
    if norm == ".":
        return "."
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"invalid path {path!r}: must not leave the project directory")
    return norm


def _name_key(e: TreeEntry) -> bytes:
    return e.name.encode("utf-8")


def make_tree(entries: list[TreeEntry]) -> Tree:
    """Build a tree from entries in any order; validates names and rejects duplicates."""
    for e in entries:
        check_name(e.name)
        if e.kind not in KINDS:
            raise ValueError(f"invalid kind {e.kind!r}")
    ordered = sorted(entries, key=_name_key)
    for a, b in zip(ordered, ordered[1:]):
        if a.name == b.name:
            raise ValueError(f"duplicate name {a.name!r} in tree")
    return Tree(tuple(ordered))


# --- canonical user data ----------------------------------------------------------------------


def _canon(value: Any) -> Any:
    """User data in canonical form: dict keys sorted, tuples as lists, floats kept (NaN too)."""
    if isinstance(value, dict):
        return {k: _canon(value[k]) for k in sorted(value, key=_map_key)}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    return value


def _map_key(k: Any) -> tuple[int, Any]:
    if isinstance(k, str):
        return (0, k)
    return (1, repr(k))


# --- encode -----------------------------------------------------------------------------------


def _pack(value: list[Any]) -> bytes:
    return msgpack.packb(value, use_bin_type=True, use_single_float=False)


def encode(obj: StructuredObject) -> bytes:
    """Canonical bytes of a structured object."""
    if isinstance(obj, File):
        return _pack(
            [
                "file",
                1,
                obj.size,
                [[c.id, c.size] for c in obj.chunks],
                [[s.id, s.size, s.count] for s in obj.segments],
            ]
        )
    if isinstance(obj, Segment):
        return _pack(["segment", 1, [[c.id, c.size] for c in obj.chunks]])
    if isinstance(obj, Tree):
        return _pack(
            ["tree", 1, [[e.name, e.mode, e.kind, e.id, e.size] for e in obj.entries]]
        )
    if isinstance(obj, Experiment):
        return _pack(
            [
                "experiment",
                1,
                obj.created_ns,
                obj.nonce,
                _canon(obj.params),
                obj.path,
                obj.code,
                obj.user,
                obj.host,
                obj.command,
                obj.python_version,
                [[n, v] for n, v in obj.packages],
                None
                if obj.git is None
                else [obj.git.get("commit"), obj.git.get("branch"), bool(obj.git.get("dirty"))],
                _canon(obj.system),
                obj.replicate_version,
            ]
        )
    if isinstance(obj, Checkpoint):
        return _pack(
            [
                "checkpoint",
                1,
                obj.experiment,
                obj.parent,
                obj.created_ns,
                obj.step,
                obj.path,
                obj.files,
                _canon(obj.metrics),
                None if obj.primary_metric is None else list(obj.primary_metric),
            ]
        )
    raise TypeError(f"not a structured object: {type(obj).__name__}")


def object_id(obj: StructuredObject) -> bytes:
    """The ID of a structured object (BLAKE3 of its canonical encoding)."""
    return hash_object(encode(obj))


# --- decode -----------------------------------------------------------------------------------


class _Bad(Exception):
    pass


def _req(cond: bool, what: str) -> None:
    if not cond:
        raise _Bad(what)


def _int(v: Any, what: str, minimum: int | None = 0) -> int:
    _req(isinstance(v, int) and not isinstance(v, bool), f"{what} is not an int")
    if minimum is not None:
        _req(v >= minimum, f"{what} is negative")
    return int(v)


def _id(v: Any, what: str) -> bytes:
    _req(isinstance(v, bytes) and len(v) == ID_BYTES, f"{what} is not a 32-byte ID")
    return bytes(v)


def _opt_id(v: Any, what: str) -> bytes | None:
    return None if v is None else _id(v, what)


def _str(v: Any, what: str) -> str:
    _req(isinstance(v, str), f"{what} is not a string")
    return str(v)


def _opt_str(v: Any, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _list(v: Any, what: str, length: int | None = None) -> list[Any]:
    _req(isinstance(v, list), f"{what} is not a list")
    if length is not None:
        _req(len(v) == length, f"{what} has {len(v)} fields, expected {length}")
    return v


def _map(v: Any, what: str) -> dict[str, Any]:
    _req(isinstance(v, dict), f"{what} is not a map")
    for k in v:
        _req(isinstance(k, str), f"{what} has a non-string key")
    return v


def _chunks(v: Any) -> tuple[ChunkRef, ...]:
    out = []
    for i, c in enumerate(_list(v, "chunk list")):
        c = _list(c, f"chunk {i}", 2)
        out.append(ChunkRef(_id(c[0], f"chunk {i} id"), _int(c[1], f"chunk {i} size")))
    return tuple(out)


def _decode_fields(kind: str, f: list[Any]) -> StructuredObject:
    if kind == "file":
        _req(len(f) == 3, "file has wrong field count")
        size = _int(f[0], "file size")
        chunks = _chunks(f[1])
        segs = []
        for i, s in enumerate(_list(f[2], "segment list")):
            s = _list(s, f"segment {i}", 3)
            segs.append(
                SegmentRef(
                    _id(s[0], "segment id"),
                    _int(s[1], "segment size"),
                    _int(s[2], "segment count"),
                )
            )
        _req(not (chunks and segs), "file has both chunks and segments")
        total = sum(c.size for c in chunks) + sum(s.size for s in segs)
        _req(total == size, "file size does not match its chunks")
        return File(size, chunks, tuple(segs))
    if kind == "segment":
        _req(len(f) == 1, "segment has wrong field count")
        return Segment(_chunks(f[0]))
    if kind == "tree":
        _req(len(f) == 1, "tree has wrong field count")
        entries = []
        for i, e in enumerate(_list(f[0], "entry list")):
            e = _list(e, f"entry {i}", 5)
            # Names are validated where they are used (checkout, fsck), so a crafted tree is
            # refused there with UnsafePathError rather than reported as undecodable.
            name = _str(e[0], "entry name")
            k = _str(e[2], "entry kind")
            _req(k in KINDS, f"entry {name!r} has unknown kind {k!r}")
            entries.append(
                TreeEntry(name, _int(e[1], "mode"), k, _id(e[3], "entry id"), _int(e[4], "size"))
            )
        keys = [_name_key(e) for e in entries]
        _req(all(a < b for a, b in zip(keys, keys[1:])), "tree entries not sorted or duplicated")
        return Tree(tuple(entries))
    if kind == "experiment":
        _req(len(f) == 13, "experiment has wrong field count")
        nonce = f[1]
        _req(isinstance(nonce, bytes), "nonce is not bytes")
        pk = []
        for p in _list(f[9], "packages"):
            p = _list(p, "package", 2)
            pk.append((_str(p[0], "package name"), _str(p[1], "package version")))
        git: dict[str, Any] | None = None
        if f[10] is not None:
            g = _list(f[10], "git", 3)
            _req(isinstance(g[2], bool), "git dirty is not a bool")
            git = {
                "commit": _opt_str(g[0], "git commit"),
                "branch": _opt_str(g[1], "git branch"),
                "dirty": g[2],
            }
        return Experiment(
            created_ns=_int(f[0], "created", None),
            nonce=bytes(nonce),
            params=_map(f[2], "params"),
            path=_opt_str(f[3], "path"),
            code=_opt_id(f[4], "code tree"),
            user=_str(f[5], "user"),
            host=_str(f[6], "host"),
            command=_str(f[7], "command"),
            python_version=_str(f[8], "python version"),
            packages=tuple(pk),
            git=git,
            system=_map(f[11], "system"),
            replicate_version=_str(f[12], "replicate version"),
        )
    if kind == "checkpoint":
        _req(len(f) == 8, "checkpoint has wrong field count")
        pm = None
        if f[7] is not None:
            p = _list(f[7], "primary metric", 2)
            goal = _str(p[1], "goal")
            _req(goal in GOALS, "unknown goal")
            pm = (_str(p[0], "primary metric name"), goal)
        return Checkpoint(
            experiment=_id(f[0], "experiment"),
            parent=_opt_id(f[1], "parent"),
            created_ns=_int(f[2], "created", None),
            step=_int(f[3], "step", None),
            path=_opt_str(f[4], "path"),
            files=_opt_id(f[5], "files tree"),
            metrics=_map(f[6], "metrics"),
            primary_metric=pm,
        )
    raise _Bad(f"unknown object type {kind!r}")


def decode(data: bytes | bytearray | memoryview, object_id: str = "", location: str = "") -> StructuredObject:
    """Decode canonical bytes. Raises CorruptObjectError for anything malformed."""
    try:
        value = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False, use_list=True)
        top = _list(value, "object")
        _req(len(top) >= 2, "object too short")
        kind = _str(top[0], "type")
        _req(_int(top[1], "version") == 1, f"unsupported {kind} version {top[1]!r}")
        return _decode_fields(kind, top[2:])
    except CorruptObjectError:
        raise
    except _Bad as e:
        raise CorruptObjectError(f"malformed object: {e}", object_id, location) from None
    except Exception as e:  # msgpack raises many types on garbage
        raise CorruptObjectError(
            f"undecodable object ({type(e).__name__})", object_id, location
        ) from None


def decode_verified(oid: bytes, data: bytes, location: str = "") -> StructuredObject:
    """Decode bytes read for ``oid``, first checking they hash to it."""
    if hash_object(data) != oid:
        raise CorruptObjectError("hash mismatch", oid.hex(), location)
    return decode(data, oid.hex(), location)


_CODE_OF: dict[type, int] = {
    File: FILE,
    Segment: SEGMENT,
    Tree: TREE,
    Experiment: EXPERIMENT,
    Checkpoint: CHECKPOINT,
}


def is_nan(v: Any) -> bool:
    """True for a float NaN."""
    return isinstance(v, float) and math.isnan(v)
