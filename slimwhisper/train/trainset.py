"""Training audio: several data sets, never an evaluation set, ``n`` utterances drawn with a seed.

The evaluation sets of ``../shared/data`` (``ljspeech/dev.tsv``, ``librispeech-clean-mini``,
``speechocean762/eval.tsv``, ``misc-real``) are refused as training data, by path and by audio
file: a hand-made manifest that points into them loses those lines and says so, and a training
set left with nothing is refused. Which sets count as evaluation is found next to the data (the
first ancestor folder that holds any of them), so a copy of ``shared/data`` elsewhere is
guarded too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from slimwhisper import data
from slimwhisper.data import EVAL_SETS, evaluation_audio
from slimwhisper.errors import UserError

__all__ = ["EVAL_SETS", "TrainDataError", "evaluation_audio", "select_utterances"]


class TrainDataError(UserError, ValueError):
    """The training data is unusable (missing, empty, or an evaluation set)."""


def select_utterances(paths: Sequence[str], n: int, seed: int, log: Callable[[str], None] = print) -> list:
    """``n`` utterances (all when fewer) drawn with ``seed`` from the union of ``paths``; sorted by id."""
    return data.select_utterances(paths, n, seed, log, error=TrainDataError)
