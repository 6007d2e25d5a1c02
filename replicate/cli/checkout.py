"""``replicate checkout ID``: restore an experiment's code and a checkpoint's files.

Safe by default: without ``-f`` nothing is overwritten whose content differs from what would be
written (the conflicting files are listed and nothing at all is written), and extra files in
the target are never deleted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from replicate.cli.app import Context, pass_ctx, repository_option
from replicate.cli.output import message


def _where(out: Path, rel: str | None) -> str:
    if not rel or rel == ".":
        return str(out)
    return str(out / rel)


@click.command("checkout")
@click.argument("id_", metavar="ID")
@click.option("-o", "--output-directory", "output", metavar="DIR", default=None,
              help="Directory to write into (default: the project directory); created if "
                   "missing.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite files whose content differs from the checkout.")
@click.option("--path", "subpath", metavar="P", default=None,
              help="Check out only this file or directory (project-relative).")
@repository_option
@pass_ctx
def checkout(ctx: Context, id_: str, output: str | None, force: bool, subpath: str | None,
             repository: str | None) -> None:
    """Copy an experiment's code and a checkpoint's files into a directory.

    ID is a checkpoint, or an experiment (its best checkpoint, else its latest; code only when
    it has none). The experiment's code is written first, then the checkpoint's files on top.
    Files that already have the right content are left alone; extra files are never deleted.
    """
    from replicate.checkout import CheckoutResult
    from replicate.diff import pick
    from replicate.errors import CheckoutConflict, DoesNotExist

    ctx.use_repository(repository)
    p = pick(ctx.project(), id_)
    exp, cp = p.experiment, p.checkpoint
    out = Path(output).expanduser() if output else ctx.project_dir()
    if os.path.lexists(out) and not out.is_dir():
        raise click.BadParameter(f"{out} exists and is not a directory",
                                 param_hint="'-o' / '--output-directory'")
    out = out.resolve()

    if cp is None:
        message(f"Checking out files from experiment {exp.short_id()}")
    elif p.how == "checkpoint":
        message(f"Checking out files from checkpoint {cp.short_id()} and its experiment "
                f"{exp.short_id()}")
    else:
        message(f"Checking out files from experiment {exp.short_id()} and its {p.how} "
                f"checkpoint {cp.short_id()}")

    has_code = exp.path is not None
    removed = cp is not None and cp.files_removed
    if removed:
        assert cp is not None
        if not has_code:
            raise DoesNotExist(
                f"the files of checkpoint {cp.short_id()} were removed (replicate rm) and its "
                f"experiment {exp.short_id()} saved no code: there is nothing to check out"
            )
        message(f"The files of checkpoint {cp.short_id()} were removed (replicate rm): "
                "checking out only the experiment's code")

    try:
        res: CheckoutResult = (cp or exp).checkout(out, force=force, path=subpath)
    except CheckoutConflict as e:
        n = len(e.paths)
        click.echo(
            f"error: checkout would overwrite {n} file{'s' if n != 1 else ''} in {out} whose "
            "content differs; nothing was written (use -f to overwrite):", err=True
        )
        for path in e.paths:
            click.echo(f"  {path}", err=True)
        sys.exit(1)
    except DoesNotExist as e:
        if subpath is not None and cp is not None and removed:
            raise DoesNotExist(
                f"{e} (the files of checkpoint {cp.short_id()} were removed)"
            ) from None
        raise

    if subpath is not None:
        message(f'Copied {subpath} to "{_where(out, subpath)}"')
    else:
        if has_code:
            message(f'Copied files from experiment {exp.short_id()} to '
                    f'"{_where(out, exp.path)}"')
        if cp is not None and not removed and cp.path is not None:
            message(f'Copied files from checkpoint {cp.short_id()} to "{_where(out, cp.path)}"')
    w, u = len(res.written), len(res.unchanged)
    message(f"{w} file{'s' if w != 1 else ''} written, {u} already up to date")
    message(f"If you want to run this experiment again, this is how it was run:\n\n"
            f"  {exp.command}")
