"""Encoder and decoder ONNX graphs shaped by the model's own ``ArchSpec``.

Two thin wrappers around transformers' modules (no attention code rewritten):

* encoder graph: log-mel ``(B, n_mels, 3000)`` -> encoder hidden states and, for every decoder
  layer ``i``, its cross-attention keys ``cross_k.i`` ``(B, heads_i, 1500, qk_i)`` and values
  ``cross_v.i`` ``(B, heads_i, 1500, vo_i)``: computed once per 30 s window, as CTranslate2 and
  openai/whisper do, instead of once per token.
* decoder graph: ``input_ids`` plus per-layer self-attention cache ``past_k.i``/``past_v.i`` and
  the cross K/V -> ``logits`` and ``present_k.i``/``present_v.i``. Inside the graph the flat
  tensors are rebuilt into an ``EncoderDecoderCache`` and transformers' decoder runs unchanged,
  so per-layer heads and Q/K vs V/O widths come from the modules themselves.

Exported with ``torch.onnx.export(dynamo=True)`` and eager attention: SDPA leaves a
Reshape->Transpose->Reshape that copies the cross keys on every step, and the legacy exporter
unties the output projection.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn
from transformers import WhisperForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimwhisper.runtime.frontend import N_FRAMES  # 30 s of 10 ms hops (1500 encoder positions)
from slimwhisper.spec import ArchSpec


def cache_names(n_layers: int, prefix: str) -> list[str]:
    """``[f"{prefix}_k.0", f"{prefix}_v.0", ...]`` in layer order (the graphs' I/O order)."""
    return [f"{prefix}_{kv}.{i}" for i in range(n_layers) for kv in ("k", "v")]


class EncoderGraph(nn.Module):
    """Encoder + every decoder layer's cross K/V projections, viewed by that layer's own shapes."""

    def __init__(self, model: WhisperForConditionalGeneration):
        super().__init__()
        self.encoder = model.model.encoder
        self.cross = nn.ModuleList(layer.encoder_attn for layer in model.model.decoder.layers)

    def forward(self, input_features: torch.Tensor):
        hidden = self.encoder(input_features).last_hidden_state
        b, t = hidden.shape[:2]
        out = [hidden]
        for attn in self.cross:
            # SlimWhisperAttention has qk_dim/vo_dim; a stock WhisperAttention has one head_dim.
            qk = getattr(attn, "qk_dim", attn.head_dim)
            vo = getattr(attn, "vo_dim", attn.head_dim)
            out.append(attn.k_proj(hidden).view(b, t, attn.num_heads, qk).transpose(1, 2))
            out.append(attn.v_proj(hidden).view(b, t, attn.num_heads, vo).transpose(1, 2))
        return tuple(out)


class DecoderGraph(nn.Module):
    """One decoding step (or the prompt) with a flat per-layer self/cross K/V cache."""

    def __init__(self, model: WhisperForConditionalGeneration):
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.n_layers = len(self.decoder.layers)
        self.d_model = model.config.d_model

    def forward(self, input_ids: torch.Tensor, *kv: torch.Tensor):
        n = self.n_layers
        past, cross = kv[: 2 * n], kv[2 * n :]
        self_cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(n)])
        cross_cache = DynamicCache([(cross[2 * i], cross[2 * i + 1]) for i in range(n)])
        cache = EncoderDecoderCache(self_cache, cross_cache)
        # The decoder skips cross-attention without encoder states; the real K/V come from the
        # (already filled, is_updated) cross cache, so a (B, 1, d) dummy suffices.
        dummy = torch.zeros(input_ids.shape[0], 1, self.d_model, dtype=cross[0].dtype)
        out = self.decoder(
            input_ids=input_ids, encoder_hidden_states=dummy, past_key_values=cache, use_cache=True
        )
        logits = self.proj_out(out.last_hidden_state)
        present = []
        for layer in out.past_key_values.self_attention_cache.layers:
            present += [layer.keys, layer.values]
        return (logits, *present)


@dataclass(frozen=True)
class GraphIO:
    """Names of a graph's inputs and outputs, in order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def encoder_io(spec: ArchSpec) -> GraphIO:
    n = len(spec.decoder)
    return GraphIO(("input_features",), ("encoder_hidden_states", *cache_names(n, "cross")))


def decoder_io(spec: ArchSpec) -> GraphIO:
    n = len(spec.decoder)
    return GraphIO(
        ("input_ids", *cache_names(n, "past"), *cache_names(n, "cross")),
        ("logits", *cache_names(n, "present")),
    )


@contextlib.contextmanager
def eager_attention(model: WhisperForConditionalGeneration) -> Iterator[None]:
    """Temporarily switch to eager attention (see module doc) and eval mode."""
    before, was_training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        model.train(was_training)


def example_cache(spec: ArchSpec, batch: int, length: int, dtype=torch.float32) -> list[torch.Tensor]:
    """Random tensors shaped like each decoder layer's self (or cross) K/V cache."""
    out = []
    for layer in spec.decoder:
        a = layer.self_attn
        out += [torch.randn(batch, a.heads, length, a.qk_dim, dtype=dtype),
                torch.randn(batch, a.heads, length, a.vo_dim, dtype=dtype)]
    return out


def example_cross(spec: ArchSpec, batch: int, dtype=torch.float32) -> list[torch.Tensor]:
    out = []
    for layer in spec.decoder:
        c = layer.cross_attn
        out += [torch.randn(batch, c.heads, spec.n_audio_ctx, c.qk_dim, dtype=dtype),
                torch.randn(batch, c.heads, spec.n_audio_ctx, c.vo_dim, dtype=dtype)]
    return out


def _export(module: nn.Module, args: tuple, io_: GraphIO, dynamic: tuple, path: Path, opset: int) -> None:
    program = torch.onnx.export(
        module,
        args,
        dynamic_shapes=dynamic,
        input_names=list(io_.inputs),
        output_names=list(io_.outputs),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
        report=False,
    )
    program.optimize()
    program.save(str(path), external_data=False)


def export_encoder(model: WhisperForConditionalGeneration, spec: ArchSpec, path: Path, opset: int = 20) -> GraphIO:
    io_ = encoder_io(spec)
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(2, spec.n_mels, N_FRAMES)
    with eager_attention(model), torch.no_grad(), _quiet():
        _export(EncoderGraph(model).eval(), (x,), io_, ({0: batch},), path, opset)
    return io_


def export_decoder(model: WhisperForConditionalGeneration, spec: ArchSpec, path: Path, opset: int = 20) -> GraphIO:
    io_ = decoder_io(spec)
    batch = torch.export.Dim("batch", min=1, max=64)
    tokens = torch.export.Dim("tokens", min=1, max=spec.n_text_ctx)
    past = torch.export.Dim("past", min=0, max=spec.n_text_ctx)
    ids = torch.randint(0, spec.vocab, (2, 3))
    kv = example_cache(spec, 2, 5) + example_cross(spec, 2)
    n = 2 * len(spec.decoder)
    # ``*kv`` is one varargs tuple for torch.export, so its shapes are one nested tuple.
    dyn = ({0: batch, 1: tokens}, tuple([{0: batch, 2: past}] * n + [{0: batch}] * n))
    with eager_attention(model), torch.no_grad(), _quiet():
        _export(DecoderGraph(model).eval(), (ids, *kv), io_, dyn, path, opset)
    untie_free_projection(path, model)
    return io_


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The dynamo exporter prints progress lines to stdout; keep CLI output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def untie_free_projection(path: Path, model: WhisperForConditionalGeneration) -> None:
    """Store the tied embedding ONCE, as the output projection's constant ``W^T`` (d, vocab).

    The exporter emits ``MatMul(h, Transpose(W))`` and ``Gather(W, ids)``. A Transpose feeding a
    MatMul hides the weight from onnxruntime's quantizer (it would dequantize every step), so we
    store ``W^T`` as the initializer the MatMul reads directly and make the embedding lookup
    ``Transpose(Gather(W^T, ids, axis=1))``. Only one (d, vocab) table remains in the file.
    """
    graph_model = onnx.load(str(path))
    g = graph_model.graph
    weight = model.model.decoder.embed_tokens.weight.detach().cpu().numpy()
    inits = {init.name: init for init in g.initializer}
    emb_name = next(
        (n for n, init in inits.items() if tuple(init.dims) == weight.shape
         and abs(float(numpy_helper.to_array(init).ravel()[0]) - float(weight.ravel()[0])) < 1e-12),
        None,
    )
    if emb_name is None:
        raise RuntimeError("embedding table not found among decoder initializers (exporter changed?)")
    transposes = [n for n in g.node if n.op_type == "Transpose" and n.input[0] == emb_name]
    gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] == emb_name]
    if len(transposes) != 1 or len(gathers) != 1:
        raise RuntimeError(
            f"expected one Transpose and one Gather of {emb_name}, found {len(transposes)}/{len(gathers)}"
        )
    wt_name = "proj_out.weight_T"
    g.initializer.append(numpy_helper.from_array(weight.T.copy(), wt_name))
    g.initializer.remove(inits[emb_name])
    t_out = transposes[0].output[0]
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == t_out:
                node.input[i] = wt_name
    g.node.remove(transposes[0])
    gather = gathers[0]
    gathered = gather.output[0] + "_dbt"
    old_out = gather.output[0]
    gather.input[0] = wt_name
    gather.output[0] = gathered
    del gather.attribute[:]
    gather.attribute.append(onnx.helper.make_attribute("axis", 1))
    # Gather(W^T (d,V), ids (B,T), axis=1) -> (d, B, T); back to (B, T, d).
    idx = list(g.node).index(gather)
    g.node.insert(idx + 1, onnx.helper.make_node("Transpose", [gathered], [old_out], perm=[1, 2, 0],
                                                 name="embed_tokens_from_proj_T"))
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
