"""TSPAR-style two-stage structured pruning: Sparse Group LASSO training, then two-pass removal.

TSPAR (two-stage pruning with sparse group lasso for Whisper) reports 35.4% fewer parameters and
18.5% fewer FLOPs on Whisper-small with no WER loss. Our reading of it, on the SAME groups the
one-shot pruner removes (``groups.py``: heads and FFN neurons by default):

Stage 1 — fine-tune the dense model on labelled speech with the sparse-group-lasso regulariser
    Omega(w) = lambda_g sum_g sqrt(p_g) ||w_g||_2 + lambda_1 ||w||_1   (Simon et al. 2013; ``lasso.py``),
  which drives whole groups towards zero while the cross-entropy keeps the useful ones alive.

Stage 2 — prune from the trained weights' statistics, in two passes:
  pass 1 removes every group whose norm fell below ``tau`` x the median group norm of its block
    (the groups the lasso has switched off: removing them costs ~nothing);
  pass 2 fills what is left of the parameter budget with the groups of lowest relative norm
    ||w_g|| / median(block), across blocks,
  both under per-kind caps (at most ``max_head_ratio`` of a block's heads, ``max_neuron_ratio``
  of its neurons, and always >= 1 of each), then ``surgery.apply_plan`` removes them physically.

Schedules that converge (stage 1 diverged before: CE 0.41 -> 9.40 in 6 steps at lr 1e-3 with a
fixed lambda: the proximal shrink step * lambda * sqrt(p_g) — ~0.3 per step for a tiny.en head
with p_g ~ 1e5 — zeroed every head within tens of steps, faster than the CE could react):

* learning rate: linear warm-up (``train.warmup``), then linear decay (the engine's schedule);
* lambda_t = lambda_g * ramp(t) * a_t: zero for the first ``ce_warmup`` x steps (CE only, the
  optimizer state settles), a linear ramp over the next ``lambda_ramp`` x steps, and an adaptive
  factor a_t that keeps the CE near dense: with CE_ref the mean CE of the warm-up steps and
  CE_ema an exponential average (0.7), a_t halves when CE_ema > (1 + ``ce_tolerance``) CE_ref
  and grows by 10% (up to 1) otherwise;
* proximal step after every AdamW step with step size eta_t * lambda_t (eta_t the step's lr).

``TsparConfig`` (with the two-pass rule written out, ``TWO_PASS_RULE``) is saved beside the pruned
model; ``TRAINED_PRUNERS["tspar"]`` is the handler.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimwhisper.compress.allocate import budget_total
from slimwhisper.compress.calib import batch_loss
from slimwhisper.compress.groups import Group, GroupSpace, enumerate_groups
from slimwhisper.compress.plan import PrunePlan, PruneRecord
from slimwhisper.errors import UserError
from slimwhisper.outputs import OutputError, check_output
from slimwhisper.train.lasso import GroupNorms, Regularize
from slimwhisper.train.loop import TrainConfig, TrainResult, pad_id_of, train

if TYPE_CHECKING:
    from slimwhisper.compress.calib import CalibExample
    from slimwhisper.models.api import LoadedModel

TSPAR_KINDS = ("head", "neuron")
TWO_PASS_RULE = (
    "pass 1: remove every group with ||w_g|| < tau * median ||w|| of its block (same block and kind); "
    "pass 2: while removed parameters < target_params * encoder+decoder layer parameters, remove the group of lowest "
    "||w_g|| / median(block) across blocks; both passes respect at most floor(cap * n) groups per block "
    "(max_head_ratio, max_neuron_ratio) and always keep >= 1; norms are taken on the stage-1 weights"
)


class TsparError(UserError, ValueError):
    """TSPAR cannot run as configured; the message lists every problem."""


def _ratio(name: str, value, *, closed: bool = False) -> list[str]:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (0 < value <= 1 if closed else 0 < value < 1)
    return [] if ok else [f"{name} must be in (0, 1{']' if closed else ')'}, got {value!r}"]


@dataclass(frozen=True)
class TsparConfig:
    model: str
    out: str
    train: TrainConfig
    lambda_group: float = 0.5
    lambda_l1: float = 0.0
    regularize: Regularize = Regularize.PROXIMAL
    target_params: float = 0.3  # fraction of the encoder+decoder LAYER parameters (as allocate.py)
    tau: float = 0.1  # pass 1: ||w_g|| < tau * median norm of the block
    max_head_ratio: float = 0.5
    max_neuron_ratio: float = 0.5
    force: bool = False
    eval_data: str | None = None
    eval_limit: int | None = None
    ce_warmup: float = 0.1  # fraction of the steps with lambda = 0
    lambda_ramp: float = 0.3  # fraction of the steps over which lambda rises to lambda_g
    ce_tolerance: float = 0.1  # adaptive lambda: keep CE_ema <= (1 + tol) x CE of the warm-up

    def __post_init__(self) -> None:
        problems = []
        for name in ("ce_warmup", "lambda_ramp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                problems.append(f"{name} must be a fraction in [0, 1), got {v!r}")
        if isinstance(self.ce_tolerance, bool) or not isinstance(self.ce_tolerance, (int, float)) or not self.ce_tolerance > 0:
            problems.append(f"ce_tolerance must be a positive number, got {self.ce_tolerance!r}")
        if not isinstance(self.model, str) or not self.model:
            problems.append("model must be a source such as 'tiny.en', 'base' or a folder")
        if not self.out:
            problems.append("out must be a folder path for the pruned model")
        else:
            try:
                check_output(self.out, "model", force=self.force, inputs=[self.model, self.train.data])
            except OutputError as exc:
                problems.append(str(exc))
        if not isinstance(self.train, TrainConfig):
            problems.append("train must be a TrainConfig")
        for name in ("lambda_group", "lambda_l1"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isinf(v):
                problems.append(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lambda_group == 0 and self.lambda_l1 == 0:
            problems.append("lambda_group and lambda_l1 are both 0: stage 1 would be plain fine-tuning; set --lambda-group")
        try:
            object.__setattr__(self, "regularize", Regularize(self.regularize))
        except ValueError:
            problems.append(f"regularize must be one of {', '.join(r.value for r in Regularize)}, got {self.regularize!r}")
        problems += _ratio("target_params", self.target_params) + _ratio("tau", self.tau, closed=True)
        for cap in ("max_head_ratio", "max_neuron_ratio"):
            problems += _ratio(cap, getattr(self, cap), closed=True)
        if self.eval_data is not None and not Path(self.eval_data).exists():
            problems.append(f"eval data {self.eval_data} does not exist")
        limit = self.eval_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            problems.append(f"eval_limit must be an int >= 1, got {self.eval_limit!r}")
        if problems:
            raise TsparError("invalid TSPAR config", problems)

    def cap(self, kind: str) -> float:
        return {"head": self.max_head_ratio, "neuron": self.max_neuron_ratio}[kind]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        d["regularize"] = self.regularize.value
        d["two_pass_rule"] = TWO_PASS_RULE
        d["lambda_schedule"] = "lambda_t = lambda_group * ramp(t; ce_warmup, lambda_ramp) * a_t (adaptive, ce_tolerance)"
        d.pop("force")
        return d


class LambdaSchedule:
    """lambda_t = lambda_g * ramp(t) * a_t (module docstring); its state goes into checkpoints."""

    def __init__(self, config: TsparConfig, total: int):
        self.config, self.total = config, total
        self.warm = round(config.ce_warmup * total)
        self.ramp = max(1, round(config.lambda_ramp * total))
        self.adapt, self.ce_ref, self.ema, self.warm_ces = 1.0, None, None, []

    def factor(self, step: int) -> float:
        if step < self.warm:
            return 0.0
        return min(1.0, (step - self.warm + 1) / self.ramp) * self.adapt

    def observe(self, step: int, ce: float | None) -> None:
        if ce is None:  # this process had no example in the step
            return
        self.ema = ce if self.ema is None else 0.7 * self.ema + 0.3 * ce
        if step < self.warm or not self.warm_ces:
            self.warm_ces.append(ce)
            self.ce_ref = sum(self.warm_ces) / len(self.warm_ces)
            return
        over = self.ema > (1 + self.config.ce_tolerance) * self.ce_ref
        self.adapt = self.adapt * 0.5 if over else min(1.0, self.adapt * 1.1)

    def state(self) -> dict:
        return {"adapt": self.adapt, "ce_ref": self.ce_ref, "ema": self.ema, "warm_ces": list(self.warm_ces)}

    def load(self, d: dict) -> None:
        if d:
            self.adapt, self.ce_ref, self.ema, self.warm_ces = d["adapt"], d["ce_ref"], d["ema"], list(d["warm_ces"])


# ---- stage 2: two passes over group norms ------------------------------------------------------


@dataclass(frozen=True)
class TwoPass:
    plan: PrunePlan
    pass1: tuple[str, ...]  # groups under tau * block median
    pass2: tuple[str, ...]  # lowest relative norms, to fill the budget
    removed: int  # parameters the plan removes
    total: int  # encoder + decoder layer parameters the budget is a fraction of

    @property
    def fraction(self) -> float:
        return self.removed / self.total if self.total else 0.0


def two_pass_plan(groups: list[Group], norms: torch.Tensor, total: float, config: TsparConfig) -> TwoPass:
    """Pass 1 (below ``tau`` x block median), then pass 2 (lowest ||w_g|| / median) up to the budget."""
    blocks: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        blocks.setdefault((g.block, g.kind), []).append(i)
    rel = torch.zeros(len(groups), dtype=torch.float64)
    room: dict[tuple[str, str], int] = {}
    for key, idx in blocks.items():
        median = statistics.median(float(norms[i]) for i in idx)
        for i in idx:
            rel[i] = float(norms[i]) / median if median > 0 else 0.0
        room[key] = min(len(idx) - 1, math.floor(config.cap(key[1]) * len(idx)))  # keep >= 1 per block
    order = sorted(range(len(groups)), key=lambda i: (float(rel[i]), groups[i].name))
    taken: set[int] = set()

    def take(i: int) -> bool:
        key = (groups[i].block, groups[i].kind)
        if room[key] <= 0:
            return False
        room[key] -= 1
        taken.add(i)
        return True

    pass1 = [groups[i].name for i in order if rel[i] < config.tau and take(i)]
    removed = sum(groups[i].numel for i in taken)
    target = config.target_params * total
    pass2 = []
    for i in order:
        if removed >= target:
            break
        if i not in taken and take(i):
            pass2.append(groups[i].name)
            removed += groups[i].numel
    return TwoPass(PrunePlan(frozenset(pass1 + pass2)), tuple(pass1), tuple(pass2), removed, int(total))


# ---- stage 1 + 2 ---------------------------------------------------------------------------------


def sparse_group_train(
    loaded: LoadedModel, groups: list[Group], examples: list[CalibExample], config: TsparConfig, progress: bool = True,
    checkpoint=None, log=print,
) -> tuple[TrainResult, GroupNorms]:  # fmt: skip
    """Stage 1: CE + lambda_t Omega (penalty in the loss, or a proximal step after each AdamW step)."""
    norms = GroupNorms(loaded.model, groups)
    lg, l1 = config.lambda_group, config.lambda_l1
    sched = LambdaSchedule(config, config.train.total_steps(len(examples)))
    current = {"step": 0}

    def loss_fn(model, batch):
        ce = batch_loss(model, batch)
        f = sched.factor(current["step"])
        logs = {"ce": float(ce.detach()), "lambda": lg * f}
        if config.regularize is Regularize.PENALTY and f > 0:
            omega = norms.penalty(lg * f, l1 * f)
            logs["omega"] = float(omega.detach())
            return ce + omega, logs
        return ce, logs

    def after(lr, step):
        f = sched.factor(step)
        if config.regularize is Regularize.PROXIMAL and f > 0:
            norms.prox(lg * f, l1 * f, lr)
        sched.observe(step, result_ce.pop() if result_ce else None)
        current["step"] = step + 1

    result_ce: list[float] = []

    def wrapped(model, batch):
        loss, logs = loss_fn(model, batch)
        result_ce.append(logs["ce"])
        return loss, logs

    result = train(loaded.model, examples, config.train, pad_id=pad_id_of(loaded), loss_fn=wrapped, after_step=after,
                   progress=progress, label="tspar stage 1 (sparse group lasso)", checkpoint=checkpoint,
                   state_hooks=(lambda: {**sched.state(), "step": current["step"]},
                                lambda d: (sched.load(d), current.update(step=d.get("step", 0)))), log=log)  # fmt: skip
    return result, norms


@dataclass
class TsparResult:
    loaded: LoadedModel  # the pruned model, in memory
    record: PruneRecord
    stage2: TwoPass
    training: TrainResult
    params_before: dict[str, int]
    params_after: dict[str, int]
    out: Path
    wer_before: float | None = None
    wer_after: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "removed_groups": len(self.stage2.plan.remove),
            "pass1": len(self.stage2.pass1),
            "pass2": len(self.stage2.pass2),
            "layer_params_removed": self.stage2.fraction,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "training": self.training.to_dict(),
            "wer_before": self.wer_before,
            "wer_after": self.wer_after,
        }


def _wer(loaded: LoadedModel, config: TsparConfig, progress: bool) -> float:
    from slimwhisper.evaluate import wer_of

    return wer_of(loaded, config.eval_data, limit=config.eval_limit, progress=progress)


def run_tspar(
    config: TsparConfig, progress: bool = True, loaded: LoadedModel | None = None, examples: list[CalibExample] | None = None
) -> TsparResult:
    """Load, train with the sparse group lasso, prune in two passes, save (``loaded`` is changed in place)."""
    from slimwhisper.compress.surgery import apply_plan
    from slimwhisper.models import load_model
    from slimwhisper.models.slim import spec_from_model
    from slimwhisper.models.slimdir import save_slim

    if loaded is None:
        loaded = load_model(config.model)
    before = loaded.spec.params_by_component()
    wer_before = _wer(loaded, config, progress) if config.eval_data else None
    groups = enumerate_groups(loaded.model, GroupSpace(frozenset(TSPAR_KINDS)))
    if examples is None:
        from slimwhisper.compress.calib import prepare
        from slimwhisper.train.trainset import select_utterances

        t = config.train
        examples = prepare(loaded, t.calib(), utterances=select_utterances(t.datasets, t.n, t.seed, pack_seconds=t.pack_seconds))
    training, norms = sparse_group_train(loaded, groups, examples, config, progress)
    with torch.no_grad():
        stage2 = two_pass_plan(groups, norms.norms().cpu(), budget_total(loaded.spec, flops=False), config)
    if not stage2.plan.remove:
        raise TsparError("stage 2 removes nothing: raise --target-params or the caps")
    record = apply_plan(loaded.model, stage2.plan)
    loaded.spec = spec_from_model(loaded.model)
    result = TsparResult(loaded, record, stage2, training, before, loaded.spec.params_by_component(), Path(config.out), wer_before)
    configs = dict((loaded.extra.get("pruning") or {}).get("configs") or {})
    configs["tspar"] = {**config.to_dict(), "result": result.to_dict()}
    save_slim(loaded, Path(config.out), record=record, configs=configs, force=config.force)
    result.wer_after = _wer(loaded, config, progress) if config.eval_data else None
    return result


TRAINED_PRUNERS: dict[str, Callable[..., TsparResult]] = {}


def register_trained_pruner(name: str, fn: Callable[..., TsparResult]) -> None:
    """Pruning methods that train before they cut (name -> ``fn(config, progress)``)."""
    if name in TRAINED_PRUNERS:
        raise ValueError(f"trained pruner {name!r} registered twice")
    TRAINED_PRUNERS[name] = fn


register_trained_pruner("tspar", run_tspar)
