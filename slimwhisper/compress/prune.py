"""One-shot structured pruning: load -> calibrate -> score -> allocate (or read a plan) ->
[re-fit] -> remove -> save, with parameters (and optionally WER) before and after.

Calibration statistics are computed only when something asks for them: gradient scores
(``fisher``/``taylor``), Gram scores (``obs``/``flap``/``wanda``), the ``sensitivity`` threshold
and reconstruction (``ReconstructConfig.method`` ``bias``/``lstsq``/``anchored``, see ``reconstruct.py``).

``PruneConfig`` holds everything (it is saved as JSON beside the pruned weights); ``prune(config)``
runs it. The pruned weights are smaller tensors, not masks (``surgery.apply_plan``), saved with
their ``ArchSpec`` and ``PruneRecord`` by ``models.slimdir.save_slim``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slimwhisper.compress.alloc_config import AllocConfig
from slimwhisper.compress.allocate import Allocation, allocate
from slimwhisper.compress.budget import LatencyBudget
from slimwhisper.compress.calib import CalibConfig, prepare
from slimwhisper.compress.groups import enumerate_groups
from slimwhisper.compress.plan import PrunePlan, PruneRecord
from slimwhisper.compress.reconstruct_config import ReconstructConfig
from slimwhisper.compress.scores import ScoreConfig, score_groups
from slimwhisper.compress.stats import StatsConfig
from slimwhisper.compress.vocab import VocabConfig
from slimwhisper.errors import UserError

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel


class PruneError(UserError, ValueError):
    """The pruning job cannot run as configured; the message lists every problem."""


@dataclass(frozen=True)
class PruneConfig:
    model: str
    out: str
    score: ScoreConfig = field(default_factory=ScoreConfig)
    alloc: AllocConfig | None = None
    plan: str | None = None  # a plan JSON file instead of score + alloc
    calib: CalibConfig | None = None  # needed by gradient scores
    force: bool = False
    eval_data: str | None = None
    eval_limit: int | None = None
    recipe: str | None = None  # name of the recipe alloc/score came from (for the record)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    vocab: VocabConfig | None = None  # vocabulary pruning (issue 12), after any structured pruning
    latency: LatencyBudget | None = None  # search the allocation's budget fraction for it (budget.py)

    def __post_init__(self) -> None:
        self._price_the_anchored_refit()
        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append("model must be a source such as 'tiny.en', 'base' or a folder")
        if not self.out:
            problems.append("out must be a folder path for the pruned model")
        elif Path(self.out).exists() and not self.force:
            problems.append(f"out {self.out} already exists; choose another folder or pass --force to replace it")
        if (self.alloc is not None and self.plan is not None) or (self.alloc is None and self.plan is None
                                                                  and self.vocab is None):
            problems.append("give exactly one of an allocation (ratios / --recipe / --target-params) or --plan FILE "
                            "(or only --vocab LANG)")
        if self.plan is not None and not Path(self.plan).is_file():
            problems.append(f"plan file {self.plan} does not exist")
        if self.alloc is not None and self.score.needs_calib and self.calib is None:
            problems.append(f"score {self.score.name!r} needs calibration audio: pass --calib DATA (or --score magnitude)")
        if self.reconstruct.active and self.calib is None:
            problems.append(f"--reconstruct {self.reconstruct.method} needs calibration audio: pass --calib DATA")
        if self.alloc is not None and self.alloc.threshold.value == "sensitivity" and self.calib is None:
            problems.append("threshold 'sensitivity' measures calibration loss: pass --calib DATA")
        if self.eval_data is not None and not Path(self.eval_data).exists():
            problems.append(f"eval data {self.eval_data} does not exist")
        if self.eval_limit is not None and (not isinstance(self.eval_limit, int) or self.eval_limit < 1):
            problems.append(f"eval_limit must be an int >= 1, got {self.eval_limit!r}")
        if self.latency is not None and self.alloc is None:
            problems.append("a latency budget chooses the plan: give an allocation (score + threshold), not --plan")
        if problems:
            raise PruneError("invalid prune config", problems)

    def _price_the_anchored_refit(self) -> None:
        """Sensitivity curves re-fit each block as the reconstruction will: an anchored re-fit is
        priced anchored, with its damping (recorded in the saved config)."""
        a, rec = self.alloc, self.reconstruct
        if not isinstance(a, AllocConfig) or a.threshold.value != "sensitivity" or not isinstance(rec, ReconstructConfig) or not rec.anchor:
            return
        sens = dataclasses.replace(a.sensitivity, anchor=True, anchor_damp=rec.damp)
        object.__setattr__(self, "alloc", dataclasses.replace(a, sensitivity=sens))

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "out": str(self.out),
            "score": self.score.to_dict(),
            "alloc": None if self.alloc is None else self.alloc.to_dict(),
            "plan": self.plan,
            "calib": None if self.calib is None else dataclasses.asdict(self.calib),
            "eval_data": self.eval_data,
            "eval_limit": self.eval_limit,
            "recipe": self.recipe,
            "reconstruct": self.reconstruct.to_dict(),
            "stats": self.stats.to_dict(),
            "vocab": None if self.vocab is None else self.vocab.to_dict(),
            "latency_budget": None if self.latency is None else self.latency.to_dict(),
        }

    @property
    def needs_examples(self) -> bool:
        return self.calib is not None and (
            self.reconstruct.active or (self.alloc is not None and (self.score.needs_calib or self.alloc.threshold.value == "sensitivity"))
        )

    @property
    def needs_grams(self) -> bool:
        """Dense-model Grams: Gram scores, the sensitivity threshold, non-sequential re-fits."""
        alloc = self.alloc is not None and (self.score.needs_grams or self.alloc.threshold.value == "sensitivity")
        return alloc or (self.reconstruct.active and not self.reconstruct.sequential)


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model, in memory
    record: PruneRecord
    plan: PrunePlan
    params_before: dict[str, int]  # by component (ArchSpec.params_by_component)
    params_after: dict[str, int]
    out: Path
    allocation: Allocation | None = None
    wer_before: float | None = None
    wer_after: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    reconstruction: dict | None = None

    def summary_rows(self) -> list[tuple[str, int, int]]:
        keys = list(self.params_before)
        return [(k, self.params_before[k], self.params_after.get(k, 0)) for k in keys]

    def to_dict(self) -> dict:
        return {
            "model": self.loaded.name,
            "out": str(self.out),
            "removed_groups": len(self.plan.remove),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "wer_before": self.wer_before,
            "wer_after": self.wer_after,
            "allocation": None
            if self.allocation is None
            else allocation_dict(self.allocation),
            "reconstruction": self.reconstruction,
            "seconds": self.seconds,
        }


def allocation_dict(a: Allocation) -> dict:
    return {"metric": a.metric, "fraction": a.fraction, "counts": {k: list(v) for k, v in a.counts.items()}, "blocks": a.details}


@dataclass
class Calibration:
    """What calibration produced for one job (examples, dense Grams), shared by its steps."""

    examples: list | None = None
    grams: object | None = None  # stats.DenseStats
    holdout: list | None = None  # sensitivity threshold: utterances its KL is measured on, not in the Grams
    seconds: float = 0.0


def holdout_split(examples: list, n: int) -> tuple[list, list]:
    """(fit, held out): ``n`` examples spread evenly over the list (which is sorted by id, i.e. by
    data set and speaker) are held out of the Grams for the sensitivity KL, so that with several
    calibration sets the measurement sees all of them, not only the set whose ids sort last."""
    picks = {min(len(examples) - 1, int((i + 0.5) * len(examples) / n)) for i in range(n)}
    return [e for i, e in enumerate(examples) if i not in picks], [examples[i] for i in sorted(picks)]


def calibrate(loaded: LoadedModel, config: PruneConfig, progress: bool = True, log=print) -> Calibration:
    """Examples (dense pseudo-labels where needed) and dense Grams, only when the job needs them."""
    from slimwhisper.compress.stats import dense_stats

    t0 = time.perf_counter()
    cal = Calibration()
    if config.needs_examples:
        cal.examples = prepare(loaded, config.calib, cache_root=config.stats.cache_root())
        log(f"calibration: {len(cal.examples)} utterances labelled in {time.perf_counter() - t0:.1f} s")
    fit = cal.examples
    if cal.examples is not None and config.alloc is not None and config.alloc.threshold.value == "sensitivity":
        n = config.alloc.sensitivity.n
        if len(cal.examples) <= n:
            packed = config.calib.pack_seconds is not None
            raise PruneError(f"threshold 'sensitivity' holds out {n} calibration examples for its KL measurement and needs "
                             f"more for the statistics: got {len(cal.examples)}"
                             + (f" windows of {config.calib.pack_seconds:g} s; pass more --calib-n clips (about 4 per window) "
                                "or a shorter --calib-pack-seconds" if packed else f"; pass --calib-n {n + 32} or more"))  # fmt: skip
        fit, cal.holdout = holdout_split(cal.examples, n)
    if config.needs_grams and fit is not None:
        cal.grams = dense_stats(loaded.model, fit, config.stats, progress, log)
    cal.seconds = time.perf_counter() - t0
    return cal


def choose_plan(loaded: LoadedModel, config: PruneConfig, progress: bool = True, cal: Calibration | None = None,
                log=print) -> tuple[PrunePlan, Allocation | None]:  # fmt: skip
    """The plan file as given (validated against the model), or calibrate + score + allocate."""
    if config.plan is None and config.alloc is None:  # vocabulary pruning only: no structure removed
        return PrunePlan(remove=frozenset()), None
    if config.plan is not None:
        plan = PrunePlan.load(config.plan)
        plan.validate(loaded.model)
        return plan, None
    alloc = config.alloc if config.latency is None else config.latency.template(config.alloc)
    assert alloc is not None
    cal = cal if cal is not None else calibrate(loaded, config, progress, log)
    groups = enumerate_groups(loaded.model, alloc.group_space())
    examples = cal.examples if config.score.needs_calib or alloc.threshold.value == "sensitivity" else None
    scores = score_groups(loaded.model, groups, [config.score], examples, progress=progress, grams=cal.grams)[config.score.name]

    def allocate_at(a: AllocConfig, log=log) -> Allocation:
        if a.threshold.value != "sensitivity":
            return allocate(groups, scores, a, loaded.spec)
        from slimwhisper.compress.sensalloc import allocate_sensitivity

        return allocate_sensitivity(loaded.model, groups, scores, a, loaded.spec, cal.grams, cal.holdout,
                                    config.score.name, config.stats.cache_root(), progress, log)  # fmt: skip

    if config.latency is None:
        allocation = allocate_at(alloc)
    else:  # bisect the budget fraction against the device estimate (budget.py)
        from slimwhisper.compress.budget import search_budget

        kept = None
        if config.vocab is not None:  # price the vocabulary this command keeps, not the dense one
            from slimwhisper.compress.vocabprune import selection_for

            kept = len(selection_for(loaded, config.vocab, log).kept)
        allocation = search_budget(allocate_at, alloc, loaded.spec, config.latency, log, vocab=kept)
    return allocation.plan, allocation


def _wer(loaded: LoadedModel, config: PruneConfig, progress: bool) -> float:
    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    dataset = load_dataset(config.eval_data, limit=config.eval_limit)
    return evaluate(TorchTranscriber(loaded, DecodeConfig()), dataset, progress=progress).wer


def prune(config: PruneConfig, progress: bool = True, loaded: LoadedModel | None = None, log=print) -> PruneResult:
    """Run the job; ``loaded`` skips loading (it is pruned IN PLACE)."""
    import copy

    from slimwhisper.compress.surgery import apply_plan
    from slimwhisper.models import load_model
    from slimwhisper.models.slim import spec_from_model
    from slimwhisper.models.slimdir import save_slim
    from slimwhisper.outputs import check_output

    # Before any (slow) work: a foreign folder or the input is refused here, not after pruning.
    check_output(config.out, "model", force=config.force, inputs=[config.model, config.plan])
    timer = _Timer()
    if loaded is None:
        loaded = load_model(config.model)
    if getattr(loaded.model, "slim_vocab", None) is not None and config.needs_examples:
        raise PruneError("calibration decodes with the tokenizer's ids, which a vocabulary-pruned model no longer "
                         "uses: prune structure and vocabulary in one command from the unpruned-vocabulary model")
    before = loaded.spec.params_by_component()
    wer_before = _wer(loaded, config, progress) if config.eval_data else None
    timer.lap("eval_before")
    cal = calibrate(loaded, config, progress, log)
    timer.lap("calibration")
    plan, allocation = choose_plan(loaded, config, progress, cal, log)
    timer.lap("score")
    if not plan.remove and config.vocab is None:
        raise PruneError("the allocation removes nothing (ratios too small for these block sizes?); raise a ratio")
    report = None
    if config.reconstruct.active:
        from slimwhisper.compress.reconstruct import reconstruct_prune

        dense = copy.deepcopy(loaded.model).eval()
        plan, report = reconstruct_prune(loaded, dense, plan, cal.examples, config.reconstruct, config.stats,
                                         config.score.name, cal.grams, progress, log)  # fmt: skip
        del dense
        timer.lap("reconstruct")
    # A slim folder pruned again: surgery composes with the record load_slim left on the model.
    record = apply_plan(loaded.model, plan) if plan.remove else getattr(loaded.model, "slim_record", None)
    loaded.model.slim_record = record
    loaded.spec = spec_from_model(loaded.model)
    timer.lap("surgery")
    vocab = None
    if config.vocab is not None:  # issue 12: slice embedding/projection to the kept tokens (vocabprune.py)
        from slimwhisper.compress.vocabprune import prune_loaded

        vocab = {"config": config.vocab.to_dict(), "report": prune_loaded(loaded, config.vocab, log).report()}
        record = loaded.model.slim_record
        timer.lap("vocab")
    configs = {"prune": config.to_dict(), "allocation": None if allocation is None else allocation_dict(allocation),
               "reconstruction": report, "latency_budget": getattr(allocation, "budget", None), "vocab": vocab}  # fmt: skip
    save_slim(loaded, Path(config.out), record=record, configs=configs, force=config.force)
    timer.lap("save")
    wer_after = _wer(loaded, config, progress) if config.eval_data else None
    timer.lap("eval_after")
    return PruneResult(
        loaded, record, plan, before, loaded.spec.params_by_component(), Path(config.out), allocation, wer_before, wer_after,
        timer.laps, report,
    )  # fmt: skip


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now
