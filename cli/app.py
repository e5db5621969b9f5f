"""The `aekit` application: the Typer app, and how errors the user can fix become one line and exit code 2.

Installed as `aekit.cli`. Business logic lives in the library; a command turns options into a
library call and the result into tables (cli/render.py). The commands live by group in
train_cmd.py, export_cmd.py, edge_cmd.py and data_cmd.py; cli/main.py registers them in order.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Annotated

import typer
import typer.core
import typer.exceptions
from rich.markup import escape

from aekit import AekitError, __version__
from aekit.cli.render import err_console
from aekit.training.loop import TrainingInterrupted

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter (CUDA probing
# on GPU-less machines, XLA notices) off the user's terminal. Set it to 0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


EXIT_USAGE = 2
WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES}


class OneLineErrors(typer.core.TyperGroup):
    """Typer's parsing, with its usage errors as one `error: ...` line and exit code 2 (no usage box)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.exceptions.TyperException as exc:  # usage errors (exit code 2), bad parameters, file errors
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "aekit"
            message = " ".join(exc.format_message().split())
            message += "" if message.endswith((".", "?", "!")) else "."
            if message != ".":  # an empty message: `aekit` alone, whose help was just shown
                err_console.print(
                    f"[bold red]error:[/] {escape(message)} Run '{where} --help' for the options.",
                    highlight=False,
                    soft_wrap=True,
                )
            code = exc.exit_code
        except typer.exceptions.Abort:
            err_console.print("[yellow]interrupted[/]")
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="aekit",
    help="Train convolutional autoencoders, export them to ONNX/TFLite, benchmark the exports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow now (quietly, see aekit.lazy), so a command that needs it fails at once where it is missing."""
    from aekit.lazy import tf

    tf.load()


def user_errors(command, needs_tensorflow: bool = True):
    """Turns AekitError into a one-line message and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            if needs_tensorflow:
                import_tensorflow_quietly()
            return command(*args, **kwargs)
        except AekitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except TrainingInterrupted as exc:
            err_console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except OSError as exc:  # a full disk, a file-size limit, a folder that became read-only mid-way
            if exc.errno not in WRITE_ERRORS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            err_console.print(
                f"[bold red]error:[/] Could not write{escape(where)}: {exc.strerror}. Free space, or pass an output "
                "on another disk; files are written under temporary names, so none is left looking finished.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def edge_errors(command):
    """user_errors for the edge commands, which must run where TensorFlow is not installed."""
    return user_errors(command, needs_tensorflow=False)


def positive(value: int, option: str) -> int:
    if value < 1:
        raise AekitError(f"{option} must be at least 1, got {value}.")
    return value


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print aekit's version and exit.")] = False,
):
    if version:
        print(__version__)
        raise typer.Exit(0)


def main() -> None:  # pragma: no cover - `python -m aekit.cli`
    sys.exit(app())
