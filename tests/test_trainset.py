"""Packing training clips into windows (trainset.pack_utterances) and recovery on packed windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _helpers import write_manifest

from slimwhisper.data import Utterance
from slimwhisper.models.testing import tiny_random_loaded
from slimwhisper.train.loop import TrainConfig, TrainError
from slimwhisper.train.recover import RecoverConfig, recover
from slimwhisper.train.trainset import (
    TrainDataError,
    pack_utterances,
    select_utterances,
)


def _utt(i: int, seconds: float, text: str | None = "word") -> Utterance:
    audio = np.full(round(seconds * 16000), 0.01 * (i + 1), dtype=np.float32)
    return Utterance(f"u{i}", audio, text and f"{text} {i}", Path(f"u{i}.wav"), seconds)


def test_consecutive_clips_fill_windows_in_order_with_silent_gaps():
    utts = [_utt(0, 10), _utt(1, 8), _utt(2, 9), _utt(3, 29), _utt(4, 2)]
    packed = pack_utterances(utts, 28.0, gap_seconds=0.5)
    assert [u.id for u in packed] == ["u0+u1+u2", "u3", "u4"]  # 10 + .5 + 8 + .5 + 9 = 28; 29 s stays alone
    first = packed[0]
    assert first.text == "word 0 word 1 word 2" and first.seconds == pytest.approx(28.0)
    assert first.audio.dtype == np.float32 and first.audio.size == 28 * 16000
    gap = first.audio[10 * 16000: 10 * 16000 + 8000]
    assert not gap.any() and first.audio[10 * 16000 + 8000] == pytest.approx(0.02)  # silence, then clip 1
    assert packed[1] is utts[3] and all(u.seconds <= 28 or "+" not in u.id for u in packed)


def test_a_window_with_an_unlabelled_clip_has_no_reference():
    packed = pack_utterances([_utt(0, 3), _utt(1, 3, text=None)], 30.0)
    assert len(packed) == 1 and packed[0].text is None  # the teacher labels the whole window


@pytest.mark.parametrize("bad", [0, -1, 31, True, "28"])
def test_pack_seconds_outside_the_window_is_refused(bad):
    with pytest.raises(TrainDataError, match="pack_seconds"):
        pack_utterances([_utt(0, 1)], bad)
    with pytest.raises(TrainError, match="pack_seconds"):
        TrainConfig("x", pack_seconds=bad)


def test_recovery_trains_on_packed_windows(tmp_path):
    data = write_manifest(tmp_path / "train", n=4)  # four 0.5 s clips
    msgs: list[str] = []
    assert len(select_utterances([str(data)], 4, 0, msgs.append, pack_seconds=1.5)) == 2
    assert any("packed 4 training clips" in m and "into 2 windows" in m for m in msgs)
    teacher = tiny_random_loaded()
    student = tiny_random_loaded()
    cfg = RecoverConfig("distill", TrainConfig(str(data), n=4, steps=1, batch_size=2, pack_seconds=1.5), top_k=8)
    msgs.clear()
    recover(student, cfg, teacher=teacher, progress=False, cache_dir=tmp_path / "tc", log=msgs.append)
    assert any("2 clips (2 built, 0 reused)" in m for m in msgs), msgs  # one cache entry per window
    assert student.extra["recovery"]["config"]["train"]["pack_seconds"] == 1.5
