"""Iterative magnitude pruning (IMP), the baseline: prune a fraction -> recover -> repeat.

After Han et al. 2015 / Frankle & Carbin 2019, structured: each of ``rounds`` rounds removes the
lowest-magnitude heads and FFN neurons (``compress.prune`` with ``ScoreConfig("magnitude")`` and
a global threshold) so that after round r the model has lost 1 - (1 - target)^(r / R) of its
encoder+decoder layer parameters (each round removes 1 - (1 - target)^(1/R) of what is left),
then trains ``train.total_steps / R`` steps of the same distillation recovery as ``recover
--method distill`` (top-k KL + CE on the teacher cache). Same budget and the same total training
steps as the one-shot + recovery rows it is compared with. Intermediate rounds are pruned in a
temporary folder; only the final model is saved (``ImpConfig`` beside it in ``pruning.json``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slimwhisper.errors import UserError, raise_problems
from slimwhisper.outputs import OutputError, check_output
from slimwhisper.train.loop import TrainConfig

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel


class ImpError(UserError, ValueError):
    """IMP cannot run as configured; the message lists every problem."""


@dataclass(frozen=True)
class ImpConfig:
    model: str
    out: str
    train: TrainConfig  # TOTAL steps over all rounds
    target_params: float = 0.35
    rounds: int = 3
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    top_k: int = 64
    force: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.train, TrainConfig):
            problems.append("train must be a TrainConfig")
        t = self.target_params
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            problems.append(f"target_params must be in (0, 1), got {t!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            problems.append(f"rounds must be an int >= 1, got {self.rounds!r}")
        elif isinstance(self.train, TrainConfig) and self.train.steps is not None and self.train.steps < self.rounds:
            problems.append(f"train.steps {self.train.steps} < rounds {self.rounds}: every round needs >= 1 step")
        try:
            check_output(self.out, "model", force=self.force, inputs=[self.model, *getattr(self.train, "datasets", [])])
        except OutputError as exc:
            problems.append(str(exc))
        raise_problems(ImpError, "invalid IMP config", problems)

    @property
    def per_round(self) -> float:
        return 1 - (1 - self.target_params) ** (1 / self.rounds)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        d["per_round_fraction"] = self.per_round
        d.pop("force")
        return d


def run_imp(config: ImpConfig, loaded: LoadedModel, teacher: LoadedModel, examples: Sequence | None = None, *,
            cache_dir=None, progress: bool = True, log: Callable[[str], None] = print) -> LoadedModel:  # fmt: skip
    """``loaded`` (dense) is pruned and trained IN PLACE, round by round, then saved to ``config.out``."""
    from slimwhisper.compress import AllocConfig, PruneConfig, ScoreConfig, prune
    from slimwhisper.models.slimdir import save_slim
    from slimwhisper.train.recover import RecoverConfig, recover, teacher_examples

    total = config.train.total_steps(len(examples) if examples is not None else config.train.n)
    steps = [total // config.rounds + (1 if r < total % config.rounds else 0) for r in range(config.rounds)]
    rec = RecoverConfig("distill", dataclasses.replace(config.train, steps=steps[0], epochs=None),
                        distill_temperature=config.distill_temperature, distill_alpha=config.distill_alpha, top_k=config.top_k)  # fmt: skip
    if examples is None:
        examples = teacher_examples(teacher, rec, cache_dir, progress=progress, log=log)
    history = []
    with tempfile.TemporaryDirectory(prefix="imp-") as tmp:
        for r, n_steps in enumerate(steps):
            pc = PruneConfig(model=config.model, out=str(Path(tmp) / f"round-{r + 1}"), score=ScoreConfig("magnitude"),
                             alloc=AllocConfig(threshold="global", target_params=config.per_round))  # fmt: skip
            res = prune(pc, progress=False, loaded=loaded, log=lambda _m: None)
            rc = dataclasses.replace(rec, train=dataclasses.replace(rec.train, steps=n_steps))
            recover(loaded, rc, teacher=teacher, examples=examples, progress=progress, log=log)
            summary = loaded.extra["recovery"]["result"]
            history.append({"round": r + 1, "removed_groups": len(res.plan.remove), "params": loaded.spec.params(),
                            "steps": n_steps, "first_loss": summary["first_loss"], "last_loss": summary["last_loss"]})  # fmt: skip
            log(f"IMP round {r + 1}/{config.rounds}: {len(res.plan.remove)} groups removed, {loaded.spec.params():,} "
                f"parameters, {n_steps} steps, loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}")  # fmt: skip
    loaded.extra["imp"] = history
    configs = {"imp": {**config.to_dict(), "rounds_done": history}}
    save_slim(loaded, Path(config.out), record=getattr(loaded.model, "slim_record", None), configs=configs, force=config.force)
    return loaded
