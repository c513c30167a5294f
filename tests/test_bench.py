"""Bench harness: static metrics, FLOP cross-check, timing maths, registry errors, reports, CLI."""

from __future__ import annotations


import pytest

from slimwhisper.bench.backends import (
    BackendKind,
    ClipResult,
    backend_names,
    get_backend,
    probe_ort_cuda,
    register_backend,
    unavailable_reason,
)
from slimwhisper.bench.config import BenchConfig, BenchError
from slimwhisper.bench.plots import pareto_front
from slimwhisper.bench.static import component_of, model_static
from slimwhisper.bench.timing import Clip, pass_figures
from slimwhisper.spec import ArchSpec, AttnSpec, LayerSpec

from _helpers import tiny_config

SMALL = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, vocab_size=200, max_source_positions=40,
             max_target_positions=48)


def _config():
    return tiny_config(**SMALL)


def _uneven_model():
    from slimwhisper.models.slim import model_from_spec

    # uneven heads, qk_dim != vo_dim, one encoder layer and decoder layers 1 and 3 kept of 4
    spec = ArchSpec(32, 16, 200, 40, 48,
                    encoder=(LayerSpec(AttnSpec(3, 6, 10, 8), 40, 1),),
                    decoder=(LayerSpec(AttnSpec(2, 8, 5, 8), 24, 1, cross_attn=AttnSpec(1, 4, 8, 8)),
                             LayerSpec(AttnSpec(4, 8, 8, 8), 64, 3, cross_attn=AttnSpec(3, 8, 4, 8))))
    return model_from_spec(_config(), spec), spec


# ---- static ---------------------------------------------------------------------------------
def test_static_params_equal_module_count(tiny_random):
    static = model_static(tiny_random.model, tiny_random.spec, context=16)
    assert static["params"] == sum(p.numel() for p in tiny_random.model.parameters())
    assert static["params_measured"] == static["params"]
    assert "spec_mismatch" not in static
    assert static["nonzero"] <= static["params"]
    assert static["flops"]["decoder_context"] == 16


def test_static_uneven_components_match_modules():
    model, spec = _uneven_model()
    static = model_static(model, spec, context=8)
    assert static["params"] == sum(p.numel() for p in model.parameters())
    assert "spec_mismatch" not in static, static.get("spec_mismatch")
    assert static["layers"] == {"encoder": 1, "decoder": 2}


def test_nonzero_counts_zeros_left_in_place(tiny_random):
    import torch

    before = model_static(tiny_random.model, tiny_random.spec, context=8)
    w = tiny_random.model.model.encoder.layers[0].fc1.weight
    with torch.no_grad():
        w[: w.shape[0] // 2] = 0  # unstructured-style zeros: same shape, fewer non-zeros
    after = model_static(tiny_random.model, tiny_random.spec, context=8)
    zeroed = (w.shape[0] // 2) * w.shape[1]
    assert after["params"] == before["params"]
    assert before["nonzero"] - after["nonzero"] == zeroed
    assert before["nonzero_by_component"]["encoder.ffn"] - after["nonzero_by_component"]["encoder.ffn"] == zeroed


def test_component_names():
    assert component_of("model.encoder.conv1.weight") == "encoder.embed"
    assert component_of("model.decoder.layers.3.encoder_attn_layer_norm.bias") == "decoder.cross_attn"
    assert component_of("model.encoder.layers.0.self_attn_layer_norm.weight") == "encoder.self_attn"
    assert component_of("model.decoder.layers.1.final_layer_norm.weight") == "decoder.ffn"
    with pytest.raises(ValueError):
        component_of("something.else")


# ---- FLOPs cross-check -----------------------------------------------------------------------
@pytest.mark.parametrize("context", [1, 9])
def test_flops_match_torch_counter_dense(context):
    from transformers import WhisperForConditionalGeneration

    from slimwhisper.bench.flops_check import compare

    result = compare(WhisperForConditionalGeneration(_config()), context)
    for part, r in result.items():
        assert r["rel_diff"] < 0.01, (part, r)
        assert r["torch"] > 0


@pytest.mark.parametrize("context", [1, 9])
def test_flops_match_torch_counter_uneven(context):
    from slimwhisper.bench.flops_check import compare

    model, _ = _uneven_model()
    result = compare(model, context)
    for part, r in result.items():
        assert r["rel_diff"] < 0.01, (part, r)


def test_flop_counter_restores_attention_implementation(tiny_random):
    from slimwhisper.bench.flops_check import eager_attention

    before = tiny_random.model.config._attn_implementation
    with eager_attention(tiny_random.model):
        assert tiny_random.model.config._attn_implementation == "eager"
    assert tiny_random.model.config._attn_implementation == before


# ---- timing maths, Pareto --------------------------------------------------------------------
def test_pass_figures_formulas():
    clips = [Clip("a", None, "", 2.0), Clip("b", None, "", 6.0)]
    results = [ClipResult("x", 9, 0.2, 1.2, 1), ClipResult("y", 19, 0.3, 2.3, 1)]
    f = pass_figures(results, clips)
    assert f["encoder_ms_per_window"] == pytest.approx(250.0)
    assert f["decoder_ms_per_token"] == pytest.approx(1000 * (3.5 - 0.5) / 30)  # (total - enc) / (tokens + 1)
    assert f["rtf"] == pytest.approx(3.5 / 8.0)
    assert f["seconds_per_clip"] == pytest.approx(1.75)


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (0.5, 20.0), (2.0, 5.0 + 1e-9)]
    assert pareto_front(pts) == [3, 0, 1]


# ---- registry and availability ---------------------------------------------------------------
def test_registry_names_and_errors():
    names = backend_names()
    for name in ("torch", "torch-cuda", "onnx", "onnx-cuda", "faster-whisper-int8", "faster-whisper-fp32", "faster-whisper"):
        assert name in names
    assert get_backend("faster-whisper").name == "faster-whisper-int8"
    with pytest.raises(BenchError, match="unknown backend 'nope'.*onnx"):
        get_backend("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_backend(BackendKind("torch", "model", lambda t, n: None, ("torch",)))


def test_missing_module_names_the_extra():
    kind = BackendKind("imaginary", "model", lambda t, n: None, ("no_such_module_slimwhisper_xyz",), extra="peers")
    reason = unavailable_reason(kind)
    assert reason is not None and "not available" in reason and "slimwhisper[peers]" in reason


def test_onnx_cuda_reports_not_available_without_gpu():
    import onnxruntime as ort

    reason = probe_ort_cuda()
    if "CUDAExecutionProvider" in ort.get_available_providers() and reason is None:
        pytest.skip("a working CUDA onnxruntime is present")
    assert reason.startswith("not available")


def test_config_reports_every_problem(tmp_path):
    (tmp_path / "notes.txt").write_text("user data")
    with pytest.raises(BenchError) as err:
        BenchConfig(targets=(), data=str(tmp_path / "missing"), out=str(tmp_path), backends=("nope",), threads=0)
    msg = str(err.value)
    for part in ("at least one model", "unknown backend", "--threads", "does not exist", "already exists"):
        assert part in msg
