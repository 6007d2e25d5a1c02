"""Local gc (replicate/gc.py, ``replicate gc``): what it frees and what it must never touch.

- ``rm`` of an experiment, then ``gc --grace 0``, frees its unique bytes; the other experiment
  still checks out byte-identical and fsck is clean (the 256 MiB version of this, locally and
  on S3, is in test_gc_remote.py);
- ``--dry-run`` changes nothing and reports the bytes a real run then frees;
- an unreferenced object younger than the grace period is kept;
- repacking a partly dead pack keeps its live objects readable;
- reflog expiry (and a reflog entry keeping an object alive until it expires);
- one gc at a time: a second one fails with a one-line LockError, exit 1;
- ``rm`` of a checkpoint (tombstone), then gc, frees its files' unique bytes while its metrics
  stay (``show`` works);
- the output says what was kept, removed and freed; a bad ``--grace`` is a usage error (2);
- crash leftovers (temp files of dead processes, unindexed packs) go; a running writer's don't;
- a repository that is already broken is reported and left alone;
- the mark's fast paths (ID lookups, msgpack walking) agree with the full decoder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import replicate
from replicate import gc as G
from replicate.errors import CorruptObjectError, LockError
from replicate.fsck import fsck
from replicate.fsutil import flocked
from replicate.objects import codec
from replicate.objects.store import PackWriter
from replicate.repository import Repository
from tests.cli.invoke import invoke, one_line_error
from tests.helpers.gc_common import (
    MiB,
    file_sha256,
    garbage_bytes,
    local_heads,
    packs_bytes,
    random_weights,
    record_experiment,
    sha256,
    tree_state,
    unique_stored_bytes,
)
from tests.helpers.sync_common import run_cli

HOUR = 3600 * 10**9


def repo_of(project: Path) -> Repository:
    return Repository.open(project / ".replicate")


def gc_json(*args: str, cwd: Path) -> dict:
    r = run_cli("gc", "--json", *args, cwd=cwd)
    assert r.code == 0, r
    return json.loads(r.stdout)


def assert_fsck_clean(project: Path) -> None:
    r = run_cli("fsck", cwd=project)
    assert r.code == 0, r
    rep = fsck(repo_of(project))
    assert rep.ok, rep.errors
    assert not [w for w in rep.warnings if "not indexed" in w], rep.warnings


@pytest.fixture
def two_experiments(tmp_path: Path) -> dict:
    """A project with two experiments, each one checkpoint of its own 4 MiB weights file."""
    project = tmp_path / "project"
    project.mkdir()
    a_data, b_data = random_weights(4 * MiB, 1), random_weights(4 * MiB, 2)
    a, a_cps = record_experiment(project, [{"a.bin": a_data}], {"name": "a"})
    b, b_cps = record_experiment(project, [{"b.bin": b_data}], {"name": "b"})
    return {"project": project, "a": a, "b": b, "a_cp": a_cps[0], "b_cp": b_cps[0],
            "a_sha": sha256(a_data), "b_sha": sha256(b_data)}


# --- rm then gc ---------------------------------------------------------------------------------


def test_rm_then_gc_frees_the_experiments_unique_bytes(two_experiments: dict) -> None:
    t = two_experiments
    project = t["project"]
    repo = repo_of(project)
    unique = unique_stored_bytes(repo.objects, local_heads(repo), bytes.fromhex(t["b"]))
    assert unique >= 0.8 * 4 * MiB  # float32 weights: bg4-zstd saves ~17%
    before = packs_bytes(project / ".replicate")
    assert run_cli("rm", "-f", t["b"], cwd=project).code == 0
    res = gc_json("--grace", "0", cwd=project)
    after = packs_bytes(project / ".replicate")
    assert before - after >= 0.95 * unique, (before, after, unique, res)
    assert res["bytes_freed"] == before - after
    assert res["errors"] == []
    out = project / "out"
    r = run_cli("checkout", t["a"], "-o", str(out), cwd=project)
    assert r.code == 0, r
    assert file_sha256(out / "a.bin") == t["a_sha"]
    assert_fsck_clean(project)
    # nothing left to do: a second run frees nothing
    again = gc_json("--grace", "0", cwd=project)
    assert again["bytes_freed"] == 0 and again["removed_objects"] == 0


def test_dry_run_changes_nothing_and_reports_what_a_real_run_frees(two_experiments: dict) -> None:
    t = two_experiments
    project = t["project"]
    root = project / ".replicate"
    assert run_cli("rm", "-f", t["b"], cwd=project).code == 0
    # also a crash leftover: an unindexed pack
    repo = repo_of(project)
    w = PackWriter(repo.objects)
    w.append(b"\x01" * 32, codec.CHUNK, b"x" * 1000, 1000, 0)
    w.seal()
    repo.close()
    state = tree_state(root)
    dry = gc_json("--grace", "0", "--dry-run", cwd=project)
    assert tree_state(root) == state, "a dry run changed the repository"
    assert dry["dry_run"] is True and dry["bytes_freed"] > 3.2 * MiB  # 4 MiB of fp32, -17%
    before = packs_bytes(root)
    real = gc_json("--grace", "0", cwd=project)
    assert real["bytes_freed"] == dry["bytes_freed"]
    assert before - packs_bytes(root) == real["bytes_freed"]
    for k in ("removed_objects", "removed_bytes", "packs_deleted", "packs_repacked",
              "live_objects", "live_bytes"):
        assert real[k] == dry[k], k
    assert_fsck_clean(project)


def test_young_unreferenced_objects_are_kept(repo_dir: Path) -> None:
    repo = Repository.init(repo_dir / ".replicate")
    with repo.objects.transaction() as txn:
        oid = txn.put_chunk(os.urandom(50_000))
    res = G.gc(repo, grace_ns=G.DEFAULT_GRACE_NS)
    assert res.kept_young_objects == 1 and res.removed_objects == 0 and res.bytes_freed == 0
    assert Repository.open(repo_dir / ".replicate").objects.read_chunk(oid)
    # an hour later it is still young; a day later it goes
    res = G.gc(repo, now_ns=time.time_ns() + HOUR)
    assert res.kept_young_objects == 1 and res.removed_objects == 0
    res = G.gc(repo, now_ns=time.time_ns() + 25 * HOUR)
    assert res.kept_young_objects == 0 and res.removed_objects == 1 and res.bytes_freed > 50_000
    assert not Repository.open(repo_dir / ".replicate").objects.has(oid)


def _build_checkpoint(txn, eid: bytes, files: dict[str, bytes], step: int = 0) -> bytes:
    entries = []
    for name, data in sorted(files.items()):
        cid = txn.put_chunk(data)
        fid = txn.put_object(codec.File(len(data), (codec.ChunkRef(cid, len(data)),)))
        entries.append(codec.TreeEntry(name, 0o644, codec.KIND_FILE, fid, len(data)))
    tid = txn.put_object(codec.make_tree(entries))
    return txn.put_object(codec.Checkpoint(experiment=eid, parent=None, created_ns=1, step=step,
                                           path=None, files=tid, metrics={"loss": 0.5}))


def _experiment(txn, n: int) -> bytes:
    return txn.put_object(codec.Experiment(
        created_ns=1, nonce=n.to_bytes(16, "little"), params={"n": n}, path=None, code=None,
        user="u", host="h", command="c", python_version="3", packages=(), git=None, system={},
        replicate_version="0"))


def test_repack_keeps_the_live_objects_of_a_partly_dead_pack_readable(repo_dir: Path) -> None:
    repo = Repository.init(repo_dir / ".replicate")
    live = {f"f{i}.bin": os.urandom(20_000 + i) for i in range(20)}  # 400 KB live
    dead = os.urandom(300_000)  # in the same data pack, referenced by nothing: 43% dead
    with repo.objects.transaction() as txn:
        eid = _experiment(txn, 1)
        cid = _build_checkpoint(txn, eid, live)
        dead_id = txn.put_chunk(dead)
    repo.refs.update(repo.experiment_ref(eid), cid, old=None, message="test")
    dry = G.gc(repo, grace_ns=0, dry_run=True)
    res = G.gc(repo, grace_ns=0)
    assert res.packs_repacked == 1 and res.packs_written == 1 and res.removed_objects == 1
    # the dry run's figure is exact up to a few bytes of the rewritten pack's footer
    assert abs(dry.bytes_freed - res.bytes_freed) <= 16, (dry.bytes_freed, res.bytes_freed)
    assert 290_000 <= res.bytes_freed <= 310_000  # the dead chunk, give or take footers
    fresh = Repository.open(repo_dir / ".replicate")
    assert not fresh.objects.has(dead_id)
    out = repo_dir / "out"
    replicate.Project(directory=repo_dir).checkpoints.get(cid.hex()).checkout(out)
    for name, data in live.items():
        assert (out / name).read_bytes() == data
    rep = fsck(fresh, read_data=True)
    assert rep.ok, rep.errors
    assert not rep.warnings, rep.warnings


def test_reflog_entries_keep_objects_until_they_expire(repo_dir: Path) -> None:
    repo = Repository.init(repo_dir / ".replicate")
    gone_data = os.urandom(200_000)
    with repo.objects.transaction() as txn:
        eid = _experiment(txn, 1)
        c1 = _build_checkpoint(txn, eid, {"w.bin": os.urandom(1000)}, step=1)
    with repo.objects.transaction() as txn:
        c2 = _build_checkpoint(txn, eid, {"w.bin": gone_data}, step=2)
    ref = repo.experiment_ref(eid)
    repo.refs.update(ref, eid, old=None, message="init")
    repo.refs.update(ref, c2, old=eid, message="checkpoint")
    repo.refs.update(ref, c1, old=c2, message="reset")  # c2 now only in the reflog
    assert len(repo.refs.reflog(ref)) == 3
    res = G.gc(repo, grace_ns=0)
    assert res.removed_objects == 0, "an unexpired reflog entry must keep its objects"
    later = time.time_ns() + G.REFLOG_EXPIRE_NS + HOUR
    dry = G.gc(repo, grace_ns=0, now_ns=later, dry_run=True)
    assert dry.reflog_entries_expired == 2 and len(repo.refs.reflog(ref)) == 3
    res = G.gc(repo, grace_ns=0, now_ns=later)
    assert res.reflog_entries_expired == 2
    assert [e.message for e in repo.refs.reflog(ref)] == ["reset"]  # the newest stays
    assert res.removed_objects == dry.removed_objects >= 4  # c2, its tree, file and chunk
    assert res.bytes_freed == dry.bytes_freed >= 200_000
    fresh = Repository.open(repo_dir / ".replicate")
    assert not fresh.objects.has(c2) and fresh.objects.has(c1)
    assert fsck(fresh).ok


def test_one_gc_at_a_time(two_experiments: dict) -> None:
    project = two_experiments["project"]
    root = project / ".replicate"
    with flocked(root / "gc.run", exclusive=True) as held:
        assert held
        with pytest.raises(LockError, match="another gc is running"):
            G.gc(repo_of(project), grace_ns=0)
        r = run_cli("gc", "--grace", "0", cwd=project)
        assert r.code == 1, r
        line = one_line_error(r)
        assert "another gc is running" in line, line
    assert run_cli("gc", "--grace", "0", cwd=project).code == 0


def test_gc_waits_for_a_commit_in_flight_then_sees_it(two_experiments: dict) -> None:
    """A writer holds the writers' lock (shared) while it commits: gc's sweep waits for it, and
    gives up with a LockError when the writer keeps it past the timeout."""
    project = two_experiments["project"]
    with G.writer_lock(repo_of(project)):
        with pytest.raises(LockError, match="writers kept it busy"):
            G.gc(repo_of(project), grace_ns=0, lock_timeout=0.2)
        # a dry run needs no lock
        assert G.gc(repo_of(project), grace_ns=0, dry_run=True).errors == []


def test_rm_of_a_checkpoint_frees_its_files_and_keeps_its_metrics(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    first, second = random_weights(4 * MiB, 11), random_weights(4 * MiB, 12)
    eid, (c0, c1) = record_experiment(project, [{"w.bin": first}, {"w.bin": second}],
                                      {"name": "x"})
    repo = repo_of(project)
    heads = list(local_heads(repo).values())
    # what the tombstone makes garbage: the checkpoint's files, unique to it
    unique = garbage_bytes(repo.objects, heads, heads,
                           tombstones_after=frozenset({bytes.fromhex(c0)}))
    assert unique >= 0.8 * 4 * MiB  # fp32: bg4-zstd saves ~17%
    before = packs_bytes(project / ".replicate")
    r = run_cli("rm", "-f", c0, cwd=project)
    assert r.code == 0, r
    res = gc_json("--grace", "0", cwd=project)
    assert before - packs_bytes(project / ".replicate") >= 0.95 * unique, res
    # the checkpoint, its metrics and the experiment stay
    r = run_cli("show", c0, cwd=project)
    assert r.code == 0, r
    assert "files removed" in r.stdout and "loss" in r.stdout, r.stdout
    shown = json.loads(run_cli("show", c0, "--json", cwd=project).stdout)
    assert shown, shown
    exp = replicate.Project(directory=project).experiments.get(eid)
    assert [c.id for c in exp.checkpoints] == [c0, c1]
    assert exp.checkpoints[0].metrics == {"loss": 1.0}
    assert exp.checkpoints[0].files_removed
    out = project / "out"
    assert run_cli("checkout", c1, "-o", str(out), cwd=project).code == 0
    assert (out / "w.bin").read_bytes() == second
    assert_fsck_clean(project)


def test_output_says_what_was_kept_removed_and_freed(two_experiments: dict) -> None:
    t = two_experiments
    project = t["project"]
    assert run_cli("rm", "-f", t["b"], cwd=project).code == 0
    dry = run_cli("gc", "--dry-run", "--grace", "0", cwd=project)
    assert dry.code == 0, dry
    assert "would remove" in dry.stdout and "would free" in dry.stdout, dry.stdout
    r = run_cli("gc", "--grace", "0", cwd=project)
    assert r.code == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].endswith(".replicate:"), lines
    assert lines[1].lstrip().startswith("kept") and "reachable objects" in lines[1], lines
    assert lines[2].lstrip().startswith("removed") and "packs deleted" in lines[2], lines
    assert lines[3].lstrip().startswith("freed") and "MiB" in lines[3], lines
    # the default grace period keeps what rm just unreferenced
    project2 = t["project"]
    r = run_cli("gc", cwd=project2)
    assert r.code == 0 and "freed 0 B" in r.stdout, r


@pytest.mark.parametrize("bad", ["abc", "-5m", "12x", "h", "nanh", "infh", "1.2.3d"])
def test_bad_grace_is_a_usage_error(two_experiments: dict, bad: str) -> None:
    r = invoke("-D", str(two_experiments["project"]), "gc", "--grace", bad)
    assert r.code == 2, r
    assert "--grace" in r.stderr and "Traceback" not in r.stderr, r


def test_parse_duration() -> None:
    s = 10**9
    assert G.parse_duration("0") == 0 == G.parse_duration("now")
    assert G.parse_duration("90") == 90 * s
    assert G.parse_duration("90s") == 90 * s
    assert G.parse_duration("30m") == 1800 * s
    assert G.parse_duration("1.5h") == 5400 * s
    assert G.parse_duration(" 24H ") == 86400 * s
    assert G.parse_duration("7d") == 7 * 86400 * s
    assert G.parse_duration("2w") == 14 * 86400 * s
    for bad in ("", "x", "-1h", "1e400h", "nand", "d", "5 minutes"):
        with pytest.raises(ValueError):
            G.parse_duration(bad)


def test_crash_leftovers_go_unless_their_writer_still_runs(two_experiments: dict) -> None:
    project = two_experiments["project"]
    repo = repo_of(project)
    tmp = repo.objects.tmp_dir
    dead_pid = 4_000_000  # above any pid in use here (checked)
    with pytest.raises(ProcessLookupError):
        os.kill(dead_pid, 0)
    (tmp / f"pack-{dead_pid}-abcdef.tmp").write_bytes(b"x" * 5000)
    (tmp / f"pack-{os.getpid()}-abcdef.tmp").write_bytes(b"y" * 7000)  # a running writer
    w = PackWriter(repo.objects)
    w.append(b"\x02" * 32, codec.CHUNK, b"z" * 3000, 3000, 0)
    orphan, _ = w.seal()  # sealed, never indexed: a writer killed before its index segment
    assert any("not indexed" in x for x in fsck(repo).warnings)
    res = G.gc(repo_of(project), grace_ns=0)
    assert res.tmp_files_removed == 1
    assert res.bytes_freed >= 5000 + 3000
    assert not (tmp / f"pack-{dead_pid}-abcdef.tmp").exists()
    assert (tmp / f"pack-{os.getpid()}-abcdef.tmp").exists()
    assert not repo.objects.pack_path(orphan).exists()
    (tmp / f"pack-{os.getpid()}-abcdef.tmp").unlink()
    assert_fsck_clean(project)


def test_a_broken_repository_is_reported_and_left_alone(two_experiments: dict) -> None:
    t = two_experiments
    project = t["project"]
    root = project / ".replicate"
    repo = repo_of(project)
    # lose a pack that a live experiment needs
    a = repo.refs.read(f"experiments/{t['a']}")
    assert a is not None
    tree = repo.objects.read_object(repo.objects.read_object(a).files)
    chunk = repo.objects.read_object(tree.entries[0].id).chunks[0].id
    repo.objects.pack_path(repo.objects.locate(chunk).pack).unlink()
    assert run_cli("rm", "-f", t["b"], cwd=project).code == 0
    state = tree_state(root)
    r = run_cli("gc", "--grace", "0", cwd=project)
    assert r.code == 1, r
    assert "reachable object missing" in r.stderr and "Traceback" not in r.stderr, r
    assert tree_state(root) == state


def test_a_running_writer_does_not_reuse_what_gc_removed(tmp_path: Path) -> None:
    """A training process keeps its index in memory. Another process rms an experiment and
    runs gc, which removes that experiment's chunks; if the training process then saves a file
    with the same bytes, it must store them again, not point at the removed chunks."""
    project = tmp_path / "project"
    project.mkdir()
    shared = random_weights(MiB, 5)
    proj = replicate.Project(directory=project)
    a = proj.experiments.create(params={"a": 1}, disable_heartbeat=True)
    (project / "a.bin").write_bytes(random_weights(MiB, 6))
    a.checkpoint(path="a.bin", wait=True)
    b = proj.experiments.create(params={"b": 1}, disable_heartbeat=True)
    (project / "b.bin").write_bytes(shared)
    b.checkpoint(path="b.bin", wait=True)
    # "another process": its own Repository objects
    assert run_cli("rm", "-f", b.id, cwd=project).code == 0
    assert run_cli("gc", "--grace", "0", cwd=project).code == 0
    (project / "c.bin").write_bytes(shared)
    cp = a.checkpoint(path="c.bin", wait=True)
    assert cp is not None
    rep = fsck(repo_of(project))
    assert rep.ok, rep.errors


def test_a_running_writer_survives_two_gcs_between_its_checkpoints(tmp_path: Path) -> None:
    """As above, with two gc runs (each compacting the index into a new segment that
    supersedes only the segment before it) between two checkpoints of the writer."""
    project = tmp_path / "project"
    project.mkdir()
    shared = random_weights(MiB, 15)
    proj = replicate.Project(directory=project)
    a = proj.experiments.create(params={"a": 1}, disable_heartbeat=True)
    (project / "a.bin").write_bytes(random_weights(MiB, 16))
    a.checkpoint(path="a.bin", wait=True)
    b = proj.experiments.create(params={"b": 1}, disable_heartbeat=True)
    (project / "b.bin").write_bytes(random_weights(MiB, 17))
    b.checkpoint(path="b.bin", wait=True)
    c = proj.experiments.create(params={"c": 1}, disable_heartbeat=True)
    (project / "c.bin").write_bytes(shared)
    c.checkpoint(path="c.bin", wait=True)
    for gone in (b, c):  # two gcs, each removing something (so each compacts)
        assert run_cli("rm", "-f", gone.id, cwd=project).code == 0
        assert run_cli("gc", "--grace", "0", cwd=project).code == 0
    (project / "d.bin").write_bytes(shared)
    cp = a.checkpoint(path="d.bin", wait=True)
    assert cp is not None
    rep = fsck(repo_of(project))
    assert rep.ok, rep.errors


# --- the mark's fast paths --------------------------------------------------------------------


def test_positions_with_shared_prefixes() -> None:
    rng = np.random.default_rng(0)
    base = [rng.bytes(32) for _ in range(2000)]
    # IDs sharing their first 8 bytes (and trailing NUL bytes, which NumPy strips on reading)
    same = [b"\x00" * 8 + rng.bytes(24) for _ in range(50)]
    same += [base[0][:8] + rng.bytes(24) for _ in range(50)]
    same += [rng.bytes(31) + b"\x00", rng.bytes(16) + b"\x00" * 16]
    ids = G.sorted_unique(np.array(base + same + base[:100], dtype="S32"))
    assert len(ids) == len(set(base + same))
    queries = base[::3] + same + [rng.bytes(32) for _ in range(500)] + [b"\x00" * 8 + b"\x01" * 24]
    pos = G.positions(ids, np.array(queries, dtype="S32"))
    known = {bytes(x).ljust(32, b"\0"): i for i, x in enumerate(ids)}
    for q, p in zip(queries, pos):
        if q in known:
            assert p == known[q] or bytes(ids[p]).ljust(32, b"\0") == q
        else:
            assert p == -1
    assert list(G._is_in(ids, np.array(queries, dtype="S32"))) == [q in known for q in queries]
    assert G.count_distinct_sorted(np.sort(np.array(base + base, dtype="S32"))) == len(base)


def test_children_agree_with_the_decoder() -> None:
    rng = np.random.default_rng(1)

    def rid() -> bytes:
        return rng.bytes(32)

    chunks = tuple(codec.ChunkRef(rid(), 10 + i) for i in range(5))
    segs = tuple(codec.SegmentRef(rid(), 100, 3) for _ in range(3))
    objs = [
        codec.File(sum(c.size for c in chunks), chunks),
        codec.File(300, (), segs),
        codec.Segment(chunks),
        codec.make_tree([codec.TreeEntry("a", 0o644, codec.KIND_FILE, rid(), 1),
                         codec.TreeEntry("b", 0o755, codec.KIND_TREE, rid(), 2),
                         codec.TreeEntry("c", 0o777, codec.KIND_LINK, rid(), 3)]),
        codec.Checkpoint(experiment=rid(), parent=rid(), created_ns=1, step=0, path="x",
                         files=rid(), metrics={"a": float("nan")}, primary_metric=("a", "minimize")),
        codec.Checkpoint(experiment=rid(), parent=None, created_ns=1, step=0, path=None,
                         files=None),
        codec.Experiment(created_ns=1, nonce=b"n" * 16, params={"p": [1, {"q": 2}]}, path=".",
                         code=rid(), user="u", host="h", command="c", python_version="3",
                         packages=(("numpy", "2"),), git={"commit": "a", "branch": "b",
                                                          "dirty": True},
                         system={"os": "x"}, replicate_version="0"),
    ]
    for obj in objs:
        raw = codec.encode(obj)
        oid = codec.object_id(obj)
        typ = codec.type_code(obj)
        subs, chs = G.children(oid, typ, raw, set())
        if isinstance(obj, codec.File):
            assert chs == [c.id for c in obj.chunks] and subs == [s.id for s in obj.segments]
        elif isinstance(obj, codec.Segment):
            assert chs == [c.id for c in obj.chunks] and subs == []
        elif isinstance(obj, codec.Tree):
            assert chs == [e.id for e in obj.entries if e.kind == codec.KIND_LINK]
            assert subs == [e.id for e in obj.entries if e.kind != codec.KIND_LINK]
        elif isinstance(obj, codec.Checkpoint):
            want = [obj.experiment] + [x for x in (obj.parent, obj.files) if x is not None]
            assert subs == want and chs == []
            # a tombstone drops the files tree
            subs2, _ = G.children(oid, typ, raw, {oid})
            assert subs2 == [x for x in want if x != obj.files]
        else:
            assert subs == [obj.code] and chs == []
    # a malformed object is a CorruptObjectError (through the full decoder), never a crash
    bad = codec._pack(["file", 1, 10, [[b"short", 10]], []])
    with pytest.raises(CorruptObjectError):
        G.children(b"\0" * 32, codec.FILE, bad, set())
    # an object whose index type differs from its content
    raw = codec.encode(objs[2])
    with pytest.raises(CorruptObjectError):
        G.children(b"\0" * 32, codec.FILE, raw, set())
