"""``slimwhisper sensitivity`` and ``slimwhisper prune``.

Both build one config (``SensitivityConfig`` / ``PruneConfig``) and call the library. Bad input
(ratio out of range, unknown group in a plan, existing --out without --force, empty calibration
data) prints one ``error:`` line and exits 2 before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimwhisper.cli import app
from slimwhisper.cli.options import ForceOpt, ModelOpt, QuietOpt, SeedOpt, ThreadsOpt, setup_torch

CalibNOpt = Annotated[int, typer.Option("--calib-n", help="Calibration utterances (random, --seed).")]
LabelFreeOpt = Annotated[
    bool | None,
    typer.Option("--label-free/--labels", help="Label calibration audio with the dense model's transcript "
                 "(default: only where there is no reference)."),
]  # fmt: skip


def calib_config(paths: list[Path], n: int, seed: int, label_free: bool | None, pack_seconds: float | None = None,
                 timestamps: float = 0.0):
    from slimwhisper.compress.calib import CalibConfig

    return CalibConfig(str(paths[0]), n=n, seed=seed, label_free=label_free, more_data=tuple(str(p) for p in paths[1:]),
                       pack_seconds=pack_seconds, timestamps=timestamps)


@app.command()
def sensitivity(
    model: ModelOpt,
    data: Annotated[list[Path], typer.Option(help="Calibration audio (.tsv or folder); references optional; "
                    "repeatable: utterances are drawn from all sets together.")],
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
    from slimwhisper.compress.sensitivity import SensitivityConfig, format_table, run_sensitivity

    config = SensitivityConfig(
        model=model,
        calib=calib_config(data, calib_n, seed, label_free),
        out=None if out is None else str(out),
        plot=None if plot is None else str(plot),
        force=force,
    )
    setup_torch(threads)
    rows = run_sensitivity(config, progress=not quiet)
    typer.echo(format_table(rows))
    for path in (out, plot):
        if path is not None:
            typer.echo(f"wrote {path}")


def choose_alloc(recipe: str | None, plan: Path | None, score: str | None, options_alloc):
    """(AllocConfig | None, ScoreConfig, the recipe's ReconstructConfig | None) from exactly one of
    --recipe, --plan or the ratio options.

    ``options_alloc`` is the AllocConfig the ratio options describe; any field that differs from
    the default counts as "given", so a recipe or plan combined with ratio options is refused
    naming the options to drop (typed comparison, no option-name strings carried around).
    """
    import dataclasses

    from slimwhisper.compress.alloc_config import AllocConfig
    from slimwhisper.compress.prune import PruneError
    from slimwhisper.compress.recipes import get_recipe
    from slimwhisper.compress.scores import ScoreConfig

    default = AllocConfig()
    given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(AllocConfig)
             if getattr(options_alloc, f.name) != getattr(default, f.name)]  # fmt: skip
    if recipe is not None and plan is not None:
        raise PruneError("give --recipe or --plan, not both")
    if (recipe is not None or plan is not None) and given:
        raise PruneError(f"{'--recipe' if recipe else '--plan'} replaces the ratio options; drop {', '.join(given)}")
    if plan is not None:
        return None, ScoreConfig(score or "magnitude"), None
    if recipe is not None:
        chosen = get_recipe(recipe)
        return chosen.alloc, ScoreConfig(score) if score else chosen.score, chosen.reconstruct
    return options_alloc, ScoreConfig(score or "fisher"), None


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
    calib: Annotated[list[Path] | None, typer.Option(help="Calibration audio (.tsv or folder) for gradient scores and "
                     "re-fits; repeatable: utterances are drawn from all sets together (never an evaluation set).")] = None,
    score: Annotated[str | None, typer.Option(help="A registered importance score: gradient (fisher, taylor), "
                     "activation-aware from calibration Grams (obs, flap, wanda) or magnitude; default fisher, "
                     "or the recipe's. An unknown name lists them all.")] = None,
    threshold: Annotated[
        str | None, typer.Option(help="local (default): same ratio per block; global: one ranking across layers; "
                                      "sensitivity: per-block ratios from measured loss curves (with --target-params/-flops).")
    ] = None,
    reconstruct: Annotated[str | None, typer.Option(help="Re-fit what consumes removed structures: none | bias (FLAP) | "
                                                         "lstsq (least squares to the dense output) | anchored (lstsq with "
                                                         "the ridge toward the dense weights); default none, or the recipe's.")] = None,
    damp: Annotated[float, typer.Option(help="Re-fit damping: lambda = DAMP x mean diag of the Gram (anchored: how "
                                             "strongly kept weights stay near their dense values).")] = 0.01,
    damp_grid: Annotated[list[float] | None, typer.Option(help="Choose each block's damping among these values by "
                                                                "2-fold cross-validation on the calibration audio (repeatable: "
                                                                "--damp-grid 0.01 --damp-grid 0.1 ...).")] = None,
    sequential: Annotated[bool, typer.Option("--sequential/--dense-stats", help="Re-fit block by block on the "
                                             "already-pruned model's inputs (default), or on the dense model's Grams.")] = True,
    reconstruct_target: Annotated[str | None, typer.Option(help="What a re-fit matches: layer (the dense consumer's "
                                  "output) or stream (the dense residual stream after the block, so earlier errors are "
                                  "corrected too; sequential only); default layer, or the recipe's.")] = None,
    refit_all: Annotated[bool | None, typer.Option("--refit-all/--refit-pruned", help="Sequential re-fit of every "
                         "out_proj/fc2, also in blocks that lose nothing (default: only the pruned blocks, or the recipe's).")] = None,
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
    # -- latency budget (issue 13 part 6, compress/budget.py) --
    device: Annotated[str | None, typer.Option(help="Device profile the --latency-budget is for (slimwhisper devices "
                                               "list), e.g. rpi5 or x86-local.")] = None,
    latency_budget: Annotated[str | None, typer.Option(help="Remove the least that brings the estimated time of one "
                              "--clip-seconds clip on --device within SECONDS (1.5, 1.5s, 800ms): bisects the "
                              "--budget-metric fraction of the --threshold allocation. A dense model already within "
                              "budget, or a budget out of reach, is refused (nothing written); replaces "
                              "--target-params/--target-flops, not with --plan/--recipe.")] = None,
    clip_seconds: Annotated[float, typer.Option(help="Clip length the budget is for (windows + tokens).")] = 10.0,
    precision: Annotated[str, typer.Option(help="Bundle precision the budget is for: int8 | fp32.")] = "int8",
    device_threads: Annotated[int | None, typer.Option(help="Threads on the device (default: its cores).")] = None,
    budget_metric: Annotated[str, typer.Option(help="What the searched fraction counts: flops | params.")] = "flops",
    # -- vocabulary pruning (issue 12, compress/vocab.py) --
    vocab: Annotated[str | None, typer.Option(help="Keep only the tokens this language's corpus uses (+ specials, "
                     "timestamps, 256 bytes); slices the tied embedding/output projection. Known: en.")] = None,
    max_vocab: Annotated[int | None, typer.Option(help="With --vocab: keep the N most used tokens in all.")] = None,
    vocab_coverage: Annotated[float | None, typer.Option(help="With --vocab: keep the fewest tokens that cover this "
                              "fraction (0-1] of the corpus's tokens.")] = None,
    vocab_refs: Annotated[list[Path] | None, typer.Option(help="Labelled data whose references' coverage is reported "
                          "(never used to choose tokens); repeatable.")] = None,
    vocab_text: Annotated[list[Path] | None, typer.Option(help="Labelled TRAINING data whose transcripts join the "
                          "corpus as running text (never an evaluation set); repeatable.")] = None,
    calib_n: Annotated[int | None, typer.Option("--calib-n", min=1, help="Calibration utterances (random, --seed; "
                       "default: the recipe's, else 32).")] = None,
    stats_stride: Annotated[int | None, typer.Option(min=1, help="Keep every N-th encoder frame in the re-fit's "
                            "Gram matrices (default: the recipe's, else 1 = all 1500).")] = None,
    calib_pack_seconds: Annotated[float | None, typer.Option(help="Join the drawn calibration clips into windows of up "
                                  "to this many seconds (<= 30): more speech and decoder tokens per encoder pass "
                                  "(default: the recipe's, else none).")] = None,
    calib_timestamps: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Share of the calibration examples "
                                "teacher-forced in timestamp mode on the dense model's timestamped transcript, as "
                                "transcribe/eval decode (default: the recipe's, else 0).")] = None,
    seed: SeedOpt = 0,
    label_free: LabelFreeOpt = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="Labelled data: print WER before and after.")] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N eval utterances.")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Remove heads / channels / neurons / layers and save a smaller model that reloads with --model OUT."""
    from slimwhisper.compress.prune import PruneConfig
    from slimwhisper.compress.prune import prune as run_prune
    from slimwhisper.compress.alloc_config import AllocConfig
    from slimwhisper.compress.recipes import calibration_for
    from slimwhisper.compress.scores import ScoreConfig
    from slimwhisper.compress.stats import StatsConfig

    from slimwhisper.compress.budget import budget_from_options

    calib_n, stride, label_free, calib_pack_seconds, calib_timestamps = calibration_for(
        recipe, calib_n, stats_stride, label_free, calib_pack_seconds, timestamps=calib_timestamps)

    latency = budget_from_options(device, latency_budget, clip_seconds=clip_seconds, precision=precision,
                                  threads=device_threads, metric=budget_metric, target_params=target_params,
                                  target_flops=target_flops, plan=plan, recipe=recipe)  # fmt: skip
    if latency is not None:  # the search sets the fraction; 0.0 holds its place
        target_params, target_flops = latency.placeholder_targets()
    options_alloc = AllocConfig(
        threshold=threshold or "local", heads=heads, ffn=ffn, qk=qk, vo=vo, components=tuple(component or ()),
        drop_encoder_layers=drop_encoder_layers, drop_decoder_layers=drop_decoder_layers,
        target_params=target_params, target_flops=target_flops, channel_pattern=channel_pattern,
    )  # fmt: skip
    vocab_cfg = None
    if vocab is not None or max_vocab is not None or vocab_coverage is not None or vocab_text:
        from slimwhisper.compress.vocab import VocabConfig, VocabError

        if vocab is None:
            raise VocabError("--max-vocab / --vocab-coverage / --vocab-text need --vocab LANG (e.g. --vocab en)")
        vocab_cfg = VocabConfig(language=vocab, max_vocab=max_vocab, coverage=vocab_coverage,
                                references=tuple(str(r) for r in vocab_refs or ()),
                                texts=tuple(str(t) for t in vocab_text or ()))
    structured = options_alloc != AllocConfig() or recipe is not None or plan is not None
    alloc, score_cfg, recipe_reconstruct = (choose_alloc(recipe, plan, score, options_alloc) if structured or vocab_cfg is None
                                            else (None, ScoreConfig(score or "magnitude"), None))  # fmt: skip
    if reconstruct is not None or recipe_reconstruct is None:
        from slimwhisper.compress.reconstruct_config import ReconstructConfig

        rec = ReconstructConfig(method=reconstruct or "none", damp=damp, sequential=sequential, damp_grid=tuple(damp_grid or ()))
    else:
        rec = recipe_reconstruct
    if reconstruct_target is not None or refit_all is not None:
        import dataclasses

        rec = dataclasses.replace(rec, target=reconstruct_target or rec.target,
                                  refit_all=rec.refit_all if refit_all is None else refit_all)  # fmt: skip
    config = PruneConfig(
        model=model,
        out=str(out),
        score=score_cfg,
        alloc=alloc,
        plan=None if plan is None else str(plan),
        calib=calib_config(calib, calib_n, seed, label_free, calib_pack_seconds, calib_timestamps) if calib else None,
        stats=StatsConfig(stride=stride),
        force=force,
        eval_data=None if eval_data is None else str(eval_data),
        eval_limit=eval_limit,
        recipe=recipe,
        reconstruct=rec,
        latency=latency,
        vocab=vocab_cfg,
    )
    setup_torch(threads)
    result = run_prune(config, progress=not quiet)
    typer.echo(f"removed {len(result.plan.remove)} groups from {result.loaded.name}; saved to {result.out}")
    print_params(result.params_before, result.params_after)
    if result.wer_before is not None:
        typer.echo(f"WER before {100 * result.wer_before:.2f}%  after {100 * result.wer_after:.2f}%  ({eval_data})")
