"""Transcription (windowing, timing, tokens, decode settings) and evaluation (JSON shape, skip-bad)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slimwhisper.audio import SAMPLE_RATE
from slimwhisper.data import load_dataset
from slimwhisper.errors import UserError
from slimwhisper.evaluate import (
    EvalConfig,
    EvalError,
    evaluate,
    run_eval,
    wer_of,
    write_json_atomic,
)
from slimwhisper.transcribe import (
    BACKENDS,
    DecodeConfig,
    DecodeError,
    TorchTranscriber,
    Transcriber,
    make_transcriber,
    split_windows,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FAST = DecodeConfig(max_new_tokens=4)  # random weights never emit EOS; bound the work


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def write_set(folder: Path, rows: list[tuple[str, str | None]]) -> Path:
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (uid, text) in enumerate(rows):
        sf.write(folder / "audio" / f"{uid}.flac", noise(1.0, i), SAMPLE_RATE)
        lines.append(f"{uid}\taudio/{uid}.flac\t{text or ''}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_split_windows_covers_all_audio():
    assert [w.size for w in split_windows(noise(70))] == [480_000, 480_000, 160_000]
    assert len(split_windows(noise(60))) == 2
    assert split_windows(np.zeros(0, np.float32)) == []


def test_long_audio_is_transcribed_in_30s_windows(tiny_random):
    tr = TorchTranscriber(tiny_random, FAST)
    assert isinstance(tr, Transcriber)
    out = tr.transcribe(noise(70))
    assert out.windows == 3 and len(out.segments) <= 3  # without timestamps: 30 s windows, one segment each
    assert 0 < out.encoder_s <= out.total_s
    assert len(out.tokens) <= 3 * FAST.max_new_tokens  # random weights may emit only specials
    special = set(tiny_random.processor.tokenizer.all_special_ids)
    assert not special & set(out.tokens)
    assert out.text == "".join(s.text for s in out.segments).strip()
    assert [s.start for s in out.segments] == [30.0 * i for i in range(len(out.segments))]


def test_beam_search_runs(tiny_random):
    out = TorchTranscriber(tiny_random, DecodeConfig(beam=2, max_new_tokens=3)).transcribe(noise(2))
    assert out.windows == 1 and len(out.tokens) <= 3


def test_empty_audio_gives_empty_transcript(tiny_random):
    out = TorchTranscriber(tiny_random, FAST).transcribe(np.zeros(0, np.float32))
    assert out.text == "" and out.windows == 0 and out.tokens == []


def test_decode_config_reports_every_problem():
    with pytest.raises(DecodeError) as err:
        DecodeConfig(beam=0, task="summarise", max_new_tokens=0)
    message = str(err.value)
    assert "beam" in message and "task" in message and "max_new_tokens" in message


def test_english_only_model_refuses_other_language(tiny_random):
    with pytest.raises(DecodeError, match="English-only"):
        TorchTranscriber(tiny_random, DecodeConfig(language="de"))
    TorchTranscriber(tiny_random, DecodeConfig(language="en"))  # "en" is fine


def test_backend_registry():
    assert set(BACKENDS) >= {"torch", "bundle"}
    with pytest.raises(DecodeError, match="unknown backend"):
        make_transcriber("tensorflow", "x")
    with pytest.raises(DecodeError, match="no bundle folder"):
        make_transcriber("bundle", "/no/such/bundle")


def test_eval_config_validation():
    with pytest.raises(EvalError) as err:
        EvalConfig(data=Path("d"), model="tiny.en", bundle=Path("b"), limit=0, threads=0)
    assert "exactly one of model" in str(err.value) and "limit" in str(err.value) and "threads" in str(err.value)
    assert EvalConfig(data=Path("d"), bundle=Path("b")).backend == "bundle"


def test_evaluate_json_shape_and_skip_bad(tmp_path, tiny_random):
    write_set(tmp_path, [("a", "hello world"), ("b", "good morning"), ("c", None)])
    (tmp_path / "audio" / "b.flac").write_bytes(b"broken")
    ds = load_dataset(tmp_path, skip_bad=True)
    config = EvalConfig(data=tmp_path, model="tiny-random", skip_bad=True, decode=FAST)
    result = evaluate(TorchTranscriber(tiny_random, FAST), ds, config, progress=False)
    doc = json.loads(json.dumps(result.to_json()))  # must be plain JSON
    assert doc["model"] == "tiny-random" and doc["data"] == tmp_path.name and doc["synthetic"] is False
    assert doc["n"] == 1 and doc["skipped"] == 1 and doc["unscored"] == 1
    assert "transcripts.tsv:2" in doc["skipped_reasons"][0]
    assert doc["wer"] == result.wer and doc["wer"] >= 0 and doc["cer"] >= 0
    assert doc["config"]["decode"]["max_new_tokens"] == 4 and doc["config"]["skip_bad"] is True
    (utt,) = doc["utterances"]
    assert {"id", "ref", "hyp", "seconds", "total_s", "encoder_s", "tokens", "windows"} <= set(utt)
    assert utt["id"] == "a" and utt["ref"] == "hello world"
    assert doc["timing"]["audio_s"] == pytest.approx(1.0)
    assert "WER" in result.summary() and "1 skipped" in result.summary()


def test_bad_item_without_skip_fails_with_line(tmp_path, tiny_random):
    write_set(tmp_path, [("a", "x"), ("b", "y")])
    (tmp_path / "audio" / "b.flac").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"transcripts.tsv:2"):
        evaluate(TorchTranscriber(tiny_random, FAST), load_dataset(tmp_path), progress=False)


def test_unlabelled_set_is_refused_before_loading_a_model(tmp_path):
    write_set(tmp_path, [("a", None)])
    with pytest.raises(EvalError, match="no reference texts"):
        run_eval(EvalConfig(data=tmp_path, model="no-such-model-is-loaded"))


def test_synthetic_sets_are_labelled(tmp_path, tiny_random):
    write_set(tmp_path, [("a", "hello")])
    (tmp_path / "dataset.json").write_text('{"synthetic": true}')
    result = evaluate(TorchTranscriber(tiny_random, FAST), load_dataset(tmp_path), progress=False)
    assert result.to_json()["synthetic"] is True and "(synthetic)" in result.summary()


def test_write_json_atomic(tmp_path):
    with pytest.raises(EvalError, match="does not exist"):
        write_json_atomic({"a": 1}, tmp_path / "missing" / "o.json")
    assert not (tmp_path / "missing").exists()
    target = tmp_path / "o.json"
    write_json_atomic({"a": 1}, target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["o.json"]  # no temp files left behind


@pytest.mark.data
def test_tiny_en_on_librispeech_mini(tiny_en):
    mini = DATA / "librispeech-clean-mini"
    if not (mini / "transcripts.tsv").is_file():
        pytest.skip(f"no real data at {mini}")
    result = evaluate(TorchTranscriber(tiny_en), load_dataset(mini, limit=3), progress=False)
    assert result.n == 3
    assert result.wer < 0.3, result.summary()


def test_multilingual_language_forced_and_validated():
    from slimwhisper.models.testing import tiny_random_loaded

    loaded = tiny_random_loaded(vocab_size=51865)  # multilingual vocabulary size
    loaded.multilingual = True
    tr = TorchTranscriber(loaded, DecodeConfig(language="german", max_new_tokens=2))
    assert tr._prompt == {"language": "de", "task": "transcribe"}
    assert tr.transcribe(noise(1)).windows == 1
    with pytest.raises(DecodeError, match="unknown language 'xx'"):
        TorchTranscriber(loaded, DecodeConfig(language="xx"))


def test_progress_in_logs_prints_plain_lines(capsys):
    from slimwhisper.progress import progress_bar, track

    assert list(track([1, 2, 3], description="quiet", enabled=False)) == [1, 2, 3]
    with progress_bar(2, "eval x") as bar:  # pytest's stderr is not a terminal
        bar.advance()
        bar.advance(wer="5%")
    err = capsys.readouterr().err
    assert "quiet" not in err and "eval x: 2/2" in err and "wer=5%" in err


# ---- one rule for bad audio and bad thread counts on every path ------------------------------------


def write_nan_set(folder: Path) -> Path:
    """Two labelled clips; the first is a float WAV holding a NaN sample."""
    write_set(folder, [("a", "hello"), ("b", "world")])
    bad = noise(1.0)
    bad[10] = np.nan
    sf.write(folder / "audio" / "a.wav", bad, SAMPLE_RATE, subtype="FLOAT")
    tsv = folder / "transcripts.tsv"
    tsv.write_text(tsv.read_text().replace("audio/a.flac", "audio/a.wav"))
    return folder


@pytest.mark.parametrize("backend", ["torch", "bundle"])
def test_nan_audio_is_refused_or_skipped_on_both_backends(tmp_path, tiny_random, tiny_bundle, backend):
    from slimwhisper.runtime import BundleTranscriber, DecodeOptions

    data = write_nan_set(tmp_path)
    if backend == "torch":
        tr = TorchTranscriber(tiny_random, FAST)
    else:
        tr = BundleTranscriber(tiny_bundle[1], threads=1, options=DecodeOptions(max_new_tokens=4))
    with pytest.raises(UserError, match=r"transcripts.tsv:1: audio file .*a.wav contains 1 NaN"):
        evaluate(tr, load_dataset(data), progress=False)
    result = evaluate(tr, load_dataset(data, skip_bad=True), progress=False)
    assert result.n == 1 and result.skipped == 1 and "a.wav" in result.skipped_reasons[0]


def test_eval_bundle_skip_bad_end_to_end(tmp_path, tiny_bundle):
    data = write_nan_set(tmp_path)
    result = run_eval(EvalConfig(data=data, bundle=tiny_bundle[1], skip_bad=True, decode=FAST, threads=1),
                      progress=False)
    assert result.n == 1 and result.skipped == 1


def test_audio_a_backend_refuses_is_skipped_and_counted(tmp_path):
    from slimwhisper.audio import AudioError

    class Refuses:
        name = "refuses"

        def transcribe(self, audio):
            raise AudioError("audio is too quiet")

    write_set(tmp_path, [("a", "x")])
    with pytest.raises(UserError, match=r"transcripts.tsv:1: .*a.flac: audio is too quiet"):
        evaluate(Refuses(), load_dataset(tmp_path), progress=False)
    with pytest.raises(EvalError, match="no utterance could be evaluated \\(1 skipped\\)"):
        evaluate(Refuses(), load_dataset(tmp_path, skip_bad=True), progress=False)


@pytest.mark.parametrize("threads", [0, -1, True])
def test_threads_below_one_are_refused_before_loading(threads):
    for backend in ("torch", "bundle"):  # the model/bundle does not exist: the check comes first
        with pytest.raises(DecodeError, match=f"--threads must be a positive integer, got {threads!r}"):
            make_transcriber(backend, "/no/such/model", threads=threads)
    with pytest.raises(EvalError, match=f"--threads must be a positive integer, got {threads!r}"):
        EvalConfig(data=Path("d"), model="tiny.en", threads=threads)


def test_wer_of_a_loaded_model(tmp_path, tiny_random):
    write_set(tmp_path, [("a", "hello world"), ("b", "good morning")])
    want = evaluate(TorchTranscriber(tiny_random, DecodeConfig()), load_dataset(tmp_path, limit=1), progress=False)
    assert wer_of(tiny_random, tmp_path, limit=1) == pytest.approx(want.wer)
    assert want.n == 1


def test_torch_transcriber_refuses_non_finite_arrays(tiny_random):
    from slimwhisper.audio import AudioError

    audio = noise(0.5)
    audio[3] = -np.inf
    with pytest.raises(AudioError, match="audio contains 1 NaN or infinite sample"):
        TorchTranscriber(tiny_random, FAST).transcribe(audio)


def test_english_only_bundle_refuses_other_language_like_torch(tiny_bundle):
    with pytest.raises(DecodeError, match="English-only"):
        make_transcriber("bundle", str(tiny_bundle[1]), DecodeConfig(language="de"))
    assert make_transcriber("bundle", str(tiny_bundle[1]), DecodeConfig(language="en"), threads=1).name
