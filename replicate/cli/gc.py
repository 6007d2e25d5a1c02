"""``replicate gc``."""

from __future__ import annotations

import json
import sys

import click

from replicate.cli.app import Context, pass_ctx, repository_option
from replicate.cli.output import message


def _human(n: float) -> str:
    neg = n < 0
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            s = f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
            return ("-" if neg else "") + s
        n /= 1024
    return str(n)  # pragma: no cover


@click.command("gc")
@click.option("--dry-run", "-n", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--grace", default="24h", metavar="DURATION", show_default=True,
              help="Keep unreferenced objects younger than this (e.g. 24h, 30m, 7d, 0). "
                   "Locally, 0 is safe when no other program writes into .replicate/ behind "
                   "replicate's back; see docs/gc.md.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@repository_option
@pass_ctx
def gc(ctx: Context, dry_run: bool, grace: str, as_json: bool, repository: str | None) -> None:
    """Reclaim space: remove objects that no experiment, checkpoint or recent reflog entry
    references (for example after `replicate rm`), keeping anything younger than the grace
    period. Safe while training jobs keep writing and pushing. With -R URL it collects a
    shared repository: unreferenced objects are first condemned and removed by a later run,
    once every push that was running has finished."""
    from replicate.gc import parse_duration

    try:
        grace_ns = parse_duration(grace)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--grace") from None
    ctx.use_repository(repository)
    repo = ctx.repo()
    if getattr(repo, "remote", None) is not None or getattr(repo, "remote_repo", None) is not None:
        from replicate.remote_gc import gc as remote_gc

        rrepo = getattr(repo, "remote_repo", None) or repo
        if getattr(repo, "remote_repo", None) is not None and not repository:
            repo = repo.local  # a project with a shared remote: gc acts locally unless -R
        else:
            res = remote_gc(rrepo, grace_ns=grace_ns, dry_run=dry_run)
            _print(res, as_json, rrepo.url)
            return
    from replicate.gc import gc as local_gc

    res = local_gc(repo, grace_ns=grace_ns, dry_run=dry_run)
    _print(res, as_json, str(repo.root))


def _print(res: object, as_json: bool, where: str) -> None:
    from dataclasses import asdict

    d = asdict(res)  # type: ignore[call-overload]
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        dry = d["dry_run"]
        verb = "would remove" if dry else "removed"
        click.echo(f"{where}:")
        click.echo(f"  kept     {d['live_objects']} reachable objects ({_human(d['live_bytes'])})"
                   + (f" and {d['kept_young_objects']} unreferenced objects younger than the "
                      "grace period" if d["kept_young_objects"] else ""))
        click.echo(f"  {verb:<8} {d['removed_objects']} objects ({_human(d['removed_bytes'])}); "
                   f"{d['packs_deleted']} packs deleted, {d['packs_repacked']} repacked"
                   + (f"; {d['tmp_files_removed']} temporary files" if d["tmp_files_removed"]
                      else ""))
        click.echo(f"  {'would free' if dry else 'freed'} {_human(d['bytes_freed'])}")
        if d["condemned_objects"] or d["waiting_sets"]:
            what = "would condemn" if dry else "condemned"
            click.echo(f"  {what} {d['condemned_objects']} unreferenced objects "
                       f"({_human(d['condemned_bytes'])})"
                       + (f"; {d['waiting_sets']} condemned set(s) wait until the pushes "
                          "running when they were written finish (or the grace period ends); "
                          "a later gc removes them" if d["waiting_sets"] else ""))
    for e in d["errors"]:
        message(f"error: {e}")
    if d["errors"]:
        sys.exit(1)
