"""Snapshot files and directories of a project into trees (the only workspace reader).

Rules: ``.replicateignore`` (gitignore syntax) at the project root applies inside directories;
``.replicate/``, ``.git/`` and virtual environments (directories holding ``pyvenv.cfg`` or
``conda-meta/``) are always skipped; symlinks are stored as links (never followed); file
permission bits are kept; other file types (sockets, FIFOs, devices) are skipped. A path named
explicitly is stored even if an ignore rule matches it.

A snapshot has two halves so the training loop only waits for the first:

1. :func:`capture` walks the path and decides, per file, where its bytes come from: the stat
   cache (unchanged since last time: nothing to read), memory (read now, while the file is in
   the page cache), a staging copy (memory budget exceeded), or the live file (read later, by
   the synchronous path only).
2. :func:`build` turns a capture into objects in a transaction and returns the root tree.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicate.objects import codec
from replicate.objects.codec import KIND_FILE, KIND_LINK, KIND_TREE, TreeEntry, make_tree
from replicate.objects.ingest import ingest_bytes, ingest_file
from replicate.objects.statcache import StatCache, now_ns
from replicate.objects.store import Transaction

ALWAYS_SKIP = frozenset({".replicate", ".git", ".hg", ".svn", "__pycache__", ".mypy_cache"})
IGNORE_FILE = ".replicateignore"

LIVE = "live"  # read the original file when building (synchronous path)
MEMORY = "memory"  # bytes captured in memory
STAGED = "staged"  # bytes copied to a staging file
CACHED = "cached"  # unchanged: the stat cache knows its file object
SAME = "same"  # unchanged since an earlier capture of this process (maybe not yet built)


@dataclass
class BuildStats:
    """What a snapshot read and wrote."""

    files: int = 0
    bytes: int = 0
    cached_files: int = 0
    skipped: list[str] = field(default_factory=list)


class IgnoreRules:
    """``.replicateignore`` of a project root (gitignore semantics, via pathspec)."""

    def __init__(self, root: Path | None) -> None:
        self.spec: Any = None
        p = root / IGNORE_FILE if root is not None else None
        if p is not None and p.is_file():
            import pathspec

            lines = p.read_text(errors="replace").splitlines()
            self.spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """True if the project-relative POSIX path ``rel`` is ignored."""
        if self.spec is None:
            return False
        return bool(self.spec.match_file(rel + "/" if is_dir else rel))


def is_virtualenv(path: Path) -> bool:
    """True for a directory that is a Python virtual environment or conda environment."""
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


@dataclass
class CapturedFile:
    """A regular file and where its bytes come from."""

    path: Path
    mode: int
    st: os.stat_result
    source: str
    file_id: bytes | None = None  # CACHED
    data: Any = None  # MEMORY: a bytes-like of exactly st_size... or fewer if it shrank
    staged: Path | None = None  # STAGED
    same: CapturedFile | None = None  # SAME
    read_start: int = 0


@dataclass
class CapturedLink:
    """A symbolic link."""

    target: bytes


@dataclass
class CapturedDir:
    """A directory and its captured children, by name."""

    mode: int
    children: dict[str, CapturedFile | CapturedLink | CapturedDir] = field(default_factory=dict)


Node = CapturedFile | CapturedLink | CapturedDir


@dataclass
class Capture:
    """Everything needed to build a snapshot later, even if the files change meanwhile."""

    rel: str  # the project-relative path captured ("." for everything)
    root: CapturedDir  # the project root, holding only what was captured
    memory_bytes: int = 0
    staged_bytes: int = 0
    stats: BuildStats = field(default_factory=BuildStats)
    staging_dir: Path | None = None
    _release: list[Callable[[], None]] = field(default_factory=list)

    def release(self) -> None:
        """Drop captured bytes and staging files (after building, or on failure)."""
        for fn in self._release:
            try:
                fn()
            except OSError:
                pass
        self._release.clear()
        if self.staging_dir is not None:
            shutil.rmtree(self.staging_dir, ignore_errors=True)


# A policy deciding where a changed file's bytes go: returns MEMORY, STAGED or LIVE.
Placement = Callable[[int], str]


def _always_live(_size: int) -> str:
    return LIVE


class Capturer:
    """Walks a project path and captures it."""

    def __init__(
        self,
        project_dir: Path,
        statcache: StatCache | None = None,
        is_stored: Callable[[bytes], bool] | None = None,
        placement: Placement = _always_live,
        staging_dir: Path | None = None,
        buffers: Buffers | None = None,
        ignore: bool = True,
        recent: dict[str, CapturedFile] | None = None,
    ) -> None:
        self.root = project_dir
        self.recent = recent
        self.statcache = statcache
        self.is_stored = is_stored or (lambda _i: False)
        self.placement = placement
        self.staging_dir = staging_dir
        self.buffers = buffers or _new_buffer
        self.rules = IgnoreRules(project_dir if ignore else None)
        self.cap = Capture(".", CapturedDir(0o755))

    def file(self, path: Path, st: os.stat_result) -> CapturedFile:
        mode = stat.S_IMODE(st.st_mode)
        self.cap.stats.files += 1
        if self.statcache is not None:
            fid = self.statcache.get(os.fspath(path), st)
            if fid is not None and self.is_stored(fid):
                self.cap.stats.cached_files += 1
                return CapturedFile(path, mode, st, CACHED, file_id=fid)
        key = os.fspath(path)
        prev = self.recent.get(key) if self.recent is not None else None
        if (
            prev is not None
            and StatCache.key(prev.st) == StatCache.key(st)
            and (self.statcache is None or self.statcache.trusted(st, prev.read_start))
        ):
            self.cap.stats.cached_files += 1
            return CapturedFile(path, mode, st, SAME, same=prev)
        where = self.placement(st.st_size)
        start = now_ns()
        if where == MEMORY:
            buf, free = self.buffers(st.st_size)
            cf = CapturedFile(path, mode, st, MEMORY, read_start=start)

            def release(cf: CapturedFile = cf, free: Callable[[], None] = free) -> None:
                # no reference to a buffer given back may survive (``recent`` keeps ``cf``)
                cf.data = None
                free()

            self.cap._release.append(release)
            n = _read_into(path, buf)
            if n < st.st_size:  # shrank while we read: keep what we read
                buf = memoryview(buf)[:n]
            cf.data = buf
            self.cap.memory_bytes += n
            if self.recent is not None and n == st.st_size:
                self.recent[key] = cf
            return cf
        if where == STAGED:
            assert self.staging_dir is not None
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            dest = self.staging_dir / f"{len(os.listdir(self.staging_dir))}"
            shutil.copyfile(path, dest)
            self.cap.staged_bytes += st.st_size
            self.cap.staging_dir = self.staging_dir
            cf = CapturedFile(path, mode, st, STAGED, staged=dest, read_start=start)
            if self.recent is not None:
                self.recent[key] = cf
            return cf
        return CapturedFile(path, mode, st, LIVE)

    def node(self, path: Path, rel: str, st: os.stat_result) -> Node | None:
        if stat.S_ISLNK(st.st_mode):
            return CapturedLink(os.fsencode(os.readlink(path)))
        if stat.S_ISDIR(st.st_mode):
            return self.directory(path, rel, st)
        if stat.S_ISREG(st.st_mode):
            try:
                return self.file(path, st)
            except PermissionError:
                self.cap.stats.skipped.append(rel)
                return None
        self.cap.stats.skipped.append(rel)
        return None

    def directory(self, path: Path, rel: str, st: os.stat_result) -> CapturedDir:
        d = CapturedDir(stat.S_IMODE(st.st_mode))
        try:
            with os.scandir(path) as it:
                items = sorted(it, key=lambda e: e.name)
        except PermissionError:
            self.cap.stats.skipped.append(rel)
            return d
        for e in items:
            name = e.name
            child_rel = name if rel in ("", ".") else f"{rel}/{name}"
            try:
                cst = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            is_dir = stat.S_ISDIR(cst.st_mode)
            if is_dir and (name in ALWAYS_SKIP or is_virtualenv(Path(e.path))):
                continue
            if self.rules.ignored(child_rel, is_dir):
                continue
            try:
                codec.check_name(name)
            except ValueError:
                self.cap.stats.skipped.append(child_rel)
                continue
            n = self.node(Path(e.path), child_rel, cst)
            if n is not None:
                d.children[name] = n
        return d

    def capture(self, rel_path: str) -> Capture:
        rel = codec.check_relpath(rel_path)
        self.cap.rel = rel
        try:
            if rel == ".":
                self.cap.root = self.directory(self.root, "", os.stat(self.root))
                return self.cap
            parts = rel.split("/")
            target = self.root.joinpath(*parts)
            n = self.node(target, rel, os.lstat(target))
            if n is None:
                raise ValueError(f"{rel_path}: not a regular file, directory or symlink")
            parent = self.cap.root
            for i, p in enumerate(parts[:-1]):
                mode = stat.S_IMODE(os.stat(self.root.joinpath(*parts[: i + 1])).st_mode)
                parent = parent.children.setdefault(p, CapturedDir(mode))  # type: ignore[assignment]
            parent.children[parts[-1]] = n
            return self.cap
        except BaseException:
            self.cap.release()
            raise


def _new_buffer(n: int) -> tuple[Any, Callable[[], None]]:
    return bytearray(n), lambda: None


# Returns (a writable buffer of exactly n bytes, a function giving it back).
Buffers = Callable[[int], tuple[Any, Callable[[], None]]]


def _read_into(path: Path, buf: Any) -> int:
    mv = memoryview(buf).cast("B")
    n = 0
    with open(path, "rb", buffering=0) as f:
        while n < len(mv):
            r = f.readinto(mv[n:])
            if not r:
                break
            n += r
    return n


def capture(
    project_dir: Path,
    rel_path: str,
    statcache: StatCache | None = None,
    is_stored: Callable[[bytes], bool] | None = None,
    placement: Placement = _always_live,
    staging_dir: Path | None = None,
    buffers: Buffers | None = None,
    ignore: bool = True,
    recent: dict[str, CapturedFile] | None = None,
) -> Capture:
    """Capture ``rel_path`` of ``project_dir`` (see the module docstring). ``recent`` maps
    paths to this process's earlier captures, so a file unchanged since then is not read."""
    c = Capturer(project_dir, statcache, is_stored, placement, staging_dir, buffers, ignore,
                 recent)
    return c.capture(rel_path)


# --- building ---------------------------------------------------------------------------------


class Builder:
    """Turns captures into objects in one transaction."""

    def __init__(self, txn: Transaction, statcache: StatCache | None = None) -> None:
        self.txn = txn
        self.statcache = statcache

    def file(self, name: str, f: CapturedFile, stats: BuildStats) -> TreeEntry:
        if f.source == SAME:
            assert f.same is not None
            f.file_id = f.same.file_id
            if f.file_id is None or not self.txn.has(f.file_id):
                # the earlier capture was never stored: read the file if it is unchanged
                if StatCache.key(os.stat(f.path)) != StatCache.key(f.st):
                    raise FileNotFoundError(
                        f"{f.path} changed before its checkpoint could be saved"
                    )
                f.source = LIVE
        if f.source in (CACHED, SAME) and f.file_id is not None and self.txn.has(f.file_id):
            return TreeEntry(name, f.mode, KIND_FILE, f.file_id, f.st.st_size)
        if f.source == MEMORY:
            fobj = ingest_bytes(self.txn, f.data)
            start = f.read_start
        elif f.source == STAGED:
            assert f.staged is not None
            with open(f.staged, "rb") as fh:
                fobj = ingest_file(self.txn, fh)
            start = f.read_start
        else:  # LIVE (or a cached entry whose object vanished)
            start = now_ns()
            with open(f.path, "rb") as fh:
                fobj = ingest_file(self.txn, fh)
        fid = self.txn.put_object(fobj)
        f.file_id = fid
        f.data = None  # the bytes are stored; let the buffer go
        stats.bytes += fobj.size
        unchanged = f.source != LIVE or StatCache.key(os.stat(f.path)) == StatCache.key(f.st)
        if self.statcache is not None and fobj.size == f.st.st_size and unchanged:
            self.statcache.put(os.fspath(f.path), f.st, fid, start)
        return TreeEntry(name, f.mode, KIND_FILE, fid, fobj.size)

    def link(self, name: str, link: CapturedLink) -> TreeEntry:
        fobj = ingest_bytes(self.txn, link.target)
        cid = fobj.chunks[0].id if fobj.chunks else self.txn.put_chunk(b"")
        return TreeEntry(name, 0o777, KIND_LINK, cid, len(link.target))

    def tree(self, d: CapturedDir, stats: BuildStats) -> tuple[bytes, int]:
        entries: list[TreeEntry] = []
        for name, n in d.children.items():
            if isinstance(n, CapturedFile):
                entries.append(self.file(name, n, stats))
            elif isinstance(n, CapturedLink):
                entries.append(self.link(name, n))
            else:
                tid, size = self.tree(n, stats)
                entries.append(TreeEntry(name, n.mode, KIND_TREE, tid, size))
        return self.txn.put_object(make_tree(entries)), sum(e.size for e in entries)

    def build(self, cap: Capture) -> bytes:
        """Store a capture; returns the root tree ID."""
        tid, _ = self.tree(cap.root, cap.stats)
        return tid


def build(txn: Transaction, cap: Capture, statcache: StatCache | None = None) -> bytes:
    """Store a capture in ``txn``; returns the root tree ID (the capture is not released)."""
    return Builder(txn, statcache).build(cap)


def snapshot(
    txn: Transaction,
    project_dir: Path,
    rel_path: str,
    statcache: StatCache | None = None,
    ignore: bool = True,
) -> tuple[bytes, BuildStats]:
    """Store ``rel_path`` of ``project_dir`` now (reading files as it goes); returns the ID of
    a tree rooted at the project directory holding it at the same place, and stats."""
    cap = capture(project_dir, rel_path, statcache, txn.has, ignore=ignore)
    try:
        return build(txn, cap, statcache), cap.stats
    finally:
        cap.release()
