"""Parity of the exported graphs with PyTorch on real (or synthetic) audio.

Three checks, each reported per output: encoder max |diff| (hidden states and every cross K/V),
decoder logits max |diff| per step (teacher-forced along PyTorch's greedy path, so a single
flipped token cannot hide or inflate later differences), and greedy token agreement, both sides
decoded by the runtime's one engine (``runtime.engine``) with the bundle's suppression rules. fp32 must pass the tolerances (``ParityError`` otherwise); quantized
and fp16 variants are reported, not failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from slimwhisper.errors import UserError
from slimwhisper.export.config import ParityTolerance

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


class ParityError(UserError, AssertionError):
    """An exported graph differs from PyTorch beyond tolerance; ``report`` has every figure."""

    def __init__(self, problems: list[str], report: ParityReport):
        self.problems, self.report = problems, report
        super().__init__("ONNX export does not match PyTorch", problems)


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


def engine_greedy(model, audio, prompt: list[int], specials, max_new_tokens: int, detok) -> list[int]:
    """Greedy text tokens of any ``StepModel`` through the runtime's one decoding engine (the same
    filters the runtime, the torch path and pseudo-labelling use)."""
    from slimwhisper.runtime.engine import DecodingOptions, decode

    opts = DecodingOptions(sample_len=max_new_tokens, fallback=False, timestamps=False)
    (r,) = decode(model, audio, prompt, 0, specials, opts, 0.0, detok, np.random.default_rng(0))
    return r.tokens


def check_parity(model, bundle_dir: Path, variant: str, *, clips: int, max_new_tokens: int,
                 tolerance: ParityTolerance | None, threads: int = 2) -> ParityReport:
    """Compare one bundle variant with PyTorch; raise ``ParityError`` if ``tolerance`` is given and exceeded."""
    from slimwhisper.decoding_torch import TorchWhisper
    from slimwhisper.runtime.bundle import BundleTranscriber
    from slimwhisper.runtime.decode import teacher_forced_logits

    rt = BundleTranscriber(bundle_dir, threads=threads, variant=variant, verify=False)
    onnx, ref_model = rt.model, TorchWhisper(model)
    eot = rt.specials.eot
    report = ParityReport(variant)
    was = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        for clip_id, audio in parity_audio(clips):
            feats = rt.features(audio)
            ref = torch_encoder(model, feats)
            got = dict(zip([o.name for o in onnx.encoder.get_outputs()],
                           onnx.encoder.run(None, {"input_features": feats.astype(onnx.dtype)})))
            cross = {k: got[k] for k in onnx.cross_names}
            enc_diff = {k: float(np.max(np.abs(got[k].astype(np.float32) - v))) for k, v in ref.items()}
            enc_scale = {k: float(np.max(np.abs(v))) for k, v in ref.items()}
            # the runtime's language rule (forced English for multilingual), no timestamps
            prompt = rt.prompt(None) + [rt.specials.no_timestamps]
            hidden = ref_model.encode(feats)
            want = engine_greedy(ref_model, hidden, prompt, rt.specials, max_new_tokens, rt.detok)
            force = want + [eot] if len(want) < max_new_tokens else list(want)
            want_logits = teacher_forced_logits(ref_model, hidden, prompt, force)
            forced = teacher_forced_logits(onnx, cross, prompt, force)
            diffs = [float(np.max(np.abs(a - b))) for a, b in zip(forced, want_logits)]
            free = engine_greedy(onnx, cross, prompt, rt.specials, max_new_tokens, rt.detok)
            report.clips.append(ClipParity(clip_id, enc_diff, diffs, want, free, enc_scale))
    finally:
        model.set_attn_implementation(was)
    if tolerance is not None:
        problems = report.problems(tolerance)
        if problems:
            raise ParityError(problems, report)
    return report
