"""Training audio: several data sets, never an evaluation set, ``n`` utterances drawn with a seed.

The evaluation sets of ``../shared/data`` (``ljspeech/dev.tsv``, ``librispeech-clean-mini``,
``speechocean762/eval.tsv``, ``misc-real``) are refused as training data, by path and by audio
file: a hand-made manifest that points into them loses those lines and says so, and a training
set left with nothing is refused. Which sets count as evaluation is found next to the data (the
first ancestor folder that holds any of them), so a copy of ``shared/data`` elsewhere is
guarded too.

Packing (``pack_utterances``, ``slimwhisper/packing.py``): every training step runs the encoder on
a whole 30 s window, whatever it holds, so a 3 s clip pays for 30 s; windows of several clips put
more speech through one encoder pass. The dense
teacher transcribes such windows whole (tiny.en, 11 packed ljspeech/train windows of 3-5 clips:
the same word count as the clips transcribed one by one in 9, one word more in 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from slimwhisper import data, packing
from slimwhisper.data import EVAL_SETS, Utterance, evaluation_audio
from slimwhisper.errors import UserError
from slimwhisper.packing import PACK_GAP_SECONDS, pack_seconds_problem

__all__ = ["EVAL_SETS", "PACK_GAP_SECONDS", "TrainDataError", "evaluation_audio", "pack_seconds_problem", "pack_utterances",
           "select_utterances"]


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


def pack_utterances(utts: Sequence[Utterance], max_seconds: float, gap_seconds: float = PACK_GAP_SECONDS) -> list[Utterance]:
    """``packing.pack_utterances``; a bad length raises ``TrainDataError``."""
    return packing.pack_utterances(utts, max_seconds, gap_seconds, error=TrainDataError)
