"""``slimwhisper bench``: measure every (target, backend) entry on the same clips and write the report.

Order of work: resolve targets -> open every runner (load time) -> static metrics -> accuracy
pass (also the warm-up) -> alternating timing passes -> one fresh child per entry for memory ->
write report.json / report.md / transcripts.jsonl / plots into a temp folder, renamed to --out.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimwhisper.bench.backends import (
    DEFAULT_BACKEND,
    BackendUnavailable,
    Runner,
    get_backend,
    unavailable_reason,
)
from slimwhisper.bench.config import BenchConfig, BenchError
from slimwhisper.bench.targets import Target, resolve_target
from slimwhisper.outputs import output_dir

OK, UNAVAILABLE, FAILED = "ok", "not available", "failed"


@dataclass
class Entry:
    target: Target
    backend: str
    status: str = OK
    reason: str | None = None
    runner: Runner | None = field(default=None, repr=False)
    load_s: float | None = None
    static: dict[str, Any] = field(default_factory=dict)
    results: list = field(default_factory=list, repr=False)
    timing: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.target.label} [{self.backend}]"

    def mark(self, status: str, reason: str) -> None:
        self.status, self.reason, self.runner = status, reason, None


def plan_entries(config: BenchConfig) -> tuple[list[Entry], list[dict[str, str]]]:
    """Every target x every backend that reads its kind; the rest is listed as not applicable."""
    labels = config.labels or (None,) * len(config.targets)
    targets = [resolve_target(src, label) for src, label in zip(config.targets, labels, strict=True)]
    entries, skipped = [], []
    for target in targets:
        names = config.backends or (DEFAULT_BACKEND[target.kind],)
        mine = [n for n in names if get_backend(n).reads == target.kind]
        for name in names:
            if name not in mine:
                skipped.append({"target": target.label, "backend": name,
                                "reason": f"not applicable: {name} reads {get_backend(name).reads}s, {target.source} is a {target.kind}"})
        if not mine:
            raise BenchError(f"no chosen backend reads {target.source} (a {target.kind}); add --backend "
                             f"{DEFAULT_BACKEND[target.kind]}")
        entries += [Entry(target, get_backend(n).name) for n in dict.fromkeys(mine)]
    seen: dict[str, int] = {}
    for entry in entries:  # the same label twice (e.g. one folder benched twice) gets a suffix
        seen[entry.id] = seen.get(entry.id, 0) + 1
        if seen[entry.id] > 1:
            entry.target.label += f" #{seen[entry.id]}"
    return entries, skipped


@contextlib.contextmanager
def user_errors(target: Target) -> Iterator[None]:
    """A model or bundle that cannot be read is the user's input error (exit 2), not a failed entry."""
    from slimwhisper.models.api import ModelLoadError
    from slimwhisper.runtime import BundleError

    try:
        yield
    except (ModelLoadError, BundleError, FileNotFoundError) as exc:
        raise BenchError(f"cannot read {target.source}: {exc}") from exc


def open_entries(entries: list[Entry], threads: int, context: int, say: Callable[[str], None]) -> None:
    """Load each runner (timed) and read static metrics; a backend that cannot run says why."""
    from slimwhisper.bench.static import bundle_static, model_static

    statics: dict[int, dict[str, Any]] = {}
    for entry in entries:
        kind = get_backend(entry.backend)
        reason = unavailable_reason(kind)
        if reason:
            entry.mark(UNAVAILABLE, reason)
        else:
            say(f"loading {entry.id}")
            t0 = time.perf_counter()
            try:
                with user_errors(entry.target):
                    entry.runner = kind.open(entry.target, threads)
                entry.load_s = time.perf_counter() - t0
            except BackendUnavailable as exc:
                entry.mark(UNAVAILABLE, str(exc))
            except (BenchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - recorded in the report as this entry's failure
                entry.mark(FAILED, f"{type(exc).__name__}: {exc}")
        key = id(entry.target)
        if key not in statics:  # per target: the same weights whichever backend runs them
            with user_errors(entry.target):
                if entry.target.kind == "model":
                    loaded = entry.target.load("cpu")
                    statics[key] = model_static(loaded.model, loaded.spec, context)
                    statics[key]["sha256"] = loaded.sha256
                else:
                    statics[key] = bundle_static(entry.target.manifest(), context)
        entry.static = dict(statics[key])
        if entry.runner is not None:
            entry.static["file_bytes"] = entry.runner.info.get("files_bytes")


def load_clips(config: BenchConfig):
    from slimwhisper.bench.timing import Clip
    from slimwhisper.data import DataError, load_dataset

    try:
        dataset = load_dataset(config.data, limit=config.limit)
        clips = [Clip(u.id, u.audio, u.text or "", u.seconds) for u in dataset]
    except DataError as exc:
        raise BenchError(str(exc)) from exc
    if not clips:
        raise BenchError(f"{config.data} yielded no readable clips; check the paths in its transcripts file")
    return dataset, clips


def score_entries(entries: list[Entry], clips) -> None:
    """WER/CER against the references, and agreement with the reference (first) entry's text."""
    from slimwhisper.text import WerError, score

    ok = [e for e in entries if e.status == OK]
    if not ok:
        return
    ref = ok[0]
    for entry in ok:
        hyps = [r.text for r in entry.results]
        acc: dict[str, Any] = {"reference_entry": ref.id}
        try:
            s = score([c.text for c in clips], hyps)
            acc.update(wer=s.wer, cer=s.cer, words=s.n_words, substitutions=s.substitutions,
                       deletions=s.deletions, insertions=s.insertions)
        except WerError as exc:
            acc["wer_error"] = str(exc)
        try:
            agree = score([r.text for r in ref.results], hyps)
            acc["agreement_wer"] = agree.wer
        except WerError as exc:
            acc["agreement_error"] = str(exc)
        acc["same_text"] = sum(a.text == b.text for a, b in zip(ref.results, entry.results, strict=True)) / len(clips)
        entry.accuracy = acc


def set_decoding(entries: list[Entry], decode) -> None:
    """Every runner that can decodes with ``decode`` (the same options for every backend)."""
    for e in entries:
        if e.status == OK and hasattr(e.runner, "with_decoding"):
            e.runner = e.runner.with_decoding(decode)


def batched_accuracy_pass(runners: dict[str, Runner], clips, batch_size: int, step=None):
    """``accuracy_pass``, with ``batch_size`` clips at a time through runners that batch."""
    from slimwhisper.bench.timing import accuracy_pass

    if batch_size == 1:
        return accuracy_pass(runners, clips, step)
    plain = {k: r for k, r in runners.items() if not hasattr(r, "transcribe_batch")}
    results, failed = accuracy_pass(plain, clips, step) if plain else ({}, {})
    for name, runner in runners.items():
        if name in plain:
            continue
        try:
            results[name] = []
            for i in range(0, len(clips), batch_size):
                group = clips[i : i + batch_size]
                results[name] += runner.transcribe_batch([c.audio for c in group])
                for _ in group:
                    if step:
                        step()
        except Exception as exc:  # noqa: BLE001 - recorded as this entry's failure
            failed[name] = f"batch at clip {i}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            results.pop(name)
    return results, failed


def score_without_fallback(entries: list[Entry], clips, config: BenchConfig, progress: bool) -> None:
    """WER with temperature fallback off as well, so a pruned model that loops shows both ways."""
    from slimwhisper.progress import progress_bar
    from slimwhisper.text import WerError, score

    ok = {e.id: e for e in entries if e.status == OK and hasattr(e.runner, "with_decoding")}
    runners = {k: e.runner.with_decoding(config.decode(fallback=False)) for k, e in ok.items()}
    with progress_bar(len(clips) * len(runners), "accuracy without fallback", enabled=progress) as bar:
        results, failed = batched_accuracy_pass(runners, clips, config.batch_size, bar.advance)
    for k, e in ok.items():
        if k in failed:
            e.accuracy["no_fallback_error"] = failed[k]
            continue
        try:
            e.accuracy["wer_no_fallback"] = score([c.text for c in clips], [r.text for r in results[k]]).wer
        except WerError as exc:
            e.accuracy["no_fallback_error"] = str(exc)


def measure_memory(entries: list[Entry], clip, threads: int, say: Callable[[str], None]) -> None:
    import numpy as np

    from slimwhisper.bench.memory import current_rss_mb, measure_fresh

    with tempfile.TemporaryDirectory(prefix="slimwhisper-bench-") as tmp:
        audio = Path(tmp) / "clip.npy"
        np.save(audio, np.asarray(clip.audio, dtype=np.float32))
        for entry in entries:
            if entry.status != OK or unavailable_reason(get_backend(entry.backend)):
                continue
            say(f"memory: fresh process for {entry.id}")
            parent_mb = current_rss_mb()
            try:
                entry.memory = measure_fresh(entry.backend, entry.target.source, audio, threads)
            except RuntimeError as exc:
                entry.memory = {"error": str(exc)}
            entry.memory.update(clip=clip.id, parent_rss_mb_at_spawn=parent_mb)


def run_bench(config: BenchConfig, *, progress: bool = True, say: Callable[[str], None] = print,
              argv: list[str] | None = None) -> dict[str, Any]:
    """Measure everything ``config`` asks for and write the report folder; returns report.json's dict."""
    from slimwhisper.bench.machine import machine_info
    from slimwhisper.bench.report import build_report, write_report
    from slimwhisper.bench.timing import timing_passes
    from slimwhisper.progress import progress_bar

    machine = machine_info(config.threads, argv)
    entries, skipped = plan_entries(config)
    dataset, clips = load_clips(config)  # before loading models: bad data fails fast
    if config.memory:
        # Before this process loads any model: on Linux a child's ru_maxrss starts from its
        # parent's RSS at fork time, so children are spawned while the parent is still small.
        measure_memory(entries, clips[0], config.threads, say)
    open_entries(entries, config.threads, config.flops_context, say)
    set_decoding(entries, config.decode())
    runners = {e.id: e.runner for e in entries if e.status == OK}
    if runners:  # (re-checked below: an entry may fail on its first clip)
        timed = clips[: config.timing_limit] if config.timing_limit else clips
        with progress_bar(len(clips) * len(runners), "accuracy + warm-up", enabled=progress) as bar:
            results, failed = batched_accuracy_pass(runners, clips, config.batch_size, bar.advance)
        for e in entries:
            if e.id in failed:
                e.mark(FAILED, failed[e.id])
                runners.pop(e.id)
    if runners:
        with progress_bar(len(timed) * len(runners) * config.repeat, f"timing x{config.repeat}", enabled=progress) as bar:
            timing = timing_passes(runners, timed, config.repeat, bar.advance)
        for e in entries:
            if e.status == OK:
                e.results, e.timing = results[e.id], timing[e.id]
        score_entries(entries, clips)
        if config.fallback:
            score_without_fallback(entries, clips, config, progress)
    report = build_report(config, machine, dataset, clips, entries, skipped)
    with output_dir(config.out, "bench-report", force=config.force, inputs=config.inputs()) as tmp:
        write_report(tmp, report, entries, clips)
        config.save(tmp / "bench_config.json")
    return report


def ran_any(report: dict[str, Any]) -> bool:
    return any(e["status"] == OK for e in report["entries"])


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
