"""Named recovery recipes (``slimwhisper.train.recipes``): what ``run --recover NAME`` trains with."""

from __future__ import annotations

import pytest

from slimwhisper.train.recipes import (
    RECOVERY_RECIPES,
    RecoveryRecipe,
    register_recovery,
)


def test_kd_ts_is_the_measured_recipe_on_the_given_data():
    cfg = RECOVERY_RECIPES["kd-ts"].config(["a.tsv", "b", "c"], threads=2, steps=140)
    assert cfg.method.value == "distill" and cfg.timestamps == 0.5
    t = cfg.train
    assert (t.data, t.more_data, t.threads, t.steps) == ("a.tsv", ("b", "c"), 2, 140)
    assert (t.batch_size, t.lr, t.warmup, t.pack_seconds, t.n) == (4, 1e-4, 0.1, 30.0, 5000)
    assert RECOVERY_RECIPES["kd-ts"].config(["a.tsv"], threads=None).train.steps == 300  # the recipe's own


def test_lw_ts_is_layerwise_then_distillation_in_native_bf16():
    cfg = RECOVERY_RECIPES["lw-ts"].config(["a.tsv"], threads=1)
    assert cfg.method.value == "layerwise" and cfg.layerwise_steps == 200 and cfg.timestamps == 0.5
    assert (cfg.train.steps, cfg.train.mixed_precision, cfg.train.pack_seconds) == (600, "auto", 30.0)


def test_a_recipe_that_cannot_make_a_valid_config_is_refused_at_registration():
    from slimwhisper.errors import UserError

    with pytest.raises(UserError):
        register_recovery("broken", RecoveryRecipe("distill", train={"lr": -1.0}))
    assert "broken" not in RECOVERY_RECIPES
    with pytest.raises(ValueError, match="twice"):
        register_recovery("kd-ts", RECOVERY_RECIPES["kd-ts"])


def test_run_builds_the_recipe_config():
    from slimwhisper.cli.bench import _recover_config

    cfg = _recover_config("kd-ts", ["x.tsv"], 32, None, 1)
    assert cfg.timestamps == 0.5 and cfg.train.pack_seconds == 30.0 and cfg.train.n == 5000
    assert _recover_config("distill", ["x.tsv"], 32, 5, 1).train.n == 32  # a plain method keeps --calib-n
