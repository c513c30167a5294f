"""Training audio: several data sets, never an evaluation set, ``n`` utterances drawn with a seed.

The evaluation sets of ``../shared/data`` (``ljspeech/dev.tsv``, ``librispeech-clean-mini``,
``speechocean762/eval.tsv``, ``misc-real``) are refused as training data, by path and by audio
file: a hand-made manifest that points into them loses those lines and says so, and a training
set left with nothing is refused. Which sets count as evaluation is found next to the data (the
first ancestor folder that holds any of them), so a copy of ``shared/data`` elsewhere is
guarded too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from slimwhisper.data import EVAL_SETS, evaluation_audio, evaluation_problems
from slimwhisper.errors import UserError, raise_problems

__all__ = ["EVAL_SETS", "TrainDataError", "evaluation_audio", "select_utterances"]


class TrainDataError(UserError, ValueError):
    """The training data is unusable (missing, empty, or an evaluation set)."""


def select_utterances(paths: Sequence[str], n: int, seed: int, log: Callable[[str], None] = print) -> list:
    """``n`` utterances (all when fewer) drawn with ``seed`` from the union of ``paths``; sorted by id."""
    from slimwhisper.data import DataError, load_dataset

    eval_sets, _ = evaluation_audio(paths)
    problems, items, loaded = [], [], []
    for p in paths:
        path = Path(p)
        if not path.exists():
            problems.append(f"training data {p} does not exist")
            continue
        if found := evaluation_problems([p], eval_sets, "train"):
            problems += found
            continue
        try:
            ds = load_dataset(path)
        except DataError as exc:
            problems.append(f"training data {p}: {exc}")
            continue
        loaded.append((p, ds))
    raise_problems(TrainDataError, "unusable training data", problems)
    # evaluation sets next to the data AND next to its audio files (a manifest may point anywhere)
    _, eval_audio = evaluation_audio([*paths, *{it.path.parent for _, ds in loaded for it in ds.items}])
    for p, ds in loaded:
        kept = [it for it in ds.items if it.path.resolve() not in eval_audio]
        if len(kept) < len(ds.items):
            log(f"training data {p}: {len(ds.items) - len(kept)} utterances are evaluation audio: left out")
        items += [(ds, it) for it in kept]
    if not items:
        raise TrainDataError(f"training data {', '.join(map(str, paths))} holds no utterance outside the evaluation sets")
    if len(items) > n:
        items = random.Random(seed).sample(items, n)
    items.sort(key=lambda x: (str(x[0].root), x[1].id))
    utts = [u for u in (ds.read(it) for ds, it in items) if u is not None]
    if not utts:
        raise TrainDataError("no training utterance could be read")
    return utts
