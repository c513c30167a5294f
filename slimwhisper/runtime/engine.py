"""The one decoding engine: a window's features -> tokens, with filters, greedy/beam search,
temperature fallback and the no-speech probability (openai/whisper ``decoding.py`` ``DecodingTask``
and ``transcribe.py`` ``decode_with_fallback``).

It drives any ``StepModel`` (the ONNX bundle in ``runtime.decode``, transformers on the torch path
in ``slimwhisper.decoding_torch``), so both paths make the same decisions on the same logits.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from slimwhisper.errors import UserError, raise_problems
from slimwhisper.runtime.filters import (
    ApplyTimestampRules,
    LogitFilter,
    SuppressBlank,
    SuppressTokens,
    apply_filters,
    log_softmax,
    unique,
)
from slimwhisper.runtime.search import BeamSearch, GreedySearch, rank

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai/whisper transcribe() defaults


class DecodingError(UserError, ValueError):
    """A decoding option is out of range; the message lists each problem."""


class StepModel(Protocol):
    """What the engine needs from a model: encoder once, decoder step by step with a cache."""

    n_text_ctx: int

    def encode(self, features: np.ndarray) -> Any: ...  # (B, n_mels, 3000) -> audio state

    def repeat(self, audio: Any, index: np.ndarray) -> Any: ...  # rows of the audio state

    def empty_cache(self, rows: int) -> Any: ...

    def step(self, ids: np.ndarray, cache: Any, audio: Any) -> tuple[np.ndarray, Any]: ...  # logits (B, T, V)

    def reorder(self, cache: Any, index: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class Specials:
    """Token ids of the prompt and the rules (from a bundle manifest or a transformers tokenizer)."""

    sot: int
    eot: int
    no_timestamps: int
    timestamp_begin: int | None
    sot_prev: int | None = None
    no_speech: int | None = None
    suppress: tuple[int, ...] = ()  # generation_config.suppress_tokens (openai's non-speech set)
    begin_suppress: tuple[int, ...] = ()  # blank + eot at the first position
    specials: tuple[int, ...] = ()  # sot, sot_prev, transcribe, translate, no_speech: never sampled


@dataclass(frozen=True)
class DecodingOptions:
    """How one 30 s window is decoded, and how a failed window is retried (openai's defaults)."""

    beam_size: int = 1  # 1 = greedy; 5 is faster-whisper's default
    patience: float = 1.0
    best_of: int = 5  # samples per window at temperature > 0
    length_penalty: float | None = None
    sample_len: int = 224  # openai/whisper: n_text_ctx // 2
    timestamps: bool = False
    suppress_blank: bool = True
    max_initial_timestamp: float = 1.0
    fallback: bool = True
    temperatures: tuple[float, ...] = TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    # Not in openai-whisper: a window whose samples all stay below -60 dBFS is silence without
    # decoding (openai's rule keeps tiny.en's confident "you" on digital silence: no-speech
    # probability 0.95 but average log-prob -0.70 > -1). None turns it off.
    silence_dbfs: float | None = -60.0
    condition_on_previous_text: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        problems = []
        for name in ("beam_size", "best_of", "sample_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.patience, (int, float)) and self.patience > 0):
            problems.append(f"patience must be > 0, got {self.patience!r}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            problems.append(f"temperatures must be >= 0 and not empty, got {self.temperatures!r}")
        raise_problems(DecodingError, "invalid decoding options", problems)

    @property
    def schedule(self) -> tuple[float, ...]:
        return self.temperatures if self.fallback else self.temperatures[:1]

    def describe(self) -> dict:
        """What a report records about the decoding that produced it."""
        d = asdict(self)
        d["search"] = "beam" if self.beam_size > 1 else "greedy"
        return d


@dataclass
class WindowResult:
    tokens: list[int]  # sampled tokens, end-of-text excluded
    sum_logprob: float
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    text: str = ""
    attempts: int = 1
    extra: dict = field(default_factory=dict)


def compression_ratio(text: str) -> float:
    """openai/whisper ``utils.compression_ratio``: repetitive text compresses well (> 2.4 = loop)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def filters_for(sp: Specials, opts: DecodingOptions, sample_begin: int) -> list[LogitFilter]:
    """openai/whisper's order: SuppressBlank, SuppressTokens, ApplyTimestampRules."""
    out: list[LogitFilter] = []
    if opts.suppress_blank:
        out.append(SuppressBlank(unique(sp.begin_suppress), sample_begin))
    never = [*sp.suppress, *sp.specials, sp.no_timestamps]
    if not opts.timestamps and sp.timestamp_begin is not None:
        never += [sp.timestamp_begin + i for i in range(1501)]  # text only (clipped to the vocab below)
    out.append(SuppressTokens(unique(never)))
    if opts.timestamps:
        idx = round(opts.max_initial_timestamp / 0.02)
        out.append(ApplyTimestampRules(sp.eot, sp.no_timestamps, sp.timestamp_begin, sample_begin, idx))
    return out


def window_prompt(sp: Specials, sot_sequence: Sequence[int], previous: Sequence[int], opts: DecodingOptions,
                  n_text_ctx: int) -> tuple[list[int], int]:
    """(prompt, index of <|startoftranscript|>): ``<|startofprev|> previous... sot [lang task]
    [<|notimestamps|>]`` with at most ``n_text_ctx // 2 - 1`` previous tokens (openai/whisper)."""
    sot_seq = list(sot_sequence)
    if not opts.timestamps:
        sot_seq.append(sp.no_timestamps)
    prompt: list[int] = []
    if previous and sp.sot_prev is not None:
        prompt = [sp.sot_prev, *list(previous)[-(n_text_ctx // 2 - 1):]]
    return prompt + sot_seq, len(prompt)


def decode(model: StepModel, audio: Any, prompt: list[int], sot_index: int, sp: Specials, opts: DecodingOptions,
           temperature: float, detok: Callable[[list[int]], str], rng: np.random.Generator) -> list[WindowResult]:
    """One decoding pass of every row of ``audio`` (n_audio windows) at one temperature."""
    n_audio = _rows(audio)
    beam = opts.beam_size > 1 and temperature == 0
    group = opts.beam_size if beam else (opts.best_of if temperature > 0 else 1)
    search = BeamSearch(sp.eot, group, opts.patience) if beam else GreedySearch(sp.eot, temperature, rng)
    rows = n_audio * group
    audio = model.repeat(audio, np.repeat(np.arange(n_audio), group)) if group > 1 else audio
    sample_begin = len(prompt)
    filters = filters_for(sp, opts, sample_begin)
    tokens = np.tile(np.asarray(prompt, dtype=np.int64), (rows, 1))
    cache, sum_lp, no_speech = model.empty_cache(rows), np.zeros(rows, np.float32), np.zeros(n_audio)
    ids = tokens
    for i in range(opts.sample_len):
        logits, cache = model.step(ids, cache, audio)
        if i == 0 and sp.no_speech is not None and sp.no_speech < logits.shape[-1]:
            at_sot = np.exp(log_softmax(logits[::group, sot_index].astype(np.float32)))
            no_speech = at_sot[:, sp.no_speech]
        last = logits[:, -1].astype(np.float32)  # a copy: filters must not touch the session's buffer
        apply_filters(filters, last, tokens)
        tokens, source, done = search.update(tokens, last, sum_lp)
        if not np.array_equal(source, np.arange(rows)):
            cache = model.reorder(cache, source)
        ids = tokens[:, -1:]
        if done or tokens.shape[1] >= model.n_text_ctx:
            break
    candidates, logprobs = search.finalize(tokens, sum_lp, group)
    out = []
    for a in range(n_audio):
        best = rank(candidates[a], logprobs[a], sample_begin, sp.eot, opts.length_penalty)
        seq = list(candidates[a][best][sample_begin:])
        seq = seq[: seq.index(sp.eot)] if sp.eot in seq else seq
        text = detok(seq)
        lp = logprobs[a][best]
        out.append(WindowResult(seq, lp, lp / (len(seq) + 1), float(no_speech[a]), temperature,
                                compression_ratio(text), text))
    return out


def _rows(audio: Any) -> int:
    if isinstance(audio, dict):
        return int(next(iter(audio.values())).shape[0])
    return int(audio.shape[0])


def needs_fallback(r: WindowResult, opts: DecodingOptions) -> bool:
    """openai/whisper ``decode_with_fallback``: too repetitive or too unlikely -> hotter, unless silent."""
    bad = (opts.compression_ratio_threshold is not None and r.compression_ratio > opts.compression_ratio_threshold)
    bad |= opts.logprob_threshold is not None and r.avg_logprob < opts.logprob_threshold
    if opts.no_speech_threshold is not None and r.no_speech_prob > opts.no_speech_threshold:
        bad = False  # silence: a low log-prob is expected
    return bad


def decode_with_fallback(model: StepModel, features: np.ndarray, prompt: list[int], sot_index: int, sp: Specials,
                         opts: DecodingOptions, detok: Callable[[list[int]], str], *,
                         audio: Any = None) -> list[WindowResult]:
    """Decode ``features`` (B windows, one prompt) at temperature 0, retrying the windows that fail
    at each hotter temperature of ``opts.schedule``; returns one result per window."""
    audio = model.encode(features) if audio is None else audio
    rng = np.random.default_rng(opts.seed)
    results: list[WindowResult | None] = [None] * _rows(audio)
    todo = np.arange(len(results))
    for attempt, t in enumerate(opts.schedule, 1):
        sub = audio if len(todo) == len(results) else model.repeat(audio, todo)
        for i, r in zip(todo, decode(model, sub, prompt, sot_index, sp, opts, t, detok, rng)):
            r.attempts = attempt
            results[i] = r
        todo = np.asarray([i for i in todo if needs_fallback(results[i], opts)], dtype=np.int64)
        if not len(todo):
            break
    return results  # type: ignore[return-value]


def is_quiet(samples: np.ndarray, opts: DecodingOptions) -> bool:
    """The energy gate (``silence_dbfs``): every sample below the floor, or no samples at all."""
    if opts.silence_dbfs is None:
        return False
    return samples.size == 0 or float(np.max(np.abs(samples))) < 10 ** (opts.silence_dbfs / 20)


def is_silence(r: WindowResult, opts: DecodingOptions) -> bool:
    """openai/whisper's no-speech rule: the <|nospeech|> probability is above the threshold and the
    text is not confidently decoded (avg log-prob below ``logprob_threshold``) -> emit nothing."""
    if opts.no_speech_threshold is None or r.no_speech_prob <= opts.no_speech_threshold:
        return False
    return not (opts.logprob_threshold is not None and r.avg_logprob > opts.logprob_threshold)
