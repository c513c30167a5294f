"""Teacher cache (keys, reuse, rebuild for other weights), top-k KL, decoder-side and layer-wise recovery."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slimwhisper.compress import PrunePlan, apply_plan
from slimwhisper.models.slim import spec_from_model
from slimwhisper.models.testing import tiny_random_loaded
from slimwhisper.train.distill import kd_loss, topk_kl
from slimwhisper.train.loop import TrainConfig
from slimwhisper.train.recover import (
    RecoverConfig,
    RecoverError,
    encoder_unchanged,
    recover,
)
from slimwhisper.train.teacher import (
    TeacherCacheError,
    TeacherConfig,
    build_cache,
    collate_cached,
)

SETTINGS = TeacherConfig(top_k=8, hidden_states=True, max_new_tokens=3)
EOT = 50256


def clips(n=3):
    rng = np.random.default_rng(0)
    return [SimpleNamespace(id=f"u{i}", audio=(0.1 * rng.standard_normal(4000 + 800 * i)).astype("float32")) for i in range(n)]


@pytest.fixture(scope="module")
def teacher():
    return tiny_random_loaded()


@pytest.fixture(scope="module")
def cached(teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    cache = build_cache(teacher, clips(), root, SETTINGS, progress=False, log=lambda _m: None)
    return root, cache, [cache[i] for i in range(len(cache))]


def test_cache_holds_the_teachers_view_and_is_reused(teacher, cached):
    root, cache, items = cached
    assert cache.built == 3 and cache.reused == 0 and "MiB" in cache.describe() and cache.bytes > 0
    it = items[0]
    with torch.no_grad():
        logits = teacher.model(input_features=it.features, decoder_input_ids=it.tokens[:, :-1]).logits[0]
    logp = torch.log_softmax(logits[it.n_prefix - 1 :].float(), -1)
    torch.testing.assert_close(it.topk_logp.float(), logp.topk(8, -1).values, atol=2e-3, rtol=1e-3)
    assert it.hidden.shape == (3, 1500, 64) and it.encoder_out.dtype == torch.float16  # 2 layer inputs + last output
    again = build_cache(teacher, clips(), root, SETTINGS, progress=False, log=lambda _m: None)
    assert again.built == 0 and again.reused == 3 and again.folder == cache.folder


def test_other_weights_rebuild_and_never_reuse(teacher, cached):
    root, cache, _ = cached
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.model.model.decoder.layers[0].fc1.weight.mul_(1.01)
    logs = []
    fresh = build_cache(other, clips(1), root, SETTINGS, progress=False, log=logs.append)
    assert fresh.folder != cache.folder and fresh.built == 1 and fresh.reused == 0
    assert any("building" in m and "other teacher weights" in m for m in logs)
    (fresh.folder / cache.files[0].name).write_bytes(cache.files[0].read_bytes())  # a file copied in by hand
    with pytest.raises(TeacherCacheError, match="other teacher weights"):
        build_cache(other, clips(1), root, SETTINGS, progress=False, log=lambda _m: None)[0]


def test_a_folder_of_other_files_is_refused(teacher, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TeacherCacheError, match="not a teacher cache"):
        build_cache(teacher, clips(1), tmp_path, SETTINGS, progress=False)


def test_topk_kl_is_zero_only_for_the_teacher():
    logits = torch.randn(2, 5, 10)
    targets = torch.zeros(2, 5, dtype=torch.long)
    targets[:, :2] = -100
    values, ids = torch.log_softmax(logits, -1).topk(10, -1)
    assert float(topk_kl(logits, values, ids, targets, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(topk_kl(torch.randn(2, 5, 10), values, ids, targets, 2.0)) > 0.01
    # With k < vocabulary the teacher itself must still score 0 at T = 2: both sides are
    # renormalised over the same top-k support (an unnormalised student side made this > 0 and
    # drove over-confident students: 48% WER in the demo).
    values4, ids4 = torch.log_softmax(logits, -1).topk(4, -1)
    assert float(topk_kl(logits, values4, ids4, targets, 2.0)) == pytest.approx(0.0, abs=1e-6)


def _student(teacher, plan):
    s = copy.deepcopy(teacher)
    apply_plan(s.model, PrunePlan(frozenset(plan)))
    s.spec = spec_from_model(s.model)
    return s


def test_decoder_side_recovery_skips_and_keeps_the_encoder(teacher, cached):
    _, _, items = cached
    student = _student(teacher, {"decoder.0.ffn.neuron.3", "decoder.1.self_attn.head.0"})
    assert encoder_unchanged(student, teacher)
    enc_before = {k: v.clone() for k, v in student.model.model.encoder.state_dict().items()}
    dec_before = student.model.model.decoder.layers[0].fc1.weight.clone()
    cfg = RecoverConfig("distill", TrainConfig("unused", steps=2, batch_size=2, lr=1e-3), top_k=8)
    recover(student, cfg, teacher=teacher, examples=items, progress=False, log=lambda _m: None)
    res = student.extra["recovery"]["result"]
    assert res["decoder_side"]["speedup"] > 1 and res["steps"] == 2
    assert all(torch.equal(v, enc_before[k]) for k, v in student.model.model.encoder.state_dict().items())
    assert not torch.equal(student.model.model.decoder.layers[0].fc1.weight, dec_before)
    # the cached encoder output stands in for the encoder: same loss as running it (fp16 rounding aside)
    batch = collate_cached(items[:2], EOT)
    with torch.no_grad():
        a, _ = kd_loss(2.0, 0.5, decoder_only=True)(teacher.model, batch)
        b, _ = kd_loss(2.0, 0.5)(teacher.model, batch)
    assert float(a) == pytest.approx(float(b), rel=1e-2)


def test_layerwise_trains_pruned_encoder_layers_and_refuses_decoder_only(teacher, cached):
    _, _, items = cached
    student = _student(teacher, {"encoder.0.ffn.neuron.3", "encoder.0.self_attn.head.1"})
    assert not encoder_unchanged(student, teacher)
    with pytest.raises(RecoverError, match="encoder differs"):
        recover(copy.deepcopy(student), RecoverConfig("distill", TrainConfig("u", steps=1, batch_size=2), decoder_only=True),
                teacher=teacher, examples=items, progress=False)  # fmt: skip
    cfg = RecoverConfig("layerwise", TrainConfig("unused", steps=1, batch_size=2, lr=1e-4), top_k=8, layerwise_steps=3)
    recover(student, cfg, teacher=teacher, examples=items, progress=False, log=lambda _m: None)
    info = student.extra["recovery"]["result"]["layerwise"]
    assert info["layers"] == [0] and info["steps"] == 3 and "enc0" in info["last_logs"]
    assert student.spec == spec_from_model(student.model)


def test_cached_stem_gives_the_encoders_loss_and_freezes_only_the_stem(teacher, cached):
    _, _, items = cached
    batch = collate_cached(items[:2], EOT)
    with torch.no_grad():  # the cached dense layer-0 input stands in for the stem (fp16 rounding aside)
        a, la = kd_loss(2.0, 0.5, encoder_l2=1.0, cached_stem=True)(teacher.model, batch)
        b, _ = kd_loss(2.0, 0.5, encoder_l2=1.0)(teacher.model, batch)
        silent = dataclasses.replace(batch, features=torch.zeros_like(batch.features))  # the log-mel is never read
        c, _ = kd_loss(2.0, 0.5, encoder_l2=1.0, cached_stem=True)(teacher.model, silent)
    assert float(a) == pytest.approx(float(b), rel=1e-2) and la["enc_l2"] < 1e-4 and float(c) == float(a)
    student = _student(teacher, {"encoder.0.ffn.neuron.3", "decoder.0.ffn.neuron.1"})
    stem = {k: v.clone() for k, v in student.model.model.encoder.state_dict().items() if k.startswith("conv")}
    layer0 = student.model.model.encoder.layers[0].fc1.weight.clone()
    cfg = RecoverConfig("layerwise", TrainConfig("unused", steps=2, batch_size=2, lr=1e-3), top_k=8, layerwise_steps=1,
                        cached_stem=True)  # fmt: skip
    recover(student, cfg, teacher=teacher, examples=items, progress=False, log=lambda _m: None)
    assert all(torch.equal(student.model.model.encoder.state_dict()[k], v) for k, v in stem.items()) and stem
    assert not torch.equal(student.model.model.encoder.layers[0].fc1.weight, layer0)
    for bad, match in (({"method": "distill"}, "only the layerwise"), ({"spec_augment": True}, "never feeds")):
        with pytest.raises(RecoverError, match=match):
            RecoverConfig(**{"method": "layerwise", "train": TrainConfig("u"), "cached_stem": True, **bad})


def test_imp_prunes_in_rounds_to_the_budget_with_the_same_total_steps(teacher, cached, tmp_path):
    import json

    from slimwhisper.models import load_model
    from slimwhisper.train.imp import ImpConfig, run_imp

    _, _, items = cached
    config = ImpConfig(model="tiny-random", out=str(tmp_path / "imp"), train=TrainConfig("unused", steps=3, batch_size=2, lr=1e-4),
                       target_params=0.3, rounds=2, top_k=8)  # fmt: skip
    loaded = run_imp(config, copy.deepcopy(teacher), teacher, items, progress=False, log=lambda _m: None)
    history = loaded.extra["imp"]
    assert [h["steps"] for h in history] == [2, 1] and history[0]["params"] > history[1]["params"]
    again = load_model(str(tmp_path / "imp"))
    def layers(spec):
        return sum(v for k, v in spec.params_by_component().items() if not k.endswith("embed"))

    assert again.spec.params() == loaded.spec.params() < teacher.spec.params()
    assert layers(again.spec) < 0.9 * layers(teacher.spec)
    saved = json.loads((tmp_path / "imp" / "pruning.json").read_text())["configs"]["imp"]
    assert saved["rounds"] == 2 and saved["per_round_fraction"] == pytest.approx(1 - 0.7**0.5)


def test_timestamp_share_labels_some_clips_with_timestamps(teacher, tmp_path):
    """``timestamps``: that share of the clips carries the teacher's timestamped transcript (prompt
    without <|notimestamps|>, first label token a timestamp); the setting has its own cache key and a
    zero share keeps the key of caches built before the field existed; bad values are refused."""
    from slimwhisper.compress.calib import prefix_tokens
    from slimwhisper.train.teacher import cache_key

    stamped = TeacherConfig(top_k=8, max_new_tokens=3, timestamps=0.5)
    cache = build_cache(teacher, clips(4), tmp_path, stamped, progress=False, log=lambda _m: None)
    plain, ts = prefix_tokens(teacher), prefix_tokens(teacher, timestamps=True)
    items = [cache[i] for i in range(4)]
    assert [it.tokens[0, : it.n_prefix].tolist() for it in items] == [plain, ts, plain, ts]
    assert all(it.tokens[0, it.n_prefix] > plain[-1] for it in items[1::2])  # a timestamp token opens the label
    assert all(it.topk_ids.shape[0] == it.tokens.shape[1] - it.n_prefix for it in items)
    assert "timestamps" not in TeacherConfig().to_dict()
    assert cache_key("w" * 64, stamped) != cache_key("w" * 64, TeacherConfig(top_k=8, max_new_tokens=3))
    with pytest.raises(TeacherCacheError, match="share of the clips"):
        TeacherConfig(timestamps=2)
    with pytest.raises(RecoverError, match="needs a teacher method"):
        RecoverConfig("finetune", TrainConfig("unused"), timestamps=0.5)
