"""Per-tensor int8 for the encoder with its outlier channels tamed first (``encoder_int8="smoothed"``).

Why: onnxruntime's dynamic int8 (``DynamicQuantizeLinear`` -> ``MatMulInteger``, MLAS's QGEMM with
VNNI / ARM dot-product kernels) ran tiny.en's encoder projections 2.7x faster than the blockwise
``MatMulNBits`` kernel of the "blocks" scheme (100 vs 268 ms per window, one thread, onnxruntime
profiling). But it quantises a whole (1500, d) input with ONE scale, and Whisper's encoder has
outlier channels: in tiny.en the last layer's fc2 input reaches 567 in a few channels against a
median channel maximum of 4, so most values fall into 1-2 int8 steps. Relative RMS error of the
cross K/V on held-out clips: 10.8% plain per-tensor, 4.3% blocks.

SmoothQuant (Xiao et al. 2023, arXiv 2211.10438): X W = (X diag(s)^-1) (diag(s) W), exact in fp32,
with s_j = max|X_j|^a / max|W_j|^(1-a) moving the difficulty from activations to weights (which
are quantised per output channel). Here s_j = max(1, (m_j / median(m))^a), m_j the calibration
maximum of channel j: only channels above the median are divided, never amplified. The two-sided
rule amplified channels that calibration saw quiet and blew up on held-out clips (58% error); the
one-sided one gave 4.5% at a = 0.8 (tiny.en, 8 calibration and 4 held-out ljspeech/train clips).

The division folds into the LayerNorm that makes X (gamma / s, beta / s) when the smoothed MatMuls
are its only consumers (q/k/v, fc1); elsewhere (the post-GELU fc2 input, the attention output, the
encoder output read by the cross K/V projections) one ``Mul`` is inserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # migration strengths tried per input (0 = no smoothing)
# an input whose best per-tensor error is this many times the blockwise scheme's keeps MatMulNBits
BLOCKS_IF_WORSE = 2.0


def smoothable_inputs(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """activation name -> the MatMuls that multiply it by a constant weight (what int8 quantises)."""
    inits = {i.name for i in graph.initializer}
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[0] not in inits:
            out.setdefault(node.input[0], []).append(node)
    return out


@dataclass
class ActStats:
    """Calibration statistics of one smoothable input: per-window channel ranges and sampled rows."""

    lo: list[np.ndarray] = field(default_factory=list)  # per window: per-channel min
    hi: list[np.ndarray] = field(default_factory=list)  # per window: per-channel max
    rows: list[np.ndarray] = field(default_factory=list)  # per window: (rows_per_window, C) sampled rows

    @property
    def maxima(self) -> np.ndarray:
        return np.max([np.maximum(-lo, hi) for lo, hi in zip(self.lo, self.hi)], axis=0)


def calibrate(path: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int = 1, rows_per_window: int = 96,
              seed: int = 0) -> dict[str, ActStats]:
    """Run the fp32 graph on ``feeds``; statistics of every input ``smoothable_inputs`` finds."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    names = list(smoothable_inputs(model.graph))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in have)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = [o.name for o in sess.get_outputs()]
    stats = {n: ActStats() for n in names}
    rng = np.random.default_rng(seed)
    for feed in feeds:
        for name, value in zip(wanted, sess.run(wanted, feed)):
            if name in stats:
                x = value.reshape(-1, value.shape[-1])
                st = stats[name]
                st.lo.append(x.min(axis=0))
                st.hi.append(x.max(axis=0))
                st.rows.append(x[rng.choice(len(x), min(rows_per_window, len(x)), replace=False)])
    return stats


def per_tensor_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``DynamicQuantizeLinear`` (ONNX spec) then dequantised: uint8, one scale, range including 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 or 1.0
    zp = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def per_column_int8(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output column (``quantize_dynamic(per_channel=True)``'s weights)."""
    scale = np.abs(w).max(axis=0, keepdims=True) / 127
    scale[scale == 0] = 1.0
    return np.round(w / scale) * scale


def blockwise_int8(a: np.ndarray, block: int = 128) -> np.ndarray:
    """Symmetric int8 in blocks along the last axis (MatMulNBits' weights and level-4 activations)."""
    k = a.shape[-1]
    pad = (-k) % block
    b = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]).reshape(*a.shape[:-1], -1, block)
    scale = np.abs(b).max(axis=-1, keepdims=True) / 127
    scale[scale == 0] = 1.0
    return (np.round(b / scale) * scale).reshape(*a.shape[:-1], -1)[..., :k]


def _rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.sum((y - ref) ** 2) / max(np.sum(ref**2), 1e-30)))


def smoothed_error(st: ActStats, weights: Sequence[np.ndarray], alpha: float) -> float:
    """Emulated relative output error (worst of the users) of per-tensor int8 after smoothing."""
    s = outlier_scales(st.maxima, alpha)
    x = np.concatenate(st.rows)
    xq = np.concatenate([per_tensor_uint8(r / s, float((lo / s).min()), float((hi / s).max()))
                         for r, lo, hi in zip(st.rows, st.lo, st.hi)])  # fmt: skip
    return max(_rel_error(xq @ per_column_int8(w * s[:, None]), x @ w) for w in weights)


def blocks_error(st: ActStats, weights: Sequence[np.ndarray]) -> float:
    x = np.concatenate(st.rows)
    return max(_rel_error(blockwise_int8(x) @ blockwise_int8(w.T).T, x @ w) for w in weights)


def choose_schemes(path: Path, stats: dict[str, ActStats], alphas: Sequence[float] = ALPHAS,
                   worse: float = BLOCKS_IF_WORSE) -> dict[str, dict]:
    """Per smoothable input: the alpha with the lowest emulated error, or "blocks" for its MatMuls
    when even that error is more than ``worse`` x the blockwise scheme's (SmoothQuant and AWQ pick
    their migration strength by such a search on calibration data)."""
    g = onnx.load(str(path)).graph
    inits = {i.name: i for i in g.initializer}
    plan = {}
    for act, users in smoothable_inputs(g).items():
        if act not in stats:
            continue
        ws = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in users]
        errors = {a: smoothed_error(stats[act], ws, a) for a in alphas}
        best = min(errors, key=errors.get)
        ref = blocks_error(stats[act], ws)
        plan[act] = {"alpha": best, "error": errors[best], "blocks_error": ref, "nodes": [n.name for n in users],
                     "scheme": "blocks" if errors[best] > worse * ref else "per-tensor"}
    return plan


def outlier_scales(maxima: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max(1, (m_j / median(m))^alpha): divide only the channels above the median."""
    median = float(np.median(maxima))
    if median <= 0:
        return np.ones_like(maxima, dtype=np.float32)
    return np.maximum(1.0, (maxima / median) ** alpha).astype(np.float32)


def smooth_graph(src: Path, dst: Path, maxima: dict[str, np.ndarray], alphas: dict[str, float]) -> dict[str, float]:
    """Write ``src`` with each smoothable input divided by its ``outlier_scales`` (at that input's
    alpha) and the weight rows multiplied by them (the same function in exact arithmetic); returns
    {input: largest s_j}."""
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in g.output}
    inserted: list[tuple[str, onnx.NodeProto]] = []  # (after this tensor, node)
    largest = {}
    for act, users in smoothable_inputs(g).items():
        if act not in maxima or act not in alphas:
            continue
        s = outlier_scales(maxima[act], alphas[act])
        largest[act] = float(s.max())
        if largest[act] == 1.0:
            continue
        for node in users:  # diag(s) W: row j of the (in, out) weight times s_j
            w = numpy_helper.to_array(inits[node.input[1]])
            _set_own(g, inits, consumers, node, 1, w * s[:, None])
        ln = producer.get(act)
        foldable = (ln is not None and ln.op_type == "LayerNormalization" and act not in outputs
                    and len(ln.input) == 3 and all(i in inits for i in ln.input[1:])
                    and {id(n) for n in consumers[act]} == {id(n) for n in users})  # fmt: skip
        if foldable:  # LN(x) / s == LN with gamma / s and beta / s
            for k in (1, 2):
                _set_own(g, inits, consumers, ln, k, numpy_helper.to_array(inits[ln.input[k]]) / s)
            continue
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{act}_smooth_inv")
        g.initializer.append(inv)
        for node in users:
            node.input[0] = f"{act}_smoothed"
        inserted.append((act, helper.make_node("Mul", [act, inv.name], [f"{act}_smoothed"], name=f"{act}_smooth")))
    _insert_after_producers(g, inserted)
    onnx.save(model, str(dst))
    return largest


def _set_own(g: onnx.GraphProto, inits: dict, consumers: dict, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
    """Set ``node``'s k-th input initializer to ``value`` without touching other users of it: the
    exporter shares identical constants (every LayerNorm's gamma of a freshly initialised model)."""
    name = node.input[k]
    dtype = numpy_helper.to_array(inits[name]).dtype
    if len(consumers.get(name, [])) > 1:
        new = f"{name}_{node.name or id(node)}_{k}"
        consumers[name] = [n for n in consumers[name] if n is not node]
        consumers[new] = [node]
        node.input[k] = new
        inits[new] = g.initializer.add()
        name = new
    inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))


def _insert_after_producers(g: onnx.GraphProto, inserted: list[tuple[str, onnx.NodeProto]]) -> None:
    """Keep the node list topologically sorted: each new node right after the node making its input."""
    after: dict[str, list[onnx.NodeProto]] = {}
    for act, node in inserted:
        after.setdefault(act, []).append(node)
    graph_inputs = {i.name for i in g.input}
    ordered = [n for act, nodes in after.items() if act in graph_inputs for n in nodes]
    for node in g.node:
        ordered.append(node)
        for out in node.output:
            ordered.extend(after.get(out, []))
    del g.node[:]
    g.node.extend(ordered)
