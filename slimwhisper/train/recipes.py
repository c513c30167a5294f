"""Named recovery recipes: the training settings measured by ``experiments/recovery_at_scale.py``.

``slimwhisper run --recover NAME`` takes a method (finetune | lora | distill | layerwise, with the
trainer's defaults) or one of these; a recipe fixes everything but the training data, the threads
and (``--recover-steps``) the number of steps. Adding one is one ``register_recovery`` call.

``kd-ts`` (issue 10): distillation from the dense teacher's cache (top-64 log-probs + its greedy
transcript as CE target, alpha 0.5, T 2), every drawn training clip packed into 30 s windows, half
of the windows labelled with the teacher's TIMESTAMPED transcript (users decode with timestamps;
a student distilled only without them was weaker there), batch 4, lr 1e-4 with 10% warm-up,
embeddings frozen. tiny.en ``oneshot-35`` + 300 steps on all 2,189 clips of the four training sets
(472 windows; 32.5 CPU minutes of training on 2 cores, ~20 more for the teacher cache once):
ljspeech/dev / librispeech-clean-mini 6.45 / 4.03 greedy, 6.39 / 4.03 with timestamps and fallback
(dense 5.89 / 4.44 and 5.89 / 4.84).

``lw-ts`` (issue 10): layer-wise first (each pruned encoder layer fitted to the dense layer's cached
input -> output, 200 steps), then 600 steps of the ``kd-ts`` distillation with the encoder-output
L2, in bf16 where the CPU/GPU has it natively (``mixed_precision="auto"``). The teacher cache holds
per-layer states (3.5 GB for 472 windows of tiny.en). tiny.en ``oneshot-35``, all 2,189 clips, 1
thread, bf16: 60.3 CPU minutes, 6.20 / 4.44 greedy, 6.32 / 3.63 with timestamps (none looping).
Seeds 1 and 2 (with ``cached_stem``, 43 CPU minutes each on a machine whose bf16 steps are faster):
6.63 / 6.05 and 6.51 / 4.44 greedy, 6.39 / 4.03 and 6.51 / 3.23 with timestamps: the mean sits on
ljspeech/dev's dense + 0.5 limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slimwhisper.train.loop import TrainConfig
from slimwhisper.train.recover_config import RecoverConfig


@dataclass(frozen=True)
class RecoveryRecipe:
    method: str
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (not data / more_data / threads)
    recover: dict[str, Any] = field(default_factory=dict)  # RecoverConfig fields (not method / train)

    def config(self, data: Sequence[str], threads: int | None, steps: int | None = None) -> RecoverConfig:
        """The recipe on ``data`` (first = TrainConfig.data, the rest more_data); ``steps`` overrides."""
        train = {**self.train, **({"steps": steps} if steps is not None else {})}
        return RecoverConfig(self.method, TrainConfig(str(data[0]), more_data=tuple(map(str, data[1:])), threads=threads,
                                                      **train), **self.recover)  # fmt: skip


RECOVERY_RECIPES: dict[str, RecoveryRecipe] = {}


def register_recovery(name: str, recipe: RecoveryRecipe) -> None:
    if name in RECOVERY_RECIPES:
        raise ValueError(f"recovery recipe {name!r} registered twice")
    RecoveryRecipe.config(recipe, ["x"], None)  # a recipe that cannot make a valid config fails at import
    RECOVERY_RECIPES[name] = recipe


register_recovery("kd-ts", RecoveryRecipe(
    "distill",
    train={"n": 5000, "steps": 300, "batch_size": 4, "lr": 1e-4, "warmup": 0.1, "pack_seconds": 30.0},
    recover={"timestamps": 0.5},
))  # fmt: skip

register_recovery("lw-ts", RecoveryRecipe(
    "layerwise",
    train={"n": 5000, "steps": 600, "batch_size": 4, "lr": 1e-4, "warmup": 0.1, "pack_seconds": 30.0,
           "mixed_precision": "auto"},
    recover={"timestamps": 0.5, "layerwise_steps": 200},
))  # fmt: skip
