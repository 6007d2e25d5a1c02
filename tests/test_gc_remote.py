"""gc on a remote (replicate/remote_gc.py, ``replicate gc -R URL``) against moto S3.

- acceptance: two experiments with distinct 256 MiB weights (real ``replicate.init`` /
  ``checkpoint`` runs in subprocesses), pushed; ``rm`` one, push (the deletion propagates),
  ``gc --grace 0`` locally and ``gc --grace 0 -R s3://...`` each free >= 95% of its unique
  bytes (the bucket measured by listing); the other still checks out byte-identical locally
  and with ``checkout -R``; ``fsck`` and ``fsck -R`` are clean;
- the protocol, step by step (deterministic interleavings, a push paused at its commit point
  or at its upload, in a thread): a running push session holds back the sweep of a set
  written while it ran; a push never relies on a condemned copy (it uploads a new one, which
  the sweep of the old copy's set leaves alone); commit-time validation; the re-mark after a
  sweep's session check;
- one gc at a time (the lease), dry run, grace period, leftover sets of killed gcs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import replicate
from replicate import remote_gc, sync
from replicate.errors import LockError
from replicate.fsck import fsck
from replicate.remote_gc import CONDEMNED, LEASES, PushSession
from replicate.remote_repo import pack_key
from replicate.remove import remove, resolve_targets
from replicate.repository import Repository
from tests.cli.invoke import one_line_error
from tests.helpers.gc_common import (
    MiB,
    bucket_bytes,
    bucket_listing,
    file_sha256,
    local_heads,
    packs_bytes,
    random_weights,
    record_experiment,
    remote_repo,
    sha256,
    unique_stored_bytes,
)
from tests.helpers.sync_common import HELPERS, cli_env, remote_problems, run_cli

pytestmark = pytest.mark.s3


def remote_heads_of(rrepo) -> dict[bytes, bytes]:
    return {e: h for e, (_s, h) in rrepo.refs.heads(refresh=True).items() if h is not None}


def gc_remote(url: str, cache: Path, **kw) -> remote_gc.GcResult:
    rr = remote_repo(url, cache)
    try:
        return remote_gc.gc(rr, **kw)
    finally:
        rr.close()


def assert_remote_clean(url: str, cwd: Path, env: dict[str, str], cache: Path) -> None:
    r = run_cli("fsck", "-R", url, cwd=cwd, env=env, timeout=300)
    assert r.code == 0, r
    assert remote_problems(url, cache) == []


def push(project: Path, url: str) -> sync.TransferResult:
    repo = Repository.open(project / ".replicate")
    rr = sync.open_remote_repo(repo, url)
    try:
        return sync.push(repo, rr)
    finally:
        rr.close()
        repo.close()


def rm(project: Path, *ids: str) -> None:
    repo = Repository.open(project / ".replicate")
    remove(repo, resolve_targets(repo, list(ids)))
    repo.close()


# --- acceptance: 256 MiB, locally and on S3 ---------------------------------------------------


@pytest.mark.slow
def test_rm_then_gc_frees_unique_bytes_locally_and_on_s3(s3_url: str, tmp_path: Path) -> None:
    url = s3_url + "/team/gc"
    project = tmp_path / "project"
    project.mkdir()
    env = cli_env(tmp_path / "cache")
    runs = []
    for seed in (1, 2):
        p = subprocess.run([sys.executable, str(HELPERS / "gc_train.py"), "--size-mib", "256",
                            "--seed", str(seed)], cwd=project, env=env, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    keep, drop = runs
    (project / "weights.bin").unlink()
    r = run_cli("push", url, cwd=project, env=env, timeout=600)
    assert r.code == 0, r

    local = Repository.open(project / ".replicate")
    local_unique = unique_stored_bytes(local.objects, local_heads(local),
                                       bytes.fromhex(drop["experiment"]))
    local.close()
    rr = remote_repo(url, tmp_path / "measure")
    rr.objects.refresh()
    remote_unique = unique_stored_bytes(rr.objects, remote_heads_of(rr),
                                        bytes.fromhex(drop["experiment"]))
    rr.close()
    assert min(local_unique, remote_unique) >= 0.8 * 256 * MiB, (local_unique, remote_unique)

    assert run_cli("rm", "-f", drop["experiment"], cwd=project, env=env).code == 0
    r = run_cli("push", url, cwd=project, env=env, timeout=300)  # propagates the deletion
    assert r.code == 0, r

    before = packs_bytes(project / ".replicate")
    r = run_cli("gc", "--grace", "0", cwd=project, env=env, timeout=300)
    assert r.code == 0, r
    freed_local = before - packs_bytes(project / ".replicate")
    assert freed_local >= 0.95 * local_unique, (freed_local, local_unique, r.stdout)

    before = bucket_bytes(url)
    r = run_cli("gc", "--grace", "0", "-R", url, "--json", cwd=project, env=env, timeout=300)
    assert r.code == 0, r
    res = json.loads(r.stdout)
    freed_remote = before - bucket_bytes(url)
    assert freed_remote >= 0.95 * remote_unique, (freed_remote, remote_unique, res)
    assert res["bytes_freed"] == freed_remote
    print("gc acceptance:", json.dumps({
        "local_unique": local_unique, "local_freed": freed_local,
        "remote_unique": remote_unique, "remote_freed": freed_remote,
        "local_freed_share": round(freed_local / local_unique, 4),
        "remote_freed_share": round(freed_remote / remote_unique, 4)}))
    assert bucket_listing(url).keys().isdisjoint(
        k for k in bucket_listing(url) if k.startswith(CONDEMNED))  # its set was swept

    out = tmp_path / "out-local"
    r = run_cli("checkout", keep["checkpoint"], "-o", str(out), cwd=project, env=env, timeout=300)
    assert r.code == 0, r
    assert file_sha256(out / "weights.bin") == keep["sha256"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env2 = cli_env(tmp_path / "cache2")
    r = run_cli("checkout", "-R", url, keep["checkpoint"], "-o", str(elsewhere / "out"),
                cwd=elsewhere, env=env2, timeout=300)
    assert r.code == 0, r
    assert file_sha256(elsewhere / "out" / "weights.bin") == keep["sha256"]
    r = run_cli("checkout", "-R", url, drop["checkpoint"], "-o", str(elsewhere / "gone"),
                cwd=elsewhere, env=env2)
    assert r.code != 0 and "Traceback" not in r.stderr, r

    r = run_cli("fsck", cwd=project, env=env, timeout=300)
    assert r.code == 0, r
    assert_remote_clean(url, elsewhere, env2, tmp_path / "check")


# --- the protocol, step by step ------------------------------------------------------------------


@pytest.fixture
def gone_experiment(s3_url: str, tmp_path: Path) -> dict:
    """A project whose experiment A (2 MiB of weights in w.bin) was pushed, then rm'd and the
    deletion pushed: A's objects are garbage on the remote, still present locally."""
    url = s3_url + "/gc"
    project = tmp_path / "project"
    project.mkdir()
    data = random_weights(2 * MiB, 7)
    a, a_cps = record_experiment(project, [{"w.bin": data}], {"name": "a"})
    keep, keep_cps = record_experiment(project, [{"k.bin": random_weights(MiB, 8)}],
                                       {"name": "keep"})
    push(project, url)
    rm(project, a)
    res = push(project, url)
    assert res.experiments == [] and not res.skipped
    return {"url": url, "project": project, "data": data, "a": a, "keep": keep,
            "keep_cp": keep_cps[0], "cache": tmp_path / "gc-cache"}


def copies(url: str, cache: Path, oid: bytes) -> list[bytes]:
    """The packs holding ``oid`` according to the remote's index."""
    rr = remote_repo(url, cache)
    rr.objects.refresh()
    recs = rr.objects.index.all_records()
    packs = rr.objects.index.packs
    out = [packs[int(r["pack"])] for r in recs if bytes(r["id"]).ljust(32, b"\0") == oid]
    rr.close()
    return out


def chunk_of(project: Path, cid: str) -> bytes:
    repo = Repository.open(project / ".replicate")
    cp = repo.objects.read_object(bytes.fromhex(cid))
    tree = repo.objects.read_object(cp.files)
    f = repo.objects.read_object(tree.entries[0].id)
    repo.close()
    return f.chunks[0].id


class Paused:
    """Pause the first call of ``obj.name`` until released (a push at one of its steps)."""

    def __init__(self, obj, name: str) -> None:
        self.obj, self.name = obj, name
        self.real = getattr(obj, name)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        setattr(obj, name, self._call)

    def _call(self, *a, **kw):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(120), "never released"
        return self.real(*a, **kw)


def run_in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fn(*args)
        except BaseException as e:  # reported by the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_a_running_push_holds_back_the_sweep_and_a_new_copy_survives_it(gone_experiment: dict
                                                                         ) -> None:
    """The interleaving that loses data if condemnation named objects rather than copies:

    1. gc condemns A's objects while a push session runs: the set waits for that session;
    2. B (same bytes as A) is pushed: its push sees the set, so it uploads new copies of the
       condemned objects into a new pack; it pauses just before moving its ref;
    3. gc now sweeps the set (the session it waited for has ended; B's push started after the
       set was written, so it saw it): A's old copies go, B's new copies must stay although
       nothing references them yet;
    4. B's push moves its ref; a later gc (B's session over, objects reachable) keeps them."""
    g = gone_experiment
    url, project, cache = g["url"], g["project"], g["cache"]
    chunk = chunk_of(project, checkpoint_of(project, g["a"]))
    old_packs = copies(url, cache, chunk)
    assert len(old_packs) == 1
    # 1. a push session is running while gc condemns
    holder = remote_repo(url, cache / "holder")
    with PushSession(holder):
        res = gc_remote(url, cache, grace_ns=0)
        assert res.condemned_objects >= 4 and res.waiting_sets == 1, res
        assert res.removed_objects == 0 and res.bytes_freed == 0
    holder.close()
    # 2. B with the same bytes, pushed in a thread that pauses before moving its ref
    b, b_cps = record_experiment(project, [{"w.bin": g["data"]}], {"name": "b"})
    assert chunk_of(project, b_cps[0]) == chunk
    repo = Repository.open(project / ".replicate")
    rr = sync.open_remote_repo(repo, url)
    pause = Paused(rr.refs, "advance")
    t, out = run_in_thread(sync.push, repo, rr)
    assert pause.entered.wait(120), out
    new_packs = [p for p in copies(url, cache, chunk) if p not in old_packs]
    assert len(new_packs) == 1, "the push must upload a new copy of a condemned object"
    # 3. gc sweeps the old set: A's copies go, B's new (still unreferenced) copy stays
    res = gc_remote(url, cache, grace_ns=0)
    assert res.errors == [] and res.removed_objects >= 4 and res.bytes_freed >= 1.6 * MiB, res
    assert res.waiting_sets == 1, res  # B's copies, condemned now, wait for B's push
    assert copies(url, cache, chunk) == new_packs
    # 4. B's push commits; gc after it keeps B
    pause.release.set()
    t.join(120)
    assert "error" not in out, out
    assert out["result"].experiments == [b], out
    rr.close()
    repo.close()
    res = gc_remote(url, cache, grace_ns=0)
    assert res.errors == [] and res.waiting_sets == 0 and res.removed_objects == 0, res
    assert copies(url, cache, chunk) == new_packs
    reader = replicate.Project(directory=project, repository=url)
    with reader.checkpoints.get(b_cps[0]).open("w.bin") as f:
        assert sha256(f.read()) == sha256(g["data"])
    assert remote_problems(url, cache / "check") == []
    assert fsck(remote_repo(url, cache / "fsck")).ok


def checkpoint_of(project: Path, experiment: str) -> str:
    """The (only) checkpoint of a deleted experiment, found among the local objects."""
    from replicate.objects import codec

    repo = Repository.open(project / ".replicate")
    try:
        for r in repo.objects.index.all_records():
            if int(r["type"]) == codec.CHECKPOINT:
                oid = bytes(r["id"]).ljust(32, b"\0")
                if repo.objects.read_object(oid).experiment.hex() == experiment:
                    return oid.hex()
    finally:
        repo.close()
    raise AssertionError("checkpoint not found")


def _push_paused_while_gc_condemns(g: dict) -> tuple[str, list[str], bytes, int]:
    """B (reusing A's condemned-to-be objects unchanged) is pushed in a thread, paused at its
    first upload; gc condemns A's objects meanwhile (it cannot sweep them: B's session is in
    the set); then B's push resumes and commits. Returns (B, B's checkpoints, A's chunk, the
    number of copies of that chunk right after B's push)."""
    url, project, cache = g["url"], g["project"], g["cache"]
    chunk_a = chunk_of(project, checkpoint_of(project, g["a"]))
    b, b_cps = record_experiment(project, [{"w.bin": g["data"]}], {"name": "b"})
    repo = Repository.open(project / ".replicate")
    rr = sync.open_remote_repo(repo, url)
    pause = Paused(rr.remote, "put_file")
    t, out = run_in_thread(sync.push, repo, rr)
    assert pause.entered.wait(120), out
    assert len(copies(url, cache, chunk_a)) == 1
    res = gc_remote(url, cache, grace_ns=0)
    assert res.condemned_objects >= 4 and res.waiting_sets == 1 and res.removed_objects == 0, res
    pause.release.set()
    t.join(120)
    assert "error" not in out, out
    assert out["result"].experiments == [b]
    rr.close()
    repo.close()
    return b, b_cps, chunk_a, len(copies(url, cache, chunk_a))


def test_a_push_that_reused_what_gc_condemned_meanwhile_stays_intact(gone_experiment: dict
                                                                     ) -> None:
    """The set written while B's push ran names B's session, so it is swept only after B's
    push ended, with a fresh mark that sees B's ref: nothing B needs goes."""
    g = gone_experiment
    url, project, cache = g["url"], g["project"], g["cache"]
    b, b_cps, chunk_a, _n = _push_paused_while_gc_condemns(g)
    res = gc_remote(url, cache, grace_ns=0)
    assert res.errors == [] and res.waiting_sets == 0, res
    assert copies(url, cache, chunk_a)
    reader = replicate.Project(directory=project, repository=url)
    with reader.checkpoints.get(b_cps[0]).open("w.bin") as f:
        assert f.read() == g["data"]
    assert remote_problems(url, cache / "check") == []


def test_commit_time_validation_reuploads_what_was_condemned_meanwhile(gone_experiment: dict
                                                                       ) -> None:
    """When B validates at its commit point it sees the new set and uploads its own copies of
    what it reused (the defence that does not depend on B's session staying fresh)."""
    _b, _cps, _chunk, n = _push_paused_while_gc_condemns(gone_experiment)
    assert n == 2, "validation must upload a copy of its own"


def test_a_push_that_ends_between_condemn_and_sweep_is_seen(gone_experiment: dict,
                                                            monkeypatch) -> None:
    """With --grace 0 and no push running, one run condemns and sweeps. A push that moves a
    ref to condemned objects after gc marked, and ends before gc lists the sessions, must be
    seen by a second mark before anything goes."""
    g = gone_experiment
    url, project, cache = g["url"], g["project"], g["cache"]
    b, b_cps = record_experiment(project, [{"w.bin": g["data"]}], {"name": "b"})
    # B's objects reuse A's (present on the remote, not condemned yet): push B's refs only
    # after gc's mark, with no session alive when gc lists them.
    repo = Repository.open(project / ".replicate")
    rr_push = sync.open_remote_repo(repo, url)
    real_live = remote_gc.live_sessions
    pushed: dict = {}

    def live_sessions_after_a_push(*a, **kw):
        if not pushed:  # the first listing after the condemned set was written
            pushed["res"] = sync.push(repo, rr_push)
        return real_live(*a, **kw)

    rr = remote_repo(url, cache)
    real_put = rr.remote.put

    def put(key, data, create_only=False):
        real_put(key, data, create_only=create_only)
        if key.startswith(CONDEMNED) and key.endswith(".set"):
            monkeypatch.setattr(remote_gc, "live_sessions", live_sessions_after_a_push)

    rr.remote.put = put
    res = remote_gc.gc(rr, grace_ns=0)
    rr.close()
    assert pushed["res"].experiments == [b]
    assert res.errors == [], res
    monkeypatch.setattr(remote_gc, "live_sessions", real_live)
    rr_push.close()
    repo.close()
    assert remote_problems(url, cache / "check") == []
    reader = replicate.Project(directory=project, repository=url)
    with reader.checkpoints.get(b_cps[0]).open("w.bin") as f:
        assert f.read() == g["data"]


def test_dry_run_changes_nothing_and_reports_what_a_real_run_frees(gone_experiment: dict
                                                                    ) -> None:
    g = gone_experiment
    url, cache = g["url"], g["cache"]
    listing = bucket_listing(url)
    dry = gc_remote(url, cache, grace_ns=0, dry_run=True)
    assert bucket_listing(url) == listing
    assert dry.removed_objects >= 4 and dry.bytes_freed >= 1.6 * MiB, dry
    before = bucket_bytes(url)
    res = gc_remote(url, cache, grace_ns=0)
    assert res.bytes_freed == dry.bytes_freed == before - bucket_bytes(url), (dry, res)
    assert res.removed_objects == dry.removed_objects
    assert remote_problems(url, cache / "check") == []


def test_the_grace_period_keeps_fresh_garbage(gone_experiment: dict) -> None:
    g = gone_experiment
    res = gc_remote(g["url"], g["cache"])  # default: 24 h
    assert res.kept_young_objects >= 4 and res.condemned_objects == 0, res
    assert res.bytes_freed == 0
    assert not [k for k in bucket_listing(g["url"]) if k.startswith(CONDEMNED)]


def test_one_gc_at_a_time(gone_experiment: dict, tmp_path: Path) -> None:
    g = gone_experiment
    url = g["url"]
    rr = remote_repo(url, g["cache"])
    mine = f"{LEASES}{time.time_ns():020d}-someoneelse"
    rr.remote.put(mine, b"gc")
    with pytest.raises(LockError, match="another gc is running"):
        remote_gc.gc(rr, grace_ns=0)
    env = cli_env(tmp_path / "c")
    r = run_cli("gc", "-R", url, "--grace", "0", cwd=tmp_path, env=env)
    assert r.code == 1, r
    assert "another gc is running" in one_line_error(r)
    assert not [k for k in bucket_listing(url) if k.startswith(LEASES) and k != mine]
    rr.remote.delete(mine)
    rr.close()


def test_a_stale_lease_expires(gone_experiment: dict, monkeypatch) -> None:
    g = gone_experiment
    url = g["url"]
    monkeypatch.setenv("REPLICATE_GC_LEASE_TTL", "4")
    rr = remote_repo(url, g["cache"])
    stale = f"{LEASES}{time.time_ns():020d}-killed"
    rr.remote.put(stale, b"gc")
    with pytest.raises(LockError):
        remote_gc.gc(rr, grace_ns=0)
    time.sleep(5)
    res = remote_gc.gc(rr, grace_ns=0)
    rr.close()
    assert res.removed_objects >= 4, res
    assert not [k for k in bucket_listing(url) if k.startswith(LEASES)]


def test_leftover_sets_of_killed_gcs_are_dropped(gone_experiment: dict) -> None:
    g = gone_experiment
    url = g["url"]
    rr = remote_repo(url, g["cache"])
    t = time.time_ns()
    orphan = f"{CONDEMNED}{t:020d}-killedbefore"
    rr.remote.put(f"{orphan}.set", remote_gc.encode_set(remote_gc._record_keys(
        rr.objects.index.all_records()[:0], [])))  # no .sessions: its gc died writing them
    legacy = f"{CONDEMNED}{t + 1:020d}-oldformat"
    rr.remote.put(f"{legacy}.set", b"\x05" * 64)  # ids only
    rr.remote.put(f"{legacy}.sessions", remote_gc.msgpack.packb([]))
    lone = f"{CONDEMNED}{t + 2:020d}-lonely.sessions"
    rr.remote.put(lone, remote_gc.msgpack.packb([]))
    sets = remote_gc.condemned_sets(rr)
    assert {s.name for s in sets} == {orphan, legacy}
    assert remote_gc.condemned_ids(sets).tolist() == [b"\x05" * 32]  # pushes still avoid them
    res = remote_gc.gc(rr, grace_ns=0)
    rr.close()
    assert res.errors == [] and res.removed_objects >= 4, res
    assert not [k for k in bucket_listing(url) if k.startswith(CONDEMNED)]


def test_remote_gc_refuses_a_broken_remote(gone_experiment: dict) -> None:
    g = gone_experiment
    url = g["url"]
    rr = remote_repo(url, g["cache"])
    rr.objects.refresh()
    keep_head = remote_heads_of(rr)[bytes.fromhex(g["keep"])]
    pid = rr.objects.locate(keep_head).pack
    rr.remote.delete(pack_key(pid))
    listing = bucket_listing(url)
    res = remote_gc.gc(rr, grace_ns=0)
    rr.close()
    assert res.errors and "missing" in res.errors[0], res
    assert res.removed_objects == 0
    assert {k for k in bucket_listing(url) if not k.startswith(("gc/", "sessions/"))} == {
        k for k in listing if not k.startswith(("gc/", "sessions/"))}


def test_session_and_lease_freshness() -> None:
    ttl = 120 * 10**9
    now = time.time_ns()
    assert remote_gc._fresh(now - 10**9, None, now, None, ttl)
    assert not remote_gc._fresh(now - 2 * ttl, None, now, None, ttl)
    # the writer's clock says stale, the store's LastModified says fresh: alive
    assert remote_gc._fresh(now - 2 * ttl, 1000.0, now, 1010.0, ttl)
    assert not remote_gc._fresh(now - 2 * ttl, 1000.0, now, 1200.0, ttl)


def test_gc_compacts_a_remote_index_of_many_segments(gone_experiment: dict, monkeypatch) -> None:
    g = gone_experiment
    url, project, cache = g["url"], g["project"], g["cache"]
    for n in range(3):
        record_experiment(project, [{"m.bin": random_weights(100_000, 20 + n)}], {"n": n})
        push(project, url)
    segments = [k for k in bucket_listing(url) if k.startswith("index/")]
    assert len(segments) >= 4
    monkeypatch.setattr(remote_gc, "COMPACT_SEGMENTS", 1)
    res = gc_remote(url, cache)  # 24 h grace: nothing to remove, only compaction
    assert res.errors == [] and res.removed_objects == 0 and res.bytes_freed == 0
    assert len([k for k in bucket_listing(url) if k.startswith("index/")]) == 1
    assert remote_problems(url, cache / "check") == []
    reader = replicate.Project(directory=project, repository=url)
    with reader.checkpoints.get(g["keep_cp"]).open("k.bin") as f:
        assert f.read() == random_weights(MiB, 8)


def test_a_pack_uploaded_again_under_its_old_name_is_not_deleted(s3_url: str, tmp_path: Path
                                                                 ) -> None:
    """A push uploads a big local pack verbatim, under the local pack's name. If every object
    in it was condemned on the remote, a later push of the same bytes uploads the same pack
    again, under the same key (the ABA case). The sweep of the old set must not delete the
    pack that was just put again: gc skips packs modified after the set condemning them."""
    url = s3_url + "/aba"
    project = tmp_path / "project"
    project.mkdir()
    cache = tmp_path / "gc-cache"
    big = random_weights(24 * MiB, 30)
    a, a_cps = record_experiment(project, [{"big.bin": big}], {"name": "a"})
    push(project, url)
    chunk = chunk_of(project, a_cps[0])
    (pack_a,) = copies(url, cache, chunk)
    repo = Repository.open(project / ".replicate")
    assert repo.objects.locate(chunk).pack == pack_a, "expected a verbatim upload"
    repo.close()
    rm(project, a)
    push(project, url)
    holder = remote_repo(url, cache / "holder")
    with PushSession(holder):
        res = gc_remote(url, cache, grace_ns=0)
        assert res.condemned_objects >= 4 and res.waiting_sets == 1, res
    holder.close()
    time.sleep(1.2)  # LastModified has a resolution of one second
    b, b_cps = record_experiment(project, [{"big.bin": big}], {"name": "b"})
    repo = Repository.open(project / ".replicate")
    rr = sync.open_remote_repo(repo, url)
    pause = Paused(rr.refs, "advance")
    t, out = run_in_thread(sync.push, repo, rr)
    assert pause.entered.wait(120), out
    res = gc_remote(url, cache, grace_ns=0)
    assert res.errors == [], res
    pause.release.set()
    t.join(120)
    assert "error" not in out, out
    rr.close()
    repo.close()
    assert copies(url, cache, chunk), "the pack put again was deleted"
    assert pack_key(copies(url, cache, chunk)[0]) in bucket_listing(url)
    res = gc_remote(url, cache, grace_ns=0)
    assert res.errors == [], res
    assert remote_problems(url, cache / "check") == []
    reader = replicate.Project(directory=project, repository=url)
    with reader.checkpoints.get(b_cps[0]).open("big.bin") as f:
        assert sha256(f.read()) == sha256(big)


def test_with_a_grace_period_garbage_goes_once_it_is_old_enough(gone_experiment: dict) -> None:
    g = gone_experiment
    url, cache = g["url"], g["cache"]
    hour = 3600 * 10**9
    res = gc_remote(url, cache, grace_ns=24 * hour, now_ns=time.time_ns() + 25 * hour)
    assert res.condemned_objects >= 4 and res.removed_objects == 0 and res.waiting_sets == 1
    res = gc_remote(url, cache, grace_ns=24 * hour, now_ns=time.time_ns() + 30 * hour)
    assert res.removed_objects == 0 and res.waiting_sets == 1, res  # the set is 5 h old
    before = bucket_bytes(url)
    res = gc_remote(url, cache, grace_ns=24 * hour, now_ns=time.time_ns() + 50 * hour)
    assert res.removed_objects >= 4 and res.waiting_sets == 0, res
    assert before - bucket_bytes(url) == res.bytes_freed >= 1.6 * MiB
    assert remote_problems(url, cache / "check") == []
