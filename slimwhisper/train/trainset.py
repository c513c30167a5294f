"""Training audio: several data sets, never an evaluation set, ``n`` utterances drawn with a seed.

The evaluation sets of ``../shared/data`` (``ljspeech/dev.tsv``, ``librispeech-clean-mini``,
``speechocean762/eval.tsv``, ``misc-real``) are refused as training data, by path and by audio
file: a hand-made manifest that points into them loses those lines and says so, and a training
set left with nothing is refused. Which sets count as evaluation is found next to the data (the
first ancestor folder that holds any of them), so a copy of ``shared/data`` elsewhere is
guarded too.

Packing (``pack_utterances``): every training step runs the encoder on a whole 30 s window,
whatever it holds, so a 3 s clip pays for 30 s. Joining consecutive drawn clips (with a short
silence between them) into windows of up to ``pack_seconds`` puts several clips' speech through
one encoder pass (Whisper itself was trained on 30 s windows of continuous speech). The dense
teacher transcribes such windows whole (tiny.en, 11 packed ljspeech/train windows of 3-5 clips:
the same word count as the clips transcribed one by one in 9, one word more in 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from slimwhisper import data
from slimwhisper.audio import SAMPLE_RATE
from slimwhisper.data import EVAL_SETS, Utterance, evaluation_audio
from slimwhisper.errors import UserError
from slimwhisper.runtime.frontend import CHUNK_SECONDS

__all__ = ["EVAL_SETS", "TrainDataError", "evaluation_audio", "pack_utterances", "select_utterances"]

PACK_GAP_SECONDS = 0.5  # silence between packed clips: a pause, so sentences do not run together


class TrainDataError(UserError, ValueError):
    """The training data is unusable (missing, empty, or an evaluation set)."""


def select_utterances(paths: Sequence[str], n: int, seed: int, log: Callable[[str], None] = print, *,
                      pack_seconds: float | None = None) -> list:  # fmt: skip
    """``n`` utterances (all when fewer) drawn with ``seed`` from the union of ``paths``; sorted by id.
    With ``pack_seconds``, the drawn clips are then packed into windows (``pack_utterances``)."""
    utts = data.select_utterances(paths, n, seed, log, error=TrainDataError)
    if pack_seconds is None:
        return utts
    packed = pack_utterances(utts, pack_seconds)
    log(f"packed {len(utts)} training clips ({sum(u.seconds for u in utts) / 60:.1f} min of audio) into "
        f"{len(packed)} windows of <= {pack_seconds:g} s")  # fmt: skip
    return packed


def pack_seconds_problem(value, name: str = "pack_seconds") -> str | None:
    """Why ``value`` is not a packing length (None or seconds in (0, 30], Whisper's window), or None."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= CHUNK_SECONDS):
        return None
    return f"{name} must be in (0, {CHUNK_SECONDS}] seconds (Whisper's window) or None, got {value!r}"


def pack_utterances(utts: Sequence[Utterance], max_seconds: float, gap_seconds: float = PACK_GAP_SECONDS) -> list[Utterance]:
    """Consecutive clips joined, in order, into windows of at most ``max_seconds`` (gaps counted);
    a clip longer than that stays alone. The reference text is the clips' texts joined by spaces,
    or None when any clip has none (the teacher labels the window). Ids: ``a+b+c``."""
    problem = pack_seconds_problem(max_seconds) if max_seconds is not None else "pack_seconds must be given"
    if problem:
        raise TrainDataError(problem)
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
