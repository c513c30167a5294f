"""Fit a profile's per-phase efficiency from real bench reports, and compare estimates with measurements.

A *run* is one measured report entry (a bundle on the onnx backend, or a device bench entry):
its median encoder ms per 30 s window and decoder ms per token over the timing passes. For each
phase and precision, measured ~ roofline / efficiency + overhead: both fitted (``fit_phase``)
when the runs differ enough in size, else the efficiency alone, with the profile's per-call
overhead. Entries that did not run, torch models, and reports whose
bundles cannot be found are skipped with a reason: nothing is fitted from an estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slimwhisper.devices.estimate import (
    PHASES,
    decoder_workload,
    encoder_workload,
    phase_estimate,
    prompt_length,
)
from slimwhisper.devices.profile import DeviceError, DeviceProfile, profile_from_dict
from slimwhisper.devices.targets import precision_of_variant
from slimwhisper.spec import ArchSpec

MEASURED_KEY = {"encoder": "encoder_ms_per_window", "decoder_token": "decoder_ms_per_token"}


@dataclass(frozen=True)
class Run:
    """One measured entry: what ran, where, and its two per-phase medians (seconds)."""

    id: str
    report: str
    spec: ArchSpec
    precision: str
    threads: int | None
    context: int
    measured: dict[str, float]
    cpu: str


def _spec_of(entry: dict[str, Any]) -> ArchSpec | None:
    spec = (entry.get("static") or {}).get("spec")
    if spec:
        return ArchSpec.from_dict(spec)
    if entry.get("kind") != "bundle":
        return None
    src = str(entry.get("source", "")).rpartition("@")[0] or str(entry.get("source", ""))
    manifest = Path(src) / "manifest.json"
    if not manifest.is_file():
        manifest = Path(str(entry.get("source", ""))) / "manifest.json"
    if not manifest.is_file():
        return None
    return ArchSpec.from_dict(json.loads(manifest.read_text())["spec"])


def read_runs(report_path: str | Path) -> tuple[list[Run], list[str]]:
    """(usable runs, reasons for every entry skipped) of one report.json (or its folder)."""
    path = Path(report_path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        entries = report["entries"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeviceError(f"cannot read bench report {path}: {exc}; give a report.json written by "
                          "`slimwhisper bench`") from exc
    machine = report.get("machine") or {}
    default_threads = machine.get("threads") or (report.get("config") or {}).get("threads")
    context = int((report.get("config") or {}).get("flops_context") or 32)
    runs, skipped = [], []
    for e in entries:
        eid = e.get("id", "?")
        timing = e.get("timing") or {}
        if e.get("status") != "ok" or not timing:
            skipped.append(f"{eid}: status {e.get('status')!r}, no timing")
            continue
        if e.get("estimate_only"):
            skipped.append(f"{eid}: an estimate, not a measurement")
            continue
        spec = _spec_of(e)
        if spec is None:
            skipped.append(f"{eid}: no ArchSpec (a torch model, or its bundle {e.get('source')} is gone)")
            continue
        if any(MEASURED_KEY[p] not in timing for p in PHASES):
            skipped.append(f"{eid}: timing lacks {', '.join(MEASURED_KEY.values())}")
            continue
        measured = {p: float(timing[MEASURED_KEY[p]]["median"]) / 1000 for p in PHASES}
        threads = (e.get("info") or {}).get("threads") or default_threads  # None: onnxruntime used every core
        cpu = str((e.get("device") or {}).get("cpu") or machine.get("cpu") or "?")
        runs.append(Run(eid, str(path), spec, precision_of_variant(e.get("variant") or "fp32"), threads,
                        context, measured, cpu))
    return runs, skipped


def _workload(phase: str, run: Run):
    if phase == "encoder":
        return encoder_workload(run.spec, run.precision)
    return decoder_workload(run.spec, run.precision, prompt_length(run.spec) + run.context)


def predict(run: Run, profile: DeviceProfile) -> dict[str, Any]:
    out = {}
    for phase in PHASES:
        est = phase_estimate(phase, _workload(phase, run), profile, run.precision, run.threads)
        out[phase] = est
    return out


def fit_phase(roofs: list[float], measured: list[float], prior_ms: float) -> tuple[float, float]:
    """(efficiency, per-call overhead ms) so that measured ~ roofline / efficiency + overhead.

    The fixed term is what a pure roofline misses when a phase shrinks: a decoder step also pays
    the session call, the KV-cache copies and the numpy logit filters, none of which scale with
    the weights (the single-efficiency fit under-estimated pruned int8 decoders by 24-25% on this
    machine). Fitted by weighted least squares on relative error (weights 1/measured^2), only when
    the runs' rooflines span at least 1.5x (otherwise the two terms cannot be told apart) and the
    fitted overhead is >= 0; else the geometric mean of roofline / (measured - prior) as before.
    """
    if len(roofs) >= 2 and max(roofs) >= 1.5 * min(roofs):
        w = [1 / m**2 for m in measured]  # minimise sum ((a r + c - m) / m)^2
        sw, sr, sm = sum(w), sum(wi * r for wi, r in zip(w, roofs)), sum(wi * m for wi, m in zip(w, measured))
        srr = sum(wi * r * r for wi, r in zip(w, roofs))
        srm = sum(wi * r * m for wi, r, m in zip(w, roofs, measured))
        det = sw * srr - sr * sr
        if det > 0:
            a, c = (sw * srm - sr * sm) / det, (srr * sm - sr * srm) / det
            if a > 0 and c >= 0:
                return 1 / a, 1000 * c
    ratios = [r / (m - prior_ms / 1000) for r, m in zip(roofs, measured) if m > prior_ms / 1000]
    if not ratios:
        return 1.0, prior_ms
    return math.exp(sum(math.log(x) for x in ratios) / len(ratios)), prior_ms


def fit(profile: DeviceProfile, runs: list[Run]) -> DeviceProfile:
    """A copy of ``profile`` whose per-phase, per-precision efficiencies are fitted to ``runs``."""
    if not runs:
        raise DeviceError(f"no measured runs to calibrate {profile.name} from; bench bundles on that device "
                          "first (slimwhisper bench BUNDLE --data D --out R), then pass --from R/report.json")
    base = profile_from_dict({**profile.to_dict(), "calibrated": False, "calibration": {}}, profile.path)
    overhead = profile.value("call_overhead_ms") or {}
    phases: dict[str, Any] = {}
    for phase in PHASES:
        for precision in sorted({r.precision for r in runs}):
            mine = [r for r in runs if r.precision == precision]
            roofs = [phase_estimate(phase, _workload(phase, r), base, precision, r.threads).roofline_s for r in mine]
            measured = [r.measured[phase] for r in mine]
            eff, fixed_ms = fit_phase(roofs, measured, float(overhead.get(phase, 0.0)))
            low = min(mine, key=lambda r: r.measured[phase])
            if low.measured[phase] - fixed_ms / 1000 <= 0:
                raise DeviceError(f"{low.id}: measured {phase} {low.measured[phase] * 1000:.2f} ms is below the "
                                  f"profile's per-call overhead; fix call_overhead_ms in {profile.path}")
            phases[f"{phase}/{precision}"] = {"efficiency": eff, "overhead_ms": round(fixed_ms, 4), "runs": len(mine),
                                              "fitted_on": [r.id for r in mine], "reports": sorted({r.report for r in mine})}  # fmt: skip
    cpus = sorted({r.cpu for r in runs})
    calibration = {"phases": phases, "cpu": cpus[0] if len(cpus) == 1 else cpus,
                   "fitted_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                   "method": "per phase and precision: measured = roofline / efficiency + overhead, least squares on "
                             "relative errors when the runs span >= 1.5x in roofline, else the geometric mean of "
                             "roofline / measured with the profile's call_overhead_ms (slimwhisper.devices.calibrate)"}
    fitted = profile_from_dict({**base.to_dict(), "calibrated": True, "calibration": calibration}, profile.path)
    for key, cal in phases.items():  # the fit's own residuals, for the record (in-sample, not a validation)
        phase, precision = key.split("/")
        cal["in_sample_rel_errors"] = [round(predict(r, fitted)[phase].seconds / r.measured[phase] - 1, 4)
                                       for r in runs if r.precision == precision]
    return profile_from_dict({**fitted.to_dict(), "calibration": calibration}, profile.path)


def compare_rows(profile: DeviceProfile, runs: list[Run]) -> list[dict[str, Any]]:
    """Estimate vs measurement per run and phase (for runs NOT used in the fit this is the estimator's error)."""
    rows = []
    for r in runs:
        pred = predict(r, profile)
        for phase in PHASES:
            est = pred[phase]
            rows.append({"run": r.id, "phase": phase, "precision": r.precision, "threads": r.threads,
                         "estimated_ms": est.seconds * 1000, "measured_ms": r.measured[phase] * 1000,
                         "error": est.seconds / r.measured[phase] - 1,
                         "label": "estimate (uncalibrated)" if not est.calibrated_runs
                         else f"estimate (calibrated on {est.calibrated_runs} runs)",
                         "in_fit": r.id in ((profile.phase_calibration(phase, r.precision) or {}).get("fitted_on") or [])})
    return rows


def compare_markdown(profile: DeviceProfile, rows: list[dict[str, Any]]) -> str:
    lines = [f"profile {profile.name}: estimate vs measured (median of the report's timing passes)", "",
             "| run | phase | precision | threads | estimate ms | measured ms | error | estimate label | used in fit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['phase']} | {r['precision']} | {r['threads']} | {r['estimated_ms']:.1f} | "
                     f"{r['measured_ms']:.1f} | {100 * r['error']:+.0f}% | {r['label']} | {'yes' if r['in_fit'] else 'no'} |")
    held = [abs(r["error"]) for r in rows if not r["in_fit"]]
    if held:
        lines += ["", f"held-out runs: mean |error| {100 * sum(held) / len(held):.0f}% over {len(held)} phase figures"]
    return "\n".join(lines)
