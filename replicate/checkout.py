"""Restore trees into a directory, safely.

Guarantees:
- nothing is written outside the target: every name is validated (no ``/``, ``..``, NUL,
  absolute), no existing symlink is ever written through (intermediate directories must be real
  directories), and files are replaced by rename, which replaces a link rather than following it;
- without ``force`` nothing is overwritten whose content differs from what would be written:
  the whole plan is checked first and, on any conflict, nothing at all is written;
- files whose content is already right are left alone.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from replicate.errors import CheckoutConflict, CorruptObjectError, DoesNotExist, UnsafePathError
from replicate.fsutil import tmp_name
from replicate.objects import chunker, codec
from replicate.objects.codec import KIND_FILE, KIND_LINK, KIND_TREE, File, Tree, TreeEntry
from replicate.objects.ids import hash_chunk
from replicate.objects.reader import file_chunk_refs, iter_content, read_file_object
from replicate.objects.store import ObjectStore


@dataclass
class CheckoutResult:
    """What a checkout did."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_written: int = 0


@dataclass(frozen=True)
class _Item:
    rel: str
    entry: TreeEntry


def read_tree(store: ObjectStore, tree_id: bytes) -> Tree:
    """Read and type-check a tree."""
    obj = store.read_object(tree_id)
    if not isinstance(obj, Tree):
        raise CorruptObjectError("expected a tree", tree_id.hex())
    return obj


def _safe_name(name: str, parent: str) -> str:
    try:
        return codec.check_name(name)
    except ValueError as e:
        where = f" under {parent!r}" if parent else ""
        raise UnsafePathError(f"refusing to check out entry {name!r}{where}: {e}") from None


def flatten(store: ObjectStore, tree_id: bytes, prefix: str = "") -> list[_Item]:
    """Every entry below a tree, depth first, parents before children."""
    out: list[_Item] = []
    for e in read_tree(store, tree_id).entries:
        _safe_name(e.name, prefix)
        rel = f"{prefix}/{e.name}" if prefix else e.name
        out.append(_Item(rel, e))
        if e.kind == KIND_TREE:
            out.extend(flatten(store, e.id, rel))
    return out


def find_entry(store: ObjectStore, tree_id: bytes, rel: str) -> TreeEntry | None:
    """The entry at project-relative ``rel`` inside a tree, or None."""
    parts = [p for p in codec.check_relpath(rel).split("/") if p not in ("", ".")]
    cur: TreeEntry | None = None
    tid = tree_id
    for i, p in enumerate(parts):
        cur = read_tree(store, tid).get(p)
        if cur is None:
            return None
        if i < len(parts) - 1:
            if cur.kind != KIND_TREE:
                return None
            tid = cur.id
    return cur


def select(store: ObjectStore, tree_id: bytes, subpath: str | None) -> list[_Item]:
    """Items of a tree, restricted to ``subpath`` (a file or directory) when given."""
    if subpath is None or codec.check_relpath(subpath) == ".":
        return flatten(store, tree_id)
    rel = codec.check_relpath(subpath)
    e = find_entry(store, tree_id, rel)
    if e is None:
        raise DoesNotExist(f"path {subpath!r} is not in this checkpoint or its experiment")
    parts = rel.split("/")
    items: list[_Item] = []
    # parent directories (as tree entries without content walk)
    for i in range(1, len(parts)):
        items.append(_Item("/".join(parts[:i]), TreeEntry(parts[i - 1], 0o755, KIND_TREE, b"", 0)))
    items.append(_Item(rel, e))
    if e.kind == KIND_TREE:
        items.extend(flatten(store, e.id, rel))
    return items


def file_matches(store: ObjectStore, path: Path, file: File) -> bool:
    """True if the file at ``path`` has exactly ``file``'s content (compared chunk by chunk)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != file.size:
        return False
    refs = file_chunk_refs(store, file)
    with open(path, "rb") as f:
        data = f.read() if file.size <= 64 * 1024 * 1024 else None
        if data is not None:
            got = [hash_chunk(c) for c in chunker.cut(data)]
            return got == [r.id for r in refs]
        from replicate.objects.ingest import file_chunks

        it = iter(refs)
        for c in file_chunks(f):
            r = next(it, None)
            if r is None or hash_chunk(c) != r.id:
                return False
        return next(it, None) is None


def _check_dirs(target: Path, rel: str) -> None:
    """Refuse if any existing parent of ``rel`` inside target is a symlink or not a directory."""
    parts = rel.split("/")[:-1]
    cur = target
    for p in parts:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(
                f"refusing to write {rel!r}: {cur} is a symbolic link and checkout never "
                "writes through links"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise CheckoutConflict([str(Path(*cur.relative_to(target).parts))])


def plan_conflicts(store: ObjectStore, items: list[_Item], target: Path) -> list[str]:
    """Paths that exist in ``target`` with content differing from what checkout would write."""
    conflicts: list[str] = []
    for it in items:
        try:
            _check_dirs(target, it.rel)
        except CheckoutConflict as c:  # a file where a parent directory goes
            conflicts.extend(x for x in c.paths if x not in conflicts)
            continue
        p = target / it.rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        e = it.entry
        if e.kind == KIND_TREE:
            if not stat.S_ISDIR(st.st_mode):
                conflicts.append(it.rel)
        elif e.kind == KIND_LINK:
            if not stat.S_ISLNK(st.st_mode) or os.fsencode(os.readlink(p)) != store.read_chunk(e.id):
                conflicts.append(it.rel)
        elif not file_matches(store, p, read_file_object(store, e.id)):
            conflicts.append(it.rel)
    return conflicts


def _write_file(store: ObjectStore, p: Path, e: TreeEntry) -> int:
    file = read_file_object(store, e.id)
    tmp = tmp_name(p)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            for data in iter_content(store, file):
                f.write(data)
            os.fchmod(f.fileno(), e.mode & 0o777)  # never setuid/setgid/sticky
        if os.path.isdir(p) and not os.path.islink(p):
            import shutil

            shutil.rmtree(p)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file.size


def _write_link(store: ObjectStore, p: Path, e: TreeEntry) -> None:
    target = store.read_chunk(e.id)
    tmp = tmp_name(p)
    os.symlink(target, tmp)
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            import shutil

            shutil.rmtree(p)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checkout_items(
    store: ObjectStore, items: list[_Item], target: Path, force: bool = False
) -> CheckoutResult:
    """Write ``items`` under ``target`` (created if missing). See the module docstring."""
    target.mkdir(parents=True, exist_ok=True)
    conflicts = plan_conflicts(store, items, target)
    if conflicts and not force:
        raise CheckoutConflict(conflicts)
    conflict_set = set(conflicts)
    res = CheckoutResult()
    for it in items:
        _check_dirs(target, it.rel)
        p = target / it.rel
        e = it.entry
        exists = os.path.lexists(p)
        if exists and it.rel not in conflict_set:
            if e.kind != KIND_TREE:
                res.unchanged.append(it.rel)
            continue
        if e.kind == KIND_TREE:
            if exists:  # force: a file or link where a directory goes
                os.unlink(p)
            os.mkdir(p)
            continue
        if e.kind == KIND_LINK:
            _write_link(store, p, e)
        elif e.kind == KIND_FILE:
            res.bytes_written += _write_file(store, p, e)
        res.written.append(it.rel)
    return res


def checkout_tree(
    store: ObjectStore,
    tree_id: bytes,
    target: Path,
    force: bool = False,
    subpath: str | None = None,
) -> CheckoutResult:
    """Restore a tree (or the part at ``subpath``) into ``target``."""
    return checkout_items(store, select(store, tree_id, subpath), target, force)
