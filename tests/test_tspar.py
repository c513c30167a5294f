"""Sparse group lasso (value, proximal step) and TSPAR's two-pass pruning on tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from slimwhisper.compress.calib import CalibExample
from slimwhisper.compress.groups import GroupSpace, enumerate_groups, zero_groups
from slimwhisper.models import load_model
from slimwhisper.models.testing import tiny_random_loaded
from slimwhisper.train.lasso import GroupNorms, LassoError
from slimwhisper.train.loop import TrainConfig
from slimwhisper.train.tspar import TsparConfig, TsparError, run_tspar, two_pass_plan

HEAD_NEURON = GroupSpace(frozenset({"head", "neuron"}))


def examples(n=2):
    g = torch.Generator().manual_seed(0)
    return [CalibExample(f"u{i}", torch.randn(1, 80, 3000, generator=g), torch.tensor([[50257, 50362, 100 + i, 200, 50256]]), 2, False) for i in range(n)]


def small(seed=0, **kw):
    return tiny_random_loaded(seed=seed, d_model=8, encoder_attention_heads=2, decoder_attention_heads=2,
                              encoder_ffn_dim=4, decoder_ffn_dim=4, encoder_layers=1, decoder_layers=1, **kw)  # fmt: skip


def test_group_lasso_penalty_by_hand():
    loaded = small()
    model = loaded.model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        fc1, fc2 = model.model.encoder.layers[0].fc1, model.model.encoder.layers[0].fc2
        fc1.weight[1, :2] = torch.tensor([3.0, -4.0])  # neuron 1: fc1 row [3, -4, 0...], bias 0
        fc2.weight[0, 1] = 12.0  # neuron 1's fc2 column
        model.model.encoder.layers[0].self_attn.v_proj.weight[0, 0] = -2.0  # head 0 of encoder self-attn
    groups = enumerate_groups(model, HEAD_NEURON)
    norms = GroupNorms(model, groups)
    size = {g.name: g.numel for g in groups}
    assert size["encoder.0.ffn.neuron.1"] == 8 + 1 + 8  # fc1 row + bias + fc2 column
    head = size["encoder.0.self_attn.head.0"]
    assert head == 4 * 8 + 4 + 4 * 8 + 4 * 8 + 4 + 8 * 4  # q rows + q bias, k rows, v rows + v bias, o cols
    # ||neuron 1|| = sqrt(9 + 16 + 144) = 13, ||head 0|| = 2, every other group 0
    expected_group = math.sqrt(17) * 13 + math.sqrt(head) * 2
    expected_l1 = 3 + 4 + 12 + 2
    assert float(norms.penalty(1.0, 0.0)) == pytest.approx(expected_group, rel=1e-5)
    assert float(norms.penalty(0.5, 0.1)) == pytest.approx(0.5 * expected_group + 0.1 * expected_l1, rel=1e-5)


def test_proximal_step_zeroes_weak_groups_and_shrinks_strong_ones():
    loaded = small()
    groups = enumerate_groups(loaded.model, HEAD_NEURON)
    norms = GroupNorms(loaded.model, groups)
    before = norms.norms().detach()
    sizes = norms.sizes.sqrt()
    step = float((before / sizes).median())  # threshold step*sqrt(p_g): kills groups below the median rms
    norms.prox(1.0, 0.0, step)
    after = norms.norms().detach()
    weak = before < step * sizes
    assert weak.any() and (~weak).any()
    assert torch.all(after[weak] < 1e-5)
    torch.testing.assert_close(after[~weak], before[~weak] - step * sizes[~weak], rtol=1e-4, atol=1e-5)


def test_overlapping_groups_are_refused():
    loaded = small()
    with pytest.raises(LassoError, match="overlap"):
        GroupNorms(loaded.model, enumerate_groups(loaded.model, GroupSpace(frozenset({"head", "qk"}))))


def _config(tmp_path, **kw):
    base = dict(model="x", out=str(tmp_path / "out"), train=TrainConfig("unused", steps=2, batch_size=2, lr=1e-3))
    return TsparConfig(**{**base, **kw})


def test_pass1_removes_a_zeroed_group_and_pass2_hits_the_budget(tmp_path):
    loaded = tiny_random_loaded()
    groups = enumerate_groups(loaded.model, HEAD_NEURON)
    zero_groups(loaded.model, [g for g in groups if g.name in ("decoder.1.ffn.neuron.5", "encoder.0.self_attn.head.2")])
    norms = GroupNorms(loaded.model, groups).norms().detach()
    total = sum(g.numel for g in groups) + 1000  # layer norms are not groups
    config = _config(tmp_path, target_params=0.25, tau=0.05)
    result = two_pass_plan(groups, norms, total, config)
    assert set(result.pass1) == {"decoder.1.ffn.neuron.5", "encoder.0.self_attn.head.2"}
    assert result.removed >= 0.25 * total and result.removed - max(g.numel for g in groups) < 0.25 * total
    assert result.plan.remove == frozenset(result.pass1 + result.pass2)
    # caps: at most half the heads and 3/4 of the neurons of any block
    for block, cap, n in (("self_attn.head", 0.5, 4), ("ffn.neuron", 0.5, 128)):
        for side, layer in (("encoder", 0), ("encoder", 1), ("decoder", 0), ("decoder", 1)):
            kept = n - sum(1 for name in result.plan.remove if name.startswith(f"{side}.{layer}.{block}."))
            assert kept >= n - math.floor(cap * n) and kept >= 1


def test_caps_keep_one_unit_per_block(tmp_path):
    loaded = small()
    groups = enumerate_groups(loaded.model, HEAD_NEURON)
    norms = torch.zeros(len(groups))  # everything "switched off"
    result = two_pass_plan(groups, norms, 10_000, _config(tmp_path, target_params=0.9, max_head_ratio=1.0, max_neuron_ratio=1.0))
    for block in {g.block for g in groups}:
        assert sum(1 for g in groups if g.block == block and g.name not in result.plan.remove) >= 1


def test_run_tspar_saves_a_smaller_model_that_reloads(tmp_path):
    loaded = tiny_random_loaded()
    dense_params = loaded.spec.params()
    config = _config(tmp_path, lambda_group=0.5, target_params=0.3)
    result = run_tspar(config, progress=False, loaded=loaded, examples=examples(2))
    assert result.training.steps == 2 and result.stage2.fraction >= 0.3
    again = load_model(config.out)
    assert again.spec == result.loaded.spec and again.spec.params() < dense_params
    saved = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert saved["configs"]["tspar"]["lambda_group"] == 0.5 and saved["record"]["steps"]


def test_bad_tspar_config_lists_every_problem(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")  # an empty folder is used as is (outputs.py); a full one is not
    with pytest.raises(TsparError) as err:
        _config(tmp_path, lambda_group=0.0, target_params=1.5, tau=0, regularize="magic")
    text = str(err.value)
    assert all(w in text for w in ("already exists", "both 0", "target_params", "tau", "regularize"))


def test_penalty_mode_adds_omega_to_the_loss(tmp_path):
    loaded = small()
    config = _config(tmp_path, regularize="penalty", lambda_group=0.1, target_params=0.2)
    result = run_tspar(config, progress=False, loaded=loaded, examples=examples(2))
    assert all("omega" in log and log["omega"] > 0 for log in result.training.logs)
    assert isinstance(loaded.model.model.encoder.layers[0].fc1, nn.Linear)


def test_lambda_schedule_warms_up_ramps_and_backs_off_when_ce_rises(tmp_path):
    from slimwhisper.train.tspar import LambdaSchedule

    config = _config(tmp_path, ce_warmup=0.2, lambda_ramp=0.4, ce_tolerance=0.1)
    s = LambdaSchedule(config, total=10)
    assert s.factor(0) == s.factor(1) == 0.0 and 0 < s.factor(2) < s.factor(3) < s.factor(5) == 1.0
    s.observe(0, 1.0)
    s.observe(1, 1.0)
    assert s.ce_ref == 1.0
    s.observe(2, 3.0)  # CE far above dense: lambda halves
    assert s.adapt == 0.5 and s.factor(6) == 0.5
    for step in range(3, 80):
        s.observe(step, 1.0)
    assert s.adapt == 1.0  # recovers (10% a step) once the CE average is back near dense
    assert "pass 1" in config.to_dict()["two_pass_rule"]


def test_negative_lambda_is_refused(tmp_path):
    with pytest.raises(TsparError, match="lambda_group must be a finite number >= 0"):
        _config(tmp_path, lambda_group=-0.1)


def test_tspar_trains_on_packed_windows(tmp_path, monkeypatch):
    """``tspar --pack-seconds`` draws packed windows, as ``recover`` does (four 0.5 s clips -> 2 windows)."""
    from _helpers import write_manifest

    from slimwhisper.compress import calib

    data = write_manifest(tmp_path / "train", n=4)
    seen: list[list[str]] = []
    real = calib.prepare

    def spy(loaded, cfg, utterances=None, **kw):
        seen.append([u.id for u in utterances])
        return real(loaded, cfg, utterances=utterances, **kw)

    monkeypatch.setattr(calib, "prepare", spy)
    train = TrainConfig(str(data), n=4, steps=1, batch_size=2, lr=1e-3, pack_seconds=1.5)
    result = run_tspar(_config(tmp_path, train=train, target_params=0.2), progress=False, loaded=tiny_random_loaded())
    assert seen == [["u0+u1", "u2+u3"]] and result.training.steps == 1
    saved = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert saved["configs"]["tspar"]["train"]["pack_seconds"] == 1.5
