"""Slim folders: save -> reload gives the same model; old loaders fail loudly; user data is safe."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperForConditionalGeneration

from slimwhisper.compress.plan import PrunePlan, PruneRecord
from slimwhisper.compress.surgery import apply_plan
from slimwhisper.errors import UserError
from slimwhisper.models import ModelLoadError, load_model
from slimwhisper.models.slim import spec_from_model
from slimwhisper.models.slimdir import SlimDirError, is_slim_dir, load_slim, save_slim
from slimwhisper.models.testing import tiny_random_loaded

PLAN = PrunePlan(
    {"encoder.1.layer", "encoder.0.self_attn.head.2", "encoder.0.self_attn.qk.3", "encoder.2.ffn.neuron.7",
     "decoder.0.self_attn.vo.h0.1", "decoder.0.self_attn.vo.h1.1", "decoder.0.self_attn.vo.h2.4",
     "decoder.0.self_attn.vo.h3.5", "decoder.1.cross_attn.head.0"}
)  # fmt: skip


@pytest.fixture
def pruned():
    loaded = tiny_random_loaded(encoder_layers=3)
    record = apply_plan(loaded.model, PLAN)
    return loaded, record


def features(seed: int = 0):
    return torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model):
    ids = torch.tensor([[50257, 50362, 400, 1000, 220]])
    return model(input_features=features(), decoder_input_ids=ids).logits


def test_save_reload_identical(pruned, tmp_path):
    loaded, record = pruned
    out = save_slim(loaded, tmp_path / "slim", record=record, configs={"scoring": {"method": "magnitude"}}, source={})
    assert is_slim_dir(out)
    assert "proj_out.weight" not in load_file(str(out / "model.safetensors"))  # tied weight stored once
    back = load_slim(out)
    assert back.kind == "slim" and back.spec == record.spec == spec_from_model(back.model)
    torch.testing.assert_close(logits(back.model), logits(loaded.model), atol=0, rtol=0)
    assert back.model.proj_out.weight is back.model.model.decoder.embed_tokens.weight
    assert sum(p.numel() for p in back.model.parameters()) == back.spec.params()
    assert PruneRecord.from_dict(back.extra["pruning"]["record"]) == record
    assert back.extra["pruning"]["configs"] == {"scoring": {"method": "magnitude"}}
    meta = json.loads((out / "slimwhisper.json").read_text())
    assert meta["source"]["name"] == "tiny-random" and meta["format"] == 1
    seq = loaded.model.generate(features(), max_new_tokens=5)
    assert torch.equal(back.model.generate(features(), max_new_tokens=5), seq)
    assert back.processor.tokenizer.decode([400]) == loaded.processor.tokenizer.decode([400])
    via_registry = load_model(str(out))
    assert via_registry.kind == "slim"
    torch.testing.assert_close(logits(via_registry.model), logits(loaded.model), atol=0, rtol=0)


def test_stock_loader_fails_loudly(pruned, tmp_path):
    loaded, record = pruned
    out = save_slim(loaded, tmp_path / "slim", record=record, configs={}, source={})
    with pytest.raises(Exception, match="slimwhisper"):
        WhisperForConditionalGeneration.from_pretrained(out)


def test_existing_targets_are_protected(pruned, tmp_path):
    loaded, record = pruned
    out = save_slim(loaded, tmp_path / "slim", record=record, configs={}, source={})
    with pytest.raises(UserError, match="already exists"):
        save_slim(loaded, out, record=record, configs={}, source={})
    save_slim(loaded, out, record=record, configs={"again": {}}, source={}, force=True)
    assert json.loads((out / "pruning.json").read_text())["configs"] == {"again": {}}
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a pruned slimwhisper model folder"):
        save_slim(loaded, user, record=record, configs={}, source={}, force=True)
    assert (user / "notes.txt").read_text() == "keep me"
    reloaded = load_slim(out)
    with pytest.raises(UserError, match="input"):
        save_slim(reloaded, out, configs={}, source={}, force=True)
    assert not list(tmp_path.glob(".*tmp-*"))  # no half-written folders left behind


def as_old_folder(out):
    """Make ``out`` look like a folder saved before checksums existed."""
    (out / "checksums.json").unlink()
    meta = json.loads((out / "slimwhisper.json").read_text())
    del meta["checksums"]
    (out / "slimwhisper.json").write_text(json.dumps(meta))
    return out


def test_wrong_shapes_are_named(pruned, tmp_path):
    loaded, record = pruned
    out = as_old_folder(save_slim(loaded, tmp_path / "slim", record=record, configs={}, source={}))
    state = load_file(str(out / "model.safetensors"))
    name = "model.encoder.layers.0.self_attn.q_proj.weight"
    state[name] = torch.zeros(48, 64)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"q_proj.weight: spec says \(45, 64\), file has \(48, 64\)"):
        load_slim(out)


def test_record_mismatch_refused(pruned, tmp_path):
    loaded, _ = pruned
    other = apply_plan(tiny_random_loaded(encoder_layers=3).model, PrunePlan({"encoder.0.layer"}))
    with pytest.raises(SlimDirError, match="other shapes"):
        save_slim(loaded, tmp_path / "slim", record=other, configs={}, source={})


def test_prune_a_reloaded_model_again(pruned, tmp_path):
    loaded, record = pruned
    back = load_slim(save_slim(loaded, tmp_path / "a", record=record, configs={}, source={}))
    # current encoder = dense [0, 2]; current head 1 of encoder.0 is dense head 1 (dense head 2 was removed)
    again = apply_plan(back.model, PrunePlan({"encoder.0.self_attn.head.2", "decoder.0.layer"}))
    assert again.kept_layers == {"encoder": [0, 2], "decoder": [1]}
    assert again.encoder[0].self_attn.heads == (0, 1)
    assert again.encoder[0].self_attn.qk[0] == tuple(c for c in range(16) if c != 3)
    assert len(again.steps) == 2
    out2 = save_slim(back, tmp_path / "b", configs={}, source={})
    final = load_slim(out2)
    assert final.extra["source_model"]["name"] == "tiny-random"
    assert PruneRecord.from_dict(final.extra["pruning"]["record"]) == again
    torch.testing.assert_close(logits(final.model), logits(back.model), atol=0, rtol=0)


# ---- checksums: damage is reported in one line, naming the file ----------------------------------


@pytest.fixture
def saved(pruned, tmp_path):
    loaded, record = pruned
    return loaded, save_slim(loaded, tmp_path / "slim", record=record, configs={}, source={})


def test_every_file_is_checksummed(saved):
    _, out = saved
    sums = json.loads((out / "checksums.json").read_text())["sha256"]
    assert {"model.safetensors", "slimwhisper.json", "config.json", "pruning.json"} <= set(sums)
    assert load_slim(out).sha256 == sums["model.safetensors"]


def test_flipped_bytes_in_weights_are_refused(saved):
    _, out = saved
    data = bytearray((out / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one float: the model would still run
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="is damaged: model.safetensors differs.*re-create the folder") as err:
        load_model(str(out))
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_edited_head_count_with_matching_shapes_is_refused(saved):
    _, out = saved
    meta = json.loads((out / "slimwhisper.json").read_text())
    attn = meta["spec"]["decoder"][1]["cross_attn"]  # 3 heads x 16: edit to 1 head x 48, same shapes
    attn["heads"], attn["qk_dim"], attn["vo_dim"] = attn["heads"] // 3, attn["qk_dim"] * 3, attn["vo_dim"] * 3
    (out / "slimwhisper.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="damaged: slimwhisper.json differs"):
        load_slim(out)
    back = load_slim(as_old_folder(out))  # the checksum is what catches it: shapes alone do not
    assert back.spec.decoder[1].cross_attn.heads == 1


def test_truncated_weights_are_one_clear_error(saved):
    _, out = saved
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="damaged: model.safetensors differs"):
        load_slim(out)
    with pytest.raises(ModelLoadError, match="model.safetensors cannot be read .*truncated: re-create"):
        load_slim(as_old_folder(out))  # no checksum to compare: the reader's error, in one line


def test_missing_checksums_file_is_damage_but_old_folders_load(saved):
    loaded, out = saved
    (out / "checksums.json").rename(out.parent / "elsewhere.json")
    with pytest.raises(ModelLoadError, match="damaged: checksums.json is missing"):
        load_slim(out)
    (out.parent / "elsewhere.json").rename(out / "checksums.json")
    back = load_slim(as_old_folder(out))
    torch.testing.assert_close(logits(back.model), logits(loaded.model), atol=0, rtol=0)
