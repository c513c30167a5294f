"""Recovery training after structured pruning: the pruned model keeps its shapes, its weights adapt.

Methods (``RECOVERY`` registry, name -> handler):

* ``finetune`` — full fine-tuning of every weight of the pruned model (teacher-forced CE).
* ``lora``     — LoRA adapters (Hu et al. 2021, via ``peft``) on the pruned, uneven linear layers
  (q/k/v/out_proj, fc1, fc2), trained with CE, then MERGED (W <- W + (alpha/r) B A), so the
  result is again a plain slim model of exactly the same spec and parameter count.
* ``distill``  — knowledge distillation from the dense teacher (Hinton et al. 2015) on the
  decoder logits: loss = a * CE(labels) + (1 - a) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),
  the T^2 keeping the soft-target gradients on the scale of the hard ones. Teacher in eval, no grad.

The spec never changes during recovery: ``recover`` checks it before returning. ``save_recovered``
writes a slim folder whose ``pruning.json`` keeps the pruning record and appends the recovery
config to the configs that made the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimwhisper.compress.calib import IGNORE, Batch, CalibExample, batch_logits
from slimwhisper.compress.train import TrainConfig, TrainResult, ce_loss, pad_id_of, prepare_examples, train

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PEFT_HINT = "LoRA recovery needs the 'peft' package: pip install '.[recovery]'"


class RecoverError(ValueError):
    """Recovery cannot run as asked; the message lists every problem and what to do."""


class RecoverMethod(str, Enum):
    FINETUNE = "finetune"
    LORA = "lora"
    DISTILL = "distill"


# Learning rates that work for a few dozen steps on tiny.en; the CLI uses them when --lr is not given.
DEFAULT_LR = {RecoverMethod.FINETUNE: 1e-4, RecoverMethod.LORA: 1e-3, RecoverMethod.DISTILL: 1e-4}


@dataclass(frozen=True)
class RecoverConfig:
    method: RecoverMethod
    train: TrainConfig
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "method", RecoverMethod(self.method))
        except ValueError:
            problems.append(f"method must be one of {', '.join(m.value for m in RecoverMethod)}, got {self.method!r}")
        if not isinstance(self.train, TrainConfig):
            problems.append("train must be a TrainConfig")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            problems.append(f"lora_rank must be an int >= 1, got {self.lora_rank!r}")
        if not _positive(self.lora_alpha):
            problems.append(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        object.__setattr__(self, "lora_targets", targets)
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets:
            problems.append(f"lora_targets must be a non-empty subset of {', '.join(LORA_TARGETS)}; got {list(targets)}")
        if not _positive(self.distill_temperature):
            problems.append(f"distill_temperature must be a positive number, got {self.distill_temperature!r}")
        if isinstance(self.distill_alpha, bool) or not isinstance(self.distill_alpha, (int, float)) or not 0 <= self.distill_alpha <= 1:
            problems.append(f"distill_alpha must be in [0, 1] (weight of the label CE), got {self.distill_alpha!r}")
        if problems:
            raise RecoverError("invalid recovery config:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict:
        return {
            "method": self.method.value,
            "train": self.train.to_dict(),
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_targets": list(self.lora_targets),
            "distill_temperature": self.distill_temperature,
            "distill_alpha": self.distill_alpha,
        }


def _positive(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and x > 0


@dataclass
class Context:
    """What a recovery handler gets."""

    loaded: LoadedModel
    config: RecoverConfig
    teacher: LoadedModel | None
    examples: list[CalibExample]
    progress: bool = True
    pad_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.pad_id = pad_id_of(self.loaded)

    def run(self, **kwargs) -> TrainResult:
        label = f"recover ({self.config.method.value})"
        return train(self.loaded.model, self.examples, self.config.train, pad_id=self.pad_id, progress=self.progress, label=label, **kwargs)


RECOVERY: dict[RecoverMethod, Callable[[Context], TrainResult]] = {}


def register_recovery(method: RecoverMethod):
    def wrap(fn):
        if method in RECOVERY:
            raise ValueError(f"recovery method {method.value!r} registered twice")
        RECOVERY[method] = fn
        return fn

    return wrap


@register_recovery(RecoverMethod.FINETUNE)
def _finetune(ctx: Context) -> TrainResult:
    return ctx.run(loss_fn=ce_loss, params=list(ctx.loaded.model.parameters()))


@register_recovery(RecoverMethod.LORA)
def _lora(ctx: Context) -> TrainResult:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RecoverError(PEFT_HINT) from exc
    model, cfg = ctx.loaded.model, ctx.config
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), lora_dropout=0.0, bias="none")
    # The adapters are injected into ``model``'s own modules, so training ``model`` trains them;
    # peft freezes every base weight. Each adapter takes its layer's CURRENT (pruned) shape.
    wrapped = get_peft_model(model, lora)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    try:
        result = ctx.run(loss_fn=ce_loss, params=adapters)
    finally:  # merged even when training stops with an error: never leave adapters in the model
        merged = wrapped.merge_and_unload()  # W + (alpha / r) B A; plain nn.Linear again
    if merged is not model:
        raise RecoverError("peft returned a different model object after merging; this peft version is not supported")
    if hasattr(model, "peft_config"):
        del model.peft_config
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, True))
    return result


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, temperature: float, alpha: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """a * CE + (1 - a) * T^2 * KL(p_teacher^T || p_student^T) over the counted target positions."""
    mask = batch.targets != IGNORE
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    ce = torch.nn.functional.cross_entropy(s, batch.targets[mask])
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s / temperature, -1), torch.log_softmax(t / temperature, -1), log_target=True, reduction="batchmean"
    )
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}


@register_recovery(RecoverMethod.DISTILL)
def _distill(ctx: Context) -> TrainResult:
    if ctx.teacher is None:
        raise RecoverError("distillation needs the dense teacher: pass teacher= (CLI: --teacher tiny.en or the dense folder)")
    teacher = ctx.teacher.model.eval()
    temp, alpha = ctx.config.distill_temperature, ctx.config.distill_alpha

    def loss_fn(model, batch):
        with torch.no_grad():
            t = batch_logits(teacher, batch)
        return distill_loss(batch_logits(model, batch), t, batch, temp, alpha)

    return ctx.run(loss_fn=loss_fn, params=list(ctx.loaded.model.parameters()))


def check_teacher(student: LoadedModel, teacher: LoadedModel | None) -> None:
    if teacher is None:
        return
    s, t = student.model.config, teacher.model.config
    problems = [
        f"{name}: student {getattr(s, name)} vs teacher {getattr(t, name)}"
        for name in ("vocab_size", "num_mel_bins", "d_model")
        if getattr(s, name) != getattr(t, name)
    ]
    if problems:
        raise RecoverError(
            "the teacher does not match the pruned model (pass the dense model it was pruned from):\n  - " + "\n  - ".join(problems)
        )


def recover(
    loaded: LoadedModel,
    config: RecoverConfig,
    teacher: LoadedModel | None = None,
    *,
    examples: list[CalibExample] | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Train ``loaded`` (pruned) IN PLACE with ``config.method``; same spec and parameter count after.

    ``teacher`` (the dense model) is required for ``distill`` and, for any method, labels the
    training utterances that have no reference. ``examples`` bypasses data loading (tests).
    The training summary is left in ``loaded.extra["recovery"]``.
    """
    from slimwhisper.models.slim import spec_from_model

    check_teacher(loaded, teacher)
    if config.method is RecoverMethod.DISTILL and teacher is None:
        raise RecoverError("distillation needs the dense teacher: pass teacher= (CLI: --teacher tiny.en or the dense folder)")
    spec = spec_from_model(loaded.model)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    if examples is None:
        examples = prepare_examples(loaded, config.train, labeller=teacher)
    result = RECOVERY[config.method](Context(loaded, config, teacher, examples, progress))
    after = spec_from_model(loaded.model)
    if after != spec or sum(p.numel() for p in loaded.model.parameters()) != n_params:
        raise RecoverError(f"recovery method {config.method.value!r} changed the model's shapes; this is a bug")
    loaded.spec = after
    loaded.extra["recovery"] = {"config": config.to_dict(), "result": result.to_dict(), "losses": result.losses}
    return loaded


def save_recovered(loaded: LoadedModel, out: str | Path, config: RecoverConfig, *, force: bool = False) -> Path:
    """Save as a slim folder: pruning record kept, recovery config appended to the configs."""
    from slimwhisper.models.slimdir import save_slim

    configs = dict((loaded.extra.get("pruning") or {}).get("configs") or {})
    key, i = "recover", 2
    while key in configs:  # recovered twice: keep both, in order
        key, i = f"recover_{i}", i + 1
    summary = loaded.extra.get("recovery", {}).get("result")
    configs[key] = {**config.to_dict(), "result": summary}
    return save_slim(loaded, Path(out), record=getattr(loaded.model, "slim_record", None), configs=configs, force=force)
