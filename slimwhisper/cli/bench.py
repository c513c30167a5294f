"""``slimwhisper bench`` (measure models/bundles) and ``slimwhisper run`` (prune -> export -> bench).

Bad input (missing model/bundle/dataset, existing --out without --force, a dataset with no
clips) prints one ``error:`` line and exits 2; ``SLIMWHISPER_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app

EXIT_USAGE = 2


def _stage_errors() -> tuple[type[BaseException], ...]:
    """Bad-input errors of the stages ``run`` drives (imported late: they live in heavy modules)."""
    from slimwhisper.bench.config import BenchError
    from slimwhisper.compress.prune import PruneError
    from slimwhisper.compress.recipes import RecipeError
    from slimwhisper.compress.recover import RecoverError
    from slimwhisper.export.config import ExportConfigError

    return BenchError, PruneError, RecipeError, RecoverError, ExportConfigError


@contextmanager
def bench_errors() -> Iterator[None]:
    from slimwhisper.cli.core import user_errors

    with user_errors():
        try:
            yield
        except _stage_errors() as exc:
            if os.environ.get("SLIMWHISPER_DEBUG"):
                raise
            typer.echo("error: " + str(exc).replace("\n", " "), err=True)
            raise typer.Exit(EXIT_USAGE) from None


@app.command()
def bench(
    targets: Annotated[list[str], typer.Argument(help="Models (tiny.en, base, folders) and/or bundle folders "
                                                      "(BUNDLE@VARIANT picks a variant). The first is the reference.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset: transcripts .tsv or a folder holding one.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder to create.")],
    backend: Annotated[list[str] | None, typer.Option("--backend", help="torch, torch-cuda, onnx, onnx-cuda, "
                       "faster-whisper-int8, faster-whisper-fp32 (repeatable; default: torch for models, onnx for bundles).")] = None,
    threads: Annotated[int, typer.Option(help="Threads for every backend (torch, onnxruntime, CTranslate2).")] = 2,
    repeat: Annotated[int, typer.Option(help="Timing passes after the warm-up.")] = 5,
    limit: Annotated[int | None, typer.Option(help="Use only the first N clips.")] = None,
    timing_limit: Annotated[int | None, typer.Option(help="Time only the first N of those clips.")] = None,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS in a fresh child per entry.")] = True,
    context: Annotated[int, typer.Option(help="Self-attention context for decoder FLOPs per token.")] = 32,
    label: Annotated[list[str] | None, typer.Option("--label", help="Display name per target (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Measure size, FLOPs, accuracy, latency and memory of models and bundles; write a report."""
    with bench_errors():
        from slimwhisper.bench.config import BenchConfig
        from slimwhisper.bench.report import markdown
        from slimwhisper.bench.suite import ran_any, run_bench
        from slimwhisper.cli.core import _quiet_libraries

        _quiet_libraries()
        config = BenchConfig(targets=tuple(targets), data=str(data), out=str(out), backends=tuple(backend or ()),
                             threads=threads, repeat=repeat, limit=limit, timing_limit=timing_limit, memory=memory,
                             flops_context=context, force=force, labels=tuple(label or ()),
                             command=" ".join(["slimwhisper", *sys.argv[1:]]))
        say = (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))
        report = run_bench(config, progress=not quiet, say=say, argv=["slimwhisper", *sys.argv[1:]])
    typer.echo(markdown(report))
    typer.echo(f"report: {out / 'report.md'}  plots: {', '.join(report.get('plots', [])) or 'none'}", err=True)
    if not ran_any(report):
        typer.echo("error: no entry could run here (see the reasons above)", err=True)
        raise typer.Exit(EXIT_USAGE)


@app.command()
def run(
    model: Annotated[str, typer.Option("--model", "-m", help="Dense model: tiny.en, base, a folder, ...")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation dataset for the final bench.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for everything this run makes.")],
    recipe: Annotated[str | None, typer.Option(help="Named pruning recipe (slimwhisper.compress.recipes).")] = None,
    plan: Annotated[Path | None, typer.Option(help="Prune plan JSON instead of a recipe.")] = None,
    calib: Annotated[Path | None, typer.Option(help="Calibration audio for gradient-scored recipes.")] = None,
    calib_n: Annotated[int, typer.Option(help="Calibration (and recovery training) utterances.")] = 32,
    recover: Annotated[str | None, typer.Option(help="Recovery after pruning: finetune | lora | distill "
                                                     "(trains on --calib; the dense model teaches).")] = None,
    recover_steps: Annotated[int | None, typer.Option(help="Recovery training steps (default: the trainer's).")] = None,
    threads: Annotated[int, typer.Option(help="Threads for every backend.")] = 2,
    repeat: Annotated[int, typer.Option(help="Timing passes after the warm-up.")] = 3,
    limit: Annotated[int | None, typer.Option(help="Bench on the first N clips only.")] = None,
    timing_limit: Annotated[int | None, typer.Option(help="Time only the first N of those clips.")] = None,
    peers: Annotated[bool, typer.Option(help="Also bench faster-whisper int8 on the dense weights.")] = True,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS in a fresh child per entry.")] = True,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Prune -> (recover) -> export fp32 + int8 -> bench dense vs pruned vs faster-whisper, all in --out."""
    with bench_errors():
        from slimwhisper.bench.pipeline import RunConfig, run_pipeline
        from slimwhisper.bench.report import markdown
        from slimwhisper.cli.core import _quiet_libraries

        _quiet_libraries()
        config = RunConfig(model=model, data=str(data), out=str(out), recipe=recipe,
                           plan=None if plan is None else str(plan), calib=None if calib is None else str(calib),
                           calib_n=calib_n, recover=recover, recover_steps=recover_steps, threads=threads,
                           repeat=repeat, limit=limit, timing_limit=timing_limit,
                           peers=peers, memory=memory, force=force)
        say = (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))
        report = run_pipeline(config, progress=not quiet, say=say, argv=["slimwhisper", *sys.argv[1:]])
    typer.echo(markdown(report))
    typer.echo(f"everything is in {out} (bench report: {out / 'bench' / 'report.md'})", err=True)
