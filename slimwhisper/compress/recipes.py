"""Named pruning recipes: an ``AllocConfig`` + ``ScoreConfig`` (+ ``ReconstructConfig``) preset
registered by name.

``slimwhisper prune --recipe NAME`` uses one; adding a recipe is one ``register_recipe`` call.
The first two follow "Pruning as Regularization" (arXiv 2511.08092), which found Whisper's
decoder self-attention and the top encoder layers the least sensitive components.

``oneshot-25`` / ``oneshot-35`` are the best one-shot settings measured by
``experiments/oneshot_table.py`` (issue 9): structured OBS scores, allocation from measured
sensitivity for a layer-parameter budget, and a least-squares re-fit (dense-model Grams) of ``out_proj`` /
``fc2``. They need calibration audio (``--calib``) and carry the calibration they were measured with
(``calib_n`` utterances, encoder frame ``stats_stride``): the decoder re-fit of an FFN with 1,536
inputs needs several thousand decoder tokens, i.e. a few hundred utterances, while the encoder has
1,500 frames per utterance and can be subsampled. On tiny.en at 25%, 64 utterances (stride 1) gave
8.87% / 8.47% WER on ljspeech/dev / clean-mini, 256 utterances (stride 4, same encoder rows)
6.70% / 6.85% (dense 5.89% / 4.44%).

They calibrate LABEL-FREE: the decoder is teacher-forced on the dense model's own transcript, not
on the reference, so the re-fit reproduces the dense model where it really decodes (its own token
sequences), not on text it would not have written. Measured at 25% with the same 256 ljspeech/train
utterances (ljspeech/dev / clean-mini / speechocean762 eval, greedy): tiny.en references 6.70 /
6.85 / 40.54 -> label-free 5.21 / 6.45 / 44.63 (dense 5.89 / 4.44 / 39.00); base 5.89 (1 looping) /
3.63 / 36.57 -> 5.08 (none) / 3.63 / 35.42 (dense 4.46 / 3.23 / 62.66 with 2 looping). At 35%: base
7.07 (1 looping) / 6.45 -> 5.58 / 4.44 / 37.98 (none looping); tiny.en 7.50 / 13.71 / 59.21 -> 8.80 /
11.69 / 89.77 (one speechocean762 utterance loops): label-free is kept for both, the base gain is
the larger and tiny.en at 35% needs recovery either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slimwhisper.compress.allocate import AllocConfig, Threshold
from slimwhisper.compress.reconstruct import ReconstructConfig
from slimwhisper.compress.scores import ScoreConfig
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


def calibration_for(recipe: str | None, calib_n: int | None, stride: int | None, label_free: bool | None = None,
                    default_n: int = 32) -> tuple[int, int, bool | None]:  # fmt: skip
    """(utterances, encoder stride, label-free): what the user gave, else the recipe's, else the defaults."""
    chosen = get_recipe(recipe) if recipe is not None else None
    n = calib_n if calib_n is not None else (chosen.calib_n if chosen and chosen.calib_n else default_n)
    lf = label_free if label_free is not None else (chosen.label_free if chosen else None)
    return n, stride if stride is not None else (chosen.stats_stride if chosen else 1), lf


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
for _pct in (25, 35):
    register_recipe(
        Recipe(
            f"oneshot-{_pct}",
            AllocConfig(threshold=Threshold.SENSITIVITY, target_params=_pct / 100),
            ScoreConfig("obs"),
            f"{_pct}% of the encoder+decoder layer parameters (heads + FFN neurons), ratios from measured "
            "sensitivity, structured OBS scores, least-squares re-fit on dense Grams (needs --calib)",
            ReconstructConfig("lstsq", sequential=False),  # measured; the sequential walk is not validated on tiny.en yet
            calib_n=256,
            stats_stride=4,
            label_free=True,
        )
    )
