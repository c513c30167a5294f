"""Helpers for tests: a tiny random Whisper with the real tiny.en processor and tokenizer.

The weights are random but the vocabulary, special-token ids, feature extractor and generation
config are those of the bundled tiny.en, so decoding, evaluation and export code paths run the
same as on the real model, in a fraction of the time.
"""

from __future__ import annotations

import copy
import functools

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from slimwhisper.models.api import LoadedModel

TINY_RANDOM = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    num_mel_bins=80,
    vocab_size=51864,
    max_source_positions=1500,
    max_target_positions=448,
)


@functools.lru_cache(maxsize=1)
def _tiny_en_parts():
    from slimwhisper.models.bundled import BUNDLED
    from slimwhisper.models.convert import build_tokenizer

    bundled = BUNDLED["tiny.en"]
    return build_tokenizer(bundled.tokenizer_json()), bundled.ct2_config()


def tiny_en_processor(n_mels: int = 80) -> WhisperProcessor:
    """A fresh copy of the bundled tiny.en processor (tokenizer with timestamp tokens)."""
    from slimwhisper.models.convert import processor_for

    tokenizer, _ = _tiny_en_parts()
    return processor_for(copy.deepcopy(tokenizer), n_mels)


def tiny_random_loaded(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> LoadedModel:
    """A random Whisper (d_model 64, 2+2 layers, 4 heads, ffn 128 unless ``overrides`` say otherwise).

    ``overrides`` are ``WhisperConfig`` fields. The vocabulary stays the real English one (51864)
    unless overridden; a different ``vocab_size`` keeps the tiny.en tokenizer, so only ids below
    it decode.
    """
    from slimwhisper.models.convert import generation_config_for
    from slimwhisper.models.slim import spec_from_model

    tokenizer, ct2_config = _tiny_en_parts()
    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    fields = {
        **TINY_RANDOM,
        "pad_token_id": eot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "decoder_start_token_id": ids("<|startoftranscript|>"),
        "begin_suppress_tokens": None,
        "suppress_tokens": None,
        **overrides,
    }
    config = WhisperConfig(**fields)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).float().eval()
    model.generation_config = generation_config_for(config, tokenizer, ct2_config)
    return LoadedModel(
        model=model,
        processor=tiny_en_processor(config.num_mel_bins),
        spec=spec_from_model(model),
        name="tiny-random",
        source=f"tiny_random_loaded(seed={seed})",
        kind="testing",
        multilingual=False,
        extra={"alignment_heads": [[0, 0], [1, 1]]},
    )
