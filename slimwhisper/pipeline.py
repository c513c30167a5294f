"""``slimwhisper run``: prune -> (recover) -> export fp32 + int8 -> bench, all inside one folder.

The end-to-end job sits above every stage (compress, train, export, bench), so no stage has to
import another to be driven; it takes the stages' own configs, built once at the CLI edge and
validated there, and adds only what is its own (the output folder and the bench settings).

Layout of ``out`` (every stage's config is saved beside what it made):

    run_config.json            this RunConfig (with the nested stage configs)
    pruned/                    the pruned model (slimwhisper folder, with its prune config)
    recovered/                 with recovery: the pruned model after training (its config inside)
    bundle-dense/              dense ONNX bundle, variants fp32 + int8 (export_config.json inside)
    bundle-pruned/             pruned (or recovered) ONNX bundle, variants fp32 + int8
    bench/                     report.json, report.md, plots, bench_config.json
    summary.json               what ran, how long each stage took, and what was skipped

**Interruptions**: every stage writes its folder atomically, so a stage folder that exists is
complete. Running the same command again resumes after the last complete stage; a run folder
made with other settings is refused (naming the differing settings) unless ``--force``, which
starts it over. ``--force`` never replaces a folder that is not a ``run`` output.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimwhisper.errors import UserError, check_positive_int, raise_problems
from slimwhisper.outputs import MARKER, check_output, is_output_of, write_json

if TYPE_CHECKING:
    from slimwhisper.compress.prune import PruneConfig
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.train.recover_config import RecoverConfig

RUN_CONFIG = "run_config.json"
# Settings that change how a run is shown or allowed, not what it computes: not compared on resume.
_NOT_COMPARED = ("force",)


class RunError(UserError, ValueError):
    """The end-to-end job cannot run as configured; the message lists every problem."""


@dataclass(frozen=True)
class RunConfig:
    """``prune.out`` is ignored (the job writes into ``out/pruned``); the rest are the stages' own configs."""

    model: str
    data: str
    out: str
    prune: PruneConfig
    export: ExportConfig
    recover: RecoverConfig | None = None
    threads: int = 2
    repeat: int = 3
    limit: int | None = None
    timing_limit: int | None = None
    peers: bool = True  # also bench faster-whisper int8 on the dense weights
    memory: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not Path(self.data).exists():
            problems.append(f"--data {self.data} does not exist (a folder with transcripts.tsv or a .tsv file)")
        for name in ("threads", "repeat"):
            check_positive_int(problems, f"--{name}", getattr(self, name))
        for name in ("limit", "timing_limit"):
            check_positive_int(problems, f"--{name.replace('_', '-')}", getattr(self, name), allow_none=True)
        if self.recover is not None and self.prune.calib is None and not Path(self.recover.train.data).exists():
            problems.append(f"recovery data {self.recover.train.data} does not exist")
        raise_problems(RunError, "invalid run config", problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "out": self.out, "prune": self.prune.to_dict(),
            "export": self.export.to_dict(), "recover": None if self.recover is None else self.recover.to_dict(),
            "threads": self.threads, "repeat": self.repeat, "limit": self.limit, "timing_limit": self.timing_limit,
            "peers": self.peers, "memory": self.memory, "force": self.force,
        }  # fmt: skip


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as dotted keys (``prune.alloc.ffn``), after a JSON round trip (tuples = lists)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in json.loads(json.dumps(d)).items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def _differences(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in _NOT_COMPARED)
    return [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def prepare_out(config: RunConfig) -> bool:
    """Create or reopen ``config.out`` before any work; True when an interrupted run is resumed."""
    out = Path(config.out)
    if _resumable(config):
        return True
    check_output(out, "run", force=config.force, inputs=[config.model, config.data])
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)  # check_output allowed it: a previous run folder, with --force
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_CONFIG, config.to_dict())
    write_json(out / MARKER, {"kind": "run", "complete": False})
    return False


def _resumable(config: RunConfig) -> bool:
    """An interrupted run of the same settings (no summary.json yet) is resumed, --force or not."""
    out = Path(config.out)
    if not (is_output_of(out, "run") and (out / RUN_CONFIG).is_file()) or (out / "summary.json").exists():
        return False
    old = json.loads((out / RUN_CONFIG).read_text())
    diff = _differences(old, config.to_dict())
    if diff and not config.force:
        raise RunError(f"{out} holds an interrupted run made with other settings; pass --force to start it over "
                       "or choose a new --out", diff)  # fmt: skip
    return not diff


def _stage(out: Path, name: str, seconds: dict, say: Callable[[str], None], make: Callable[[Path], Any]) -> Path:
    """Run ``make(out/name)`` unless that folder is already complete (written atomically)."""
    path = out / name
    if path.is_dir():
        say(f"{name}/ is complete: skipped (resumed run)")
        return path
    t0 = time.perf_counter()
    make(path)
    seconds[name] = round(time.perf_counter() - t0, 1)
    return path


def run_pipeline(config: RunConfig, *, progress: bool = True, say: Callable[[str], None] = print,
                 argv: list[str] | None = None) -> dict[str, Any]:
    """Run every stage into ``config.out``; returns the bench report (also in out/bench/report.json)."""
    from slimwhisper.bench.config import BenchConfig
    from slimwhisper.bench.suite import run_bench

    out = Path(config.out)
    if prepare_out(config):
        say(f"resuming the interrupted run in {out}")
    seconds: dict[str, float] = {}
    _stage(out, "pruned", seconds, say, lambda p: _prune(config, p, say, progress))
    student, label = out / "pruned", "pruned"
    if config.recover is not None:
        student = _stage(out, "recovered", seconds, say, lambda p: _recover(config, out / "pruned", p, say, progress))
        label = f"pruned+{config.recover.method.value}"
    _stage(out, "bundle-pruned", seconds, say, lambda p: _export(config, str(student), p, say))
    _stage(out, "bundle-dense", seconds, say, lambda p: _export(config, config.model, p, say))
    backends = ("torch", "onnx") + (("faster-whisper-int8",) if config.peers else ())
    targets = (config.model, str(student), f"{out / 'bundle-dense'}@int8", f"{out / 'bundle-pruned'}@fp32",
               f"{out / 'bundle-pruned'}@int8")
    labels = ("dense", label, "dense-onnx@int8", f"{label}-onnx@fp32", f"{label}-onnx@int8")
    bench = BenchConfig(targets=targets, labels=labels, data=config.data, out=str(out / "bench"), backends=backends,
                        threads=config.threads, repeat=config.repeat, limit=config.limit, force=True,
                        timing_limit=config.timing_limit, memory=config.memory,
                        command=" ".join(argv or ["slimwhisper", "run"]))  # fmt: skip
    t0 = time.perf_counter()
    report = run_bench(bench, progress=progress, say=say, argv=argv)
    seconds["bench"] = round(time.perf_counter() - t0, 1)
    summary = {"config": config.to_dict(), "seconds": seconds,
               "recovery": "not run (pass --recover finetune|lora|distill)" if config.recover is None else "run"}
    write_json(out / "summary.json", summary)
    write_json(out / MARKER, {"kind": "run", "complete": True})
    return report


def _prune(config: RunConfig, path: Path, say: Callable[[str], None], progress: bool) -> None:
    from slimwhisper.compress.prune import prune

    say(f"prune {config.model} ({config.prune.recipe or config.prune.plan or 'ratios'}) -> {path}")
    prune(dataclasses.replace(config.prune, out=str(path), force=False), progress=progress)


def _recover(config: RunConfig, pruned: Path, path: Path, say: Callable[[str], None], progress: bool) -> None:
    """Train the pruned model on the recovery data; the dense model teaches / labels."""
    from slimwhisper.models import load_model
    from slimwhisper.train.checkpoint import Checkpointing
    from slimwhisper.train.recover import recover, save_recovered

    say(f"recover ({config.recover.method.value}) on {config.recover.train.data} -> {path}")
    loaded = load_model(str(pruned))
    # Checkpoints inside the run folder: an interrupted run resumes mid-training, and a changed
    # recovery config is refused by the checkpoint's own check (the run config check comes first).
    folder = path.parent / "recover.checkpoints"
    checkpoint = Checkpointing(folder, every=10, resume=folder.is_dir(), job=config.recover.to_dict())
    recover(loaded, config.recover, teacher=load_model(config.model), progress=progress, log=say, checkpoint=checkpoint)
    save_recovered(loaded, path, config.recover)


def _export(config: RunConfig, source: str, path: Path, say: Callable[[str], None]) -> None:
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.models import load_model

    say(f"export {source} -> {path} (fp32 + int8)")
    export_bundle(load_model(source), path, config.export, log=say)
