"""The torch path of the decoding engine: a transformers Whisper as a ``runtime.engine.StepModel``.

transformers' own forward and KV cache compute the logits; the decisions (filters, greedy/beam
search, timestamps, fallback, no-speech) are the runtime's numpy engine, the same objects the
ONNX bundle uses, so both paths decide the same on the same features
(``tests/test_decoding_engine.py`` proves it). ``generate`` is not used: its Whisper logits
processors differ from openai/whisper's in details (no-speech, timestamp pairing, beam finishing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimwhisper.runtime.engine import Specials
from slimwhisper.runtime.filters import unique

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel


class TorchWhisper:
    """``StepModel`` over ``WhisperForConditionalGeneration`` (batch rows = sequences)."""

    def __init__(self, model):
        self.model = model
        self.n_text_ctx = int(model.config.max_target_positions)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    @torch.inference_mode()
    def encode(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(features)).to(device=self.device, dtype=self.dtype)
        return self.model.model.encoder(x).last_hidden_state

    def repeat(self, audio: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        return audio[torch.as_tensor(index, device=audio.device)]

    def empty_cache(self, rows: int) -> EncoderDecoderCache:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    @torch.inference_mode()
    def step(self, ids: np.ndarray, cache: EncoderDecoderCache, audio: torch.Tensor):
        out = self.model(encoder_outputs=(audio,), decoder_input_ids=torch.as_tensor(ids, device=self.device),
                         past_key_values=cache, use_cache=True)
        return out.logits.float().cpu().numpy(), out.past_key_values

    def reorder(self, cache: EncoderDecoderCache, index: np.ndarray) -> EncoderDecoderCache:
        # Beams of one audio share its cross-attention K/V, so reordering within a group is safe.
        cache.reorder_cache(torch.as_tensor(index, device=self.device))
        return cache


def specials_for(loaded: LoadedModel) -> Specials:
    """The same ids and lists the bundle manifest records (``export.bundle.tokenizer_manifest`` /
    ``decode_manifest``), read from the loaded tokenizer and generation config."""
    tok = loaded.processor.tokenizer
    gen = loaded.model.generation_config
    vmap = getattr(loaded.model, "slim_vocab", None)  # vocabulary-pruned (issue 12): built in original
    if vmap is not None:  # ids from the tokenizer, then mapped to the model's ids
        gen = vmap.generation_config(gen, inverse=True)

    def one(*names: str) -> int | None:
        for name in names:
            i = tok.convert_tokens_to_ids(name)
            if i is not None and tok.convert_ids_to_tokens(int(i)) == name:
                return int(i)
        return None

    eot, no_ts = one("<|endoftext|>"), one("<|notimestamps|>")
    begin = list(getattr(gen, "begin_suppress_tokens", None) or [220, eot])  # openai SuppressBlank
    specials = [one("<|startoftranscript|>"), one("<|startofprev|>"), one("<|transcribe|>"), one("<|translate|>"),
                one("<|nospeech|>", "<|nocaptions|>")]
    out = Specials(sot=one("<|startoftranscript|>"), eot=eot, no_timestamps=no_ts,
                   timestamp_begin=None if no_ts is None else no_ts + 1, sot_prev=one("<|startofprev|>"),
                   no_speech=one("<|nospeech|>", "<|nocaptions|>"),
                   suppress=unique(getattr(gen, "suppress_tokens", None) or []), begin_suppress=unique(begin),
                   specials=unique(specials))
    return out if vmap is None else vmap.specials(out)


def greedy_tokens(loaded: LoadedModel, features, prefix: list[int], max_new_tokens: int = 224,
                  timestamps: bool = False) -> list[int]:
    """Greedy text tokens after ``prefix`` (the full prompt, ``<|notimestamps|>`` included unless
    ``timestamps``: then without it, and the tokens carry timestamps by openai-whisper's rules) through
    the one engine: the call for pseudo-labels (``compress/calib.py``) and any other greedy loop."""
    from slimwhisper.runtime.engine import DecodingOptions, decode

    model = TorchWhisper(loaded.model)
    feats = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    specials = specials_for(loaded)
    opts = DecodingOptions(sample_len=max_new_tokens, fallback=False, timestamps=timestamps)
    vmap = getattr(loaded.model, "slim_vocab", None)
    orig = vmap.to_orig if vmap is not None else list  # ``prefix`` and the result: original ids
    prefix = vmap.to_new(prefix) if vmap is not None else list(prefix)
    detok = lambda ids: loaded.processor.tokenizer.decode(orig([t for t in ids if t < specials.eot]))
    sot_index = list(prefix).index(specials.sot)
    (r,) = decode(model, model.encode(feats), list(prefix), sot_index, specials, opts, 0.0, detok,
                  np.random.default_rng(0))
    return orig(r.tokens)
