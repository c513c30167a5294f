"""The one-shot prune pipeline on a tiny random Whisper saved as a slim folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from slimwhisper.compress import AllocConfig, CalibConfig, PruneConfig, PruneError, ScoreConfig, get_recipe, prune
from slimwhisper.models import load_model
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded


def write_manifest(folder, n=3, text=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        sf.write(folder / f"u{i}.wav", (0.1 * rng.standard_normal(8000 + 1000 * i)).astype("float32"), 16000)
        lines.append(f"u{i}\tu{i}.wav\t{'hello there number ' + str(i) if text else ''}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "tiny-random"
    save_slim(tiny_random_loaded(), path)
    return path


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("data") / "calib")


def test_prune_with_fisher_and_reload(dense_dir, calib_dir, tmp_path):
    out = tmp_path / "pruned"
    config = PruneConfig(
        model=str(dense_dir),
        out=str(out),
        score=ScoreConfig("fisher"),
        alloc=AllocConfig(threshold="global", target_params=0.3),
        calib=CalibConfig(str(calib_dir), n=2),
    )
    result = prune(config, progress=False)
    removed = 1 - sum(v for k, v in result.params_after.items() if not k.endswith("embed")) / sum(
        v for k, v in result.params_before.items() if not k.endswith("embed")
    )
    assert removed >= 0.3 and result.params_after["encoder.embed"] == result.params_before["encoder.embed"]
    again = load_model(str(out))
    assert again.spec == result.loaded.spec
    assert sum(p.numel() for p in again.model.parameters()) == sum(result.params_after.values())
    saved = json.loads((out / "pruning.json").read_text())
    assert saved["configs"]["prune"]["score"]["name"] == "fisher"
    assert saved["configs"]["prune"]["alloc"]["target_params"] == 0.3


def test_prune_twice_composes(dense_dir, calib_dir, tmp_path):
    first = tmp_path / "a"
    recipe = get_recipe("dec-self-attn-50")
    prune(PruneConfig(str(dense_dir), str(first), recipe.score, recipe.alloc, calib=CalibConfig(str(calib_dir), n=1)), progress=False)
    second = tmp_path / "b"
    res = prune(PruneConfig(str(first), str(second), ScoreConfig("magnitude"), AllocConfig(drop_encoder_layers=1)), progress=False)
    assert [ly.self_attn.heads for ly in res.loaded.spec.decoder] == [2, 2]
    assert len(res.loaded.spec.encoder) == 1
    assert len(res.record.steps) == 2


def test_plan_file_and_errors(dense_dir, calib_dir, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"remove": ["encoder.0.self_attn.head.1", "decoder.1.ffn.neuron.3"]}))
    res = prune(PruneConfig(str(dense_dir), str(tmp_path / "p"), plan=str(plan)), progress=False)
    assert res.loaded.spec.encoder[0].self_attn.heads == 3 and res.loaded.spec.decoder[1].ffn_dim == 127
    with pytest.raises(PruneError, match="already exists"):
        PruneConfig(str(dense_dir), str(tmp_path / "p"), plan=str(plan))
    with pytest.raises(PruneError, match="needs calibration audio"):
        PruneConfig(str(dense_dir), str(tmp_path / "q"), ScoreConfig("fisher"), AllocConfig(heads=0.5))
    with pytest.raises(PruneError, match="exactly one"):
        PruneConfig(str(dense_dir), str(tmp_path / "q"), ScoreConfig("magnitude"), AllocConfig(heads=0.5), plan=str(plan))
    assert not (tmp_path / "q").exists()


def test_recipe_carries_its_calibration_and_the_user_overrides_it():
    from slimwhisper.compress.recipes import RecipeError, calibration_for

    assert calibration_for("oneshot-25", None, None) == (1024, 4, True, 30.0, 0.5)  # what the recipe was measured with
    assert calibration_for("oneshot-25", 64, 1, False, 15.0) == (64, 1, False, 15.0, 0.0)  # the user's choice wins (--labels)
    assert calibration_for("dec-self-attn-50", None, None) == (32, 1, None, None, 0.0)  # recipes without one: defaults
    assert calibration_for(None, None, 2) == (32, 2, None, None, 0.0)
    with pytest.raises(RecipeError, match="unknown recipe"):
        calibration_for("no-such-recipe", None, None)
