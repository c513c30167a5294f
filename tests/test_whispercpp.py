"""whisper.cpp peer: the ggml writer (read back by a small reader here), its refusals, and the
``whisper-cpp`` bench backend through pywhispercpp (skipped with the reason when it is missing).

The tiny random model is ``slimwhisper.models.testing.tiny_random_loaded`` (tests/_helpers.py's
tiny config with the real tiny.en tokenizer): whisper.cpp derives special-token ids from the
vocabulary size, so the vocab-100 model of tests/_helpers.py would be refused, rightly. Its FFN is
widened to 4 * d_model, the only FFN width whisper.cpp builds.
"""

from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest

from slimwhisper.export.ggml import (
    GGML_MAGIC,
    GgmlError,
    check_ggml,
    ggml_bytes,
    ggml_name,
    write_ggml,
)

HAS_PYWHISPERCPP = importlib.util.find_spec("_pywhispercpp") is not None
needs_pywhispercpp = pytest.mark.skipif(not HAS_PYWHISPERCPP, reason="pywhispercpp not installed (pip install 'slimwhisper[peers]')")


def dense_loaded(**overrides):
    from slimwhisper.models.testing import tiny_random_loaded

    return tiny_random_loaded(**{"encoder_ffn_dim": 256, "decoder_ffn_dim": 256, **overrides})


def read_ggml(data: bytes) -> dict:
    """A reader written from whisper.cpp's loader (src/whisper.cpp whisper_model_load), not from our writer."""
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    out = {"magic": take("I")[0], "hparams": take("11i")}
    n_mel, n_fft = take("2i")
    out["filters"] = np.frombuffer(data, "<f4", n_mel * n_fft, pos).reshape(n_mel, n_fft)
    pos += 4 * n_mel * n_fft
    out["vocab"] = []
    for _ in range(take("i")[0]):
        (length,) = take("i")
        out["vocab"].append(data[pos : pos + length])
        pos += length
    out["tensors"] = {}
    while pos < len(data):
        n_dims, name_len, ftype = take("3i")
        ne = take(f"{n_dims}i")
        name = data[pos : pos + name_len].decode()
        pos += name_len
        dtype = {0: "<f4", 1: "<f2"}[ftype]
        count = int(np.prod(ne))
        out["tensors"][name] = (ne, ftype, np.frombuffer(data, dtype, count, pos).reshape(ne[::-1]))
        pos += count * np.dtype(dtype).itemsize
    return out


def expected_names(n_enc: int, n_dec: int) -> set[str]:
    """whisper.cpp's tensor names (src/whisper-arch.h ASR_TENSOR_NAMES)."""
    attn = ["query.weight", "query.bias", "key.weight", "value.weight", "value.bias", "out.weight", "out.bias"]
    block = [f"attn.{a}" for a in attn] + ["attn_ln.weight", "attn_ln.bias", "mlp_ln.weight", "mlp_ln.bias",
                                             "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    cross = [f"cross_attn.{a}" for a in attn] + ["cross_attn_ln.weight", "cross_attn_ln.bias"]
    names = {"encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight",
             "encoder.conv2.bias", "encoder.ln_post.weight", "encoder.ln_post.bias", "decoder.positional_embedding",
             "decoder.token_embedding.weight", "decoder.ln.weight", "decoder.ln.bias"}
    names |= {f"encoder.blocks.{i}.{b}" for i in range(n_enc) for b in block}
    return names | {f"decoder.blocks.{i}.{b}" for i in range(n_dec) for b in block + cross}


@pytest.fixture(scope="module")
def written():
    loaded = dense_loaded()
    return loaded, read_ggml(bytes(ggml_bytes(loaded)))


def test_header_filters_and_vocabulary_read_back(written):
    loaded, f = written
    assert f["magic"] == GGML_MAGIC
    # n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype
    assert f["hparams"] == (51864, 1500, 64, 4, 2, 448, 64, 4, 2, 80, 1)
    mel = np.asarray(loaded.processor.feature_extractor.mel_filters, dtype=np.float32)
    assert f["filters"].shape == (80, 201)
    np.testing.assert_array_equal(f["filters"], mel.T)
    assert len(f["vocab"]) == 50257  # byte-level tokens up to <|endoftext|>, like vocab.json
    assert f["vocab"][220] == b" " and f["vocab"][50256] == b"<|endoftext|>"
    assert b"".join(f["vocab"][i] for i in loaded.processor.tokenizer.encode(" café", add_special_tokens=False)) == " café".encode()


def test_tensor_names_shapes_types_and_values(written):
    loaded, f = written
    t = f["tensors"]
    assert set(t) == expected_names(2, 2) and len(t) == 7 + 15 * 2 + 4 + 24 * 2
    assert t["encoder.conv1.weight"][:2] == ((3, 80, 64), 1)  # ggml dims are numpy's reversed
    assert t["encoder.conv1.bias"][:2] == ((1, 64), 0)  # [n] reshaped to [n, 1]
    assert t["encoder.positional_embedding"][:2] == ((64, 1500), 0)
    assert t["decoder.token_embedding.weight"][:2] == ((64, 51864), 1)
    assert t["decoder.blocks.1.mlp.0.weight"][:2] == ((64, 256), 1)
    assert t["decoder.blocks.1.cross_attn_ln.bias"][:2] == ((64,), 0)
    sd = loaded.model.state_dict()
    q = sd["model.decoder.layers.1.encoder_attn.q_proj.weight"].numpy()
    np.testing.assert_allclose(t["decoder.blocks.1.cross_attn.query.weight"][2], q, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(t["encoder.blocks.0.attn.value.bias"][2], sd["model.encoder.layers.0.self_attn.v_proj.bias"].numpy())


def test_name_mapping():
    assert ggml_name("model.encoder.layers.3.self_attn.k_proj.weight") == "encoder.blocks.3.attn.key.weight"
    assert ggml_name("model.decoder.layers.0.encoder_attn.k_proj.weight") == "decoder.blocks.0.cross_attn.key.weight"
    assert ggml_name("model.decoder.layers.2.fc2.bias") == "decoder.blocks.2.mlp.2.bias"
    assert ggml_name("model.encoder.layer_norm.weight") == "encoder.ln_post.weight"
    assert ggml_name("proj_out.weight") is None  # tied to the token embedding: whisper.cpp uses that


def uneven_loaded():
    import dataclasses

    from slimwhisper.models.slim import model_from_spec, spec_from_model

    base = dense_loaded()
    enc = list(base.spec.encoder)
    enc[1] = dataclasses.replace(enc[1], self_attn=dataclasses.replace(enc[1].self_attn, heads=3), ffn_dim=200)
    spec = dataclasses.replace(base.spec, encoder=tuple(enc))
    model = model_from_spec(base.model.config, spec).eval()
    model.generation_config = base.model.generation_config
    assert spec_from_model(model) == spec
    return dataclasses.replace(base, model=model, spec=spec, name="tiny-uneven")


def test_uneven_pruned_model_is_refused_in_one_line(tmp_path):
    with pytest.raises(GgmlError) as err:
        write_ggml(uneven_loaded(), tmp_path / "m.bin")
    msg = str(err.value)
    assert "\n" not in msg and "encoder.1.self_attn.heads 3 != 4" in msg and "encoder.1.ffn_dim 200 != 4*d_model 256" in msg
    assert not (tmp_path / "m.bin").exists()


def test_vocabulary_pruned_and_ffn_ratio_refused():
    with pytest.raises(GgmlError, match=r"vocabulary of 51000 rows \(51864 in the tokenizer\)"):
        check_ggml(dense_loaded(vocab_size=51000))
    with pytest.raises(GgmlError, match=r"decoder.0.ffn_dim 128 != 4\*d_model 256"):
        check_ggml(dense_loaded(decoder_ffn_dim=128))


def test_export_cli_writes_ggml_and_refuses_bundle_options(tmp_path):
    from _helpers import assert_user_error
    from typer.testing import CliRunner

    from slimwhisper.cli import _register, app
    from slimwhisper.models.slimdir import save_slim

    _register()
    folder = save_slim(dense_loaded(), tmp_path / "dense")
    out = tmp_path / "m.bin"
    result = CliRunner().invoke(app, ["export", "--model", str(folder), "--format", "ggml", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_ggml(out.read_bytes())["hparams"][0] == 51864
    assert_user_error(CliRunner().invoke(app, ["export", "--model", str(folder), "--format", "ggml", "--out", str(out)]),
                      "already exists")
    assert_user_error(CliRunner().invoke(app, ["export", "--model", str(folder), "--format", "ggml", "--quantize", "int8",
                                               "--out", str(tmp_path / "x.bin")]), "--quantize applies to ONNX bundles")
    assert_user_error(CliRunner().invoke(app, ["export", "--model", str(folder), "--format", "gguf",
                                               "--out", str(tmp_path / "x.bin")]), "unknown --format 'gguf'")


def test_backend_unavailable_without_the_wheel(monkeypatch):
    from slimwhisper.bench import backends

    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda m: None if m == "_pywhispercpp" else real(m))
    reason = backends.unavailable_reason(backends.get_backend("whisper-cpp"))
    assert "whisper-cpp" in reason and "slimwhisper[peers]" in reason


@needs_pywhispercpp
def test_whisper_cpp_loads_our_file_and_runs_silence(tmp_path, monkeypatch):
    """The whole path: cache key, conversion in a child process, whisper.cpp load, one clip."""
    from slimwhisper.bench.backends import get_backend
    from slimwhisper.bench.targets import resolve_target
    from slimwhisper.models.slimdir import save_slim
    from slimwhisper.transcribe import DecodeConfig

    monkeypatch.setenv("SLIMWHISPER_CACHE", str(tmp_path / "cache"))
    target = resolve_target(str(save_slim(dense_loaded(), tmp_path / "dense")))
    runner = get_backend("whisper-cpp").open(target, 1)
    assert runner.info["files"].startswith(str(tmp_path / "cache" / "ggml-"))
    result = runner.with_decoding(DecodeConfig()).transcribe(np.zeros(16000, np.float32))
    assert result.windows == 1 and result.encoder_s > 0 and result.total_s >= result.encoder_s
    assert isinstance(result.text, str) and result.tokens >= 0


@needs_pywhispercpp
def test_decoding_maps_to_whisper_cpp_params_and_clips_never_share_a_prompt():
    import _pywhispercpp as pw

    from slimwhisper.bench.whispercpp import full_params
    from slimwhisper.transcribe import DecodeConfig

    plain = full_params(pw, DecodeConfig(condition_on_previous_text=False), "en", 2)
    assert (plain.no_context, plain.n_max_text_ctx, plain.temperature_inc, plain.no_timestamps) == (True, 0, 0.0, True)
    assert plain.n_threads == 2 and plain.strategy == pw.whisper_sampling_strategy.WHISPER_SAMPLING_GREEDY
    whisper = full_params(pw, DecodeConfig.whisper(beam=5), "en", 2)
    # no_context stays on: off, whisper.cpp would prompt each clip with the previous clip's text
    assert whisper.no_context and whisper.n_max_text_ctx > 0 and not whisper.no_timestamps
    assert whisper.temperature_inc == pytest.approx(0.2) and whisper.no_speech_thold == pytest.approx(0.6)
    assert whisper.strategy == pw.whisper_sampling_strategy.WHISPER_SAMPLING_BEAM_SEARCH
    assert whisper.beam_search == {"beam_size": 5, "patience": 1.0}


@needs_pywhispercpp
def test_uneven_model_makes_the_backend_unavailable_with_the_reason(tmp_path, monkeypatch):
    from slimwhisper.bench.backends import BackendUnavailable, get_backend
    from slimwhisper.bench.targets import resolve_target
    from slimwhisper.models.slimdir import save_slim

    monkeypatch.setenv("SLIMWHISPER_CACHE", str(tmp_path / "cache"))
    folder = save_slim(uneven_loaded(), tmp_path / "uneven", source={"name": "tiny-random"})
    with pytest.raises(BackendUnavailable, match="encoder.1.self_attn.heads 3 != 4"):
        get_backend("whisper-cpp").open(resolve_target(str(folder)), 1)
    assert not list((tmp_path / "cache").glob("ggml-*/ggml-model.bin"))


@needs_pywhispercpp
@pytest.mark.slow
def test_real_tiny_en_transcribes_like_the_reference():
    from conftest import DATA

    from slimwhisper.bench.backends import get_backend
    from slimwhisper.bench.targets import resolve_target
    from slimwhisper.data import load_dataset
    from slimwhisper.text import score

    data = DATA / "librispeech-clean-mini"
    if not data.exists():
        pytest.skip(f"{data} is absent")
    clips = list(load_dataset(str(data), limit=2))
    runner = get_backend("whisper-cpp").open(resolve_target("tiny.en"), 2)
    results = [runner.transcribe(c.audio) for c in clips]
    assert score([c.text for c in clips], [r.text for r in results]).wer < 0.15
    assert all(r.tokens > 0 and r.windows == 1 for r in results)
