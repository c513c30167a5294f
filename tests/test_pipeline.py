"""``slimwhisper run``: config checks, the output-folder rules (resume, refuse, replace) and the
whole job on a tiny random model (slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from slimwhisper.compress.calib import CalibConfig
from slimwhisper.compress.prune import PruneConfig
from slimwhisper.compress.recipes import get_recipe
from slimwhisper.errors import UserError
from slimwhisper.export.config import ExportConfig
from slimwhisper.pipeline import RunConfig, RunError, prepare_out


def run_config(tmp_path, model="tiny.en", recipe="global-30-magnitude", **kw) -> RunConfig:
    r = get_recipe(recipe)
    out = kw.pop("out", tmp_path / "run")
    (tmp_path / "data").mkdir(exist_ok=True)
    prune = PruneConfig(model=model, out=str(out / "pruned"), score=r.score, alloc=r.alloc, recipe=recipe, force=True,
                        calib=CalibConfig(str(tmp_path)) if r.score.needs_grads else None)
    return RunConfig(model=model, data=kw.pop("data", str(tmp_path / "data")), out=str(out), prune=prune,
                     export=ExportConfig(quantize="int8", keep_fp32=True), **kw)


def test_run_config_lists_every_problem(tmp_path):
    with pytest.raises(RunError) as err:
        run_config(tmp_path, data=str(tmp_path / "nodata"), threads=0, repeat=-1)
    msg = str(err.value)
    for part in ("--data", "--threads", "--repeat"):
        assert part in msg, part


def test_run_never_replaces_a_foreign_folder_even_with_force(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(UserError, match="not a 'slimwhisper run' folder"):
        prepare_out(run_config(tmp_path, out=out, force=True))
    assert (out / "thesis.txt").read_text() == "years of work"


def test_run_refuses_to_write_into_its_input(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_text("weights")
    with pytest.raises(UserError, match="input"):
        prepare_out(run_config(tmp_path, model=str(model), out=model / "run", force=True))
    assert (model / "model.safetensors").exists() and not (model / "run").exists()


def test_interrupted_run_resumes_and_other_settings_are_refused(tmp_path):
    config = run_config(tmp_path)
    assert prepare_out(config) is False  # a new run
    (tmp_path / "run" / "pruned").mkdir()  # a stage that completed before the interruption
    assert prepare_out(config) is True  # same settings, no summary.json: resume
    other = dataclasses.replace(config, repeat=7)
    with pytest.raises(RunError, match="other settings") as err:
        prepare_out(other)
    assert "repeat: 3 -> 7" in str(err.value)
    assert (tmp_path / "run" / "pruned").is_dir()  # nothing was removed
    assert prepare_out(dataclasses.replace(other, force=True)) is False  # --force starts over
    assert not (tmp_path / "run" / "pruned").exists()
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["repeat"] == 7


def test_complete_run_needs_force(tmp_path):
    config = run_config(tmp_path)
    prepare_out(config)
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="already exists"):
        prepare_out(config)
    assert prepare_out(dataclasses.replace(config, force=True)) is False


@pytest.mark.slow
def test_run_pipeline_tiny(tmp_path):
    import numpy as np
    import soundfile as sf

    from slimwhisper.models.testing import tiny_random_loaded
    from slimwhisper.pipeline import run_pipeline

    loaded = tiny_random_loaded(seed=0)
    model = tmp_path / "model"
    loaded.model.save_pretrained(model)
    loaded.processor.save_pretrained(model)
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    sf.write(data / "audio" / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    (data / "transcripts.tsv").write_text("a\taudio/a.wav\thello\n")
    config = run_config(tmp_path, model=str(model), data=str(data), threads=1, repeat=1, memory=False)
    report = run_pipeline(config, progress=False, say=lambda m: None)
    out = tmp_path / "run"
    for name in ("run_config.json", "summary.json", "pruned", "bundle-dense/manifest.json",
                 "bundle-pruned/manifest.json", "bench/report.md"):
        assert (out / name).exists(), name
    by = {e["id"]: e for e in report["entries"]}
    assert by["dense [torch]"]["status"] == "ok" and by["pruned [torch]"]["status"] == "ok"
    assert by["pruned [torch]"]["static"]["params"] < by["dense [torch]"]["static"]["params"]
    assert by["pruned [faster-whisper-int8]"]["status"] == "not available"
    assert set(json.loads((out / "summary.json").read_text())["seconds"]) >= {"pruned", "bundle-dense", "bench"}


def test_run_calibrates_as_the_recipe_was_measured(tmp_path, monkeypatch):
    """`run --recipe oneshot-25` takes the recipe's calibration (1,024 clips packed in 30 s windows, stride 4, label-free)
    unless --calib-n says otherwise, as `prune --recipe` does."""
    from typer.testing import CliRunner

    from _helpers import write_manifest
    from slimwhisper import pipeline
    from slimwhisper.cli import _register, app

    _register()
    seen = []

    def stop(config, **kw):
        seen.append(config)
        raise RunError("stopped by the test")

    monkeypatch.setattr(pipeline, "run_pipeline", stop)
    data = write_manifest(tmp_path / "d", n=2)
    base = ["run", "-m", "tiny.en", "--data", str(data), "--calib", str(data), "--recipe", "oneshot-25"]
    for extra in ([], ["--calib-n", "64"], ["--recover", "kd-ts", "--recover-steps", "130"]):
        res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / f"r{len(extra)}"), *extra])
        assert res.exit_code == 2 and "stopped by the test" in res.output, res.output
    recipe, custom = (c.prune for c in seen[:2])
    # --calib also calibrates the int8 encoder; --recover kd-ts is the measured recovery recipe
    assert seen[0].export.encoder_int8 == "smoothed" and seen[0].export.calib == (str(data),)
    kd = seen[2].recover
    assert (kd.method.value, kd.timestamps, kd.train.steps, kd.train.pack_seconds, kd.train.data) == (
        "distill", 0.5, 130, 30.0, str(data))
    assert (recipe.calib.n, recipe.calib.label_free, recipe.stats.stride, recipe.calib.pack_seconds) == (1024, True, 4, 30.0)
    assert (custom.calib.n, custom.calib.label_free, custom.stats.stride) == (64, True, 4)
