"""Parity of the exported graphs with PyTorch on real (or synthetic) audio.

Three checks, each reported per output: encoder max |diff| (hidden states and every cross K/V),
decoder logits max |diff| per step (teacher-forced along PyTorch's greedy path, so a single
flipped token cannot hide or inflate later differences), and greedy token agreement of the
runtime's own decode loop. fp32 must pass the tolerances (``ParityError`` otherwise); quantized
and fp16 variants are reported, not failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimwhisper.export.config import ParityTolerance

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


class ParityError(AssertionError):
    """An exported graph differs from PyTorch beyond tolerance; ``report`` has every figure."""

    def __init__(self, problems: list[str], report: ParityReport):
        self.problems, self.report = problems, report
        super().__init__("ONNX export does not match PyTorch:\n  - " + "\n  - ".join(problems))


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@dataclass
class ClipParity:
    clip: str
    encoder_max_abs: dict[str, float]
    logits_max_abs_per_step: list[float]
    torch_tokens: list[int]
    onnx_tokens: list[int]
    encoder_scale: dict[str, float] = field(default_factory=dict)  # max|torch output|, per output

    @property
    def tokens_equal(self) -> bool:
        return self.torch_tokens == self.onnx_tokens

    @property
    def token_agreement(self) -> float:
        """1 - token edit distance / longer length (an insertion does not count every later token)."""
        a, b = self.torch_tokens, self.onnx_tokens
        return 1.0 - edit_distance(a, b) / max(len(a), len(b), 1)


@dataclass
class ParityReport:
    variant: str
    clips: list[ClipParity] = field(default_factory=list)

    def summary(self) -> dict:
        enc = max((max(c.encoder_max_abs.values()) for c in self.clips), default=0.0)
        logit = max((max(c.logits_max_abs_per_step, default=0.0) for c in self.clips), default=0.0)
        return {
            "variant": self.variant,
            "clips": len(self.clips),
            "encoder_max_abs": enc,
            "logits_max_abs": logit,
            "tokens_identical": all(c.tokens_equal for c in self.clips),
            "token_agreement": float(np.mean([c.token_agreement for c in self.clips])) if self.clips else 1.0,
            "per_clip": [
                {**asdict(c), "tokens_equal": c.tokens_equal, "token_agreement": c.token_agreement}
                for c in self.clips
            ],
        }

    def problems(self, tol: ParityTolerance) -> list[str]:
        out = []
        for c in self.clips:
            for name, diff in c.encoder_max_abs.items():
                # fp32 reassociation error grows with the activations' size (a fine-tuned encoder's
                # hidden states reach |x| ~ 1e2), so the bound is relative above magnitude 1.
                allowed = tol.encoder * max(1.0, c.encoder_scale.get(name, 1.0))
                if not diff <= allowed:
                    out.append(f"{c.clip}: encoder output {name} max|diff| {diff:.3g} > {allowed:.3g}"
                               f" ({tol.encoder:g} x max(1, max|torch| = {c.encoder_scale.get(name, 1.0):.3g}))")
            for step, diff in enumerate(c.logits_max_abs_per_step):
                if not diff <= tol.logits:
                    out.append(f"{c.clip}: logits at step {step} max|diff| {diff:.3g} > {tol.logits:g}")
            if tol.tokens_must_match and not c.tokens_equal:
                out.append(f"{c.clip}: greedy tokens differ: torch {c.torch_tokens} vs onnx {c.onnx_tokens}")
        return out


def parity_audio(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``n`` clips of librispeech-clean-mini (real speech), else synthetic tones + noise."""
    tsv = DATA / "librispeech-clean-mini" / "transcripts.tsv"
    if tsv.is_file():
        import soundfile as sf

        out = []
        for line in tsv.read_text().splitlines()[:n]:
            clip_id, rel = line.split("\t")[:2]
            audio, sr = sf.read(tsv.parent / rel, dtype="float32")
            if sr == 16000:
                out.append((clip_id, audio))
        if out:
            return out
    rng = np.random.default_rng(seed)
    t = np.arange(16000 * 3) / 16000
    return [(f"synthetic{i}", (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size))
             .astype(np.float32)) for i in range(n)]


def torch_encoder(model, features: np.ndarray) -> dict[str, np.ndarray]:
    """The reference encoder outputs, computed by the untouched PyTorch modules."""
    with torch.no_grad():
        x = torch.from_numpy(features)
        hidden = model.model.encoder(x).last_hidden_state
        out = {"encoder_hidden_states": hidden.numpy()}
        for i, layer in enumerate(model.model.decoder.layers):
            a = layer.encoder_attn
            qk, vo = getattr(a, "qk_dim", a.head_dim), getattr(a, "vo_dim", a.head_dim)
            b, t = hidden.shape[:2]
            out[f"cross_k.{i}"] = a.k_proj(hidden).view(b, t, a.num_heads, qk).transpose(1, 2).numpy()
            out[f"cross_v.{i}"] = a.v_proj(hidden).view(b, t, a.num_heads, vo).transpose(1, 2).numpy()
    return out


def torch_greedy(model, features: np.ndarray, prompt: list[int], *, eot: int, suppress: list[int],
                 begin_suppress: list[int], max_new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding with transformers' own forward + cache: tokens and each step's last logits."""
    tokens, logits_out = [], []
    with torch.no_grad():
        enc = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        ids = torch.tensor([prompt])
        limit = min(max_new_tokens, model.config.max_target_positions - len(prompt))
        for t in range(limit):
            out = model(encoder_outputs=(enc,), decoder_input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            last = out.logits[0, -1].float().clone()
            logits_out.append(last.numpy().copy())
            if suppress:
                last[suppress] = -float("inf")
            if t == 0 and begin_suppress:
                last[begin_suppress] = -float("inf")
            token = int(last.argmax())
            if token == eot:
                break
            tokens.append(token)
            ids = torch.tensor([[token]])
    return tokens, logits_out


def check_parity(model, bundle_dir: Path, variant: str, *, clips: int, max_new_tokens: int,
                 tolerance: ParityTolerance | None, threads: int = 2) -> ParityReport:
    """Compare one bundle variant with PyTorch; raise ``ParityError`` if ``tolerance`` is given and exceeded."""
    from slimwhisper.runtime.bundle import BundleTranscriber

    rt = BundleTranscriber(bundle_dir, threads=threads, variant=variant, verify=False)
    m = rt.manifest
    eot = m["tokenizer"]["eot"]
    report = ParityReport(variant)
    was = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        for clip_id, audio in parity_audio(clips):
            feats = rt.features(audio)
            ref = torch_encoder(model, feats)
            got = dict(zip([o.name for o in rt.decoder.encoder.get_outputs()],
                           rt.decoder.encoder.run(None, {"input_features": feats.astype(rt.decoder.dtype)})))
            cross = {k: got[k] for k in rt.decoder.cross_names}
            enc_diff = {k: float(np.max(np.abs(got[k].astype(np.float32) - v))) for k, v in ref.items()}
            enc_scale = {k: float(np.max(np.abs(v))) for k, v in ref.items()}
            prompt = rt.prompt("en" if rt.multilingual else None)
            want, want_logits = torch_greedy(model, feats, prompt, eot=eot, suppress=m["decode"]["suppress_tokens"],
                                             begin_suppress=m["decode"]["begin_suppress_tokens"],
                                             max_new_tokens=max_new_tokens)
            force = want + [eot] if len(want_logits) > len(want) else list(want)
            forced = rt.decoder.greedy(cross, prompt, max_new_tokens, keep_logits=True, force=force)
            diffs = [float(np.max(np.abs(a - b))) for a, b in zip(forced.logits, want_logits)]
            free = rt.decoder.greedy(cross, prompt, max_new_tokens)
            report.clips.append(ClipParity(clip_id, enc_diff, diffs, want, free.tokens, enc_scale))
    finally:
        model.set_attn_implementation(was)
    if tolerance is not None:
        problems = report.problems(tolerance)
        if problems:
            raise ParityError(problems, report)
    return report
