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


# ---- second, independent count: walk an exported ONNX graph ------------------------------------
_COUNTED_OPS = ("MatMul", "Gemm", "Conv", "MultiHeadAttention")  # the last: export/fuse.py's fused encoder attention


def onnx_flops(path, feeds: dict) -> int:
    """2 x MACs of every MatMul / Gemm / Conv node of an fp32 ONNX graph, from the shapes the
    tensors really have when ``feeds`` run through it (intermediates exposed as outputs, so no
    static shape inference of dynamic dims is needed)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: tuple(numpy_helper.to_array(i).shape) for i in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in _COUNTED_OPS]
    wanted = {name for n in nodes for name in (*n.input[:3], n.output[0]) if name and name not in inits}
    present = {o.name for o in graph.output} | {i.name for i in graph.input}
    graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in sorted(wanted - present))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # count the graph as exported
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feeds), strict=True))
    shapes = {**inits, **{k: tuple(np.shape(v)) for k, v in values.items()}, **{k: np.shape(v) for k, v in feeds.items()}}
    total = 0
    for n in nodes:
        out = shapes[n.output[0]]
        if n.op_type == "Conv":  # weight (C_out, C_in / groups, *kernel)
            total += 2 * int(np.prod(out)) * int(np.prod(shapes[n.input[1]][1:]))
        elif n.op_type == "MatMul":
            total += 2 * int(np.prod(out)) * shapes[n.input[0]][-1]
        elif n.op_type == "MultiHeadAttention":  # QK^T over the q/k width + AV over the v width, all heads
            (b, s, q_width), (_, kv_len, _), v_width = shapes[n.input[0]], shapes[n.input[1]], shapes[n.input[2]][-1]
            total += 2 * b * s * kv_len * (q_width + v_width)
        else:  # Gemm: A (M, K) or transposed
            trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
            a = shapes[n.input[0]]
            total += 2 * int(np.prod(out)) * (a[0] if trans_a else a[-1])
    return total


def bundle_flops(bundle_dir, context: int = 32, variant: str = "fp32") -> dict[str, int]:
    """ONNX-walk FLOPs of a bundle's encoder (one 30 s window) and one decoder step whose
    self-attention attends ``context`` positions (a cache of ``context - 1``)."""
    import json
    from pathlib import Path

    import numpy as np

    root = Path(bundle_dir)
    m = json.loads((root / "manifest.json").read_text())
    spec, files = m["spec"], m["variants"][variant]
    feats = np.zeros((1, spec["n_mels"], 2 * spec["n_audio_ctx"]), dtype=np.float32)
    feeds = {"input_ids": np.zeros((1, 1), dtype=np.int64)}
    for i, layer in enumerate(spec["decoder"]):
        a, c = layer["self_attn"], layer["cross_attn"]
        feeds[f"past_k.{i}"] = np.zeros((1, a["heads"], context - 1, a["qk_dim"]), dtype=np.float32)
        feeds[f"past_v.{i}"] = np.zeros((1, a["heads"], context - 1, a["vo_dim"]), dtype=np.float32)
        feeds[f"cross_k.{i}"] = np.zeros((1, c["heads"], spec["n_audio_ctx"], c["qk_dim"]), dtype=np.float32)
        feeds[f"cross_v.{i}"] = np.zeros((1, c["heads"], spec["n_audio_ctx"], c["vo_dim"]), dtype=np.float32)
    return {"encoder_graph": onnx_flops(root / files["encoder"], {"input_features": feats}),
            "decoder_graph": onnx_flops(root / files["decoder"], feeds)}
