"""Group scores on constructed cases where the answer is known; calibration loss and labels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slimwhisper.compress.calib import CalibConfig, CalibError, example_loss, greedy_transcript, prepare, prefix_tokens
from slimwhisper.compress.groups import GroupSpace, enumerate_groups, zero_groups
from slimwhisper.compress.scores import ScoreConfig, ScoreError, normalize_per_block, score_groups


def utts(n=2, text="hello world"):
    rng = np.random.default_rng(0)
    return [
        SimpleNamespace(id=f"u{i}", audio=(0.1 * rng.standard_normal(8000)).astype("float32"), text=text)
        for i in range(n)
    ]


@pytest.fixture
def setup(tiny_random):
    examples = prepare(tiny_random, CalibConfig("unused", n=2), utts())
    return tiny_random, examples


def grads_of(model, ex):
    model.zero_grad(set_to_none=True)
    example_loss(model, ex).backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_magnitude_zero_head_scores_lowest(tiny_random):
    model = tiny_random.model
    groups = enumerate_groups(model, GroupSpace({"head", "neuron"}))
    dead = next(g for g in groups if g.name == "encoder.1.self_attn.head.2")
    zero_groups(model, [dead])
    for normalize in ("none", "block"):
        for p in (1, 2):
            s = score_groups(model, groups, [ScoreConfig("magnitude", p=p, normalize=normalize)], progress=False)["magnitude"]
            heads = [i for i, g in enumerate(groups) if g.kind == "head"]
            lowest = min(heads, key=lambda i: float(s[i]))
            assert groups[lowest].name == dead.name and float(s[lowest]) == 0.0


def test_fisher_and_taylor_match_hand_computation(setup):
    loaded, examples = setup
    model = loaded.model
    groups = enumerate_groups(model, GroupSpace({"head", "neuron"}))
    got = score_groups(model, groups, [ScoreConfig("fisher"), ScoreConfig("taylor")], examples, progress=False)
    per_ex = [grads_of(model, ex) for ex in examples]
    params = dict(model.named_parameters())
    for name in ("decoder.0.ffn.neuron.5", "encoder.1.self_attn.head.3", "decoder.1.cross_attn.head.0"):
        i, g = next((i, g) for i, g in enumerate(groups) if g.name == name)
        fisher, taylor = 0.0, 0.0
        for grads in per_ex:
            wg = 0.0
            for s in g.slices:
                idx = torch.tensor(s.index)
                w = params[s.param].detach().index_select(s.dim, idx).double()
                gr = grads[s.param].index_select(s.dim, idx).double()
                # F_jj = mean_n g^2; saliency 0.5 * sum_j F_jj w_j^2
                fisher += 0.5 * float((gr.square() * w.square()).sum()) / len(per_ex)
                wg += float((w * gr).sum())
            taylor += abs(wg) / len(per_ex)
        assert float(got["fisher"][i]) == pytest.approx(fisher, rel=1e-4)
        assert float(got["taylor"][i]) == pytest.approx(taylor, rel=1e-4)


def test_gradient_scores_are_per_sample_means(setup):
    # Repeating every calibration sample leaves mean_n g^2 (and so the Fisher score) unchanged.
    loaded, examples = setup
    model = loaded.model
    groups = enumerate_groups(model, GroupSpace({"neuron"}))[:40]
    base = score_groups(model, groups, [ScoreConfig("fisher"), ScoreConfig("taylor")], examples, progress=False)
    doubled = [*examples, *examples]  # same samples twice: means unchanged
    again = score_groups(model, groups, [ScoreConfig("fisher")], doubled, progress=False)
    assert torch.allclose(base["fisher"], again["fisher"], rtol=1e-5)
    assert (base["fisher"] >= 0).all() and (base["taylor"] >= 0).all()


def test_zeroed_group_has_zero_gradient_scores(setup):
    loaded, examples = setup
    groups = enumerate_groups(loaded.model, GroupSpace({"head"}))
    zero_groups(loaded.model, [groups[3]])
    got = score_groups(loaded.model, groups, [ScoreConfig("fisher"), ScoreConfig("taylor")], examples, progress=False)
    for name in ("fisher", "taylor"):
        assert float(got[name][3]) == 0.0 and float(got[name].max()) > 0.0


def test_block_normalisation_makes_block_average_one_per_parameter(tiny_random):
    groups = enumerate_groups(tiny_random.model, GroupSpace({"head", "neuron"}))
    raw = torch.rand(len(groups), dtype=torch.float64)
    out = normalize_per_block(groups, raw)
    block = [i for i, g in enumerate(groups) if g.block == "decoder.1.ffn"]
    per_param = sum(float(out[i]) for i in block) / sum(groups[i].params for i in block)
    assert per_param == pytest.approx(1.0)
    # order inside a block is kept
    assert torch.equal(torch.argsort(raw[block]), torch.argsort(out[block]))


def test_bad_score_configs():
    with pytest.raises(ScoreError, match="unknown score 'hessian'.*fisher.*obs"):
        ScoreConfig("hessian")
    with pytest.raises(ScoreError, match="p must be 1 or 2"):
        ScoreConfig("magnitude", p=3)


def test_gradient_score_without_examples_fails(tiny_random):
    groups = enumerate_groups(tiny_random.model, GroupSpace({"head"}))
    with pytest.raises(ScoreError, match="calibration examples"):
        score_groups(tiny_random.model, groups, [ScoreConfig("fisher")], None, progress=False)


def test_loss_counts_only_text_and_eot(setup):
    loaded, examples = setup
    ex = examples[0]
    n_prefix = len(prefix_tokens(loaded))
    assert ex.n_prefix == n_prefix and ex.tokens[0, -1] == loaded.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():
        logits = loaded.model(input_features=ex.features, decoder_input_ids=ex.tokens[:, :-1]).logits[0]
        targets = ex.tokens[0, 1:]
        want = torch.nn.functional.cross_entropy(logits[n_prefix - 1 :], targets[n_prefix - 1 :])
        assert float(example_loss(loaded.model, ex)) == pytest.approx(float(want), rel=1e-5)


def test_label_free_uses_dense_greedy_transcript(tiny_random):
    u = utts(1, text=None)
    ex = prepare(tiny_random, CalibConfig("unused", n=1), u)[0]
    want = greedy_transcript(tiny_random, ex.features)
    assert ex.pseudo
    assert ex.tokens[0, ex.n_prefix : -1].tolist() == want
    forced = prepare(tiny_random, CalibConfig("unused", n=1, label_free=True), utts(1))[0]
    assert forced.pseudo and forced.tokens[0, forced.n_prefix : -1].tolist() == want


def test_calibration_errors(tiny_random, tmp_path):
    with pytest.raises(CalibError, match="no reference text"):
        prepare(tiny_random, CalibConfig("unused", n=1, label_free=False), utts(1, text=None))
    with pytest.raises(CalibError, match="at least 1"):
        prepare(tiny_random, CalibConfig("unused", n=1), [])
    with pytest.raises(CalibError, match="n must be an int >= 1"):
        CalibConfig("x", n=0)
    (tmp_path / "transcripts.tsv").write_text("")
    with pytest.raises(CalibError):
        prepare(tiny_random, CalibConfig(str(tmp_path), n=2))


def test_calibration_packs_clips_into_windows(tiny_random, tmp_path):
    """``pack_seconds``: the drawn clips (0.5 s each) are joined into windows; ``n`` counts clips."""
    from _helpers import write_manifest

    data = write_manifest(tmp_path / "calib", n=4)
    plain = prepare(tiny_random, CalibConfig(str(data), n=4))
    packed = prepare(tiny_random, CalibConfig(str(data), n=4, pack_seconds=1.5))  # 0.5 + 0.5 gap + 0.5
    assert len(plain) == 4 and [ex.id for ex in packed] == ["u0+u1", "u2+u3"]
    # the joined references become one label per window
    assert packed[0].tokens.shape[1] > plain[0].tokens.shape[1]
    with pytest.raises(CalibError, match="pack_seconds"):
        CalibConfig(str(data), n=4, pack_seconds=45)


def test_pseudo_labels_are_cached_by_weights_and_audio(tiny_random, tmp_path, monkeypatch):
    """A second calibration of the same weights on the same audio decodes nothing; other weights relabel."""
    import slimwhisper.compress.calib as calib

    calls = []
    real = calib.greedy_transcript
    monkeypatch.setattr(calib, "greedy_transcript", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = CalibConfig("unused", n=2, label_free=True)
    first = prepare(tiny_random, cfg, utts(2), cache_root=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("labels-*.json"))) == 1
    again = prepare(tiny_random, cfg, utts(2), cache_root=tmp_path)
    assert len(calls) == 2  # from the cache
    assert [e.tokens.tolist() for e in again] == [e.tokens.tolist() for e in first]
    with torch.no_grad():
        next(tiny_random.model.parameters()).add_(0.01)
    prepare(tiny_random, cfg, utts(2), cache_root=tmp_path)
    assert len(calls) == 4 and len(list(tmp_path.glob("labels-*.json"))) == 2


def test_timestamp_share_calibrates_some_examples_in_timestamp_mode(tiny_random):
    """``timestamps``: that share of the pseudo-labelled examples drops <|notimestamps|> from the prompt
    and carries the dense model's timestamped transcript (openai's rules: it opens with a timestamp)."""
    from slimwhisper.compress.calib import timestamp_rows
    from slimwhisper.decoding_torch import greedy_tokens

    assert timestamp_rows(4, 0.5) == [False, True, False, True] and sum(timestamp_rows(10, 0.3)) == 3
    assert not any(timestamp_rows(5, 0.0)) and all(timestamp_rows(3, 1.0))
    exs = prepare(tiny_random, CalibConfig("unused", n=4, label_free=True, timestamps=0.5), utts(4))
    plain_prefix, ts_prefix = prefix_tokens(tiny_random), prefix_tokens(tiny_random, timestamps=True)
    assert ts_prefix == plain_prefix[:-1]  # the same prompt without <|notimestamps|>
    ts_begin = plain_prefix[-1] + 1
    for ex, stamped in zip(exs, [False, True, False, True]):
        prefix = ts_prefix if stamped else plain_prefix
        assert ex.n_prefix == len(prefix) and ex.tokens[0, : ex.n_prefix].tolist() == prefix
        label = ex.tokens[0, ex.n_prefix : -1].tolist()
        if stamped:
            assert label == greedy_tokens(tiny_random, ex.features, ts_prefix, timestamps=True)[:200]
            assert label and label[0] >= ts_begin
        else:
            assert all(t < ts_begin for t in label)
    with pytest.raises(CalibError, match="timestamps"):
        CalibConfig("x", timestamps=1.5)
    with pytest.raises(CalibError, match="references have no timestamps"):
        CalibConfig("x", timestamps=0.5, label_free=False)
