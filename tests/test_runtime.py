"""Torch-free runtime: front-end equality, tokenizer, integrity checks, import without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from slimwhisper.runtime import (
    AudioError,
    BundleError,
    BundleTranscriber,
    TokenDecoder,
    log_mel,
    resample,
)


@pytest.mark.parametrize("seconds", [0.7, 12.0, 31.0])
def test_log_mel_equals_whisper_feature_extractor(seconds):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    rng = np.random.default_rng(3)
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    want = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    got = log_mel(audio, fe.mel_filters)
    assert got.shape == want.shape == (80, 3000)
    assert np.max(np.abs(got - want)) < 1e-4


def test_mel_project_equals_the_dense_product_without_blas():
    from slimwhisper.runtime.frontend import mel_project

    rng = np.random.default_rng(0)
    spec = rng.random((301, 201)) ** 4
    filters = np.where(rng.random((201, 80)) < 0.02, rng.random((201, 80)), 0.0)
    filters[:, 7] = 0.0  # an empty filter stays zero
    filters[:, 9] = 0.0
    filters[3, 9] = 2.0  # one non-zero weight
    got = mel_project(spec, filters)
    assert got.shape == (80, 301)
    assert np.allclose(got, (spec @ filters).T, rtol=1e-12, atol=0)
    assert not got[7].any()


def test_bundle_sessions_stop_spinning_after_each_run(tiny_bundle):
    from slimwhisper.runtime import BundleTranscriber

    tr = BundleTranscriber(tiny_bundle[1], threads=2)
    for session in (tr.model.encoder, tr.model.decoder):  # see runtime.bundle._session: why
        assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"


def test_resample_keeps_pitch_and_duration():
    t = np.arange(8000) / 8000
    y = resample(np.sin(2 * np.pi * 300 * t).astype(np.float32), 8000)
    assert len(y) == 16000
    assert np.argmax(np.abs(np.fft.rfft(y))) == 300  # 1 s at 16 kHz: bin index = Hz


def test_token_decoder_matches_transformers(tiny_bundle):
    loaded, out = tiny_bundle
    tok = loaded.processor.tokenizer
    text = " Hello, world! Ünïcödé — 42 tokens, naïve café."
    ids = tok.encode(text, add_special_tokens=False)
    dec = TokenDecoder(out / "tokenizer.json.gz", first_special=50256)  # bundles store it gzipped
    assert dec.decode(ids) == tok.decode(ids) == text
    assert dec.decode([50257, *ids, 50362, 50256]) == text  # specials and timestamps skipped


def test_transcriber_fields_and_long_audio_windows(tiny_bundle):
    _, out = tiny_bundle
    from slimwhisper.runtime import DecodeOptions

    rt = BundleTranscriber(out, threads=1, options=DecodeOptions(max_new_tokens=3))
    r = rt.transcribe(np.zeros(16000 * 65, dtype=np.float32) + 0.01)
    assert r.windows == 3 and len(r.segments) <= 3  # no timestamps: each window is one segment
    assert [s.start for s in r.segments] == sorted(s.start for s in r.segments)
    assert r.total_s >= r.encoder_s > 0 and isinstance(r.text, str) and all(t < 50256 for t in r.tokens)
    assert r.extra["decoding"]["search"] == "greedy" and r.extra["decoding"]["fallback"] is False
    r8k = rt.transcribe(np.zeros(8000, dtype=np.float32), sr=8000)
    assert r8k.windows == 1


def test_bad_audio_is_refused(tiny_bundle):
    rt = BundleTranscriber(tiny_bundle[1], threads=1)
    with pytest.raises(AudioError, match="empty"):
        rt.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        rt.transcribe(np.full(100, np.nan, dtype=np.float32))


def test_transcribe_file_reads_wav_and_refuses_other_formats_in_one_line(tiny_bundle, tmp_path):
    import wave

    import soundfile as sf

    rt = BundleTranscriber(tiny_bundle[1], threads=1)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((tone * 32767).astype(np.int16).tobytes())
    assert isinstance(rt.transcribe_file(tmp_path / "a.wav").text, str)
    sf.write(tmp_path / "a.flac", tone, 8000)
    with pytest.raises(BundleError, match="not a readable WAV file.*convert it"):
        rt.transcribe_file(tmp_path / "a.flac")


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle[1], dst)
    return dst


def test_altered_file_is_detected(bundle_copy):
    data = bytearray((bundle_copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx was altered"):
        BundleTranscriber(bundle_copy)


def test_missing_file_is_detected(bundle_copy):
    (bundle_copy / "mel_filters.npy").unlink()
    with pytest.raises(BundleError, match="missing file mel_filters.npy"):
        BundleTranscriber(bundle_copy)


def test_unknown_manifest_version_and_provider(bundle_copy):
    with pytest.raises(BundleError, match="provider"):
        BundleTranscriber(bundle_copy, providers=["NoSuchExecutionProvider"])
    path = bundle_copy / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99"):
        BundleTranscriber(bundle_copy)
    with pytest.raises(BundleError, match="not a slimwhisper bundle"):
        BundleTranscriber(bundle_copy / "nowhere")


def test_runtime_imports_and_transcribes_without_torch(tiny_bundle):
    _, out = tiny_bundle
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' now raises ImportError
        sys.modules["transformers"] = None
        import numpy as np
        from slimwhisper.runtime import BundleTranscriber, DecodeOptions
        rt = BundleTranscriber({str(out)!r}, threads=1, options=DecodeOptions(max_new_tokens=4))
        r = rt.transcribe(np.sin(np.arange(16000) / 10).astype(np.float32))
        assert r.windows == 1 and isinstance(r.text, str)
        assert "torch" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
        print("ok", r.tokens)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


# ---- bad input: one UserError naming what is wrong -----------------------------------------------


def test_runtime_errors_are_user_errors_and_audio_error_is_shared():
    import slimwhisper.audio
    from slimwhisper.errors import UserError

    assert issubclass(BundleError, UserError) and issubclass(AudioError, UserError)
    assert slimwhisper.audio.AudioError is AudioError  # one class: skip-bad treats both paths alike
    assert slimwhisper.audio.SAMPLE_RATE == 16000


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("files"), "missing key 'files'"),
    (lambda m: m["tokenizer"].pop("eot"), "missing key 'tokenizer.eot'"),
    (lambda m: m.update(files=["encoder.onnx"]), "'files' must be an object, got list"),
    (lambda m: m["spec"]["decoder"][0].pop("self_attn"), r"spec.decoder\[0\].self_attn must give integer heads"),
])  # fmt: skip
def test_incomplete_manifest_names_the_key(bundle_copy, edit, message):
    path = bundle_copy / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    for verify in (True, False):
        with pytest.raises(BundleError, match=message) as err:
            BundleTranscriber(bundle_copy, verify=verify)
        assert "re-export the bundle" in str(err.value) and "\n" not in str(err.value)


def test_manifest_that_is_not_an_object(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="format is None"):
        BundleTranscriber(bundle_copy)


@pytest.mark.parametrize("threads", [0, -1])
def test_threads_below_one_are_refused(tiny_bundle, threads):
    with pytest.raises(BundleError, match=f"threads must be a positive integer, got {threads}"):
        BundleTranscriber(tiny_bundle[1], threads=threads)


def test_non_finite_audio_names_where_it_came_from(tiny_bundle):
    rt = BundleTranscriber(tiny_bundle[1], threads=1)
    audio = np.zeros(1600, dtype=np.float32)
    audio[5] = np.inf
    with pytest.raises(AudioError, match="clip.wav contains 1 NaN or infinite sample"):
        rt.transcribe(audio, where="clip.wav")


def test_forced_language_rule():
    from slimwhisper.runtime.decode import forced_language

    assert forced_language(None, True) == "en" and forced_language("de", True) == "de"
    assert forced_language("auto", True) == "auto" and forced_language("de", False) is None
