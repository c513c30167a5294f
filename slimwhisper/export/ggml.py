"""Write whisper.cpp's model file (ggml) from the checkpoint slimwhisper loads.

The layout is the one ``models/convert-h5-to-ggml.py`` of ggerganov/whisper.cpp writes and
``whisper_model_load`` (src/whisper.cpp) reads, all little-endian int32/float:

    magic 0x67676d6c
    hparams  n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer
             n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype(1 = f16)
    mel filters  n_mel n_fft, then n_mel * n_fft float32 (row-major, mel x frequency)
    vocabulary   count, then per token: byte length, the token's bytes (GPT-2 byte-level decoded)
    tensors      n_dims name_len ftype, dims innermost first (numpy shape reversed), name, data

whisper.cpp builds every layer from these few numbers, so only a dense-shaped model fits: each
encoder layer with n_audio_head heads of d_model / heads, FFN 4 * d_model; the same per decoder
layer (self and cross attention). Special-token ids are derived from n_vocab alone (the
``whisper_vocab`` defaults, shifted for multilingual vocabularies), so a vocabulary-pruned model
would decode with wrong ids: both are refused with one line naming what differs.

    python -m slimwhisper.export.ggml MODEL OUT_DIR    # OUT_DIR/ggml-model.bin (the bench cache entry)
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slimwhisper.errors import UserError

GGML_MAGIC = 0x67676D6C  # "ggml" (GGML_FILE_MAGIC)
FTYPE_F32, FTYPE_F16 = 0, 1
MODEL_FILE = "ggml-model.bin"
# whisper.cpp's ``whisper_vocab`` defaults (English vocabulary, n_vocab 51864); a multilingual one
# (n_vocab >= 51865) moves eot/sot up by one and the rest by (languages - 98).
_EN_IDS = {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257, "<|transcribe|>": 50358,
           "<|notimestamps|>": 50362, "<|0.00|>": 50363}
_VOCAB_SIZES = (51864, 51865, 51866)  # 1501 timestamp tokens after these specials (whisper.cpp assumes them)
_F32_NAMES = ("encoder.positional_embedding", "decoder.positional_embedding")  # the loader wants F32 here
_CONV_BIASES = ("encoder.conv1.bias", "encoder.conv2.bias")  # [n] -> [n, 1] (ggml ne = (1, n))
_TOP = {"encoder.embed_positions.weight": "encoder.positional_embedding",
        "encoder.layer_norm.weight": "encoder.ln_post.weight", "encoder.layer_norm.bias": "encoder.ln_post.bias",
        "decoder.embed_positions.weight": "decoder.positional_embedding",
        "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
        "decoder.layer_norm.weight": "decoder.ln.weight", "decoder.layer_norm.bias": "decoder.ln.bias"}
_BLOCK = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
          "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
          "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
          "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
          "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln"}


class GgmlError(UserError, ValueError):
    """The model cannot be written as a whisper.cpp file (uneven layers, a pruned vocabulary)."""


def expected_special_ids(n_vocab: int) -> dict[str, int]:
    """The ids whisper.cpp assumes for ``n_vocab`` (src/whisper.cpp, ``whisper_model_load``)."""
    if n_vocab < 51865:
        return dict(_EN_IDS)
    shift = (n_vocab - 51765 - 1) - 98  # languages - 98 (eot/sot move by one only)
    return {k: v + (1 if k in ("<|endoftext|>", "<|startoftranscript|>") else shift) for k, v in _EN_IDS.items()}


def _side_problems(side: str, layers, d_model: int, attns: tuple[str, ...]) -> list[str]:
    heads = layers[0].self_attn.heads
    want = {"heads": heads, "qk_dim": d_model // heads, "vo_dim": d_model // heads, "scale_dim": d_model // heads}
    out = [] if d_model % heads == 0 else [f"{side} d_model {d_model} is not a multiple of {heads} heads"]
    for i, layer in enumerate(layers):
        for attn in attns:
            spec = getattr(layer, attn)
            out += [f"{side}.{i}.{attn}.{k} {getattr(spec, k)} != {v}" for k, v in want.items() if getattr(spec, k) != v]
        if layer.ffn_dim != 4 * d_model:
            out.append(f"{side}.{i}.ffn_dim {layer.ffn_dim} != 4*d_model {4 * d_model}")
    return out


def ggml_problems(loaded) -> list[str]:
    """Why whisper.cpp could not run ``loaded`` (a ``LoadedModel``) exactly; empty when it can."""
    spec, model = loaded.spec, loaded.model
    out = _side_problems("encoder", spec.encoder, spec.d_model, ("self_attn",))
    out += _side_problems("decoder", spec.decoder, spec.d_model, ("self_attn", "cross_attn"))
    if spec.decoder[0].self_attn.heads != spec.decoder[0].cross_attn.heads:
        out.append("decoder cross-attention heads differ from self-attention heads")
    tokenizer = loaded.processor.tokenizer
    if getattr(model, "slim_vocab", None) is not None:  # issue 12's kept-id map (compress/vocabprune.py)
        out.append("the vocabulary is pruned (a kept-id map); whisper.cpp needs every token")
    if spec.vocab not in _VOCAB_SIZES or len(tokenizer) != spec.vocab:
        out.append(f"vocabulary of {spec.vocab} rows ({len(tokenizer)} in the tokenizer); whisper.cpp reads "
                   f"{', '.join(map(str, _VOCAB_SIZES))} (English, multilingual, large-v3)")
    for token, want in expected_special_ids(spec.vocab).items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != want:
            out.append(f"vocabulary of {spec.vocab}: {token} is id {got}, whisper.cpp assumes {want}")
    out_w, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if out_w.shape != emb.shape or not bool((out_w == emb).all()):
        out.append("output projection is not the token embedding (whisper.cpp ties them)")
    return out


def check_ggml(loaded) -> None:
    problems = ggml_problems(loaded)
    if problems:  # one line on purpose: the brief asks for a one-line refusal naming what differs
        raise GgmlError(f"whisper.cpp cannot run {loaded.name}: it needs uniform dense layers and the standard "
                        f"vocabulary; differs: {'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}")


def hparams(loaded) -> list[int]:
    spec = loaded.spec
    return [spec.vocab, spec.n_audio_ctx, spec.d_model, spec.encoder[0].self_attn.heads, len(spec.encoder),
            spec.n_text_ctx, spec.d_model, spec.decoder[0].self_attn.heads, len(spec.decoder), spec.n_mels,
            FTYPE_F16]


def ggml_name(hf_name: str) -> str | None:
    """whisper.cpp's name for a transformers state-dict key; None for the tied ``proj_out``."""
    if hf_name == "proj_out.weight":
        return None
    name = hf_name.removeprefix("model.")
    if name in _TOP:
        return _TOP[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[1] == "layers":  # encoder.layers.3.self_attn.q_proj.weight
        return ".".join([parts[0], "blocks", parts[2], _BLOCK[".".join(parts[3:-1])], parts[-1]])
    return name  # encoder.conv1.weight and friends keep their names


def tensors(model) -> Iterator[tuple[str, np.ndarray, int]]:
    """(whisper.cpp name, data, ftype): fp16 for matrices and conv kernels, fp32 for vectors,
    conv biases and positional embeddings (what whisper.cpp's loader allocates)."""
    for hf_name, value in model.state_dict().items():
        name = ggml_name(hf_name)
        if name is None:
            continue
        data = value.detach().float().cpu().numpy()
        if name in _CONV_BIASES:
            data = data.reshape(-1, 1)
        f32 = data.ndim < 2 or name in _CONV_BIASES or name in _F32_NAMES
        yield name, np.ascontiguousarray(data, dtype=np.float32 if f32 else np.float16), FTYPE_F32 if f32 else FTYPE_F16


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table, inverted (openai/gpt-2 src/encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def vocabulary(tokenizer) -> list[bytes]:
    """The byte-level tokens up to and including <|endoftext|> (the converter's vocab.json);
    whisper.cpp names the special tokens above it itself."""
    decoder = _byte_decoder()
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    out = []
    for token in tokenizer.convert_ids_to_tokens(list(range(eot + 1))):
        token = token or ""  # a hole in the id range (multilingual 50256) is an empty token
        out.append(b"".join(bytes([decoder[c]]) if c in decoder else c.encode() for c in token))
    return out


def ggml_bytes(loaded) -> bytearray:
    """The whole file; refuses what whisper.cpp cannot run (``GgmlError``)."""
    check_ggml(loaded)
    buf = bytearray(struct.pack("<I", GGML_MAGIC))
    buf += struct.pack("<11i", *hparams(loaded))
    # The filter bank our front-end and the HF feature extractor use (201 x n_mels there).
    filters = np.ascontiguousarray(np.asarray(loaded.processor.feature_extractor.mel_filters, dtype=np.float32).T)
    if filters.shape[0] != loaded.spec.n_mels:
        raise GgmlError(f"mel filter bank has {filters.shape[0]} bands but the model reads {loaded.spec.n_mels}")
    buf += struct.pack("<2i", *filters.shape) + filters.astype("<f4").tobytes()
    vocab = vocabulary(loaded.processor.tokenizer)
    buf += struct.pack("<i", len(vocab))
    for token in vocab:
        buf += struct.pack("<i", len(token)) + token
    for name, data, ftype in tensors(loaded.model):
        encoded = name.encode()
        buf += struct.pack("<3i", data.ndim, len(encoded), ftype) + struct.pack(f"<{data.ndim}i", *data.shape[::-1])
        buf += encoded + data.astype(data.dtype.newbyteorder("<")).tobytes()
    return buf


def write_ggml(loaded, out: str | Path, *, force: bool = False, inputs=()) -> Path:
    """Write ``loaded`` as a whisper.cpp model file at ``out`` (atomically; an existing file needs ``force``)."""
    from slimwhisper.outputs import check_output_file, write_file

    path = check_output_file(out, force=force, option="--out", inputs=inputs)
    return write_file(path, ggml_bytes(loaded))


def export_file(fmt: str, model: str, out: str | Path, *, force: bool, bundle_options: dict[str, object]) -> Path:
    """``slimwhisper export --format ggml``: check everything before the model loads, then write."""
    from slimwhisper.errors import raise_problems
    from slimwhisper.models import load_model
    from slimwhisper.outputs import check_output_file

    problems = [] if fmt == "ggml" else [f"unknown --format {fmt!r}; choose onnx (a bundle folder) or ggml"]
    problems += [f"{opt} applies to ONNX bundles only; drop it with --format ggml (ggml is fp16)"
                 for opt, value in bundle_options.items() if value]
    raise_problems(GgmlError, "invalid export options", problems)
    check_output_file(out, force=force, option="--out", inputs=[model])
    return write_ggml(load_model(model), out, force=force, inputs=[model])


def convert_into(source: str, folder: str | Path) -> Path:
    """Load ``source`` and write ``folder/ggml-model.bin`` as a finished cache entry (the bench's child)."""
    from slimwhisper.models import load_model
    from slimwhisper.models.cache import DONE_MARKER, atomic_dir

    final = Path(folder)
    if not (final / DONE_MARKER).exists():
        loaded = load_model(source)
        with atomic_dir(final) as tmp:
            (tmp / MODEL_FILE).write_bytes(ggml_bytes(loaded))
            record = {"source": source, "kind": "ggml", "sha256": loaded.sha256, "name": loaded.name}
            (tmp / DONE_MARKER).write_text(json.dumps(record) + "\n")
    return final / MODEL_FILE


if __name__ == "__main__":  # python -m slimwhisper.export.ggml MODEL OUT_DIR
    try:
        print(convert_into(sys.argv[1], sys.argv[2]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
