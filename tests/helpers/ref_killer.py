"""Child process of tests/refs/test_refs_store.py: update a ref and SIGKILL itself at a chosen
point inside ``RefStore.update`` (fault injection), leaving whatever a kill -9 there leaves.

Usage: ref_killer.py REPO REF_NAME NEW_HEX POINT
    POINT = "locked":   right after the lock file appears
            "logging":  while appending to the reflog
            "renaming": right before the new value is renamed over the ref (after the reflog
                        append and the fsync of the new value)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from replicate.refs.store import RefStore


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    root, name, new_hex, point = sys.argv[1:5]
    real_open, real_replace, real_link = os.open, os.replace, os.link

    def dying_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, *args, **kwargs)
        if point == "logging" and f"{os.sep}logs{os.sep}" in str(path):
            die()
        return fd

    def dying_link(src, dst):  # type: ignore[no-untyped-def]
        real_link(src, dst)
        if point == "locked" and str(dst).endswith(".lock"):
            die()

    def dying_replace(src, dst):  # type: ignore[no-untyped-def]
        if point == "renaming" and str(dst).endswith(name.split("/")[-1]):
            die()
        return real_replace(src, dst)

    # the refs and fsutil modules use these via `os.`
    os.open, os.replace, os.link = dying_open, dying_replace, dying_link
    RefStore(Path(root)).update(name, bytes.fromhex(new_hex))
    sys.exit("not killed")


if __name__ == "__main__":
    main()
