"""Run the CLI as a user would: in process through ``replicate.cli.app.main`` (its error
handling and exit codes, streams captured by click's test isolation), or as a real subprocess
(``python -m replicate``)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from replicate.cli.app import main

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """Exit code and captured output of one command."""

    code: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:  # readable assertion failures
        return f"Run(code={self.code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``replicate ARGS`` in this process. ``input`` is standard input (None: closed)."""
    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _mixed):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.stdout.flush()  # what was written without click.echo (tracebacks)
        sys.stderr.flush()
        return Run(code, out.getvalue().decode(), err.getvalue().decode())


def run_subprocess(*args: str, cwd: Path | None = None, input: str | None = None,
                   timeout: float = 120) -> Run:
    """Run ``python -m replicate ARGS`` as a subprocess (stdin closed unless ``input``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    p = subprocess.run(
        [sys.executable, "-m", "replicate", *args],
        cwd=cwd,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def one_line_error(r: Run) -> str:
    """Assert ``r`` failed with exactly one line on stderr (after any status messages) and no
    traceback; return that line."""
    assert r.code != 0, r
    assert "Traceback" not in r.stderr, r
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("═══╡ ")]
    assert len(lines) == 1, r
    assert lines[0].startswith("error: "), r
    return lines[0]


def flip_byte_in_chunk(repo_dir: Path, oid: bytes) -> None:
    """Corrupt one stored byte of object ``oid`` in its pack (in place)."""
    from replicate.repository import Repository

    repo = Repository.open(repo_dir)
    loc = repo.objects.locate(oid)
    path = repo.objects.pack_path(loc.pack)
    repo.close()
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        b = f.read(1)
        f.seek(loc.offset + loc.stored_len // 2)
        f.write(bytes([b[0] ^ 0xFF]))
