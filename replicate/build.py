"""Snapshot files and directories of a project into trees (the only workspace reader).

Rules: ``.replicateignore`` (gitignore syntax) at the project root applies inside directories;
``.replicate/``, ``.git/`` and virtual environments (directories holding ``pyvenv.cfg`` or
``conda-meta/``) are always skipped; symlinks are stored as links (never followed); file
permission bits are kept; other file types (sockets, FIFOs, devices) are skipped. A path named
explicitly is stored even if an ignore rule matches it.
"""

from __future__ import annotations

import os
import stat
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


@dataclass
class BuildStats:
    """What a snapshot read and wrote."""

    files: int = 0
    bytes: int = 0
    cached_files: int = 0
    skipped: list[str] = field(default_factory=list)


class IgnoreRules:
    """``.replicateignore`` of a project root (gitignore semantics, via pathspec)."""

    def __init__(self, root: Path) -> None:
        self.spec: Any = None
        p = root / IGNORE_FILE
        if p.is_file():
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


class Builder:
    """Builds trees for one transaction."""

    def __init__(
        self,
        txn: Transaction,
        project_dir: Path,
        statcache: StatCache | None = None,
        ignore: bool = True,
    ) -> None:
        self.txn = txn
        self.root = project_dir
        self.statcache = statcache
        self.rules = IgnoreRules(project_dir) if ignore else IgnoreRules(Path("/nonexistent"))
        self.stats = BuildStats()

    # -- entries ------------------------------------------------------------------------------

    def file_entry(self, path: Path, name: str, st: os.stat_result) -> TreeEntry:
        """Store a regular file (a stat-cache hit costs no read)."""
        key = os.fspath(path)
        fid = self.statcache.get(key, st) if self.statcache else None
        self.stats.files += 1
        if fid is not None and self.txn.has(fid):
            self.stats.cached_files += 1
            size = st.st_size
        else:
            start = now_ns()
            with open(path, "rb") as f:
                fobj = ingest_file(self.txn, f)
            fid = self.txn.put_object(fobj)
            size = fobj.size
            self.stats.bytes += size
            if self.statcache is not None and StatCache.key(os.stat(path)) == StatCache.key(st):
                self.statcache.put(key, st, fid, start)
        return TreeEntry(name, stat.S_IMODE(st.st_mode), KIND_FILE, fid, size)

    def link_entry(self, path: Path, name: str) -> TreeEntry:
        """Store a symlink as a link (its target bytes in one chunk)."""
        target = os.fsencode(os.readlink(path))
        fobj = ingest_bytes(self.txn, target)
        cid = fobj.chunks[0].id if fobj.chunks else self.txn.put_chunk(b"")
        return TreeEntry(name, 0o777, KIND_LINK, cid, len(target))

    def dir_entry(self, path: Path, rel: str, name: str, st: os.stat_result) -> TreeEntry:
        """Store a directory recursively."""
        tid, size = self.tree(path, rel)
        return TreeEntry(name, stat.S_IMODE(st.st_mode), KIND_TREE, tid, size)

    def entry(self, path: Path, rel: str, name: str, st: os.stat_result | None = None) -> TreeEntry | None:
        """Store whatever ``path`` is; None for unsupported types."""
        st = st or os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return self.link_entry(path, name)
        if stat.S_ISDIR(st.st_mode):
            return self.dir_entry(path, rel, name, st)
        if stat.S_ISREG(st.st_mode):
            return self.file_entry(path, name, st)
        self.stats.skipped.append(rel)
        return None

    def tree(self, path: Path, rel: str) -> tuple[bytes, int]:
        """Store directory ``path`` (project-relative ``rel``); returns (tree id, total size)."""
        entries: list[TreeEntry] = []
        with os.scandir(path) as it:
            items = sorted(it, key=lambda d: d.name)
        for d in items:
            name = d.name
            child_rel = name if rel in ("", ".") else f"{rel}/{name}"
            try:
                st = d.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and (name in ALWAYS_SKIP or is_virtualenv(Path(d.path))):
                continue
            if self.rules.ignored(child_rel, is_dir):
                continue
            try:
                codec.check_name(name)
            except ValueError:
                self.stats.skipped.append(child_rel)
                continue
            e = self.entry(Path(d.path), child_rel, name, st)
            if e is not None:
                entries.append(e)
        tree = make_tree(entries)
        return self.txn.put_object(tree), sum(e.size for e in entries)

    # -- roots --------------------------------------------------------------------------------

    def snapshot(self, rel_path: str) -> bytes:
        """Store ``rel_path`` (project-relative; "." for everything) and return the ID of a tree
        rooted at the project directory that holds it at the same place."""
        rel = codec.check_relpath(rel_path)
        if rel == ".":
            tid, _ = self.tree(self.root, "")
            return tid
        parts = rel.split("/")
        target = self.root.joinpath(*parts)
        st = os.lstat(target)
        e = self.entry(target, rel, parts[-1], st)
        if e is None:
            raise ValueError(f"{rel_path}: not a regular file, directory or symlink")
        for i in range(len(parts) - 1, 0, -1):
            tree = make_tree([e])
            tid = self.txn.put_object(tree)
            parent = self.root.joinpath(*parts[:i])
            mode = stat.S_IMODE(os.stat(parent).st_mode)
            e = TreeEntry(parts[i - 1], mode, KIND_TREE, tid, e.size)
        return self.txn.put_object(make_tree([e]))


def snapshot(
    txn: Transaction,
    project_dir: Path,
    rel_path: str,
    statcache: StatCache | None = None,
    ignore: bool = True,
) -> tuple[bytes, BuildStats]:
    """Store ``rel_path`` of ``project_dir``; returns (root tree id, stats)."""
    b = Builder(txn, project_dir, statcache, ignore)
    return b.snapshot(rel_path), b.stats
