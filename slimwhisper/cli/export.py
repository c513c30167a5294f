"""``slimwhisper export``: a model (name, folder, pruned folder) -> ONNX bundle with a manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from slimwhisper.export.bundle import ExportError
    from slimwhisper.export.config import ExportConfigError
    from slimwhisper.export.parity import ParityError
    from slimwhisper.models.api import ModelLoadError
    from slimwhisper.spec import SpecError

    return (ExportError, ExportConfigError, ParityError, ModelLoadError, SpecError, FileNotFoundError)


@app.command("export")
def export_command(
    model: Annotated[str, typer.Option("--model", "-m", help="tiny.en, base, a model folder or a pruned folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic per-channel int8 weights (default fp32).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write fp16 graphs (for GPU providers).")] = False,
    ort: Annotated[bool, typer.Option("--ort", help="Also write .ort files + required_operators.config (ORT Mobile).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out folder.")] = False,
    clips: Annotated[int, typer.Option(help="Clips decoded greedily in the parity check.")] = 2,
    threads: Annotated[int, typer.Option(help="onnxruntime threads for the parity check.")] = 2,
) -> None:
    """Export MODEL to a torch-free bundle (encoder/decoder ONNX with KV cache, tokenizer, mel
    filters, manifest.json with sha256 of every file) after checking parity with PyTorch."""
    try:
        from slimwhisper.export.bundle import ExportError, export_bundle
        from slimwhisper.export.config import ExportConfig
        from slimwhisper.models import load_model

        config = ExportConfig(quantize=quantize, fp16=fp16, ort=ort, parity_clips=clips, threads=threads)
        if out.exists() and not force:  # fail before the (slow) model load
            raise ExportError(f"{out} already exists; pick another --out or pass --force to replace it")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
        except ImportError:
            pass
        loaded = load_model(model)
        manifest = export_bundle(loaded, out, config, force=force, log=lambda m: typer.echo(m, err=True))
    except Exception as exc:
        if os.environ.get("SLIMWHISPER_DEBUG") or not isinstance(exc, _user_errors()):
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    size = sum(p.stat().st_size for p in out.iterdir())
    typer.echo(f"wrote {out} ({size / 1e6:.1f} MB, variants: {', '.join(manifest['variants'])})")
