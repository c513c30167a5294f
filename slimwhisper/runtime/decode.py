"""The bundle's two ONNX graphs as a ``StepModel`` for the decoding engine (``runtime.engine``).

The encoder graph gives each decoder layer's cross-attention K/V once per 30 s window; the decoder
graph takes the growing self-attention cache (``past_k.i``/``past_v.i``) and returns it extended
(``present_k.i``/``present_v.i``). Layers may differ in heads and widths, so the empty cache of
each layer is shaped from the manifest's per-layer spec, never from one head count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from slimwhisper.errors import UserError, raise_problems
from slimwhisper.runtime.engine import DecodingOptions

# Multilingual models decode English unless told otherwise: forced, not detected, because
# language detection on short clips fails in ways that have nothing to do with model size and
# would make the torch and bundle backends (and dense vs pruned) incomparable.
DEFAULT_LANGUAGE = "en"


def forced_language(language: str | None, multilingual: bool) -> str | None:
    """The language a model is prompted with: ``language`` or English for a multilingual model
    (``"auto"`` is passed through: the runtime detects it); ``None`` for an English-only one,
    which takes no language token. The one definition, used by the runtime and ``transcribe``."""
    if not multilingual:
        return None
    return language or DEFAULT_LANGUAGE


class DecodeOptionsError(UserError, ValueError):
    """A runtime decoding option is out of range; the message lists each problem."""


@dataclass(frozen=True)
class DecodeOptions:
    """What the bundle runtime decodes: prompt (language, task) and the engine's ``decoding``
    options (default: plain greedy without timestamps, fallback or no-speech rule; ``max_new_tokens``
    and ``suppress_blank`` override the engine's ``sample_len`` / ``suppress_blank``)."""

    max_new_tokens: int = 224  # openai/whisper's sample_len = n_text_ctx // 2
    # Multilingual models: None means DEFAULT_LANGUAGE (see ``forced_language``), "auto" detects
    # it per window from the first decoder step. English-only: ignored.
    language: str | None = None
    task: str = "transcribe"  # or "translate" (multilingual only)
    suppress_blank: bool = True  # apply begin_suppress_tokens at the first generated position
    decoding: DecodingOptions | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.task not in ("transcribe", "translate"):
            problems.append(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        raise_problems(DecodeOptionsError, "invalid DecodeOptions", problems)

    @property
    def engine(self) -> DecodingOptions:
        # the default matches slimwhisper.transcribe.DecodeConfig(): plain greedy, no rules on top
        base = self.decoding or DecodingOptions(fallback=False, no_speech_threshold=None, silence_dbfs=None)
        return replace(base, sample_len=self.max_new_tokens, suppress_blank=self.suppress_blank)


@dataclass
class CacheLayout:
    """Per decoder layer: (heads, qk_dim, vo_dim) of the self-attention cache."""

    layers: list[tuple[int, int, int]]

    @classmethod
    def from_spec(cls, spec: dict) -> CacheLayout:
        return cls([(d["self_attn"]["heads"], d["self_attn"]["qk_dim"], d["self_attn"]["vo_dim"])
                    for d in spec["decoder"]])

    def empty(self, batch: int, dtype) -> dict[str, np.ndarray]:
        out = {}
        for i, (h, qk, vo) in enumerate(self.layers):
            out[f"past_k.{i}"] = np.zeros((batch, h, 0, qk), dtype=dtype)
            out[f"past_v.{i}"] = np.zeros((batch, h, 0, vo), dtype=dtype)
        return out


class OnnxWhisper:
    """``StepModel`` over the encoder graph (cross K/V per decoder layer, once per window) and the
    decoder graph (growing self-attention cache ``past_*`` -> ``present_*``)."""

    def __init__(self, encoder, decoder, layout: CacheLayout, *, n_text_ctx: int):
        self.encoder, self.decoder, self.layout = encoder, decoder, layout
        self.n_text_ctx = n_text_ctx
        self.dtype = np.float16 if "float16" in encoder.get_inputs()[0].type else np.float32
        self.cross_names = [o.name for o in encoder.get_outputs()[1:]]
        self.present_names = [o.name for o in decoder.get_outputs()[1:]]

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, n_mels, 3000)`` log-mel -> {"cross_k.i": ..., "cross_v.i": ...}."""
        outs = self.encoder.run(self.cross_names, {"input_features": features.astype(self.dtype)})
        return dict(zip(self.cross_names, outs))

    def repeat(self, audio: dict, index: np.ndarray) -> dict:
        return {k: v[index] for k, v in audio.items()}

    def empty_cache(self, rows: int) -> dict:
        return self.layout.empty(rows, self.dtype)

    def step(self, ids: np.ndarray, past: dict, cross: dict) -> tuple[np.ndarray, dict]:
        feeds = {"input_ids": ids.astype(np.int64), **past, **cross}
        logits, *present = self.decoder.run(None, feeds)
        past = {name.replace("present", "past"): value for name, value in zip(self.present_names, present)}
        return logits, past

    def reorder(self, past: dict, index: np.ndarray) -> dict:
        return {k: v[index] for k, v in past.items()}

    def detect_language(self, cross: dict, sot: int, language_ids: dict[str, int]) -> str:
        """Most likely language token after ``<|startoftranscript|>`` (openai/whisper detect_language)."""
        logits, _ = self.step(np.asarray([[sot]]), self.empty_cache(1), self.repeat(cross, np.asarray([0])))
        codes = list(language_ids)
        ids = np.asarray([language_ids[c] for c in codes])
        return codes[int(np.argmax(logits[0, -1, ids]))]


def teacher_forced_logits(model, audio, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """The last-position logits (float32) of every step when ``tokens`` are fed after ``prompt``
    (batch 1): the parity check compares two models along one path this way."""
    out, cache, ids = [], model.empty_cache(1), np.asarray([prompt], dtype=np.int64)
    for t in [None, *tokens][: max(1, len(tokens))]:
        if t is not None:
            ids = np.asarray([[t]], dtype=np.int64)
        logits, cache = model.step(ids, cache, audio)
        out.append(np.asarray(logits[0, -1], dtype=np.float32))
    return out
