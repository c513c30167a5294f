"""``slimwhisper recover`` (training after pruning) and ``slimwhisper tspar`` (lasso training + pruning).

Both build one config (``RecoverConfig`` / ``TsparConfig``) and call the library. Bad input (not a
slim folder, distill without --teacher, existing --out without --force, peft missing) prints one
``error:`` line and exits 2 before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app
from slimwhisper.cli.compress import print_params
from slimwhisper.cli.options import ForceOpt, QuietOpt, SeedOpt, ThreadsOpt, setup_torch

DataOpt = Annotated[list[Path], typer.Option(help="Training speech (.tsv or folder; repeatable: drawn from together). "
                                               "Evaluation sets are refused.")]
StepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (default 40).")]
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs over --n utterances instead of --steps.")]
NOpt = Annotated[int, typer.Option("--n", help="Training utterances (random, --seed).")]
BatchOpt = Annotated[int, typer.Option(help="Utterances per step (each a 30 s window).")]
MaxSecondsOpt = Annotated[float | None, typer.Option(help="Stop training after this many seconds.")]
MaxMinutesOpt = Annotated[float | None, typer.Option(help="Stop training after this many minutes (a checkpoint is written).")]
WarmupOpt = Annotated[float, typer.Option(help="Fraction of the steps with a linearly rising learning rate.")]
PackOpt = Annotated[float | None, typer.Option(help="Join consecutive training clips into windows of up to S seconds "
                                               "(<= 30): one encoder pass then carries several clips (--n counts clips).")]
CkDirOpt = Annotated[Path | None, typer.Option("--checkpoint-dir", help="Checkpoint folder (default OUT.checkpoints).")]
CkEveryOpt = Annotated[int | None, typer.Option(min=1, help="Write a checkpoint every N steps (also on SIGTERM and at --max-minutes).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint folder (same settings required).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu (default) | auto: accelerate's choice (CUDA when present; use with accelerate launch).")]
PrecisionOpt = Annotated[str | None, typer.Option(
    help="no | bf16 | fp16 | auto (bf16 where the CPU/GPU has native bf16; default: accelerate launch's --mixed_precision).")]
EvalOpt = Annotated[Path | None, typer.Option("--eval", help="Labelled data: print WER before and after.")]
EvalLimitOpt = Annotated[int | None, typer.Option(min=1, help="Use only the first N eval utterances.")]


def _train_config(data, n, steps, epochs, lr, batch_size, seed, max_seconds, threads, **more):
    from slimwhisper.train.loop import TrainConfig

    data = list(data) if isinstance(data, (list, tuple)) else [data]
    if more.get("max_minutes") is not None:
        max_seconds = 60 * more.pop("max_minutes") if max_seconds is None else max_seconds
    more.pop("max_minutes", None)
    return TrainConfig(str(data[0]) if data else "", n=n, steps=steps, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                       max_seconds=max_seconds, threads=threads, more_data=tuple(str(d) for d in data[1:]), **more)  # fmt: skip


def _checkpointing(out: Path, folder: Path | None, every: int | None, resume: bool, job: dict, force: bool = False):
    from slimwhisper.train.checkpoint import Checkpointing

    folder = folder or out.with_name(out.name + ".checkpoints")
    if resume and not folder.is_dir():
        from slimwhisper.train.checkpoint import CheckpointError

        raise CheckpointError(f"--resume: no checkpoint folder {folder} (give --checkpoint-dir, or drop --resume)")
    if not resume:  # checked before any work, like every output
        from slimwhisper.outputs import check_output

        check_output(folder, "checkpoints", force=force, option="--checkpoint-dir")
    return Checkpointing(folder, every=every, resume=resume, job=job, force=force)


def _dense_source(model: str) -> str | None:
    """The dense model a slim folder was pruned from (its pruning.json), when it still loads by that name."""
    import json

    try:
        cfgs = json.loads((Path(model) / "pruning.json").read_text()).get("configs") or {}
    except (OSError, ValueError):
        return None
    for key in ("prune", "tspar", "imp"):
        src = (cfgs.get(key) or {}).get("model")
        if isinstance(src, str) and src and src != model:
            return src
    return None


def _check_inputs(model: str, method: str, teacher: str | None, out: Path, force: bool, data: list[Path]) -> None:
    from slimwhisper.models.slimdir import is_slim_dir
    from slimwhisper.outputs import OutputError, check_output
    from slimwhisper.train.recover_config import PEFT_HINT, RecoverError

    problems = []
    if not is_slim_dir(model):
        problems.append(f"--model {model} is not a slimwhisper folder (no slimwhisper.json); prune first: slimwhisper prune ... --out DIR")
    if method in ("distill", "layerwise") and teacher is None:
        problems.append(f"--method {method} needs --teacher, the dense model the folder was pruned from (e.g. tiny.en)")
    try:
        check_output(out, "model", force=force, inputs=[model, teacher, *data])
    except OutputError as exc:
        problems.append(str(exc))
    if not data:
        problems.append("--data is required (training speech: a .tsv or folder, repeatable)")
    problems += [f"--data {d} does not exist" for d in data if not d.exists()]
    if method == "lora":
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            problems.append(PEFT_HINT)
    if problems:
        raise RecoverError("cannot recover", problems)


@app.command()
def recover(
    model: Annotated[str, typer.Option("--model", "-m", help="The pruned slim folder to train.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Folder for the recovered model (must not exist unless --force).")],
    method: Annotated[str, typer.Option(help="finetune | lora | distill (cached top-k KD) | layerwise (encoder layer-wise + e2e KD)")] = "finetune",
    teacher: Annotated[str | None, typer.Option(help="Dense model (needed by distill; labels audio without references).")] = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    n: NOpt = 64,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default per method: 1e-4, LoRA 1e-3).")] = None,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    max_seconds: MaxSecondsOpt = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (update scale alpha / r).")] = 16.0,
    temperature: Annotated[float, typer.Option(help="Distillation temperature T.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Distillation: weight of the label CE (1 - alpha on the KL).")] = 0.5,
    top_k: Annotated[int, typer.Option(help="Teacher log-probs cached per decoder position (KL on the top-k).")] = 64,
    teacher_cache: Annotated[Path | None, typer.Option(help="Teacher cache folder (default: the slimwhisper cache).")] = None,
    decoder_only: Annotated[bool | None, typer.Option("--decoder-only/--no-decoder-only", help="Train the decoder on cached encoder outputs (default: when the encoder is unchanged).")] = None,
    encoder_l2: Annotated[float, typer.Option(help="Weight of the encoder-output L2 in end-to-end KD.")] = 1.0,
    layerwise_steps: Annotated[int, typer.Option(min=1, help="layerwise: steps of the per-layer encoder stage.")] = 50,
    layerwise_lr: Annotated[float, typer.Option(help="layerwise: learning rate of the per-layer stage.")] = 3e-4,
    spec_augment: Annotated[bool, typer.Option("--spec-augment", help="SpecAugment masks on the encoder input.")] = False,
    timestamps: Annotated[float, typer.Option(min=0.0, max=1.0, help="distill/layerwise: share of the training clips "
                          "labelled with the teacher's timestamped transcript (users decode with timestamps).")] = 0.0,
    train_embeddings: Annotated[bool, typer.Option("--train-embeddings", help="Also train the token/positional embeddings (tied output projection); frozen by default.")] = False,
    cached_stem: Annotated[bool, typer.Option("--cached-stem", help="layerwise: the end-to-end stage starts the encoder from the "
                           "cached dense layer-0 input (conv stem frozen), skipping the stem's forward and backward.")] = False,
    warmup: WarmupOpt = 0.0,
    pack_seconds: PackOpt = None,
    max_minutes: MaxMinutesOpt = None,
    checkpoint_dir: CkDirOpt = None,
    checkpoint_every: CkEveryOpt = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = "cpu",
    mixed_precision: PrecisionOpt = None,
    eval_data: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a pruned model back towards the dense one; shapes and parameter count stay the same.

    On GPUs: accelerate launch [--num_processes N] [--mixed_precision bf16] .venv/bin/slimwhisper recover ... --device auto
    """
    from slimwhisper.cli.options import say_fn
    from slimwhisper.evaluate import wer_of
    from slimwhisper.models import load_model
    from slimwhisper.train.recover import recover as run_recover
    from slimwhisper.train.recover import save_recovered
    from slimwhisper.train.recover_config import DEFAULT_LR, RecoverConfig, RecoverMethod

    train_cfg = _train_config(data, n, steps, epochs, lr or DEFAULT_LR.get(method, 1e-4), batch_size, seed, max_seconds,
                              threads, max_minutes=max_minutes, warmup=warmup, checkpoint_every=checkpoint_every,
                              device=device, mixed_precision=mixed_precision, pack_seconds=pack_seconds)  # fmt: skip
    config = RecoverConfig(
        method, train_cfg, lora_rank=lora_rank, lora_alpha=lora_alpha, distill_temperature=temperature, distill_alpha=alpha,
        top_k=top_k, decoder_only=decoder_only, encoder_l2=encoder_l2, layerwise_steps=layerwise_steps,
        layerwise_lr=layerwise_lr, spec_augment=spec_augment, freeze_embeddings=not train_embeddings,
        timestamps=timestamps, cached_stem=cached_stem,
    )  # fmt: skip
    _check_inputs(model, config.method.value, teacher, out, force, data)
    say = say_fn(quiet)
    job = {"model": model, "teacher": teacher, "recover": config.to_dict()}
    ck = _checkpointing(out, checkpoint_dir, checkpoint_every, resume, job, force)
    setup_torch(threads)
    loaded = load_model(model)
    labeller = teacher
    if teacher is None and config.method.value in ("finetune", "lora"):
        labeller = _dense_source(model)  # unlabelled audio is labelled by the DENSE model, never the student
        if labeller is not None:
            say(f"no --teacher: {labeller} (the dense model this folder was pruned from) labels audio without references")
    dense = load_model(labeller) if labeller is not None else None
    before = wer_of(loaded, eval_data, limit=eval_limit, progress=not quiet) if eval_data else None
    run_recover(loaded, config, teacher=dense, progress=not quiet, cache_dir=teacher_cache, checkpoint=ck, log=say)
    save_recovered(loaded, out, config, force=force)
    res = loaded.extra["recovery"]["result"]
    early = " (stopped at --max-seconds)" if res["stopped_early"] else ""
    typer.echo(f"{config.method.value}: {res['steps']} steps in {res['seconds']:.0f} s{early}, "
               f"loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}; saved to {out}")  # fmt: skip
    typer.echo(f"parameters: {loaded.spec.params():,} (unchanged); checkpoints in {ck.folder}")
    if "decoder_side" in res:
        d = res["decoder_side"]
        typer.echo(f"decoder-side: {d['step_s_cached_encoder']:.2f} s/step on cached encoder outputs vs "
                   f"{d['step_s_with_encoder']:.2f} s with the encoder ({d['speedup']:.1f}x, load average {d['loadavg_1m']})")  # fmt: skip
    if before is not None:
        after = wer_of(loaded, eval_data, limit=eval_limit, progress=not quiet)
        typer.echo(f"WER before {100 * before:.2f}%  after {100 * after:.2f}%  ({eval_data})")
    if config.method is RecoverMethod.LORA:
        typer.echo("LoRA adapters merged into the weights: the folder is a plain slim model")


@app.command()
def tspar(
    model: Annotated[str, typer.Option("--model", "-m", help="Dense model: tiny.en, base, a folder, ...")],
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Folder for the pruned model (must not exist unless --force).")],
    lambda_group: Annotated[float, typer.Option(help="Group-lasso weight lambda_g (sum_g sqrt(p_g) ||w_g||).")] = 0.5,
    lambda_l1: Annotated[float, typer.Option(help="L1 weight lambda_1.")] = 0.0,
    regularize: Annotated[str, typer.Option(help="proximal (prox step after AdamW) | penalty (in the loss).")] = "proximal",
    target_params: Annotated[float, typer.Option(help="Remove this fraction of the encoder+decoder layer parameters.")] = 0.3,
    tau: Annotated[float, typer.Option(help="Pass 1: remove groups with ||w_g|| < tau x block median.")] = 0.1,
    max_head_ratio: Annotated[float, typer.Option(help="At most this fraction of a block's heads.")] = 0.5,
    max_neuron_ratio: Annotated[float, typer.Option(help="At most this fraction of a block's FFN neurons.")] = 0.5,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    n: NOpt = 64,
    lr: Annotated[float, typer.Option(help="Learning rate (also the proximal step size).")] = 1e-4,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    max_seconds: MaxSecondsOpt = None,
    pack_seconds: PackOpt = None,
    eval_data: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """TSPAR: fine-tune with a sparse group lasso on heads + FFN neurons, then prune in two passes."""
    from slimwhisper.train.tspar import TsparConfig, run_tspar

    config = TsparConfig(
        model=model, out=str(out), lambda_group=lambda_group, lambda_l1=lambda_l1, regularize=regularize,
        target_params=target_params, tau=tau, max_head_ratio=max_head_ratio, max_neuron_ratio=max_neuron_ratio,
        train=_train_config(data, n, steps, epochs, lr, batch_size, seed, max_seconds, threads, pack_seconds=pack_seconds),
        force=force, eval_data=None if eval_data is None else str(eval_data), eval_limit=eval_limit,
    )  # fmt: skip
    setup_torch(threads)
    result = run_tspar(config, progress=not quiet)
    s2 = result.stage2
    typer.echo(f"stage 1: {result.training.steps} steps, loss {result.training.losses[0]:.3f} -> {result.training.losses[-1]:.3f}")
    typer.echo(f"stage 2: pass 1 removed {len(s2.pass1)} groups (< {tau} x block median), pass 2 {len(s2.pass2)}; "
               f"{100 * s2.fraction:.1f}% of layer parameters; saved to {result.out}")  # fmt: skip
    print_params(result.params_before, result.params_after)
    if result.wer_before is not None:
        typer.echo(f"WER before {100 * result.wer_before:.2f}%  after {100 * result.wer_after:.2f}%  ({eval_data})")


@app.command()
def imp(
    model: Annotated[str, typer.Option("--model", "-m", help="Dense model: tiny.en, base, a folder, ...")],
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Folder for the pruned model (must not exist unless --force).")],
    target_params: Annotated[float, typer.Option(help="Remove this fraction of the encoder+decoder layer parameters.")] = 0.35,
    rounds: Annotated[int, typer.Option(min=1, help="Prune -> recover rounds (magnitude, global threshold).")] = 3,
    steps: StepsOpt = None,
    n: NOpt = 64,
    lr: Annotated[float, typer.Option(help="Learning rate of each round's distillation.")] = 1e-4,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    teacher_cache: Annotated[Path | None, typer.Option(help="Teacher cache folder (default: the slimwhisper cache).")] = None,
    max_minutes: MaxMinutesOpt = None,
    pack_seconds: PackOpt = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Iterative magnitude pruning: remove a fraction, distil from the dense model, repeat (the IMP baseline)."""
    from slimwhisper.cli.options import say_fn
    from slimwhisper.models import load_model
    from slimwhisper.train.imp import ImpConfig, run_imp

    config = ImpConfig(model=model, out=str(out), target_params=target_params, rounds=rounds, force=force,
                       train=_train_config(data, n, steps, None, lr, batch_size, seed, None, threads, max_minutes=max_minutes,
                                           pack_seconds=pack_seconds))  # fmt: skip
    setup_torch(threads)
    dense = load_model(model)
    loaded = run_imp(config, load_model(model), dense, cache_dir=teacher_cache, progress=not quiet, log=say_fn(quiet))
    print_params(dense.spec.params_by_component(), loaded.spec.params_by_component())
    typer.echo(f"IMP: {rounds} rounds to {100 * target_params:.0f}% of layer parameters; saved to {out}")


@app.command()
def average(
    models: Annotated[list[str], typer.Argument(help="Recovered slim folders from the SAME pruned start (e.g. `recover` "
                                                     "run with --seed 0 and --seed 1).")],
    out: Annotated[Path, typer.Option(help="Folder for the averaged model (must not exist unless --force).")],
    weight: Annotated[list[float] | None, typer.Option(help="Weight per model, in order (repeatable; default uniform).")] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Average the weights of recovered runs (a uniform model soup): same shapes, usually better than each run."""
    from slimwhisper.cli.options import say_fn
    from slimwhisper.outputs import check_output
    from slimwhisper.train.soup import SoupConfig, average_models, save_soup

    config = SoupConfig(members=tuple(models), weights=tuple(weight or ()))
    check_output(out, "model", force=force, inputs=[Path(m) for m in models])
    soup = average_models(config, log=say_fn(quiet))
    save_soup(soup, config, out, force=force)
    typer.echo(f"averaged {len(models)} models; saved to {out}")
