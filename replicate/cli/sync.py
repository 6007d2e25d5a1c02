"""``replicate push`` and ``replicate pull``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click

from replicate.cli.app import Context, pass_ctx
from replicate.cli.output import message


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def progress_bar(verb: str) -> Callable[[str, int, int], None]:
    """A one-line progress display on stderr, only on a terminal."""
    if not sys.stderr.isatty():
        return lambda _p, _d, _t: None
    last = [0.0]

    def show(_phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.1 and done < total:
            return
        last[0] = now
        pct = 100 * done // total if total else 100
        sys.stderr.write(f"\r{verb} {pct:3d}% ({_human(done)} of {_human(total)})\033[K")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _split(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    if args and ("://" in args[0] or "/" in args[0] or args[0].startswith(".")):
        return args[0], list(args[1:])
    return None, list(args)


def _setup(ctx: Context, args: tuple[str, ...]) -> tuple[object, object, list[bytes] | None]:
    from replicate.history import resolve_experiment
    from replicate.sync import open_remote_repo

    url, ids = _split(args)
    project = ctx.project()
    url = url or project.remote_url()
    if url is None:
        raise click.UsageError(
            "no repository to sync with: pass a URL (replicate push s3://bucket/prefix) or set "
            "'repository:' in replicate.yaml"
        )
    repo = project.local_repo(create=True)
    rrepo = open_remote_repo(repo, url, project.directory)
    eids = [resolve_experiment(repo, i) for i in ids] if ids else None
    return repo, rrepo, eids


def _report(verb: str, res: object, url: str) -> int:
    from replicate.sync import TransferResult

    assert isinstance(res, TransferResult)
    if res.resumed_packs:
        message(f"Finished an interrupted push ({res.resumed_packs} pack(s))")
    if res.up_to_date and not res.skipped:
        message(f"Everything up to date with {url}")
    else:
        n = len(res.experiments)
        message(f"{verb} {n} experiment{'s' if n != 1 else ''} ({res.packs} pack(s), "
                f"{_human(res.bytes)}) {'to' if verb == 'Pushed' else 'from'} {url}")
    for s in res.skipped:
        message(f"Skipped {s}")
    return 1 if res.skipped else 0


@click.command("push")
@click.argument("args", nargs=-1, metavar="[URL] [ID]...")
@pass_ctx
def push(ctx: Context, args: tuple[str, ...]) -> None:
    """Upload experiments to a shared repository.

    URL defaults to the 'repository:' of replicate.yaml. With IDs, only those experiments
    are pushed. Only missing data is sent; an interrupted push resumes where it stopped.
    """
    from replicate.sync import push as do_push

    repo, rrepo, eids = _setup(ctx, args)
    res = do_push(repo, rrepo, eids, progress=progress_bar("Uploading"))  # type: ignore[arg-type]
    sys.exit(_report("Pushed", res, rrepo.url))  # type: ignore[attr-defined]


@click.command("pull")
@click.argument("args", nargs=-1, metavar="[URL] [ID]...")
@pass_ctx
def pull(ctx: Context, args: tuple[str, ...]) -> None:
    """Download experiments from a shared repository into the local one, so everything works
    offline afterwards.

    URL defaults to the 'repository:' of replicate.yaml. With IDs, only those experiments
    are pulled.
    """
    from replicate.history import resolve_experiment
    from replicate.sync import open_remote_repo
    from replicate.sync import pull as do_pull

    url, ids = _split(args)
    project = ctx.project()
    url = url or project.remote_url()
    if url is None:
        raise click.UsageError(
            "no repository to pull from: pass a URL or set 'repository:' in replicate.yaml"
        )
    repo = project.local_repo(create=True)
    rrepo = open_remote_repo(repo, url, project.directory)
    eids = None
    if ids:
        from replicate.remote_repo import RemoteRepository

        r = RemoteRepository(rrepo.url, rrepo.remote, rrepo.root)
        eids = [resolve_experiment(r, i) for i in ids]
    res = do_pull(repo, rrepo, eids, progress=progress_bar("Downloading"))
    sys.exit(_report("Pulled", res, rrepo.url))
