"""An independent FLOP count to check ``ArchSpec.flops`` against.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 x multiply-accumulates of every matmul and
convolution torch really runs; with eager attention that includes QK^T and AV and excludes
softmax, LayerNorm, GELU and bias adds, the same set ``ArchSpec.flops`` documents. (SDPA's CPU
kernel has no registered formula, so the check switches the model to eager attention.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration


@contextlib.contextmanager
def eager_attention(model: WhisperForConditionalGeneration) -> Iterator[None]:
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def counted_flops(model: WhisperForConditionalGeneration, context: int = 32, seed: int = 0) -> dict[str, int]:
    """FLOPs torch counts for one 30 s encoder window and one decoder step attending ``context`` keys.

    The decoder step runs with a cache of ``context - 1`` tokens (cross-attention K/V already
    cached), so it attends ``context`` self-attention positions, as ``ArchSpec.flops`` states.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=gen)
    model.eval()
    with torch.no_grad(), eager_attention(model):
        with FlopCounterMode(display=False) as fc:
            enc = model.model.encoder(feats).last_hidden_state
        encoder = fc.get_total_flops()
        ids = torch.randint(0, cfg.vocab_size, (1, context), generator=gen)
        past = None
        if context > 1:
            past = model(encoder_outputs=(enc,), decoder_input_ids=ids[:, :-1], use_cache=True).past_key_values
        with FlopCounterMode(display=False) as fc:
            model(encoder_outputs=(enc,), decoder_input_ids=ids[:, -1:], past_key_values=past, use_cache=True)
        decoder = fc.get_total_flops()
    return {"encoder": int(encoder), "decoder_token": int(decoder)}


def compare(model: WhisperForConditionalGeneration, context: int = 32) -> dict[str, dict[str, float]]:
    """Spec formula vs torch count, with relative difference, for both parts."""
    from slimwhisper.models.slim import spec_from_model

    spec = spec_from_model(model).flops(tokens=1, context=context)
    if context <= 1:
        # Without a cache the first step also projects the encoder output to cross K/V.
        spec["decoder_token"] += spec["cross_kv"]
    torch_counts = counted_flops(model, context)
    return {k: {"spec": spec[k], "torch": v, "rel_diff": abs(spec[k] - v) / max(v, 1)} for k, v in torch_counts.items()}
