"""Group enumeration: names, coupled slices, parameter counts, ranges in error messages."""

from __future__ import annotations

import pytest

from slimwhisper.compress.groups import (
    GroupError,
    GroupSpace,
    enumerate_groups,
    name_problem,
    parse_name,
    valid_names,
    zero_groups,
)

ALL = frozenset({"head", "qk", "vo", "neuron", "layer"})


from _helpers import tiny_whisper as tiny


def test_counts_and_names_shared():
    groups = enumerate_groups(tiny(), GroupSpace(ALL))
    names = [g.name for g in groups]
    assert len(names) == len(set(names))
    # 3 enc self + 2 dec self + 2 dec cross = 7 attention blocks of 4 heads x 16 channels
    by_kind = {k: sum(g.kind == k for g in groups) for k in ALL}
    assert by_kind == {"head": 28, "qk": 7 * 16, "vo": 7 * 16, "neuron": 5 * 128, "layer": 5}
    assert "encoder.2.self_attn.qk.7" in names and "decoder.1.cross_attn.head.0" in names
    assert "decoder.0.ffn.neuron.17" in names and "encoder.2.layer" in names
    head = next(g for g in groups if g.name == "encoder.0.self_attn.head.1")
    assert head.block == "encoder.0.self_attn"
    # q (w+b), k, v (w+b) rows 16..31 and out_proj columns 16..31
    assert head.params == 3 * 16 * 64 + 2 * 16 + 64 * 16
    q = next(s for s in head.slices if s.param.endswith("q_proj.weight"))
    assert q.param == "model.encoder.layers.0.self_attn.q_proj.weight" and q.index == tuple(range(16, 32))
    qk = next(g for g in groups if g.name == "encoder.0.self_attn.qk.3")
    assert next(s for s in qk.slices if s.param.endswith("k_proj.weight")).index == (3, 19, 35, 51)


def test_layer_group_counts_every_parameter():
    model = tiny()
    layer = next(g for g in enumerate_groups(model, GroupSpace({"layer"})) if g.name == "decoder.1.layer")
    assert layer.params == sum(p.numel() for p in model.model.decoder.layers[1].parameters())


def test_per_head_pattern_and_component_filter():
    groups = enumerate_groups(tiny(), GroupSpace({"qk", "vo"}, "per_head", {"decoder.cross_attn"}))
    assert {g.component for g in groups} == {"cross_attn"}
    assert len(groups) == 2 * 2 * 4 * 16
    g = next(g for g in groups if g.name == "decoder.1.cross_attn.vo.h1.9")
    assert (g.head, g.index) == (1, 9)
    assert next(s for s in g.slices if s.param.endswith("out_proj.weight")).index == (16 + 9,)
    assert g.params == 64 + 1 + 64


def test_bad_space_lists_all_problems():
    with pytest.raises(GroupError) as err:
        GroupSpace({"heads", "neuron"}, "every", {"encoder.cross_attn"})
    msg = str(err.value)
    assert "'heads'" in msg and "channel_pattern" in msg and "encoder.cross_attn" in msg


def test_names_parse_and_range_errors():
    model = tiny()
    assert parse_name("encoder.2.self_attn.qk.h1.7").head == 1
    assert parse_name("decoder.1.layer").kind == "layer"
    assert parse_name("encoder.2.attn.head.1") is None
    assert "layers 0..2" in name_problem(model, "encoder.3.layer")
    assert "heads 0..3" in name_problem(model, "decoder.1.cross_attn.vo.h4.2")
    assert "no cross_attn" in name_problem(model, "encoder.0.cross_attn.head.0")
    assert name_problem(model, "decoder.1.ffn.neuron.127") is None
    assert "encoder.0.ffn.neuron.{0..127}" in valid_names(model)


def test_zero_groups_zeroes_exactly_the_slices():
    model = tiny()
    g = next(g for g in enumerate_groups(model, GroupSpace({"neuron"})) if g.name == "encoder.1.ffn.neuron.5")
    zero_groups(model, [g])
    layer = model.model.encoder.layers[1]
    assert layer.fc1.weight[5].abs().sum() == 0 and layer.fc1.bias[5] == 0 and layer.fc2.weight[:, 5].abs().sum() == 0
    assert layer.fc1.weight[4].abs().sum() > 0
