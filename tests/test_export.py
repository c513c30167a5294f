"""ONNX export: spec-shaped graphs (dense and uneven), parity, int8 sharing, atomic bundle writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from slimwhisper.export.config import ExportConfig, ExportConfigError, ParityTolerance
from slimwhisper.spec import ArchSpec, AttnSpec, LayerSpec


def A(heads, qk, vo):
    return AttnSpec(heads=heads, qk_dim=qk, vo_dim=vo, scale_dim=16)


UNEVEN = ArchSpec(
    d_model=64, n_mels=80, vocab=51864, n_audio_ctx=1500, n_text_ctx=448,
    encoder=(LayerSpec(A(4, 16, 16), 128, 0), LayerSpec(A(2, 8, 16), 96, 1)),
    decoder=(
        LayerSpec(A(3, 16, 8), 100, 0, cross_attn=A(2, 16, 12)),
        LayerSpec(A(1, 8, 16), 64, 1, cross_attn=A(4, 16, 16)),
        LayerSpec(A(2, 12, 4), 32, 3, cross_attn=A(1, 4, 8)),
    ),
)


def uneven_loaded():
    import torch

    from slimwhisper.models.api import LoadedModel
    from slimwhisper.models.slim import model_from_spec, spec_from_model
    from slimwhisper.models.testing import tiny_en_processor, tiny_random_loaded

    base = tiny_random_loaded()
    torch.manual_seed(1)
    model = model_from_spec(base.model.config, UNEVEN).eval()
    model.generation_config = base.model.generation_config
    assert spec_from_model(model) == UNEVEN
    return LoadedModel(model=model, processor=tiny_en_processor(), spec=UNEVEN, name="tiny-uneven",
                       source="test", kind="testing", multilingual=False)


@pytest.fixture(scope="module")
def uneven_bundle(tmp_path_factory):
    from slimwhisper.export.bundle import export_bundle

    loaded = uneven_loaded()
    out = tmp_path_factory.mktemp("uneven") / "bundle"
    cfg = ExportConfig(quantize="int8", keep_fp32=True, ort=True, parity_clips=1, parity_max_tokens=12, threads=1)
    manifest = export_bundle(loaded, out, cfg, log=lambda m: None)
    return loaded, out, manifest


def torch_tokens(loaded, audio, n=16):
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    return TorchTranscriber(loaded, DecodeConfig(max_new_tokens=n)).transcribe(audio).tokens


def bundle_tokens(out, audio, n=16, variant=None):
    from slimwhisper.runtime import BundleTranscriber, DecodeOptions

    rt = BundleTranscriber(out, threads=1, variant=variant, options=DecodeOptions(max_new_tokens=n))
    return rt.transcribe(audio).tokens


def speechlike(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32)


def test_uneven_graph_inputs_follow_each_layers_spec(uneven_bundle):
    _, out, manifest = uneven_bundle
    assert ArchSpec.from_dict(manifest["spec"]) == UNEVEN
    dec = onnx.load(str(out / "decoder.onnx"))
    shapes = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in dec.graph.input}
    for i, layer in enumerate(UNEVEN.decoder):
        a, c = layer.self_attn, layer.cross_attn
        assert shapes[f"past_k.{i}"][1::2] == [a.heads, a.qk_dim]
        assert shapes[f"past_v.{i}"][1::2] == [a.heads, a.vo_dim]
        assert shapes[f"cross_k.{i}"][1:] == [c.heads, 1500, c.qk_dim]
        assert shapes[f"cross_v.{i}"][1:] == [c.heads, 1500, c.vo_dim]
    assert isinstance(shapes["input_ids"][1], str)  # dynamic token axis


def test_uneven_parity_recorded_and_runtime_matches_torch(uneven_bundle):
    loaded, out, manifest = uneven_bundle
    p = manifest["parity"]["fp32"]
    assert p["tokens_identical"] and p["logits_max_abs"] < 1e-3 and p["encoder_max_abs"] < 1e-3
    audio = speechlike()
    want = torch_tokens(loaded, audio)
    assert len(want) > 0
    # fp32 graphs: the default variant here is int8, whose rounding may flip a near tie of this
    # random model's flat logits on some CPUs (int8 kernels differ with VNNI/AMX).
    assert bundle_tokens(out, audio, variant="fp32") == want
    # The ORT-format files (ORT Mobile, here of the int8 graphs) decode like the int8 ONNX files.
    assert bundle_tokens(out, audio, variant="int8-ort") == bundle_tokens(out, audio, variant="int8")
    assert (out / "required_operators.config").read_text().count("ai.onnx") >= 3


def test_dense_runtime_matches_torch(tiny_bundle):
    loaded, out = tiny_bundle
    for seed in (0, 1):
        audio = speechlike(1.5 + seed, seed)
        assert bundle_tokens(out, audio) == torch_tokens(loaded, audio)


def test_int8_shares_the_tied_embedding_and_reports_parity(uneven_bundle):
    _, out, manifest = uneven_bundle
    assert set(manifest["variants"]) == {"fp32", "int8", "int8-ort"} and manifest["default_variant"] == "int8"
    dec = onnx.load(str(out / "decoder.int8.onnx"))
    big = [(i.name, i.data_type) for i in dec.graph.initializer if int(np.prod(i.dims)) >= 51864 * 64]
    assert big == [("proj_out.weight_T_Q8", onnx.TensorProto.UINT8)]  # one table, 1 byte/weight
    ops = {n.op_type for n in dec.graph.node}
    assert {"MatMulInteger", "MatMulNBits"} <= ops  # layers: MatMulInteger; projection: MatMulNBits (per-block activations)
    rep = manifest["parity"]["int8"]
    assert rep["checked"] and 0.0 <= rep["token_agreement"] <= 1.0 and rep["logits_max_abs"] > 0
    assert manifest["parity"]["fp32"]["tokens_identical"]
    assert (out / "decoder.int8.onnx").stat().st_size < 0.4 * (out / "decoder.onnx").stat().st_size


def test_parity_error_lists_each_output(tiny_bundle):
    import torch

    from slimwhisper.export.parity import ParityError, check_parity
    from slimwhisper.models.testing import tiny_random_loaded

    _, out = tiny_bundle
    changed = tiny_random_loaded()  # same seed as the bundle, then perturbed
    with torch.no_grad():
        changed.model.model.encoder.layer_norm.bias.add_(0.5)
    with pytest.raises(ParityError) as err:
        check_parity(changed.model, out, "fp32", clips=1, max_new_tokens=4, tolerance=ParityTolerance(), threads=1)
    text = str(err.value)
    assert "encoder output encoder_hidden_states" in text and "cross_k.0" in text and "cross_v.1" in text
    assert err.value.report.clips[0].encoder_max_abs["encoder_hidden_states"] > 0.1


def test_existing_out_is_refused_unless_force(tiny_bundle, tmp_path):
    from slimwhisper.errors import UserError
    from slimwhisper.export.bundle import export_bundle

    loaded, _ = tiny_bundle
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="--force"):
        export_bundle(loaded, out, ExportConfig(parity_clips=1, parity_max_tokens=2))
    with pytest.raises(UserError, match="not an ONNX bundle"):  # --force never replaces a foreign folder
        export_bundle(loaded, out, ExportConfig(parity_clips=1, parity_max_tokens=2), force=True)
    assert (out / "keep.txt").read_text() == "user data"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.tmp")]


def test_manifest_lists_sha256_of_every_file(tiny_bundle):
    from slimwhisper.runtime import sha256_file

    _, out = tiny_bundle
    m = json.loads((out / "manifest.json").read_text())
    on_disk = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    assert all(sha256_file(out / n) == h for n, h in m["files"].items())
    tok = m["tokenizer"]
    assert (tok["sot"], tok["eot"], tok["no_timestamps"]) == (50257, 50256, 50362)
    assert m["decode"]["begin_suppress_tokens"] == [220, 50256]
    assert json.loads((out / "export_config.json").read_text()) == m["export_config"]


def test_export_config_reports_every_problem():
    with pytest.raises(ExportConfigError) as err:
        ExportConfig(quantize="int4", opset=9, threads=0, int8_encoder_activations="no")
    assert len(err.value.problems) == 4
    cfg = ExportConfig(quantize="int8")
    assert ExportConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.slow
def test_real_tiny_en_int8_bundle_transcribes_jfk(tiny_en, tmp_path):
    from pathlib import Path

    import soundfile as sf

    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.runtime import BundleTranscriber

    clip = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "misc-real" / "audio" / "jfk.flac"
    if not clip.is_file():
        pytest.skip(f"needs {clip}")
    manifest = export_bundle(tiny_en, tmp_path / "b", ExportConfig(quantize="int8", keep_fp32=True), log=lambda m: None)
    p = manifest["parity"]["fp32"]
    assert p["tokens_identical"] and p["logits_max_abs"] < 1e-3
    audio, _ = sf.read(clip, dtype="float32")
    for variant in ("fp32", "int8"):
        text = BundleTranscriber(tmp_path / "b", threads=2, variant=variant).transcribe(audio).text.lower()
        assert "ask not what your country can do for you" in text.replace(",", "")
    assert (tmp_path / "b" / "decoder.int8.onnx").stat().st_size < 35e6


def test_shrink_remaining_fp32_keeps_outputs(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from slimwhisper.export.quantize import shrink_remaining_fp32

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3)).astype(np.float32)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
         helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1]),
         helper.make_node("Add", ["ct", "table"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 50, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(path))
    x = rng.standard_normal((1, 4, 50)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    shrink_remaining_fp32(path, min_elems=1000, min_table_elems=1000)  # neither is large enough: unchanged
    assert {i.name for i in onnx.load(str(path)).graph.initializer} == {"w", "table"}
    shrink_remaining_fp32(path, min_elems=64, min_table_elems=1000)  # only the conv weight
    assert {i.name for i in onnx.load(str(path)).graph.initializer} == {"w_q8", "w_scale", "w_zp", "table"}
    shrink_remaining_fp32(path, min_elems=64, min_table_elems=64)
    types = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert types["w_q8"] == TensorProto.INT8 and types["table_fp16"] == TensorProto.FLOAT16
    assert "w" not in types and "table" not in types
    after = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert np.max(np.abs(after - before)) < 0.05 * np.max(np.abs(before))


@pytest.mark.parametrize("int8_activations, level", [(True, 4), (False, 1)])
def test_int8_encoder_activation_choice_sets_the_kernel_accuracy_level(uneven_bundle, tmp_path, int8_activations, level):
    from slimwhisper.export.quantize import quantize_int8

    _, out, _ = uneven_bundle
    dst = tmp_path / "encoder.int8.onnx"
    quantize_int8(out / "encoder.onnx", dst, "encoder", ExportConfig(quantize="int8", int8_encoder_activations=int8_activations))
    nbits = [n for n in onnx.load(str(dst)).graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(next(a.i for a in n.attribute if a.name == "accuracy_level") == level for n in nbits)


def tied_table_graph(path, d=64, vocab=300, seed=0):
    """ids -> Transpose(Gather(W^T, ids, axis=1)) (the embedding) and h -> MatMul(h, W^T) (the
    projection): the two uses of the tied table in an exported decoder."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((vocab, d)) * 0.02).astype(np.float32)
    w[:, 3] *= 30  # an outlier dimension, as Whisper's token tables have
    nodes = [helper.make_node("Gather", ["proj_out.weight_T", "ids"], ["g"], axis=1),
             helper.make_node("Transpose", ["g"], ["emb"], perm=[1, 2, 0]),
             helper.make_node("MatMul", ["h", "proj_out.weight_T"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "T"]),
                        helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "T", d])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, "T", d]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", vocab])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "proj_out.weight_T")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(path))
    return w


@pytest.mark.parametrize("bits", [8, 4])
def test_tied_table_lookup_reads_the_projections_quantized_weights(tmp_path, bits):
    import onnxruntime as ort

    from slimwhisper.export.quantize import (
        equalize_tied_table,
        quantize_weight_only_int8,
        share_nbits_embedding,
    )

    src, dst = tmp_path / "tied.onnx", tmp_path / "tied.q.onnx"
    w = tied_table_graph(src)
    if bits == 4:
        equalize_tied_table(src, src)
    quantize_weight_only_int8(src, dst, block_size=32, accuracy_level=1, bits=bits)  # fp32 activations: exact products
    share_nbits_embedding(dst, bits)
    model = onnx.load(str(dst))
    big = [i for i in model.graph.initializer if int(np.prod(i.dims)) >= w.size * bits // 16]
    assert [(i.name, int(np.prod(i.dims))) for i in big] == [(f"proj_out.weight_T_Q{bits}", w.size * bits // 8)]  # one table
    ids = np.array([[0, 5, 299, 5, 42]], dtype=np.int64)
    h = np.random.default_rng(1).standard_normal((1, 5, w.shape[1])).astype(np.float32)
    emb, logits = ort.InferenceSession(str(dst)).run(None, {"ids": ids, "h": h})
    rel = np.linalg.norm(emb[0] - w[ids[0]]) / np.linalg.norm(w[ids[0]])
    assert rel < (0.03 if bits == 8 else 0.15)  # looked-up rows are the table, quantised
    # the rows the lookup returns are exactly the weights the projection multiplies by
    shared, direct = h[0] @ emb[0].T, logits[0][:, ids[0]]
    assert np.abs(shared - direct).max() < 1e-4 < np.abs(h[0] @ w[ids[0]].T - direct).max()


def test_four_bit_table_needs_an_int8_bundle():
    with pytest.raises(ExportConfigError, match="int8"):
        ExportConfig(embedding_bits=4)
    with pytest.raises(ExportConfigError, match="embedding_bits"):
        ExportConfig(quantize="int8", embedding_bits=2)
    assert ExportConfig(quantize="int8", embedding_bits=4).to_dict()["embedding_bits"] == 4


def outlier_graph(path, d=32, hidden=64, seed=0):
    """x -> LayerNorm -> MatMul(w1) -> Gelu -> MatMul(w2) -> y, plus LN -> MatMul(w3) -> z: one
    LN-fed pair (foldable) and one post-GELU input (needs a Mul), as in an encoder layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    gamma = np.ones(d, np.float32)
    gamma[:2] = 40.0  # outlier channels of the LN output, as Whisper's encoder has
    inits = {"gamma": gamma, "beta": (rng.standard_normal(d) * 0.1).astype(np.float32),
             "w1": (rng.standard_normal((d, hidden)) * 0.2).astype(np.float32),
             "w2": (rng.standard_normal((hidden, d)) * 0.2).astype(np.float32),
             "w3": (rng.standard_normal((d, d)) * 0.2).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
             helper.make_node("MatMul", ["ln", "w1"], ["h"]), helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w2"], ["y"]), helper.make_node("MatMul", ["ln", "w3"], ["z"])]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", d])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)],
                                ir_version=10), str(path))
    return rng


def test_smoothing_is_exact_in_fp32_folds_layernorm_and_lowers_the_int8_error(tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimwhisper.export.smooth import calibrate, smooth_graph

    src = tmp_path / "enc.onnx"
    rng = outlier_graph(src)
    calib = [{"x": rng.standard_normal((1, 200, 32)).astype(np.float32)} for _ in range(4)]
    held_out = {"x": rng.standard_normal((1, 200, 32)).astype(np.float32)}
    maxima = {k: st.maxima for k, st in calibrate(src, calib).items()}
    assert set(maxima) == {"ln", "g"} and maxima["ln"][:2].min() > 10 * np.median(maxima["ln"])
    largest = smooth_graph(src, tmp_path / "smoothed.onnx", maxima, {"ln": 0.8, "g": 0.8})
    assert largest["ln"] > 5  # the outlier channels were divided
    nodes = onnx.load(str(tmp_path / "smoothed.onnx")).graph.node
    muls = [n for n in nodes if n.op_type == "Mul"]
    assert [n.input[0] for n in muls] == ["g"] * (largest["g"] > 1)  # LN folded; only the GELU output gets a Mul

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, held_out)

    ref = run(src)
    for a, b in zip(run(tmp_path / "smoothed.onnx"), ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    errors = {}
    for name in ("enc", "smoothed"):
        quantize_dynamic(str(tmp_path / f"{name}.onnx"), str(tmp_path / f"{name}.q.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        errors[name] = max(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)) for a, b in zip(run(tmp_path / f"{name}.q.onnx"), ref))
    assert errors["smoothed"] < 0.5 * errors["enc"], errors


def test_smoothed_encoder_needs_int8_and_training_audio(tmp_path):
    with pytest.raises(ExportConfigError) as exc:
        ExportConfig(encoder_int8="smoothed")
    assert any("--quantize int8" in p for p in exc.value.problems) and any("--calib" in p for p in exc.value.problems)
    with pytest.raises(ExportConfigError, match="invalid export config") as exc:
        ExportConfig(quantize="int8", encoder_int8="fast")
    with pytest.raises(ExportConfigError) as exc:
        ExportConfig(quantize="int8", encoder_int8="smoothed", calib=(str(tmp_path / "missing.tsv"),))
    assert any("does not exist" in p for p in exc.value.problems)
    (tmp_path / "ljspeech").mkdir()
    (tmp_path / "ljspeech" / "dev.tsv").write_text("a\ta.flac\thi\n")
    with pytest.raises(ExportConfigError) as exc:
        ExportConfig(quantize="int8", encoder_int8="smoothed", calib=(str(tmp_path / "ljspeech" / "dev.tsv"),))
    assert any("is an evaluation set: never calibrate on it" in p for p in exc.value.problems)
    cfg = ExportConfig(quantize="int8", encoder_int8="smoothed", calib=(str(tmp_path / "ljspeech"),), calib_n=4)
    assert ExportConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_smoothed_int8_encoder_runs_per_tensor_int8_and_stays_close(uneven_bundle, tmp_path):
    import onnxruntime as ort

    from slimwhisper.export.quantize import quantize_int8
    from _helpers import write_manifest

    _, out, _ = uneven_bundle
    calib = write_manifest(tmp_path / "calib", n=3)
    dst = tmp_path / "encoder.int8.onnx"
    quantize_int8(out / "encoder.onnx", dst, "encoder", ExportConfig(quantize="int8", encoder_int8="smoothed",
                                                                      calib=(str(calib),), calib_n=3, threads=1))
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops
    x = {"input_features": np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)}
    ref = ort.InferenceSession(str(out / "encoder.onnx")).run(None, x)
    got = ort.InferenceSession(str(dst)).run(None, x)
    assert max(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)) for a, b in zip(got, ref)) < 0.05  # 0.42 when a shared gamma was divided twice


def test_emulated_int8_matches_onnxruntime_and_the_search_smooths_outliers(tmp_path):
    """The numpy emulation that picks each input's alpha is what quantize_dynamic's kernels compute."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimwhisper.export.smooth import (
        calibrate,
        choose_schemes,
        per_column_int8,
        per_tensor_uint8,
        smoothed_error,
    )

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 48)) * 0.1).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(tmp_path / "mm.onnx"))
    quantize_dynamic(str(tmp_path / "mm.onnx"), str(tmp_path / "mm.q.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    x = rng.standard_normal((1, 300, 64)).astype(np.float32)
    x[..., 5] *= 50  # an outlier channel
    got = ort.InferenceSession(str(tmp_path / "mm.q.onnx")).run(None, {"x": x})[0][0]
    emulated = per_tensor_uint8(x[0], float(x.min()), float(x.max())) @ per_column_int8(w)
    ref = x[0] @ w
    assert np.abs(got - emulated).max() < 0.02 * np.abs(got - ref).max() + 1e-4
    stats = calibrate(tmp_path / "mm.onnx", [{"x": x}])
    plan = choose_schemes(tmp_path / "mm.onnx", stats)["x"]
    assert plan["alpha"] > 0 and plan["scheme"] == "per-tensor"
    assert plan["error"] < 0.5 * smoothed_error(stats["x"], [w.astype(np.float64)], 0.0)  # the outlier was tamed


def test_encoder_attention_fuses_per_layer_heads_and_keeps_the_outputs(tmp_path, uneven_bundle):
    import onnxruntime as ort

    from slimwhisper.export.fuse import fuse_attention
    from slimwhisper.export.graphs import export_encoder
    from slimwhisper.models.slim import spec_from_model

    loaded, out, _ = uneven_bundle
    path = tmp_path / "encoder.onnx"
    export_encoder(loaded.model.float().eval(), spec_from_model(loaded.model), path)
    x = {"input_features": np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)}
    before = ort.InferenceSession(str(path)).run(None, x)
    assert fuse_attention(path) == len(UNEVEN.encoder)
    nodes = onnx.load(str(path)).graph.node
    mha = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    assert [next(a.i for a in n.attribute if a.name == "num_heads") for n in mha] == [layer.self_attn.heads for layer in UNEVEN.encoder]
    assert not any(n.op_type == "Softmax" for n in nodes)
    after = ort.InferenceSession(str(path)).run(None, x)
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    assert fuse_attention(path) == 0  # nothing left to fuse
    bundled = onnx.load(str(out / "encoder.int8.onnx")).graph.node  # the export fused, then quantised
    assert sum(n.op_type == "MultiHeadAttention" for n in bundled) == len(UNEVEN.encoder)


def test_sinusoid_positions_are_generated_in_the_graph_and_a_trained_table_is_kept(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from slimwhisper.export.positions import generate_positions, sinusoids

    def graph_with(table, path):
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "pos"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1500, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1500, 64])],
            [numpy_helper.from_array(table, "pos")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(path))

    x = np.zeros((1, 1500, 64), np.float32)
    stored = sinusoids(1500, 64).astype(np.float16).astype(np.float32)  # as the fp16 checkpoints hold it
    graph_with(stored, tmp_path / "s.onnx")
    assert generate_positions(tmp_path / "s.onnx", "pos")
    assert not [i for i in onnx.load(str(tmp_path / "s.onnx")).graph.initializer if i.name == "pos"]
    y = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"x": x})[0][0]
    assert np.abs(y - stored).max() < 1e-3 and np.abs(y - sinusoids(1500, 64)).max() < 1e-4

    trained = stored.copy()
    trained[7, 3] += 0.01  # one position moved by training: not the sinusoids any more
    graph_with(trained, tmp_path / "t.onnx")
    before = (tmp_path / "t.onnx").read_bytes()
    assert not generate_positions(tmp_path / "t.onnx", "pos")
    assert (tmp_path / "t.onnx").read_bytes() == before


def test_int8_bundle_computes_the_encoder_positions(uneven_bundle):
    _, out, manifest = uneven_bundle
    # fp32 keeps the table the torch model holds (parity within 1e-3); int8 computes the sinusoids
    assert manifest["encoder_positions"] == {"fp32": "table", "int8": "sinusoids"}
    shapes = {name: [tuple(i.dims) for i in onnx.load(str(out / name)).graph.initializer]
              for name in ("encoder.onnx", "encoder.int8.onnx")}
    assert (1500, 64) in shapes["encoder.onnx"] and (1500, 64) not in shapes["encoder.int8.onnx"]
