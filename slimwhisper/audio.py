"""Audio reading and conversion to what Whisper expects: float32, 16 kHz, mono.

Resampling is a numpy polyphase windowed-sinc filter (no scipy/soxr dependency, so the same
code runs on a phone or a Pi beside the ONNX runtime). For a rational ratio ``up/down`` the
output sample ``n`` sits at input time ``t = n*down/up``; its value is the input convolved with a
Kaiser-windowed sinc low-pass whose cutoff is the lower of the two Nyquist rates (Smith,
"Digital Audio Resampling", ccrma.stanford.edu/~jos/resample). Only ``up`` distinct fractional
offsets occur, so the kernel is tabulated once per phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

# One definition of each, in the bottom layer (runtime/ may not import this module).
from slimwhisper.runtime.frontend import SAMPLE_RATE, AudioError, refuse_non_finite

__all__ = ["SAMPLE_RATE", "AudioError", "AudioInfo", "read_audio", "resample", "to_mono_16k"]

# 32 zero crossings of the sinc on each side and Kaiser beta 8.6 give >80 dB stop-band
# attenuation; the 0.94 roll-off keeps the transition band below the target Nyquist.
_ZERO_CROSSINGS = 32
_KAISER_BETA = 8.6
_ROLLOFF = 0.94
_CHUNK = 1 << 15  # output samples per vectorised step (bounds the index matrix memory)


@dataclass(frozen=True)
class AudioInfo:
    """What was done to a file to make it 16 kHz mono (``converted`` is False when nothing)."""

    sample_rate: int
    channels: int

    @property
    def converted(self) -> bool:
        return self.sample_rate != SAMPLE_RATE or self.channels != 1

    def describe(self) -> str:
        return f"{self.sample_rate} Hz, {self.channels} channel(s) -> {SAMPLE_RATE} Hz mono"


def read_audio(path: Path | str, target_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """Read any file libsndfile can decode; return float32 mono at ``target_rate`` and what it was."""
    import soundfile as sf  # deferred: the runtime copy of this module may not ship it

    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file; pass the audio files inside it")
    if not path.exists():
        raise AudioError(f"no such audio file: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot read audio {path}: {exc}") from exc
    refuse_non_finite(data, f"audio file {path}")  # before resampling spreads NaN over every sample
    info = AudioInfo(sample_rate=int(rate), channels=int(data.shape[1]))
    return to_mono_16k(data, rate, target_rate), info


def to_mono_16k(data: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Average channels (``(samples, channels)`` or 1-D input) and resample to ``target_rate``."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    return resample(mono, int(rate), target_rate).astype(np.float32, copy=False)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal from ``rate_in`` to ``rate_out`` Hz."""
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    x = np.asarray(x, dtype=np.float64)
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32)
    g = gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    table, half = _kernel_table(up, down)
    n_out = -(-x.size * up // down)  # ceil: keep the whole input's duration
    padded = np.pad(x, (half, half + 1))
    taps = np.arange(-half + 1, half + 1)
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, _CHUNK):
        n = np.arange(start, min(start + _CHUNK, n_out), dtype=np.int64)
        base = (n * down) // up  # integer part of t = n*down/up
        phase = (n * down) % up  # fractional part, in units of 1/up
        idx = base[:, None] + taps[None, :] + half
        out[start : start + n.size] = np.einsum("ij,ij->i", padded[idx], table[phase])
    return out.astype(np.float32)


def _kernel_table(up: int, down: int) -> tuple[np.ndarray, int]:
    """Per-phase filter taps: ``table[p, j]`` weights input ``floor(t)+taps[j]`` when frac(t)=p/up."""
    cutoff = min(1.0, up / down) * _ROLLOFF  # fraction of the input Nyquist that survives
    half = int(np.ceil(_ZERO_CROSSINGS / cutoff))
    taps = np.arange(-half + 1, half + 1, dtype=np.float64)
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    dist = taps[None, :] - frac  # distance (input samples) between tap and output instant
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (dist / half) ** 2, 0.0, None))) / np.i0(_KAISER_BETA)
    table = cutoff * np.sinc(cutoff * dist) * window
    table /= table.sum(axis=1, keepdims=True)  # unity DC gain for every phase
    return table, half
