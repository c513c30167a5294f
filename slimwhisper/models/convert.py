"""CTranslate2 Whisper -> transformers Whisper folder (safetensors + configs + processor).

The variable names are those written by ctranslate2's ``WhisperSpec`` (specs/whisper_spec.py):
self-attention ``linear_0`` is the fused [q; k; v] projection (k has no bias in Whisper, so its
slice of the fused bias is zero) and ``linear_1`` the output; cross-attention (``attention``)
``linear_0`` is q, ``linear_1`` the fused [k; v] of the encoder output and ``linear_2`` the
output; ``decoder/projection/weight`` is an alias of the token embedding (tied).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperProcessor,
    WhisperTokenizer,
)

from slimwhisper.models.cache import CONVERTER_VERSION, DONE_MARKER, atomic_dir
from slimwhisper.models.ct2 import CT2FormatError, CT2Model

N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps (openai/whisper tokenizer.py)
ENGLISH_VOCAB, MULTILINGUAL_VOCAB = 51864, 51865


# ---- tokenizer / processor ----------------------------------------------------------------------
def build_tokenizer(tokenizer_json: Path) -> WhisperTokenizer:
    """The shipped tokenizer.json plus the 1501 timestamp tokens, so ids match Whisper's vocab."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    added = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["added_tokens"]
    if tok.token_to_id("<|0.00|>") is None:
        stamps = [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]
        # Not special, as in transformers' convert_openai_to_hf: decode() drops them by id range.
        tok.add_tokens([AddedToken(s, lstrip=False, rstrip=False, normalized=False, special=False) for s in stamps])
    specials = [t["content"] for t in added if t.get("special") and t["content"] != "<|endoftext|>"]
    # extra_special_tokens makes all_special_ids end at <|notimestamps|>, which Whisper's
    # _decode_with_timestamps uses as "timestamp_begin - 1".
    return WhisperTokenizer(tokenizer_object=tok, extra_special_tokens=specials)


def processor_for(tokenizer: WhisperTokenizer, n_mels: int) -> WhisperProcessor:
    """Whisper's log-mel front end (n_mels bins) paired with ``tokenizer``."""
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tokenizer)


def build_processor(tokenizer_json: Path, n_mels: int) -> WhisperProcessor:
    return processor_for(build_tokenizer(tokenizer_json), n_mels)


# ---- dimensions ---------------------------------------------------------------------------------
def _n_layers(ct2: CT2Model, side: str) -> int:
    found = {int(m.group(1)) for name in ct2.variables if (m := re.match(rf"{side}/layer_(\d+)/", name))}
    if not found or found != set(range(len(found))):
        raise CT2FormatError(f"{side} layers are missing or not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _scalar(ct2: CT2Model, name: str) -> int | None:
    return int(ct2.variables[name]) if name in ct2.variables else None


def whisper_config_from_ct2(ct2: CT2Model, tokenizer: WhisperTokenizer) -> WhisperConfig:
    """Infer every dimension from the variables (heads from the stored num_heads scalars)."""
    if ct2.spec_name != "WhisperSpec":
        raise CT2FormatError(f"model.bin holds a {ct2.spec_name}, not a WhisperSpec (Whisper) model")
    emb = ct2.get("decoder/embeddings/weight")
    vocab, d_model = emb.shape
    enc_heads = _scalar(ct2, "encoder/num_heads")
    dec_heads = _scalar(ct2, "decoder/num_heads")
    if enc_heads is None or dec_heads is None:
        raise CT2FormatError("model.bin lacks encoder/num_heads or decoder/num_heads")
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(ct2.get("encoder/conv1/weight").shape[1]),
        d_model=int(d_model),
        encoder_layers=_n_layers(ct2, "encoder"),
        decoder_layers=_n_layers(ct2, "decoder"),
        encoder_attention_heads=enc_heads,
        decoder_attention_heads=dec_heads,
        encoder_ffn_dim=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        tie_word_embeddings=True,
    )


def generation_config_for(config: WhisperConfig, tokenizer: WhisperTokenizer, ct2_config: dict) -> GenerationConfig:
    """Whisper generation settings; suppress lists and alignment heads come from CT2's config.json."""
    ids = tokenizer.convert_tokens_to_ids
    multilingual = config.vocab_size >= MULTILINGUAL_VOCAB
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(x) for x in ct2_config.get("alignment_heads", [])],
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=multilingual,
        forced_decoder_ids=None,
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    if multilingual:
        lang_ids = ct2_config.get("lang_ids") or range(ids("<|en|>"), ids("<|translate|>"))
        gen.lang_to_id = {tokenizer.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids}
        gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return gen


# ---- weights ------------------------------------------------------------------------------------
def _t(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable float32 copy


def _linear(ct2: CT2Model, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"] = _t(ct2.float32(f"{src}/weight"))
    out[f"{dst}.bias"] = _t(ct2.get(f"{src}/bias"))


def _norm(ct2: CT2Model, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"] = _t(ct2.get(f"{src}/gamma"))
    out[f"{dst}.bias"] = _t(ct2.get(f"{src}/beta"))


def _split(ct2: CT2Model, src: str, dst: str, names: tuple[str, ...], out: dict) -> None:
    """A fused projection [a; b; ...] -> separate Linear layers; "k" keeps no bias (Whisper)."""
    weights = np.split(ct2.float32(f"{src}/weight"), len(names), axis=0)
    biases = np.split(ct2.get(f"{src}/bias"), len(names), axis=0)
    for name, w, b in zip(names, weights, biases, strict=True):
        out[f"{dst}.{name}_proj.weight"] = _t(w)
        if name != "k":
            out[f"{dst}.{name}_proj.bias"] = _t(b)
        elif np.any(b):  # dropping it would silently change the model
            raise CT2FormatError(f"{src}/bias has a non-zero key bias; Whisper's key projection has none")


def state_dict_from_ct2(ct2: CT2Model, config: WhisperConfig) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        m = f"model.{side}"
        _norm(ct2, f"{side}/layer_norm", f"{m}.layer_norm", sd)
        sd[f"{m}.embed_positions.weight"] = _t(ct2.get(f"{side}/position_encodings/encodings"))
        n = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{m}.layers.{i}"
            _split(ct2, f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"), sd)
            _linear(ct2, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", sd)
            _norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
            if side == "decoder":
                _linear(ct2, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", sd)
                _split(ct2, f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k", "v"), sd)
                _linear(ct2, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", sd)
                _norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", sd)
            _linear(ct2, f"{src}/ffn/linear_0", f"{dst}.fc1", sd)
            _linear(ct2, f"{src}/ffn/linear_1", f"{dst}.fc2", sd)
            _norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", sd)
    for conv in ("conv1", "conv2"):
        _linear(ct2, f"encoder/{conv}", f"model.encoder.{conv}", sd)
    sd["model.decoder.embed_tokens.weight"] = _t(ct2.float32("decoder/embeddings/weight"))
    return sd


def build_model(config: WhisperConfig, state: dict[str, torch.Tensor]):
    """A float32 WhisperForConditionalGeneration holding exactly ``state`` (strict)."""
    from transformers import WhisperForConditionalGeneration

    from slimwhisper.models.slim import check_state_dict

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.float().eval()


# ---- writing ------------------------------------------------------------------------------------
def write_converted(
    out_dir: Path,
    *,
    model,
    processor: WhisperProcessor,
    generation_config: GenerationConfig,
    record: dict,
) -> Path:
    """Save a transformers folder atomically: ``out_dir`` appears complete or not at all."""
    with atomic_dir(out_dir) as tmp:
        model.generation_config = generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        record = {"converter_version": CONVERTER_VERSION, **record}
        (tmp / DONE_MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out_dir


def convert_ct2(ct2: CT2Model, ct2_config: dict, tokenizer_json: Path, out_dir: Path, record: dict) -> Path:
    """Convert a parsed CT2 Whisper into a transformers folder at ``out_dir`` (atomic)."""
    tokenizer = build_tokenizer(tokenizer_json)
    config = whisper_config_from_ct2(ct2, tokenizer)
    if len(tokenizer) != config.vocab_size:
        raise CT2FormatError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {config.vocab_size}; "
            f"{tokenizer_json} does not belong to this model.bin"
        )
    model = build_model(config, state_dict_from_ct2(ct2, config))
    processor = processor_for(tokenizer, config.num_mel_bins)
    gen = generation_config_for(config, tokenizer, ct2_config)
    return write_converted(out_dir, model=model, processor=processor, generation_config=gen, record=record)
