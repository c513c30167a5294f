"""``slimwhisper bench`` (measure models/bundles) and ``slimwhisper run`` (prune -> export -> bench).

Bad input (missing model/bundle/dataset, existing --out without --force, a dataset with no
clips) prints one ``error:`` line and exits 2; ``SLIMWHISPER_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import EXIT_USAGE, app
from slimwhisper.cli.compress import calib_config, choose_alloc
from slimwhisper.cli.options import ForceOpt, ModelOpt, QuietOpt, quiet_libraries, say_fn


@app.command()
def bench(
    targets: Annotated[list[str], typer.Argument(help="Models (tiny.en, base, folders) and/or bundle folders "
                                                      "(BUNDLE@VARIANT picks a variant). The first is the reference.")],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset: transcripts .tsv or a folder holding one "
                                                 "(not needed with --estimate).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder to create (not needed with --estimate).")] = None,
    backend: Annotated[list[str] | None, typer.Option("--backend", help="torch, torch-cuda, onnx, onnx-cuda, "
                       "faster-whisper-int8, faster-whisper-fp32, whisper-cpp (repeatable; default: torch for models, onnx for bundles).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads for every backend (torch, onnxruntime, CTranslate2).")] = 2,
    repeat: Annotated[int, typer.Option(min=1, help="Timing passes after the warm-up.")] = 5,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N clips.")] = None,
    timing_limit: Annotated[int | None, typer.Option(min=1, help="Time only the first N of those clips.")] = None,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS in a fresh child per entry.")] = True,
    context: Annotated[int, typer.Option(help="Self-attention context for decoder FLOPs per token.")] = 32,
    label: Annotated[list[str] | None, typer.Option("--label", help="Display name per target (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips decoded together in the accuracy pass.")] = 1,
    fallback: Annotated[bool, typer.Option("--fallback/--no-fallback", help="openai-whisper temperature fallback "
                                           "(WER without it is reported as well when on).")] = True,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    device: Annotated[str | None, typer.Option("--device", help="Measure ON a device: local, ssh://USER@HOST[:PORT]"
                      "[?key=..&known_hosts=..&python=..]; or a profile name (rpi5, ...) with --estimate.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Device profile (slimwhisper devices list) for "
                       "the RAM check and a labelled estimate beside the measurement.")] = None,
    estimate: Annotated[bool, typer.Option("--estimate", help="Estimate for the profile instead of measuring "
                        "(labelled 'estimate', never a measurement).")] = False,
    clip_seconds: Annotated[float, typer.Option(help="Clip length the --estimate end-to-end time is for.")] = 30.0,
) -> None:
    """Measure size, FLOPs, accuracy, latency and memory of models and bundles; write a report."""
    if device is not None or estimate or profile is not None:
        from slimwhisper.devices.cli_bench import bench_on_device

        bench_on_device(targets, device=device, profile=profile, estimate=estimate, data=data, out=out,
                        threads=threads, repeat=repeat, limit=limit, timing_limit=timing_limit,
                        clip_seconds=clip_seconds, force=force, say=say_fn(quiet))
        return
    from slimwhisper.bench.config import BenchConfig, BenchError
    from slimwhisper.bench.report import markdown
    from slimwhisper.bench.suite import ran_any, run_bench

    if data is None or out is None:
        raise BenchError("give --data DATASET and --out REPORT_DIR (or --device PROFILE --estimate for an estimate)")
    quiet_libraries()
    config = BenchConfig(targets=tuple(targets), data=str(data), out=str(out), backends=tuple(backend or ()),
                         threads=threads, repeat=repeat, limit=limit, timing_limit=timing_limit, memory=memory,
                         flops_context=context, force=force, labels=tuple(label or ()),
                         batch_size=batch_size, fallback=fallback,
                         command=" ".join(["slimwhisper", *sys.argv[1:]]))
    report = run_bench(config, progress=not quiet, say=say_fn(quiet), argv=["slimwhisper", *sys.argv[1:]])
    typer.echo(markdown(report))
    typer.echo(f"report: {out / 'report.md'}  plots: {', '.join(report.get('plots', [])) or 'none'}", err=True)
    if not ran_any(report):
        typer.echo("error: no entry could run here (see the reasons above)", err=True)
        raise typer.Exit(EXIT_USAGE)


@app.command()
def run(
    model: ModelOpt,
    data: Annotated[Path, typer.Option("--data", help="Evaluation dataset for the final bench.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for everything this run makes (rerun to resume).")],
    recipe: Annotated[str | None, typer.Option(help="Named pruning recipe (slimwhisper.compress.recipes).")] = None,
    plan: Annotated[Path | None, typer.Option(help="Prune plan JSON instead of a recipe.")] = None,
    calib: Annotated[list[Path] | None, typer.Option(help="Calibration audio (scores; also the recovery training data); "
                     "repeatable: clips are drawn from all sets together (never an evaluation set).")] = None,
    calib_n: Annotated[int | None, typer.Option(min=1, help="Calibration (and recovery training) utterances "
                                                       "(default: the recipe's, else 32).")] = None,
    recover: Annotated[str | None, typer.Option(help="Recovery after pruning: finetune | lora | distill | layerwise "
                                                     "(trains on --calib; the dense model teaches), or a measured recipe: "
                                                     "kd-ts, lw-ts (slimwhisper.train.recipes).")] = None,
    recover_steps: Annotated[int | None, typer.Option(min=1, help="Recovery training steps (default: the trainer's).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads for every backend.")] = 2,
    repeat: Annotated[int, typer.Option(min=1, help="Timing passes after the warm-up.")] = 3,
    limit: Annotated[int | None, typer.Option(min=1, help="Bench on the first N clips only.")] = None,
    timing_limit: Annotated[int | None, typer.Option(min=1, help="Time only the first N of those clips.")] = None,
    peers: Annotated[bool, typer.Option(help="Also bench faster-whisper int8 on the dense weights.")] = True,
    memory: Annotated[bool, typer.Option(help="Measure peak RSS in a fresh child per entry.")] = True,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prune -> (recover) -> export fp32 + int8 -> bench dense vs pruned vs faster-whisper, all in --out."""
    from slimwhisper.bench.report import markdown
    from slimwhisper.compress.alloc_config import AllocConfig
    from slimwhisper.compress.prune import PruneConfig
    from slimwhisper.compress.recipes import calibration_for
    from slimwhisper.compress.stats import StatsConfig
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.pipeline import RunConfig, RunError, run_pipeline

    if recipe is None and plan is None:
        raise RunError("give --recipe NAME or --plan FILE (see slimwhisper prune --help for the recipes)")
    if recover is not None and not calib:
        raise RunError("--recover trains on --calib audio: pass --calib DATA (e.g. ../shared/data/ljspeech/train.tsv)")
    alloc, score, reconstruct = choose_alloc(recipe, plan, None, AllocConfig())
    # the calibration the recipe was measured with (utterances, encoder stride, label-free, packing), as `prune` does
    calib_n, stride, label_free, pack, stamps = calibration_for(recipe if plan is None else None, calib_n, None)
    calib_cfg = calib_config(calib, calib_n, 0, label_free, pack, stamps) if calib else None
    extra = {} if reconstruct is None else {"reconstruct": reconstruct}
    prune_cfg = PruneConfig(model=model, out=str(out / "pruned"), score=score, alloc=alloc, calib=calib_cfg,
                            plan=None if plan is None else str(plan), recipe=recipe, force=True,
                            stats=StatsConfig(stride=stride), **extra)  # fmt: skip
    config = RunConfig(model=model, data=str(data), out=str(out), prune=prune_cfg,
                       export=ExportConfig(quantize="int8", keep_fp32=True, threads=threads,  # --calib also calibrates the int8 encoder
                                           **({"encoder_int8": "smoothed", "calib": tuple(map(str, calib))} if calib else {})),
                       recover=None if recover is None else _recover_config(recover, calib, calib_n, recover_steps, threads),
                       threads=threads, repeat=repeat, limit=limit, timing_limit=timing_limit,
                       peers=peers, memory=memory, force=force)  # fmt: skip
    quiet_libraries()
    report = run_pipeline(config, progress=not quiet, say=say_fn(quiet), argv=["slimwhisper", *sys.argv[1:]])
    typer.echo(markdown(report))
    typer.echo(f"everything is in {out} (bench report: {out / 'bench' / 'report.md'})", err=True)


def _recover_config(method: str, calib: list[Path], n: int, steps: int | None, threads: int):
    from slimwhisper.train.loop import TrainConfig
    from slimwhisper.train.recipes import RECOVERY_RECIPES
    from slimwhisper.train.recover_config import DEFAULT_LR, RecoverConfig, RecoverMethod

    if method in RECOVERY_RECIPES:  # a measured recipe: everything but the data, threads and --recover-steps
        return RECOVERY_RECIPES[method].config([str(c) for c in calib], threads, steps)
    lr = DEFAULT_LR.get(RecoverMethod(method), 1e-4) if method in {m.value for m in RecoverMethod} else 1e-4
    return RecoverConfig(method, TrainConfig(str(calib[0]), more_data=tuple(str(c) for c in calib[1:]), n=n, steps=steps,
                                             lr=lr, threads=threads))
