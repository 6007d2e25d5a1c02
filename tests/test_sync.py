"""push and pull against real servers on loopback: moto (S3), fake-gcs-server (GCS) and a shared
directory (file://); reading a remote with ``-R URL`` from the CLI (``python -m replicate`` in a
subprocess, which inherits the endpoints the fixtures set in os.environ) and with
``replicate.Project(repository=URL)``, fetching only the chunks a read needs.

Also: interrupted pushes resume (journal), a push killed between moving a ref and adding its
catalog record still gets the experiment listed, request counts stay O(bytes / 64 MiB),
diverged histories are refused, the merged view of a project with a shared repository, and the
one-line errors for a missing bucket, an unreachable endpoint or an empty prefix.

The kill -9 tests are in test_sync_crash.py; two machines training into one bucket at once in
test_two_machines.py; the per-backend Remote contract in tests/remotes/.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

import replicate
from replicate import catalog, sync
from replicate.errors import RemoteError, RemoteUnavailable
from replicate.fsck import fsck
from replicate.remote_repo import RemoteRepository
from replicate.remotes import open_remote
from replicate.remotes.wrappers import CountingRemote
from replicate.repository import Repository
from tests.helpers.sync_common import (
    cli_env,
    local_heads,
    random_weights,
    record_experiment,
    remote_heads,
    remote_problems,
    run_cli,
)

MiB = 1024 * 1024
BACKENDS = ["s3", "gcs", "file"]


def make_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A repository URL with nothing under it yet (S3 and GCS: a fresh bucket, a prefix)."""
    if kind == "s3":
        return request.getfixturevalue("s3_url") + "/team/proj"
    if kind == "gcs":
        return request.getfixturevalue("gcs_url") + "/team/proj"
    return f"file://{tmp_path}/shared/repo"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_url(request.param, request, tmp_path)


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/shared/repo"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def two_file_project(project: Path) -> dict[str, object]:
    """A project with two experiments: ``big`` (two checkpoints of two 8 MiB weight files; the
    second changes a.bin only) and ``small`` (one checkpoint of a 100 KB file)."""
    project.mkdir(parents=True, exist_ok=True)
    a0, a1, b = (random_weights(8 * MiB, s) for s in (1, 2, 3))
    big, big_cps = record_experiment(
        project,
        [{"weights/a.bin": a0, "weights/b.bin": b}, {"weights/a.bin": a1, "weights/b.bin": b}],
        {"lr": 0.1, "name": "big"},
    )
    small_data = random_weights(100_000, 4)
    small, small_cps = record_experiment(project, [{"model.bin": small_data}],
                                         {"lr": 0.2, "name": "small"})
    return {"big": big, "big_cps": big_cps, "small": small, "small_cps": small_cps,
            "a0": a0, "a1": a1, "b": b, "small_data": small_data}


# --- the main flow, on every backend -------------------------------------------------------------


def test_push_then_every_read_command_on_the_remote(url: str, tmp_path: Path) -> None:
    """push, then ls/show/log/diff/checkout/fsck with -R from a directory that is no project
    (metadata cached under XDG_CACHE_HOME, nothing written to the working directory), then pull
    into a second project that works offline."""
    a = tmp_path / "a"
    info = two_file_project(a)
    big, small = str(info["big"]), str(info["small"])
    c0, c1 = info["big_cps"]  # type: ignore[misc]
    env = cli_env(cache_home=tmp_path / "cache")

    r = run_cli("push", url, cwd=a, env=env)
    assert r.code == 0, r
    assert "Pushed 2 experiments" in r.stderr, r
    r = run_cli("push", url, cwd=a, env=env)
    assert r.code == 0 and "Everything up to date" in r.stderr, r
    assert remote_heads(url) == local_heads(a)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    r = run_cli("ls", "-R", url, "--json", cwd=elsewhere, env=env)
    assert r.code == 0, r
    listed = {e["id"]: e for e in r.json()}
    assert set(listed) == {big, small}
    assert listed[big]["num_checkpoints"] == 2
    assert listed[big]["best_checkpoint"]["id"] == c1
    assert listed[big]["params"] == {"lr": 0.1, "name": "big"}
    assert listed[small]["latest_checkpoint"]["id"] == info["small_cps"][0]  # type: ignore[index]
    assert not any(e["running"] for e in listed.values())

    r = run_cli("-R", url, "ls", cwd=elsewhere, env=env)  # -R before the command works too
    assert r.code == 0 and big[:7] in r.stdout and small[:7] in r.stdout, r

    r = run_cli("show", "-R", url, big[:7], cwd=elsewhere, env=env)
    assert r.code == 0, r
    assert big in r.stdout and c0[:7] in r.stdout and c1[:7] in r.stdout

    r = run_cli("log", "-R", url, big[:7], "-q", cwd=elsewhere, env=env)
    assert r.code == 0 and r.stdout.split() == [c1, c0], r

    r = run_cli("diff", "-R", url, c0[:7], c1[:7], "--json", cwd=elsewhere, env=env)
    assert r.code == 0, r
    files = {f["path"]: f for f in r.json()["files"]}
    assert files["weights/a.bin"]["status"] == "changed"
    assert "weights/b.bin" not in files or files["weights/b.bin"]["status"] == "unchanged"

    out = tmp_path / "out"
    r = run_cli("checkout", "-R", url, big[:7], "-o", str(out), cwd=elsewhere, env=env)
    assert r.code == 0, r
    assert (out / "weights" / "a.bin").read_bytes() == info["a1"]  # the best checkpoint
    assert (out / "weights" / "b.bin").read_bytes() == info["b"]

    r = run_cli("fsck", "-R", url, cwd=elsewhere, env=env)
    assert r.code == 0 and "no errors found" in r.stdout, r
    assert "2 refs" in r.stdout, r

    assert list(elsewhere.iterdir()) == []  # -R never writes into the working directory
    assert any((tmp_path / "cache" / "replicate").iterdir())  # ... but into the user cache

    # pull into another project; afterwards it needs no remote at all
    b = tmp_path / "b"
    b.mkdir()
    r = run_cli("pull", url, cwd=b, env=env)
    assert r.code == 0 and "Pulled 2 experiments" in r.stderr, r
    assert local_heads(b) == local_heads(a)
    offline = cli_env(cache_home=tmp_path / "cache2", AWS_ENDPOINT_URL="http://127.0.0.1:9",
                      STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
    r = run_cli("ls", "-q", cwd=b, env=offline)
    assert r.code == 0 and sorted(r.stdout.split()) == sorted([big, small]), r
    r = run_cli("checkout", c0[:7], "-o", str(tmp_path / "out0"), cwd=b, env=offline)
    assert r.code == 0, r
    assert (tmp_path / "out0" / "weights" / "a.bin").read_bytes() == info["a0"]
    r = run_cli("fsck", cwd=b, env=offline)
    assert r.code == 0, r
    r = run_cli("pull", url, cwd=b, env=env)
    assert r.code == 0 and "Everything up to date" in r.stderr, r


def test_open_on_a_remote_fetches_only_that_files_chunks(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoint.open() through replicate.Project(repository=URL), with a cold cache: reading
    one of two 8 MiB files fetches less than 10 MiB in all (index, metadata and its chunks)."""
    info = two_file_project(tmp_path / "a")
    repo = Repository.open(tmp_path / "a" / ".replicate")
    res = sync.push(repo, sync.open_remote_repo(repo, url))
    assert len(res.experiments) == 2

    counters: list[CountingRemote] = []

    def counting_open_remote(u: str, base: Path | None = None, retries: bool = True):
        counters.append(CountingRemote(open_remote(u, base, retries)))
        return counters[-1]

    monkeypatch.setattr("replicate.remote_repo.open_remote", counting_open_remote)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cold-cache"))
    project = replicate.Project(directory=tmp_path, repository=url)
    exp = project.experiments.get(str(info["big"])[:7])
    cp = exp.latest()
    assert cp is not None and cp.id == info["big_cps"][1]  # type: ignore[index]
    [counter] = counters
    with cp.open("weights/a.bin") as f:
        assert f.read() == info["a1"]
    fetched = counter.bytes_in  # with resolving the ID prefix and reading the metadata
    assert 6 * MiB <= fetched < 10 * MiB, counter.counts  # stored: fp32 bg4-zstd saves ~17%
    # no whole-pack download
    assert counter.counts["get_file"] == 0
    # sequential reads fetch ahead (1, 2, 4, ... chunks, coalesced): a few range requests
    assert counter.counts["get_range"] <= 12, counter.counts

    before = counter.bytes_in
    with cp.open("weights/b.bin") as f:
        f.seek(5 * MiB)
        assert f.read(1000) == info["b"][5 * MiB:5 * MiB + 1000]  # type: ignore[index]
    assert counter.bytes_in - before < 2 * MiB  # one chunk (at most 1 MiB), not the file
    assert len(project.experiments.list()) == 2


def test_reading_a_whole_file_from_a_remote_coalesces_range_requests(url: str, tmp_path: Path
                                                                     ) -> None:
    """iter_content (checkout -R) asks for ~8 MiB of neighbouring chunks at a time: a few
    range requests per file, not one per chunk; what comes back is verified as ever."""
    from replicate.checkout import find_entry
    from replicate.objects.reader import file_chunk_refs, iter_content

    info = two_file_project(tmp_path / "a")
    repo = Repository.open(tmp_path / "a" / ".replicate")
    sync.push(repo, sync.open_remote_repo(repo, url))
    counted: list[CountingRemote] = []
    rrepo = open_with(repo, url, lambda r: counted.append(CountingRemote(r)) or counted[-1])
    rrepo.objects.refresh()
    cp = rrepo.objects.read_object(bytes.fromhex(info["big_cps"][1]))  # type: ignore[index]
    entry = find_entry(rrepo.objects, cp.files, "weights/b.bin")
    file = rrepo.objects.read_object(entry.id)
    nchunks = len(file_chunk_refs(rrepo.objects, file))
    before = counted[0].counts["get_range"]
    assert b"".join(iter_content(rrepo.objects, file)) == info["b"]
    ranges = counted[0].counts["get_range"] - before
    assert nchunks > 8 and ranges <= 3, (nchunks, ranges)


def test_coalesced_remote_reads_still_verify_every_chunk(file_url: str, tmp_path: Path) -> None:
    from replicate.checkout import find_entry
    from replicate.errors import CorruptObjectError
    from replicate.objects.reader import file_chunk_refs, iter_content

    info = two_file_project(tmp_path / "a")
    repo = Repository.open(tmp_path / "a" / ".replicate")
    sync.push(repo, sync.open_remote_repo(repo, file_url))
    rrepo = open_with(repo, file_url)
    rrepo.objects.refresh()
    cp = rrepo.objects.read_object(bytes.fromhex(info["big_cps"][1]))  # type: ignore[index]
    file = rrepo.objects.read_object(find_entry(rrepo.objects, cp.files, "weights/b.bin").id)
    loc = rrepo.objects.locate(file_chunk_refs(rrepo.objects, file)[3].id)
    packs = [p for p in Path(file_url[len("file://"):]).rglob("*.pack") if loc.pack.hex() in p.name]
    with open(packs[0], "r+b") as f:  # one flipped byte inside the fourth chunk
        f.seek(loc.offset + loc.stored_len // 2)
        b = f.read(1)
        f.seek(loc.offset + loc.stored_len // 2)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(CorruptObjectError):
        b"".join(iter_content(rrepo.objects, file))


# --- resuming, requests, the catalog ---------------------------------------------------------


class FailingRemote:
    """Passes calls through until ``fail(method, key)`` says otherwise; then raises a
    (non-transient) RemoteError, as a dropped connection that outlasted the retries would."""

    def __init__(self, inner, fail) -> None:
        self.inner = inner
        self.url = inner.url
        self.properties = inner.properties
        self.fail = fail

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            key = args[0] if args else ""
            if self.fail(name, key):
                raise RemoteError(f"{self.url}: injected failure on {name} {key}")
            return method(*args, **kwargs)

        return call


def three_big_experiments(project: Path, mib: int = 20) -> list[str]:
    project.mkdir(parents=True, exist_ok=True)
    return [record_experiment(project, [{"model.bin": random_weights(mib * MiB, 10 + i)}],
                              {"i": i})[0] for i in range(3)]


def open_with(repo: Repository, url: str, wrap=None) -> RemoteRepository:
    remote = open_remote(url)
    if wrap is not None:
        remote = wrap(remote)
    return RemoteRepository(remote.url, remote, sync.remote_cache_dir(repo, remote.url))


def test_interrupted_push_resumes_from_its_journal(file_url: str, tmp_path: Path) -> None:
    """A push that fails after uploading some packs: the next push indexes those packs (no
    second upload) and completes; nothing on the remote points at a missing object meanwhile."""
    eids = three_big_experiments(tmp_path / "a")
    repo = Repository.open(tmp_path / "a" / ".replicate")
    uploads: list[str] = []

    def fail(method: str, key: str) -> bool:
        if method == "put_file":
            uploads.append(key)
            return len(uploads) > 1  # the first pack goes up, the second fails
        return False

    with pytest.raises(RemoteError, match="injected"):
        sync.push(repo, open_with(repo, file_url, lambda r: FailingRemote(r, fail)))
    assert remote_heads(file_url) == {}
    assert remote_problems(file_url, tmp_path / "check") == []

    counter: list[CountingRemote] = []
    res = sync.push(repo, open_with(repo, file_url, lambda r: counter.append(CountingRemote(r))
                                    or counter[-1]))
    assert res.resumed_packs == 1
    assert sorted(res.experiments) == sorted(eids)
    # the pack uploaded before the failure is not sent again: two 20 MiB packs + metadata
    assert res.bytes < 45 * MiB, res
    assert remote_heads(file_url) == local_heads(tmp_path / "a")
    assert remote_problems(file_url, tmp_path / "check2") == []
    rep = fsck(RemoteRepository(file_url, cache_dir=tmp_path / "fsck"))
    assert rep.ok, rep.errors


def test_resumed_push_uploads_what_the_interrupted_one_missed(file_url: str,
                                                              tmp_path: Path) -> None:
    """The metadata pack of an interrupted push made it, its data did not: the next push
    must still upload the data before moving refs (regression: it used to index the resumed
    metadata pack at once, then trusted the checkpoints found there and moved the refs to
    objects whose chunks were missing)."""
    import os

    eids = three_big_experiments(tmp_path / "a", mib=4)  # small: merged into one data pack
    repo = Repository.open(tmp_path / "a" / ".replicate")

    class DataFails(FailingRemote):
        def put_file(self, key: str, path: str, create_only: bool = False) -> None:
            if os.path.getsize(path) > MiB:
                raise RemoteError(f"{self.url}: injected failure on {key}")
            self.inner.put_file(key, path, create_only)

    with pytest.raises(RemoteError, match="injected"):
        sync.push(repo, open_with(repo, file_url, lambda r: DataFails(r, lambda m, k: False)))
    res = sync.push(repo, sync.open_remote_repo(repo, file_url))
    assert res.resumed_packs == 1  # the metadata pack, not sent again
    assert res.bytes > 10 * MiB
    assert sorted(res.experiments) == sorted(eids)
    assert remote_problems(file_url, tmp_path / "check") == []


def test_interrupted_pull_resumes_and_never_indexes_half_an_experiment(
    file_url: str, tmp_path: Path
) -> None:
    """A pull that fails after downloading some packs leaves the local repository as it was
    (fsck clean: the packs are not indexed yet); the next pull reuses them and completes."""
    eids = three_big_experiments(tmp_path / "a")
    src = Repository.open(tmp_path / "a" / ".replicate")
    sync.push(src, sync.open_remote_repo(src, file_url))

    b = tmp_path / "b"
    b.mkdir()
    dest = Repository.init(b / ".replicate")
    fetched: list[str] = []

    def fail(method: str, key: str) -> bool:
        if method == "get_file":
            fetched.append(key)
            return len(fetched) > 2
        return False

    with pytest.raises(RemoteError, match="injected"):
        sync.pull(dest, open_with(dest, file_url, lambda r: FailingRemote(r, fail)),
                  connections=1)
    assert local_heads(b) == {}
    rep = fsck(Repository.open(b / ".replicate"))
    assert rep.ok, rep.errors

    counter: list[CountingRemote] = []
    res = sync.pull(dest, open_with(dest, file_url, lambda r: counter.append(CountingRemote(r))
                                    or counter[-1]))
    # two data packs and the metadata pack came in before the failure; only the data pack
    # whose download failed is fetched again
    assert res.resumed_packs == 3
    assert counter[0].counts["get_file"] == 1, counter[0].counts
    assert sorted(res.experiments) == sorted(eids)
    rep = fsck(Repository.open(b / ".replicate"), read_data=True)
    assert rep.ok and not rep.warnings, (rep.errors, rep.warnings)


def test_push_killed_before_its_catalog_record_still_lists_the_experiment(
    file_url: str, tmp_path: Path
) -> None:
    """The ref moved, then the push died before adding the catalog record: the next push (with
    nothing else to do) adds it, so ls -R shows the experiment."""
    a = tmp_path / "a"
    a.mkdir()
    eid, _ = record_experiment(a, [{"model.bin": random_weights(200_000, 1)}], {"x": 1})
    repo = Repository.open(a / ".replicate")
    with pytest.raises(RemoteError, match="injected"):
        sync.push(repo, open_with(
            repo, file_url,
            lambda r: FailingRemote(r, lambda m, k: m == "put" and k.startswith("catalog/"))))
    assert remote_heads(file_url) == local_heads(a)  # the ref did move
    rrepo = RemoteRepository(file_url, cache_dir=tmp_path / "c1")
    assert catalog.load(rrepo) == {}
    rep = fsck(rrepo)
    assert rep.ok and any("not in the catalog" in w for w in rep.warnings), rep

    sync.push(repo, sync.open_remote_repo(repo, file_url))
    items = catalog.load(RemoteRepository(file_url, cache_dir=tmp_path / "c2"))
    assert [e.hex() for e in items] == [eid]
    r = run_cli("ls", "-R", file_url, "-q", cwd=tmp_path, env=cli_env(tmp_path / "cache"))
    assert r.code == 0 and r.stdout.split() == [eid], r


def test_push_requests_are_bounded_by_bytes(file_url: str, tmp_path: Path) -> None:
    """Requests for N new bytes <= ceil(N / 64 MiB) + 10 (storage.md 12.10); a push with
    nothing new makes a handful, and a read-only pull of nothing makes fewer."""
    a = tmp_path / "a"
    a.mkdir()
    record_experiment(a, [{"model.bin": random_weights(96 * MiB, 7)}], {})
    repo = Repository.open(a / ".replicate")
    counter = CountingRemote(open_remote(file_url))
    res = sync.push(repo, RemoteRepository(counter.url, counter,
                                           sync.remote_cache_dir(repo, counter.url)))
    assert res.bytes > 64 * MiB
    assert counter.total() <= math.ceil(res.bytes / (64 * MiB)) + 10, counter.counts

    again = CountingRemote(open_remote(file_url))
    res = sync.push(repo, RemoteRepository(again.url, again,
                                           sync.remote_cache_dir(repo, again.url)))
    assert res.up_to_date
    assert again.total() <= 6, again.counts
    assert again.counts["put"] + again.counts["put_file"] <= 1, again.counts  # gc session only

    pulled = CountingRemote(open_remote(file_url))
    res = sync.pull(repo, RemoteRepository(pulled.url, pulled,
                                           sync.remote_cache_dir(repo, pulled.url)))
    assert res.up_to_date
    assert pulled.total() <= 3 and pulled.counts["list"] == pulled.total(), pulled.counts

    dest = Repository.init(tmp_path / "b" / ".replicate")
    fresh = CountingRemote(open_remote(file_url))
    res = sync.pull(dest, RemoteRepository(fresh.url, fresh,
                                           sync.remote_cache_dir(dest, fresh.url)))
    assert res.bytes > 64 * MiB
    assert fresh.total() <= math.ceil(res.bytes / (64 * MiB)) + 10, fresh.counts


def test_pulling_many_experiments_reads_metadata_by_pack(file_url: str, tmp_path: Path) -> None:
    """Walking the metadata of 30 experiments (experiment, checkpoints, trees, files) costs a
    request per metadata pack, not one per object."""
    a = tmp_path / "a"
    a.mkdir()
    repo = Repository.init(a / ".replicate")
    for i in range(30):
        record_experiment(a, [{"m.bin": random_weights(1000, i)}, {"m.bin": random_weights(900, i)}],
                          {"i": i})
    sync.push(repo, sync.open_remote_repo(repo, file_url))
    dest = Repository.init(tmp_path / "b" / ".replicate")
    counter = CountingRemote(open_remote(file_url))
    res = sync.pull(dest, RemoteRepository(counter.url, counter,
                                           sync.remote_cache_dir(dest, counter.url)))
    assert len(res.experiments) == 30 and res.objects >= 30 * 6
    assert counter.total() <= 12, counter.counts
    r = run_cli("log", "-R", file_url, res.experiments[0][:8], "-q", cwd=tmp_path,
                env=cli_env(tmp_path / "cache"))
    assert r.code == 0 and len(r.stdout.split()) == 2, r


def test_catalog_is_compacted_and_stays_complete(
    file_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog, "COMPACT_AT", 3)
    a = tmp_path / "a"
    a.mkdir()
    repo = Repository.init(a / ".replicate")
    eids = []
    for i in range(5):
        eid, _ = record_experiment(a, [{"m.bin": random_weights(1000, i)}], {"i": i})
        eids.append(eid)
        sync.push(repo, sync.open_remote_repo(repo, file_url))
    rrepo = RemoteRepository(file_url, cache_dir=tmp_path / "c1")
    items = catalog.load(rrepo)  # 5 records: compacts
    assert sorted(e.hex() for e in items) == sorted(eids)
    snaps = [k.key for k in rrepo.remote.list("catalog/snap/")]
    assert len(snaps) == 1
    fresh = RemoteRepository(file_url, cache_dir=tmp_path / "c2")
    assert sorted(e.hex() for e in catalog.load(fresh)) == sorted(eids)
    assert [s.params["i"] for s in catalog.summaries(fresh)] == [0, 1, 2, 3, 4]


# --- several copies of one experiment ----------------------------------------------------------


def test_diverged_histories_are_refused_and_behind_pulls_fast_forward(
    file_url: str, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    eid, _ = record_experiment(a, [{"m.bin": random_weights(1000, 1)}], {"x": 1})
    repo_a = Repository.open(a / ".replicate")
    sync.push(repo_a, sync.open_remote_repo(repo_a, file_url))
    repo_b = Repository.init(b / ".replicate")
    sync.pull(repo_b, sync.open_remote_repo(repo_b, file_url))

    # b resumes the experiment (a preempted job restarted elsewhere) and pushes
    (b / "m.bin").write_bytes(random_weights(1000, 2))
    exp_b = replicate.Project(directory=b).experiments.get(eid)
    cp_b = exp_b.checkpoint(path="m.bin", metrics={"loss": 0.5}, wait=True)
    assert cp_b is not None
    res = sync.push(repo_b, sync.open_remote_repo(repo_b, file_url))
    assert res.experiments == [eid]

    # a is behind: its push is refused and says to pull; pull fast-forwards it
    res = sync.push(repo_a, sync.open_remote_repo(repo_a, file_url))
    assert res.skipped and "pull first" in res.skipped[0]
    res = sync.pull(repo_a, sync.open_remote_repo(repo_a, file_url))
    assert res.experiments == [eid]
    assert local_heads(a)[eid] == cp_b.id

    # both add a checkpoint: whoever pushes second has diverged and is refused
    for project, seed in ((a, 3), (b, 4)):
        (project / "m.bin").write_bytes(random_weights(1000, seed))
        e = replicate.Project(directory=project).experiments.get(eid)
        assert e.checkpoint(path="m.bin", metrics={"loss": 0.1}, wait=True) is not None
    assert sync.push(repo_a, sync.open_remote_repo(repo_a, file_url)).experiments == [eid]
    res = sync.push(repo_b, sync.open_remote_repo(repo_b, file_url))
    assert res.experiments == [] and "diverged" in res.skipped[0]
    r = run_cli("push", file_url, cwd=b, env=cli_env(tmp_path / "cache"))
    assert r.code == 1 and "diverged" in r.stderr, r
    assert remote_heads(file_url)[eid] == local_heads(a)[eid]
    assert remote_problems(file_url, tmp_path / "check") == []


def test_ref_updates_are_compare_and_swap(file_url: str, tmp_path: Path) -> None:
    """Two writers that read the same head race for the next ref log entry with different new
    heads: exactly one wins (regression: the entry's key held the new head, so both did, and
    a writer with a stale view could add an entry below the newest)."""
    from replicate.errors import RefConflict
    from replicate.remote_repo import RemoteRefs

    eid, a, b, c = (bytes([i]) * 32 for i in range(1, 5))
    one, two = RemoteRefs(open_remote(file_url)), RemoteRefs(open_remote(file_url))
    assert one.advance(eid, 0, a, {}) == 1
    with pytest.raises(RefConflict):
        two.advance(eid, 0, b, {})  # saw no entry: stale
    assert two.head(eid) == (1, a)
    assert two.advance(eid, 1, b, {}) == 2
    with pytest.raises(RefConflict):
        one.advance(eid, 1, c, {})  # its view (seq 1) is stale now
    assert one.heads(refresh=True)[eid] == (2, b)
    # a writer stopped between the claim and the name: readers take the head from the claim
    remote = open_remote(file_url)
    remote.put(f"refs/experiments/{eid.hex()}/{(1 << 63) - 1 - 3:019d}",
               json.dumps({"new": c.hex()}).encode(), create_only=True)
    assert RemoteRefs(remote).head(eid) == (3, c)
    assert RemoteRefs(remote).heads() == {eid: (3, c)}


# --- a project with a shared repository (merged view) ------------------------------------------


def test_project_with_a_shared_repository_lists_local_and_remote(
    s3_url: str, tmp_path: Path
) -> None:
    url = s3_url + "/shared"
    other = tmp_path / "other"
    other.mkdir()
    theirs, _ = record_experiment(other, [{"m.bin": random_weights(1000, 1)}], {"who": "them"})
    assert run_cli("push", url, cwd=other).code == 0

    mine_dir = tmp_path / "mine"
    mine_dir.mkdir()
    mine, _ = record_experiment(mine_dir, [{"m.bin": random_weights(1000, 2)}], {"who": "me"})
    (mine_dir / "replicate.yaml").write_text(f"repository: {url}\n")
    env = cli_env(tmp_path / "cache")
    r = run_cli("ls", "-q", cwd=mine_dir, env=env)
    assert r.code == 0 and sorted(r.stdout.split()) == sorted([mine, theirs]), r
    r = run_cli("show", theirs[:7], cwd=mine_dir, env=env)
    assert r.code == 0 and theirs in r.stdout, r
    r = run_cli("fsck", cwd=mine_dir, env=env)  # acts on the local repository
    assert r.code == 0 and "1 ref" in r.stdout, r

    # the remote is down: local experiments only, with a one-line warning
    down = cli_env(tmp_path / "cache", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    r = run_cli("ls", "-q", cwd=mine_dir, env=down)
    assert r.code == 0 and r.stdout.split() == [mine], r
    assert "cannot reach" in r.stderr and "Traceback" not in r.stderr, r

    # push (no URL: the configured one) uploads mine; then the remote lists both
    r = run_cli("push", cwd=mine_dir, env=env)
    assert r.code == 0 and "Pushed 1 experiment" in r.stderr, r
    r = run_cli("ls", "-R", url, "-q", cwd=tmp_path, env=env)
    assert sorted(r.stdout.split()) == sorted([mine, theirs]), r


def test_project_whose_shared_repository_is_still_empty(file_url: str, tmp_path: Path) -> None:
    """Before the first push (a new project, or the remote is wiped), the project's read
    commands show the local experiments; push then creates the remote."""
    a = tmp_path / "a"
    a.mkdir()
    eid, _ = record_experiment(a, [{"m.bin": random_weights(1000, 1)}], {})
    (a / "replicate.yaml").write_text(f"repository: {file_url}\n")
    env = cli_env(tmp_path / "cache")
    r = run_cli("ls", "-q", cwd=a, env=env)
    assert r.code == 0 and r.stdout.split() == [eid] and r.stderr == "", r
    assert replicate.Project(directory=a).experiments.get(eid[:5]).id == eid
    r = run_cli("push", cwd=a, env=env)
    assert r.code == 0, r
    assert remote_heads(file_url) == local_heads(a)


# --- errors: one line, exit 1 ---------------------------------------------------------------


def one_line_error(r) -> str:
    assert r.code == 1, r
    assert "Traceback" not in r.stderr, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r
    return lines[0]


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_missing_bucket_is_one_clear_line(kind: str, request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    request.getfixturevalue("s3_endpoint" if kind == "s3" else "gcs_endpoint")
    url = f"{'s3' if kind == 's3' else 'gs'}://no-such-bucket-{tmp_path.name[-8:].lower()}/x"
    a = tmp_path / "a"
    a.mkdir()
    record_experiment(a, [{"m.bin": b"x" * 100}], {})
    env = cli_env(tmp_path / "cache")
    for args in (("push", url), ("ls", "-R", url), ("fsck", "-R", url)):
        line = one_line_error(run_cli(*args, cwd=a, env=env))
        assert "bucket" in line and "does not exist" in line, line


def test_empty_prefix_and_unreachable_endpoint_are_one_clear_line(
    s3_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "cache")
    for args in (("ls", "-R", s3_url + "/nothing"), ("show", "-R", s3_url + "/nothing", "abc"),
                 ("fsck", "-R", s3_url + "/nothing")):
        line = one_line_error(run_cli(*args, cwd=tmp_path, env=env))
        assert "no replicate repository" in line, line
    down = cli_env(tmp_path / "cache", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    line = one_line_error(run_cli("ls", "-R", s3_url, cwd=tmp_path, env=down))
    assert "cannot reach" in line, line


def test_unreachable_gcs_endpoint_is_one_clear_line(gcs_url: str, tmp_path: Path) -> None:
    down = cli_env(tmp_path / "cache", STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
    line = one_line_error(run_cli("ls", "-R", gcs_url, cwd=tmp_path, env=down))
    assert "cannot reach" in line, line


# --- removed checkpoints travel too -------------------------------------------------------------


def test_removed_checkpoint_files_are_pushed_as_tombstones(file_url: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    eid, (c0, c1) = record_experiment(
        a, [{"m.bin": random_weights(300_000, 1)}, {"m.bin": random_weights(300_000, 2)}], {})
    env = cli_env(tmp_path / "cache")
    r = run_cli("rm", c0[:7], "-f", cwd=a, env=env)
    assert r.code == 0, r
    r = run_cli("push", file_url, cwd=a, env=env)
    assert r.code == 0, r
    rrepo = RemoteRepository(file_url, cache_dir=tmp_path / "c")
    assert rrepo.refs.tombstones() == {bytes.fromhex(c0)}
    assert remote_problems(file_url, tmp_path / "check") == []
    r = run_cli("show", "-R", file_url, c0[:7], "--json", cwd=tmp_path, env=env)
    assert r.code == 0 and json.loads(r.stdout)["files_removed"] is True, r
    r = run_cli("checkout", "-R", file_url, c1[:7], "-o", str(tmp_path / "o"), cwd=tmp_path,
                env=env)
    assert r.code == 0, r
    r = run_cli("fsck", "-R", file_url, cwd=tmp_path, env=env)
    assert r.code == 0, r


def test_transient_errors_are_retried(file_url: str, tmp_path: Path) -> None:
    """A few transient failures (503, dropped connections) during a push are retried."""
    from replicate.remotes.wrappers import RetryingRemote

    a = tmp_path / "a"
    a.mkdir()
    record_experiment(a, [{"m.bin": random_weights(300_000, 1)}], {})
    repo = Repository.open(a / ".replicate")
    calls = {"n": 0}

    class Flaky(FailingRemote):
        def __getattr__(self, name: str):
            method = getattr(self.inner, name)

            def call(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] % 3 == 0:
                    raise RemoteUnavailable("injected 503")
                return method(*args, **kwargs)

            return call

    remote = RetryingRemote(Flaky(open_remote(file_url, retries=False), None), base_delay=0.01)
    res = sync.push(repo, RemoteRepository(remote.url, remote, sync.remote_cache_dir(repo,
                                                                                      remote.url)))
    assert len(res.experiments) == 1
    assert remote_problems(file_url, tmp_path / "check") == []
