"""The recovery stage's typed config: the method, its training config and the knobs each method reads.

Kept apart from ``recover.py`` (the handlers) so that the CLI, recipes and the pipeline can build and
check a config without importing the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from slimwhisper.compress.calib import timestamp_share_problem
from slimwhisper.errors import UserError
from slimwhisper.train.loop import TrainConfig

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PEFT_HINT = "LoRA recovery needs the 'peft' package: pip install '.[recovery]'"


class RecoverError(UserError, ValueError):
    """Recovery cannot run as asked; the message lists every problem and what to do."""


class RecoverMethod(str, Enum):
    FINETUNE = "finetune"
    LORA = "lora"
    DISTILL = "distill"
    LAYERWISE = "layerwise"


# Learning rates that work for a few dozen steps on tiny.en; the CLI uses them when --lr is not given.
DEFAULT_LR = {RecoverMethod.FINETUNE: 1e-4, RecoverMethod.LORA: 1e-3, RecoverMethod.DISTILL: 1e-4, RecoverMethod.LAYERWISE: 1e-4}
TEACHER_METHODS = (RecoverMethod.DISTILL, RecoverMethod.LAYERWISE)  # trained on the teacher cache


@dataclass(frozen=True)
class RecoverConfig:
    method: RecoverMethod
    train: TrainConfig
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    top_k: int = 64  # teacher log-probs kept per decoder position in the cache
    decoder_only: bool | None = None  # None: when the student's encoder equals the teacher's
    encoder_l2: float = 1.0  # weight of the relative encoder-output L2 (end-to-end KD)
    layerwise_steps: int = 50
    layerwise_lr: float = 3e-4
    spec_augment: bool = False
    # Token + positional embeddings (the token table is tied to the output projection) stay frozen:
    # a few hundred training clips use a few thousand of the 51,864 tokens, and updating the tied
    # projection on them pushes down every token they never use. tiny.en at 35%, 240 KD steps at
    # lr 2e-4 with them trainable: ljspeech/dev WER 7.50% -> 17.42% while the training loss fell.
    freeze_embeddings: bool = True
    timestamps: float = 0.0  # TeacherConfig.timestamps: share of clips distilled on timestamped transcripts
    # End-to-end stage of ``layerwise``: start the student's encoder from the teacher's CACHED layer-0
    # input (conv stem + positions, which pruning never touches) instead of the log-mel, the stem frozen.
    # Saves the stem's forward and backward (two convolutions over 3,000 frames) in every step.
    cached_stem: bool = False

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
        for name in ("top_k", "layerwise_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an int >= 1, got {v!r}")
        if not _positive(self.layerwise_lr):
            problems.append(f"layerwise_lr must be a positive number, got {self.layerwise_lr!r}")
        if isinstance(self.encoder_l2, bool) or not isinstance(self.encoder_l2, (int, float)) or self.encoder_l2 < 0:
            problems.append(f"encoder_l2 must be a number >= 0, got {self.encoder_l2!r}")
        if self.decoder_only not in (None, True, False) or self.spec_augment not in (True, False):
            problems.append("decoder_only must be true, false or null and spec_augment true or false")
        if self.freeze_embeddings not in (True, False):
            problems.append(f"freeze_embeddings must be true or false, got {self.freeze_embeddings!r}")
        if problem := timestamp_share_problem(self.timestamps, "timestamps", "the training clips"):
            problems.append(problem)
        elif self.timestamps and self.method not in TEACHER_METHODS:
            problems.append(f"timestamps (timestamped teacher transcripts) needs a teacher method "
                            f"({', '.join(m.value for m in TEACHER_METHODS)}), not {self.method.value}")
        if self.cached_stem not in (True, False):
            problems.append(f"cached_stem must be true or false, got {self.cached_stem!r}")
        elif self.cached_stem and self.method is not RecoverMethod.LAYERWISE:
            problems.append("cached_stem reads the per-layer teacher states, which only the layerwise method caches")
        elif self.cached_stem and self.spec_augment:
            problems.append("spec_augment masks the log-mel input, which cached_stem never feeds to the encoder")
        if self.decoder_only is True and self.spec_augment:
            problems.append("spec_augment masks the encoder's input; with decoder_only the encoder is skipped")
        if problems:
            raise RecoverError("invalid recovery config", problems)

    def to_dict(self) -> dict:
        return {
            "method": self.method.value,
            "train": self.train.to_dict(),
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_targets": list(self.lora_targets),
            "distill_temperature": self.distill_temperature,
            "distill_alpha": self.distill_alpha,
            "top_k": self.top_k,
            "decoder_only": self.decoder_only,
            "encoder_l2": self.encoder_l2,
            "layerwise_steps": self.layerwise_steps,
            "layerwise_lr": self.layerwise_lr,
            "spec_augment": self.spec_augment,
            "freeze_embeddings": self.freeze_embeddings,
            **({"timestamps": self.timestamps} if self.timestamps else {}),  # absent at 0: older configs resume
            **({"cached_stem": True} if self.cached_stem else {}),
        }


def _positive(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and x > 0
