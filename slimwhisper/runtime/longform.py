"""Audio of any length: openai/whisper ``transcribe.py``'s timestamp-based seeking.

Each 30 s window starts where the previous one's last complete timestamp pair ended (or at the
window's end when it closes with a single timestamp / has no timestamps), the text decoded so
far is the next window's prompt (``condition_on_previous_text``, reset after a hot fallback), and
a window the no-speech rule calls silent is skipped. Audio is read window by window from an
``AudioSource``, and log-mel features are computed per window, so memory stays flat for hours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from slimwhisper.runtime.engine import (
    DecodingOptions,
    Specials,
    StepModel,
    WindowResult,
    decode_with_fallback,
    is_quiet,
    is_silence,
    window_prompt,
)
from slimwhisper.runtime.frontend import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    refuse_non_finite,
)

TIME_PRECISION = 0.02  # seconds per timestamp token
INPUT_STRIDE = 2  # mel frames per encoder position (N_FRAMES // n_audio_ctx)


class AudioSource(Protocol):
    samples: int  # 16 kHz mono samples in all

    def read(self, start: int, n: int) -> np.ndarray: ...  # float32, may be shorter at the end


@dataclass
class ArraySource:
    audio: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.audio.size)

    def read(self, start: int, n: int) -> np.ndarray:
        return self.audio[start : start + n]


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text,
                "avg_logprob": self.avg_logprob, "no_speech_prob": self.no_speech_prob,
                "temperature": self.temperature, "compression_ratio": self.compression_ratio}


@dataclass
class LongForm:
    segments: list[Segment] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # text tokens of every kept segment
    windows: int = 0
    encoder_s: float = 0.0
    skipped_silent: int = 0
    fallbacks: int = 0  # windows decoded more than once

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


def split_segments(r: WindowResult, offset: float, duration: float, ts_begin: int | None,
                   detok: Callable[[list[int]], str]) -> tuple[list[Segment], int | None]:
    """The segments of one window and the mel frames to advance by (None: the whole window)."""
    tokens = r.tokens
    def seg(start: float, end: float, toks: list[int]) -> Segment:
        return Segment(float(start), float(end), detok(toks), [int(t) for t in toks], r.avg_logprob, r.no_speech_prob, r.temperature,
                       r.compression_ratio)
    if ts_begin is None:
        return [seg(offset, offset + duration, tokens)], None
    is_ts = [t >= ts_begin for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        out, last = [], 0
        for cut in cuts:
            piece = tokens[last:cut]
            out.append(seg(offset + (piece[0] - ts_begin) * TIME_PRECISION,
                           offset + (piece[-1] - ts_begin) * TIME_PRECISION, piece))
            last = cut
        return out, None if single_ending else (tokens[last - 1] - ts_begin) * INPUT_STRIDE
    stamps = [t for t in tokens if t >= ts_begin]
    if stamps and stamps[-1] != ts_begin:
        duration = (stamps[-1] - ts_begin) * TIME_PRECISION
    return [seg(offset, offset + duration, tokens)], None


def transcribe_long(model: StepModel, source: AudioSource, features: Callable[[np.ndarray], np.ndarray],
                    sot_sequence: Sequence[int], sp: Specials, opts: DecodingOptions,
                    detok: Callable[[list[int]], str], where: str = "audio") -> LongForm:
    """openai/whisper ``transcribe()`` without word timestamps or clip ranges."""
    out = LongForm()
    content = max(1, -(-source.samples // HOP_LENGTH))  # frames holding audio
    seek, all_tokens, reset_since = 0, [], 0
    ts_begin = sp.timestamp_begin if opts.timestamps else None
    while seek < content:
        offset = seek * HOP_LENGTH / SAMPLE_RATE
        size = min(N_FRAMES, content - seek)
        chunk = source.read(seek * HOP_LENGTH, min(N_SAMPLES, size * HOP_LENGTH))
        refuse_non_finite(chunk, f"{where} (at {offset:.2f} s)")
        if is_quiet(chunk, opts):
            out.skipped_silent += 1
            seek += size
            continue
        feats = features(chunk)[None]
        t0 = time.perf_counter()
        audio: Any = model.encode(feats)
        out.encoder_s += time.perf_counter() - t0
        out.windows += 1
        previous = all_tokens[reset_since:] if opts.condition_on_previous_text else []
        prompt, sot_index = window_prompt(sp, sot_sequence, previous, opts, model.n_text_ctx)
        (r,) = decode_with_fallback(model, feats, prompt, sot_index, sp, opts, detok, audio=audio)
        out.fallbacks += r.attempts > 1
        if is_silence(r, opts):
            out.skipped_silent += 1
            seek += size
            continue
        segments, advance = split_segments(r, offset, size * HOP_LENGTH / SAMPLE_RATE, ts_begin, detok)
        seek += size if advance is None else max(1, advance)
        for s in segments:
            if s.start == s.end or not s.text.strip():
                s.text, s.tokens = "", []  # instantaneous or empty: cleared, as openai does
        kept = [s for s in segments if s.text]
        end_s = source.samples / SAMPLE_RATE
        for s in kept:
            s.start, s.end = min(s.start, end_s), min(s.end, end_s)
        out.segments += kept
        all_tokens += [t for s in segments for t in s.tokens]
        out.tokens += [t for s in kept for t in s.tokens if t < sp.eot]
        if not opts.condition_on_previous_text or r.temperature > 0.5:
            reset_since = len(all_tokens)
    return out


def transcribe_batch(model: StepModel, clips: Sequence[np.ndarray], features: Callable[[np.ndarray], np.ndarray],
                     sot_sequence: Sequence[int], sp: Specials, opts: DecodingOptions,
                     detok: Callable[[list[int]], str]) -> list[LongForm]:
    """Clips of up to 30 s each, all through the encoder and the decoder at once (one prompt, no
    previous text: faster-whisper's batched pipeline). The same rules as ``transcribe_long``."""
    quiet = [is_quiet(c, opts) for c in clips]
    loud = [c for c, q in zip(clips, quiet) if not q]
    decoded, enc_s = _batch_results(model, loud, features, sot_sequence, sp, opts, detok) if loud else ([], 0.0)
    results = iter(decoded)
    ts_begin = sp.timestamp_begin if opts.timestamps else None
    out = []
    for clip, q in zip(clips, quiet):
        long = LongForm(windows=0 if q else 1, encoder_s=0.0 if q else enc_s, skipped_silent=int(q))
        r = None if q else next(results)
        if r is not None:
            long.fallbacks = int(r.attempts > 1)
        if r is not None and is_silence(r, opts):
            long.skipped_silent = 1
        elif r is not None:
            end_s = clip.size / SAMPLE_RATE
            segs, _ = split_segments(r, 0.0, end_s, ts_begin, detok)
            long.segments = [s for s in segs if s.text.strip() and s.start != s.end]
            for s in long.segments:
                s.start, s.end = min(s.start, end_s), min(s.end, end_s)
            long.tokens = [t for s in long.segments for t in s.tokens if t < sp.eot]
        out.append(long)
    return out


def _batch_results(model: StepModel, clips: Sequence[np.ndarray], features: Callable[[np.ndarray], np.ndarray],
                   sot_sequence: Sequence[int], sp: Specials, opts: DecodingOptions,
                   detok: Callable[[list[int]], str]) -> tuple[list[WindowResult], float]:
    """Every clip decoded as one batch; and the encoder seconds per clip."""
    feats = np.stack([features(c) for c in clips])
    t0 = time.perf_counter()
    audio = model.encode(feats)
    enc_s = (time.perf_counter() - t0) / len(clips)
    prompt, sot_index = window_prompt(sp, sot_sequence, [], opts, model.n_text_ctx)
    return decode_with_fallback(model, feats, prompt, sot_index, sp, opts, detok, audio=audio), enc_s
