"""The repository: the composition root tying config, object store and refs together.

A local repository is a ``.replicate/`` directory::

    config         JSON: format name and version, hash, chunker and codec parameters
    staging/       bytes captured by checkpoint() waiting to be processed, per process
    packs/ index/  the object store (see replicate.objects.store)
    refs/ logs/    refs and reflogs (see replicate.refs.store)
    heartbeats/    one file per running experiment
    cache/         the stat cache and other rebuildable caches
    tmp/           files being written (garbage after a crash)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from replicate.errors import ConfigError, IncompatibleRepository, RepositoryNotFound
from replicate.fsutil import create_exclusive
from replicate.objects import chunker
from replicate.refs.store import RefStore

if TYPE_CHECKING:  # imported on first use: `replicate ls` needs neither (nor numpy, sqlite3)
    from replicate.objects.statcache import StatCache
    from replicate.objects.store import ObjectStore

FORMAT = "replicate"
FORMAT_VERSION = 1
_OPEN_LOCK = threading.Lock()


def repository_config() -> dict[str, object]:
    """The config a new repository is created with."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "hash": "blake3-256",
        "chunker": chunker.PARAMS,
        "compression": {"codecs": ["raw", "zstd", "bg4-zstd"], "data_level": 1, "text_level": 3},
        "pack": {"data_target": 64 * 1024 * 1024},
    }


def _looks_like_predecessor(root: Path) -> bool:
    return (
        (root / "repository.json").exists()
        or (root / "metadata").is_dir()
        or (root / "checkpoints").is_dir()
    )


class Repository:
    """A local repository rooted at a ``.replicate`` directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = self._read_config()
        self._objects: ObjectStore | None = None
        self.refs = RefStore(root)
        self.heartbeats_dir = root / "heartbeats"
        self.staging_root = root / "staging"
        self._statcache: StatCache | None = None
        if self.staging_root.is_dir():
            clean_stale_staging(self.staging_root)

    @classmethod
    def init(cls, root: Path) -> Repository:
        """Create the repository at ``root`` if needed (safe to race), then open it."""
        root = Path(root)
        if root.exists() and not (root / "config").exists() and _looks_like_predecessor(root):
            raise IncompatibleRepository(_predecessor_message(root))
        for sub in ("packs", "index", "refs/experiments", "logs", "heartbeats", "tmp", "cache"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cfg = json.dumps(repository_config(), indent=1, sort_keys=True).encode() + b"\n"
        create_exclusive(root / "config", cfg)
        return cls(root)

    @classmethod
    def open(cls, root: Path) -> Repository:
        """Open an existing repository."""
        root = Path(root)
        if not (root / "config").is_file():
            if root.is_dir() and _looks_like_predecessor(root):
                raise IncompatibleRepository(_predecessor_message(root))
            raise RepositoryNotFound(
                f"no replicate repository at {root}; run a training script that calls "
                "replicate.init() first, or pass -R/--repository"
            )
        return cls(root)

    def _read_config(self) -> dict[str, object]:
        p = self.root / "config"
        try:
            cfg = json.loads(p.read_text())
        except FileNotFoundError:
            raise RepositoryNotFound(f"no replicate repository at {self.root}") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"unreadable repository config {p}: {e}") from None
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise IncompatibleRepository(f"{p} is not a replicate repository config")
        v = cfg.get("version")
        if not isinstance(v, int) or v > FORMAT_VERSION:
            raise IncompatibleRepository(
                f"the repository at {self.root} has format version {v}, newer than this "
                f"replicate understands ({FORMAT_VERSION}); upgrade: pip install -U replicate"
            )
        if cfg.get("chunker") != chunker.PARAMS:
            raise IncompatibleRepository(
                f"the repository at {self.root} uses different chunker parameters"
            )
        return cfg

    @property
    def objects(self) -> ObjectStore:
        """The object store (opened on first use)."""
        if self._objects is None:
            from replicate.objects.store import ObjectStore

            with _OPEN_LOCK:  # one store per repository, even when threads race here
                if self._objects is None:
                    self._objects = ObjectStore(self.root)
        return self._objects

    @property
    def statcache(self) -> StatCache:
        """The stat cache (opened on first use)."""
        if self._statcache is None:
            from replicate.objects.statcache import StatCache

            self._statcache = StatCache(self.root / "cache" / "stat.db", self.root / "tmp")
        return self._statcache

    def new_staging_dir(self) -> Path:
        """A fresh staging directory owned by this process (created on first use)."""
        return self.staging_root / (
            f"{os.getpid()}-{socket.gethostname()}-{secrets.token_hex(4)}"
        )

    def experiment_ref(self, experiment_id: bytes) -> str:
        """Ref name of an experiment's head."""
        return f"experiments/{experiment_id.hex()}"

    def close(self) -> None:
        """Release file descriptors and caches."""
        if self._objects is not None:
            self._objects.close()
        if self._statcache is not None:
            self._statcache.close()

    def __repr__(self) -> str:
        return f"Repository({os.fspath(self.root)!r})"


def _predecessor_message(root: Path) -> str:
    return (
        f"{root} holds a repository of replicate's predecessor (keepsake/replicate 0.x: "
        "metadata/ and checkpoints/*.tar.gz), which this version cannot read; move it aside "
        "or point replicate at another directory"
    )


def clean_stale_staging(root: Path) -> int:
    """Remove staging directories left by processes on this host that no longer run (their
    checkpoints were never committed, so nothing refers to them)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    host = socket.gethostname()
    removed = 0
    for n in names:
        pid_s, _, rest = n.partition("-")
        if not pid_s.isdigit() or rest.rsplit("-", 1)[0] != host:
            continue
        try:
            os.kill(int(pid_s), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(root / n, ignore_errors=True)
        removed += 1
    return removed
