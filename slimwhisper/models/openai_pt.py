"""openai-whisper ``.pt`` checkpoints -> transformers Whisper folder (cached like CT2 conversions).

The checkpoint is ``{"dims": ModelDimensions, "model_state_dict": ...}`` (openai/whisper
``whisper/__init__.py`` ``load_model``), read with ``torch.load(weights_only=True)`` so a
checkpoint cannot run code. Names follow openai/whisper ``model.py``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from slimwhisper.models.api import LoadedModel, LoadOptions, ModelLoadError, SourceKind
from slimwhisper.models.bundled import BUNDLED, TOKENIZER_FOR_VOCAB
from slimwhisper.models.cache import DONE_MARKER, converted_dir, file_chunks, sha256_of
from slimwhisper.models.hf_folder import load_transformers_folder

log = logging.getLogger(__name__)

DIMS = ("n_mels", "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
        "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")

# Applied in order to each openai name; the result is the transformers name.
OPENAI_TO_HF = (
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.", r"model.\1.layers.\2."),
    (r"^encoder\.conv", "model.encoder.conv"),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
)


def hf_name(openai_name: str) -> str:
    name = openai_name
    for pattern, repl in OPENAI_TO_HF:
        name = re.sub(pattern, repl, name)
    return name


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ModelLoadError(
            f"cannot read {path} as an openai-whisper checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
            "it is truncated, not a torch file, or holds objects other than tensors and plain types"
        ) from exc
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelLoadError(
            f"{path} is not an openai-whisper checkpoint: expected keys dims and model_state_dict, got {keys}"
        )
    dims = dict(ckpt["dims"])
    missing = [k for k in DIMS if k not in dims]
    if missing:
        raise ModelLoadError(f"{path}: dims lacks {missing}")
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise ModelLoadError(f"{path}: n_audio_state {dims['n_audio_state']} != n_text_state {dims['n_text_state']}")
    return dims, ckpt["model_state_dict"]


def _config(dims: dict, tokenizer):
    from transformers import WhisperConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=dims["n_vocab"], num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"], decoder_layers=dims["n_text_layer"],
        encoder_attention_heads=dims["n_audio_head"], decoder_attention_heads=dims["n_text_head"],
        encoder_ffn_dim=4 * dims["n_audio_state"], decoder_ffn_dim=4 * dims["n_text_state"],
        max_source_positions=dims["n_audio_ctx"], max_target_positions=dims["n_text_ctx"],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=ids("<|startoftranscript|>"),
        begin_suppress_tokens=None, suppress_tokens=None, tie_word_embeddings=True,
    )


def _tokenizer_json(path: Path, vocab: int, record: dict) -> tuple[Path, dict]:
    """tokenizer.json beside the checkpoint, else the bundled one with the same vocabulary size."""
    donor = TOKENIZER_FOR_VOCAB.get(vocab)
    donor_config = BUNDLED[donor].ct2_config() if donor else {}
    beside = path.parent / "tokenizer.json"
    if beside.is_file():
        return beside, donor_config
    if donor is None:
        raise ModelLoadError(f"{path}: no tokenizer.json beside it and no bundled tokenizer for vocabulary {vocab}")
    record["tokenizer_from"] = f"bundled {donor} (vocabulary size {vocab}); no tokenizer.json beside {path.name}"
    log.warning("%s: using the %s", path.name, record["tokenizer_from"])
    return BUNDLED[donor].tokenizer_json(), donor_config


def convert_openai_checkpoint(path: Path, out_dir: Path, record: dict) -> None:
    from slimwhisper.models.convert import (
        build_model,
        build_tokenizer,
        generation_config_for,
        processor_for,
        write_converted,
    )
    from slimwhisper.spec import SpecError

    dims, state = _read_checkpoint(path)
    tok_json, donor_config = _tokenizer_json(path, dims["n_vocab"], record)
    tokenizer = build_tokenizer(tok_json)
    config = _config(dims, tokenizer)
    hf_state = {hf_name(k): v.float() for k, v in state.items()}
    try:
        model = build_model(config, hf_state)
    except SpecError as exc:
        problems = list(exc.problems)  # a tuple since SpecError became a UserError
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ModelLoadError(f"{path}: weights do not match dims {dims}", shown) from exc
    donor_heads = donor_config.get("alignment_heads", [])
    # Alignment heads are per checkpoint; borrow the donor's only if they index valid layers/heads.
    ok = all(layer < dims["n_text_layer"] and head < dims["n_text_head"] for layer, head in donor_heads)
    gen = generation_config_for(config, tokenizer, {**donor_config, "alignment_heads": donor_heads if ok else []})
    processor = processor_for(tokenizer, dims["n_mels"])
    write_converted(out_dir, model=model, processor=processor, generation_config=gen, record=record)


def load_openai_checkpoint(path: Path, options: LoadOptions) -> LoadedModel:
    import json

    sha = sha256_of(file_chunks([path]))
    out_dir = converted_dir(options, "openai", sha)
    if not (out_dir / DONE_MARKER).exists():
        convert_openai_checkpoint(path, out_dir, {"source": str(path.resolve()), "kind": "openai-pt", "sha256": sha})
    record = json.loads((out_dir / DONE_MARKER).read_text(encoding="utf-8"))
    extra = {"converted_from": "openai-pt"}
    if "tokenizer_from" in record:
        extra["tokenizer_from"] = record["tokenizer_from"]
    return load_transformers_folder(out_dir, options, source=str(path), kind="openai-pt", name=path.stem,
                                    sha256=sha, extra=extra)


def _is_pt(source: str) -> bool:
    return source.endswith(".pt") and Path(source).is_file()


def load_pt(source: str, options: LoadOptions) -> LoadedModel:
    return load_openai_checkpoint(Path(source), options)


OPENAI_PT_KIND = SourceKind("openai-pt", _is_pt, load_pt, "an openai-whisper checkpoint file (*.pt)", priority=50)
