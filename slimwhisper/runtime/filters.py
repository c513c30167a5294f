"""Composable logit filters, in numpy (openai/whisper ``decoding.py``: ``LogitFilter`` and its
subclasses ``SuppressBlank``, ``SuppressTokens``, ``ApplyTimestampRules``).

A filter edits a ``(rows, vocab)`` float32 logit array in place, given the tokens decoded so far
(``(rows, length)``, prompt included). The engine applies them in order before every search step,
so greedy, beam and sampling, on the bundle and on the torch path, see the same masked logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def _shifted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - row max, log(sum(exp(x - row max)))) per row; a row of only -inf is shifted by 0."""
    top = np.max(x, axis=-1, keepdims=True)
    shifted = x - np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return shifted, np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax that tolerates -inf entries (float32 in, float32 out)."""
    shifted, log_sum = _shifted(x)
    return (shifted - log_sum).astype(np.float32)


def chosen_logprobs(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``log_softmax(logits)[r, chosen[r]]`` per row, the same arithmetic without the second
    (rows, vocab) pass and array: that matters at 51,865 logits per decoder step."""
    shifted, log_sum = _shifted(logits)
    rows = np.arange(logits.shape[0])
    return (shifted[rows, chosen] - log_sum[:, 0]).astype(np.float32)


def logsumexp(x: np.ndarray) -> float:
    top = float(np.max(x))
    if not np.isfinite(top):
        return top
    return top + float(np.log(np.sum(np.exp(x - top))))


class LogitFilter(Protocol):
    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None: ...


@dataclass(frozen=True)
class SuppressTokens:
    """Never pick these ids (openai/whisper ``SuppressTokens``: non-speech symbols and specials)."""

    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        array = np.asarray(self.ids, dtype=np.int64)  # built once, not at every decoder step
        object.__setattr__(self, "_array", array)
        object.__setattr__(self, "_top", int(array.max()) if array.size else -1)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        ids = self._array  # type: ignore[attr-defined]
        if self._top >= logits.shape[-1]:  # type: ignore[attr-defined]  # a small test vocabulary lacks the high ids
            ids = ids[ids < logits.shape[-1]]
        if ids.size:
            logits[:, ids] = -np.inf


@dataclass(frozen=True)
class SuppressBlank:
    """At the first sampled position a blank (" ") or end-of-text may not start the transcript
    (openai/whisper ``SuppressBlank``)."""

    ids: tuple[int, ...]
    sample_begin: int

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin and self.ids:
            logits[:, list(self.ids)] = -np.inf


@dataclass(frozen=True)
class ApplyTimestampRules:
    """openai/whisper ``ApplyTimestampRules``: timestamps come in pairs (except right before EOT),
    never decrease, a segment has non-zero length, the first token is a timestamp no later than
    ``max_initial_timestamp_index`` x 20 ms, and when the timestamps together are likelier than
    any text token a timestamp is taken."""

    eot: int
    no_timestamps: int
    timestamp_begin: int
    sample_begin: int
    max_initial_timestamp_index: int | None = 50  # 1.0 s / 0.02 s, openai's default

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        ts = self.timestamp_begin
        logits[:, self.no_timestamps] = -np.inf
        for k in range(tokens.shape[0]):
            sampled = tokens[k, self.sample_begin:]
            last_ts = sampled.size >= 1 and sampled[-1] >= ts
            penultimate_ts = sampled.size < 2 or sampled[-2] >= ts
            if last_ts:
                if penultimate_ts:  # a pair just closed: text must follow
                    logits[k, ts:] = -np.inf
                else:  # an opening timestamp: no text before its closing one
                    logits[k, : self.eot] = -np.inf
            stamps = sampled[sampled >= ts]
            if stamps.size:
                # not decreasing; and a segment may not have zero length (prevents loops)
                last = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
                logits[k, ts:last] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :ts] = -np.inf  # the transcript starts with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, ts + self.max_initial_timestamp_index + 1:] = -np.inf
        logprobs = log_softmax(logits)
        for k in range(tokens.shape[0]):
            if logsumexp(logprobs[k, ts:]) > float(np.max(logprobs[k, :ts])):
                logits[k, :ts] = -np.inf


def apply_filters(filters: Sequence[LogitFilter], logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    for f in filters:
        f.apply(logits, tokens)
    return logits


def unique(ids: Iterable[int | None]) -> tuple[int, ...]:
    return tuple(sorted({int(i) for i in ids if i is not None and int(i) >= 0}))
