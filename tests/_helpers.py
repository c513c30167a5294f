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


def tiny_whisper() -> WhisperForConditionalGeneration:
    """A seeded tiny random Whisper (d_model 64, 4 heads, 3 + 2 layers, FFN 128)."""
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=100, num_mel_bins=16, d_model=64, encoder_layers=3, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=20, max_target_positions=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    return WhisperForConditionalGeneration(cfg).eval()
