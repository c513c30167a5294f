"""The encoder's positions computed inside the graph instead of stored (issue 12: bundle size).

Whisper's encoder adds FIXED sinusoids to the conv output (openai/whisper ``model.py``,
``sinusoids``: never trained), a (1500, d) table: 2.3 MB fp32 in tiny.en's encoder graph, 1.15 MB
as fp16 in its int8 bundle (1.5 MB in base's). The same table is a handful of ops, position (Range)
x inv_timescales (d/2 constants) -> Sin, Cos -> Concat, which onnxruntime folds back into a
constant when it loads the graph (all inputs are constant), so run time is unchanged.

Done only when the stored table IS the sinusoids within fp16 rounding (the CTranslate2 fp16
checkpoints this project loads deviate by at most 3.0e-4 on tiny.en); a model whose positions were
trained keeps its table. Only the int8 variant is rewritten (``quantize_int8``): the fp32 graph
must match the PyTorch model within 1e-3 on the logits, and the fp32 sinusoids differ from the
fp16-rounded table that model holds by up to 3.0e-4, which moved tiny.en's logits by 0.004 (and
an fp16 round trip in the graph does not restore the table bit for bit: sin/cos of positions up to
1499 differ between libraries by up to 1.2e-4, so ~1% of the entries land one fp16 step away).
In the int8 graph that difference is far below the weights' quantisation error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ENCODER_POSITIONS = "encoder.embed_positions.weight"  # the name the dynamo exporter gives the table
MAX_TIMESCALE = 10000.0  # openai/whisper sinusoids(length, channels, max_timescale=10000)
TOLERANCE = 1e-3  # fp16 spacing at 1.0 is 9.8e-4; rounding moves a value in [-1, 1] by at most half that


def inv_timescales(channels: int) -> np.ndarray:
    """w_k = 10000^(-k / (C/2 - 1)), k < C/2, float32 (openai/whisper ``sinusoids``)."""
    return np.exp(-np.log(MAX_TIMESCALE) / (channels // 2 - 1) * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)


def sinusoids(length: int, channels: int) -> np.ndarray:
    """openai/whisper's positional table in float32: [sin(t * w_k), cos(t * w_k)]."""
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv_timescales(channels)[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def is_sinusoid_table(table: np.ndarray) -> bool:
    if table.ndim != 2 or table.shape[1] % 2 or table.shape[1] < 4:
        return False
    return float(np.abs(table.astype(np.float32) - sinusoids(*table.shape)).max()) <= TOLERANCE


def positions_of(path: Path, name: str = ENCODER_POSITIONS) -> str:
    """"sinusoids" when ``generate_positions`` rewrote this graph, else "table"."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return "sinusoids" if any(n.name == f"{name}_gen_concat" for n in graph.node) else "table"


def generate_positions(path: Path, name: str = ENCODER_POSITIONS) -> bool:
    """Replace initializer ``name`` by the ops computing it; False (file untouched) when it is absent
    or not the sinusoids."""
    model = onnx.load(str(path))
    g = model.graph
    init = next((i for i in g.initializer if i.name == name), None)
    if init is None or init.data_type != onnx.TensorProto.FLOAT:
        return False
    table = numpy_helper.to_array(init)
    if not is_sinusoid_table(table):
        return False
    length, channels = table.shape
    p = f"{name}_gen"
    consts = {f"{p}_start": np.array(0.0, np.float32), f"{p}_limit": np.array(float(length), np.float32),
              f"{p}_delta": np.array(1.0, np.float32), f"{p}_axes": np.array([1], np.int64),
              f"{p}_inv": inv_timescales(channels)[None, :]}  # fmt: skip
    nodes = [
        helper.make_node("Range", [f"{p}_start", f"{p}_limit", f"{p}_delta"], [f"{p}_t"], name=f"{p}_range"),
        helper.make_node("Unsqueeze", [f"{p}_t", f"{p}_axes"], [f"{p}_t1"], name=f"{p}_unsqueeze"),
        helper.make_node("Mul", [f"{p}_t1", f"{p}_inv"], [f"{p}_scaled"], name=f"{p}_mul"),
        helper.make_node("Sin", [f"{p}_scaled"], [f"{p}_sin"], name=f"{p}_sin"),
        helper.make_node("Cos", [f"{p}_scaled"], [f"{p}_cos"], name=f"{p}_cos"),
        helper.make_node("Concat", [f"{p}_sin", f"{p}_cos"], [name], axis=1, name=f"{p}_concat"),
    ]
    g.initializer.remove(init)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    for k, node in enumerate(nodes):
        g.node.insert(k, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return True
