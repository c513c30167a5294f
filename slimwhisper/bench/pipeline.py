"""``slimwhisper run``: prune -> (recovery) -> export fp32 + int8 -> bench, all inside one folder.

Layout of ``out`` (every stage's config is saved beside what it made):

    run_config.json            this RunConfig
    pruned/                    the pruned model (slimwhisper folder, with its prune config)
    recovered/                 with --recover: the pruned model after recovery training (its config inside)
    bundle-dense/              dense ONNX bundle, variants fp32 + int8 (export_config.json inside)
    bundle-pruned/             pruned ONNX bundle, variants fp32 + int8
    bench/                     report.json, report.md, plots, bench_config.json
    summary.json               what ran, how long each stage took, and what was skipped
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slimwhisper.bench.config import BenchConfig, BenchError


@dataclass(frozen=True)
class RunConfig:
    model: str
    data: str
    out: str
    recipe: str | None = None  # a named recipe (slimwhisper.compress.recipes) ...
    plan: str | None = None  # ... or a plan JSON file
    calib: str | None = None  # calibration audio for gradient scores (default: none -> magnitude needs none)
    calib_n: int = 32
    recover: str | None = None  # finetune | lora | distill (trains on --calib audio; the dense model teaches)
    recover_steps: int | None = None  # None: the trainer's default
    threads: int = 2
    repeat: int = 3
    limit: int | None = None
    timing_limit: int | None = None
    peers: bool = True  # also bench faster-whisper int8 on the dense weights
    memory: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        problems = []
        if (self.recipe is None) == (self.plan is None):
            problems.append("give exactly one of --recipe NAME or --plan FILE")
        if self.recipe is not None:
            from slimwhisper.compress.recipes import RECIPES

            if self.recipe not in RECIPES:
                problems.append(f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}")
            elif RECIPES[self.recipe].score.needs_grads and self.calib is None:
                problems.append(f"recipe {self.recipe!r} scores with gradients: pass --calib DATA "
                                "(e.g. ../shared/data/ljspeech/train.tsv)")
        if self.recover is not None:
            from slimwhisper.compress.recover import RecoverMethod

            methods = [m.value for m in RecoverMethod]
            if self.recover not in methods:
                problems.append(f"--recover must be one of {', '.join(methods)}, got {self.recover!r}")
            if self.calib is None:
                problems.append("--recover trains on --calib audio: pass --calib DATA")
        if self.plan is not None and not Path(self.plan).is_file():
            problems.append(f"plan file {self.plan} does not exist")
        for name in ("data", "calib"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                problems.append(f"--{name} {value} does not exist")
        for name in ("threads", "repeat", "calib_n"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be a positive integer")
        if Path(self.out).exists() and not self.force:
            problems.append(f"{self.out} already exists; choose a new --out or pass --force to replace it")
        if problems:
            raise BenchError("invalid run config:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prune(config: RunConfig, out: Path, say: Callable[[str], None], progress: bool):
    from slimwhisper.compress.calib import CalibConfig
    from slimwhisper.compress.prune import PruneConfig, prune
    from slimwhisper.compress.recipes import get_recipe

    recipe = get_recipe(config.recipe) if config.recipe else None
    calib = CalibConfig(config.calib, n=config.calib_n) if config.calib else None
    if recipe is not None:
        prune_config = PruneConfig(model=config.model, out=str(out), score=recipe.score, alloc=recipe.alloc,
                                   calib=calib, recipe=config.recipe)
    else:
        prune_config = PruneConfig(model=config.model, out=str(out), plan=config.plan, calib=calib)
    say(f"prune {config.model} with {config.recipe or config.plan} -> {out}")
    return prune(prune_config, progress=progress)


def _recover(config: RunConfig, loaded, out: Path, say: Callable[[str], None], progress: bool) -> dict[str, Any]:
    """Train the pruned model in place on the calibration audio (dense model as teacher/labeller)."""
    from slimwhisper.compress.recover import DEFAULT_LR, RecoverConfig, RecoverMethod, recover, save_recovered
    from slimwhisper.compress.train import TrainConfig
    from slimwhisper.models import load_model

    method = RecoverMethod(config.recover)
    rc = RecoverConfig(method, TrainConfig(str(config.calib), n=config.calib_n, steps=config.recover_steps,
                                           lr=DEFAULT_LR[method], threads=config.threads))
    say(f"recover ({method.value}) on {config.calib} -> {out}")
    recover(loaded, rc, teacher=load_model(config.model), progress=progress)
    save_recovered(loaded, out, rc)
    return rc.to_dict()


def _export(loaded, out: Path, threads: int, say: Callable[[str], None]) -> dict:
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig

    say(f"export {loaded.name} -> {out} (fp32 + int8)")
    return export_bundle(loaded, out, ExportConfig(quantize="int8", keep_fp32=True, threads=threads), log=say)


def run_pipeline(config: RunConfig, *, progress: bool = True, say: Callable[[str], None] = print,
                 argv: list[str] | None = None) -> dict[str, Any]:
    """Run every stage into ``config.out``; returns the bench report (also in out/bench/report.json)."""
    from slimwhisper.bench.suite import run_bench
    from slimwhisper.models import load_model

    out = Path(config.out)
    if out.exists():  # validated: only with --force
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "run_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pruned = _prune(config, out / "pruned", say, progress)
    seconds["prune"] = time.perf_counter() - t0
    summary: dict[str, Any] = {"prune": pruned.to_dict(), "seconds": seconds,
                               "recovery": "not run (pass --recover finetune|lora|distill)"}
    student, student_label = out / "pruned", "pruned"
    if config.recover:
        t0 = time.perf_counter()
        summary["recovery"] = _recover(config, pruned.loaded, out / "recovered", say, progress)
        student, student_label = out / "recovered", f"pruned+{config.recover}"
        seconds["recover"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _export(pruned.loaded, out / "bundle-pruned", config.threads, say)
    del pruned
    dense = load_model(config.model)
    _export(dense, out / "bundle-dense", config.threads, say)
    del dense
    seconds["export"] = time.perf_counter() - t0
    backends = ("torch", "onnx") + (("faster-whisper-int8",) if config.peers else ())
    targets = (config.model, str(student), f"{out / 'bundle-dense'}@int8", f"{out / 'bundle-pruned'}@fp32",
               f"{out / 'bundle-pruned'}@int8")
    labels = ("dense", student_label, "dense-onnx@int8", f"{student_label}-onnx@fp32", f"{student_label}-onnx@int8")
    bench_config = BenchConfig(targets=targets, labels=labels, data=config.data, out=str(out / "bench"),
                               backends=backends, threads=config.threads, repeat=config.repeat, limit=config.limit,
                               timing_limit=config.timing_limit, memory=config.memory,
                               command=" ".join(argv or ["slimwhisper", "run"]))
    t0 = time.perf_counter()
    report = run_bench(bench_config, progress=progress, say=say, argv=argv)
    seconds["bench"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report
