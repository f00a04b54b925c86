"""The `transferlab` Typer app, its consoles and its entry point; commands live in sibling modules."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from transferlab import __version__
from transferlab.errors import TransferlabError

EXCLUDE_HELP = "Exclude list from `doctor --write-exclude` (one path per line, relative to DATA; '#' comments)."

app = typer.Typer(
    help="Transfer learning for image classification on an ordinary CPU.\n\n"
    "Typical path: doctor (is the data sane?) -> probe (pretrained features + a classical "
    "classifier, minutes on a CPU) or finetune -> report / explain -> predict / serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (logs, CI) gets wide lines rather than 80-column tables squashed into ellipses.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transferlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Transfer learning for image classification on an ordinary CPU."""


def main() -> None:
    # A file name that is not UTF-8 must print (as an escape), not end the command.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        # Before any command loads torch (its OpenMP runtime reads the thread count once):
        # TRANSFERLAB_THREADS=N, or =auto for fewer threads when other processes keep the CPUs
        # busy (one line says so); a bad value is a one-line error.
        from transferlab.threads import apply_thread_policy

        apply_thread_policy(log=lambda line: err_console.print(line, highlight=False, markup=False, soft_wrap=True))
        app()
    except TransferlabError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except MemoryError:
        err_console.print("error: out of memory (try a smaller --batch-size or --resolution)", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns Ctrl-C into a silent exit 130: say what happened
            err_console.print("interrupted", highlight=False)
        raise
