"""Whisper's log-mel front-end in numpy (equal to transformers' WhisperFeatureExtractor).

Steps (openai/whisper audio.py): pad/trim to 30 s, STFT with a 400-sample periodic Hann window and
160-sample hop (centered, reflect padding), power spectrum, mel filter bank, log10 with a 1e-10
floor, drop the last frame, clamp to (max - 8), then ``(x + 4) / 4``.
"""

from __future__ import annotations

import numpy as np

from slimwhisper.errors import UserError

# The one definition of Whisper's audio constants: the torch side (slimwhisper.audio, transcribe,
# export) imports them from here, because runtime/ may not import the torch side.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000


class AudioError(UserError, ValueError):
    """Audio cannot be read or transcribed (unreadable file, empty, wrong shape, NaN/Inf samples).

    The only audio error class: ``slimwhisper.audio`` (reading files) raises this one too, so
    ``eval --skip-bad`` and the CLI treat a bad file the same on the torch and the bundle path.
    """


def refuse_non_finite(audio: np.ndarray, where: str = "audio") -> None:
    """Raise ``AudioError`` when any sample is NaN or infinite (the one rule for every backend).

    Such samples do not fail in the model: they turn every feature into NaN and Whisper then
    emits garbage ("!!!!") with a success exit, so they are refused before any decoding.
    """
    finite = np.isfinite(audio)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise AudioError(f"{where} contains {bad} NaN or infinite sample(s); re-encode or replace it")


def check_audio(audio: np.ndarray, where: str = "audio") -> np.ndarray:
    """Validate and normalise in-memory audio to 1-D float32; ``where`` names it in messages."""
    a = np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim == 2:  # (samples, channels) as soundfile returns: mix down
        a = a.mean(axis=1)
    if a.ndim != 1:
        raise AudioError(f"{where} must be 1-D mono samples, got shape {a.shape}")
    if a.size == 0:
        raise AudioError(f"{where} is empty (0 samples); pass at least one sample of 16 kHz mono audio")
    if not np.issubdtype(a.dtype, np.floating):
        if np.issubdtype(a.dtype, np.integer):  # PCM integers -> [-1, 1]
            a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
        else:
            raise AudioError(f"{where}: dtype {a.dtype} is not a float or integer PCM type")
    a = a.astype(np.float32, copy=False)
    refuse_non_finite(a, where)
    return a


def resample(audio: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited FFT resampling (like scipy.signal.resample) to ``target`` Hz.

    Whole-signal FFT: exact for band-limited content, O(n log n), fine for offline clips; it is
    not a streaming resampler (a device app should resample in its audio stack).
    """
    if sr == target:
        return audio
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"sample rate must be a positive int, got {sr!r}")
    n_out = max(1, int(round(len(audio) * target / sr)))
    spec = np.fft.rfft(audio.astype(np.float64))
    keep = min(len(spec), n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    return (np.fft.irfft(out_spec, n=n_out) * (n_out / len(audio))).astype(np.float32)


def hann_window(n: int = N_FFT) -> np.ndarray:
    # Periodic Hann (torch.hann_window default, transformers window_function periodic=True).
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float64)


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def log_mel(audio: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
    """30 s of 16 kHz audio (padded/trimmed) -> ``(n_mels, 3000)`` float32 log-mel features.

    ``mel_filters`` is ``(n_fft // 2 + 1, n_mels)`` as WhisperFeatureExtractor stores it.
    """
    x = pad_or_trim(np.asarray(audio, dtype=np.float64))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH]  # (3001, 400)
    spec = np.abs(np.fft.rfft(frames * hann_window(), axis=-1)) ** 2  # (3001, 201)
    mel = mel_project(spec, mel_filters)  # (n_mels, 3001)
    logm = np.log10(np.maximum(mel[:, :-1], 1e-10))
    logm = np.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0).astype(np.float32)


def mel_project(spec: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
    """``(spec @ mel_filters).T`` = ``(n_mels, frames)``, over the filters' non-zeros, without BLAS.

    Why not ``@``: numpy's multithreaded OpenBLAS leaves its threads spinning after the call, and
    they take the cores from the onnxruntime encoder that runs next (measured: tiny.en encoder 195
    -> 134 ms per window with ``OPENBLAS_NUM_THREADS=1``). The triangular filters are banded (391
    non-zeros of 201 x 80; each bin feeds at most two filters), so this is also 40x fewer
    multiply-adds. Equal to ``@`` up to summation order.
    """
    filters = np.asarray(mel_filters, dtype=np.float64)
    bins = np.ascontiguousarray(spec.T)  # (n_fft // 2 + 1, frames): one contiguous row per bin
    out = np.zeros((filters.shape[1], spec.shape[0]), dtype=np.float64)
    f, m = np.nonzero(filters)
    for fi, mi, w in zip(f.tolist(), m.tolist(), filters[f, m].tolist()):  # ~400 row updates:
        out[mi] += w * bins[fi]  # faster than gathering the rows (measured)
    return out


def windows(audio: np.ndarray, samples: int = N_SAMPLES) -> list[np.ndarray]:
    """Split audio into consecutive 30 s windows (the last one is padded by ``log_mel``)."""
    return [audio[i : i + samples] for i in range(0, len(audio), samples)]
