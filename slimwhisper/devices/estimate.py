"""Latency estimates from the ArchSpec: a roofline per phase with an efficiency factor.

Phases (the two calls the runtime makes): the **encoder window** (one 30 s window through the
encoder graph, which also emits every decoder layer's cross-attention K/V) and the **decoder
token** (one greedy step with the KV cache). For each phase

    roofline  = max(FLOPs / compute ceiling, bytes / memory bandwidth)
    estimate  = roofline / efficiency + per-call overhead

compute ceiling = the profile's FP32 GEMM GFLOP/s (x its int8 speed-up for int8 graphs), scaled
by threads / cores; bandwidth = its memory-copy GB/s. FLOPs come from ``ArchSpec.flops`` (the one
formula); bytes are the weights the phase reads (at the variant's bytes per weight) plus the
activations it writes and reads back (encoder) or the KV caches it reads (decoder).
``efficiency`` is a stated prior until ``slimwhisper devices calibrate`` fits it per phase and
precision from real runs. An estimate is never a measurement: every result carries ``label``,
"estimate (uncalibrated)" or "estimate (calibrated on N runs)".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from slimwhisper.devices.profile import DeviceError, DeviceProfile
from slimwhisper.spec import ArchSpec

PHASES = ("encoder", "decoder_token")
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
ACT_BYTES = 4  # activations and KV caches stay fp32 in every variant
# Priors (fraction of the roofline reached) before calibration: large GEMMs reach about half of a
# measured GEMM ceiling in onnxruntime, one-row decoder steps about a third of copy bandwidth.
PRIOR_EFFICIENCY = {"encoder": 0.5, "decoder_token": 0.35}
# Text tokens per second of English speech, counted here with the tiny.en tokenizer on the reference
# transcripts (sentence-cased) of ../shared/data: librispeech-clean-mini 2.95 (14 clips, 92 s),
# misc-real 2.75 (7 clips), ljspeech 3.06 (483 clips, 3281 s). Override with tokens_per_second.
TOKENS_PER_SECOND = 3.0
WINDOW_S = 30.0


@dataclass(frozen=True)
class Workload:
    flops: float
    bytes: float


def _cross_kv_weights(spec: ArchSpec) -> int:
    d = spec.d_model
    return sum(d * (c.heads * c.qk_dim + c.heads * c.vo_dim) + c.heads * c.vo_dim
               for c in (layer.cross_attn for layer in spec.decoder) if c is not None)


def encoder_workload(spec: ArchSpec, precision: str) -> Workload:
    """One window: encoder FLOPs + the cross K/V projections; weights once, activations out and back."""
    f = spec.flops(tokens=1, context=1)
    by = spec.params_by_component()
    weights = sum(v for k, v in by.items() if k.startswith("encoder.")) + _cross_kv_weights(spec)
    T, d = spec.n_audio_ctx, spec.d_model
    act = 2 * spec.n_mels * 2 * T + 2 * 3 * T * d  # log-mel in, two conv outputs (written, read)
    for layer in spec.encoder:
        a = layer.self_attn
        qk, vo = a.heads * a.qk_dim, a.heads * a.vo_dim
        act += 2 * T * (3 * d + 2 * qk + 2 * vo + 2 * layer.ffn_dim)  # LN/residual, q k v ctx, ffn
        act += 4 * a.heads * T * T  # scores written, softmax read+write, read by AV
    act += 2 * T * sum(c.heads * (c.qk_dim + c.vo_dim) for c in (ly.cross_attn for ly in spec.decoder) if c)
    return Workload(f["encoder"] + f["cross_kv"], weights * BYTES_PER_WEIGHT[precision] + act * ACT_BYTES)


def decoder_workload(spec: ArchSpec, precision: str, context: int) -> Workload:
    """One step at self-attention context ``context``: decoder weights (tied vocabulary matrix once,
    cross K/V projections excluded: the encoder graph runs them) plus both KV caches."""
    by = spec.params_by_component()
    weights = (sum(v for k, v in by.items() if k.startswith("decoder.")) - _cross_kv_weights(spec)
               - spec.n_text_ctx * spec.d_model)  # one row of the position table is read, not all
    kv = 0
    for layer in spec.decoder:
        a, c = layer.self_attn, layer.cross_attn
        kv += context * a.heads * (a.qk_dim + a.vo_dim)
        if c is not None:
            kv += spec.n_audio_ctx * c.heads * (c.qk_dim + c.vo_dim)
    flops = spec.flops(tokens=1, context=context)["decoder_token"]
    return Workload(flops, weights * BYTES_PER_WEIGHT[precision] + kv * ACT_BYTES)


@dataclass(frozen=True)
class PhaseEstimate:
    seconds: float
    roofline_s: float
    bound: str  # "compute" or "memory"
    efficiency: float
    calibrated_runs: int  # 0: the prior efficiency was used
    flops: float
    bytes: float


def phase_estimate(phase: str, work: Workload, profile: DeviceProfile, precision: str,
                   threads: int | None, notes: list[str] | None = None) -> PhaseEstimate:
    notes = notes if notes is not None else []
    gemm, note_g = profile.gemm_gflops()
    mem, note_m = profile.mem_gbs()
    for note in (note_g, note_m):
        if note and note not in notes:
            notes.append(note)
    cores = int(profile.value("cores") or 1)
    use = min(threads or cores, cores) / cores
    ceiling = gemm * 1e9 * use * (float(profile.value("int8_speedup") or 1.0) if precision == "int8" else 1.0)
    t_compute, t_memory = work.flops / ceiling, work.bytes / (mem * 1e9)
    roof = max(t_compute, t_memory)
    cal = profile.phase_calibration(phase, precision)
    eff = float(cal["efficiency"]) if cal else PRIOR_EFFICIENCY[phase]
    overhead = profile.value("call_overhead_ms") or {}
    fixed_ms = float(cal["overhead_ms"]) if cal and "overhead_ms" in cal else float(overhead.get(phase, 0.0))
    seconds = roof / eff + fixed_ms / 1000
    return PhaseEstimate(seconds, roof, "compute" if t_compute >= t_memory else "memory", eff,
                         int(cal["runs"]) if cal else 0, work.flops, work.bytes)


def label_for(runs: list[int]) -> str:
    """The one wording of every estimate: calibrated only when every phase it used was fitted."""
    if not runs or min(runs) == 0:
        return "estimate (uncalibrated)"
    return f"estimate (calibrated on {min(runs)} runs)"


@dataclass(frozen=True)
class Estimate:
    """Estimated seconds of a clip of ``clip_seconds`` on ``profile``; never a measurement."""

    profile: str
    precision: str
    threads: int
    clip_seconds: float
    windows: int
    tokens: int
    encoder_window_s: float
    decoder_token_s: float  # mean over the clip's steps
    encoder_s: float
    decoder_s: float
    total_s: float
    label: str
    bounds: dict[str, str]
    notes: tuple[str, ...] = field(default=())
    phases: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_length(spec: ArchSpec) -> int:
    # tiny.en/base.en vocabularies have 51864 entries, multilingual 51865+: sot [lang task] notimestamps
    return 2 if (spec.source_vocab or spec.vocab) <= 51864 else 4  # a pruned vocabulary keeps its source's prompt


def estimate_spec(spec: ArchSpec, profile: DeviceProfile, clip_seconds: float = WINDOW_S, *,
                  precision: str = "int8", threads: int | None = None,
                  tokens_per_second: float = TOKENS_PER_SECOND, tokens: int | None = None) -> Estimate:
    """Per-phase and end-to-end estimate for one clip: ceil(clip / 30 s) encoder windows plus
    ``tokens`` (default ``clip_seconds x tokens_per_second``) greedy steps and one end-of-text
    step, each step at its own self-attention context length."""
    problems = []
    if precision not in BYTES_PER_WEIGHT:
        problems.append(f"precision must be one of {', '.join(BYTES_PER_WEIGHT)}, got {precision!r}")
    if not (isinstance(clip_seconds, (int, float)) and clip_seconds > 0):
        problems.append(f"clip seconds must be > 0, got {clip_seconds!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        problems.append(f"threads must be a positive integer, got {threads!r}")
    if problems:
        raise DeviceError("cannot estimate", problems)
    notes: list[str] = []
    windows = max(1, math.ceil(clip_seconds / WINDOW_S))
    n_tok = max(0, round(clip_seconds * tokens_per_second)) if tokens is None else tokens
    threads = threads or int(profile.value("cores") or 1)
    enc = phase_estimate("encoder", encoder_workload(spec, precision), profile, precision, threads, notes)
    prompt = prompt_length(spec)
    per_window = math.ceil(n_tok / windows)
    steps: list[PhaseEstimate] = []
    for _ in range(windows):
        for i in range(per_window + 1):  # +1: the end-of-text step
            ctx = min(prompt + i, spec.n_text_ctx)
            steps.append(phase_estimate("decoder_token", decoder_workload(spec, precision, ctx), profile,
                                        precision, threads, notes))
    dec_s = sum(s.seconds for s in steps)
    mid = steps[len(steps) // 2]
    label = label_for([enc.calibrated_runs, mid.calibrated_runs])
    return Estimate(profile.name, precision, threads, float(clip_seconds), windows, n_tok, enc.seconds,
                    dec_s / len(steps), windows * enc.seconds, dec_s, windows * enc.seconds + dec_s, label,
                    {"encoder": enc.bound, "decoder_token": mid.bound}, tuple(notes),
                    {"encoder": asdict(enc), "decoder_token": asdict(mid)})


def latency_model(profile: DeviceProfile, clip_seconds: float, *, precision: str = "int8",
                  threads: int | None = None, tokens_per_second: float = TOKENS_PER_SECOND
                  ) -> Callable[[ArchSpec], float]:
    """``spec -> estimated end-to-end seconds`` of one clip: the cost model a latency-budget
    pruner calls on each candidate spec (compress may import this; devices never imports compress)."""
    return lambda spec: estimate_spec(spec, profile, clip_seconds, precision=precision, threads=threads,
                                      tokens_per_second=tokens_per_second).total_s


EstimatorFn = Callable[..., Estimate]
ESTIMATORS: dict[str, EstimatorFn] = {"roofline": estimate_spec}


def get_estimator(name: str) -> EstimatorFn:
    if name not in ESTIMATORS:
        raise DeviceError(f"unknown estimator {name!r}; choose from {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name]
