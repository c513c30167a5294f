"""Recovery training (finetune / LoRA merged / distill) on a tiny random pruned Whisper."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from slimwhisper.compress import PrunePlan, apply_plan
from slimwhisper.compress.calib import CalibExample, batch_loss, collate, example_loss
from slimwhisper.models import load_model
from slimwhisper.models.slim import spec_from_model
from slimwhisper.models.testing import tiny_random_loaded
from slimwhisper.train.loop import TrainConfig, TrainError, train
from slimwhisper.train.recover import (
    RecoverConfig,
    RecoverError,
    distill_loss,
    recover,
    save_recovered,
)

SOT, NOTS, EOT = 50257, 50362, 50256
PLAN = {"encoder.0.self_attn.head.1", "decoder.1.cross_attn.head.0", "decoder.0.ffn.neuron.3", "encoder.1.ffn.neuron.7"}


def examples(n=3):
    g = torch.Generator().manual_seed(0)
    return [
        CalibExample(f"u{i}", torch.randn(1, 80, 3000, generator=g), torch.tensor([[SOT, NOTS] + [100 + i, 200, 300][: 2 + i % 2] + [EOT]]), 2, False)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def pruned():
    loaded = tiny_random_loaded()
    apply_plan(loaded.model, PrunePlan(frozenset(PLAN)))
    loaded.spec = spec_from_model(loaded.model)
    return loaded


def cfg(method, steps=3, **kw):
    return RecoverConfig(method, TrainConfig("unused", steps=steps, batch_size=2, lr=1e-3), **kw)


def test_batch_loss_matches_example_loss_and_masks_padding(pruned):
    exs = examples()
    for ex in exs:
        assert float(batch_loss(pruned.model, collate([ex], EOT))) == pytest.approx(float(example_loss(pruned.model, ex).detach()), rel=1e-5)
    batch = collate(exs, EOT)
    assert batch.inputs.shape == (3, 5) and (batch.targets != -100).sum() == sum(ex.tokens.shape[1] - 2 for ex in exs)


def test_loss_decreases_on_a_fixed_batch(pruned):
    model = copy.deepcopy(pruned.model)
    result = train(model, examples(1), TrainConfig("unused", steps=4, batch_size=1, lr=3e-3, grad_clip=None), pad_id=EOT, progress=False)
    assert result.steps == 4 and result.losses[-1] < result.losses[0] - 0.5


def test_training_is_deterministic(pruned):
    a, b = copy.deepcopy(pruned.model), copy.deepcopy(pruned.model)
    config = TrainConfig("unused", steps=2, batch_size=1, lr=1e-3, seed=3)
    ra = train(a, examples(), config, pad_id=EOT, progress=False)
    rb = train(b, examples(), config, pad_id=EOT, progress=False)
    assert ra.losses == rb.losses
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_lora_merge_keeps_spec_and_param_count_and_changes_weights(pruned):
    loaded = copy.deepcopy(pruned)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    n_before = sum(p.numel() for p in loaded.model.parameters())
    flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    recover(loaded, cfg("lora", lora_rank=4), examples=examples(), progress=False)
    assert spec_from_model(loaded.model) == pruned.spec
    assert sum(p.numel() for p in loaded.model.parameters()) == n_before
    after = loaded.model.state_dict()
    assert set(after) == set(before)  # no lora_A / lora_B left behind
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert "model.encoder.layers.0.self_attn.q_proj.weight" in changed and "model.decoder.layers.0.fc2.weight" in changed
    assert not any("layer_norm" in k or "embed" in k for k in changed)  # only the LoRA targets moved
    assert {n: p.requires_grad for n, p in loaded.model.named_parameters()} == flags  # peft's freezing undone


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_spec_never_changes(pruned, method):
    loaded = copy.deepcopy(pruned)
    recover(loaded, cfg(method, steps=2), teacher=tiny_random_loaded(), examples=examples(), progress=False)
    assert loaded.spec == pruned.spec == spec_from_model(loaded.model)
    assert loaded.extra["recovery"]["result"]["steps"] == 2


def test_distill_loss_is_zero_when_student_is_teacher():
    batch = collate(examples(), EOT)
    logits = torch.randn(*batch.inputs.shape, 51864)
    loss, logs = distill_loss(logits, logits.clone(), batch, temperature=2.0, alpha=0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and logs["ce"] > 0
    other, _ = distill_loss(logits, torch.randn_like(logits), batch, temperature=2.0, alpha=0.0)
    assert float(other) > 0.1


@pytest.mark.parametrize("method", ["distill", "layerwise"])
def test_distill_needs_a_teacher(pruned, method):
    with pytest.raises(RecoverError, match="teacher"):
        recover(copy.deepcopy(pruned), cfg(method), examples=examples(), progress=False)


def test_unlabelled_audio_without_a_teacher_is_refused(pruned, tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(4000, "float32"), 16000)
    (tmp_path / "transcripts.tsv").write_text("a\ta.wav\t\n")
    config = RecoverConfig("finetune", TrainConfig(str(tmp_path), steps=1))
    with pytest.raises(RecoverError, match="no reference text"):
        recover(copy.deepcopy(pruned), config, progress=False)


def test_teacher_must_match():
    student = tiny_random_loaded()
    with pytest.raises(RecoverError, match="d_model"):
        recover(student, cfg("distill"), teacher=tiny_random_loaded(d_model=32), examples=examples(), progress=False)


def test_saved_recovered_model_reloads_with_identical_logits(pruned, tmp_path):
    loaded = copy.deepcopy(pruned)
    loaded.extra["pruning"] = {"configs": {"prune": {"score": {"name": "fisher"}}}}
    config = cfg("finetune", steps=1)
    recover(loaded, config, examples=examples(), progress=False)
    out = save_recovered(loaded, tmp_path / "rec", config)
    again = load_model(str(out))
    assert again.spec == pruned.spec
    batch = collate(examples(), EOT)
    with torch.no_grad():
        a = loaded.model(input_features=batch.features, decoder_input_ids=batch.inputs).logits
        b = again.model(input_features=batch.features, decoder_input_ids=batch.inputs).logits
    torch.testing.assert_close(a, b)
    saved = json.loads((out / "pruning.json").read_text())
    assert [set(step) for step in saved["record"]["steps"]] == [PLAN]  # pruning record preserved
    assert saved["configs"]["prune"]["score"]["name"] == "fisher"  # pruning configs preserved
    assert saved["configs"]["recover"]["method"] == "finetune" and saved["configs"]["recover"]["result"]["steps"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_targets": ("proj_out",)}, "lora_targets"),
        ({"distill_alpha": 1.5}, "distill_alpha"),
        ({"method": "prune"}, "method must be one of"),
    ],
)
def test_bad_recover_config(kwargs, message):
    with pytest.raises(RecoverError, match=message):
        RecoverConfig(**{"method": "finetune", "train": TrainConfig("d"), **kwargs})


def test_bad_train_config_lists_every_problem():
    with pytest.raises(TrainError) as err:
        TrainConfig("", n=0, steps=3, epochs=2, lr=-1)
    text = str(err.value)
    assert all(word in text for word in ("train.data", "train.n", "not both", "train.lr"))


@pytest.mark.parametrize("freeze", [True, False])
def test_finetune_freezes_the_tied_embeddings_unless_asked(pruned, freeze):
    loaded = copy.deepcopy(pruned)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    recover(loaded, cfg("finetune", steps=2, freeze_embeddings=freeze), teacher=tiny_random_loaded(), examples=examples(), progress=False)
    after = loaded.model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    embeds = {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"}
    assert "model.decoder.layers.0.fc2.weight" in moved
    assert (moved & embeds) == (set() if freeze else embeds)
    assert torch.equal(after["proj_out.weight"], after["model.decoder.embed_tokens.weight"])  # still tied
