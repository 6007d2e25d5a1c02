"""Snapshots of a project directory into trees, and checkout of trees back into a directory:
ignore rules, links, modes, exact bytes, conflicts, crafted trees and the stat cache."""

from __future__ import annotations

import os
import random
import stat
import time
from pathlib import Path

import pytest

from replicate.build import BuildStats, snapshot
from replicate.checkout import checkout_tree, find_entry, flatten
from replicate.errors import CheckoutConflict, DoesNotExist, UnsafePathError
from replicate.objects import codec, ingest, statcache
from replicate.objects.codec import KIND_FILE, KIND_LINK, KIND_TREE, Tree, TreeEntry
from replicate.objects.reader import iter_content, read_file_object
from replicate.objects.statcache import StatCache
from replicate.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository.init(tmp_path / "store" / ".replicate")
    yield r
    r.close()


def snap(
    repo: Repository, project: Path, rel: str = ".", cache: StatCache | None = None
) -> tuple[bytes, BuildStats]:
    with repo.objects.transaction() as txn:
        return snapshot(txn, project, rel, cache)


def paths(repo: Repository, tid: bytes) -> dict[str, TreeEntry]:
    return {it.rel: it.entry for it in flatten(repo.objects, tid)}


def content(repo: Repository, e: TreeEntry) -> bytes:
    return b"".join(iter_content(repo.objects, read_file_object(repo.objects, e.id)))


def tree_of(root: Path) -> dict[str, tuple[str, object]]:
    """What a directory holds: rel -> ("file", (bytes, mode)) / ("link", target) / ("dir", None)."""
    out: dict[str, tuple[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None)
            else:
                out[rel] = ("file", (p.read_bytes(), stat.S_IMODE(st.st_mode)))
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with nested directories, a multi-chunk binary, an empty file, a script,
    links, unicode names, and things that must never be stored."""
    p = tmp_path / "project"
    (p / "src" / "pkg").mkdir(parents=True)
    (p / "data").mkdir()
    (p / "src" / "pkg" / "__init__.py").write_text("")
    (p / "src" / "pkg" / "model.py").write_text("import torch\n" * 100)
    (p / "weights.bin").write_bytes(random.Random(1).randbytes(1_500_000))
    (p / "empty").write_bytes(b"")
    (p / "ünïcødé 名前.txt").write_text("hello\n")
    run = p / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    ro = p / "readonly.cfg"
    ro.write_text("x = 1\n")
    ro.chmod(0o444)
    (p / "data" / "train.csv").write_text("a,b\n1,2\n")
    os.symlink("weights.bin", p / "latest")  # relative link
    os.symlink("src/pkg", p / "pkglink")  # link to a directory: not followed
    os.symlink("/nonexistent/target", p / "dangling")
    # never stored:
    (p / ".replicate").mkdir()
    (p / ".replicate" / "junk").write_text("x")
    (p / ".git").mkdir()
    (p / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (p / "venv" / "lib").mkdir(parents=True)
    (p / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (p / "venv" / "lib" / "site.py").write_text("x")
    (p / "condaenv" / "conda-meta").mkdir(parents=True)
    (p / "condaenv" / "python").write_text("x")
    (p / "src" / "pkg" / "__pycache__").mkdir()
    (p / "src" / "pkg" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    return p


EXPECTED = {
    "src", "src/pkg", "src/pkg/__init__.py", "src/pkg/model.py", "data", "data/train.csv",
    "weights.bin", "empty", "ünïcødé 名前.txt", "run.sh", "readonly.cfg", "latest", "pkglink",
    "dangling",
}  # fmt: skip


def test_snapshot_contents(repo: Repository, project: Path) -> None:
    tid, stats = snap(repo, project)
    entries = paths(repo, tid)
    assert set(entries) == EXPECTED
    assert entries["weights.bin"].kind == KIND_FILE
    assert content(repo, entries["weights.bin"]) == (project / "weights.bin").read_bytes()
    assert entries["weights.bin"].size == 1_500_000
    assert content(repo, entries["empty"]) == b""
    assert entries["run.sh"].mode == 0o755
    assert entries["readonly.cfg"].mode == 0o444
    assert entries["src"].kind == KIND_TREE
    for name, target in [("latest", b"weights.bin"), ("pkglink", b"src/pkg"),
                         ("dangling", b"/nonexistent/target")]:  # fmt: skip
        e = entries[name]
        assert e.kind == KIND_LINK
        assert repo.objects.read_chunk(e.id) == target
        assert e.size == len(target)
    assert stats.files == 8
    assert stats.bytes == sum(
        (project / r).stat().st_size for r, e in entries.items() if e.kind == KIND_FILE
    )
    # Tree sizes add up.
    root = repo.objects.read_object(tid)
    assert isinstance(root, Tree)
    assert entries["src"].size == sum(
        entries[r].size for r in ("src/pkg/__init__.py", "src/pkg/model.py")
    )
    # Snapshots are content-addressed: the same project gives the same tree.
    assert snap(repo, project)[0] == tid


def test_replicateignore(repo: Repository, project: Path) -> None:
    (project / ".replicateignore").write_text(
        "# comment\n*.csv\n/weights.bin\nsrc/pkg/\n!keep.csv\nlogs/\n"
    )
    (project / "keep.csv").write_text("k\n")
    (project / "logs").mkdir()
    (project / "logs" / "x.txt").write_text("x")
    (project / "data" / "sub").mkdir()
    (project / "data" / "sub" / "weights.bin").write_text("not at the root: kept")
    tid, _ = snap(repo, project)
    got = set(paths(repo, tid))
    assert "data/train.csv" not in got and "keep.csv" in got
    assert "weights.bin" not in got and "data/sub/weights.bin" in got
    assert not any(p.startswith("src/pkg/") for p in got) and "src" in got
    assert "logs" not in got and "logs/x.txt" not in got
    assert ".replicateignore" in got
    # A path named explicitly is stored even when ignored.
    tid2, _ = snap(repo, project, "data/train.csv")
    assert set(paths(repo, tid2)) == {"data", "data/train.csv"}


def test_unsupported_entries_are_skipped(repo: Repository, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "ok.txt").write_text("ok")
    os.mkfifo(project / "fifo")
    bad = os.fsencode(project) + b"/not-utf8-\xff"
    with open(bad, "wb") as f:
        f.write(b"x")
    tid, stats = snap(repo, project)
    assert set(paths(repo, tid)) == {"ok.txt"}
    assert "fifo" in stats.skipped
    assert len(stats.skipped) == 2


def test_snapshot_of_a_subpath(repo: Repository, project: Path) -> None:
    tid, stats = snap(repo, project, "src/pkg/model.py")
    entries = paths(repo, tid)
    assert set(entries) == {"src", "src/pkg", "src/pkg/model.py"}
    assert content(repo, entries["src/pkg/model.py"]) == b"import torch\n" * 100
    assert stats.files == 1
    e = find_entry(repo.objects, tid, "src/pkg/model.py")
    assert e is not None and e.id == entries["src/pkg/model.py"].id
    assert find_entry(repo.objects, tid, "src/nope") is None
    with pytest.raises(ValueError):
        snap(repo, project, "../outside")


def test_checkout_reproduces_the_project(repo: Repository, project: Path, tmp_path: Path) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    res = checkout_tree(repo.objects, tid, out)
    want = {k: v for k, v in tree_of(project).items() if k in EXPECTED}
    assert tree_of(out) == want
    assert os.path.islink(out / "pkglink") and os.readlink(out / "pkglink") == "src/pkg"
    assert os.path.islink(out / "dangling")
    assert sorted(res.written) == sorted(k for k, (kind, _) in want.items() if kind != "dir")
    assert res.bytes_written == sum(len(v[0]) for kind, v in want.values() if kind == "file")
    # Checking out again changes nothing.
    again = checkout_tree(repo.objects, tid, out)
    assert again.written == [] and again.bytes_written == 0
    assert tree_of(out) == want


def test_checkout_of_a_subpath(repo: Repository, project: Path, tmp_path: Path) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    checkout_tree(repo.objects, tid, out, subpath="src/pkg")
    assert tree_of(out) == {
        "src": ("dir", None),
        "src/pkg": ("dir", None),
        "src/pkg/__init__.py": ("file", (b"", 0o644)),
        "src/pkg/model.py": ("file", (b"import torch\n" * 100, 0o644)),
    }
    with pytest.raises(DoesNotExist):
        checkout_tree(repo.objects, tid, tmp_path / "out2", subpath="nope")


def test_checkout_refuses_modified_files(repo: Repository, project: Path, tmp_path: Path) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    checkout_tree(repo.objects, tid, out)
    (out / "run.sh").write_text("#!/bin/sh\necho changed\n")  # modified, same path
    (out / "weights.bin").write_bytes(b"\0" * 1_500_000)  # same size, other bytes
    (out / "data" / "train.csv").unlink()  # would be written again
    (out / "latest").unlink()
    os.symlink("elsewhere", out / "latest")  # a link retargeted
    before = tree_of(out)
    with pytest.raises(CheckoutConflict) as ei:
        checkout_tree(repo.objects, tid, out)
    assert sorted(ei.value.paths) == ["latest", "run.sh", "weights.bin"]
    assert "run.sh" in str(ei.value)
    assert tree_of(out) == before  # nothing at all was written
    assert not (out / "data" / "train.csv").exists()
    res = checkout_tree(repo.objects, tid, out, force=True)
    assert sorted(res.written) == ["data/train.csv", "latest", "run.sh", "weights.bin"]
    want = {k: v for k, v in tree_of(project).items() if k in EXPECTED}
    assert tree_of(out) == want


def test_checkout_keeps_unrelated_files(repo: Repository, project: Path, tmp_path: Path) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    checkout_tree(repo.objects, tid, out)
    assert (out / "mine.txt").read_text() == "mine"


def test_checkout_type_conflicts(repo: Repository, project: Path, tmp_path: Path) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    (out / "weights.bin").mkdir(parents=True)  # a directory where a file goes
    (out / "weights.bin" / "x").write_text("x")
    before = tree_of(out)
    with pytest.raises(CheckoutConflict) as ei:
        checkout_tree(repo.objects, tid, out)
    assert ei.value.paths == ["weights.bin"]
    assert tree_of(out) == before
    checkout_tree(repo.objects, tid, out, force=True)
    assert (out / "weights.bin").read_bytes() == (project / "weights.bin").read_bytes()


def test_checkout_file_where_a_directory_goes(
    repo: Repository, project: Path, tmp_path: Path
) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    out.mkdir()
    (out / "src").write_text("a file where a directory goes")
    with pytest.raises(CheckoutConflict) as ei:
        checkout_tree(repo.objects, tid, out)
    assert "src" in ei.value.paths
    assert os.listdir(out) == ["src"] and (out / "src").read_text().startswith("a file")


def test_force_replaces_a_file_by_a_directory(
    repo: Repository, project: Path, tmp_path: Path
) -> None:
    """A file where the tree has a directory is a conflict; with force it is replaced."""
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    out.mkdir()
    (out / "src").write_text("a file where a directory goes")
    checkout_tree(repo.objects, tid, out, force=True)
    assert (out / "src" / "pkg" / "model.py").read_text() == "import torch\n" * 100


def test_conflict_lists_every_path(repo: Repository, project: Path, tmp_path: Path) -> None:
    tid, _ = snap(repo, project)
    out = tmp_path / "out"
    (out / "weights.bin").mkdir(parents=True)
    (out / "src").write_text("a file where a directory goes")
    with pytest.raises(CheckoutConflict) as ei:
        checkout_tree(repo.objects, tid, out)
    assert set(ei.value.paths) == {"src", "weights.bin"}


def test_force_replaces_a_link_instead_of_writing_through_it(
    repo: Repository, project: Path, tmp_path: Path
) -> None:
    tid, _ = snap(repo, project)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("do not touch")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(secret, out / "run.sh")  # where a file will be written
    with pytest.raises(CheckoutConflict):
        checkout_tree(repo.objects, tid, out)
    checkout_tree(repo.objects, tid, out, force=True)
    assert secret.read_text() == "do not touch"
    assert not os.path.islink(out / "run.sh")
    assert (out / "run.sh").read_text() == "#!/bin/sh\necho hi\n"


# --- crafted trees ------------------------------------------------------------------------------


def raw_tree(entries: list[TreeEntry]) -> Tree:
    """A tree built by hand, bypassing make_tree's validation (sorted as decode requires)."""
    return Tree(tuple(sorted(entries, key=lambda e: e.name.encode("utf-8"))))


def put_file(txn, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    return txn.put_object(ingest.ingest_bytes(txn, data))


BAD_NAMES = ["../x", "..", ".", "a/b", "/etc/x", "x\x00y", "", "..\\x"]


@pytest.mark.parametrize("kind", [KIND_FILE, KIND_TREE, KIND_LINK])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_crafted_names_are_refused(
    repo: Repository, tmp_path: Path, bad: str, kind: str, nested: bool
) -> None:
    base = tmp_path / "base"
    target = base / "deep" / "target"
    target.mkdir(parents=True)
    with repo.objects.transaction() as txn:
        fid = put_file(txn, b"payload")
        if kind == KIND_FILE:
            bad_entry = TreeEntry(bad, 0o644, KIND_FILE, fid, 7)
        elif kind == KIND_LINK:
            bad_entry = TreeEntry(bad, 0o777, KIND_LINK, txn.put_chunk(b"/tmp"), 4)
        else:
            inner = txn.put_object(codec.make_tree([TreeEntry("f", 0o644, KIND_FILE, fid, 7)]))
            bad_entry = TreeEntry(bad, 0o755, KIND_TREE, inner, 7)
        # Valid siblings that a streaming checkout would write before meeting the bad name.
        good = [TreeEntry(n, 0o644, KIND_FILE, fid, 7) for n in ("!first", "a.txt", "zzz")]
        if nested:
            sub = txn.put_object(raw_tree([bad_entry, *good]))
            root = raw_tree([*good, TreeEntry("sub", 0o755, KIND_TREE, sub, 14)])
        else:
            root = raw_tree([bad_entry, *good])
        tid = txn.put_object(root)
    before = tree_of(base)
    for force in (False, True):
        with pytest.raises(UnsafePathError):
            checkout_tree(repo.objects, tid, target, force=force)
    assert tree_of(base) == before  # nothing written inside or outside the target
    assert list(target.iterdir()) == []
    assert not (base / "deep" / "x").exists() and not (base / "x").exists()


def test_crafted_names_into_a_missing_target(repo: Repository, tmp_path: Path) -> None:
    with repo.objects.transaction() as txn:
        fid = put_file(txn, b"payload")
        tid = txn.put_object(raw_tree([TreeEntry("../escape", 0o644, KIND_FILE, fid, 7)]))
    target = tmp_path / "new"
    with pytest.raises(UnsafePathError):
        checkout_tree(repo.objects, tid, target)
    assert not target.exists()
    assert not (tmp_path / "escape").exists()


def test_existing_link_in_target_is_never_written_through(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "link")
    with repo.objects.transaction() as txn:
        fid = put_file(txn, b"evil")
        sub = txn.put_object(codec.make_tree([TreeEntry("file", 0o644, KIND_FILE, fid, 4)]))
        tid = txn.put_object(
            codec.make_tree(
                [
                    TreeEntry("a.txt", 0o644, KIND_FILE, fid, 4),
                    TreeEntry("link", 0o755, KIND_TREE, sub, 4),
                ]
            )
        )
    for force in (False, True):
        with pytest.raises(UnsafePathError):
            checkout_tree(repo.objects, tid, target, force=force)
    assert list(outside.iterdir()) == []
    assert sorted(os.listdir(target)) == ["link"]  # a.txt was not written either
    assert os.readlink(target / "link") == str(outside)


def test_link_restored_by_one_checkout_is_not_followed_by_the_next(
    repo: Repository, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with repo.objects.transaction() as txn:
        first = txn.put_object(
            codec.make_tree(
                [TreeEntry("d", 0o777, KIND_LINK, txn.put_chunk(os.fsencode(outside)), 1)]
            )
        )
        fid = put_file(txn, b"evil")
        sub = txn.put_object(codec.make_tree([TreeEntry("f", 0o644, KIND_FILE, fid, 4)]))
        second = txn.put_object(codec.make_tree([TreeEntry("d", 0o755, KIND_TREE, sub, 4)]))
    target = tmp_path / "target"
    checkout_tree(repo.objects, first, target)
    assert os.readlink(target / "d") == str(outside)  # restored as a link, pointing outside
    with pytest.raises(UnsafePathError):
        checkout_tree(repo.objects, second, target, force=True)
    assert list(outside.iterdir()) == []


# --- stat cache ---------------------------------------------------------------------------------


def age(path: Path, seconds: float = 100) -> None:
    """Move the file's mtime into the past, then wait (bounded) until its ctime, which utime
    just set to now, is older than the racy-clean margin too."""
    past = time.time() - seconds
    os.utime(path, (past, past))
    ctime = os.stat(path).st_ctime_ns
    margin = statcache.RACY_COARSE_NS if ctime % 10**9 == 0 else statcache.RACY_NS
    deadline = time.monotonic() + 5
    while time.time_ns() <= ctime + margin:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_stat_cache_skips_unchanged_files(repo: Repository, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    model = project / "model.bin"
    data = random.Random(2).randbytes(400_000)
    model.write_bytes(data)
    age(model)
    cache = repo.statcache
    tid1, s1 = snap(repo, project, cache=cache)
    assert (s1.files, s1.cached_files, s1.bytes) == (1, 0, len(data))
    tid2, s2 = snap(repo, project, cache=cache)
    assert (s2.files, s2.cached_files, s2.bytes) == (1, 1, 0)  # not re-read
    assert tid2 == tid1
    # Same size, new content, new mtime: re-read.
    new = random.Random(3).randbytes(400_000)
    model.write_bytes(new)
    os.utime(model, ns=(time.time_ns(), os.stat(model).st_mtime_ns + 10**9))
    tid3, s3 = snap(repo, project, cache=cache)
    assert (s3.cached_files, s3.bytes) == (0, len(new))
    assert tid3 != tid1
    out = tmp_path / "out"
    checkout_tree(repo.objects, tid3, out)
    assert (out / "model.bin").read_bytes() == new


def test_stat_cache_never_misses_a_quick_rewrite(repo: Repository, tmp_path: Path) -> None:
    """Files rewritten right after a snapshot (same size, same second) are re-read: whatever
    the file system's timestamp granularity, a "racily clean" stat is never trusted."""
    project = tmp_path / "p"
    project.mkdir()
    model = project / "model.bin"
    cache = repo.statcache
    for i in range(6):
        data = bytes([i]) * 100_000
        model.write_bytes(data)
        tid, _ = snap(repo, project, cache=cache)
        assert content(repo, paths(repo, tid)["model.bin"]) == data
        tid, _ = snap(repo, project, cache=cache)  # unchanged: cached or not, same content
        assert content(repo, paths(repo, tid)["model.bin"]) == data


def test_stat_cache_entry_for_a_vanished_object_is_ignored(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    model = project / "model.bin"
    model.write_bytes(b"y" * 100_000)
    age(model)
    shared = tmp_path / "stat.db"
    first = Repository.init(tmp_path / "one")
    snap(first, project, cache=StatCache(shared))
    # Another repository sharing the cache file does not hold that file object.
    second = Repository.init(tmp_path / "two")
    tid, stats = snap(second, project, cache=StatCache(shared))
    assert stats.cached_files == 0 and stats.bytes == 100_000
    assert content(second, paths(second, tid)["model.bin"]) == b"y" * 100_000
