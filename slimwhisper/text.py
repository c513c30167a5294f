"""Word and character error rates, after Whisper's English text normaliser on both sides.

Radford et al. 2022 (Whisper, Appendix C) score with this normaliser because reference sets
differ in case, punctuation, spelling ("colour"/"color") and number style; scoring raw text
would mostly measure formatting. Rates are corpus-level: total edits / total reference units
(not a mean of per-utterance rates, which over-weights short utterances).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from slimwhisper.errors import UserError


class WerError(UserError, ValueError):
    """Nothing could be scored (e.g. every reference is empty)."""


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English normaliser: lower case, no punctuation, US spelling, digits for numbers."""
    return " ".join(_normalizer()(text).split())


@dataclass(frozen=True)
class Scores:
    wer: float
    cer: float
    n_utterances: int
    n_words: int  # reference words after normalisation
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    n_chars: int  # reference characters (spaces included) after normalisation
    char_errors: int

    def to_dict(self) -> dict:
        return asdict(self)


def score(refs: Sequence[str], hyps: Sequence[str]) -> Scores:
    """Corpus WER/CER of ``hyps`` against ``refs``, both normalised.

    A reference that normalises to nothing (e.g. only "uh") has no words to get wrong, so each
    hypothesis word counts as an insertion against it. Raises ``WerError`` when no reference
    has any word: a rate over zero words is undefined.
    """
    import jiwer

    if len(refs) != len(hyps):
        raise WerError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise WerError("nothing to score: no utterances")
    refs_n = [normalize(r) for r in refs]
    hyps_n = [normalize(h) for h in hyps]
    n_words = sum(len(r.split()) for r in refs_n)
    if n_words == 0:
        raise WerError("nothing to score: every reference is empty after normalisation")
    words = jiwer.process_words(refs_n, hyps_n)
    chars = jiwer.process_characters(refs_n, hyps_n)
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    n_chars = sum(len(r) for r in refs_n)
    return Scores(
        wer=word_errors / n_words,
        cer=char_errors / max(n_chars, 1),
        n_utterances=len(refs),
        n_words=n_words,
        hits=words.hits,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        n_chars=n_chars,
        char_errors=char_errors,
    )
