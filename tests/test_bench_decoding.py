"""bench --batch-size / --fallback: config checks, runners switched to one decoding, the report column."""

from __future__ import annotations

import numpy as np
import pytest

from slimwhisper.bench.backends import TranscriberRunner
from slimwhisper.bench.config import BenchConfig, BenchError
from slimwhisper.bench.report import COLUMNS, _decoding_note
from slimwhisper.bench.suite import batched_accuracy_pass
from slimwhisper.bench.timing import Clip, accuracy_pass
from slimwhisper.runtime import BundleTranscriber, DecodeOptions
from slimwhisper.transcribe import DecodeConfig


def test_batch_size_is_checked(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(BenchError, match="--batch-size must be a positive integer"):
        BenchConfig(targets=("tiny.en",), data=str(data), out=str(tmp_path / "r"), batch_size=0)
    config = BenchConfig(targets=("tiny.en",), data=str(data), out=str(tmp_path / "r"))
    assert config.fallback is True and config.decode().fallback and not config.decode(fallback=False).fallback
    assert config.decode().timestamps and config.decode().no_speech


def test_report_says_which_decoding():
    assert "WER % no fallback" in COLUMNS
    assert "temperature fallback" in _decoding_note({"fallback": True, "batch_size": 4})
    assert "no temperature fallback" in _decoding_note({"fallback": False}) and "1 clip(s)" in _decoding_note({})


def test_runner_with_decoding_and_batched_pass(tiny_bundle):
    rt = BundleTranscriber(tiny_bundle[1], threads=1, options=DecodeOptions(max_new_tokens=4))
    runner = TranscriberRunner(rt, {"threads": 1}).with_decoding(DecodeConfig(max_new_tokens=4, timestamps=True))
    assert runner.info["decoding"]["timestamps"] is True and runner.transcriber.options.engine.timestamps
    rng = np.random.default_rng(0)
    clips = [Clip(f"c{i}", (0.1 * rng.standard_normal(16000)).astype(np.float32), "x", 1.0) for i in range(3)]
    one, failed = accuracy_pass({"a": runner}, clips)
    many, failed2 = batched_accuracy_pass({"a": runner}, clips, 2)
    assert not failed and not failed2
    assert [r.text for r in many["a"]] == [r.text for r in one["a"]] and len(many["a"]) == 3
