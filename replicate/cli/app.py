"""The root command group, global options and error handling."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from replicate.version import __version__

if TYPE_CHECKING:
    from replicate.project import Project
    from replicate.repository import Repository

COMMANDS = {
    # name: (module, function, one-line help shown by `replicate --help`)
    "ls": ("replicate.cli.ls", "ls", "List experiments."),
    "ps": ("replicate.cli.ls", "ps", "List running experiments."),
    "show": ("replicate.cli.show", "show", "Show an experiment or a checkpoint."),
    "log": ("replicate.cli.show", "log", "List an experiment's checkpoints, newest first."),
    "diff": ("replicate.cli.diff", "diff", "Compare two checkpoints or experiments."),
    "checkout": ("replicate.cli.checkout", "checkout",
                 "Restore an experiment's code and a checkpoint's files."),
    "rm": ("replicate.cli.rm", "rm", "Delete experiments or checkpoints' files."),
    "du": ("replicate.cli.maint", "du", "Show how much space the repository uses."),
    "fsck": ("replicate.cli.maint", "fsck", "Verify the repository's integrity."),
    "gc": ("replicate.cli.gc", "gc", "Reclaim space that nothing references any more."),
    "push": ("replicate.cli.sync", "push", "Upload experiments to a shared repository."),
    "pull": ("replicate.cli.sync", "pull", "Download experiments from a shared repository."),
}
ALIASES = {"list": "ls", "processes": "ps", "delete": "rm"}


class Context:
    """What every command gets: where the project and repository are."""

    def __init__(self, directory: str | None, repository: str | None, verbose: bool) -> None:
        self.directory = directory
        self.repository = repository
        self.verbose = verbose
        self._project: Project | None = None

    def use_repository(self, repository: str | None) -> None:
        """A command-level -R overrides the global one."""
        if repository:
            self.repository = repository
            self._project = None

    def project(self) -> Project:
        """The project (and repository) the command works on."""
        from replicate.project import Project

        if self._project is None:
            if self.repository:
                d = self.directory or os.getcwd()
                self._project = Project(directory=d, repository=self.repository)
            else:
                self._project = Project(directory=self.directory)
        return self._project

    def repo(self) -> Repository:
        """The repository (must exist)."""
        return self.project().repo()

    def project_dir(self) -> Path:
        """The project directory."""
        return self.project().directory


pass_ctx = click.make_pass_decorator(Context)


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (fast --help and startup)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        name = ALIASES.get(name, name)
        if name not in COMMANDS:
            return None
        import importlib

        mod, fn, _help = COMMANDS[name]
        return getattr(importlib.import_module(mod), fn)  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the static table (importing none of them)."""
        rows = [(n, COMMANDS[n][2]) for n in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else name), cmd, rest


def repository_option(f: Any) -> Any:
    """-R/--repository on a read command (also accepted before the command name)."""
    return click.option(
        "-R", "--repository", "repository", metavar="URL", default=None,
        help="Read this repository (a path or file:// URL) instead of the project's.",
    )(f)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-D", "--project-directory", "directory", metavar="DIR", default=None,
              help="Project directory (default: nearest parent with replicate.yaml or "
                   ".replicate/, else the working directory).")
@click.option("-R", "--repository", "repository", metavar="URL", default=None,
              help="Repository to use instead of the project's (a path or file:// URL).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug output.")
@click.version_option(__version__, "--version", prog_name="replicate")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, repository: str | None, verbose: bool) -> None:
    """Version control for machine learning.

    Record experiments with replicate.init() and experiment.checkpoint() in your training
    script; list, compare and restore them with these commands.
    """
    ctx.obj = Context(directory, repository, verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the CLI and turns errors into one line + an exit code."""
    from replicate.cli.errors import INTERRUPTED, exit_code

    args = sys.argv[1:] if argv is None else argv
    verbose = any(a in ("-v", "--verbose") for a in args)
    try:
        rv = cli.main(args=args, prog_name="replicate", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(INTERRUPTED)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
    except Exception as e:  # a user error: one line, no traceback (unless -v)
        from replicate.errors import ReplicateError

        if verbose or not isinstance(e, (ReplicateError, ValueError, OSError)):
            if verbose:
                import traceback

                traceback.print_exc()
            else:
                click.echo(f"error: unexpected {type(e).__name__}: {e} (run with -v for details)",
                           err=True)
            sys.exit(exit_code(e))
        from replicate.errors import CorruptObjectError

        if isinstance(e, CorruptObjectError):
            click.echo(f"error: the repository is corrupt: {e}; run 'replicate fsck --read-data'",
                       err=True)
            sys.exit(exit_code(e))
        click.echo(f"error: {e}", err=True)
        sys.exit(exit_code(e))
