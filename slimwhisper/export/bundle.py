"""Write a bundle: ONNX graphs (+ variants), tokenizer, mel filters and ``manifest.json``.

The bundle is written into a temp folder beside ``out`` and renamed only after parity passed
(``slimwhisper.outputs.output_dir``), so a failed export never leaves a half bundle; an existing
``out`` is refused unless ``force``, and even then only a previous bundle is replaced.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from slimwhisper.export.config import ExportConfig, ExportError
from slimwhisper.export.graphs import (
    decoder_io,
    encoder_io,
    export_decoder,
    export_encoder,
)
from slimwhisper.export.parity import check_parity
from slimwhisper.export.positions import positions_of
from slimwhisper.export.quantize import VARIANTS, to_ort_format
from slimwhisper.models.slim import spec_from_model
from slimwhisper.outputs import output_dir
from slimwhisper.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, sha256_file
from slimwhisper.runtime.frontend import (
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
)



def tokenizer_manifest(tokenizer, generation_config, out_dir: Path) -> dict:
    """Save tokenizer.json and collect the special ids the runtime's decode loop needs."""
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)  # compact: -1.2 MB
    ids = tokenizer.convert_tokens_to_ids

    def one(*names: str) -> int | None:
        # Not "!= unk_token_id": Whisper's unk token *is* <|endoftext|>.
        for name in names:
            i = ids(name)
            if i is not None and tokenizer.convert_ids_to_tokens(int(i)) == name:
                return int(i)
        return None

    languages = {k.strip("<|>"): int(v) for k, v in (getattr(generation_config, "lang_to_id", None) or {}).items()}
    no_ts = one("<|notimestamps|>")
    return {
        "file": "tokenizer.json",
        "sot": one("<|startoftranscript|>"),
        "eot": one("<|endoftext|>"),
        "no_timestamps": no_ts,
        "timestamp_begin": None if no_ts is None else no_ts + 1,
        "transcribe": one("<|transcribe|>"),
        "translate": one("<|translate|>"),
        "sot_prev": one("<|startofprev|>"),
        "no_speech": one("<|nospeech|>", "<|nocaptions|>"),
        "languages": languages,
    }


def prune_tokenizer_file(path: Path, kept: Iterable[int]) -> tuple[int, int]:
    """Keep only the ``kept`` (original) ids of a tokenizer.json, for a vocabulary-pruned bundle.

    The runtime only decodes, and the graphs can only emit kept ids, so the other 70% of the vocab
    and the merges that build them are dead weight on the device (1.75 MB of tiny.en's bundle).
    A merge stays when both of its pieces and its result are kept, so the file still loads in
    ``tokenizers`` and encodes any text into kept tokens (the 256 byte tokens are always kept).
    Added tokens (specials, timestamps) stay. Returns (bytes before, bytes after)."""
    before = path.stat().st_size
    data = json.loads(path.read_text(encoding="utf-8"))
    keep = set(kept)
    bpe = data["model"]
    bpe["vocab"] = {tok: i for tok, i in bpe["vocab"].items() if i in keep}
    vocab = bpe["vocab"]
    as_text = bool(bpe["merges"]) and isinstance(bpe["merges"][0], str)  # "a b" (older files) or ["a", "b"]
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in bpe["merges"]]
    pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
    bpe["merges"] = [f"{a} {b}" for a, b in pairs] if as_text else [[a, b] for a, b in pairs]
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return before, path.stat().st_size


def gzip_file(path: Path) -> str:
    """Replace ``path`` by ``path.gz`` (level 9, no timestamp: the same bytes on every export); returns
    the new name. The runtime reads the tokenizer with the standard library's gzip: tiny.en's
    tokenizer.json shrinks from 1.75 to 0.57 MB, part of the bundle size issue 12 is about. Tools
    that want the plain file (``tokenizers.Tokenizer.from_file``) can ``gunzip`` it."""
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    path.unlink()
    return out.name


def decode_manifest(generation_config, eot: int) -> dict:
    suppress = list(getattr(generation_config, "suppress_tokens", None) or [])
    begin = getattr(generation_config, "begin_suppress_tokens", None)
    # openai/whisper SuppressBlank: a blank (" ") or EOT may not start the transcript.
    begin = list(begin) if begin else [220, eot]
    return {"suppress_tokens": [int(t) for t in suppress], "begin_suppress_tokens": [int(t) for t in begin]}


def export_bundle(loaded, out: str | Path, config: ExportConfig | None = None, *, force: bool = False,
                  log=print) -> dict:
    """Export ``loaded`` (a ``LoadedModel``) to a bundle folder ``out``; returns the manifest.

    fp32 graphs must match PyTorch within ``config.parity`` (``ParityError`` otherwise); int8 and
    fp16 variants are compared and reported in the manifest. ``out`` follows ``slimwhisper.outputs``:
    with ``force`` only a previous bundle is replaced, never the model folder being exported.
    """
    config = config or ExportConfig()
    model = loaded.model.float().eval()
    spec = spec_from_model(model)
    with output_dir(out, "bundle", force=force, inputs=[loaded.path]) as tmp:
        return _write(loaded, model, spec, tmp, config, log)


def _write(loaded, model, spec, tmp: Path, config: ExportConfig, log) -> dict:
    t0 = time.perf_counter()
    log(f"exporting {loaded.name}: {len(spec.encoder)} encoder / {len(spec.decoder)} decoder layers")
    export_encoder(model, spec, tmp / "encoder.onnx", config.opset)
    if config.fuse_attention:
        from slimwhisper.export.fuse import fuse_attention

        log(f"encoder: {fuse_attention(tmp / 'encoder.onnx')} of {len(spec.encoder)} self-attention blocks fused "
            "into MultiHeadAttention")
    export_decoder(model, spec, tmp / "decoder.onnx", config.opset)
    variants = {"fp32": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}}
    fe = loaded.processor.feature_extractor  # saved first: the "smoothed" int8 encoder calibrates with it
    np.save(tmp / "mel_filters.npy", np.asarray(fe.mel_filters, dtype=np.float32))
    for name, wanted in (("int8", config.quantize == "int8"), ("fp16", config.fp16)):
        if wanted:
            variants[name] = {}
            for part in ("encoder", "decoder"):
                VARIANTS[name](tmp / f"{part}.onnx", tmp / f"{part}.{name}.onnx", part, config)
                variants[name][part] = f"{part}.{name}.onnx"
    positions = {name: positions_of(tmp / v["encoder"]) for name, v in variants.items()}
    gen = model.generation_config
    vmap = getattr(model, "slim_vocab", None)  # vocabulary-pruned (issue 12): the manifest keeps original ids
    if vmap is not None:
        gen = vmap.generation_config(gen, inverse=True)
    tok = tokenizer_manifest(loaded.processor.tokenizer, gen, tmp)
    if vmap is not None:
        before, after = prune_tokenizer_file(tmp / tok["file"], vmap.kept)
        log(f"tokenizer.json: kept the {vmap.size:,} ids of the pruned vocabulary ({before / 1e6:.2f} -> {after / 1e6:.2f} MB)")
    before = (tmp / tok["file"]).stat().st_size
    tok["file"] = gzip_file(tmp / tok["file"])
    log(f"tokenizer: {tok['file']} ({before / 1e6:.2f} -> {(tmp / tok['file']).stat().st_size / 1e6:.2f} MB)")
    missing = [k for k in ("sot", "eot", "no_timestamps", "transcribe") if tok[k] is None]
    if missing:
        raise ExportError(f"the tokenizer lacks Whisper special tokens {missing}; export a model with a Whisper tokenizer")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": loaded.name, "source": str(loaded.source), "multilingual": bool(loaded.multilingual),
                  "params": spec.params()},
        "spec": spec.to_dict(),
        "graphs": {"encoder": _io(encoder_io(spec)), "decoder": _io(decoder_io(spec))},
        "encoder_positions": positions,  # per variant; "sinusoids": computed in the graph (export/positions.py)
        "variants": variants,
        "default_variant": "int8" if config.quantize == "int8" else "fp32",
        "audio": {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": spec.n_mels,
                  "chunk_samples": N_SAMPLES, "n_frames": N_FRAMES, "mel_filters": "mel_filters.npy"},
        "tokenizer": tok,
        "decode": decode_manifest(gen, tok["eot"]),
        "export_config": config.to_dict(),
        "files": {},
    }
    if vmap is not None:  # the runtime maps the graphs' ids to these (sha256 in "files" like every file)
        manifest["vocab_map"] = {"file": vmap.save(tmp).name, "size": vmap.size, "source_vocab": vmap.source_vocab,
                                 "language": vmap.language}
    _save_manifest(tmp, manifest)
    manifest["parity"] = _parity(model, tmp, variants, config, log)
    if config.quantize == "int8" and not config.keep_fp32:  # the fp32 graphs were only needed for parity and conversion
        for part in ("encoder", "decoder"):
            (tmp / f"{part}.onnx").unlink()
        del variants["fp32"]
        del positions["fp32"]
    if config.ort:
        base = manifest["default_variant"]
        made = to_ort_format([tmp / variants[base][p] for p in ("encoder", "decoder")], tmp)
        variants[f"{base}-ort"] = {p: Path(variants[base][p]).stem + ".ort" for p in ("encoder", "decoder")}
        manifest["ort_mobile"] = {"required_operators": "required_operators.config",
                                  "files": [m.name for m in made]}
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != MANIFEST}
    manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
    _save_manifest(tmp, manifest)
    (tmp / "export_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    manifest["files"]["export_config.json"] = sha256_file(tmp / "export_config.json")
    _save_manifest(tmp, manifest)
    return manifest


def _parity(model, tmp: Path, variants: dict, config: ExportConfig, log) -> dict:
    results = {}
    for name in variants:
        tol = config.parity if name == "fp32" else None  # int8/fp16: report, don't fail
        try:
            report = check_parity(model, tmp, name, clips=config.parity_clips,
                                  max_new_tokens=config.parity_max_tokens, tolerance=tol, threads=config.threads)
        except RuntimeError as exc:
            if name != "fp16":
                raise
            # fp16 kernels are missing on the CPU provider: record why, don't fail the export.
            results[name] = {"variant": name, "checked": False, "reason": str(exc).splitlines()[0][:300]}
            log(f"parity {name}: not checked ({results[name]['reason'][:120]})")
            continue
        s = report.summary()
        results[name] = {"checked": True, **s}
        log(f"parity {name}: encoder max|diff| {s['encoder_max_abs']:.2e}, logits max|diff| "
            f"{s['logits_max_abs']:.2e}, tokens identical {s['tokens_identical']}, "
            f"token agreement {s['token_agreement']:.3f} over {s['clips']} clips")
    return results


def _io(io_) -> dict:
    return {"inputs": list(io_.inputs), "outputs": list(io_.outputs)}


def _save_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
