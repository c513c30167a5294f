"""``slimwhisper sensitivity`` and ``slimwhisper prune``.

Both build one config (``SensitivityConfig`` / ``PruneConfig``) and call the library. Bad input
(ratio out of range, unknown group in a plan, existing --out without --force, empty calibration
data) prints one ``error:`` line and exits 2 before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app

EXIT_USAGE = 2

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="tiny.en, base, a model folder, ...")]
CalibNOpt = Annotated[int, typer.Option("--calib-n", help="Calibration utterances (random, --seed).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for picking calibration utterances.")]
LabelFreeOpt = Annotated[
    bool | None,
    typer.Option("--label-free/--labels", help="Label calibration audio with the dense model's transcript "
                 "(default: only where there is no reference)."),
]  # fmt: skip
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads for torch.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _compress_errors() -> tuple[type[BaseException], ...]:
    from slimwhisper.cli.core import _user_errors
    from slimwhisper.compress.allocate import AllocError
    from slimwhisper.compress.calib import CalibError
    from slimwhisper.compress.groups import GroupError
    from slimwhisper.compress.plan import PlanError
    from slimwhisper.compress.prune import PruneError
    from slimwhisper.compress.recipes import RecipeError
    from slimwhisper.compress.scores import ScoreError
    from slimwhisper.compress.sensitivity import SensitivityError

    mine = (AllocError, CalibError, GroupError, PlanError, PruneError, RecipeError, ScoreError, SensitivityError)
    return (*_user_errors(), *mine, *_slimdir_errors())


def _slimdir_errors() -> tuple[type[BaseException], ...]:
    try:
        from slimwhisper.models import slimdir
    except ImportError:
        return ()
    return tuple(v for k, v in vars(slimdir).items() if isinstance(v, type) and issubclass(v, Exception) and k.endswith("Error"))


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input -> ``error: ...`` on stderr (list items kept on their own lines), exit 2."""
    try:
        yield
    except Exception as exc:
        if os.environ.get("SLIMWHISPER_DEBUG") or not isinstance(exc, _compress_errors()):
            raise
        typer.echo(f"error: {str(exc).strip() or type(exc).__name__}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _setup(threads: int | None) -> None:
    import torch

    from slimwhisper.cli.core import _quiet_libraries

    if threads is not None:
        torch.set_num_threads(threads)
    _quiet_libraries()


@app.command()
def sensitivity(
    model: ModelOpt,
    data: Annotated[Path, typer.Option(help="Calibration audio (.tsv or folder); references optional.")],
    out: Annotated[Path | None, typer.Option(help="Write the table as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a heat map PNG here.")] = None,
    calib_n: CalibNOpt = 64,
    seed: SeedOpt = 0,
    label_free: LabelFreeOpt = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Per-component sensitivity S_g (gradient/weight norm) and S_h (mean Fisher), arXiv 2511.08092."""
    with user_errors():
        from slimwhisper.compress.calib import CalibConfig
        from slimwhisper.compress.sensitivity import SensitivityConfig, format_table, run_sensitivity

        config = SensitivityConfig(
            model=model,
            calib=CalibConfig(str(data), n=calib_n, seed=seed, label_free=label_free),
            out=None if out is None else str(out),
            plot=None if plot is None else str(plot),
            force=force,
        )
        _setup(threads)
        rows = run_sensitivity(config, progress=not quiet)
        typer.echo(format_table(rows))
        for path in (out, plot):
            if path is not None:
                typer.echo(f"wrote {path}")


def _alloc_and_score(opts: dict):
    """AllocConfig + ScoreConfig from --recipe or from the ratio options (not both)."""
    from slimwhisper.compress.allocate import AllocConfig, AllocError
    from slimwhisper.compress.recipes import get_recipe
    from slimwhisper.compress.scores import ScoreConfig

    ratio_opts = {k: v for k, v in opts.items() if k not in ("score", "channel_pattern", "recipe") and v}
    if opts["recipe"]:
        if ratio_opts:
            raise AllocError(f"--recipe replaces the ratio options; drop {', '.join('--' + k.replace('_', '-') for k in ratio_opts)}")
        recipe = get_recipe(opts["recipe"])
        score = ScoreConfig(opts["score"]) if opts["score"] else recipe.score
        return recipe.alloc, score
    alloc = AllocConfig(
        threshold=opts["threshold"] or "local",
        heads=opts["heads"],
        ffn=opts["ffn"],
        qk=opts["qk"],
        vo=opts["vo"],
        components=tuple(opts["component"] or ()),
        drop_encoder_layers=opts["drop_encoder_layers"],
        drop_decoder_layers=opts["drop_decoder_layers"],
        target_params=opts["target_params"],
        target_flops=opts["target_flops"],
        channel_pattern=opts["channel_pattern"],
    )
    return alloc, ScoreConfig(opts["score"] or "fisher")


def print_params(before: dict[str, int], after: dict[str, int]) -> None:
    typer.echo(f"{'component':<22}{'before':>12}{'after':>12}{'removed':>10}")
    for key in before:
        b, a = before[key], after.get(key, 0)
        typer.echo(f"{key:<22}{b:>12,}{a:>12,}{(1 - a / b) * 100 if b else 0:>9.1f}%")
    tb, ta = sum(before.values()), sum(after.values())
    typer.echo(f"{'total':<22}{tb:>12,}{ta:>12,}{(1 - ta / tb) * 100:>9.1f}%")
    lb = sum(v for k, v in before.items() if not k.endswith(".embed"))
    la = sum(v for k, v in after.items() if not k.endswith(".embed"))
    typer.echo(f"{'layers (enc+dec)':<22}{lb:>12,}{la:>12,}{(1 - la / lb) * 100:>9.1f}%")


@app.command()
def prune(
    model: ModelOpt,
    out: Annotated[Path, typer.Option(help="Folder for the pruned model (must not exist unless --force).")],
    calib: Annotated[Path | None, typer.Option(help="Calibration audio (.tsv or folder) for gradient scores.")] = None,
    score: Annotated[str | None, typer.Option(help="fisher | taylor | magnitude (default fisher, or the recipe's).")] = None,
    threshold: Annotated[
        str | None, typer.Option(help="global: one ranking across layers; local (default): same ratio per block.")
    ] = None,
    heads: Annotated[float, typer.Option(help="Fraction of attention heads to remove.")] = 0.0,
    ffn: Annotated[float, typer.Option(help="Fraction of FFN neurons to remove.")] = 0.0,
    qk: Annotated[float, typer.Option(help="Fraction of Q/K channels to remove.")] = 0.0,
    vo: Annotated[float, typer.Option(help="Fraction of V/O channels to remove.")] = 0.0,
    component: Annotated[
        list[str] | None, typer.Option(help="SELECTOR=RATIO, e.g. decoder.self_attn=0.5, encoder[-4:].self_attn=0.5 (repeatable).")
    ] = None,
    drop_encoder_layers: Annotated[int, typer.Option(help="Drop the K lowest-scoring encoder layers.")] = 0,
    drop_decoder_layers: Annotated[int, typer.Option(help="Drop the K lowest-scoring decoder layers.")] = 0,
    target_params: Annotated[float | None, typer.Option(help="Remove this fraction of the encoder+decoder layer parameters.")] = None,
    target_flops: Annotated[float | None, typer.Option(help="Remove this fraction of the FLOPs of a 30 s window.")] = None,
    channel_pattern: Annotated[str, typer.Option(help="Q/K, V/O channels: shared (same in every head) | per_head.")] = "shared",
    plan: Annotated[Path | None, typer.Option(help="Plan JSON {\"remove\": [group names]} instead of scoring.")] = None,
    recipe: Annotated[str | None, typer.Option(help="A named recipe (see slimwhisper.compress.recipes).")] = None,
    calib_n: CalibNOpt = 32,
    seed: SeedOpt = 0,
    label_free: LabelFreeOpt = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="Labelled data: print WER before and after.")] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N eval utterances.")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Remove heads / channels / neurons / layers and save a smaller model that reloads with --model OUT."""
    with user_errors():
        from slimwhisper.compress.calib import CalibConfig
        from slimwhisper.compress.prune import PruneConfig, PruneError
        from slimwhisper.compress.prune import prune as run_prune
        from slimwhisper.compress.scores import ScoreConfig

        opts = {
            "recipe": recipe, "score": score, "threshold": threshold, "heads": heads, "ffn": ffn, "qk": qk, "vo": vo,
            "component": component, "drop_encoder_layers": drop_encoder_layers,
            "drop_decoder_layers": drop_decoder_layers, "target_params": target_params,
            "target_flops": target_flops, "channel_pattern": channel_pattern,
        }  # fmt: skip
        if plan is not None:
            if any(v for k, v in opts.items() if k not in ("score", "threshold", "channel_pattern")):
                raise PruneError("--plan lists the groups to remove; drop the ratio / --recipe options")
            alloc, score_cfg = None, ScoreConfig(score or "magnitude")
        else:
            alloc, score_cfg = _alloc_and_score(opts)
        config = PruneConfig(
            model=model,
            out=str(out),
            score=score_cfg,
            alloc=alloc,
            plan=None if plan is None else str(plan),
            calib=None if calib is None else CalibConfig(str(calib), n=calib_n, seed=seed, label_free=label_free),
            force=force,
            eval_data=None if eval_data is None else str(eval_data),
            eval_limit=eval_limit,
            recipe=recipe,
        )
        _setup(threads)
        result = run_prune(config, progress=not quiet)
        typer.echo(f"removed {len(result.plan.remove)} groups from {result.loaded.name}; saved to {result.out}")
        print_params(result.params_before, result.params_after)
        if result.wer_before is not None:
            typer.echo(f"WER before {100 * result.wer_before:.2f}%  after {100 * result.wer_after:.2f}%  ({eval_data})")
