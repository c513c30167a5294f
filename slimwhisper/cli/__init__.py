"""The ``slimwhisper`` command: thin typer commands that build a config and call the library.

Each stage keeps its commands in its own module here (``core``: transcribe/eval/synth-data;
``compress``: sensitivity/prune; ``train``: recover/tspar; ``export``; ``bench``: bench/run). Heavy
imports (torch, transformers, onnxruntime) happen inside the command functions, so
``slimwhisper --help`` stays fast.

Errors are handled in ONE place, ``_Group.invoke``: every error a user can cause derives from
``slimwhisper.errors.UserError`` and ends as one ``error:`` line on stderr (followed only by an
indented list of problems), exit code 2; ``SLIMWHISPER_DEBUG=1`` re-raises with the traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import typer
from typer.core import TyperGroup

from slimwhisper.errors import UserError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# File-system errors a user causes (a wrong path, no permission, a full disk) are bad input too.
_OS_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC,
                   errno.EROFS, errno.EEXIST, errno.ENOTEMPTY, errno.EDQUOT}  # fmt: skip


_OS_USER_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, UserError) or isinstance(exc, _OS_USER_TYPES):
        return True
    return isinstance(exc, OSError) and exc.errno in _OS_USER_ERRNOS


def error_text(exc: BaseException) -> str:
    """``error: headline`` plus an indented problem list: never a multi-line blob of other shape."""
    if isinstance(exc, UserError):
        head = " ".join(exc.headline.split()) or type(exc).__name__
        problems = [" ".join(p.split()) for p in exc.problems]
        if len(problems) == 1:
            return "\n".join([f"error: {head.rstrip(':')}: {problems[0]}"] + _extra_lines(exc))
        return "\n".join([f"error: {head}"] + [f"  - {p}" for p in problems] + _extra_lines(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or " ".join(str(exc).split())
        hint = {errno.ENOSPC: " (free some disk space and run again)",
                errno.EACCES: " (choose a folder you can write to)", errno.EROFS: " (choose a writable folder)"}
        return f"error: {where}{reason}{hint.get(exc.errno, '')}"
    return f"error: {' '.join(str(exc).split())}"


def _extra_lines(exc: UserError) -> list[str]:
    # A few errors carry a hint after their problem list (PlanError); keep it, indented.
    text = str(exc)
    base = UserError(exc.headline, exc.problems)
    tail = text[len(str(base)):].strip() if text.startswith(str(base)) else ""
    return [f"  {' '.join(line.split())}" for line in tail.splitlines() if line.strip()]


class _Group(TyperGroup):
    """The one error handler of every subcommand (CLI entry point and CliRunner alike)."""

    def main(self, args=None, prog_name=None, standalone_mode: bool = True, **extra):
        # Usage errors (unknown option, --threads 0, a missing --data) as ONE line too, instead
        # of click's usage block or typer's boxed panel; same exit code 2.
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        except typer.TyperException as exc:  # typer's click: UsageError, BadParameter, ...
            if not hasattr(exc, "format_message"):
                raise
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if os.environ.get("SLIMWHISPER_DEBUG") or not is_user_error(exc):
                raise
            typer.echo(error_text(exc), err=True)
            raise typer.Exit(EXIT_USAGE) from None


app = typer.Typer(
    name="slimwhisper",
    help="Make Whisper physically smaller and faster for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)

_COMMAND_MODULES = ("core", "compress", "train", "export", "bench", "devices")


def _register() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"slimwhisper.cli.{name}")


def main() -> None:
    _register()
    app(prog_name="slimwhisper", args=sys.argv[1:])
