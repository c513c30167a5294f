"""Options and set-up shared by every command module (one definition each, so help texts and
limits agree: ``--threads 0`` is refused the same way everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="tiny.en, base, a model folder, ...")]
MaybeModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="tiny.en, base, a model folder, ...")]
BundleOpt = Annotated[Path | None, typer.Option("--bundle", help="Exported ONNX bundle folder (instead of --model).")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads for torch / onnxruntime.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a previous output of this command at --out "
                                                        "(never a folder it did not make, never the input).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or stage messages.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (utterance choice and order).")]


def quiet_libraries() -> None:
    """transformers warns per generate() call about settings its own Whisper code passes; in a CLI
    run those lines bury the results. Library users keep their own logging setup."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars: our own bar is the one that matters


def setup_torch(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    quiet_libraries()


def say_fn(quiet: bool):
    """Stage messages go to stderr (stdout keeps the results), silenced by --quiet."""
    return (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))
