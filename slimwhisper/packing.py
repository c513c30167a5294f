"""Packing short clips into 30 s windows, for training and calibration alike.

Whisper's encoder always runs on a whole 30 s window, whatever it holds, so a 3 s clip pays for
30 s and leaves ~90% of the window's frames as padding. Joining consecutive clips (with a short
silence between them) into windows of up to ``max_seconds`` puts several clips' speech through one
encoder pass (Whisper itself was trained on 30 s windows of continuous speech): a training step
sees more speech per second, and calibration statistics get more speech frames and more decoder
tokens per encoder pass (the decoder Grams of an FFN have 4 x d inputs: a few thousand tokens
from single short clips condition them poorly).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slimwhisper.audio import SAMPLE_RATE
from slimwhisper.data import Utterance
from slimwhisper.errors import UserError
from slimwhisper.runtime.frontend import CHUNK_SECONDS

PACK_GAP_SECONDS = 0.5  # silence between packed clips: a pause, so sentences do not run together


class PackError(UserError, ValueError):
    """A packing length outside Whisper's window."""


def pack_seconds_problem(value, name: str = "pack_seconds") -> str | None:
    """Why ``value`` is not a packing length (None or seconds in (0, 30], Whisper's window), or None."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= CHUNK_SECONDS):
        return None
    return f"{name} must be in (0, {CHUNK_SECONDS}] seconds (Whisper's window) or None, got {value!r}"


def pack_utterances(utts: Sequence[Utterance], max_seconds: float, gap_seconds: float = PACK_GAP_SECONDS,
                    error: type[Exception] = PackError) -> list[Utterance]:  # fmt: skip
    """Consecutive clips joined, in order, into windows of at most ``max_seconds`` (gaps counted);
    a clip longer than that stays alone. The reference text is the clips' texts joined by spaces,
    or None when any clip has none (the dense model labels the window). Ids: ``a+b+c``."""
    problem = pack_seconds_problem(max_seconds) if max_seconds is not None else "pack_seconds must be given"
    if problem:
        raise error(problem)
    gap = np.zeros(round(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    groups: list[list[Utterance]] = []
    length = 0.0
    for u in utts:
        if groups and length + gap_seconds + u.seconds <= max_seconds:
            groups[-1].append(u)
            length += gap_seconds + u.seconds
        else:
            groups.append([u])
            length = u.seconds
    return [_join(g, gap) for g in groups]


def _join(group: list[Utterance], gap: np.ndarray) -> Utterance:
    if len(group) == 1:
        return group[0]
    pieces = [group[0].audio]
    for u in group[1:]:
        pieces += [gap, u.audio]
    audio = np.concatenate(pieces).astype(np.float32, copy=False)
    texts = [u.text for u in group]
    text = " ".join(t.strip() for t in texts) if all(t and t.strip() for t in texts) else None
    return Utterance("+".join(u.id for u in group), audio, text, group[0].path, audio.size / SAMPLE_RATE)
