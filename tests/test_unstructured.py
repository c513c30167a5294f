"""Unstructured magnitude baseline: exact zero counts, smallest weights, no size change."""

from __future__ import annotations

import json

import pytest
import torch

from slimwhisper.compress.unstructured import (
    LABEL,
    Selector,
    UnstructuredConfig,
    prune_unstructured,
    selected_weights,
)
from slimwhisper.models.slim import spec_from_model


from _helpers import tiny_whisper as tiny


def test_zeroes_exactly_the_smallest_of_the_selection():
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nonzero_before = sum(int((p != 0).sum()) for p in before.values())
    spec = spec_from_model(model)
    report = prune_unstructured(model, UnstructuredConfig(0.5, ("decoder.self_attn",)))
    chosen = selected_weights(model, Selector.parse("decoder.self_attn"))
    assert len(chosen) == 2 * 4
    n = sum(w.numel() for w in chosen.values())
    assert report.label == LABEL and report.selected == n
    assert report.zeros_after == n // 2 and report.zeros_before == 0
    assert report.params == sum(p.numel() for p in model.parameters()) and spec_from_model(model) == spec
    assert report.nonzero_params == nonzero_before - n // 2
    # the zeroed entries were the smallest |w| of the joint ranking
    old = torch.cat([before[k].abs().reshape(-1) for k in chosen])
    new = torch.cat([w.detach().reshape(-1) for w in chosen.values()])
    assert old[new == 0].max() <= old[new != 0].min()
    for name, p in model.named_parameters():  # nothing outside the selection changed
        if name not in chosen:
            assert torch.equal(p, before[name]), name
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert json.loads(json.dumps(report.to_dict()))["config"]["components"] == ["decoder.self_attn"]


@pytest.mark.parametrize("scope", ["per_matrix", "per_component", "global"])
def test_scopes_rank_differently_but_hit_the_ratio(scope):
    model = tiny()
    report = prune_unstructured(model, UnstructuredConfig(0.3, ("encoder[-2:].ffn", "decoder.cross_attn"), scope))
    assert report.by_component["encoder[-2:].ffn"]["weights"] == 2 * 2 * 64 * 128
    total = sum(c["weights"] for c in report.by_component.values())
    zeros = [c["zeros"] for c in report.by_component.values()]
    assert abs(report.zeros_after - 0.3 * total) <= 12  # k is floored in each ranked group (<= 12 matrices)
    first = model.model.encoder.layers[0].fc1.weight
    assert (first == 0).sum() == 0  # not among the last two encoder layers
    if scope != "global":
        ffn_n = report.by_component["encoder[-2:].ffn"]["weights"]
        assert abs(zeros[0] - 0.3 * ffn_n) <= 4


def test_global_ranking_differs_from_per_matrix():
    a, b = tiny(), tiny()
    with torch.no_grad():  # make fc weights much smaller so a global ranking prunes them first
        for m in (a, b):
            for layer in m.model.encoder.layers:
                layer.fc1.weight.mul_(1e-6)
    ra = prune_unstructured(a, UnstructuredConfig(0.2, ("encoder",), "global"))
    rb = prune_unstructured(b, UnstructuredConfig(0.2, ("encoder",), "per_matrix"))
    assert (a.model.encoder.layers[0].self_attn.q_proj.weight == 0).sum() == 0
    assert (b.model.encoder.layers[0].self_attn.q_proj.weight == 0).sum() > 0
    assert abs(ra.zeros_after - rb.zeros_after) <= 20


def test_bad_config_lists_every_problem():
    with pytest.raises(ValueError) as err:
        UnstructuredConfig(1.5, ("decoder.selfattn", "encoder[-2:].ffn"), "layerwise")
    msg = str(err.value)
    assert "ratio" in msg and "decoder.selfattn" in msg and "layerwise" in msg
    with pytest.raises(ValueError, match="overlap"):
        prune_unstructured(tiny(), UnstructuredConfig(0.1, ("all", "decoder.ffn")))


def test_selectors_use_the_allocation_syntax():
    from slimwhisper.compress.unstructured import Selector, UnstructuredError

    assert Selector.parse("encoder[-2:].ffn").layer_ids(4) == [2, 3]
    assert Selector.parse("decoder[0]").layer_ids(4) == [0]
    assert Selector.parse("all").layer_ids(3) == [0, 1, 2] and Selector.parse("all").component is None
    assert str(Selector.parse("encoder[-2:].ffn")) == "encoder[-2:].ffn"
    with pytest.raises(UnstructuredError, match=r"encoder\[-2:\]"):
        Selector.parse("encoder.last2")  # the old second syntax is gone; the message shows the one kept
