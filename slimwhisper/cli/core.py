"""``slimwhisper transcribe``, ``slimwhisper eval`` and ``slimwhisper synth-data``.

Commands only build a config and call the library. Input problems (unknown model, bad data,
missing file, bad option) print one ``error:`` line on stderr and exit with code 2; set
``SLIMWHISPER_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app
from slimwhisper.cli.options import BundleOpt, QuietOpt, ThreadsOpt, quiet_libraries
from slimwhisper.cli.options import MaybeModelOpt as ModelOpt

LanguageOpt = Annotated[str | None, typer.Option(help="Language code for multilingual models (default: en).")]
BeamOpt = Annotated[int, typer.Option(min=1, help="Beam size (1 = greedy; 5 = faster-whisper's default), patience 1.")]
FallbackOpt = Annotated[bool, typer.Option("--fallback/--no-fallback", help="openai-whisper's temperature "
                        "fallback (0.2 ... 1.0 when a window loops or is unlikely); the no-speech rule stays on.")]
TimestampsOpt = Annotated[bool, typer.Option("--timestamps/--no-timestamps", help="Timestamp tokens and "
                          "timestamp-based seeking (openai-whisper's long-form loop).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Clips (<= 30 s each) decoded together.")]
FORMATS = ("text", "json", "srt", "vtt")


def _decode(language: str | None, beam: int, fallback: bool = True, timestamps: bool = True):
    """The CLI's decoding: openai-whisper's transcribe defaults (``DecodeConfig.whisper``)."""
    from slimwhisper.transcribe import DecodeConfig

    return DecodeConfig.whisper(beam=beam, language=language, fallback=fallback, timestamps=timestamps)


def _backend(model: str | None, bundle: Path | None) -> tuple[str, str]:
    from slimwhisper.evaluate import EvalError

    if (model is None) == (bundle is None):
        raise EvalError("give exactly one of --model NAME or --bundle DIR")
    return ("torch", model) if model is not None else ("bundle", str(bundle))


@app.command()
def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="Audio files (any rate/channels libsndfile reads).")],
    model: ModelOpt = None,
    bundle: BundleOpt = None,
    language: LanguageOpt = None,
    beam: BeamOpt = 1,
    fallback: FallbackOpt = True,
    timestamps: TimestampsOpt = True,
    fmt: Annotated[str, typer.Option("--format", help="text, json (segments with start/end), srt or vtt.")] = "text",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout (one input file only).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Print the transcript of each AUDIO file (prefixed by its name in text format when there are
    several); any length: long files are read window by window."""
    from slimwhisper.audio import AudioError
    from slimwhisper.errors import raise_problems
    from slimwhisper.outputs import check_output_file, write_file
    from slimwhisper.runtime.subtitles import FormatError, render
    from slimwhisper.transcribe import make_transcriber

    folders = [str(p) for p in audio if p.is_dir()]
    missing = [str(p) for p in audio if not p.exists()]
    problems = [f"{f} is a folder; give audio files (or use 'slimwhisper eval --data {f}')" for f in folders]
    problems += [f"no such audio file: {m}" for m in missing]
    if len(problems) == 1:
        raise AudioError(problems[0])
    raise_problems(AudioError, "cannot read the audio", problems)
    if fmt not in FORMATS:
        raise FormatError(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}")
    if out is not None:
        if len(audio) > 1:
            raise FormatError("--out takes one input file; give one AUDIO or print to stdout")
        check_output_file(out, force=force, option="--out", inputs=audio)
    kind, source = _backend(model, bundle)
    decode = _decode(language, beam, fallback, timestamps)
    quiet_libraries()
    transcriber = make_transcriber(kind, source, decode, threads)
    for path in audio:
        result = _transcribe_file(transcriber, path)
        meta = {"file": str(path), "model": transcriber.name, "decoding": decode.to_dict(),
                "windows": result.windows, **{k: v for k, v in result.extra.items() if k != "decoding"}}
        text = render(fmt, result.segments, meta)
        if out is not None:
            write_file(out, text)
            typer.echo(f"wrote {out}", err=True)
        elif fmt == "text":
            typer.echo(f"{path}: {text.strip()}" if len(audio) > 1 else text.strip())
        else:
            typer.echo(text, nl=False)


def _transcribe_file(transcriber, path: Path):
    """Stream a 16 kHz mono file window by window (memory stays flat); convert anything else."""
    from slimwhisper.audio import read_audio
    from slimwhisper.audio_stream import open_stream

    stream = open_stream(path)
    if stream is not None and hasattr(transcriber, "transcribe_source"):
        with stream:
            return transcriber.transcribe_source(stream, where=str(path))
    samples, info = read_audio(path)
    if info.converted:
        typer.echo(f"note: {path}: converting {info.describe()}", err=True)
    return transcriber.transcribe(samples)


@app.command("eval")
def eval_command(
    data: Annotated[Path, typer.Option(help="transcripts .tsv, or a folder (tsv / LibriSpeech / LJSpeech layout).")],
    model: ModelOpt = None,
    bundle: BundleOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N utterances.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result here (atomically).")] = None,
    language: LanguageOpt = None,
    beam: BeamOpt = 1,
    fallback: FallbackOpt = True,
    timestamps: TimestampsOpt = True,
    batch_size: BatchOpt = 1,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable items and count them.")] = False,
    threads: ThreadsOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Transcribe a labelled dataset and print corpus WER and CER (Whisper-normalised)."""
    from slimwhisper.evaluate import EvalConfig, run_eval
    from slimwhisper.outputs import check_output_file, write_json

    if json_out is not None:
        check_output_file(json_out, force=force, option="--json", inputs=[data])
    config = EvalConfig(
        data=data, model=model, bundle=bundle, limit=limit, skip_bad=skip_bad,
        decode=_decode(language, beam, fallback, timestamps), threads=threads, batch_size=batch_size,
    )
    quiet_libraries()
    result = run_eval(config, progress=not quiet)
    typer.echo(result.summary())
    typer.echo(f"WER {result.wer:.4f}")
    typer.echo(f"CER {result.cer:.4f}")
    if result.skipped:
        typer.echo(f"skipped {result.skipped} bad item(s); first: {result.skipped_reasons[0]}", err=True)
    if json_out is not None:
        write_json(json_out, result.to_json())
        typer.echo(f"wrote {json_out}", err=True)


@app.command("synth-data")
def synth_data(
    out: Annotated[Path, typer.Argument(help="Folder to create (refused if it exists, unless --force).")],
    force: Annotated[bool, typer.Option(help="Re-make an existing synthetic set at OUT.")] = False,
) -> None:
    """Write a small SYNTHETIC English test set (piper TTS, offline) as a transcripts.tsv folder."""
    from slimwhisper.synth import make_synthetic_dataset

    folder = make_synthetic_dataset(out, force=force)
    typer.echo(str(folder))

