"""Datasets: layouts, lazy reading, bad input with file:line, skip-bad counting, conversion to 16 kHz mono."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slimwhisper.audio import SAMPLE_RATE, AudioError, read_audio, resample, to_mono_16k
from slimwhisper.data import DataError, DataFormat, load_dataset, register_format


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_tsv_set(folder: Path, rows: list[tuple[str, str | None]], rate: int = SAMPLE_RATE) -> Path:
    """rows: (id, text or None); audio is a 0.5 s tone per id under folder/audio."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (uid, text) in enumerate(rows):
        sf.write(folder / "audio" / f"{uid}.flac", tone(200 + 50 * i, 0.5, rate), rate)
        lines.append(f"{uid}\taudio/{uid}.flac\t{text or ''}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "transcripts.tsv"


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


def test_tsv_manifest_and_folder_read_lazily(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "Hello there"), ("b", "General Kenobi")])
    for source in (manifest, tmp_path):
        ds = load_dataset(source)
        assert len(ds) == 2 and ds.name == tmp_path.name
        utts = list(ds)
        assert [u.id for u in utts] == ["a", "b"]
        assert utts[1].text == "General Kenobi"
        assert utts[0].audio.dtype == np.float32 and utts[0].audio.ndim == 1
        assert utts[0].seconds == pytest.approx(0.5)
    assert load_dataset(tmp_path).format == "tsv-folder"
    assert load_dataset(manifest).format == "tsv"


def test_manifest_name_other_than_transcripts_and_limit(tmp_path):
    write_tsv_set(tmp_path, [("a", "x"), ("b", "y"), ("c", "z")])
    dev = tmp_path / "dev.tsv"
    dev.write_text((tmp_path / "transcripts.tsv").read_text())
    ds = load_dataset(dev, limit=2)
    assert len(ds) == 2 and ds.name == f"{tmp_path.name}/dev"


def test_empty_text_column_means_no_reference(tmp_path):
    write_tsv_set(tmp_path, [("a", None), ("b", None)])
    ds = load_dataset(tmp_path)
    assert [u.text for u in ds] == [None, None]
    assert not ds.has_references


def test_missing_audio_names_file_and_line(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x"), ("b", "y"), ("c", "z")])
    (tmp_path / "audio" / "b.flac").unlink()
    with pytest.raises(DataError, match=r"transcripts.tsv:2: audio file .*b.flac does not exist"):
        load_dataset(manifest)
    ds = load_dataset(manifest, skip_bad=True)
    assert len(ds) == 2 and ds.skipped == 1
    assert [u.id for u in ds] == ["a", "c"]


def test_malformed_and_duplicate_lines(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x"), ("b", "y")])
    manifest.write_text(manifest.read_text() + "only-one-field\na\taudio/a.flac\tagain\n")
    with pytest.raises(DataError, match=r"transcripts.tsv:3: expected 'id<TAB>audio path<TAB>text'"):
        load_dataset(manifest)
    ds = load_dataset(manifest, skip_bad=True)
    assert len(ds) == 2 and ds.skipped == 2
    assert any("duplicate id 'a'" in m and ":4:" in m for m in ds.problems.messages)


def test_unreadable_audio_fails_on_read_with_line_or_is_skipped(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x"), ("b", "y")])
    (tmp_path / "audio" / "a.flac").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"transcripts.tsv:1: cannot read audio .*a.flac"):
        list(load_dataset(manifest))
    ds = load_dataset(manifest, skip_bad=True)
    assert [u.id for u in ds] == ["b"] and ds.skipped == 1


def test_no_dataset_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="no dataset at"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="not a dataset layout"):
        load_dataset(tmp_path)
    (tmp_path / "empty.tsv").write_text("\n\n")
    with pytest.raises(DataError, match="no usable utterances"):
        load_dataset(tmp_path / "empty.tsv")


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    sf.write(chapter / "19-198-0000.flac", tone(300, 0.3, SAMPLE_RATE), SAMPLE_RATE)
    sf.write(chapter / "19-198-0001.flac", tone(300, 0.3, SAMPLE_RATE), SAMPLE_RATE)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK\n")
    ds = load_dataset(tmp_path)
    assert ds.format == "librispeech"
    assert [(u.id, u.text) for u in ds] == [("19-198-0000", "NORTHANGER ABBEY"), ("19-198-0001", "THIS LITTLE WORK")]


def test_ljspeech_layout_uses_raw_text(tmp_path):
    (tmp_path / "wavs").mkdir()
    sf.write(tmp_path / "wavs" / "LJ001-0001.wav", tone(300, 0.3, 22050), 22050)
    (tmp_path / "metadata.csv").write_text("LJ001-0001|It cost 5 dollars|It cost five dollars\n")
    ds = load_dataset(tmp_path)
    assert ds.format == "ljspeech"
    (utt,) = list(ds)
    assert utt.text == "It cost 5 dollars"
    assert utt.seconds == pytest.approx(0.3, abs=1e-3)  # resampled from 22.05 kHz


def test_format_names_are_unique():
    with pytest.raises(ValueError, match="registered twice"):
        register_format(DataFormat("tsv", lambda p: False, lambda p, probs: []))


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2)])
def test_resampled_to_16k_mono_keeps_frequency(tmp_path, rate, channels):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(440.0, 1.0, rate, channels), rate)
    audio, info = read_audio(path)
    assert info.converted and info.sample_rate == rate and info.channels == channels
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == SAMPLE_RATE
    assert peak_hz(audio, SAMPLE_RATE) == pytest.approx(440.0, abs=2.0)
    # Band-limited: amplitude preserved in the middle (no edge effects there).
    assert np.abs(audio[4000:-4000]).max() == pytest.approx(0.5, abs=0.01)


def test_resample_removes_content_above_new_nyquist():
    x = tone(12000.0, 1.0, 44100)  # above 8 kHz: must not alias down to 4 kHz
    y = resample(x, 44100, SAMPLE_RATE)
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 1e-3


def test_stereo_channels_are_averaged():
    left, right = tone(300, 0.2, SAMPLE_RATE), np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
    mono = to_mono_16k(np.stack([left, right], axis=1), SAMPLE_RATE)
    np.testing.assert_allclose(mono, left / 2, atol=1e-7)


def test_conversion_is_announced_once_per_dataset(tmp_path, caplog):
    write_tsv_set(tmp_path, [("a", "x"), ("b", "y"), ("c", "z")], rate=8000)
    with caplog.at_level(logging.WARNING, logger="slimwhisper.data"):
        utts = list(load_dataset(tmp_path))
    assert all(u.seconds == pytest.approx(0.5) for u in utts)
    notes = [r for r in caplog.records if "converting audio" in r.getMessage()]
    assert len(notes) == 1 and "8000 Hz" in notes[0].getMessage()


# ---- bad input found by the probe ------------------------------------------------------------------


def test_non_utf8_line_names_file_and_line_and_can_be_skipped(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x"), ("b", "y"), ("c", "z")])
    lines = manifest.read_bytes().splitlines()
    lines[1] = lines[1] + b" caf\xe9"  # latin-1 e-acute in line 2
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"transcripts.tsv:2: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        load_dataset(manifest)
    ds = load_dataset(manifest, skip_bad=True)
    assert [i.id for i in ds.items] == ["a", "c"] and ds.skipped == 1


def test_utf8_bom_is_not_part_of_the_first_id(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x")])
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert [i.id for i in load_dataset(manifest).items] == ["a"]


def test_header_row_is_called_a_header(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x")])
    manifest.write_text("id\tpath\ttext\n" + manifest.read_text())
    with pytest.raises(DataError, match=r"transcripts.tsv:1: line 1 looks like a header .*; remove it"):
        load_dataset(manifest)
    assert load_dataset(manifest, skip_bad=True).skipped == 1
    # A real first line whose audio file is missing is still reported as a missing file.
    manifest.write_text("a\taudio/gone.flac\tx\n")
    with pytest.raises(DataError, match=r":1: audio file .*gone.flac does not exist"):
        load_dataset(manifest)


def test_folder_given_as_audio_says_folder(tmp_path):
    manifest = write_tsv_set(tmp_path, [("a", "x")])
    (tmp_path / "audio" / "dir.flac").mkdir()
    manifest.write_text(manifest.read_text() + "b\taudio/dir.flac\ty\n")
    with pytest.raises(DataError, match=r"transcripts.tsv:2: audio path .*dir.flac is a folder, not an audio file"):
        load_dataset(manifest)
    with pytest.raises(AudioError, match="is a folder, not an audio file"):
        read_audio(tmp_path / "audio")
    with pytest.raises(AudioError, match="no such audio file"):
        read_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_naming_the_file(tmp_path, bad):
    manifest = write_tsv_set(tmp_path, [("a", "x"), ("b", "y")])
    x = tone(300, 0.5, SAMPLE_RATE)
    x[100] = bad
    sf.write(tmp_path / "audio" / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")  # float WAV keeps NaN/Inf
    manifest.write_text(manifest.read_text().replace("audio/a.flac", "audio/a.wav"))
    with pytest.raises(AudioError, match=r"a.wav contains 1 NaN or infinite sample"):
        read_audio(tmp_path / "audio" / "a.wav")
    with pytest.raises(DataError, match=r"transcripts.tsv:1: audio file .*a.wav contains 1 NaN"):
        list(load_dataset(manifest))
    ds = load_dataset(manifest, skip_bad=True)
    assert [u.id for u in ds] == ["b"] and ds.skipped == 1
