"""Whisper-normalised, corpus-level WER/CER on strings whose answer is known."""

from __future__ import annotations

import pytest

from slimwhisper.text import WerError, normalize, score


def test_case_and_punctuation_do_not_count():
    s = score(["Hello, World!"], ["hello world"])
    assert s.wer == 0.0 and s.cer == 0.0 and s.n_words == 2 and s.hits == 2


def test_normaliser_spelling_and_numbers():
    assert normalize("Mr. Smith paid $20 for the colour TV.") == "mister smith paid $20 for the color tv"
    assert score(["It cost twenty dollars"], ["It cost $20."]).wer == 0.0


def test_corpus_level_counts():
    # ref 1: "a b c" vs "a b" -> 1 deletion; ref 2: "d e" vs "d e f" -> 1 insertion; 5 ref words.
    s = score(["a b c", "d e"], ["a b", "d e f"])
    assert (s.substitutions, s.deletions, s.insertions, s.hits) == (0, 1, 1, 4)
    assert s.wer == pytest.approx(2 / 5)
    assert s.n_utterances == 2


def test_substitution_and_cer():
    s = score(["the cat sat"], ["the bat sat"])
    assert s.substitutions == 1 and s.wer == pytest.approx(1 / 3)
    assert s.char_errors == 1 and s.cer == pytest.approx(1 / len("the cat sat"))


def test_empty_hypothesis_is_all_deletions():
    s = score(["red green blue"], [""])
    assert s.deletions == 3 and s.wer == 1.0


def test_empty_reference_counts_insertions_but_no_words():
    # "uh" normalises to nothing: the hypothesis words are insertions, the word count is from ref 1.
    s = score(["good morning", "uh"], ["good morning", "hi there"])
    assert s.n_words == 2 and s.insertions == 2 and s.wer == pytest.approx(1.0)


def test_nothing_to_score_raises():
    with pytest.raises(WerError, match="every reference is empty"):
        score(["", "um"], ["a", ""])
    with pytest.raises(WerError, match="no utterances"):
        score([], [])
    with pytest.raises(WerError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])
