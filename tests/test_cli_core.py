"""`slimwhisper transcribe` / `eval` / `synth-data`: output, exit codes, nothing written on error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import slimwhisper.cli.core  # noqa: F401  (registers the commands)
from slimwhisper import transcribe as tr
from slimwhisper.audio import SAMPLE_RATE
from slimwhisper.cli import app
from _helpers import assert_user_error

runner = CliRunner()


def write_set(folder: Path, n: int = 2) -> Path:
    (folder / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        sf.write(folder / "audio" / f"u{i}.flac", (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
        lines.append(f"u{i}\taudio/u{i}.flac\tsome words {i}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def fake_torch_backend(monkeypatch, tiny_random):
    """--model anything -> the tiny random model (no real checkpoint in unit tests)."""
    seen = {}

    def factory(req: tr.BackendRequest):
        seen["source"], seen["threads"] = req.source, req.threads
        return tr.TorchTranscriber(tiny_random, tr.DecodeConfig(beam=req.decode.beam, max_new_tokens=3))

    monkeypatch.setitem(tr.BACKENDS, "torch", factory)
    return seen


assert_clean_error = assert_user_error


def test_eval_prints_wer_cer_and_writes_json(tmp_path, fake_torch_backend):
    data = write_set(tmp_path / "set")
    out = tmp_path / "o.json"
    result = runner.invoke(app, ["eval", "--model", "tiny.en", "--data", str(data), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "WER " in result.stdout and "CER " in result.stdout
    doc = json.loads(out.read_text())
    assert doc["n"] == 2 and doc["model"] == "tiny-random" and len(doc["utterances"]) == 2
    assert fake_torch_backend["source"] == "tiny.en"


def test_eval_limit(tmp_path, fake_torch_backend):
    data = write_set(tmp_path / "set", n=3)
    out = tmp_path / "o.json"
    result = runner.invoke(app, ["eval", "-m", "x", "--data", str(data), "--limit", "1", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["n"] == 1


def test_json_folder_must_exist_and_nothing_is_written(tmp_path, fake_torch_backend):
    data = write_set(tmp_path / "set")
    out = tmp_path / "no" / "o.json"
    result = runner.invoke(app, ["eval", "--model", "x", "--data", str(data), "--json", str(out)])
    assert_clean_error(result, "does not exist")
    assert not out.parent.exists()
    assert "source" not in fake_torch_backend  # refused before loading any model


def test_unknown_model_is_one_line_exit_2(tmp_path):
    data = write_set(tmp_path / "set")
    out = tmp_path / "o.json"
    result = runner.invoke(app, ["eval", "--model", "no-such-model", "--data", str(data), "--json", str(out)])
    assert_clean_error(result, "no-such-model")
    assert not out.exists()


def test_bad_data_names_line(tmp_path):
    data = write_set(tmp_path / "set")
    (data / "transcripts.tsv").write_text("u0\taudio/u0.flac\tok\nbroken line\n")
    result = runner.invoke(app, ["eval", "--model", "x", "--data", str(data)])
    assert_clean_error(result, "transcripts.tsv:2")
    result = runner.invoke(app, ["eval", "--model", "x", "--data", str(tmp_path / "missing")])
    assert_clean_error(result, "no dataset at")


def test_skip_bad_counts(tmp_path, fake_torch_backend):
    data = write_set(tmp_path / "set", n=3)
    (data / "audio" / "u1.flac").unlink()
    out = tmp_path / "o.json"
    result = runner.invoke(app, ["eval", "-m", "x", "--data", str(data), "--skip-bad", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["n"] == 2 and doc["skipped"] == 1
    assert "skipped 1" in result.stderr


def test_model_and_bundle_together_are_refused(tmp_path):
    data = write_set(tmp_path / "set")
    result = runner.invoke(app, ["eval", "--model", "x", "--bundle", str(tmp_path), "--data", str(data)])
    assert_clean_error(result, "exactly one of")


def test_transcribe_prints_text_per_file(tmp_path, fake_torch_backend):
    data = write_set(tmp_path / "set")
    a, b = data / "audio" / "u0.flac", data / "audio" / "u1.flac"
    result = runner.invoke(app, ["transcribe", "--model", "base", str(a), str(b)])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{a}:") and lines[1].startswith(f"{b}:")


def test_transcribe_missing_file(tmp_path, fake_torch_backend):
    result = runner.invoke(app, ["transcribe", "--model", "base", str(tmp_path / "nope.wav")])
    assert_clean_error(result, "nope.wav")
    assert "source" not in fake_torch_backend


def test_english_only_language_error(tmp_path, monkeypatch, tiny_random):
    monkeypatch.setitem(tr.BACKENDS, "torch", lambda req: tr.TorchTranscriber(tiny_random, req.decode))
    data = write_set(tmp_path / "set")
    result = runner.invoke(app, ["eval", "--model", "x", "--data", str(data), "--language", "fr"])
    assert_clean_error(result, "English-only")


def test_synth_data_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    result = runner.invoke(app, ["synth-data", str(tmp_path / "mine"), "--force"])
    assert_clean_error(result, "not a synthetic data set")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user data"
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user data"


def test_eval_and_transcribe_with_a_bundle(tmp_path, tiny_bundle):
    _, bundle = tiny_bundle
    data = write_set(tmp_path / "set")
    out = tmp_path / "b.json"
    result = runner.invoke(app, ["eval", "--bundle", str(bundle), "--data", str(data), "--json", str(out), "-q",
                                 "--no-fallback"])  # random weights never end a window: keep it to one pass
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["n"] == 2 and doc["model"].startswith("tiny-random") and doc["config"]["bundle"] == str(bundle)
    assert doc["decoding"]["fallback"] is False and doc["decoding"]["timestamps"] is True
    result = runner.invoke(app, ["transcribe", "--bundle", str(bundle), "--no-fallback", str(data / "audio" / "u0.flac")])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1, result.stderr
    result = runner.invoke(app, ["eval", "--bundle", str(bundle), "--data", str(data), "--beam", "3", "--no-fallback",
                                 "--limit", "1", "-q"])  # a bundle runs beam search too (one engine)
    assert result.exit_code == 0 and "beam 3, no fallback" in result.stdout, result.output
