"""Maintenance commands: ``replicate du`` and ``replicate fsck``."""

from __future__ import annotations

import sys

import click

from replicate.cli.app import Context, pass_ctx, repository_option
from replicate.cli.output import dumps, message, table


def human_bytes(n: int) -> str:
    """'512 B', '1.5 KiB', '100.0 MiB', '1.0 GiB'."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        size /= 1024
        if size < 1024 or unit == "PiB":
            return f"{size:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@click.command("du")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (exact bytes).")
@repository_option
@pass_ctx
def du(ctx: Context, as_json: bool, repository: str | None) -> None:
    """Show how much space the repository uses.

    Logical: every checkpoint's files counted in full, plus each experiment's code (what
    plain copies would take). Unique: the distinct chunks of all of it (dedup ratio =
    logical / unique). Stored: the size of the pack files on disk (compression ratio =
    unique / the stored size of those chunks).
    """
    from replicate.usage import usage

    ctx.use_repository(repository)
    u = usage(ctx.repo())
    if as_json:
        click.echo(dumps({
            "logical_bytes": u.logical_bytes,
            "unique_bytes": u.unique_bytes,
            "stored_entries_bytes": u.stored_entries_bytes,
            "stored_bytes": u.stored_bytes,
            "dedup_ratio": u.dedup_ratio,
            "compression_ratio": u.compression_ratio,
            "experiments": u.experiments,
            "checkpoints": u.checkpoints,
            "removed_checkpoints": u.removed_checkpoints,
            "chunks": u.chunks,
            "packs": u.packs,
        }))
        return
    removed = f", {u.removed_checkpoints} with files removed" if u.removed_checkpoints else ""
    rows = [
        ["Logical size:", human_bytes(u.logical_bytes),
         f"{_plural(u.experiments, 'experiment')}, {_plural(u.checkpoints, 'checkpoint')}"
         f"{removed}; every file counted in full"],
        ["Unique data:", human_bytes(u.unique_bytes),
         f"{_plural(u.chunks, 'chunk')}; dedup ratio {u.dedup_ratio:.2f}"],
        ["Stored:", human_bytes(u.stored_bytes),
         f"{_plural(u.packs, 'pack')} on disk; compression ratio {u.compression_ratio:.2f}"],
    ]
    click.echo(table(rows), nl=False)
    if u.missing_chunks:
        message(f"{_plural(u.missing_chunks, 'chunk')} referenced but not in the index: "
                "run replicate fsck")


@click.command("fsck")
@click.option("--read-data", is_flag=True,
              help="Also re-read and re-hash every stored chunk and object (slow).")
@click.option("--rebuild-index", is_flag=True,
              help="Rebuild the index from the pack files first, then check.")
@repository_option
@pass_ctx
def fsck(ctx: Context, read_data: bool, rebuild_index: bool, repository: str | None) -> None:
    """Verify the repository: packs, index, refs and that everything they reach exists.

    Exits 0 when no error was found (warnings, such as leftovers of interrupted writes that gc
    collects, are fine) and 1 otherwise.
    """
    from replicate.fsck import fsck as run_fsck
    from replicate.fsck import rebuild_index as run_rebuild

    ctx.use_repository(repository)
    repo = ctx.repo()
    if rebuild_index:
        packs, objects = run_rebuild(repo)
        message(f"Rebuilt the index from {_plural(packs, 'pack')} ({_plural(objects, 'object')})")
    rep = run_fsck(repo, read_data=read_data)
    click.echo(
        f"checked {_plural(rep.packs, 'pack')}, {_plural(rep.objects, 'object')}, "
        f"{_plural(rep.refs, 'ref')}; {rep.reachable} reachable"
        + (" (data re-read and verified)" if read_data else "")
    )
    for w in rep.warnings:
        click.echo(f"warning: {w}")
    for e in rep.errors:
        click.echo(f"error: {e}")
    if rep.errors:
        click.echo(f"fsck found {_plural(len(rep.errors), 'error')}"
                   + (f" and {_plural(len(rep.warnings), 'warning')}" if rep.warnings else ""))
        sys.exit(1)
    click.echo("no errors found"
               + (f" ({_plural(len(rep.warnings), 'warning')})" if rep.warnings else ""))
