"""Surgery on the real tiny.en: masked == removed, save -> reload, decoding still runs (slow)."""

from __future__ import annotations

import copy

import pytest
import torch

from slimwhisper.compress.groups import GroupSpace, enumerate_groups, zero_groups
from slimwhisper.compress.plan import PrunePlan
from slimwhisper.compress.surgery import apply_plan
from slimwhisper.models.slim import spec_from_model
from slimwhisper.models.slimdir import load_slim, save_slim

pytestmark = pytest.mark.slow

PLAN = {"encoder.1.self_attn.head.3", "encoder.3.self_attn.qk.5", "encoder.0.ffn.neuron.100",
        "decoder.2.layer", "decoder.0.cross_attn.head.0", "decoder.1.self_attn.vo.h0.7",
        "decoder.1.self_attn.vo.h1.7", "decoder.1.self_attn.vo.h2.7", "decoder.1.self_attn.vo.h3.7",
        "decoder.1.self_attn.vo.h4.7", "decoder.1.self_attn.vo.h5.8"}  # fmt: skip


def test_real_tiny_en_mask_equals_removal_and_reload(tiny_en, tmp_path):
    dense = copy.deepcopy(tiny_en.model)
    masked = copy.deepcopy(dense)
    groups = {g.name: g for g in enumerate_groups(masked, GroupSpace({"head", "qk", "vo", "neuron", "layer"}))}
    groups |= {g.name: g for g in enumerate_groups(masked, GroupSpace({"vo"}, "per_head"))}
    zero_groups(masked, [groups[n] for n in PLAN])
    record = apply_plan(dense, PrunePlan(PLAN))
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[50257, 50362]])  # <|startoftranscript|><|notimestamps|>
    with torch.no_grad():
        a = dense(input_features=feats, decoder_input_ids=ids).logits
        b = masked(input_features=feats, decoder_input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in dense.parameters()) == spec_from_model(dense).params() == record.spec.params()
    loaded = copy.copy(tiny_en)
    loaded.model = dense
    back = load_slim(save_slim(loaded, tmp_path / "slim", record=record, configs={}))
    with torch.no_grad():
        torch.testing.assert_close(back.model(input_features=feats, decoder_input_ids=ids).logits, a, atol=0, rtol=0)
    out = back.model.generate(feats, max_new_tokens=8)
    assert torch.equal(out, dense.generate(feats, max_new_tokens=8))
