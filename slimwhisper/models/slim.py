"""Whisper modules whose shapes come from an ``ArchSpec``.

transformers' ``WhisperAttention`` assumes one head width for Q, K and V and derives the softmax
scale from ``embed_dim // num_heads``. ``SlimWhisperAttention`` keeps its interface (so the
stock encoder/decoder layers, caches and ``generate()`` work unchanged) but takes heads, Q/K width,
V/O width and the softmax scale from an ``AttnSpec``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import WhisperConfig, WhisperForConditionalGeneration
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.whisper.modeling_whisper import (
    ALL_ATTENTION_FUNCTIONS,
    WhisperAttention,
    eager_attention_forward,
)

from slimwhisper.spec import ArchSpec, AttnSpec, LayerSpec, SpecError


class SlimWhisperAttention(WhisperAttention):
    def __init__(
        self,
        embed_dim: int,
        spec: AttnSpec,
        *,
        is_decoder: bool,
        is_causal: bool,
        layer_idx: int | None,
        config: WhisperConfig,
    ):
        nn.Module.__init__(self)
        self.embed_dim = embed_dim
        self.num_heads = spec.heads
        self.qk_dim = spec.qk_dim
        self.vo_dim = spec.vo_dim
        self.head_dim = spec.qk_dim  # what transformers' helpers read
        self.scale_dim = spec.scale_dim
        # The temperature stays that of the dense head (2509.26207: channel pruning must not
        # change 1/sqrt(d_head)); Whisper scales q before QK^T, as openai/whisper does.
        self.scaling = spec.scale_dim**-0.5
        self.dropout = config.attention_dropout
        self.config = config
        self.is_decoder = is_decoder
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        qk, vo = spec.heads * spec.qk_dim, spec.heads * spec.vo_dim
        self.k_proj = nn.Linear(embed_dim, qk, bias=False)
        self.v_proj = nn.Linear(embed_dim, vo, bias=True)
        self.q_proj = nn.Linear(embed_dim, qk, bias=True)
        self.out_proj = nn.Linear(vo, embed_dim, bias=True)

    @property
    def spec(self) -> AttnSpec:
        return AttnSpec(self.num_heads, self.qk_dim, self.vo_dim, self.scale_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ):
        # Same flow as WhisperAttention.forward (transformers 5.23), with V viewed by vo_dim.
        is_cross = key_value_states is not None
        input_shape = hidden_states.shape[:-1]
        q = self.q_proj(hidden_states) * self.scaling
        q = q.view(*input_shape, self.num_heads, self.qk_dim).transpose(1, 2).contiguous()

        is_updated = False
        if past_key_values is not None and isinstance(past_key_values, EncoderDecoderCache):
            is_updated = past_key_values.is_updated.get(self.layer_idx)
            if is_cross:
                past_key_values.is_updated[self.layer_idx] = True
                past_key_values = past_key_values.cross_attention_cache
            else:
                past_key_values = past_key_values.self_attention_cache

        current = key_value_states if is_cross else hidden_states
        if is_cross and past_key_values and is_updated:
            k = past_key_values.layers[self.layer_idx].keys
            v = past_key_values.layers[self.layer_idx].values
        else:
            b = input_shape[0]
            k = self.k_proj(current).view(b, -1, self.num_heads, self.qk_dim).transpose(1, 2).contiguous()
            v = self.v_proj(current).view(b, -1, self.num_heads, self.vo_dim).transpose(1, 2).contiguous()
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, self.layer_idx)

        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=1.0,
            output_attentions=output_attentions,
            **kwargs,
        )
        out = out.reshape(*input_shape, -1).contiguous()
        return self.out_proj(out), weights


def attn_spec_of(attn: WhisperAttention) -> AttnSpec:
    if isinstance(attn, SlimWhisperAttention):
        return attn.spec
    heads = attn.num_heads
    return AttnSpec(
        heads=heads,
        qk_dim=attn.q_proj.out_features // heads,
        vo_dim=attn.v_proj.out_features // heads,
        scale_dim=round(attn.scaling**-2),
    )


def spec_from_model(model: WhisperForConditionalGeneration, sources: dict[str, list[int]] | None = None) -> ArchSpec:
    """Read the per-layer truth off real modules.

    ``sources`` maps "encoder"/"decoder" to the dense layer index of each kept layer; without it
    the value stored on each layer by surgery (``layer.slim_source_index``) or its position is used.
    """
    m = model.model
    cfg = model.config

    def side(name: str, layers: nn.ModuleList) -> tuple[LayerSpec, ...]:
        out = []
        for i, layer in enumerate(layers):
            src = sources[name][i] if sources else getattr(layer, "slim_source_index", i)
            cross = attn_spec_of(layer.encoder_attn) if hasattr(layer, "encoder_attn") else None
            out.append(LayerSpec(attn_spec_of(layer.self_attn), layer.fc1.out_features, src, cross))
        return tuple(out)

    return ArchSpec(
        d_model=cfg.d_model,
        n_mels=cfg.num_mel_bins,
        vocab=cfg.vocab_size,
        n_audio_ctx=cfg.max_source_positions,
        n_text_ctx=cfg.max_target_positions,
        encoder=side("encoder", m.encoder.layers),
        decoder=side("decoder", m.decoder.layers),
        # a vocabulary-pruned model carries its id map (compress/vocab.py, runtime/vocabmap.py)
        source_vocab=getattr(getattr(model, "slim_vocab", None), "source_vocab", None),
    )


def shape_layer(layer: nn.Module, spec: LayerSpec, *, config: WhisperConfig, layer_idx: int, decoder: bool) -> None:
    """Give one encoder/decoder layer the module shapes of ``spec`` (weights uninitialised)."""
    d = config.d_model
    layer.self_attn = SlimWhisperAttention(
        d, spec.self_attn, is_decoder=decoder, is_causal=decoder, layer_idx=layer_idx if decoder else None, config=config
    )
    if decoder:
        assert spec.cross_attn is not None
        layer.encoder_attn = SlimWhisperAttention(
            d, spec.cross_attn, is_decoder=True, is_causal=False, layer_idx=layer_idx, config=config
        )
    layer.fc1 = nn.Linear(d, spec.ffn_dim)
    layer.fc2 = nn.Linear(spec.ffn_dim, d)
    layer.slim_source_index = spec.source_index


def config_for_spec(config: WhisperConfig, spec: ArchSpec) -> WhisperConfig:
    """A WhisperConfig whose layer counts match ``spec`` (per-layer widths live in the spec)."""
    cfg = copy.deepcopy(config)
    cfg.encoder_layers = len(spec.encoder)
    cfg.decoder_layers = len(spec.decoder)
    cfg.num_hidden_layers = len(spec.encoder)
    problems = []
    for name, have, want in (
        ("d_model", cfg.d_model, spec.d_model),
        ("num_mel_bins", cfg.num_mel_bins, spec.n_mels),
        ("vocab_size", cfg.vocab_size, spec.vocab),
        ("max_source_positions", cfg.max_source_positions, spec.n_audio_ctx),
        ("max_target_positions", cfg.max_target_positions, spec.n_text_ctx),
    ):
        if have != want:
            problems.append(f"config.{name}={have} but spec says {want}")
    if problems:
        raise SpecError(problems)
    return cfg


def model_from_spec(config: WhisperConfig, spec: ArchSpec) -> WhisperForConditionalGeneration:
    """Build a Whisper with exactly the per-layer shapes of ``spec`` (random weights)."""
    cfg = config_for_spec(config, spec)
    model = WhisperForConditionalGeneration(cfg)
    for side, layers, decoder in (
        (spec.encoder, model.model.encoder.layers, False),
        (spec.decoder, model.model.decoder.layers, True),
    ):
        for i, (layer, layer_spec) in enumerate(zip(layers, side, strict=True)):
            shape_layer(layer, layer_spec, config=cfg, layer_idx=i, decoder=decoder)
    model.tie_weights()
    return model


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights whose names or shapes disagree with the model built from a spec."""
    want = model.state_dict()
    problems = []
    for name, tensor in want.items():
        if name not in state:
            if name == "proj_out.weight":  # tied to the embedding, saved once
                continue
            problems.append(f"missing weight {name} {tuple(tensor.shape)}")
        elif tuple(state[name].shape) != tuple(tensor.shape):
            problems.append(f"{name}: spec says {tuple(tensor.shape)}, file has {tuple(state[name].shape)}")
    for name in state:
        if name not in want:
            problems.append(f"unexpected weight {name} {tuple(state[name].shape)}")
    if problems:
        raise SpecError(problems)
