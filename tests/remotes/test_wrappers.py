"""RetryingRemote and CountingRemote, over a dict-backed test double of the Remote interface."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from replicate.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteExists,
    RemoteNotFound,
    RemoteUnavailable,
)
from replicate.remotes import KeyInfo, Remote, open_remote, wrappers
from replicate.remotes.wrappers import CountingRemote, RetryingRemote

from .contract import RemoteContract
from .fakes import DictRemote, FlakyRemote


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays RetryingRemote asks for (recorded, not slept)."""
    out: list[float] = []
    monkeypatch.setattr(wrappers.time, "sleep", out.append)
    return out


def flaky(failures: int = 0, **kw: object) -> tuple[FlakyRemote, DictRemote]:
    store = DictRemote()
    return FlakyRemote(store, failures, **kw), store  # type: ignore[arg-type]


class TestWrappedDictRemoteContract(RemoteContract):
    """The double keeps the contract, and both wrappers keep it too."""

    @pytest.fixture
    def remote(self) -> Remote:
        return RetryingRemote(CountingRemote(DictRemote()))


# --- RetryingRemote ----------------------------------------------------------------------------


def calls(tmp_path: Path) -> dict[str, Callable[[Remote], object]]:
    src = tmp_path / "src"
    src.write_bytes(b"file bytes")
    return {
        "get": lambda r: r.get("k"),
        "get_range": lambda r: r.get_range("k", 1, 3),
        "put": lambda r: r.put("new", b"v"),
        "put create_only": lambda r: r.put("new2", b"v", create_only=True),
        "put_file": lambda r: r.put_file("f", str(src)),
        "put_file create_only": lambda r: r.put_file("f2", str(src), create_only=True),
        "get_file": lambda r: r.get_file("k", str(tmp_path / "out")),
        "list": lambda r: r.list(""),
        "exists": lambda r: r.exists("k"),
        "delete": lambda r: r.delete("k"),
    }


@pytest.mark.parametrize("failures", [1, 3])
def test_retries_transient_errors(tmp_path: Path, sleeps: list[float], failures: int) -> None:
    for name, call in calls(tmp_path).items():
        inner, store = flaky(failures)
        store.put("k", b"value")
        call(RetryingRemote(inner, attempts=4))  # succeeds after `failures` failures
        assert inner.calls == failures + 1, name
    assert len(sleeps) == failures * len(calls(tmp_path))


def test_retry_results_are_the_inner_results(sleeps: list[float]) -> None:
    inner, store = flaky(2)
    store.put("a/k", b"value")
    r = RetryingRemote(inner)
    assert r.get("a/k") == b"value"
    inner.failures = 2
    assert r.list("a") == [KeyInfo("a/k", 5)]
    inner.failures = 1
    assert r.exists("a/k") is True
    assert r.url == inner.url and r.properties is inner.properties


def test_gives_up_after_the_last_attempt(sleeps: list[float]) -> None:
    inner, store = flaky(100)
    store.put("k", b"value")
    with pytest.raises(RemoteUnavailable):
        RetryingRemote(inner, attempts=4).get("k")
    assert inner.calls == 4
    assert len(sleeps) == 3


def test_backoff_grows_and_is_bounded(sleeps: list[float]) -> None:
    inner, _ = flaky(100)
    with pytest.raises(RemoteUnavailable):
        RetryingRemote(inner, attempts=8, base_delay=0.1, max_delay=0.4).exists("k")
    assert len(sleeps) == 7
    assert all(0 < d <= 0.4 * 1.5 for d in sleeps), sleeps
    assert sum(sleeps[:2]) < sum(sleeps[-2:])


@pytest.mark.parametrize("error", [RemoteNotFound, RemoteExists, RemoteAuthError, RemoteError])
def test_never_retries_permanent_errors(
    tmp_path: Path, sleeps: list[float], error: type[RemoteError]
) -> None:
    for name, call in calls(tmp_path).items():
        inner, store = flaky(1, error=error)
        store.put("k", b"value")
        with pytest.raises(error):
            call(RetryingRemote(inner))
        assert inner.calls == 1, name
    assert sleeps == []


def test_real_not_found_and_exists_are_not_retried(sleeps: list[float]) -> None:
    counted = CountingRemote(DictRemote())
    r = RetryingRemote(counted)
    with pytest.raises(RemoteNotFound):
        r.get("missing")
    r.put("k", b"1", create_only=True)
    with pytest.raises(RemoteExists):
        r.put("k", b"2", create_only=True)
    assert counted.counts == {"get": 1, "put": 2}
    assert sleeps == []


def test_create_only_whose_answer_was_lost_succeeds(sleeps: list[float], tmp_path: Path) -> None:
    """The first attempt stored the bytes but failed in transit; the retry finds the key with
    exactly our bytes: that is our write, not another writer's."""
    inner, store = flaky(1, after=True)
    RetryingRemote(inner).put("refs/1", b"ours", create_only=True)
    assert store.get("refs/1") == b"ours"

    src = tmp_path / "f"
    src.write_bytes(b"file bytes")
    inner.failures = 1
    RetryingRemote(inner).put_file("refs/2", str(src), create_only=True)
    assert store.get("refs/2") == b"file bytes"


def test_create_only_lost_to_another_writer_after_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner, store = flaky(1)  # the first attempt fails before reaching the store

    def other_writer_wins(_delay: float) -> None:  # while we back off
        store.put("refs/1", b"theirs", create_only=True)

    monkeypatch.setattr(wrappers.time, "sleep", other_writer_wins)
    with pytest.raises(RemoteExists):
        RetryingRemote(inner).put("refs/1", b"ours", create_only=True)
    assert store.get("refs/1") == b"theirs"


def test_create_only_of_identical_bytes_without_a_failure_still_raises() -> None:
    r = RetryingRemote(DictRemote())
    r.put("k", b"same", create_only=True)
    with pytest.raises(RemoteExists):
        r.put("k", b"same", create_only=True)


# --- CountingRemote ----------------------------------------------------------------------------


def test_counting_remote_counts_calls_and_bytes(tmp_path: Path) -> None:
    c = CountingRemote(DictRemote())
    c.put("a/1", b"12345")
    c.put("a/2", b"xy", create_only=True)
    assert c.get("a/1") == b"12345"
    assert c.get_range("a/1", 1, 3) == b"23"
    assert [k.key for k in c.list("a")] == ["a/1", "a/2"]
    assert c.exists("a/1") and not c.exists("b")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"0123456789")
    c.put_file("f", str(src))
    c.get_file("f", str(dst))
    c.delete("a/1")
    assert c.counts == {
        "put": 2,
        "get": 1,
        "get_range": 1,
        "list": 1,
        "exists": 2,
        "put_file": 1,
        "get_file": 1,
        "delete": 1,
    }
    assert c.total() == 10
    assert c.bytes_out == 5 + 2 + 10
    assert c.bytes_in == 5 + 2 + 10
    assert c.url == "dict://test" and c.properties.scheme == "dict"
    assert c.data == {"a/2": b"xy", "f": b"0123456789"}  # other attributes: the inner remote's


def test_counting_remote_counts_failed_calls() -> None:
    c = CountingRemote(DictRemote())
    with pytest.raises(RemoteNotFound):
        c.get("missing")
    c.put("k", b"v", create_only=True)
    with pytest.raises(RemoteExists):
        c.put("k", b"longer", create_only=True)
    assert c.counts == {"get": 1, "put": 2}
    assert c.bytes_in == 0 and c.bytes_out == 1


def test_counting_remote_counts_every_retry_attempt(sleeps: list[float]) -> None:
    inner, store = flaky(2)
    store.put("k", b"v")
    counted = CountingRemote(inner)  # type: ignore[arg-type]
    assert RetryingRemote(counted).get("k") == b"v"
    assert counted.counts["get"] == 3


def test_counting_remote_is_thread_safe() -> None:
    c = CountingRemote(DictRemote())

    def work(t: int) -> None:
        for i in range(200):
            c.put(f"{t}/{i}", b"ab")
            c.exists(f"{t}/{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.counts == {"put": 1600, "exists": 1600}
    assert c.bytes_out == 3200


def test_wrappers_over_a_real_remote(tmp_path: Path) -> None:
    r = open_remote(str(tmp_path / "store"))
    assert isinstance(r, RetryingRemote)
    c = CountingRemote(r)
    c.put("k", b"v")
    assert c.get("k") == b"v"
    assert c.counts == {"put": 1, "get": 1}
