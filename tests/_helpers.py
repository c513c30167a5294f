"""Small builders shared by several test modules (imported as ``from _helpers import ...``)."""

import numpy as np
import soundfile as sf
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration


def write_manifest(folder, n=2):
    """``n`` short noise clips with text, as a ``transcripts.tsv`` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        sf.write(folder / f"u{i}.wav", (0.1 * rng.standard_normal(8000)).astype("float32"), 16000)
        lines.append(f"u{i}\tu{i}.wav\tgood morning {i}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


TINY = dict(
    vocab_size=100, num_mel_bins=16, d_model=64, encoder_layers=3, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
    max_source_positions=20, max_target_positions=32, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, decoder_start_token_id=1,
)  # fmt: skip


def tiny_config(**overrides) -> WhisperConfig:
    """The one tiny Whisper config of the tests (d_model 64, 4 heads, 3 + 2 layers, FFN 128);
    ``overrides`` are WhisperConfig fields. (``slimwhisper.models.testing.tiny_random_loaded`` is
    the same idea with the real tiny.en tokenizer, for tests that decode text.)"""
    return WhisperConfig(**{**TINY, **overrides})


def tiny_whisper(seed: int = 0, attn: str = "sdpa", noisy_bias: bool = False,
                 **overrides) -> WhisperForConditionalGeneration:
    """A seeded tiny random Whisper; ``noisy_bias`` makes every bias non-zero so bias handling is exercised."""
    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    cfg._attn_implementation = attn
    model = WhisperForConditionalGeneration(cfg).eval()
    if noisy_bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.2)
    return model


def assert_user_error(result, *phrases: str) -> None:
    """The CLI's one error shape: exit 2, one ``error:`` line, then only indented problem lines."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.stderr
    assert all(line.startswith("  ") for line in lines[1:]), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)
