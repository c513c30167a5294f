"""``TrainConfig`` and the teacher-forced loop shared by recovery, distillation, TSPAR and IMP.

Data and labels come from ``compress.calib`` (same prompt, same counted targets, same label-free
pseudo-labelling), batched with ``calib.collate``: every example is a full 30 s log-mel window,
so batches stack without further padding. The loop itself is ``engine.run_training`` (on
``accelerate``: AdamW with warm-up + linear decay, gradient clipping, a data order that is a
pure function of (seed, step), checkpoints, SIGTERM, exact ``--resume``, a wall-clock budget).

What is optimised and how the loss is made are the caller's: ``train`` takes a ``loss_fn(model,
batch) -> (loss, logs)`` and the parameters to update, and calls ``after_step`` (e.g. a proximal
operator) after every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from slimwhisper.compress.calib import (
    Batch,
    CalibConfig,
    CalibExample,
    batch_loss,
    collate,
    eot_id,
    prepare,
)
from slimwhisper.train.engine import (
    TrainError,
    TrainResult,
    batch_indices,
    run_training,
)
from slimwhisper.train.trainset import pack_seconds_problem

if TYPE_CHECKING:
    from slimwhisper.models.api import LoadedModel

DEFAULT_STEPS = 40
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


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
    more_data: tuple[str, ...] = ()  # further training sets, drawn from together with ``data``
    warmup: float = 0.0  # fraction of the steps with a linearly rising learning rate
    checkpoint_every: int | None = None  # steps between checkpoints (with a checkpoint folder)
    device: str = "cpu"  # "cpu" | "auto" (accelerate's choice: CUDA when present)
    # None: accelerate's setting (accelerate launch --mixed_precision) | no | bf16 | fp16 | auto (bf16 where the
    # device runs it natively: CPUs with AVX512-BF16/AMX, CUDA with bf16; else no; ``engine.resolve_precision``)
    mixed_precision: str | None = None
    # Join consecutive drawn clips into windows of up to this many seconds (trainset.pack_utterances):
    # the encoder's cost is per 30 s window, so short clips waste most of each step. None: one clip per window.
    pack_seconds: float | None = None

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
        object.__setattr__(self, "more_data", (self.more_data,) if isinstance(self.more_data, str) else tuple(self.more_data))
        if any(not isinstance(d, str) or not d for d in self.more_data):
            problems.append(f"train.more_data must be dataset paths, got {list(self.more_data)!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) or not 0 <= self.warmup < 1:
            problems.append(f"train.warmup must be a fraction in [0, 1), got {self.warmup!r}")
        problems += _int_problem("checkpoint_every", self.checkpoint_every, 1, True)
        if self.device not in ("cpu", "auto"):
            problems.append(f"train.device must be 'cpu' or 'auto' (accelerate picks CUDA when present), got {self.device!r}")
        if self.mixed_precision not in (None, "no", "bf16", "fp16", "auto"):
            problems.append(f"train.mixed_precision must be no, bf16, fp16 or auto, got {self.mixed_precision!r}")
        elif self.mixed_precision == "fp16" and self.device == "cpu":
            problems.append("train.mixed_precision fp16 needs a GPU (device auto under accelerate launch); on CPU use bf16 or no")
        if problem := pack_seconds_problem(self.pack_seconds, "train.pack_seconds"):
            problems.append(problem)
        if problems:
            raise TrainError("invalid training config", problems)

    def total_steps(self, n_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * math.ceil(n_examples / self.batch_size)
        return DEFAULT_STEPS

    def calib(self) -> CalibConfig:
        return CalibConfig(self.data, n=self.n, seed=self.seed, label_free=self.label_free, more_data=self.more_data)

    @property
    def datasets(self) -> list[str]:
        return [self.data, *self.more_data]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["more_data"] = list(self.more_data)
        return d


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
    """Endless batches in the engine's order (``engine.batch_indices``)."""
    step = 0
    while True:
        yield collate([examples[j] for j in batch_indices(len(examples), size, seed, step)], pad_id)
        step += 1


def train(
    model: torch.nn.Module,
    examples,
    config: TrainConfig,
    *,
    pad_id: int,
    loss_fn: LossFn = ce_loss,
    params: list[torch.nn.Parameter] | None = None,
    after_step: Callable[..., None] | None = None,
    progress: bool = True,
    label: str = "train",
    collate_fn: Callable[[list], object] | None = None,
    checkpoint=None,
    state_hooks=None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``params`` (default: every parameter that requires grad) of ``model`` in place.

    ``examples`` is any sequence (``CalibExample`` by default; pass ``collate_fn`` for others,
    e.g. cached teacher items). ``after_step(lr, step)`` runs under ``no_grad`` after each
    optimizer step. ``checkpoint`` (``checkpoint.Checkpointing``) saves / resumes. The model is
    left in eval mode. See ``engine.run_training``.
    """
    return run_training(model, examples, config, collate_fn=collate_fn or (lambda items: collate(items, pad_id)),
                        loss_fn=loss_fn, params=params, after_step=after_step, progress=progress, label=label,
                        checkpoint=checkpoint, state_hooks=state_hooks, log=log)  # fmt: skip


def pad_id_of(loaded: LoadedModel) -> int:
    """End-of-text in the MODEL's ids (a vocabulary-pruned model maps it: ``runtime/vocabmap.py``)."""
    vmap = getattr(loaded.model, "slim_vocab", None)
    return vmap.to_new([eot_id(loaded)])[0] if vmap is not None else eot_id(loaded)
