"""The Remote contract (replicate/remotes/base.py), as one suite that any implementation runs.

Subclass :class:`RemoteContract` in a test module and provide a ``remote`` fixture that returns
an empty remote, fresh for each test (tests/remotes/conftest.py gives file, memory, S3 and GCS).
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest

from replicate.errors import RemoteError, RemoteExists, RemoteNotFound
from replicate.remotes import KeyInfo, Remote

KiB = 1024
MiB = 1024 * KiB

# gcsfs frames small uploads with the fixed multipart boundary "==0==" and bare LF line breaks
# (remotes.md pitfall 11): these payloads break that framing, or a CR-before-boundary parser.
BOUNDARY_LINE = b"\r\n--==0==\r\n"
TRICKY = {
    "cr-only": b"\r",
    "ends-cr": b"abc\r",
    "ends-crlf": b"abc\r\n",
    "boundary-line": b"head" + BOUNDARY_LINE + b"tail",
    "boundary-first": b"--==0==\r\nContent-Type: text/plain\r\n\r\nx",
    "boundary-close": b"data\n--==0==--",
    "lf-boundary": b"x\n--==0==\nContent-Type: application/json\n\n{}",
}


def payload(size: int, seed: int = 0, tail: bytes = b"") -> bytes:
    """``size`` random bytes (reproducible per seed); ``tail`` replaces the last bytes."""
    data = random.Random(seed).randbytes(size)
    return data[: size - len(tail)] + tail if tail else data


def tricky_big(size: int) -> bytes:
    """Random bytes with the gcsfs boundary line in the middle and a CR at the end."""
    half = payload(size // 2, seed=7)
    return half + BOUNDARY_LINE + payload(size - len(half) - len(BOUNDARY_LINE) - 1, 8) + b"\r"


def write_file(path: Path, size: int, seed: int) -> str:
    """A file of ``size`` random bytes, written in 1 MiB pieces; returns its SHA-256."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def race_to_create(remote: Remote, key: str, writers: int) -> list[object]:
    """``writers`` threads put ``key`` create-only at the same moment, each its own bytes;
    the result of each: "won" or the exception it raised."""
    barrier = threading.Barrier(writers)
    results: list[object] = [None] * writers

    def write(i: int) -> None:
        barrier.wait()
        try:
            remote.put(key, b"writer %d" % i, create_only=True)
            results[i] = "won"
        except Exception as e:  # recorded, checked by the caller
            results[i] = e

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


class RemoteContract:
    """Every Remote keeps these promises. Needs a ``remote`` fixture (empty, fresh per test)."""

    # --- get / put ------------------------------------------------------------------------------

    def test_round_trip(self, remote: Remote) -> None:
        sizes = [0, 1, KiB, 300 * KiB, 3 * MiB]
        for size in sizes:
            data = payload(size, seed=size)
            remote.put(f"blobs/{size}", data)
            assert remote.get(f"blobs/{size}") == data, size
        assert remote.list("blobs") == [KeyInfo(f"blobs/{n}", n) for n in sorted(sizes, key=str)]

    def test_round_trip_tricky_bytes(self, remote: Remote) -> None:
        for name, data in TRICKY.items():
            remote.put(f"t/{name}", data)
            assert remote.get(f"t/{name}") == data, name
            remote.put(f"c/{name}", data, create_only=True)
            assert remote.get(f"c/{name}") == data, name
        assert {k.key: k.size for k in remote.list("t")} == {
            f"t/{name}": len(data) for name, data in TRICKY.items()
        }

    def test_round_trip_tricky_random(self, remote: Remote, tmp_path: Path) -> None:
        for size in (KiB, 3 * MiB):
            data = tricky_big(size)
            assert BOUNDARY_LINE in data and data.endswith(b"\r") and len(data) == size
            remote.put(f"a/{size}", data)
            assert remote.get(f"a/{size}") == data
            src = tmp_path / "src"
            src.write_bytes(data)
            remote.put_file(f"b/{size}", str(src))  # small files: one-request upload on GCS too
            assert remote.get(f"b/{size}") == data
            assert remote.list("b")[-1] == KeyInfo(f"b/{size}", size)

    def test_overwrite(self, remote: Remote) -> None:
        remote.put("k", payload(300 * KiB, 1))
        remote.put("k", b"short")
        assert remote.get("k") == b"short"
        assert remote.list("") == [KeyInfo("k", 5)]
        remote.put("k", b"")
        assert remote.get("k") == b""

    def test_get_missing(self, remote: Remote) -> None:
        with pytest.raises(RemoteNotFound):
            remote.get("nope")
        with pytest.raises(RemoteNotFound):
            remote.get("deeper/no/such/key")
        with pytest.raises(RemoteNotFound):
            remote.get_range("nope", 0, 1)
        remote.put("dir/a", b"1")
        with pytest.raises(RemoteError):
            remote.get("dir")  # a prefix of keys is not a key

    def test_get_range(self, remote: Remote) -> None:
        data = payload(300 * KiB, 2)
        n = len(data)
        remote.put("packs/p", data)
        for start, end in [
            (0, 1),
            (0, 100),
            (1000, 5000),
            (n // 2, n // 2 + 7),
            (n - 100, n),
            (n - 1, n),
            (0, n),
        ]:
            assert remote.get_range("packs/p", start, end) == data[start:end], (start, end)
        assert remote.get_range("packs/p", 3, 3) == b""  # servers answer this with everything
        assert remote.get_range("packs/p", n, n) == b""

    def test_get_range_past_the_end(self, remote: Remote) -> None:
        remote.put("p", b"0123456789")
        for start, end in [(5, 11), (9, 20), (10, 11), (50, 60), (11, 11)]:
            with pytest.raises(RemoteError):
                remote.get_range("p", start, end)
        assert remote.get("p") == b"0123456789"

    # --- create-only ----------------------------------------------------------------------------

    def test_create_only(self, remote: Remote) -> None:
        assert remote.properties.atomic_create
        remote.put("refs/x/1", b"first", create_only=True)
        assert remote.get("refs/x/1") == b"first"
        with pytest.raises(RemoteExists):
            remote.put("refs/x/1", b"second", create_only=True)
        with pytest.raises(RemoteExists):
            remote.put("refs/x/1", b"first", create_only=True)  # even with the same bytes
        assert remote.get("refs/x/1") == b"first"
        assert remote.list("refs") == [KeyInfo("refs/x/1", 5)]
        # empty values
        remote.put("e", b"", create_only=True)
        with pytest.raises(RemoteExists):
            remote.put("e", b"", create_only=True)
        with pytest.raises(RemoteExists):
            remote.put("e", b"not empty", create_only=True)
        assert remote.get("e") == b""
        # a deleted key can be created again
        remote.delete("refs/x/1")
        remote.put("refs/x/1", b"again", create_only=True)
        assert remote.get("refs/x/1") == b"again"

    def test_create_only_put_file(self, remote: Remote, tmp_path: Path) -> None:
        first, second = tmp_path / "first", tmp_path / "second"
        first.write_bytes(b"config v1")
        second.write_bytes(b"config v2")
        remote.put_file("config", str(first), create_only=True)
        with pytest.raises(RemoteExists):
            remote.put_file("config", str(second), create_only=True)
        assert remote.get("config") == b"config v1"

    def test_create_only_race(self, remote: Remote) -> None:
        """16 writers create the same key at once: exactly one wins, and its bytes stay."""
        for round_ in range(3):
            key = f"refs/race/{round_}"
            results = race_to_create(remote, key, writers=16)
            winners = [i for i, r in enumerate(results) if r == "won"]
            losers = [r for r in results if r != "won"]
            assert len(winners) == 1, results
            assert all(isinstance(r, RemoteExists) for r in losers), losers
            assert remote.get(key) == b"writer %d" % winners[0]

    # --- list -----------------------------------------------------------------------------------

    def test_list(self, remote: Remote) -> None:
        keys = {
            "index/b.idx": 3,
            "index/a.idx": 10,
            "index/sub/c.idx": 1,
            "index2/x.idx": 4,
            "index.bak": 2,
            "packs/00/p.pack": 0,
        }
        for k, n in keys.items():
            remote.put(k, payload(n, n))
        expected = [
            KeyInfo("index/a.idx", 10),
            KeyInfo("index/b.idx", 3),
            KeyInfo("index/sub/c.idx", 1),
        ]
        assert remote.list("index") == expected
        assert remote.list("index/") == expected
        assert remote.list("index2") == [KeyInfo("index2/x.idx", 4)]
        assert remote.list("index/sub") == [KeyInfo("index/sub/c.idx", 1)]
        assert remote.list("packs") == [KeyInfo("packs/00/p.pack", 0)]
        assert remote.list("") == [KeyInfo(k, keys[k]) for k in sorted(keys)]

    def test_list_is_by_directory(self, remote: Remote) -> None:
        assert remote.list("") == []
        assert remote.list("nothing/here") == []
        remote.put("index/a", b"1")
        remote.put("index2/b", b"2")
        remote.put("other", b"3")
        assert remote.list("ind") == []  # not a string prefix
        assert remote.list("other") == []  # a key is not a directory
        assert remote.list("index/a") == []
        assert remote.list("nothing") == []

    def test_list_reads_after_writes(self, remote: Remote) -> None:
        assert remote.list("refs") == []
        for i in range(5):
            remote.put(f"refs/{i}", b"v")
            assert [k.key for k in remote.list("refs")] == [f"refs/{j}" for j in range(i + 1)]
        remote.put("refs/0", b"longer")
        assert remote.list("refs")[0] == KeyInfo("refs/0", 6)
        remote.delete("refs/0")
        assert [k.key for k in remote.list("refs")] == [f"refs/{j}" for j in range(1, 5)]

    def test_list_is_sorted(self, remote: Remote) -> None:
        names = ["b", "a/z", "a/b/c", "B", "a-", "a0", "_", "a.b"]
        for n in names:
            remote.put(f"s/{n}", b"")
        assert [k.key for k in remote.list("s")] == sorted(f"s/{n}" for n in names)

    # --- exists / delete ------------------------------------------------------------------------

    def test_exists(self, remote: Remote) -> None:
        assert remote.exists("k") is False
        remote.put("k", b"")
        assert remote.exists("k") is True
        remote.put("d/k", b"x")
        assert remote.exists("d/k") is True
        assert remote.exists("d") is False  # a prefix is not a key
        assert remote.exists("d/k/deeper") is False

    def test_delete(self, remote: Remote) -> None:
        remote.put("x/k", b"data")
        remote.put("x/j", b"data")
        remote.delete("x/k")
        assert remote.exists("x/k") is False
        with pytest.raises(RemoteNotFound):
            remote.get("x/k")
        assert remote.list("x") == [KeyInfo("x/j", 4)]
        remote.delete("x/k")  # deleting a missing key is fine
        remote.delete("never/was")

    # --- files ----------------------------------------------------------------------------------

    def test_put_file_get_file_20mib(self, remote: Remote, tmp_path: Path) -> None:
        src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
        digest = write_file(src, 20 * MiB, seed=20)
        remote.put_file("packs/big.pack", str(src))
        assert remote.list("packs") == [KeyInfo("packs/big.pack", 20 * MiB)]
        remote.get_file("packs/big.pack", str(dst))
        assert file_sha256(dst) == digest
        with open(src, "rb") as f:
            f.seek(13 * MiB - 5)
            assert remote.get_range("packs/big.pack", 13 * MiB - 5, 13 * MiB + 5) == f.read(10)

    def test_put_file_get_file_small(self, remote: Remote, tmp_path: Path) -> None:
        for size in (0, 1, 300 * KiB):
            src, dst = tmp_path / f"s{size}", tmp_path / f"d{size}"
            data = payload(size, size)
            src.write_bytes(data)
            remote.put_file(f"f/{size}", str(src))
            remote.get_file(f"f/{size}", str(dst))
            assert dst.read_bytes() == data
            assert remote.get(f"f/{size}") == data
        with pytest.raises(RemoteNotFound):
            remote.get_file("nope", str(tmp_path / "out"))
        with pytest.raises((RemoteError, FileNotFoundError)):  # a missing local file
            remote.put_file("k", str(tmp_path / "no-such-file"))
        assert remote.exists("k") is False

    def test_properties(self, remote: Remote) -> None:
        p = remote.properties
        assert p.scheme == remote.url.split("://", 1)[0]
        assert p.connections >= 1
        assert not remote.url.endswith("/")
