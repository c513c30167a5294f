"""``slimwhisper transcribe``, ``slimwhisper eval`` and ``slimwhisper synth-data``.

Commands only build a config and call the library. Input problems (unknown model, bad data,
missing file, bad option) print one ``error:`` line on stderr and exit with code 2; set
``SLIMWHISPER_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app

EXIT_USAGE = 2

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="tiny.en, base, a model folder, ...")]
BundleOpt = Annotated[Path | None, typer.Option("--bundle", help="Exported ONNX bundle folder (instead of --model).")]
LanguageOpt = Annotated[str | None, typer.Option(help="Language code for multilingual models (default: en).")]
BeamOpt = Annotated[int, typer.Option(help="Beam size; 1 = greedy.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads for torch / onnxruntime.")]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean bad input, not a bug (imported here: they live in heavy modules)."""
    from slimwhisper.audio import AudioError
    from slimwhisper.data import DataError
    from slimwhisper.evaluate import EvalError
    from slimwhisper.models.api import ModelLoadError
    from slimwhisper.spec import SpecError
    from slimwhisper.synth import SynthError
    from slimwhisper.text import ScoreError
    from slimwhisper.transcribe import DecodeError

    found: list[type[BaseException]] = [
        AudioError, DataError, EvalError, ModelLoadError, SpecError, ScoreError, DecodeError, SynthError,
        FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
    ]
    runtime_error = _optional_error("slimwhisper.runtime", "BundleError")
    if runtime_error is not None:
        found.append(runtime_error)
    return tuple(found)


def _optional_error(module: str, name: str) -> type[BaseException] | None:
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad-input exceptions into one stderr line and exit code 2."""
    try:
        yield
    except Exception as exc:
        if os.environ.get("SLIMWHISPER_DEBUG") or not isinstance(exc, _user_errors()):
            raise
        # One line, whatever the library wrote (some messages list choices on extra lines).
        message = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _quiet_libraries() -> None:
    # transformers warns per generate() call about settings its own Whisper code passes; in a
    # CLI run those lines bury the results. Library users keep their own logging setup.
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars: our own bar is the one that matters


def _decode(language: str | None, beam: int):
    from slimwhisper.transcribe import DecodeConfig

    return DecodeConfig(beam=beam, language=language)


def _backend(model: str | None, bundle: Path | None) -> tuple[str, str]:
    from slimwhisper.evaluate import EvalError

    if (model is None) == (bundle is None):
        raise EvalError("give exactly one of --model NAME or --bundle DIR")
    return ("torch", model) if model is not None else ("bundle", str(bundle))


def _check_out_file(path: Path | None) -> None:
    """Fail before any work when the result file cannot be written."""
    from slimwhisper.evaluate import EvalError

    if path is None:
        return
    if path.is_dir():
        raise EvalError(f"--json {path} is a folder; give a file name such as {path / 'eval.json'}")
    if not path.parent.is_dir():
        raise EvalError(f"--json {path}: folder {path.parent} does not exist (create it first)")


@app.command()
def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="Audio files (any rate/channels libsndfile reads).")],
    model: ModelOpt = None,
    bundle: BundleOpt = None,
    language: LanguageOpt = None,
    beam: BeamOpt = 1,
    threads: ThreadsOpt = None,
) -> None:
    """Print the transcript of each AUDIO file (prefixed by its name when there are several)."""
    with user_errors():
        from slimwhisper.audio import read_audio
        from slimwhisper.transcribe import make_transcriber

        missing = [str(p) for p in audio if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such audio file: {', '.join(missing)}")
        kind, source = _backend(model, bundle)
        _quiet_libraries()
        transcriber = make_transcriber(kind, source, _decode(language, beam), threads)
        for path in audio:
            samples, info = read_audio(path)
            if info.converted:
                typer.echo(f"note: {path}: converting {info.describe()}", err=True)
            text = transcriber.transcribe(samples).text
            typer.echo(f"{path}: {text}" if len(audio) > 1 else text)


@app.command("eval")
def eval_command(
    data: Annotated[Path, typer.Option(help="transcripts .tsv, or a folder (tsv / LibriSpeech / LJSpeech layout).")],
    model: ModelOpt = None,
    bundle: BundleOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N utterances.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result here (atomically).")] = None,
    language: LanguageOpt = None,
    beam: BeamOpt = 1,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable items and count them.")] = False,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Transcribe a labelled dataset and print corpus WER and CER (Whisper-normalised)."""
    with user_errors():
        from slimwhisper.evaluate import EvalConfig, run_eval, write_json_atomic

        _check_out_file(json_out)
        config = EvalConfig(
            data=data, model=model, bundle=bundle, limit=limit, skip_bad=skip_bad,
            decode=_decode(language, beam), threads=threads,
        )
        _quiet_libraries()
        result = run_eval(config, progress=not quiet)
        typer.echo(result.summary())
        typer.echo(f"WER {result.wer:.4f}")
        typer.echo(f"CER {result.cer:.4f}")
        if result.skipped:
            typer.echo(f"skipped {result.skipped} bad item(s); first: {result.skipped_reasons[0]}", err=True)
        if json_out is not None:
            write_json_atomic(result.to_json(), json_out)
            typer.echo(f"wrote {json_out}", err=True)


@app.command("synth-data")
def synth_data(
    out: Annotated[Path, typer.Argument(help="Folder to create (refused if it exists, unless --force).")],
    force: Annotated[bool, typer.Option(help="Re-make an existing synthetic set at OUT.")] = False,
) -> None:
    """Write a small SYNTHETIC English test set (piper TTS, offline) as a transcripts.tsv folder."""
    with user_errors():
        from slimwhisper.synth import make_synthetic_dataset

        folder = make_synthetic_dataset(out, force=force)
        typer.echo(str(folder))

