"""``replicate rm ID...``: delete experiments, or the files of checkpoints."""

from __future__ import annotations

import sys

import click

from replicate.cli.app import Context, pass_ctx, repository_option
from replicate.cli.output import message


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def ask(question: str) -> bool | None:
    """Ask a yes/no question on stderr (default No); None when standard input is closed."""
    click.echo(f"{question} [y/N] ", nl=False, err=True)
    stdin = sys.stdin
    try:
        line = stdin.readline() if stdin is not None else ""
        tty = stdin is not None and stdin.isatty()
    except (OSError, ValueError):  # closed or unreadable standard input
        line, tty = "", False
    if not line or not tty:
        click.echo("", err=True)  # the answer was not echoed: end the prompt's line
    if not line:
        return None
    return line.strip().lower() in ("y", "yes")


@click.command("rm")
@click.argument("ids", metavar="ID...", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Delete without asking.")
@repository_option
@pass_ctx
def rm(ctx: Context, ids: tuple[str, ...], force: bool, repository: str | None) -> None:
    """Delete experiments, or the stored files of checkpoints.

    Deleting an experiment removes it and its history (the space is reclaimed by gc).
    Deleting a checkpoint removes its files; its metadata and metrics stay. IDs may be any
    unique prefix; all are checked before anything is deleted. For example, to delete every
    experiment whose best val_accuracy is below 0.2:

        replicate rm $(replicate ls -q --filter "val_accuracy < 0.2")
    """
    from replicate.objects.ids import short
    from replicate.remove import remove, resolve_targets

    ctx.use_repository(repository)
    repo = ctx.repo()
    if getattr(repo, "remote", None) is not None:
        raise click.UsageError(
            "rm changes the local repository; run it in the project (its deletions are pushed "
            "to the shared repository by `replicate push`)"
        )
    if getattr(repo, "local", None) is not None:
        repo = repo.local  # a project with a shared remote: rm applies locally, push sends it
    targets = resolve_targets(repo, list(ids))

    if not force:
        click.echo("You are about to delete the following:", err=True)
        for t in targets:
            running = ", running" if t.running else ""
            if t.kind == "experiment":
                n = "unknown number of" if t.checkpoints is None else len(t.checkpoints)
                count = f"{n} checkpoints" if n != 1 else "1 checkpoint"
                click.echo(f"* Experiment {short(t.id)} ({count}{running})", err=True)
            else:
                note = " (files already removed)" if t.already_removed else ""
                click.echo(f"* Checkpoint {short(t.id)}{note}", err=True)
        answer = ask("\nDo you want to continue?")
        if answer is None:
            click.echo("error: standard input is closed, so rm cannot ask for confirmation; "
                       "nothing was deleted (pass -f to delete without asking)", err=True)
            sys.exit(1)
        if not answer:
            message("Aborted: nothing was deleted.")
            sys.exit(1)

    remove(repo, targets)
    for t in targets:
        if t.kind == "experiment":
            n = "" if t.checkpoints is None else f" and its {_plural(len(t.checkpoints), 'checkpoint')}"
            message(f"Removed experiment {short(t.id)}{n}")
            if t.running:
                message(f"Experiment {short(t.id)} was running: its next checkpoint will fail "
                        "(with a warning; training goes on)")
        elif t.already_removed:
            message(f"The files of checkpoint {short(t.id)} were already removed")
        else:
            message(f"Removed the files of checkpoint {short(t.id)} (its metadata and metrics "
                    "stay)")
