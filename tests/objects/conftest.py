"""Fixtures for the object-store tests: a fresh repository and helpers to corrupt its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicate.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A new, empty repository (a ``.replicate`` directory) under ``tmp_path``."""
    r = Repository.init(tmp_path / ".replicate")
    yield r
    r.close()


def _flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert len(b) == 1, f"offset {offset} is past the end of {path}"
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


@pytest.fixture
def flip():
    """``flip(path, offset, mask=1)``: XOR one byte of a file in place (call again to undo)."""
    return _flip_byte
