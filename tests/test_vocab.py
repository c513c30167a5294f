"""Vocabulary pruning (issue 12): kept-token selection, the sliced model, its id map on every path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import tiny_whisper

from slimwhisper.compress.vocab import (
    VocabConfig,
    VocabError,
    required_ids,
    select_tokens,
)
from slimwhisper.compress.vocabprune import slice_vocab
from slimwhisper.runtime.vocabmap import VOCAB_MAP_FILE, VocabMap, VocabMapError
from slimwhisper.spec import ArchSpec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def tokenizer():
    from slimwhisper.models.testing import tiny_en_processor

    return tiny_en_processor().tokenizer


# ---- selection ----------------------------------------------------------------------------------


def test_selection_keeps_specials_timestamps_and_bytes(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sel = select_tokens(tokenizer, VocabConfig(max_vocab=5000, words=2000), **QUIET)
    kept = set(sel.kept)
    assert len(sel.kept) == 5000 and list(sel.kept) == sorted(kept)
    assert {tokenizer.convert_tokens_to_ids(p) for p in ("Ġ275", "000", "Ġ1840")} <= kept  # every digit token
    assert set(range(eot, 51864)) <= kept  # specials, no-speech, every timestamp
    single = {i for p, i in tokenizer.get_vocab().items() if len(p) == 1}
    assert len(single) >= 256 and single <= kept
    assert tokenizer.convert_tokens_to_ids("Ġthe") in kept  # the corpus's most used token
    assert 0.5 < sel.corpus_coverage < 1.0
    small = select_tokens(tokenizer, VocabConfig(coverage=0.6, words=2000), **QUIET)
    big = select_tokens(tokenizer, VocabConfig(coverage=0.9, words=2000), **QUIET)
    assert set(small.kept) < set(big.kept) and small.corpus_coverage >= 0.6 and big.corpus_coverage >= 0.9


def test_bad_vocab_settings_are_refused(tokenizer):
    with pytest.raises(VocabError, match="unknown vocabulary language 'xx'; known: en"):
        VocabConfig(language="xx")
    with pytest.raises(VocabError) as err:
        VocabConfig(max_vocab=0, coverage=1.5)
    assert "not both" in str(err.value) and "--max-vocab must be" in str(err.value)
    need = len(required_ids(tokenizer))
    with pytest.raises(VocabError, match=f"below the {need} tokens that must be kept"):
        select_tokens(tokenizer, VocabConfig(max_vocab=need - 1, words=100), **QUIET)


def test_training_transcripts_join_the_corpus_and_evaluation_sets_are_refused(tokenizer, tmp_path):
    root = tmp_path / "data"
    (root / "ljspeech" / "audio").mkdir(parents=True)
    (root / "ljspeech" / "dev.tsv").write_text("")  # marks root as a shared/data-like folder with an eval set
    import soundfile as sf

    sf.write(root / "ljspeech" / "audio" / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    (root / "ljspeech" / "train.tsv").write_text("a\taudio/a.wav\tZyxqvortle Brumbelwick spoke.\nb\taudio/a.wav\tSHOUTED LINE\n")
    lines: list[str] = []
    plain = select_tokens(tokenizer, VocabConfig(max_vocab=4500, words=2000), **QUIET)
    withtext = select_tokens(tokenizer, VocabConfig(max_vocab=4500, words=2000, texts=(str(root / "ljspeech" / "train.tsv"),)),
                             log=lines.append)
    rare = set(tokenizer(" Zyxqvortle Brumbelwick", add_special_tokens=False)["input_ids"])
    assert not rare <= set(plain.kept) and rare <= set(withtext.kept)
    assert any("1 training transcripts (1 all-upper-case lines skipped)" in ln for ln in lines)
    with pytest.raises(VocabError, match="is an evaluation set: never choose the vocabulary on it"):
        VocabConfig(texts=(str(root / "ljspeech" / "dev.tsv"),))


# ---- the sliced model -------------------------------------------------------------------------------

KEPT = [0, 1, 2, *range(5, 100, 3)]  # tiny_whisper: pad 0, bos/decoder_start 1, eos 2


def test_sliced_logits_equal_the_dense_logits_at_kept_ids():
    dense, model = tiny_whisper(), tiny_whisper()
    vmap = slice_vocab(model, KEPT)
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight  # still tied
    feats = torch.randn(1, 16, 40)
    ids = [1, 8, 2, 50]
    with torch.no_grad():
        want = dense(input_features=feats, decoder_input_ids=torch.tensor([ids])).logits[..., KEPT]
        got = model(input_features=feats, decoder_input_ids=torch.tensor([vmap.to_new(ids)])).logits
    assert torch.equal(want, got)
    from slimwhisper.models.slim import spec_from_model

    spec = spec_from_model(model)
    assert (spec.vocab, spec.source_vocab) == (len(KEPT), 100)
    assert spec.params() == sum(p.numel() for p in model.parameters())
    assert spec.params() == spec_from_model(dense).params() - (100 - len(KEPT)) * 64
    assert spec.flops()["decoder_token"] < spec_from_model(dense).flops()["decoder_token"]
    assert (model.config.eos_token_id, model.config.decoder_start_token_id) == (2, 1)
    with pytest.raises(VocabError, match="already pruned"):
        slice_vocab(model, [0, 1, 2])


def test_spec_json_without_source_vocab_still_loads():
    spec = ArchSpec.dense(d_model=64, n_mels=16, vocab=100, n_audio_ctx=20, n_text_ctx=32, encoder_layers=1,
                          decoder_layers=1, encoder_heads=4, decoder_heads=4, encoder_ffn=8, decoder_ffn=8)
    d = spec.to_dict()
    assert "source_vocab" not in d and ArchSpec.from_dict(d) == spec
    pruned = ArchSpec.from_dict({**d, "vocab": 40, "source_vocab": 100})
    assert ArchSpec.from_json(pruned.to_json()) == pruned and pruned.params() < spec.params()


def test_generation_config_round_trip_on_base_like_config():
    from transformers import GenerationConfig

    gen = GenerationConfig(decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257,
                           suppress_tokens=[1, 2, 7, 50358, 50362], begin_suppress_tokens=[220, 50257],
                           no_timestamps_token_id=50363, prev_sot_token_id=50361, alignment_heads=[[3, 1], [4, 2]],
                           lang_to_id={"<|en|>": 50259, "<|de|>": 50261}, task_to_id={"transcribe": 50359},
                           forced_decoder_ids=[[1, 50259]])
    kept = sorted({*range(256), *range(50257, 51865)} - {7})
    vmap = VocabMap(tuple(kept), 51865)
    new = vmap.generation_config(gen)
    assert new.decoder_start_token_id == 256 and new.eos_token_id == 255  # 7 is gone: ids shift by one
    assert new.suppress_tokens == [1, 2, vmap.one(50358), vmap.one(50362)]  # 7: removed, needs no suppressing
    assert new.lang_to_id["<|en|>"] == vmap.one(50259) and new.alignment_heads == [[3, 1], [4, 2]]
    assert new.no_timestamps_token_id + 1 == vmap.one(50364)  # timestamp_begin arithmetic still holds
    back = vmap.generation_config(new, inverse=True)
    for name in ("decoder_start_token_id", "eos_token_id", "begin_suppress_tokens", "no_timestamps_token_id",
                 "prev_sot_token_id", "lang_to_id", "task_to_id", "forced_decoder_ids"):
        assert getattr(back, name) == getattr(gen, name), name
    assert back.suppress_tokens == [1, 2, 50358, 50362]
    with pytest.raises(VocabMapError, match="removed by vocabulary pruning"):
        vmap.to_new([7])
    with pytest.raises(VocabMapError, match="ascending"):
        VocabMap((3, 1), 10)


# ---- every path returns original ids ------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_random(tmp_path_factory):
    """A tiny random model (real tiny.en tokenizer) pruned to the required tokens plus what the dense
    model says on one noise clip: greedy decoding must then give the dense tokens exactly."""
    from slimwhisper.models.slimdir import save_slim
    from slimwhisper.models.testing import tiny_random_loaded
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    audio = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    dense = tiny_random_loaded()
    want = TorchTranscriber(dense, DecodeConfig(max_new_tokens=12)).transcribe(audio)
    from slimwhisper.compress.vocabprune import slice_vocab as cut

    pruned = tiny_random_loaded()
    kept = sorted(required_ids(pruned.processor.tokenizer) | set(want.tokens) | set(range(300, 400)))
    cut(pruned.model, kept, "en")
    out = save_slim(pruned, tmp_path_factory.mktemp("vocab") / "slim")
    return audio, want, out, kept


def test_torch_path_returns_original_ids_after_save_and_reload(pruned_random):
    from slimwhisper.models import load_model
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    audio, want, out, kept = pruned_random
    assert json.loads((out / VOCAB_MAP_FILE).read_text())["kept"] == kept
    loaded = load_model(str(out))
    assert loaded.spec.vocab == len(kept) and loaded.spec.source_vocab == 51864
    got = TorchTranscriber(loaded, DecodeConfig(max_new_tokens=12)).transcribe(audio)
    assert got.tokens == want.tokens and got.text == want.text
    assert loaded.model.generation_config.is_multilingual is False


def test_bundle_round_trip_returns_original_ids_and_refuses_a_wrong_map(pruned_random, tmp_path):
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models import load_model
    from slimwhisper.runtime import BundleError, BundleTranscriber
    from slimwhisper.runtime.decode import DecodeOptions

    audio, want, out, kept = pruned_random
    bundle = tmp_path / "b"
    cfg = ExportConfig(quantize="int8", keep_fp32=True, parity_clips=1, parity_max_tokens=8, threads=1)
    manifest = export_bundle(load_model(str(out)), bundle, cfg, log=lambda m: None)
    assert manifest["vocab_map"]["size"] == len(kept) and VOCAB_MAP_FILE in manifest["files"]
    assert manifest["tokenizer"]["eot"] == 50256  # the manifest keeps original ids
    rt = BundleTranscriber(bundle, threads=1, variant="fp32", options=DecodeOptions(max_new_tokens=12))
    got = rt.transcribe(audio)
    assert got.tokens == want.tokens and got.text == want.text
    # the bundle's tokenizer.json holds only kept ids and still encodes any text, in kept tokens
    from tokenizers import Tokenizer

    raw = gzip.decompress((bundle / manifest["tokenizer"]["file"]).read_bytes()).decode()
    tok_file = json.loads(raw)
    assert set(tok_file["model"]["vocab"].values()) <= set(kept) and len(tok_file["model"]["merges"]) < 50000
    small = Tokenizer.from_str(raw)
    ids = small.encode(" Zyxqvortle appropriation", add_special_tokens=False).ids
    assert set(ids) <= set(kept) and small.decode(ids) == " Zyxqvortle appropriation"
    # int8: the embedding lookup still reads the one int8 projection table (shared, not duplicated)
    import onnx

    inits = [i.name for i in onnx.load(str(bundle / "decoder.int8.onnx")).graph.initializer]
    assert sum("proj_out" in n and n.endswith("_Q8") for n in inits) == 1
    bad = {**json.loads((bundle / VOCAB_MAP_FILE).read_text())}
    bad["kept"], bad["size"] = bad["kept"][:-1], bad["size"] - 1
    (bundle / VOCAB_MAP_FILE).write_text(json.dumps(bad))
    with pytest.raises(BundleError) as err:
        BundleTranscriber(bundle, threads=1, variant="fp32", verify=False)
    assert "keeps" in str(err.value) and "\n" not in str(err.value)
    bad["source_vocab"] = 51865
    bad["kept"], bad["size"] = kept, len(kept)
    (bundle / VOCAB_MAP_FILE).write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="tokenizer has 51864"):
        BundleTranscriber(bundle, threads=1, variant="fp32", verify=False)


def test_cli_refuses_unknown_language_and_orphan_max_vocab(tmp_path):
    from _helpers import assert_user_error
    from typer.testing import CliRunner

    from slimwhisper.cli import _register, app

    _register()
    r = CliRunner().invoke(app, ["prune", "--model", "tiny.en", "--vocab", "fr", "--out", str(tmp_path / "o")])
    assert_user_error(r, "unknown vocabulary language 'fr'", "known: en")
    r = CliRunner().invoke(app, ["prune", "--model", "tiny.en", "--max-vocab", "9000", "--out", str(tmp_path / "o")])
    assert_user_error(r, "need --vocab LANG")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "ljspeech" / "dev.tsv").is_file(), reason="needs ../shared/data")
def test_real_tiny_en_transcripts_unchanged_with_the_corpus_vocabulary(tmp_path):
    """tiny.en restricted to every token the English corpus uses (+ what it says on these clips,
    so the check is about the mechanism, not the corpus): the same transcripts, in original ids."""
    import soundfile as sf

    from slimwhisper.data import load_dataset
    from slimwhisper.models import load_model
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    items = load_dataset(DATA / "ljspeech" / "dev.tsv", limit=2).items
    clips = [sf.read(it.path, dtype="float32")[0] for it in items]
    dense = load_model("tiny.en")
    want = [TorchTranscriber(dense, DecodeConfig.whisper()).transcribe(a) for a in clips]
    sel = select_tokens(dense.processor.tokenizer, VocabConfig(max_vocab=20000), **QUIET)
    pruned = load_model("tiny.en")
    slice_vocab(pruned.model, sorted(set(sel.kept) | {t for w in want for t in w.tokens}), "en")
    got = [TorchTranscriber(pruned, DecodeConfig.whisper()).transcribe(a) for a in clips]
    assert [g.text for g in got] == [w.text for w in want] and [g.tokens for g in got] == [w.tokens for w in want]


def test_encoder_falls_back_to_longest_match_when_the_bpe_splits_its_own_words(tokenizer):
    from slimwhisper.compress.vocab import encoder_for
    from slimwhisper.models.bundled import BUNDLED
    from slimwhisper.models.convert import build_tokenizer

    said = []
    assert encoder_for(tokenizer, said.append)([" the"]) == [[tokenizer.convert_tokens_to_ids("Ġthe")]] and not said
    base = build_tokenizer(BUNDLED["base"].tokenizer_json())  # its merges split " the" into " " + "the"
    encode = encoder_for(base, said.append)
    assert said and "longest match" in said[0]
    assert encode([" the importance"]) == [[base.convert_tokens_to_ids("Ġthe"), base.convert_tokens_to_ids("Ġimportance")]]
