"""The CTranslate2 -> transformers converter reproduces CTranslate2's own greedy decoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slimwhisper.models.bundled import BUNDLED
from slimwhisper.models.ct2 import read_ct2

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CLIPS = DATA / "librispeech-clean-mini"


def _clips(n: int) -> list[np.ndarray]:
    import soundfile as sf

    tsv = CLIPS / "transcripts.tsv"
    if not tsv.is_file():
        pytest.skip(f"real speech data not found at {CLIPS}")
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    out = []
    for _, rel, _ in rows:
        audio, sr = sf.read(CLIPS / rel, dtype="float32")
        assert sr == 16000
        out.append(audio)
    return out


def _ct2_folder(name: str, tmp: Path) -> Path:
    """A plain CT2 folder ctranslate2 can open (base ships its model.bin in two packages)."""
    bundled = BUNDLED[name]
    if len(bundled.parts) == 1:
        return bundled.files_dir()
    out = tmp / name
    out.mkdir()
    with open(out / "model.bin", "wb") as f:
        for part in bundled.part_paths():
            f.write(part.read_bytes())
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(bundled.files_dir() / extra, out / extra)
    return out


def _strip(tokens: list[int], prompt: list[int], eot: int) -> list[int]:
    while tokens and tokens[0] in prompt:
        tokens = tokens[1:]
    while tokens and tokens[-1] == eot:
        tokens = tokens[:-1]
    return tokens


def _compare_with_ct2(loaded, ct2_dir: Path, prompt_text: list[str], n_clips: int) -> list[str]:
    ctranslate2 = pytest.importorskip("ctranslate2")
    tok = loaded.processor.tokenizer
    prompt = tok.convert_tokens_to_ids(prompt_text)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1)
    kwargs = {"language": "en", "task": "transcribe"} if loaded.multilingual else {}
    texts = []
    for audio in _clips(n_clips):
        # One feature array for both engines: any difference is the model, not the front end.
        feats = loaded.processor(audio, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
        ref = ct2.generate(ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1)[0].sequences_ids[0]
        with torch.inference_mode():
            out = loaded.model.generate(torch.from_numpy(feats), num_beams=1, do_sample=False, **kwargs)
        ours = _strip(out[0].tolist(), prompt, eot)
        assert ours == _strip(list(ref), prompt, eot), tok.decode(ours) + " | ct2: " + tok.decode(ref)
        assert len(ours) > 3  # real speech, not an empty decode
        texts.append(tok.decode(ours, skip_special_tokens=True))
    return texts


def test_reader_parses_every_variable():
    bundled = BUNDLED["tiny.en"]
    (model_bin,) = bundled.part_paths()
    ct2 = read_ct2(model_bin)
    assert ct2.spec_name == "WhisperSpec" and ct2.version == 6
    # 4 encoder layers x 12 + 4 decoder layers x 20 + 20 top-level tensors and scalars.
    assert len(ct2.variables) == 148
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert int(ct2.variables["encoder/num_heads"]) == 6
    total = 0
    for name, arr in ct2.variables.items():
        total += arr.nbytes + len(name)
    # Every byte of the file is accounted for (header + names + dims overhead is small).
    assert 0 < model_bin.stat().st_size - total < 40_000
    # Whisper's key projection has no bias: CT2 stores zeros in the fused [q; k; v] bias.
    fused_bias = ct2.variables["encoder/layer_0/self_attention/linear_0/bias"]
    assert not np.any(fused_bias[384:768])


def test_converted_tiny_en_params_match_spec(tiny_en):
    model = tiny_en.model
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == tiny_en.spec.params() == 37_760_256
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert tiny_en.sha256 == BUNDLED["tiny.en"].sha256
    assert not tiny_en.multilingual and tiny_en.extra["alignment_heads"][0] == [1, 0]
    tok = tiny_en.processor.tokenizer
    assert len(tok) == 51864 and tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50363, 51863]
    gen = model.generation_config
    assert gen.no_timestamps_token_id == 50362 and gen.decoder_start_token_id == 50257
    assert gen.forced_decoder_ids is None and 50357 in gen.suppress_tokens


@pytest.mark.data
def test_tiny_en_greedy_tokens_equal_ctranslate2(tiny_en, tmp_path):
    texts = _compare_with_ct2(
        tiny_en, _ct2_folder("tiny.en", tmp_path), ["<|startoftranscript|>", "<|notimestamps|>"], n_clips=3
    )
    assert "stew for dinner" in texts[0].lower()


@pytest.mark.slow
@pytest.mark.data
def test_base_greedy_tokens_equal_ctranslate2(base_model, tmp_path):
    assert base_model.multilingual
    assert sum(p.numel() for p in base_model.model.parameters()) == base_model.spec.params() == 72_593_920
    gen = base_model.model.generation_config
    assert gen.lang_to_id["<|en|>"] == 50259 and gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    texts = _compare_with_ct2(base_model, _ct2_folder("base", tmp_path), prompt, n_clips=4)
    assert "stew for dinner" in texts[0].lower()


def _ct2_bytes(variables, aliases=(), version=6, trailing=b""):
    """A model.bin in ctranslate2's layout (specs/model_spec.py ``_serialize``)."""
    import struct

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, dtype_id, shape, raw in variables:
        out += string(name) + struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        out += struct.pack("<BI", dtype_id, len(raw)) + raw
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases)
    return out + trailing


def test_reader_dtypes_aliases_and_damage():
    from slimwhisper.models.ct2 import CT2FormatError

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    bf16 = (w.view(np.uint32) >> 16).astype(np.uint16)  # exact for small integers
    variables = [
        ("a/weight", 0, (2, 3), w.tobytes()),
        ("b/weight", 5, (2, 3), bf16.tobytes()),
        ("q/weight", 1, (2, 3), np.array([[127, -127, 0], [1, 2, 3]], np.int8).tobytes()),
        ("q/weight_scale", 0, (2,), np.array([127.0, 2.0], np.float32).tobytes()),
        ("num_heads", 2, (), np.int16(6).tobytes()),
    ]
    model = read_ct2(_ct2_bytes(variables, [("p/weight", "a/weight")]))
    assert np.array_equal(model.get("p/weight"), w) and np.array_equal(model.variables["b/weight"], w)
    assert int(model.variables["num_heads"]) == 6
    assert np.allclose(model.float32("q/weight"), [[1, -1, 0], [0.5, 1, 1.5]])
    with pytest.raises(CT2FormatError, match="version 9"):
        read_ct2(_ct2_bytes(variables, version=9))
    with pytest.raises(CT2FormatError, match="trailing bytes"):
        read_ct2(_ct2_bytes(variables, trailing=b"x"))
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(_ct2_bytes(variables)[:-20])
    with pytest.raises(CT2FormatError, match="unknown dtype id 7"):
        read_ct2(_ct2_bytes([("x", 7, (1,), b"\0")]))
    with pytest.raises(CT2FormatError, match="has 4 bytes, expected 8"):
        read_ct2(_ct2_bytes([("x", 0, (2,), b"\0" * 4)]))
