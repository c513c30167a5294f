"""``slimwhisper export``: a model (name, folder, pruned folder) -> ONNX bundle with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app
from slimwhisper.cli.options import ForceOpt, ModelOpt, quiet_libraries


@app.command("export")
def export_command(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic per-channel int8 weights (default fp32).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write fp16 graphs (for GPU providers).")] = False,
    ort: Annotated[bool, typer.Option("--ort", help="Also write .ort files + required_operators.config (ORT Mobile).")] = False,
    int8_activations: Annotated[bool, typer.Option("--int8-encoder-activations/--fp32-encoder-activations",
                                help="int8 encoder: quantise activations at run time (VNNI / dot-product kernels) "
                                     "or keep them fp32 (more accurate; speed not yet measured on a quiet machine).")] = True,
    embedding_bits: Annotated[int, typer.Option("--embedding-bits", help="int8 bundles: bits of the tied token "
                              "table (8, or 4: half its bytes; see README for the WER it costs).")] = 8,
    encoder_int8: Annotated[str | None, typer.Option("--encoder-int8", help="int8 encoder scheme: blocks "
                            "(MatMulNBits, data-free) or smoothed (outlier channels tamed on --calib audio, then "
                            "per-tensor int8: faster). Default: smoothed with --calib, else blocks.")] = None,
    calib: Annotated[list[Path] | None, typer.Option("--calib", help="Training audio (.tsv or folder; repeatable) "
                     "that calibrates the smoothed int8 encoder; evaluation sets are refused.")] = None,
    calib_n: Annotated[int, typer.Option("--calib-n", min=1, help="Calibration clips for --calib.")] = 16,
    positions: Annotated[bool, typer.Option("--generated-positions/--stored-positions", help="int8 encoder "
                         "positions: computed in the graph when they are Whisper's fixed sinusoids (1.2 MB less in "
                         "tiny.en), or stored as a table.")] = True,
    force: ForceOpt = False,
    clips: Annotated[int, typer.Option(help="Clips decoded greedily in the parity check.")] = 2,
    threads: Annotated[int, typer.Option(min=1, help="onnxruntime threads for the parity check.")] = 2,
    fmt: Annotated[str, typer.Option("--format", help="onnx: a bundle folder; ggml: one whisper.cpp file (fp16).")] = "onnx",
) -> None:
    """Export MODEL to a torch-free bundle (encoder/decoder ONNX with KV cache, tokenizer, mel
    filters, manifest.json with sha256 of every file) after checking parity with PyTorch."""
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models import load_model
    from slimwhisper.outputs import check_output

    if fmt != "onnx":  # one-file formats (whisper.cpp's ggml): no parity check, no bundle variants
        from slimwhisper.export.ggml import export_file

        quiet_libraries()
        path = export_file(fmt, model, out, force=force, bundle_options={"--quantize": quantize, "--fp16": fp16, "--ort": ort})
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, ggml f16 for whisper.cpp)")
        return
    config = ExportConfig(quantize=quantize, fp16=fp16, ort=ort, parity_clips=clips, threads=threads,
                          int8_encoder_activations=int8_activations, embedding_bits=embedding_bits,
                          encoder_int8=encoder_int8 or ("smoothed" if calib else "blocks"),
                          calib=tuple(map(str, calib or ())), calib_n=calib_n,
                          generated_positions=positions)
    check_output(out, "bundle", force=force, inputs=[model])  # before the (slow) model load
    quiet_libraries()
    loaded = load_model(model)
    manifest = export_bundle(loaded, out, config, force=force, log=lambda m: typer.echo(m, err=True))
    size = sum(p.stat().st_size for p in out.iterdir())
    typer.echo(f"wrote {out} ({size / 1e6:.1f} MB, variants: {', '.join(manifest['variants'])})")
