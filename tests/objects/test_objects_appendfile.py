"""AppendFile: direct-I/O appends (staged writes and handed-over buffers) give exactly the
bytes a plain append would, padding aside; refusals fall back to plain writes."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicate import appendfile
from replicate.appendfile import ALIGN, AppendFile, take_buffer

# An operation: ("w", sizes of the buffers of one write()) or ("b", size handed over).
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.lists(st.integers(0, 3 * ALIGN), min_size=1, max_size=3)),
        st.tuples(st.just("w"), st.lists(st.integers(0, 2 * appendfile.STAGE), max_size=1)),
        st.tuples(st.just("b"), st.integers(0, 5 * ALIGN + 7)),
    ),
    max_size=8,
)


def run_ops(path: Path, ops: list, direct: bool, seed: int) -> tuple[bytes, AppendFile]:
    """Apply ``ops``; returns the expected file content (zero padding where the writer says
    a handed-over buffer starts) and the closed writer."""
    rng = random.Random(seed)
    f = AppendFile(path, direct=direct)
    expected = bytearray()
    for kind, arg in ops:
        if kind == "w":
            bufs = [rng.randbytes(n) for n in arg]
            f.write(bufs)
            for b in bufs:
                expected += b
        else:
            data = rng.randbytes(arg)
            buf = take_buffer(max(arg, 1))
            buf[: len(data)] = np.frombuffer(data, np.uint8)
            was_direct = f.direct
            start = f.write_buffer(buf, len(data))
            assert start >= len(expected)
            if was_direct and f.direct:
                assert start % ALIGN == 0 and f.size % ALIGN == 0
            elif not was_direct:
                assert start == len(expected) and f.size == start + len(data)
            # zero padding before the buffer and after it (to the next 4 KiB) in direct mode
            expected += bytes(start - len(expected)) + data
            expected += bytes(f.size - len(expected))
        assert f.size == len(expected)
    f.close()
    return bytes(expected), f


@settings(deadline=None, derandomize=True, max_examples=40)
@given(ops_strategy, st.booleans(), st.integers(0, 2**32))
def test_appends_read_back_exactly(tmp_path_factory: pytest.TempPathFactory, ops: list,
                                   direct: bool, seed: int) -> None:
    path = tmp_path_factory.mktemp("af") / "f.bin"
    expected, f = run_ops(path, ops, direct, seed)
    assert path.read_bytes() == expected
    assert f.fd == -1


def test_direct_io_is_used_where_the_filesystem_allows_it(tmp_path: Path) -> None:
    f = AppendFile(tmp_path / "f.bin", direct=True)
    try:
        probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0))
    except OSError:
        pytest.skip("no O_DIRECT on this filesystem")
    os.close(probe)
    assert f.direct or not hasattr(os, "O_DIRECT")
    f.write([b"x" * 10])
    f.close()
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 10  # the padded block was truncated


def test_a_refused_direct_write_falls_back_to_plain_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some filesystems accept the O_DIRECT flag and refuse the writes (EINVAL)."""
    real_write = os.write
    refused = []

    def write(fd: int, data: memoryview) -> int:
        flags = appendfile.fcntl.fcntl(fd, appendfile.fcntl.F_GETFL)
        if flags & appendfile._DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(appendfile.os, "write", write)
    ops = [("w", [100, 5000]), ("b", 9000), ("w", [appendfile.STAGE + 3]), ("b", 10)]
    expected, f = run_ops(tmp_path / "f.bin", ops, direct=True, seed=1)
    if not appendfile._DIRECT:
        pytest.skip("no O_DIRECT on this system")
    assert refused and not f.direct
    assert (tmp_path / "f.bin").read_bytes() == expected


def test_tmpfs_falls_back_silently() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    path = shm / f"replicate-test-{os.getpid()}-{random.randrange(1 << 30)}"
    try:
        expected, _ = run_ops(path, [("w", [10]), ("b", 5000), ("w", [3])], direct=True, seed=2)
        assert path.read_bytes() == expected
    finally:
        path.unlink(missing_ok=True)


def test_abandon_leaves_no_pending_write(tmp_path: Path) -> None:
    f = AppendFile(tmp_path / "f.bin", direct=True)
    f.write([b"a" * (appendfile.STAGE + 1)])
    buf = take_buffer(100)
    f.write_buffer(buf, 100)
    f.abandon()
    assert f.fd == -1
    f.abandon()  # twice is harmless


def test_bytes_staged_when_direct_io_is_given_up_keep_their_place(tmp_path: Path) -> None:
    """The I/O thread may turn direct writes off while bytes wait in the stage: the next
    plain write must come after them."""
    path = tmp_path / "f.bin"
    f = AppendFile(path, direct=True)
    if not f.direct:
        pytest.skip("no O_DIRECT on this filesystem")
    f.write([b"staged first"])
    # as _write_direct does after a refused write
    fl = appendfile.fcntl.fcntl(f.fd, appendfile.fcntl.F_GETFL)
    appendfile.fcntl.fcntl(f.fd, appendfile.fcntl.F_SETFL, fl & ~appendfile._DIRECT)
    f._plain = True
    buf = take_buffer(5)
    buf[:5] = np.frombuffer(b"after", np.uint8)
    f.write_buffer(buf, 5)
    f.write([b"!"])
    f.close()
    assert path.read_bytes() == b"staged firstafter!"
