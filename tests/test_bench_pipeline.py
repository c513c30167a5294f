"""``slimwhisper run`` config checks (fast) and the whole job on a tiny random model (slow)."""

from __future__ import annotations

import json

import pytest

from slimwhisper.bench.config import BenchError
from slimwhisper.bench.pipeline import RunConfig


def test_run_config_lists_every_problem(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(BenchError) as err:
        RunConfig(model="tiny.en", data=str(tmp_path / "nodata"), out=str(out), recipe="no-such-recipe", threads=0)
    msg = str(err.value)
    for part in ("unknown recipe", "--data", "--threads", "already exists"):
        assert part in msg, part


def test_run_config_gradient_recipe_needs_calib(tmp_path):
    with pytest.raises(BenchError, match="--calib"):
        RunConfig(model="tiny.en", data=str(tmp_path), out=str(tmp_path / "o"), recipe="global-30-fisher")
    with pytest.raises(BenchError, match="exactly one"):
        RunConfig(model="tiny.en", data=str(tmp_path), out=str(tmp_path / "o"))


@pytest.mark.slow
def test_run_pipeline_tiny(tmp_path):
    import numpy as np
    import soundfile as sf

    from slimwhisper.bench.pipeline import run_pipeline
    from slimwhisper.models.testing import tiny_random_loaded

    loaded = tiny_random_loaded(seed=0)
    model = tmp_path / "model"
    loaded.model.save_pretrained(model)
    loaded.processor.save_pretrained(model)
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    sf.write(data / "audio" / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    (data / "transcripts.tsv").write_text("a\taudio/a.wav\thello\n")
    out = tmp_path / "run"
    config = RunConfig(model=str(model), data=str(data), out=str(out), recipe="global-30-magnitude", threads=1,
                       repeat=1, memory=False)
    report = run_pipeline(config, progress=False, say=lambda m: None)
    for name in ("run_config.json", "summary.json", "pruned", "bundle-dense/manifest.json",
                 "bundle-pruned/manifest.json", "bench/report.md"):
        assert (out / name).exists(), name
    by = {e["id"]: e for e in report["entries"]}
    assert by["dense [torch]"]["status"] == "ok" and by["pruned [torch]"]["status"] == "ok"
    assert by["pruned [torch]"]["static"]["params"] < by["dense [torch]"]["static"]["params"]
    assert by["pruned [faster-whisper-int8]"]["status"] == "not available"
    assert json.loads((out / "summary.json").read_text())["prune"]["removed_groups"] > 0


def test_run_config_recover_needs_calib_and_known_method(tmp_path):
    with pytest.raises(BenchError) as err:
        RunConfig(model="tiny.en", data=str(tmp_path), out=str(tmp_path / "o"), recipe="global-30-magnitude",
                  recover="magic")
    assert "--recover must be one of" in str(err.value) and "--calib" in str(err.value)
