"""One-shot structured pruning: load -> calibrate -> score -> allocate (or read a plan) -> remove
-> save, with parameters (and optionally WER) before and after.

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

from slimwhisper.compress.allocate import AllocConfig, Allocation, allocate
from slimwhisper.compress.calib import CalibConfig, prepare
from slimwhisper.compress.groups import enumerate_groups
from slimwhisper.compress.plan import PrunePlan, PruneRecord
from slimwhisper.compress.scores import ScoreConfig, score_groups

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel


class PruneError(ValueError):
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

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append("model must be a source such as 'tiny.en', 'base' or a folder")
        if not self.out:
            problems.append("out must be a folder path for the pruned model")
        elif Path(self.out).exists() and not self.force:
            problems.append(f"out {self.out} already exists; choose another folder or pass --force to replace it")
        if (self.alloc is None) == (self.plan is None):
            problems.append("give exactly one of an allocation (ratios / --recipe / --target-params) or --plan FILE")
        if self.plan is not None and not Path(self.plan).is_file():
            problems.append(f"plan file {self.plan} does not exist")
        if self.alloc is not None and self.score.needs_grads and self.calib is None:
            problems.append(f"score {self.score.name!r} needs calibration audio: pass --calib DATA (or --score magnitude)")
        if self.eval_data is not None and not Path(self.eval_data).exists():
            problems.append(f"eval data {self.eval_data} does not exist")
        if self.eval_limit is not None and (not isinstance(self.eval_limit, int) or self.eval_limit < 1):
            problems.append(f"eval_limit must be an int >= 1, got {self.eval_limit!r}")
        if problems:
            raise PruneError("invalid prune config:\n  - " + "\n  - ".join(problems))

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
        }


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
            else {"metric": self.allocation.metric, "fraction": self.allocation.fraction, "counts": {k: list(v) for k, v in self.allocation.counts.items()}},
            "seconds": self.seconds,
        }


def choose_plan(loaded: LoadedModel, config: PruneConfig, progress: bool = True) -> tuple[PrunePlan, Allocation | None]:
    """The plan file as given (validated against the model), or calibrate + score + allocate."""
    if config.plan is not None:
        plan = PrunePlan.load(config.plan)
        plan.validate(loaded.model)
        return plan, None
    alloc = config.alloc
    assert alloc is not None
    groups = enumerate_groups(loaded.model, alloc.group_space())
    examples = prepare(loaded, config.calib) if config.score.needs_grads else None
    scores = score_groups(loaded.model, groups, [config.score], examples, progress=progress)[config.score.name]
    allocation = allocate(groups, scores, alloc, loaded.spec)
    return allocation.plan, allocation


def _wer(loaded: LoadedModel, config: PruneConfig, progress: bool) -> float:
    from slimwhisper.data import load_dataset
    from slimwhisper.evaluate import evaluate
    from slimwhisper.transcribe import DecodeConfig, TorchTranscriber

    dataset = load_dataset(config.eval_data, limit=config.eval_limit)
    return evaluate(TorchTranscriber(loaded, DecodeConfig()), dataset, progress=progress).wer


def prune(config: PruneConfig, progress: bool = True, loaded: LoadedModel | None = None) -> PruneResult:
    """Run the job; ``loaded`` skips loading (it is pruned IN PLACE)."""
    from slimwhisper.compress.surgery import apply_plan
    from slimwhisper.models import load_model
    from slimwhisper.models.slim import spec_from_model
    from slimwhisper.models.slimdir import save_slim

    timer = _Timer()
    if loaded is None:
        loaded = load_model(config.model)
    before = loaded.spec.params_by_component()
    wer_before = _wer(loaded, config, progress) if config.eval_data else None
    timer.lap("eval_before")
    plan, allocation = choose_plan(loaded, config, progress)
    timer.lap("score")
    if not plan.remove:
        raise PruneError("the allocation removes nothing (ratios too small for these block sizes?); raise a ratio")
    # A slim folder pruned again: surgery composes with the record load_slim left on the model.
    record = apply_plan(loaded.model, plan)
    loaded.model.slim_record = record
    loaded.spec = spec_from_model(loaded.model)
    timer.lap("surgery")
    configs = {"prune": config.to_dict()}
    save_slim(loaded, Path(config.out), record=record, configs=configs, force=config.force)
    timer.lap("save")
    wer_after = _wer(loaded, config, progress) if config.eval_data else None
    timer.lap("eval_after")
    return PruneResult(
        loaded, record, plan, before, loaded.spec.params_by_component(), Path(config.out), allocation, wer_before, wer_after, timer.laps
    )


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now
