"""The ``slimwhisper`` command: thin typer commands that build a config and call the library.

Each stage keeps its commands in its own module here (``core``: transcribe/eval; ``compress``:
sensitivity/prune; ``export``; ``bench``: bench/run). Heavy imports (torch, transformers,
onnxruntime) happen inside the command functions, so ``slimwhisper --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="slimwhisper",
    help="Make Whisper physically smaller and faster for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = ("core", "compress", "export", "bench", "recover")


def _register() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"slimwhisper.cli.{name}")
        except ModuleNotFoundError as exc:
            # Only a command module that does not exist yet is skipped; a broken import
            # inside an existing one must surface.
            if exc.name != f"slimwhisper.cli.{name}":
                raise


def main() -> None:
    _register()
    app()
