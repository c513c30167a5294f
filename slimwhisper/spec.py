"""The per-layer shape spec that travels with the weights.

A pruned Whisper is no longer described by one ``WhisperConfig``: heads, head widths, FFN widths
and depth differ per layer. Every later stage (reload, export, runtime, bench, device estimates)
reads this object instead of guessing. It is pure Python (no torch) so the runtime and device
code can use it too. Like openai/whisper's ``ModelDimensions`` it is saved beside the weights, and
like a CTranslate2 ``spec`` it is validated in one step that reports every problem at once.

Parameter and FLOP formulas are written once here (see ``params`` and ``flops``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any
from slimwhisper.errors import UserError

SPEC_VERSION = 1


class SpecError(UserError, ValueError):
    """A spec (or a model/weights pair) is inconsistent; ``problems`` lists every issue found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid shape spec", self.problems)


@dataclass(frozen=True)
class AttnSpec:
    """One multi-head attention block.

    ``qk_dim`` is the per-head width of Q and K, ``vo_dim`` that of V (and the input of O); they
    differ after decoupled channel pruning ("The silence of the weights", arXiv 2509.26207).
    ``scale_dim`` is the head width the softmax temperature comes from, 1/sqrt(scale_dim): the
    dense head width, which channel pruning must not change.
    """

    heads: int
    qk_dim: int
    vo_dim: int
    scale_dim: int

    def problems(self, where: str) -> list[str]:
        out = []
        for name in ("heads", "qk_dim", "vo_dim", "scale_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                out.append(f"{where}.{name} must be a positive int, got {value!r}")
        return out

    def params(self, d_model: int) -> int:
        # Whisper: q, v, out have biases; k has none (openai/whisper model.py MultiHeadAttention).
        qk, vo = self.heads * self.qk_dim, self.heads * self.vo_dim
        q = d_model * qk + qk
        k = d_model * qk
        v = d_model * vo + vo
        o = vo * d_model + d_model
        return q + k + v + o


@dataclass(frozen=True)
class LayerSpec:
    """One transformer block; ``cross_attn`` is None for encoder layers."""

    self_attn: AttnSpec
    ffn_dim: int
    source_index: int
    cross_attn: AttnSpec | None = None

    def problems(self, where: str) -> list[str]:
        out = self.self_attn.problems(f"{where}.self_attn")
        if self.cross_attn is not None:
            out += self.cross_attn.problems(f"{where}.cross_attn")
        if not isinstance(self.ffn_dim, int) or self.ffn_dim < 1:
            out.append(f"{where}.ffn_dim must be a positive int, got {self.ffn_dim!r}")
        if not isinstance(self.source_index, int) or self.source_index < 0:
            out.append(f"{where}.source_index must be a non-negative int, got {self.source_index!r}")
        return out

    def params(self, d_model: int) -> dict[str, int]:
        ln = 2 * d_model  # LayerNorm weight + bias
        parts = {
            "self_attn": self.self_attn.params(d_model) + ln,
            "ffn": d_model * self.ffn_dim + self.ffn_dim + self.ffn_dim * d_model + d_model + ln,
        }
        if self.cross_attn is not None:
            parts["cross_attn"] = self.cross_attn.params(d_model) + ln
        return parts


@dataclass(frozen=True)
class ArchSpec:
    d_model: int
    n_mels: int
    vocab: int
    n_audio_ctx: int
    n_text_ctx: int
    encoder: tuple[LayerSpec, ...]
    decoder: tuple[LayerSpec, ...]
    version: int = field(default=SPEC_VERSION)
    # Vocabulary pruning (issue 12): the dense vocabulary size when ``vocab`` holds only kept
    # tokens (the id map travels beside the weights, runtime/vocabmap.py); None = not pruned.
    source_vocab: int | None = None

    def __post_init__(self) -> None:
        # Accept lists (from JSON) but store tuples so the spec stays hashable and immutable.
        object.__setattr__(self, "encoder", tuple(self.encoder))
        object.__setattr__(self, "decoder", tuple(self.decoder))
        problems = self.problems()
        if problems:
            raise SpecError(problems)

    # ---- validation -------------------------------------------------------------------------
    def problems(self) -> list[str]:
        out = []
        if self.version != SPEC_VERSION:
            out.append(f"spec version {self.version} is not supported (this slimwhisper reads {SPEC_VERSION})")
        for name in ("d_model", "n_mels", "vocab", "n_audio_ctx", "n_text_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                out.append(f"{name} must be a positive int, got {value!r}")
        if self.source_vocab is not None and (not isinstance(self.source_vocab, int) or self.source_vocab < self.vocab):
            out.append(f"source_vocab must be an int >= vocab ({self.vocab}), got {self.source_vocab!r}")
        if not self.encoder:
            out.append("encoder has no layers")
        if not self.decoder:
            out.append("decoder has no layers")
        for side, layers in (("encoder", self.encoder), ("decoder", self.decoder)):
            sources = [layer.source_index for layer in layers]
            if sources != sorted(set(sources)):
                out.append(f"{side} source_index values must be strictly increasing, got {sources}")
            for i, layer in enumerate(layers):
                out += layer.problems(f"{side}.{i}")
                if side == "encoder" and layer.cross_attn is not None:
                    out.append(f"encoder.{i} must not have cross_attn")
                if side == "decoder" and layer.cross_attn is None:
                    out.append(f"decoder.{i} needs cross_attn")
        return out

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["source_vocab"] is None:  # unpruned vocabulary: the JSON stays what it always was
            del d["source_vocab"]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        def attn(d: dict | None) -> AttnSpec | None:
            return None if d is None else AttnSpec(**d)

        def layer(d: dict) -> LayerSpec:
            return LayerSpec(
                self_attn=attn(d["self_attn"]),
                cross_attn=attn(d.get("cross_attn")),
                ffn_dim=d["ffn_dim"],
                source_index=d["source_index"],
            )

        try:
            fields = {k: data[k] for k in ("d_model", "n_mels", "vocab", "n_audio_ctx", "n_text_ctx")}
            return cls(
                **fields,
                encoder=tuple(layer(d) for d in data["encoder"]),
                decoder=tuple(layer(d) for d in data["decoder"]),
                version=data.get("version", SPEC_VERSION),
                source_vocab=data.get("source_vocab"),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError([f"malformed spec JSON: {exc!r}"]) from exc

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def dense(
        cls,
        *,
        d_model: int,
        n_mels: int,
        vocab: int,
        n_audio_ctx: int,
        n_text_ctx: int,
        encoder_layers: int,
        decoder_layers: int,
        encoder_heads: int,
        decoder_heads: int,
        encoder_ffn: int,
        decoder_ffn: int,
    ) -> ArchSpec:
        """The dense model is simply the spec where every layer is full."""

        def full(heads: int) -> AttnSpec:
            hd = d_model // heads
            return AttnSpec(heads=heads, qk_dim=hd, vo_dim=hd, scale_dim=hd)

        enc = tuple(LayerSpec(full(encoder_heads), encoder_ffn, i) for i in range(encoder_layers))
        dec = tuple(
            LayerSpec(full(decoder_heads), decoder_ffn, i, cross_attn=full(decoder_heads))
            for i in range(decoder_layers)
        )
        return cls(d_model, n_mels, vocab, n_audio_ctx, n_text_ctx, enc, dec)

    # ---- formulas ---------------------------------------------------------------------------
    def params_by_component(self) -> dict[str, int]:
        """Parameters per component, matching ``sum(p.numel() for p in model.parameters())``.

        Counted like torch does for transformers' Whisper: the encoder's sinusoidal position
        table is an (untrained) parameter there, and the output projection is tied to the token
        embedding so it is counted once.
        """
        d = self.d_model
        out = {
            # conv1: n_mels->d, k=3; conv2: d->d, k=3 (stride 2); positions; final LayerNorm
            "encoder.embed": (self.n_mels * d * 3 + d) + (d * d * 3 + d) + self.n_audio_ctx * d + 2 * d,
            "decoder.embed": self.vocab * d + self.n_text_ctx * d + 2 * d,
        }
        for side, layers in (("encoder", self.encoder), ("decoder", self.decoder)):
            for layer in layers:
                for comp, n in layer.params(d).items():
                    key = f"{side}.{comp}"
                    out[key] = out.get(key, 0) + n
        return out

    def params(self) -> int:
        return sum(self.params_by_component().values())

    def flops(self, tokens: int = 1, context: int = 1) -> dict[str, int]:
        """FLOPs (2 x multiply-accumulates) of matrix products, convolutions and attention.

        ``encoder``: one 30 s window (``2 * n_audio_ctx`` mel frames), both convolutions, all
        projections, attention scores (QK^T) and weighted values (AV), FFNs.
        ``cross_kv``: the decoder's cross-attention K/V projections of the encoder output, done
        once per window.
        ``decoder_token``: one decoded token at self-attention context length ``context``
        (projections, QK^T and AV over ``context`` cached positions and over ``n_audio_ctx``
        encoder positions, FFNs, output projection to the vocabulary), times ``tokens``.
        Not included: softmax, LayerNorm, GELU, bias adds, embeddings lookups (all O(d) per position).
        """
        d, T = self.d_model, self.n_audio_ctx
        frames = 2 * T
        enc = 2 * frames * self.n_mels * d * 3 + 2 * T * d * d * 3
        for layer in self.encoder:
            a = layer.self_attn
            qk, vo = a.heads * a.qk_dim, a.heads * a.vo_dim
            enc += 2 * T * d * (2 * qk + 2 * vo)  # q, k, v, o projections
            enc += 2 * T * T * (qk + vo)  # QK^T and AV
            enc += 2 * T * d * layer.ffn_dim * 2  # fc1, fc2
        cross_kv = 0
        dec = 2 * d * self.vocab  # output projection
        for layer in self.decoder:
            a, c = layer.self_attn, layer.cross_attn
            assert c is not None
            qk, vo = a.heads * a.qk_dim, a.heads * a.vo_dim
            cqk, cvo = c.heads * c.qk_dim, c.heads * c.vo_dim
            dec += 2 * d * (2 * qk + 2 * vo) + 2 * context * (qk + vo)
            dec += 2 * d * (cqk + cvo) + 2 * T * (cqk + cvo)  # cross q and o, cross QK^T and AV
            dec += 2 * d * layer.ffn_dim * 2
            cross_kv += 2 * T * d * (cqk + cvo)
        return {"encoder": enc, "cross_kv": cross_kv, "decoder_token": dec * tokens}

    # ---- convenience ------------------------------------------------------------------------
    def summary(self) -> str:
        def side(layers: tuple[LayerSpec, ...]) -> str:
            return " ".join(
                f"[{ly.source_index}:h{ly.self_attn.heads}"
                + (f"/x{ly.cross_attn.heads}" if ly.cross_attn else "")
                + f",f{ly.ffn_dim}]"
                for ly in layers
            )

        return f"encoder {side(self.encoder)}\ndecoder {side(self.decoder)}"
