"""Surgery removes weights for real: masked dense == physically pruned, shapes, guards, records."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from slimwhisper.compress.groups import GroupSpace, enumerate_groups, zero_groups
from slimwhisper.compress.plan import PlanError, PrunePlan, PruneRecord
from slimwhisper.compress.surgery import apply_plan
from slimwhisper.models.slim import SlimWhisperAttention, spec_from_model

from _helpers import tiny_whisper

ALL = frozenset({"head", "qk", "vo", "neuron", "layer"})
N_MELS, FRAMES = 16, 40


def tiny(seed: int = 0, attn: str = "sdpa") -> WhisperForConditionalGeneration:
    # Non-zero biases so that bias handling is exercised; no suppression lists (raw argmax).
    return tiny_whisper(seed, attn, noisy_bias=True, num_mel_bins=N_MELS, max_source_positions=FRAMES // 2,
                        begin_suppress_tokens=None, suppress_tokens=None)


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, N_MELS, FRAMES, generator=g), torch.randint(3, 100, (2, 7), generator=g)


@torch.no_grad()
def logits(model):
    feats, ids = inputs()
    return model(input_features=feats, decoder_input_ids=ids).logits


def masked_and_pruned(names: set[str], seed: int = 0, attn: str = "sdpa"):
    dense = tiny(seed, attn)
    groups = {g.name: g for g in enumerate_groups(dense, GroupSpace(ALL, "shared"))}
    groups |= {g.name: g for g in enumerate_groups(dense, GroupSpace({"qk", "vo"}, "per_head"))}
    masked = copy.deepcopy(dense)
    zero_groups(masked, [groups[n] for n in names])
    record = apply_plan(dense, PrunePlan(names))
    return masked, dense, record


def assert_consistent(model):
    assert sum(p.numel() for p in model.parameters()) == spec_from_model(model).params()
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight


PLANS = {
    "heads": {"encoder.0.self_attn.head.1", "encoder.2.self_attn.head.3", "decoder.1.self_attn.head.0",
              "decoder.0.cross_attn.head.2", "decoder.0.cross_attn.head.3"},
    "qk_shared": {"encoder.1.self_attn.qk.0", "encoder.1.self_attn.qk.9", "decoder.0.self_attn.qk.4",
                  "decoder.1.cross_attn.qk.15"},
    "qk_per_head": {f"encoder.0.self_attn.qk.h{h}.{c}" for h, c in enumerate((3, 7, 0, 15))}
    | {f"decoder.1.cross_attn.qk.h{h}.{c}" for h, c in enumerate((1, 2, 3, 4))},
    "vo_shared": {"encoder.2.self_attn.vo.5", "decoder.0.cross_attn.vo.1", "decoder.1.self_attn.vo.11"},
    "vo_per_head": {f"decoder.0.self_attn.vo.h{h}.{c}" for h, c in enumerate((9, 9, 2, 14))},
    "neurons": {"encoder.0.ffn.neuron.5", "encoder.0.ffn.neuron.100", "decoder.1.ffn.neuron.0"},
    "layers": {"encoder.1.layer", "decoder.0.layer"},
    "mixed": {"encoder.0.self_attn.head.0", "encoder.0.self_attn.qk.h1.2", "encoder.0.self_attn.qk.h2.2",
              "encoder.0.self_attn.qk.h3.4", "encoder.0.self_attn.vo.3", "encoder.0.ffn.neuron.9",
              "decoder.1.layer", "decoder.0.cross_attn.head.1", "decoder.0.cross_attn.vo.h0.1",
              "decoder.0.cross_attn.vo.h2.1", "decoder.0.cross_attn.vo.h3.6"},
}  # fmt: skip


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_masking_equals_removal(plan):
    masked, pruned, _ = masked_and_pruned(PLANS[plan])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in masked.parameters())
    torch.testing.assert_close(logits(pruned), logits(masked), atol=1e-5, rtol=1e-5)
    assert_consistent(pruned)


def test_masking_equals_removal_eager_attention():
    # the export path traces eager attention: Q/K width != V/O width must work there too
    masked, pruned, _ = masked_and_pruned(PLANS["mixed"], attn="eager")
    assert pruned.config._attn_implementation == "eager"
    torch.testing.assert_close(logits(pruned), logits(masked), atol=1e-5, rtol=1e-5)


def test_shapes_after_uneven_plan():
    _, model, record = masked_and_pruned(PLANS["mixed"])
    spec = spec_from_model(model)
    enc0 = spec.encoder[0].self_attn
    # head 0 gone; per-head Q/K channel removed from heads 1,2,3 (head 0's is moot); V/O 3 from all
    assert (enc0.heads, enc0.qk_dim, enc0.vo_dim, enc0.scale_dim) == (3, 15, 15, 16)
    assert spec.encoder[0].ffn_dim == 127 and spec.encoder[1].self_attn.heads == 4
    assert [ly.source_index for ly in spec.decoder] == [0]
    cross = spec.decoder[0].cross_attn
    assert (cross.heads, cross.qk_dim, cross.vo_dim) == (3, 16, 15)
    assert record.spec == spec and record.kept_layers == {"encoder": [0, 1, 2], "decoder": [0]}
    assert record.encoder[0].self_attn.heads == (1, 2, 3)
    assert record.encoder[0].self_attn.qk[0] == tuple(c for c in range(16) if c != 2)
    assert record.decoder[0].cross_attn.vo[1] == tuple(c for c in range(16) if c != 1)  # dense head 2
    assert model.config.decoder_layers == 1 and model.config.encoder_layers == 3


def test_qk_pruning_keeps_softmax_scale():
    masked, pruned, _ = masked_and_pruned({f"encoder.1.self_attn.qk.{c}" for c in range(6)})
    attn = pruned.model.encoder.layers[1].self_attn
    assert isinstance(attn, SlimWhisperAttention) and attn.qk_dim == 10
    assert attn.scaling == 16**-0.5
    torch.testing.assert_close(logits(pruned), logits(masked), atol=1e-5, rtol=1e-5)


def _scores(model, **kw):
    feats, _ = inputs()
    out = model.generate(feats, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_with_cache_after_layer_removal(beams):
    _, model, _ = masked_and_pruned(PLANS["layers"] | {"decoder.1.self_attn.head.1", "decoder.1.cross_attn.qk.2"})
    assert [a.layer_idx for layer in model.model.decoder.layers for a in (layer.self_attn, layer.encoder_attn)] == [0, 0]
    seq_cache, sc_cache = _scores(model, num_beams=beams, use_cache=True)
    seq_plain, sc_plain = _scores(model, num_beams=beams, use_cache=False)
    assert torch.equal(seq_cache, seq_plain)
    torch.testing.assert_close(sc_cache, sc_plain, atol=1e-4, rtol=1e-4)


def test_guards_report_every_problem():
    model = tiny()
    names = {f"encoder.0.self_attn.head.{h}" for h in range(4)}
    names |= {"encoder.1.self_attn.qk.h0.1", "encoder.1.self_attn.qk.h0.2", "encoder.1.self_attn.qk.h1.1"}
    names |= {f"decoder.0.cross_attn.vo.{c}" for c in range(16)}
    names |= {f"decoder.1.ffn.neuron.{n}" for n in range(128)}
    with pytest.raises(PlanError) as err:
        apply_plan(model, PrunePlan(names))
    msg = str(err.value)
    assert "encoder.0.self_attn: the plan removes all 4 heads" in msg and "encoder.0.layer" in msg
    assert "encoder.1.self_attn: per-head Q/K channel removal leaves unequal head widths" in msg
    assert "decoder.0.cross_attn: the plan removes every V/O channel" in msg
    assert "decoder.1.ffn: the plan removes every FFN neuron" in msg
    assert spec_from_model(model) == spec_from_model(tiny())  # nothing touched


def test_all_layers_and_unknown_names_refused():
    model = tiny()
    with pytest.raises(PlanError, match="decoder: the plan removes all 2 layers"):
        apply_plan(model, PrunePlan({"decoder.0.layer", "decoder.1.layer"}))
    with pytest.raises(PlanError) as err:
        apply_plan(model, PrunePlan({"encoder.3.layer", "decoder.0.self_attn.head.4"}))
    assert "encoder has layers 0..2" in str(err.value) and "decoder.0.self_attn.head.{0..3}" in str(err.value)
    with pytest.raises(PlanError, match="not a group name"):
        PrunePlan({"encoder.0.attn.head.1"})
    # a layer removed together with all its heads is fine: the heads go with the layer
    apply_plan(model, PrunePlan({"encoder.0.layer"} | {f"encoder.0.self_attn.head.{h}" for h in range(4)}))


def test_pruning_twice_composes_record_and_matches_dense_mask():
    dense = tiny()
    masked = copy.deepcopy(dense)
    groups = {g.name: g for g in enumerate_groups(masked, GroupSpace(ALL))}
    # dense heads 1 and 2 of encoder.2, dense layers 0 and 1 of the encoder, dense neuron 5 of decoder.1
    zero_groups(masked, [groups[n] for n in ("encoder.2.self_attn.head.1", "encoder.2.self_attn.head.2",
                                             "encoder.0.layer", "encoder.1.layer", "decoder.1.ffn.neuron.5")])  # fmt: skip
    apply_plan(dense, PrunePlan({"encoder.0.layer", "encoder.2.self_attn.head.1"}))
    record = apply_plan(dense, PrunePlan({"encoder.0.layer", "encoder.1.self_attn.head.1", "decoder.1.ffn.neuron.5"}))
    assert record.kept_layers["encoder"] == [2]
    assert record.encoder[0].self_attn.heads == (0, 3)
    assert 5 not in record.decoder[1].ffn and len(record.decoder[1].ffn) == 127
    assert len(record.steps) == 2 and dense.model.encoder.layers[0].slim_source_index == 2
    torch.testing.assert_close(logits(dense), logits(masked), atol=1e-5, rtol=1e-5)
    assert_consistent(dense)


def test_plan_and_record_json_round_trip(tmp_path):
    plan = PrunePlan(PLANS["mixed"])
    plan.save(tmp_path / "plan.json")
    assert PrunePlan.load(tmp_path / "plan.json") == plan
    with pytest.raises(PlanError, match="remove"):
        PrunePlan.from_json('{"drop": []}')
    _, _, record = masked_and_pruned(PLANS["mixed"])
    assert PruneRecord.from_json(record.to_json()) == record


def test_alignment_heads_follow_the_surgery():
    model = tiny()
    model.generation_config.alignment_heads = [[0, 1], [1, 0], [1, 3]]
    apply_plan(model, PrunePlan({"decoder.0.layer", "decoder.1.cross_attn.head.0"}))
    assert model.generation_config.alignment_heads == [[0, 2]]
