"""Recovery of a vocabulary-pruned model (issue 12): teacher targets respelled in the kept tokens."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slimwhisper.compress.calib import CalibExample
from slimwhisper.compress.vocab import required_ids
from slimwhisper.compress.vocabprune import slice_vocab
from slimwhisper.models.testing import tiny_en_processor, tiny_random_loaded
from slimwhisper.runtime.vocabmap import VocabMap
from slimwhisper.train.loop import TrainConfig, pad_id_of
from slimwhisper.train.recover import (
    RecoverConfig,
    RecoverError,
    check_teacher,
    recover,
    save_recovered,
)
from slimwhisper.train.respell import NO_MASS, Speller, respell_example, respell_item
from slimwhisper.train.teacher import (
    TeacherConfig,
    TeacherItem,
    build_cache,
    collate_cached,
)

QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_en_processor().tokenizer


def ids_of(tokenizer, *pieces):
    return [tokenizer.convert_tokens_to_ids(p) for p in pieces]


@pytest.fixture(scope="module")
def speller(tokenizer):
    """Required tokens + ' the', ' Ch', 'ap', 'ter', ' exp', 'ended': ' Chapter' and ' expended' are removed."""
    kept = required_ids(tokenizer) | set(ids_of(tokenizer, "Ġthe", "ĠCh", "ap", "ter", "Ġexp", "ended"))
    return Speller.for_tokenizer(VocabMap(tuple(sorted(kept)), 51864, "en"), tokenizer)


def test_removed_tokens_are_spelled_with_the_fewest_kept_pieces(tokenizer, speller):
    vm = speller.vmap
    (chapter,) = ids_of(tokenizer, "ĠChapter")
    spelled = vm.to_orig(speller.spell(chapter))
    assert spelled == ids_of(tokenizer, "ĠCh", "ap", "ter")  # 3 pieces, not 8 bytes
    assert tokenizer.decode(spelled) == " Chapter"
    (the,) = ids_of(tokenizer, "Ġthe")
    assert speller.spell(the) == tuple(vm.to_new([the]))  # a kept token is itself
    (rare,) = ids_of(tokenizer, "Ġjuveniles")  # nothing but bytes and ' the' kept for it
    assert tokenizer.decode(vm.to_orig(speller.spell(rare))) == " juveniles"


def _item(tokenizer, text_ids, k=4):
    prefix = ids_of(tokenizer, "<|startoftranscript|>", "<|notimestamps|>")
    eot = ids_of(tokenizer, "<|endoftext|>")
    tokens = torch.tensor([prefix + text_ids + eot])
    n = len(text_ids) + 1
    ids = torch.tensor([[t, *ids_of(tokenizer, "ĠChapter", "Ġexpended", "Ġthe")][:k] for t in text_ids + eot], dtype=torch.int32)
    logp = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]] * n)).half()
    return TeacherItem("u0", torch.zeros(1, 80, 3000), tokens, len(prefix), torch.zeros(1500, 8).half(), logp, ids)


def test_teacher_item_respelled_keeps_the_text_and_moves_removed_mass_to_first_pieces(tokenizer, speller):
    vm = speller.vmap
    text = ids_of(tokenizer, "Ġthe", "ĠChapter")
    item = _item(tokenizer, text)
    out = respell_item(item, speller)
    assert tokenizer.decode(vm.to_orig(out.tokens[0].tolist())) == tokenizer.decode(item.tokens[0].tolist())
    assert out.n_prefix == item.n_prefix and out.topk_ids.shape == (1 + 3 + 1, 4)  # ' the', Ch/ap/ter, eot
    assert all(len(set(r.tolist())) == 4 for r in out.topk_ids)  # no id twice in a row (KL normaliser)
    ch, exp, the = vm.to_new(ids_of(tokenizer, "ĠCh", "Ġexp", "Ġthe"))
    row = dict(zip(out.topk_ids[0].tolist(), out.topk_logp[0].float().tolist()))
    # position 0 (target ' the'): ' the' twice in the teacher's row (0.4 + 0.1), ' Chapter' -> ' Ch', ' expended' -> ' exp'
    assert math.exp(row[the]) == pytest.approx(0.5, rel=1e-2) and math.exp(row[ch]) == pytest.approx(0.3, rel=1e-2)
    assert math.exp(row[exp]) == pytest.approx(0.2, rel=1e-2) and min(row.values()) == NO_MASS
    # positions inside the spelling of ' Chapter': one-hot on the piece
    for pos, piece in ((2, "ap"), (3, "ter")):
        assert out.topk_ids[pos, 0] == vm.to_new(ids_of(tokenizer, piece))[0] and float(out.topk_logp[pos, 0]) == 0.0
        assert float(out.topk_logp[pos, 1:].max()) == NO_MASS
    batch = collate_cached([out], pad_id=vm.to_new(ids_of(tokenizer, "<|endoftext|>"))[0])
    assert batch.targets.shape[1] == out.tokens.shape[1] - 1 and int((batch.targets >= 0).sum()) == 5
    ex = respell_example(CalibExample("u0", item.features, item.tokens, item.n_prefix, True), speller)
    assert ex.tokens.tolist() == out.tokens.tolist()


def _vocab_student(teacher, kept):
    student = copy.deepcopy(teacher)
    slice_vocab(student.model, kept, "en")
    from slimwhisper.models.slim import spec_from_model

    student.spec = spec_from_model(student.model)
    return student


def test_distill_trains_a_vocabulary_pruned_model_on_respelled_targets(tmp_path):
    teacher = tiny_random_loaded()
    rng = np.random.default_rng(0)
    clips = [SimpleNamespace(id=f"u{i}", audio=(0.1 * rng.standard_normal(4000 + 3000 * i)).astype("float32")) for i in range(2)]
    cache = build_cache(teacher, clips, tmp_path, TeacherConfig(top_k=8, max_new_tokens=4), progress=False, **QUIET)
    items = [cache[i] for i in range(len(cache))]
    said = {int(t) for it in items for t in it.tokens[0, it.n_prefix:-1]}
    kept = sorted(required_ids(teacher.processor.tokenizer) | set(range(300, 400)))
    student = _vocab_student(teacher, kept)
    logs: list[str] = []
    before = student.model.model.decoder.layers[0].fc1.weight.clone()
    cfg = RecoverConfig("distill", TrainConfig("unused", steps=2, batch_size=2, lr=1e-3), top_k=8)
    recover(student, cfg, teacher=teacher, examples=items, progress=False, log=logs.append)
    gone = len([t for it in items for t in it.tokens[0, it.n_prefix:-1].tolist() if t not in set(kept)])
    assert any(f"{gone} of" in m and "respelled" in m for m in logs) and (gone > 0) == bool(said - set(kept))
    assert student.extra["recovery"]["result"]["steps"] == 2 and student.spec.vocab == len(kept)
    assert pad_id_of(student) == kept.index(50256)  # end-of-text pads, in the model's ids
    assert not torch.equal(student.model.model.decoder.layers[0].fc1.weight, before)
    from slimwhisper.models import load_model

    again = load_model(str(save_recovered(student, tmp_path / "out", cfg)))  # the id map travels with the weights
    assert again.model.slim_vocab.kept == tuple(kept) and again.spec == student.spec


def test_teacher_must_be_the_unpruned_source():
    teacher = tiny_random_loaded()
    kept = sorted(required_ids(teacher.processor.tokenizer))
    student = _vocab_student(teacher, kept)
    check_teacher(student, teacher)  # source vocabulary 51,864 = the teacher's: fine
    with pytest.raises(RecoverError, match="teacher's vocabulary is pruned"):
        check_teacher(student, student)
    other = tiny_random_loaded(vocab_size=51865)
    with pytest.raises(RecoverError, match="vocab_size: student 51864 before vocabulary pruning vs teacher 51865"):
        check_teacher(student, other)
