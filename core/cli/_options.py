"""Shared option types, the one stderr console and the progress factory of the CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err_console = Console(stderr=True)
out_console = Console()

# Defaults that name a part are None here and resolved in the command from ``guardkit.engine``'s DEFAULT_*
# table (imported there, not here: ``guardkit --help`` stays light); the help says what they resolve to
# (tests/test_cli.py checks it against the table).
MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", "-m", help="Protection method (see `guardkit plugins`; default: fr-cloak).",
    show_default=False)]
FaceModelOpt = Annotated[str, typer.Option(
    "--fr", help="Face recognition model(s) to protect against, comma-separated (an ensemble, for methods that take one).")]
FaceFinderOpt = Annotated[Optional[str], typer.Option(
    "--finder", help="Face finder (detector + landmarks) for every face model (default: each model's own).")]
EncoderOpt = Annotated[Optional[str], typer.Option("--encoder", help="Image encoder, for methods that attack one.")]
DisableOpt = Annotated[
    Optional[list[str]],
    typer.Option("--disable-plugin", "-p", help="Skip this plugin (entry-point name), like pytest's -p no:NAME. "
                                                "Repeatable; $GUARDKIT_DISABLE_PLUGINS does the same."),
]
WeightsDirOpt = Annotated[Optional[Path], typer.Option("--weights-dir", help="Folder of model weight files.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


def progress() -> Progress:
    """The one look of progress bars: on stderr, and off when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=not sys.stderr.isatty(), transient=False,
    )

def warn(text: str) -> None:
    """One yellow line on stderr (never wrapped, never read as markup)."""
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


EXIT_FAILED_PHOTOS = 1
EXIT_USAGE = 2


def one_line_errors(command):
    """Turn a ``GuardkitError`` into one red line on stderr and exit code 2 (no traceback)."""
    import functools

    from guardkit.errors import GuardkitError

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GuardkitError as exc:
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper
