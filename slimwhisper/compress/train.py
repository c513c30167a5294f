"""A small teacher-forced training loop shared by recovery fine-tuning and TSPAR's stage 1.

Data and labels come from ``compress.calib`` (same prompt, same counted targets, same label-free
pseudo-labelling), batched with ``calib.collate``: every example is a full 30 s log-mel window,
so batches stack without further padding. AdamW (Loshchilov & Hutter 2019) with a linear decay
of the learning rate to zero, gradient clipping, a fixed seed for the example order, and an
optional wall-clock budget (``max_seconds``) that stops early and says so.

What is optimised and how the loss is made are the caller's: ``train`` takes a ``loss_fn(model,
batch) -> (loss, logs)`` and the parameters to update, and calls ``after_step`` (e.g. a proximal
operator) after every optimizer step.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from slimwhisper.compress.calib import Batch, CalibConfig, CalibExample, batch_loss, collate, eot_id, prepare

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

DEFAULT_STEPS = 40
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


class TrainError(ValueError):
    """Bad training options or data; the message lists every problem."""


def _int_problem(name: str, value, low: int, allow_none: bool = False) -> list[str]:
    if value is None and allow_none:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return [f"train.{name} must be an int >= {low}{' or None' if allow_none else ''}, got {value!r}"]
    return []


@dataclass(frozen=True)
class TrainConfig:
    """How to train. At most one of ``steps`` / ``epochs`` (neither: ``DEFAULT_STEPS``).

    CPU-friendly defaults: 64 utterances, batch 4, 40 steps = 160 forward/backward passes of
    a 30 s window, a few minutes for tiny.en on 2 cores. ``label_free`` as in ``CalibConfig``
    (None: the reference where there is one, else the labeller's greedy transcript).
    """

    data: str
    n: int = 64
    steps: int | None = None
    epochs: int | None = None
    lr: float = 1e-4
    batch_size: int = 4
    seed: int = 0
    weight_decay: float = 0.01
    max_seconds: float | None = None
    threads: int | None = None
    grad_clip: float | None = 1.0
    label_free: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.data, str) or not self.data:
            problems.append("train.data must be a dataset path (a folder with transcripts.tsv or a .tsv file)")
        problems += _int_problem("n", self.n, 1) + _int_problem("batch_size", self.batch_size, 1)
        problems += _int_problem("steps", self.steps, 1, True) + _int_problem("epochs", self.epochs, 1, True)
        problems += _int_problem("threads", self.threads, 1, True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"train.seed must be an int, got {self.seed!r}")
        if self.steps is not None and self.epochs is not None:
            problems.append("give train.steps or train.epochs, not both")
        positive = (("lr", self.lr, False), ("max_seconds", self.max_seconds, True), ("grad_clip", self.grad_clip, True))
        for name, value, allow_none in positive:
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                problems.append(f"train.{name} must be a positive number{' or None' if allow_none else ''}, got {value!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            problems.append(f"train.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.label_free not in (None, True, False):
            problems.append(f"train.label_free must be true, false or null, got {self.label_free!r}")
        if problems:
            raise TrainError("invalid training config:\n  - " + "\n  - ".join(problems))

    def total_steps(self, n_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * math.ceil(n_examples / self.batch_size)
        return DEFAULT_STEPS

    def calib(self) -> CalibConfig:
        return CalibConfig(self.data, n=self.n, seed=self.seed, label_free=self.label_free)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken
    planned_steps: int
    losses: list[float]  # total loss per step (what was minimised)
    logs: list[dict[str, float]] = field(default_factory=list)  # per step, e.g. {"ce": .., "kl": ..}
    seconds: float = 0.0
    stopped_early: bool = False  # the max_seconds budget ran out

    def to_dict(self) -> dict:
        first, last = (self.losses[0], self.losses[-1]) if self.losses else (None, None)
        return {"steps": self.steps, "planned_steps": self.planned_steps, "first_loss": first, "last_loss": last,
                "seconds": round(self.seconds, 2), "stopped_early": self.stopped_early}  # fmt: skip


def prepare_examples(loaded: LoadedModel, config: TrainConfig, labeller: LoadedModel | None = None) -> list[CalibExample]:
    """Features + label tokens (``calib.prepare``); pseudo-labels come from ``labeller`` (default ``loaded``).

    For a pruned student, pass the dense teacher as ``labeller``: utterances without a reference
    are then labelled with the DENSE transcript, not the damaged one.
    """
    return prepare(labeller or loaded, config.calib())


def ce_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    loss = batch_loss(model, batch)
    return loss, {"ce": float(loss.detach())}


def batches(examples: list[CalibExample], size: int, seed: int, pad_id: int) -> Iterator[Batch]:
    """Endless shuffled batches: a new permutation (seeded) each epoch; the last short batch kept."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order), size):
            yield collate([examples[j] for j in order[i : i + size]], pad_id)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    model: torch.nn.Module,
    examples: list[CalibExample],
    config: TrainConfig,
    *,
    pad_id: int,
    loss_fn: LossFn = ce_loss,
    params: list[torch.nn.Parameter] | None = None,
    after_step: Callable[[float], None] | None = None,
    progress: bool = True,
    label: str = "train",
) -> TrainResult:
    """Train ``params`` (default: every parameter that requires grad) of ``model`` in place.

    ``after_step(lr)`` runs under ``no_grad`` after each optimizer step with the step's learning
    rate. The model is left in eval mode.
    """
    from slimwhisper.progress import progress_bar

    if not examples:
        raise TrainError("training needs at least 1 example, got 0")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise TrainError("no trainable parameters: every parameter has requires_grad=False")
    torch.manual_seed(config.seed)
    total = config.total_steps(len(examples))
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
    result = TrainResult(0, total, [])
    start = time.perf_counter()
    model.train()
    with _threads(config.threads), progress_bar(total, label, enabled=progress) as bar:
        for _, batch in zip(range(total), batches(examples, config.batch_size, config.seed, pad_id), strict=False):
            if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
                result.stopped_early = True
                break
            lr = sched.get_last_lr()[0]
            opt.zero_grad(set_to_none=True)
            loss, logs = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise TrainError(f"loss became {float(loss)} at step {result.steps}; lower train.lr (now {config.lr})")
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(lr)
            result.steps += 1
            result.losses.append(float(loss.detach()))
            result.logs.append(logs)
            bar.advance(loss=f"{result.losses[-1]:.3f}")
    model.zero_grad(set_to_none=True)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def pad_id_of(loaded: LoadedModel) -> int:
    return eot_id(loaded)
