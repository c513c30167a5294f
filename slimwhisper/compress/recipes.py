"""Named pruning recipes: an ``AllocConfig`` + ``ScoreConfig`` (+ ``ReconstructConfig``) preset
registered by name.

``slimwhisper prune --recipe NAME`` uses one; adding a recipe is one ``register_recipe`` call.
The first two follow "Pruning as Regularization" (arXiv 2511.08092), which found Whisper's
decoder self-attention and the top encoder layers the least sensitive components.

``oneshot-25`` / ``oneshot-35`` are the best one-shot settings measured by
``experiments/oneshot_table.py`` (issue 9): structured OBS scores, allocation from measured
sensitivity for a layer-parameter budget (KL on 16 held-out windows), and a least-squares re-fit of
``out_proj`` / ``fc2`` walked block by block on the already-pruned model's inputs (sequential).
They need calibration audio (``--calib``, repeatable) and carry the calibration they were measured
with: 1,024 clips drawn from the four training sets (ljspeech/train, librispeech-train-unlabeled,
asterisk-prompts, speechocean762/train), PACKED into 30 s windows (219 windows), labelled by the
dense model (label-free), encoder frame stride 4.

Why each part (tiny.en at 25%, WER on ljspeech/dev / clean-mini / speechocean762 eval, greedy,
dense 5.89 / 4.44 / 39.00): the decoder re-fit of an FFN has 1,536 inputs and needs several
thousand decoder tokens; 64 utterances gave 8.87 / 8.47, 256 ljspeech clips 6.70 / 6.85 (references)
and 5.21 / 6.45 / 44.63 (label-free: the decoder is teacher-forced on the dense model's own
transcript, so the re-fit reproduces the dense model where it really decodes). But that draw was
lucky: 256 clips with 32 held out gave 7.25 / 8.87 / 53.96, all 386 clips 7.25 / 10.08 / 66.24. One
speaker's audio fits the encoder re-fit to her voice (speechocean762 suffers most). Packed windows
carry ~4 clips of speech per encoder pass instead of one clip and 24 s of padding, so 1,024 clips of
four sets cost less than 386 single clips: dense-Gram re-fit 6.88 / 7.66 / 40.15, and with that many
decoder tokens the sequential walk, which lost at 64 utterances, wins: 6.26 / 6.05 / 41.94. At 35%
the same settings give 7.56 / 6.45 / 47.19 (one speechocean762 utterance loops) where 256 ljspeech
clips gave 7.50 / 13.71 (references) or 8.80 / 11.69 (label-free). Measured base figures (256 ljspeech
clips, label-free, dense Grams): 25% 5.08 / 3.63 / 35.42, 35% 5.58 / 4.44 / 37.98 (dense 4.46 / 3.23
/ 62.66); with the packed four-set calibration (sequential, no timestamps) base at 25% gives 4.77 /
3.63 / 30.31 and at 35% 5.08 / 2.82 / 30.56, none looping.

Decoding mode. ``slimwhisper transcribe`` / ``eval`` decode as openai-whisper does (timestamps,
temperature fallback), and a decoder calibrated only on ``<|notimestamps|>`` prompts was weaker there:
the tiny.en models above, greedy without / whisper decoding with timestamps (dense 5.89 / 4.44 and
5.89 / 4.84): 25% 6.26 / 6.05 and 7.13 / 5.65, 35% 7.56 / 6.45 and 9.05 / 7.66. With half of the
calibration windows in timestamp mode (``CalibConfig.timestamps`` 0.5; the dense model's timestamped
transcript) 25% gives 6.76 / 5.24 and 7.07 / 5.24 (the first setting inside dense + 1.0 on both sets
in greedy decoding; 3 ljspeech/dev words over it in whisper decoding), 35% 8.43 / 8.47 and 8.87 /
8.47 (worse). ``oneshot-25`` takes 0.5, ``oneshot-35`` 0: one draw each, so read the difference as
the size of the draw-to-draw spread, not as a law.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from slimwhisper.compress.alloc_config import AllocConfig, Threshold
from slimwhisper.compress.reconstruct_config import ReconstructConfig
from slimwhisper.compress.scores import ScoreConfig
from slimwhisper.compress.sensconfig import SensAllocConfig
from slimwhisper.errors import UserError


class RecipeError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Recipe:
    name: str
    alloc: AllocConfig
    score: ScoreConfig
    describe: str
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)  # method "none" by default
    calib_n: int | None = None  # calibration utterances the recipe was measured with (None: the CLI default)
    stats_stride: int = 1  # encoder frame stride of its Gram matrices
    label_free: bool | None = None  # CalibConfig.label_free it was measured with (None: references where there are some)
    pack_seconds: float | None = None  # CalibConfig.pack_seconds it was measured with (None: one clip per example)
    calib_timestamps: float = 0.0  # CalibConfig.timestamps: share of examples calibrated in timestamp mode


class Calibration(NamedTuple):
    n: int
    stride: int
    label_free: bool | None
    pack_seconds: float | None
    timestamps: float = 0.0


def calibration_for(recipe: str | None, calib_n: int | None, stride: int | None, label_free: bool | None = None,
                    pack_seconds: float | None = None, default_n: int = 32, timestamps: float | None = None) -> Calibration:  # fmt: skip
    """(utterances, encoder stride, label-free, packing, timestamp share): what the user gave, else the
    recipe's, else the defaults."""
    chosen = get_recipe(recipe) if recipe is not None else None
    n = calib_n if calib_n is not None else (chosen.calib_n if chosen and chosen.calib_n else default_n)
    lf = label_free if label_free is not None else (chosen.label_free if chosen else None)
    pack = pack_seconds if pack_seconds is not None else (chosen.pack_seconds if chosen else None)
    # references carry no timestamps: with --labels the recipe's timestamp share does not apply
    ts = timestamps if timestamps is not None else (chosen.calib_timestamps if chosen and lf is not False else 0.0)
    return Calibration(n, stride if stride is not None else (chosen.stats_stride if chosen else 1), lf, pack, ts)


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        listing = "\n  ".join(f"{r.name}: {r.describe}" for r in RECIPES.values())
        raise RecipeError(f"unknown recipe {name!r}; known recipes:\n  {listing}")
    return RECIPES[name]


_FISHER = ScoreConfig("fisher")
_MAG = ScoreConfig("magnitude")

register_recipe(
    Recipe(
        "dec-self-attn-50",
        AllocConfig(components=(("decoder.self_attn", 0.5),)),
        _FISHER,
        "50% of the heads of every decoder self-attention (lowest Fisher first)",
    )
)
register_recipe(
    Recipe(
        "enc-last4-heads-50",
        AllocConfig(components=(("encoder[-4:].self_attn", 0.5),)),
        _FISHER,
        "50% of the heads of the last four encoder layers (lowest Fisher first)",
    )
)
for _score in (_FISHER, _MAG):
    for _thr in Threshold:
        register_recipe(
            Recipe(
                f"{_thr.value}-30-{_score.name}",
                AllocConfig(threshold=_thr, target_params=0.30),
                _score,
                f"30% of the encoder+decoder layer parameters (heads + FFN neurons), {_thr.value} threshold, {_score.name} scores",
            )
        )
register_recipe(
    Recipe(
        "drop-enc-2",
        AllocConfig(drop_encoder_layers=2),
        _FISHER,
        "drop the 2 encoder layers with the lowest Fisher saliency",
    )
)
register_recipe(
    Recipe(
        "drop-dec-1",
        AllocConfig(drop_decoder_layers=1),
        _FISHER,
        "drop the decoder layer with the lowest Fisher saliency",
    )
)
# Timestamp-mode share per ratio, as measured (one calibration draw each, see the docstring): at 25%
# half the windows in timestamp mode met the greedy target on both sets; at 35% it lost.
for _pct, _stamps in ((25, 0.5), (35, 0.0)):
    register_recipe(
        Recipe(
            f"oneshot-{_pct}",
            AllocConfig(threshold=Threshold.SENSITIVITY, target_params=_pct / 100, sensitivity=SensAllocConfig(n=16)),
            ScoreConfig("obs"),
            f"{_pct}% of the encoder+decoder layer parameters (heads + FFN neurons), ratios from measured "
            "sensitivity, structured OBS scores, sequential least-squares re-fit (needs --calib: "
            "1,024 clips packed into 30 s windows, label-free"
            + (f", {_stamps:.0%} of them in timestamp mode)" if _stamps else ")"),
            ReconstructConfig("lstsq", sequential=True),
            calib_n=1024,
            stats_stride=4,
            label_free=True,
            pack_seconds=30.0,
            calib_timestamps=_stamps,
        )
    )
