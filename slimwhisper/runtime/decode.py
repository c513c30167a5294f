"""Greedy decoding with a per-layer KV cache over the bundle's two ONNX graphs.

The encoder graph gives each decoder layer's cross-attention K/V once per 30 s window; the decoder
graph takes the growing self-attention cache (``past_k.i``/``past_v.i``) and returns it extended
(``present_k.i``/``present_v.i``). Layers may differ in heads and widths, so the empty cache of
each layer is shaped from the manifest's per-layer spec, never from one head count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DecodeOptions:
    """Greedy decoding settings; token ids come from the bundle manifest."""

    max_new_tokens: int = 224  # openai/whisper's sample_len = n_text_ctx // 2
    # Multilingual models: None means "en" (as slimwhisper.transcribe.DecodeConfig: forced, not
    # detected), "auto" detects it per window from the first decoder step. English-only: ignored.
    language: str | None = None
    task: str = "transcribe"  # or "translate" (multilingual only)
    suppress_blank: bool = True  # apply begin_suppress_tokens at the first generated position

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.task not in ("transcribe", "translate"):
            problems.append(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if problems:
            raise ValueError("invalid DecodeOptions: " + "; ".join(problems))


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


@dataclass
class StepTrace:
    """What a decode produced: tokens (prompt excluded) and, if asked, each step's last logits."""

    tokens: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)


class GreedyDecoder:
    """Runs the encoder once per window, then the decoder token by token."""

    def __init__(self, encoder, decoder, layout: CacheLayout, *, eot: int, suppress: list[int],
                 begin_suppress: list[int], n_text_ctx: int):
        self.encoder, self.decoder, self.layout = encoder, decoder, layout
        self.eot = eot
        self.suppress = np.asarray(sorted(set(suppress)), dtype=np.int64)
        self.begin_suppress = np.asarray(sorted(set(begin_suppress)), dtype=np.int64)
        self.n_text_ctx = n_text_ctx
        self.dtype = np.float16 if "float16" in encoder.get_inputs()[0].type else np.float32
        self.cross_names = [o.name for o in encoder.get_outputs()[1:]]
        self.present_names = [o.name for o in decoder.get_outputs()[1:]]

    def encode(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, n_mels, 3000)`` log-mel -> {"cross_k.i": ..., "cross_v.i": ...}."""
        outs = self.encoder.run(self.cross_names, {"input_features": features.astype(self.dtype)})
        return dict(zip(self.cross_names, outs))

    def step(self, ids: np.ndarray, past: dict, cross: dict) -> tuple[np.ndarray, dict]:
        feeds = {"input_ids": ids.astype(np.int64), **past, **cross}
        logits, *present = self.decoder.run(None, feeds)
        past = {name.replace("present", "past"): value for name, value in zip(self.present_names, present)}
        return logits, past

    def _pick(self, logits: np.ndarray, first: bool) -> int:
        row = logits.astype(np.float32)  # copy: the filters below must not touch the session's buffer
        if self.suppress.size:
            row[self.suppress] = -np.inf
        if first and self.begin_suppress.size:
            row[self.begin_suppress] = -np.inf
        return int(np.argmax(row))

    def greedy(self, cross: dict, prompt: list[int], max_new_tokens: int, *, keep_logits: bool = False,
               force: list[int] | None = None) -> StepTrace:
        """Greedy tokens after ``prompt`` (batch 1). ``force`` feeds given tokens instead of the
        argmax (teacher forcing, used by the parity check to compare logits along one path)."""
        trace = StepTrace()
        past = self.layout.empty(1, self.dtype)
        ids = np.asarray([prompt], dtype=np.int64)
        limit = min(max_new_tokens, self.n_text_ctx - len(prompt))
        for t in range(limit):
            logits, past = self.step(ids, past, cross)
            last = logits[0, -1]
            if keep_logits:
                trace.logits.append(last.astype(np.float32))
            token = force[t] if force is not None else self._pick(last, first=(t == 0))
            if token == self.eot or (force is not None and t == len(force) - 1):
                if token != self.eot:
                    trace.tokens.append(token)
                break
            trace.tokens.append(token)
            ids = np.asarray([[token]], dtype=np.int64)
        return trace

    def detect_language(self, cross: dict, sot: int, language_ids: dict[str, int]) -> str:
        """Most likely language token after ``<|startoftranscript|>`` (openai/whisper detect_language)."""
        logits, _ = self.step(np.asarray([[sot]]), self.layout.empty(1, self.dtype), cross)
        codes = list(language_ids)
        ids = np.asarray([language_ids[c] for c in codes])
        return codes[int(np.argmax(logits[0, -1, ids]))]
