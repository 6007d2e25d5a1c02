"""Shared code of the sync tests (tests/test_sync.py, tests/test_sync_crash.py,
tests/test_two_machines.py): running the CLI as a user would, building local experiments through
the public API, and an independent check that every remote ref reaches only stored objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent


@dataclass
class Run:
    """Exit code and output of one command."""

    code: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:  # readable assertion failures
        return f"Run(code={self.code}, stdout={self.stdout!r}, stderr={self.stderr!r})"

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env(cache_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI child: the test's (endpoints and keys set by the fixtures),
    the source tree on PYTHONPATH, and its own user cache directory when given."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1", PYTHONUNBUFFERED="1")
    env.pop("REPLICATE_MEMORY_BUDGET", None)
    if cache_home is not None:
        env["XDG_CACHE_HOME"] = str(cache_home)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> Run:
    """``python -m replicate ARGS`` in ``cwd`` (stdin closed)."""
    p = subprocess.run(
        [sys.executable, "-m", "replicate", *args],
        cwd=cwd, env=env if env is not None else cli_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def random_weights(nbytes: int, seed: int) -> bytes:
    """``nbytes`` of float32 random normal values (incompressible, like trained weights)."""
    return np.random.default_rng(seed).standard_normal(nbytes // 4, dtype=np.float32).tobytes()


def record_experiment(project: Path, steps: list[dict[str, bytes]], params: dict[str, Any],
                      metric_base: float = 1.0) -> tuple[str, list[str]]:
    """Record one experiment in ``project``'s local repository through the public API: each
    step writes the given files (relative path -> bytes) under ``project`` and checkpoints the
    top-level path they share. Returns (experiment id, checkpoint ids)."""
    import replicate

    exp = replicate.Project(directory=project).experiments.create(
        path=None, params=params, disable_heartbeat=True
    )
    cids = []
    for i, files in enumerate(steps):
        tops = {rel.split("/", 1)[0] for rel in files}
        assert len(tops) == 1, tops
        for rel, data in files.items():
            p = project / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        cp = exp.checkpoint(path=tops.pop(), metrics={"loss": metric_base / (i + 1)},
                            primary_metric=("loss", "minimize"), wait=True)
        assert cp is not None
        cids.append(cp.id)
    exp.stop()
    return exp.id, cids


def fresh_prefix(url: str) -> str:
    """Another repository next to ``url`` (same bucket, new prefix)."""
    return f"{url.rstrip('/')}-{uuid.uuid4().hex[:8]}"


def remote_problems(url: str, cache_dir: Path) -> list[str]:
    """Check, independently of fsck, that every remote ref head reaches only objects that are
    in the remote's index and whose pack exists. Returns the problems found (empty: fine)."""
    from replicate.objects import codec
    from replicate.objects.codec import Checkpoint, Experiment, File, Segment, Tree
    from replicate.remote_repo import (
        REFS,
        RemoteRepository,
        pack_key,
        parse_claim_key,
        parse_ref_key,
    )
    from replicate.remotes import open_remote

    remote = open_remote(url)
    rrepo = RemoteRepository(remote.url, remote, cache_dir)
    packs = {k.key for k in remote.list("packs/")}
    keys = [k.key for k in remote.list(REFS)]
    claims: set[tuple[bytes, int]] = set()
    named: dict[tuple[bytes, int], int] = {}
    for key in keys:
        c = parse_claim_key(key)
        n = parse_ref_key(key)
        assert c is not None or n is not None, key
        if c is not None:
            claims.add(c)
        elif n is not None:
            named[n[:2]] = named.get(n[:2], 0) + 1
    problems: list[str] = []
    for (eid, seq), count in sorted(named.items()):
        if (eid, seq) not in claims:
            problems.append(f"ref log entry {seq} of {eid.hex()[:7]} has a name but no claim")
        if count > 1:
            problems.append(f"ref log entry {seq} of {eid.hex()[:7]} names {count} heads")
    heads = rrepo.refs.resolve(keys)
    tombstones = rrepo.refs.tombstones()  # their files may be gone: not reached
    store = rrepo.objects
    store.refresh()
    seen: set[bytes] = set()
    for eid, (_seq, head) in sorted(heads.items()):
        if head is None:
            continue
        todo = [head]
        while todo:
            oid = todo.pop()
            if oid in seen:
                continue
            seen.add(oid)
            loc = store.index.lookup(oid)
            if loc is None:
                problems.append(f"{oid.hex()} (from ref {eid.hex()[:7]}) is not in the index")
                continue
            if pack_key(loc.pack) not in packs:
                problems.append(f"{oid.hex()} is indexed in missing pack {loc.pack.hex()}")
                continue
            if loc.type == codec.CHUNK:
                continue
            obj = store.read_object(oid)
            if isinstance(obj, Checkpoint):
                files = None if oid in tombstones else obj.files
                todo += [obj.experiment] + [x for x in (obj.parent, files) if x is not None]
            elif isinstance(obj, Experiment) and obj.code is not None:
                todo.append(obj.code)
            elif isinstance(obj, Tree):
                todo += [e.id for e in obj.entries]
            elif isinstance(obj, File):
                todo += [c.id for c in obj.chunks] + [s.id for s in obj.segments]
            elif isinstance(obj, Segment):
                todo += [c.id for c in obj.chunks]
    rrepo.close()
    return problems


def remote_heads(url: str) -> dict[str, str | None]:
    """Every experiment's head on the remote (hex), read from the ref logs."""
    from replicate.remote_repo import RemoteRefs
    from replicate.remotes import open_remote

    heads = RemoteRefs(open_remote(url)).heads(refresh=True)
    return {e.hex(): (h.hex() if h else None) for e, (_s, h) in heads.items()}


def local_heads(project: Path) -> dict[str, str]:
    """Every experiment's head in ``project``'s local repository (hex)."""
    from replicate.repository import Repository

    repo = Repository.open(project / ".replicate")
    return {n.split("/", 1)[1]: h.hex() for n, h in repo.refs.list("experiments").items()}
