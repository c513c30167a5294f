"""``slimwhisper recover`` (training after pruning) and ``slimwhisper tspar`` (lasso training + pruning).

Both build one config (``RecoverConfig`` / ``TsparConfig``) and call the library. Bad input (not a
slim folder, distill without --teacher, existing --out without --force, peft missing) prints one
``error:`` line and exits 2 before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app
from slimwhisper.cli.compress import EXIT_USAGE, ForceOpt, QuietOpt, ThreadsOpt, _setup, print_params, user_errors

DataOpt = Annotated[Path, typer.Option(help="Training speech (.tsv or folder); references used where present.")]
StepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (default 40).")]
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs over --n utterances instead of --steps.")]
NOpt = Annotated[int, typer.Option("--n", help="Training utterances (random, --seed).")]
BatchOpt = Annotated[int, typer.Option(help="Utterances per step (each a 30 s window).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for utterance choice and order.")]
MaxSecondsOpt = Annotated[float | None, typer.Option(help="Stop training after this many seconds.")]
EvalOpt = Annotated[Path | None, typer.Option("--eval", help="Labelled data: print WER before and after.")]
EvalLimitOpt = Annotated[int | None, typer.Option(min=1, help="Use only the first N eval utterances.")]


@contextmanager
def _errors() -> Iterator[None]:
    """``compress``'s bad-input errors plus this stage's, as ``error: ...`` and exit 2."""
    from slimwhisper.compress.lasso import LassoError
    from slimwhisper.compress.recover import RecoverError
    from slimwhisper.compress.train import TrainError
    from slimwhisper.compress.tspar import TsparError

    with user_errors():
        try:
            yield
        except (LassoError, RecoverError, TrainError, TsparError) as exc:
            typer.echo(f"error: {str(exc).strip()}", err=True)
            raise typer.Exit(EXIT_USAGE) from None


def _train_config(data, n, steps, epochs, lr, batch_size, seed, max_seconds, threads):
    from slimwhisper.compress.train import TrainConfig

    return TrainConfig(str(data), n=n, steps=steps, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                       max_seconds=max_seconds, threads=threads)  # fmt: skip


def _wer(loaded, data: Path, limit: int | None, quiet: bool) -> float:
    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    return evaluate(TorchTranscriber(loaded, DecodeConfig()), load_dataset(data, limit=limit), progress=not quiet).wer


def _check_inputs(model: str, method: str, teacher: str | None, out: Path, force: bool, data: Path) -> None:
    from slimwhisper.compress.recover import PEFT_HINT, RecoverError
    from slimwhisper.models.slimdir import is_slim_dir

    problems = []
    if not is_slim_dir(model):
        problems.append(f"--model {model} is not a slimwhisper folder (no slimwhisper.json); prune first: slimwhisper prune ... --out DIR")
    if method == "distill" and teacher is None:
        problems.append("--method distill needs --teacher, the dense model the folder was pruned from (e.g. tiny.en)")
    if out.exists() and not force:
        problems.append(f"--out {out} already exists; choose another folder or pass --force to replace it")
    if not data.exists():
        problems.append(f"--data {data} does not exist")
    if method == "lora":
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            problems.append(PEFT_HINT)
    if problems:
        raise RecoverError("cannot recover:\n  - " + "\n  - ".join(problems))


@app.command()
def recover(
    model: Annotated[str, typer.Option("--model", "-m", help="The pruned slim folder to train.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Folder for the recovered model (must not exist unless --force).")],
    method: Annotated[str, typer.Option(help="finetune | lora | distill")] = "finetune",
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
    eval_data: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a pruned model back towards the dense one; shapes and parameter count stay the same."""
    with _errors():
        from slimwhisper.compress.recover import DEFAULT_LR, RecoverConfig, RecoverMethod
        from slimwhisper.compress.recover import recover as run_recover
        from slimwhisper.compress.recover import save_recovered
        from slimwhisper.models import load_model

        config = RecoverConfig(
            method,
            _train_config(data, n, steps, epochs, lr or DEFAULT_LR.get(method, 1e-4), batch_size, seed, max_seconds, threads),
            lora_rank=lora_rank, lora_alpha=lora_alpha, distill_temperature=temperature, distill_alpha=alpha,
        )  # fmt: skip
        _check_inputs(model, config.method.value, teacher, out, force, data)
        _setup(threads)
        loaded = load_model(model)
        dense = load_model(teacher) if teacher is not None else None
        before = _wer(loaded, eval_data, eval_limit, quiet) if eval_data else None
        run_recover(loaded, config, teacher=dense, progress=not quiet)
        save_recovered(loaded, out, config, force=force)
        res = loaded.extra["recovery"]["result"]
        early = " (stopped at --max-seconds)" if res["stopped_early"] else ""
        typer.echo(f"{config.method.value}: {res['steps']} steps in {res['seconds']:.0f} s{early}, "
                   f"loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}; saved to {out}")  # fmt: skip
        typer.echo(f"parameters: {loaded.spec.params():,} (unchanged)")
        if before is not None:
            after = _wer(loaded, eval_data, eval_limit, quiet)
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
    eval_data: EvalOpt = None,
    eval_limit: EvalLimitOpt = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """TSPAR: fine-tune with a sparse group lasso on heads + FFN neurons, then prune in two passes."""
    with _errors():
        from slimwhisper.compress.tspar import TsparConfig, run_tspar

        config = TsparConfig(
            model=model, out=str(out), lambda_group=lambda_group, lambda_l1=lambda_l1, regularize=regularize,
            target_params=target_params, tau=tau, max_head_ratio=max_head_ratio, max_neuron_ratio=max_neuron_ratio,
            train=_train_config(data, n, steps, epochs, lr, batch_size, seed, max_seconds, threads),
            force=force, eval_data=None if eval_data is None else str(eval_data), eval_limit=eval_limit,
        )  # fmt: skip
        _setup(threads)
        result = run_tspar(config, progress=not quiet)
        s2 = result.stage2
        typer.echo(f"stage 1: {result.training.steps} steps, loss {result.training.losses[0]:.3f} -> {result.training.losses[-1]:.3f}")
        typer.echo(f"stage 2: pass 1 removed {len(s2.pass1)} groups (< {tau} x block median), pass 2 {len(s2.pass2)}; "
                   f"{100 * s2.fraction:.1f}% of layer parameters; saved to {result.out}")  # fmt: skip
        print_params(result.params_before, result.params_after)
        if result.wer_before is not None:
            typer.echo(f"WER before {100 * result.wer_before:.2f}%  after {100 * result.wer_after:.2f}%  ({eval_data})")
