"""Precision variants of the exported graphs: int8 (dynamic), fp16, and ORT-format files.

A variant is a registered handler (name -> function(src, dst)), not a branch on strings.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimwhisper.export.config import ExportConfig, ExportError
from slimwhisper.export.positions import generate_positions

TIED = "proj_out.weight_T"  # see graphs.untie_free_projection
# Largest block of the 4-bit token table along d: 32 as in GGUF's Q4_0; on tiny.en's table block 16 raised
# top-1 agreement with the fp32 projection by only 0.3 points (96.4 -> 96.8%) for twice the scales.
EMBEDDING_BLOCK_4BIT = 32
EQUALIZE_ALPHA = 0.5  # see equalize_tied_table

VariantFn = Callable[[Path, Path, str, "ExportConfig"], None]  # (src, dst, part: "encoder" | "decoder", config)
VARIANTS: dict[str, VariantFn] = {}


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    def add(fn: VariantFn) -> VariantFn:
        if name in VARIANTS:
            raise ValueError(f"variant {name!r} registered twice")
        VARIANTS[name] = fn
        return fn

    return add


@register_variant("int8")
def quantize_int8(src: Path, dst: Path, part: str, config: ExportConfig) -> None:
    """int8 weights for every MatMul; convolutions stay fp32 (~1% of the weights).

    Encoder: ``MatMulNBits`` with 8-bit symmetric weights in blocks of 128 along K, activations
    quantised per row and block at run time (accuracy_level 4). ``quantize_dynamic``'s
    MatMulInteger quantises the whole (1500, d) activation with ONE scale, which on tiny.en moved
    encoder outputs by up to 10.6 (vs 0.42 for MatMulNBits) and changed greedy tokens.
    ``config.int8_encoder_activations`` False: accuracy_level 1 (fp32 activations; see ExportConfig).
    Decoder layers: ``quantize_dynamic`` per-channel MatMulInteger (one row per step, so a per-tensor
    activation scale is a per-row scale). The tied output projection: ``MatMulNBits`` like the
    encoder (8-bit weight blocks; activations quantised per block of 128, not per row), and the
    token embedding is read from the same packed int8 table (``share_nbits_embedding``): one copy
    at 1 byte per weight. Why not MatMulInteger there too: the final hidden state has outlier
    dimensions, and one uint8 scale for the whole row cost base 2.2 WER points on the first 40
    ljspeech/dev clips (fp32 3.49%, all-MatMulInteger 5.39%, layers int8 + fp32 projection 3.20%,
    only the projection int8 6.26%, this scheme 3.06%) at the same decoder ms/token (12.4 vs 12.3,
    10 clips, 2 threads). accuracy_level 1 (fp32 activations) for the projection was 11-19x slower
    per token here: onnxruntime has no fast 8-bit kernel with fp32 compute on this CPU.
    """
    if part == "encoder":
        ENCODER_SCHEMES[config.encoder_int8](src, dst, config)
        if config.generated_positions:  # before shrink_remaining_fp32 would store the table as fp16
            generate_positions(dst)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(src), load_external_data=False).graph
        proj = [n.name for n in graph.node if n.op_type == "MatMul" and TIED in n.input]
        d = next((int(i.dims[0]) for i in graph.initializer if i.name == TIED), 128)
        bits = config.embedding_bits
        largest = 128 if bits == 8 else EMBEDDING_BLOCK_4BIT
        block = next((b for b in (128, 64, 32, 16) if b <= largest and d % b == 0), largest)  # no padded block if one divides d
        layers = dst.with_name(dst.stem + ".layers.onnx")
        equalized = dst.with_name(dst.stem + ".equalized.onnx")
        if bits == 4:
            equalize_tied_table(src, equalized)
            src = equalized
        try:
            quantize_dynamic(str(src), str(layers), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=proj)
            # the projection is now the only MatMul with a constant weight left
            quantize_weight_only_int8(layers, dst, block_size=block, accuracy_level=4, bits=bits)
        finally:
            layers.unlink(missing_ok=True)
            equalized.unlink(missing_ok=True)
        share_nbits_embedding(dst, bits)
    shrink_remaining_fp32(dst)


EncoderFn = Callable[[Path, Path, "ExportConfig"], None]
ENCODER_SCHEMES: dict[str, EncoderFn] = {}  # ExportConfig.encoder_int8 -> handler (names in config.ENCODER_INT8)


def encoder_scheme(name: str) -> Callable[[EncoderFn], EncoderFn]:
    def add(fn: EncoderFn) -> EncoderFn:
        ENCODER_SCHEMES[name] = fn
        return fn

    return add


@encoder_scheme("blocks")
def encoder_blocks(src: Path, dst: Path, config: ExportConfig) -> None:
    """MatMulNBits, 8-bit weight blocks of 128; activations int8 per row and block (or fp32)."""
    quantize_weight_only_int8(src, dst, accuracy_level=4 if config.int8_encoder_activations else 1)


@encoder_scheme("smoothed")
def encoder_smoothed(src: Path, dst: Path, config: ExportConfig) -> None:
    """Per input of a weight MatMul, chosen on calibration audio (``export/smooth.py``): its outlier
    channels divided down at the alpha with the lowest emulated error, then ``quantize_dynamic``
    (per-channel int8 weights, per-tensor int8 activations: MatMulInteger); inputs where that stays
    over ``BLOCKS_IF_WORSE`` x the blockwise error keep "blocks". The choice is saved beside the
    graph as ``<graph>.smoothing.json``."""
    import json

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimwhisper.export.smooth import calibrate, choose_schemes, smooth_graph

    feeds = [{"input_features": f} for f in calibration_features(config, np.load(src.parent / "mel_filters.npy"))]
    stats = calibrate(src, feeds, config.threads)
    plan = choose_schemes(src, stats)
    per_tensor = {a: p["alpha"] for a, p in plan.items() if p["scheme"] == "per-tensor"}
    blocks = [n for p in plan.values() if p["scheme"] == "blocks" for n in p["nodes"]]
    smoothed, mixed = (dst.with_name(dst.stem + s) for s in (".smoothed.onnx", ".mixed.onnx"))
    try:
        largest = smooth_graph(src, smoothed, {a: st.maxima for a, st in stats.items()}, per_tensor)
        quantize_dynamic(str(smoothed), str(mixed if blocks else dst), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=blocks)
        if blocks:
            encoder_blocks(mixed, dst, config)
    finally:
        smoothed.unlink(missing_ok=True)
        mixed.unlink(missing_ok=True)
    for act, p in plan.items():
        p["largest_scale"] = largest.get(act, 1.0)
    record = {"calib": list(config.calib), "calib_clips": len(feeds), "inputs": plan}
    dst.with_name(dst.stem + ".smoothing.json").write_text(json.dumps(record, indent=2) + "\n")


def calibration_features(config: ExportConfig, mel_filters: np.ndarray) -> list[np.ndarray]:
    """(1, n_mels, 3000) log-mel windows of ``config.calib_n`` clips of ``config.calib`` (seed 0),
    made by the runtime's own front end, so calibration sees what the bundle will be fed."""
    from slimwhisper.data import select_utterances
    from slimwhisper.runtime.frontend import log_mel, pad_or_trim

    utts = select_utterances(list(config.calib), config.calib_n, 0, lambda m: None, error=ExportError,
                             use="calibrate", what="calibration")
    return [log_mel(pad_or_trim(u.audio), mel_filters)[None].astype(np.float32) for u in utts]


def shrink_remaining_fp32(path: Path, min_elems: int = 200_000, min_table_elems: int = 100_000) -> None:
    """Store the large fp32 tensors the quantizers leave behind in fewer bytes on disk.

    Conv weights (conv2 is 3 MB in base; conv1, fed the log-mel directly and 0.5 MB, stays under
    ``min_elems``) -> int8 per output channel + ``DequantizeLinear``;
    other tables of ``min_table_elems`` or more (the 1500-position sinusoid, 3 MB in base; tiny's
    448 x 384 decoder positions, 0.7 MB) -> fp16 + ``Cast``. Both are folded back to fp32 once
    when onnxruntime loads the graph, so run-time kernels are unchanged; this is what brings the
    int8 bundles under ~1 byte per parameter.
    """
    model = onnx.load(str(path))
    g = model.graph
    uses: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    new_nodes = []
    for init in list(g.initializer):
        size = int(np.prod(init.dims))
        if init.data_type != onnx.TensorProto.FLOAT or size < min(min_elems, min_table_elems):
            continue
        name = init.name
        conv = bool(uses.get(name)) and all(n.op_type == "Conv" and n.input[1] == name for n in uses[name])
        if size < (min_elems if conv else min_table_elems):
            continue
        arr = numpy_helper.to_array(init)
        if conv:
            scale = np.abs(arr).reshape(arr.shape[0], -1).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.round(arr / scale.reshape(-1, *[1] * (arr.ndim - 1))), -127, 127).astype(np.int8)
            g.initializer.extend([numpy_helper.from_array(q, f"{name}_q8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zp")])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q8", f"{name}_scale", f"{name}_zp"],
                                              [name], axis=0, name=f"{name}_dq"))
        else:
            g.initializer.append(numpy_helper.from_array(arr.astype(np.float16), f"{name}_fp16"))
            new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=onnx.TensorProto.FLOAT,
                                              name=f"{name}_cast"))
        g.initializer.remove(init)
    for k, node in enumerate(new_nodes):
        g.node.insert(k, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_weight_only_int8(src: Path, dst: Path, block_size: int = 128, accuracy_level: int = 4, bits: int = 8) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level, bits=bits)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)


def equalize_tied_table(src: Path, dst: Path, alpha: float = EQUALIZE_ALPHA) -> None:
    """Divide each of the tied table's d dimensions by c_k = rms_k^alpha before 4-bit quantisation,
    and multiply it back where the table is used: ``h * c`` before the projection (logits
    h.W = (h*c).(W/c), exact) and the looked-up embedding rows times c (in ``share_nbits_embedding``).

    Why: Whisper's token table has outlier dimensions (tiny.en: rms 0.31 in one dimension, 0.009
    median), so a 4-bit block that holds one spends its 16 levels on it and rounds the others to
    nothing (relative error 16%). Scaled with alpha = 0.5 the error is 8% at block 32, measured
    on tiny.en's table (the same idea as SmoothQuant's per-channel migration, Xiao et al. 2023,
    folded on both sides of a tied matrix instead of into a preceding layer).
    """
    model = onnx.load(str(src))
    g = model.graph
    init = next(i for i in g.initializer if i.name == TIED)
    w = numpy_helper.to_array(init).astype(np.float64)  # (d, vocab)
    c = np.sqrt((w**2).mean(axis=1)) ** alpha
    c = np.where(c > 0, c, 1.0).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array((w / c[:, None]).astype(np.float32), TIED))
    scale = f"{TIED}_dim_scale"
    g.initializer.append(numpy_helper.from_array(c, scale))
    proj = next(n for n in g.node if n.op_type == "MatMul" and n.input[1] == TIED)
    scaled = f"{proj.input[0]}_times_dim_scale"
    at = list(g.node).index(proj)
    g.node.insert(at, helper.make_node("Mul", [proj.input[0], scale], [scaled], name="tied_dim_scale_mul"))
    proj.input[0] = scaled
    onnx.save(model, str(dst))


def share_nbits_embedding(path: Path, bits: int = 8) -> None:
    """Make the token embedding lookup read the projection's packed ``MatMulNBits`` weight.

    ``MatMulNBits`` stores ``W^T`` (d, vocab) as B (vocab, blocks, block * bits / 8) uint8 with one
    scale per vocabulary row and block, symmetric (zero point 2^(bits-1)): row ``id`` of B is that
    token's embedding, ``(B[id] - zp) * scale[id]``, exactly the weights the projection multiplies
    by. 4-bit bytes hold two weights, the even one in the low nibble (onnxruntime's layout), and
    are unpacked after the Gather, so only the looked-up rows are touched. The fp32 table is then
    unused and removed, so the bundle stores the vocabulary matrix once, at bits/8 bytes per
    weight (+ one fp16 scale per block).
    """
    model = onnx.load(str(path))
    g = model.graph
    q, scale = f"{TIED}_Q{bits}", f"{TIED}_scales"
    inits = {i.name: i for i in g.initializer}
    if not {q, scale} <= set(inits):
        return  # no tied projection quantised with MatMulNBits: nothing to share
    gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] == TIED]
    if len(gathers) != 1:
        raise RuntimeError(f"expected one embedding Gather of {TIED}, found {len(gathers)}")
    gather = gathers[0]
    ids = gather.input[1]
    consumer = next(n for n in g.node if gather.output[0] in n.input and n.op_type == "Transpose")  # (d, B, T) -> (B, T, d)
    out = consumer.output[0]
    d = int(inits[TIED].dims[0])
    blocks, blob = (int(x) for x in inits[q].dims[1:])
    block = blob * 8 // bits
    padded = blocks * block != d  # only when no block size divides d
    p = "embed_from_nbits"
    new = [helper.make_node("Gather", [q, ids], [f"{p}_q"], axis=0, name=f"{p}_gather_q")]  # (B, T, blocks, blob)
    packed = f"{p}_q"
    if bits == 4:  # (B, T, blocks, blob) bytes -> (B, T, blocks, blob, 2) nibbles -> (B, T, blocks, block)
        new += [
            helper.make_node("BitwiseAnd", [packed, f"{p}_low_mask"], [f"{p}_lo"], name=f"{p}_lo"),
            helper.make_node("BitShift", [packed, f"{p}_four"], [f"{p}_hi"], direction="RIGHT", name=f"{p}_hi"),
            helper.make_node("Unsqueeze", [f"{p}_lo", f"{p}_axes"], [f"{p}_lo1"], name=f"{p}_unsq_lo"),
            helper.make_node("Unsqueeze", [f"{p}_hi", f"{p}_axes"], [f"{p}_hi1"], name=f"{p}_unsq_hi"),
            helper.make_node("Concat", [f"{p}_lo1", f"{p}_hi1"], [f"{p}_pairs"], axis=-1, name=f"{p}_pairs"),
            helper.make_node("Reshape", [f"{p}_pairs", f"{p}_block_shape"], [f"{p}_nib"], name=f"{p}_nib"),
        ]
        packed = f"{p}_nib"
    new += [
        helper.make_node("Cast", [packed], [f"{p}_f"], to=onnx.TensorProto.FLOAT, name=f"{p}_cast"),
        helper.make_node("Sub", [f"{p}_f", f"{p}_zp"], [f"{p}_c"], name=f"{p}_sub"),
        helper.make_node("Gather", [scale, ids], [f"{p}_s"], axis=0, name=f"{p}_gather_s"),  # (B, T, blocks)
        helper.make_node("Unsqueeze", [f"{p}_s", f"{p}_axes"], [f"{p}_su"], name=f"{p}_unsq_s"),
        helper.make_node("Mul", [f"{p}_c", f"{p}_su"], [f"{p}_m"], name=f"{p}_mul"),
        helper.make_node("Reshape", [f"{p}_m", f"{p}_shape"], [f"{p}_r" if padded else out], name=f"{p}_reshape"),
    ]
    if padded:  # drop the zero padding of the last block: (B, T, blocks * block) -> (B, T, d)
        new.append(helper.make_node("Slice", [f"{p}_r", f"{p}_start", f"{p}_end", f"{p}_axes"], [out], name=f"{p}_slice"))
    dim_scale = f"{TIED}_dim_scale"
    if dim_scale in inits:  # undo equalize_tied_table on the looked-up rows
        last = new[-1]
        last.output[0] = f"{p}_equalized"
        new.append(helper.make_node("Mul", [f"{p}_equalized", dim_scale], [out], name=f"{p}_dim_scale"))
    g.initializer.extend([numpy_helper.from_array(np.array(2.0 ** (bits - 1), dtype=np.float32), f"{p}_zp"),
                          numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}_axes"),
                          numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), f"{p}_shape")])
    if bits == 4:
        g.initializer.extend([numpy_helper.from_array(np.array(15, dtype=np.uint8), f"{p}_low_mask"),
                              numpy_helper.from_array(np.array(4, dtype=np.uint8), f"{p}_four"),
                              numpy_helper.from_array(np.array([0, 0, blocks, block], dtype=np.int64), f"{p}_block_shape")])
    if padded:
        g.initializer.extend([numpy_helper.from_array(np.array([0], dtype=np.int64), f"{p}_start"),
                              numpy_helper.from_array(np.array([d], dtype=np.int64), f"{p}_end")])
    at = list(g.node).index(gather)
    g.node.remove(gather)
    g.node.remove(consumer)
    for k, node in enumerate(new):
        g.node.insert(at + k, node)
    if not any(TIED in n.input for n in g.node):
        g.initializer.remove(inits[TIED])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@register_variant("fp16")
def convert_fp16(src: Path, dst: Path, part: str, config: ExportConfig) -> None:
    """fp16 weights and activations for GPU providers (onnxruntime's own float16 converter, the
    onnxconverter-common code shipped inside ``onnxruntime.transformers``). Inputs/outputs become
    fp16 too, so the KV cache is half the size; ``input_ids`` stays int64."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=False, disable_shape_infer=True)
    onnx.save(model, str(dst))


def to_ort_format(sources: list[Path], out_dir: Path) -> list[Path]:
    """Convert ONNX files to ORT format (``.ort``) for ORT Mobile, plus the
    ``required_operators.config`` a reduced-size onnxruntime build is compiled with
    (``build.sh --include_ops_by_config required_operators.config --minimal_build``)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    with tempfile.TemporaryDirectory() as scratch:
        s = Path(scratch)
        for src in sources:
            shutil.copy2(src, s / src.name)
        convert_onnx_models_to_ort(s, output_dir=s / "ort", optimization_styles=[OptimizationStyle.Fixed])
        made = []
        for src in sources:
            ort_file = s / "ort" / (src.stem + ".ort")
            if not ort_file.is_file():
                raise RuntimeError(f"ORT conversion produced no {ort_file.name}")
            shutil.copy2(ort_file, out_dir / ort_file.name)
            made.append(out_dir / ort_file.name)
        configs = sorted((s / "ort").glob("*required_operators*.config"))
        if configs:
            shutil.copy2(configs[0], out_dir / "required_operators.config")
            made.append(out_dir / "required_operators.config")
    return made
