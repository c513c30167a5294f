"""``slimwhisper bench BUNDLE --device ...``: measure on a device, or estimate for a profile.

* ``--device PROFILE --estimate``: no measurement at all; prints per-phase and end-to-end
  estimates, each labelled "estimate (uncalibrated)" or "estimate (calibrated on N runs)".
* ``--device local|ssh://user@host [--profile P]``: uploads the runtime, the bundle and the clips
  (reused by hash), checks the device's python3/numpy/onnxruntime, runs ``remote/devbench.py``
  there and writes a bench report (``report.json`` readable by ``slimwhisper devices calibrate``)
  whose figures are derived with ``bench.timing``'s formulas; with ``--profile`` the estimate is
  shown beside the measurement, labelled, never in its place.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slimwhisper.devices.estimate import TOKENS_PER_SECOND, estimate_spec
from slimwhisper.devices.profile import DeviceError, DeviceProfile, get_profile
from slimwhisper.devices.runners import RUN_TIMEOUT_S, Runner, check_device, folder_files, runtime_files, stage
from slimwhisper.devices.targets import SpecTarget, spec_target

RAM_HEADROOM = 0.8  # the OS and other processes keep the rest
RUNTIME_BASE_MB = 120  # python + numpy + onnxruntime imported, before any session (order of magnitude)


@dataclass(frozen=True)
class DeviceBenchConfig:
    targets: tuple[str, ...]
    device: str
    profile: str | None = None
    estimate: bool = False
    data: str | None = None
    out: str | None = None
    threads: int | None = None
    repeat: int = 3
    limit: int | None = None
    timing_limit: int | None = None
    clip_seconds: float = 30.0
    force: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        from slimwhisper.devices.connect import is_runner_url
        from slimwhisper.errors import check_positive_int, raise_problems

        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        problems: list[str] = []
        if not self.targets:
            problems.append("give at least one bundle")
        for name in ("repeat", "threads", "limit", "timing_limit"):
            check_positive_int(problems, f"--{name.replace('_', '-')}", getattr(self, name),
                               allow_none=name != "repeat")
        if not (isinstance(self.clip_seconds, (int, float)) and self.clip_seconds > 0):
            problems.append(f"--clip-seconds must be > 0, got {self.clip_seconds!r}")
        if self.estimate and is_runner_url(self.device) and not self.profile:
            problems.append(f"--estimate needs a profile: --device PROFILE or --profile PROFILE with --device {self.device}")
        if not self.estimate:
            if not is_runner_url(self.device):
                problems.append(f"--device {self.device} is a profile, not a device to run on: add --estimate for an "
                                "estimate, or measure with --device ssh://USER@HOST --profile " + self.device)
            if not self.data:
                problems.append("--data is required to measure on a device (clips to transcribe)")
            if not self.out:
                problems.append("--out REPORT_DIR is required to measure on a device")
        raise_problems(DeviceError, "invalid device bench", problems)

    @property
    def profile_name(self) -> str | None:
        from slimwhisper.devices.connect import is_runner_url

        return self.profile or (None if is_runner_url(self.device) else self.device)


# ---- estimates ------------------------------------------------------------------------------------
def ram_warning(target: SpecTarget, profile: DeviceProfile) -> str | None:
    """Peak memory ~ weights on disk x 2 (onnxruntime's prepacked copy) + the largest encoder
    attention-score tensor + the runtime itself, against the profile's RAM."""
    ram_gb = profile.value("ram_gb")
    if not ram_gb or target.bytes is None:
        return None
    spec = target.spec
    scores = max(ly.self_attn.heads for ly in spec.encoder) * spec.n_audio_ctx ** 2 * 4
    need_mb = 2 * target.bytes / 1e6 + scores / 1e6 + RUNTIME_BASE_MB
    have_mb = ram_gb * 1024 * RAM_HEADROOM
    if need_mb <= have_mb:
        return None
    return (f"{target.label} may not fit in {profile.name}'s RAM: about {need_mb:.0f} MB needed (2 x {target.bytes / 1e6:.0f} MB "
            f"of graphs + {scores / 1e6:.0f} MB attention scores + {RUNTIME_BASE_MB} MB runtime) vs {have_mb:.0f} MB usable "
            f"({RAM_HEADROOM:.0%} of {ram_gb} GB); try the int8 variant, a pruned bundle, or low_memory")


def estimate_rows(config: DeviceBenchConfig, profile: DeviceProfile) -> list[dict[str, Any]]:
    rows = []
    for source in config.targets:
        target = spec_target(source)
        est = estimate_spec(target.spec, profile, config.clip_seconds, precision=target.precision,
                            threads=config.threads)
        rows.append({"target": target.label, "source": source, "precision": target.precision,
                     "params": target.spec.params(), "estimate": est.to_dict(), "label": est.label,
                     "ram_warning": ram_warning(target, profile)})
    return rows


def estimate_markdown(profile: DeviceProfile, rows: list[dict[str, Any]], clip_seconds: float) -> str:
    state = ("calibrated: " + ", ".join(f"{k} on {v['runs']} runs" for k, v in profile.calibration["phases"].items())
             if profile.calibrated else "not calibrated")
    lines = [f"# Estimates for {profile.name} — {profile.describe}", "",
             f"Profile {state}. **These are estimates from FLOPs and bytes (roofline x efficiency), not measurements.** "
             f"Clip: {clip_seconds:g} s of speech, {TOKENS_PER_SECOND} tokens/s.", "",
             "| target | precision | params M | enc s / 30 s window | dec ms / token | clip s | bound (enc/dec) | label |",
             "|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for r in rows:
        e = r["estimate"]
        lines.append(f"| {r['target']} | {r['precision']} | {r['params'] / 1e6:.1f} | {e['encoder_window_s']:.3f} | "
                     f"{1000 * e['decoder_token_s']:.1f} | {e['total_s']:.2f} | {e['bounds']['encoder']}/"
                     f"{e['bounds']['decoder_token']} | {r['label']} |")
        notes += [n for n in e["notes"] if n not in notes]
        if r["ram_warning"]:
            notes.append("warning: " + r["ram_warning"])
    pub = profile.published
    for title, figures in pub.items():
        shown = ", ".join(f"{k} {v} s" for k, v in figures.items() if k != "source")
        notes.append(f"published for comparison (other software, measured): {title}: {shown} — {figures.get('source')}")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


# ---- measuring on a device ---------------------------------------------------------------------------
def clips_npz(config: DeviceBenchConfig, folder: Path):
    import numpy as np

    from slimwhisper.bench.timing import Clip
    from slimwhisper.data import DataError, load_dataset

    try:
        dataset = load_dataset(config.data, limit=config.limit)
        clips = [Clip(u.id, u.audio, u.text or "", u.seconds) for u in dataset]
    except DataError as exc:
        raise DeviceError(str(exc)) from exc
    if not clips:
        raise DeviceError(f"{config.data} yielded no readable clips")
    path = folder / "clips.npz"
    np.savez(path, ids=np.array([c.id for c in clips]),
             **{f"clip{i}": np.asarray(c.audio, dtype=np.float32) for i, c in enumerate(clips)})
    return dataset, clips, path


def _host_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("numpy", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_on_device(runner: Runner, config: DeviceBenchConfig, source: str, clips_path: Path,
                  say: Callable[[str], None], timeout: float) -> dict[str, Any]:
    from slimwhisper.bench.targets import resolve_target

    target = resolve_target(source)
    if target.kind != "bundle":
        raise DeviceError(f"{source} is not a bundle: devices run exported bundles (slimwhisper export --model "
                          f"{source} --out BUNDLE --quantize int8), or estimate it with --estimate")
    rt = stage(runner, "runtime", runtime_files())
    bundle = stage(runner, "bundles", folder_files(target.path))
    clips = stage(runner, "clips", [(clips_path, "clips.npz")])
    for what, s in (("runtime", rt), ("bundle", bundle), ("clips", clips)):
        say(f"{runner.label}: {what} {'reused (same hash)' if s.reused else f'uploaded {s.bytes / 1e6:.1f} MB'} -> {s.path}")
    argv = [runner.python, "-I", f"{rt.path}/devbench.py", "--bundle", bundle.path, "--clips", f"{clips.path}/clips.npz",
            "--repeat", str(config.repeat)]
    if target.variant:
        argv += ["--variant", target.variant]
    if config.threads:
        argv += ["--threads", str(config.threads)]
    if config.timing_limit:
        argv += ["--timing-limit", str(config.timing_limit)]
    say(f"{runner.label}: running {shlex.join(argv[:3])} ...")
    res = runner.exec(argv, timeout=timeout)
    lines = res.stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if res.returncode != 0 or "error" in answer or not answer:
        if answer.get("error"):
            raise DeviceError(f"{runner.label}: the bundle could not run there: {answer['error']}")
        raise runner.explain(res, "running the benchmark")
    return {"target": target, "answer": answer, "staged": {"runtime": asdict(rt), "bundle": asdict(bundle),
                                                             "clips": asdict(clips)}}


def device_entry(run: dict[str, Any], clips, runner: Runner, profile: DeviceProfile | None,
                 config: DeviceBenchConfig) -> dict[str, Any]:
    from slimwhisper.bench.backends import ClipResult
    from slimwhisper.bench.static import bundle_static
    from slimwhisper.bench.targets import bundle_bytes
    from slimwhisper.bench.timing import pass_figures, spread
    from slimwhisper.text import WerError, score

    target, a = run["target"], run["answer"]
    timed = clips[: a["timing_clips"]]
    figures = [pass_figures([ClipResult(**r) for r in p], timed) for p in a["passes"]]
    timing = {key: spread([f[key] for f in figures]) for key in figures[0]} if figures else {}
    timing.update(clips=len(timed), audio_s=sum(c.seconds for c in timed))
    manifest = target.manifest()
    static = bundle_static(manifest, 32)
    static.update(spec=manifest["spec"], file_bytes=bundle_bytes(target))
    acc: dict[str, Any] = {}
    try:
        s = score([c.text for c in clips], [r["text"] for r in a["accuracy"]])
        acc = {"wer": s.wer, "cer": s.cer, "words": s.n_words}
    except WerError as exc:
        acc = {"wer_error": str(exc)}
    entry = {"id": f"{target.label} [{runner.label}]", "label": target.label, "source": target.source, "kind": "bundle",
             "variant": a["variant"], "backend": f"device {runner.label}", "status": "ok", "reason": None,
             "info": {"threads": a.get("threads"), "staged": run["staged"]}, "device": a["device"], "load_s": a["load_s"],
             "static": static, "timing": timing, "accuracy": acc, "memory": {"peak_rss_mb": a["peak_rss_mb"],
                                                                          "note": "the device process's own ru_maxrss"},
             "texts": [r["text"] for r in a["accuracy"]]}
    if profile is not None:
        st = spec_target(target.source)
        threads = a.get("threads") or int(profile.value("cores") or 1)
        mean = sum(c.seconds for c in timed) / len(timed)
        est = estimate_spec(st.spec, profile, mean, precision=st.precision, threads=threads)
        entry["estimate"] = {"profile": profile.name, "label": est.label, "encoder_ms_per_window": 1000 * est.encoder_window_s,
                             "decoder_ms_per_token": 1000 * est.decoder_token_s, "seconds_per_clip": est.total_s,
                             "note": "an estimate for a clip of the timing clips' mean length, not a measurement"}
    return entry


def device_markdown(report: dict[str, Any]) -> str:
    dev = report["device"]
    lines = [f"# slimwhisper device benchmark: {dev['runner']}", "",
             f"Device: {dev.get('cpu')}, {dev.get('machine')}, Python {dev.get('python')}, numpy {dev.get('numpy')}, "
             f"onnxruntime {dev.get('onnxruntime')}; profile {report.get('profile') or '—'}. "
             f"Measured with slimwhisper's runtime on the device; dataset {report['dataset']['name']} "
             f"({report['dataset']['clips']} clips).", "",
             "| entry | WER % | load s | enc ms/30 s (measured) | dec ms/tok (measured) | s/clip (measured) | "
             "peak RSS MB | estimate enc ms / dec ms/tok / s/clip |", "|---|---|---|---|---|---|---|---|"]
    for e in report["entries"]:
        t = e["timing"]

        def f(key: str, fmt: str, t: dict = t) -> str:
            return f"{t[key]['median']:{fmt}} [{t[key]['min']:{fmt}}–{t[key]['max']:{fmt}}]" if key in t else "—"

        est = e.get("estimate")
        est_s = (f"{est['encoder_ms_per_window']:.0f} / {est['decoder_ms_per_token']:.1f} / {est['seconds_per_clip']:.2f} "
                 f"({est['label']})") if est else "—"
        wer = f"{100 * e['accuracy']['wer']:.2f}" if "wer" in e["accuracy"] else "—"
        lines.append(f"| {e['id']} | {wer} | {e['load_s']:.2f} | {f('encoder_ms_per_window', '.0f')} | "
                     f"{f('decoder_ms_per_token', '.1f')} | {f('seconds_per_clip', '.2f')} | "
                     f"{e['memory']['peak_rss_mb']:.0f} | {est_s} |")
    lines += [""] + [f"- warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines) + "\n"


def device_bench(config: DeviceBenchConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every bundle of ``config`` on its device; writes and returns the report."""
    from slimwhisper.bench.machine import machine_info
    from slimwhisper.devices.connect import runner_for
    from slimwhisper.devices.ssh import run_timeout
    from slimwhisper.outputs import check_output, output_dir, write_json

    profile = get_profile(config.profile_name) if config.profile_name else None
    runner = runner_for(config.device)
    check_output(config.out, "bench-report", force=config.force, inputs=[*config.targets, config.data])
    warnings = [w for w in (ram_warning(spec_target(t), profile) for t in config.targets) if w] if profile else []
    for w in warnings:
        say(f"warning: {w}")
    info = check_device(runner, _host_versions())
    say(f"{runner.label}: Python {info['python']} ({info['machine']}), numpy {info['numpy']}, onnxruntime {info['onnxruntime']}")
    timeout = run_timeout(config.device, RUN_TIMEOUT_S) if "://" in config.device else RUN_TIMEOUT_S
    with tempfile.TemporaryDirectory(prefix="slimwhisper-device-") as tmp:
        dataset, clips, npz = clips_npz(config, Path(tmp))
        started = time.time()
        entries = [device_entry(run_on_device(runner, config, t, npz, say, timeout), clips, runner, profile, config)
                   for t in config.targets]
    device = {**entries[0]["device"], "runner": runner.label, "check": info}
    report = {"report_version": 1, "kind": "device-bench", "machine": {**machine_info(config.threads or 0, sys.argv),
              "threads": config.threads, "device": device}, "device": device, "profile": config.profile_name,
              "config": {**asdict(config), "flops_context": 32}, "dataset": {"path": config.data,
              "name": getattr(dataset, "label", config.data), "clips": len(clips), "audio_s": sum(c.seconds for c in clips),
              "synthetic": bool(getattr(dataset, "synthetic", False))}, "entries": entries, "warnings": warnings,
              "wall_s": time.time() - started}
    with output_dir(config.out, "bench-report", force=config.force, inputs=[*config.targets, config.data]) as out:
        write_json(out / "report.json", report)
        (out / "report.md").write_text(device_markdown(report))
        write_json(out / "bench_config.json", asdict(config))
    return report
