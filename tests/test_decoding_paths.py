"""The torch path and the bundle path make the same decisions on the same features (one engine),
batching changes nothing, and the CLI's transcribe/eval options reach both paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _helpers import assert_user_error
from typer.testing import CliRunner

import slimwhisper.cli.core  # noqa: F401  (registers the commands)
from slimwhisper.cli import app
from slimwhisper.runtime import BundleTranscriber, DecodeOptions, DecodingOptions
from slimwhisper.runtime.engine import decode, window_prompt
from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
runner = CliRunner()


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def both_paths(loaded, bundle_dir, audio, opts: DecodingOptions, temperature: float = 0.0):
    rt = BundleTranscriber(bundle_dir, threads=1)
    tt = TorchTranscriber(loaded)
    assert tt.specials == rt.specials  # the same ids and suppression lists from tokenizer and manifest
    feats = rt.features(audio)  # identical input features for both
    prompt, sot_index = window_prompt(rt.specials, rt.prompt(None), [], opts, 448)
    out = []
    for model in (tt.model, rt.model):
        (r,) = decode(model, model.encode(feats), prompt, sot_index, rt.specials, opts, temperature, rt.detok,
                      np.random.default_rng(7))
        out.append(r)
    return out


@pytest.mark.parametrize("opts, temperature", [
    (DecodingOptions(sample_len=8, fallback=False), 0.0),
    (DecodingOptions(sample_len=8, beam_size=3, fallback=False), 0.0),
    (DecodingOptions(sample_len=8, timestamps=True), 0.0),
    (DecodingOptions(sample_len=8, beam_size=3, timestamps=True), 0.0),
    (DecodingOptions(sample_len=6, best_of=3), 0.6),
])  # fmt: skip
def test_torch_and_bundle_decide_the_same(tiny_bundle, opts, temperature):
    loaded, out = tiny_bundle
    a, b = both_paths(loaded, out, noise(2.0), opts, temperature)
    assert a.tokens == b.tokens and len(a.tokens) > 0
    assert a.sum_logprob == pytest.approx(b.sum_logprob, abs=1e-3)
    assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-4)
    if opts.timestamps:
        assert a.tokens[0] >= 50363  # the timestamp rules hold: a timestamp comes first


def test_transcribers_agree_end_to_end_with_fallback_and_timestamps(tiny_bundle):
    loaded, out = tiny_bundle
    config = DecodeConfig.whisper(beam=2, max_new_tokens=6)
    tt = TorchTranscriber(loaded, config)
    rt = BundleTranscriber(out, threads=1, options=DecodeOptions(max_new_tokens=6, decoding=config.engine()))
    audio = noise(35.0)
    a, b = tt.transcribe(audio), rt.transcribe(audio)
    assert a.tokens == b.tokens and a.windows == b.windows >= 2
    assert [(s.start, s.end) for s in a.segments] == [(s.start, s.end) for s in b.segments]
    assert a.extra["fallbacks"] == b.extra["fallbacks"]


@pytest.mark.parametrize("backend", ["torch", "bundle"])
def test_batch_gives_the_same_transcripts(tiny_bundle, backend):
    loaded, out = tiny_bundle
    config = DecodeConfig(max_new_tokens=5, timestamps=True)
    if backend == "torch":
        tr = TorchTranscriber(loaded, config)
    else:
        tr = BundleTranscriber(out, threads=1, options=DecodeOptions(max_new_tokens=5, decoding=config.engine()))
    clips = [noise(1.0, 1), noise(2.5, 2), noise(31.0, 3)]  # the 31 s clip goes through the long-form loop
    one = [tr.transcribe(c) for c in clips]
    many = tr.transcribe_batch(clips)
    assert [t.tokens for t in many] == [t.tokens for t in one]
    assert [t.windows for t in many][:2] == [1, 1] and many[2].windows >= 2 and many[2].windows == one[2].windows


# ---- CLI ------------------------------------------------------------------------------------------


def wav(path: Path, audio: np.ndarray) -> Path:
    sf.write(path, audio, 16000)
    return path


def test_transcribe_bundle_formats(tmp_path, tiny_bundle):
    clip = wav(tmp_path / "a.wav", noise(3.0))
    for fmt, check in (("srt", lambda t: t.startswith("1\n00:00:0")), ("vtt", lambda t: t.startswith("WEBVTT")),
                       ("json", lambda t: "segments" in json.loads(t))):
        r = runner.invoke(app, ["transcribe", "--bundle", str(tiny_bundle[1]), "--format", fmt, "--no-fallback",
                                "--threads", "1", str(clip)])
        assert r.exit_code == 0, r.output
        assert check(r.stdout), r.stdout
    doc = json.loads(runner.invoke(app, ["transcribe", "--bundle", str(tiny_bundle[1]), "--format", "json",
                                         "--no-fallback", "--beam", "2", str(clip)]).stdout)
    assert doc["decoding"]["beam"] == 2 and doc["decoding"]["fallback"] is False
    assert all(s["start"] <= s["end"] <= 3.0 for s in doc["segments"])


def test_transcribe_out_file(tmp_path, tiny_bundle):
    clip = wav(tmp_path / "a.wav", noise(2.0))
    out = tmp_path / "a.srt"
    args = ["transcribe", "--bundle", str(tiny_bundle[1]), "--format", "srt", "--no-fallback", "--out", str(out)]
    assert runner.invoke(app, [*args, str(clip)]).exit_code == 0 and out.read_text().startswith("1\n")
    assert_user_error(runner.invoke(app, [*args, str(clip)]), "exists")  # no --force: refused


@pytest.mark.parametrize("args, phrase", [
    (["--beam", "0"], "--beam"),
    (["--format", "xml"], "unknown --format 'xml'"),
])  # fmt: skip
def test_transcribe_bad_options(tmp_path, tiny_bundle, args, phrase):
    clip = wav(tmp_path / "a.wav", noise(1.0))
    r = runner.invoke(app, ["transcribe", "--bundle", str(tiny_bundle[1]), *args, str(clip)])
    assert_user_error(r, phrase)


def test_eval_batch_and_no_fallback_are_recorded(tmp_path, tiny_bundle):
    from _helpers import write_manifest

    data = write_manifest(tmp_path / "set", n=3)
    docs = []
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}.json"
        r = runner.invoke(app, ["eval", "--bundle", str(tiny_bundle[1]), "--data", str(data), "--batch-size", batch,
                                "--no-fallback", "--threads", "1", "--json", str(out), "-q"])
        assert r.exit_code == 0, r.output
        docs.append(json.loads(out.read_text()))
        assert "greedy, no fallback, timestamps" in r.stdout
    assert docs[0]["decoding"]["fallback"] is False and docs[1]["config"]["batch_size"] == 3
    assert [u["hyp"] for u in docs[0]["utterances"]] == [u["hyp"] for u in docs[1]["utterances"]]
    assert_user_error(runner.invoke(app, ["eval", "--bundle", str(tiny_bundle[1]), "--data", str(data),
                                          "--batch-size", "0"]), "--batch-size")


# ---- real tiny.en ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en_bundle(tiny_en, tmp_path_factory):
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig

    out = tmp_path_factory.mktemp("tiny_en") / "bundle"
    export_bundle(tiny_en, out, ExportConfig(parity_clips=1, parity_max_tokens=8, threads=2), log=lambda m: None)
    return out


@pytest.mark.slow
def test_real_tiny_en_paths_agree_and_silence_gives_no_words(tiny_en, tiny_en_bundle):
    clip = DATA / "misc-real" / "audio" / "jfk.flac"
    if not clip.is_file():
        pytest.skip(f"no real data at {clip}")
    audio, _ = sf.read(clip, dtype="float32")
    for opts in (DecodingOptions(timestamps=True), DecodingOptions(beam_size=5, timestamps=True)):
        a, b = both_paths(tiny_en, tiny_en_bundle, audio, opts)
        assert a.tokens == b.tokens and "ask not" in b.text.lower()
    config = DecodeConfig.whisper()
    tt = TorchTranscriber(tiny_en, config)
    rt = BundleTranscriber(tiny_en_bundle, threads=2, options=DecodeOptions(decoding=config.engine()))
    for silence in (np.zeros(16000 * 5, np.float32), np.zeros(1, np.float32)):
        for tr in (tt, rt):
            r = tr.transcribe(silence)
            assert r.text == "" and r.tokens == [], (tr.name, r.text)


def test_greedy_tokens_for_pseudo_labels_match_the_transcriber(tiny_random):
    from slimwhisper.decoding_torch import greedy_tokens

    tr = TorchTranscriber(tiny_random, DecodeConfig(max_new_tokens=5))
    audio = noise(2.0, 5)
    feats = tr.features(audio)[None]
    got = greedy_tokens(tiny_random, feats, [tr.specials.sot, tr.specials.no_timestamps], max_new_tokens=5)
    assert got == tr.transcribe(audio).tokens and len(got) == 5


class HourOfSilence:
    """An hour-long source that never exists in memory; records every read."""

    samples = 16000 * 3600

    def __init__(self):
        self.reads = []

    def read(self, start, n):
        self.reads.append(n)
        return np.zeros(min(n, self.samples - start), np.float32)


def test_an_hour_streams_window_by_window(tiny_random):
    source = HourOfSilence()
    r = TorchTranscriber(tiny_random, DecodeConfig.whisper(max_new_tokens=4)).transcribe_source(source)
    assert r.text == "" and r.extra["silent_windows"] == 120
    assert max(source.reads) == 480_000 and len(source.reads) == 120  # 30 s at a time, never more


def test_file_stream_reads_16k_files_in_pieces(tmp_path):
    from slimwhisper.audio_stream import open_stream

    audio = noise(3.0)
    path = wav(tmp_path / "a.wav", audio)
    with open_stream(path) as stream:
        assert stream.samples == audio.size
        assert np.allclose(stream.read(16000, 100), audio[16000:16100], atol=1e-4)
    sf.write(tmp_path / "b.wav", audio[:8000], 8000)
    assert open_stream(tmp_path / "b.wav") is None  # other rates are read whole and resampled
    assert open_stream(tmp_path / "missing.wav") is None
