"""Allocation: local vs global counts, budgets, selectors, layer drops and guards."""

from __future__ import annotations

import copy

import pytest
import torch

from slimwhisper.compress.alloc_config import AllocConfig, AllocError
from slimwhisper.compress.allocate import allocate
from slimwhisper.compress.groups import enumerate_groups
from slimwhisper.compress.surgery import apply_plan
from slimwhisper.models.testing import tiny_random_loaded


@pytest.fixture(scope="module")
def loaded():
    return tiny_random_loaded(encoder_layers=4, decoder_layers=2)


def run(loaded, config, scores_fn=None):
    groups = enumerate_groups(loaded.model, config.group_space())
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(len(groups), generator=gen, dtype=torch.float64) + 0.5
    if scores_fn is not None:
        scores = torch.tensor([scores_fn(g, float(s)) for g, s in zip(groups, scores)], dtype=torch.float64)
    return groups, allocate(groups, scores, config, loaded.spec)


def removed_by_block(plan, kind="head"):
    out = {}
    for name in plan.remove:
        parts = name.split(".")
        if parts[3] == kind:
            out[".".join(parts[:3])] = out.get(".".join(parts[:3]), 0) + 1
    return out


def test_local_removes_same_ratio_everywhere(loaded):
    _, a = run(loaded, AllocConfig(threshold="local", heads=0.5))
    counts = removed_by_block(a.plan)
    assert len(counts) == 4 + 2 * 2 and set(counts.values()) == {2}


def test_global_ranks_across_layers_and_keeps_one_head(loaded):
    # encoder.2 heads score far lower than everything else: a global 25% ranking takes them
    # first, but must leave one head there.
    low = lambda g, s: s * (1e-3 if g.block == "encoder.2.self_attn" else 1.0)  # noqa: E731
    _, a = run(loaded, AllocConfig(threshold="global", heads=0.25), low)
    counts = removed_by_block(a.plan)
    assert sum(counts.values()) == round(0.25 * 32)
    assert counts["encoder.2.self_attn"] == 3  # all but one
    _, local = run(loaded, AllocConfig(threshold="local", heads=0.25), low)
    assert removed_by_block(local.plan)["encoder.2.self_attn"] == 1


@pytest.mark.parametrize("threshold", ["global", "local"])
def test_param_budget_reached(loaded, threshold):
    groups, a = run(loaded, AllocConfig(threshold=threshold, target_params=0.3))
    target = 0.3 * a.total
    assert a.removed >= target
    biggest = max(g.params for g in groups)
    if threshold == "global":
        assert a.removed - biggest < target  # stops within one group of the budget
    # what the plan really removes equals the allocation's count (no overlapping kinds here)
    model = copy.deepcopy(loaded.model)
    before = loaded.spec.params()
    after = apply_plan(model, a.plan).spec.params()
    assert before - after == pytest.approx(a.removed)


def test_flops_budget(loaded):
    _, a = run(loaded, AllocConfig(threshold="global", target_flops=0.2))
    assert a.metric == "flops" and a.fraction >= 0.2
    model = copy.deepcopy(loaded.model)
    spec_after = apply_plan(model, a.plan).spec
    total = lambda s: sum(s.flops(tokens=64, context=32).values())  # noqa: E731
    assert 1 - total(spec_after) / total(loaded.spec) == pytest.approx(a.fraction, rel=1e-6)


def test_component_selectors(loaded):
    _, a = run(loaded, AllocConfig(components=("encoder[-2:].self_attn=0.5", "decoder.self_attn=0.5")))
    assert removed_by_block(a.plan) == {
        "encoder.2.self_attn": 2, "encoder.3.self_attn": 2, "decoder.0.self_attn": 2, "decoder.1.self_attn": 2,
    }  # fmt: skip
    _, b = run(loaded, AllocConfig(components=(("decoder[0].ffn", 0.25),)))
    assert removed_by_block(b.plan, "neuron") == {"decoder.0.ffn": 32}


def test_drop_lowest_layers(loaded):
    low = lambda g, s: {1: 0.1, 3: 0.2}.get(g.layer, 5.0) if g.side == "encoder" else 5.0  # noqa: E731
    _, a = run(loaded, AllocConfig(drop_encoder_layers=2), low)
    assert a.plan.remove == frozenset({"encoder.1.layer", "encoder.3.layer"})


def test_per_head_channels_keep_equal_widths(loaded):
    _, a = run(loaded, AllocConfig(qk=0.25, channel_pattern="per_head"))
    model = copy.deepcopy(loaded.model)
    spec = apply_plan(model, a.plan).spec
    assert {ly.self_attn.qk_dim for ly in spec.encoder} == {12}
    # global per-head channels too
    _, g = run(loaded, AllocConfig(threshold="global", vo=0.4, channel_pattern="per_head"))
    apply_plan(copy.deepcopy(loaded.model), g.plan)  # surgery refuses unequal widths


def test_guards_and_bad_ratios(loaded):
    for bad in (dict(heads=1.0), dict(ffn=-0.1), dict(components=("decoder.self_attn=1.5",)), dict(target_params=2)):
        with pytest.raises(AllocError, match=r"\[0, 1\)"):
            AllocConfig(**bad)
    with pytest.raises(AllocError, match="not both"):
        AllocConfig(target_params=0.1, target_flops=0.1)
    with pytest.raises(AllocError, match="threshold"):
        AllocConfig(threshold="everywhere")
    with pytest.raises(AllocError, match="selector"):
        AllocConfig(components=("decoder.attention=0.5",))
    with pytest.raises(AllocError, match="no cross_attn"):
        AllocConfig(components=("encoder.cross_attn=0.5",))
    with pytest.raises(AllocError, match="keep at least one"):
        run(loaded, AllocConfig(drop_decoder_layers=2))
    with pytest.raises(AllocError, match="nothing to prune"):
        AllocConfig().group_space()
    # 0.99 of 4 heads still keeps one in every block
    _, a = run(loaded, AllocConfig(heads=0.99))
    assert set(removed_by_block(a.plan).values()) == {3}


def test_unreachable_budget_is_an_error(loaded):
    with pytest.raises(AllocError, match="cannot be reached"):
        run(loaded, AllocConfig(threshold="global", target_params=0.95, budget_kinds=("head",)))
