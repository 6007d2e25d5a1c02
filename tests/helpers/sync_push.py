"""Child process of tests/test_sync_crash.py: pushes a project's local repository to a remote
exactly as ``replicate push URL`` does (same remote, same cache directory, same journal), and
announces every remote write on stdout just before it starts, so that the parent can SIGKILL it
at a chosen step:

    start                       the push is about to begin
    put_file packs/xx/<id>.pack  a pack upload starts
    put index/<name>.idx        the index segment
    put refs/experiments/...    a ref log entry (the commit point of one experiment)
    put catalog/log/...         the catalog record
    done                        the push returned

Usage: sync_push.py PROJECT_DIR URL
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from replicate import sync
from replicate.remote_repo import RemoteRepository
from replicate.remotes import open_remote
from replicate.repository import Repository


class Announcing:
    """A Remote that prints each write before passing it on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.properties = inner.properties

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ("put", "put_file", "delete"):
            return method

        def call(key: str, *args: Any, **kwargs: Any) -> Any:
            print(f"{name} {key}", flush=True)
            return method(key, *args, **kwargs)

        return call


def main() -> None:
    project, url = Path(sys.argv[1]), sys.argv[2]
    repo = Repository.open(project / ".replicate")
    remote = Announcing(open_remote(url, project))
    rrepo = RemoteRepository(remote.url, remote, sync.remote_cache_dir(repo, remote.url))
    print("start", flush=True)
    res = sync.push(repo, rrepo)
    print(f"done {len(res.experiments)} {res.packs}", flush=True)


if __name__ == "__main__":
    main()
