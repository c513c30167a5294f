"""The one decoding engine (runtime.engine): filters, greedy/beam, fallback, no-speech, long-form
seeking, output formats; and the torch and bundle paths making the same decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimwhisper.runtime.engine import (
    DecodingError,
    DecodingOptions,
    Specials,
    compression_ratio,
    decode,
    decode_with_fallback,
    is_silence,
)
from slimwhisper.runtime.filters import (
    ApplyTimestampRules,
    SuppressBlank,
    SuppressTokens,
    chosen_logprobs,
    log_softmax,
)
from slimwhisper.runtime.longform import (
    ArraySource,
    Segment,
    split_segments,
    transcribe_long,
)
from slimwhisper.runtime.search import BeamSearch
from slimwhisper.runtime.subtitles import FormatError, render

# A toy vocabulary: 0-9 text, 10 eot, 11 sot, 12 notimestamps, 13 startofprev, 14 nospeech, 15+ timestamps
V = 15 + 1501
SP = Specials(sot=11, eot=10, no_timestamps=12, timestamp_begin=15, sot_prev=13, no_speech=14,
              suppress=(9,), begin_suppress=(0, 10), specials=(11, 13, 14))
TS = SP.timestamp_begin


def detok(ids):
    return "".join(f" w{t}" for t in ids if t < SP.eot)


class ScriptModel:
    """A StepModel that wants ``script[i]`` at generated position i (then eot), per window call;
    ``no_speech`` is the logit of <|nospeech|> at the sot position."""

    n_text_ctx = 448

    def __init__(self, scripts, no_speech=-10.0, strength=8.0):
        self.scripts, self.no_speech, self.strength = list(scripts), no_speech, strength
        self.encodes, self.prompts = 0, []

    def encode(self, features):
        self.encodes += 1
        return np.asarray([[self.encodes - 1]] * features.shape[0])  # audio state = script index

    def repeat(self, audio, index):
        return audio[index]

    def empty_cache(self, rows):
        return (0, None)

    def step(self, ids, cache, audio):
        fed, prompt_len = cache
        if prompt_len is None:
            prompt_len = ids.shape[1]
            self.prompts.append(ids[0].tolist())
        logits = np.full((ids.shape[0], ids.shape[1], V), -5.0, np.float32)
        for r in range(ids.shape[0]):
            script = self.scripts[min(int(audio[r, 0]), len(self.scripts) - 1)]
            pos = fed + ids.shape[1] - prompt_len
            want = script[pos] if pos < len(script) else SP.eot
            logits[r, -1, want] = self.strength
        if fed == 0:
            sot_at = ids[0].tolist().index(SP.sot)
            logits[:, sot_at, SP.no_speech] = self.no_speech
        return logits, (fed + ids.shape[1], prompt_len)

    def reorder(self, cache, index):
        return cache


def feats(n=1):
    return np.zeros((n, 80, 3000), np.float32)


# ---- filters ---------------------------------------------------------------------------------


def test_suppress_blank_only_at_the_first_position_and_suppress_tokens_always():
    logits = np.zeros((1, V), np.float32)
    SuppressBlank((0, 10), sample_begin=2).apply(logits, np.zeros((1, 2), np.int64))
    assert np.isinf(logits[0, [0, 10]]).all()
    later = np.zeros((1, V), np.float32)
    SuppressBlank((0, 10), sample_begin=2).apply(later, np.zeros((1, 3), np.int64))
    assert np.isfinite(later).all()
    SuppressTokens((3, 10**6)).apply(later, np.zeros((1, 3), np.int64))  # ids past the vocab are ignored
    assert np.isinf(later[0, 3]) and np.isfinite(later[0, 4])


def test_chosen_logprobs_equal_the_log_softmax_entries_with_masked_rows():
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((3, V))).astype(np.float32)
    logits[1, : V // 2] = -np.inf  # suppressed half, as the filters leave it
    chosen = np.asarray([0, V - 1, 5])
    want = log_softmax(logits)[np.arange(3), chosen]
    np.testing.assert_allclose(chosen_logprobs(logits, chosen), want, rtol=1e-5, atol=1e-6)


def rules(sample_begin=1):
    return ApplyTimestampRules(SP.eot, SP.no_timestamps, TS, sample_begin, max_initial_timestamp_index=50)


def test_timestamp_rules_first_token_is_an_early_timestamp():
    logits = np.zeros((1, V), np.float32)
    rules().apply(logits, np.asarray([[SP.sot]]))
    allowed = np.flatnonzero(np.isfinite(logits[0]))
    assert allowed.min() == TS and allowed.max() == TS + 50  # <= 1.0 s


def test_timestamp_rules_pairs_and_monotonic():
    # after text and an opening timestamp (0.40 s) only a closing timestamp >= it or eot may follow
    logits = np.zeros((1, V), np.float32)
    logits[0, SP.eot] = 10.0  # likelier than all timestamps together (else only timestamps remain)
    rules().apply(logits, np.asarray([[SP.sot, TS, 3, TS + 20]]))
    allowed = np.flatnonzero(np.isfinite(logits[0]))
    assert allowed.min() == SP.eot and SP.eot in allowed and TS + 19 not in allowed and TS + 20 in allowed
    assert not any(t < SP.eot for t in allowed)
    # after a closed pair: text, or a timestamp strictly later than the last one
    logits = np.zeros((1, V), np.float32)
    rules().apply(logits, np.asarray([[SP.sot, TS, 3, TS + 20, TS + 20]]))
    allowed = np.flatnonzero(np.isfinite(logits[0]))
    assert 3 in allowed and not any(t >= TS for t in allowed)
    assert np.isinf(logits[0, SP.no_timestamps])


def test_timestamp_rules_take_a_timestamp_when_timestamps_together_are_likelier():
    logits = np.full((1, V), -30.0, np.float32)
    logits[0, 3] = 0.0  # the best single token is text ...
    logits[0, TS + 100: TS + 200] = -1.0  # ... but 100 timestamps together outweigh it
    rules().apply(logits, np.asarray([[SP.sot, TS, 3]]))
    assert np.isinf(logits[0, :TS]).all()


# ---- search ----------------------------------------------------------------------------------


def test_beam_search_finds_what_greedy_misses():
    """Token 1 looks best at step 0 but leads nowhere; 2 then 4 is likelier overall."""
    step0 = np.log(np.asarray([0.0, 0.5, 0.45, 0.05] + [0.0] * (V - 4)) + 1e-12).astype(np.float32)

    class Tree(ScriptModel):
        def step(self, ids, cache, audio):
            fed, _ = cache
            logits = np.full((ids.shape[0], ids.shape[1], V), -30.0, np.float32)
            for r in range(ids.shape[0]):
                last = int(ids[r, -1])
                if fed == 0:
                    logits[r, -1] = step0
                elif last == 1:
                    logits[r, -1, 5:9] = 0.0  # four equally likely: each 0.25
                elif last == 2:
                    logits[r, -1, 4] = 0.0
                else:
                    logits[r, -1, SP.eot] = 0.0
            return logits, (fed + ids.shape[1], 1)

    prompt = [SP.sot, SP.no_timestamps]
    greedy = decode(Tree([[]]), np.zeros((1, 1)), prompt, 0, SP, DecodingOptions(fallback=False), 0.0, detok,
                    np.random.default_rng(0))[0]
    beam = decode(Tree([[]]), np.zeros((1, 1)), prompt, 0, SP, DecodingOptions(beam_size=3, fallback=False), 0.0,
                  detok, np.random.default_rng(0))[0]
    assert greedy.tokens[0] == 1 and beam.tokens == [2, 4]
    assert beam.sum_logprob > greedy.sum_logprob


def test_beam_patience_sets_the_number_of_finished_candidates():
    assert BeamSearch(10, 5, 1.0).max_candidates == 5 and BeamSearch(10, 5, 2.0).max_candidates == 10


def test_decoding_options_report_every_problem():
    with pytest.raises(DecodingError) as err:
        DecodingOptions(beam_size=0, best_of=0, patience=0, temperatures=())
    text = str(err.value)
    assert all(w in text for w in ("beam_size", "best_of", "patience", "temperatures"))


# ---- fallback and no-speech ----------------------------------------------------------------------


def test_repetitive_text_falls_back_through_every_temperature():
    loop = [3] * 60  # compresses far better than 2.4x
    assert compression_ratio(detok(loop)) > 2.4
    opts = DecodingOptions()
    (r,) = decode_with_fallback(ScriptModel([loop], strength=30.0), feats(), [SP.sot, SP.no_timestamps], 0, SP,
                                opts, detok)
    assert r.attempts == len(opts.temperatures) and r.temperature == 1.0
    (off,) = decode_with_fallback(ScriptModel([loop], strength=30.0), feats(), [SP.sot, SP.no_timestamps], 0, SP,
                                  DecodingOptions(fallback=False), detok)
    assert off.attempts == 1 and off.temperature == 0.0 and off.tokens == loop


def test_clean_text_is_decoded_once():
    (r,) = decode_with_fallback(ScriptModel([[1, 2, 3, 4]]), feats(), [SP.sot, SP.no_timestamps], 0, SP,
                                DecodingOptions(), detok)
    assert r.attempts == 1 and r.tokens == [1, 2, 3, 4] and r.avg_logprob > -1


def test_no_speech_rule_skips_unlikely_text_but_keeps_confident_text():
    opts = DecodingOptions()
    silent = ScriptModel([[1]], no_speech=40.0, strength=-5.0)  # flat logits: low log-prob
    (r,) = decode_with_fallback(silent, feats(), [SP.sot, SP.no_timestamps], 0, SP, opts, detok)
    assert r.no_speech_prob > 0.6 and r.avg_logprob < -1 and is_silence(r, opts)
    sure = ScriptModel([[1, 2]], no_speech=40.0)
    (r,) = decode_with_fallback(sure, feats(), [SP.sot, SP.no_timestamps], 0, SP, opts, detok)
    assert r.no_speech_prob > 0.6 and not is_silence(r, opts)
    before = silent.encodes
    long = transcribe_long(silent, ArraySource(np.full(16000 * 40, 0.1, np.float32)), lambda a: np.zeros((80, 3000)),
                           [SP.sot], SP, opts, detok)
    assert long.text == "" and long.segments == [] and long.skipped_silent == 2 and silent.encodes == before + 2


def test_digital_silence_is_not_decoded_at_all():
    """openai's rule keeps a confident "you" on zeros (tiny.en); the -60 dBFS gate never asks."""
    model = ScriptModel([[1, 2]])
    quiet = np.full(16000 * 40, 1e-4, np.float32)
    long = transcribe_long(model, ArraySource(quiet), lambda a: np.zeros((80, 3000)), [SP.sot], SP,
                           DecodingOptions(), detok)
    assert long.text == "" and long.skipped_silent == 2 and model.encodes == 0
    off = transcribe_long(model, ArraySource(quiet), lambda a: np.zeros((80, 3000)), [SP.sot], SP,
                          DecodingOptions(silence_dbfs=None), detok)
    assert off.text == "w1 w2 w1 w2" and model.encodes == 2


# ---- long-form seeking ---------------------------------------------------------------------------


def test_split_segments_follows_openai_seeking():
    from slimwhisper.runtime.engine import WindowResult

    r = WindowResult([TS, 1, 2, TS + 100, TS + 100, 3, TS + 250, TS + 300, 4], 0, 0, 0, 0, 0)
    segs, advance = split_segments(r, 10.0, 30.0, TS, detok)
    assert [(s.start, s.end) for s in segs] == [(10.0, 12.0), (12.0, 15.0)]
    assert advance == 250 * 2  # seek to the last complete pair's end (mel frames)
    r = WindowResult([TS, 1, TS + 50, TS + 50, 2, TS + 80], 0, 0, 0, 0, 0)  # single timestamp ending
    segs, advance = split_segments(r, 0.0, 30.0, TS, detok)
    assert [(s.start, s.end) for s in segs] == [(0.0, 1.0), (1.0, 1.6)] and advance is None


def test_long_form_seeks_by_timestamps_and_conditions_on_previous_text():
    # window 1 ends mid-speech at 20 s (pair closed at 20.00): the next window starts there
    w1 = [TS, 1, 2, TS + 500, TS + 500, 3, TS + 1000, TS + 1200, 4]
    w2 = [TS, 5, TS + 900]
    model = ScriptModel([w1, w2])
    audio = np.full(16000 * 45, 0.1, np.float32)
    long = transcribe_long(model, ArraySource(audio), lambda a: np.zeros((80, 3000)), [SP.sot], SP,
                           DecodingOptions(timestamps=True), detok)
    starts = [(s.start, s.end) for s in long.segments]
    assert starts == [(0.0, 10.0), (10.0, 20.0), (20.0, 38.0)]
    assert long.windows == 2 and long.text == "w1 w2 w3 w5"
    assert model.prompts[1][0] == SP.sot_prev and model.prompts[1][1:6] == [TS, 1, 2, TS + 500, TS + 500]
    plain = transcribe_long(ScriptModel([w1, w2]), ArraySource(audio), lambda a: np.zeros((80, 3000)), [SP.sot], SP,
                            DecodingOptions(timestamps=True, condition_on_previous_text=False), detok)
    assert plain.text == long.text


def test_corrupt_samples_in_a_long_stream_are_refused_with_the_time():
    from slimwhisper.runtime.frontend import AudioError

    audio = np.zeros(16000 * 70, np.float32)
    audio[16000 * 65] = np.nan
    with pytest.raises(AudioError, match=r"long.wav \(at 60.00 s\) contains 1 NaN"):
        transcribe_long(ScriptModel([[1]]), ArraySource(audio), lambda a: np.zeros((80, 3000)), [SP.sot], SP,
                        DecodingOptions(fallback=False), detok, where="long.wav")


# ---- output formats -------------------------------------------------------------------------------


def test_formats():
    segs = [Segment(0.0, 1.5, " Hello.", [1], -0.1, 0.0, 0.0, 1.0), Segment(61.25, 3725.5, " World", [2], 0, 0, 0, 1)]
    srt = render("srt", segs)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n00:01:01,250 --> 01:02:05,500\nWorld\n")
    assert render("vtt", segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n")
    doc = json.loads(render("json", segs, {"model": "m"}))
    assert doc["text"] == "Hello. World" and doc["segments"][1]["start"] == 61.25 and doc["model"] == "m"
    assert render("text", segs) == "Hello. World\n"
    with pytest.raises(FormatError, match="unknown format 'xml'"):
        render("xml", segs)
