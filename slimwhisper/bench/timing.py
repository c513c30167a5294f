"""Latency measured through each backend's public transcribe call, alternating backends.

Protocol (docs/benchmarking.md): every runner sees the same clips in the same process with the
same threads; the accuracy pass over all clips doubles as the warm-up; then ``repeat`` timing
passes over the timing clips run the runners A B A B clip by clip (the starting runner rotates
each pass so none is always first after another's cache pollution). Each figure is derived the
same way for all backends and reported as median, min and max over the passes:

* encoder ms per 30 s window = encoder-call seconds / windows;
* decoder ms per token = (total - encoder) / (tokens + 1)  (the +1 is the end-of-text step);
* end-to-end seconds per clip and real-time factor = transcribe seconds / audio seconds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slimwhisper.bench.backends import ClipResult, Runner


@dataclass(frozen=True)
class Clip:
    id: str
    audio: Any  # float32 mono 16 kHz
    text: str
    seconds: float


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def pass_figures(results: Sequence[ClipResult], clips: Sequence[Clip]) -> dict[str, float]:
    """The figures of one timing pass over ``clips`` (ratios of sums, so long clips weigh more)."""
    total = sum(r.total_s for r in results)
    enc = sum(r.encoder_s for r in results)
    return {
        "encoder_ms_per_window": 1000 * enc / max(sum(r.windows for r in results), 1),
        "decoder_ms_per_token": 1000 * (total - enc) / sum(r.tokens + 1 for r in results),
        "seconds_per_clip": total / len(results),
        "rtf": total / sum(c.seconds for c in clips),
        "total_s": total,
    }


def accuracy_pass(runners: dict[str, Runner], clips: Sequence[Clip],
                  step: Callable[[], None] | None = None) -> tuple[dict[str, list[ClipResult]], dict[str, str]]:
    """Every runner transcribes every clip once (also the warm-up); clip-major, A B A B.

    A runner that raises is dropped from the rest of the run and its error returned (the
    report shows it as failed) instead of ending the whole benchmark.
    """
    out: dict[str, list[ClipResult]] = {name: [] for name in runners}
    failed: dict[str, str] = {}
    for clip in clips:
        for name, runner in runners.items():
            if name in failed:
                continue
            try:
                out[name].append(runner.transcribe(clip.audio))
            except Exception as exc:  # noqa: BLE001 - recorded as this entry's failure, with the clip
                failed[name] = f"clip {clip.id}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            if step:
                step()
    return {k: v for k, v in out.items() if k not in failed}, failed


def timing_passes(runners: dict[str, Runner], clips: Sequence[Clip], repeat: int,
                  step: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
    """``repeat`` alternating passes; per runner, each figure as median/min/max over the passes."""
    names = list(runners)
    per_pass: dict[str, list[list[ClipResult]]] = {n: [[] for _ in range(repeat)] for n in names}
    for r in range(repeat):
        order = names[r % len(names):] + names[: r % len(names)]
        for clip in clips:
            for name in order:
                per_pass[name][r].append(runners[name].transcribe(clip.audio))
                if step:
                    step()
    out = {}
    for name in names:
        figures = [pass_figures(results, clips) for results in per_pass[name]]
        out[name] = {key: spread([f[key] for f in figures]) for key in figures[0]}
        out[name]["clips"] = len(clips)
        out[name]["audio_s"] = sum(c.seconds for c in clips)
    return out
