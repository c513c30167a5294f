"""`slimwhisper prune` / `sensitivity` end to end on a tiny random Whisper and a synthesised manifest."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import slimwhisper.cli.compress  # noqa: F401  (registers the commands)
import slimwhisper.cli.core  # noqa: F401
from slimwhisper.cli import app
from slimwhisper.models import load_model
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded

from _helpers import write_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "tiny-random"
    save_slim(tiny_random_loaded(), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("data") / "set", n=2)


def test_prune_end_to_end(dense, data, tmp_path):
    out = tmp_path / "out"
    args = ["prune", "-m", str(dense), "--calib", str(data), "--calib-n", "2", "--score", "taylor",
            "--threshold", "local", "--heads", "0.5", "--ffn", "0.25", "--out", str(out), "-q",
            "--eval", str(data), "--eval-limit", "1", "--threads", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoder.self_attn" in result.output and "total" in result.output
    assert "WER before" in result.output
    loaded = load_model(str(out))
    assert [ly.self_attn.heads for ly in loaded.spec.encoder] == [2, 2]
    assert [ly.ffn_dim for ly in loaded.spec.decoder] == [96, 96]
    assert json.loads((out / "pruning.json").read_text())["configs"]["prune"]["score"]["name"] == "taylor"


def test_prune_anchored_with_cross_validated_damping(dense, data, tmp_path):
    out = tmp_path / "anch"
    args = ["prune", "-m", str(dense), "--calib", str(data), "--calib-n", "2", "--score", "magnitude", "--component", "encoder.ffn=0.1",
            "--reconstruct", "anchored", "--dense-stats", "--damp-grid", "0.01", "--damp-grid", "1", "--out", str(out),
            "-q", "--threads", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "pruning.json").read_text())["configs"]
    assert saved["prune"]["reconstruct"]["method"] == "anchored" and saved["prune"]["reconstruct"]["damp_grid"] == [0.01, 1.0]
    damps = saved["reconstruction"]["damp"]
    assert set(damps) == {"encoder.0.ffn", "encoder.1.ffn"}  # the decoder is not pruned: 2 clips give it too few rows
    assert set(damps.values()) <= {0.01, 1.0}
    bad_args = [a if a != "anchored" else "bias" for a in args]
    bad = runner.invoke(app, [*bad_args[: bad_args.index("--out")], "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "has none" in bad.output and not (tmp_path / "b").exists()


def test_recipe_and_magnitude_without_calibration(dense, tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["prune", "-m", str(dense), "--recipe", "drop-enc-2", "--score", "magnitude", "--out", str(out), "-q"])
    assert result.exit_code != 0 and "keep at least one" in result.output  # tiny model has 2 encoder layers
    assert not out.exists()
    result = runner.invoke(app, ["prune", "-m", str(dense), "--recipe", "dec-self-attn-50", "--score", "magnitude", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert [ly.self_attn.heads for ly in load_model(str(out)).spec.decoder] == [2, 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--heads", "1.2", "--score", "magnitude"], "[0, 1)"),
        (["--heads", "0.5", "--calib", "{empty}"], "no usable utterances"),
        (["--component", "decoder.attn=0.5", "--score", "magnitude"], "selector"),
        (["--recipe", "no-such", "--score", "magnitude"], "known recipes"),
        (["--heads", "0.5", "--score", "nope"], "unknown score"),
        (["--recipe", "dec-self-attn-50", "--threshold", "global"], "--recipe replaces"),
        (["--target-params", "0.3", "--target-flops", "0.3", "--score", "magnitude"], "not both"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(dense, tmp_path, extra, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "transcripts.tsv").write_text("")
    out = tmp_path / "out"
    args = ["prune", "-m", str(dense), "--out", str(out), "-q"] + [a.replace("{empty}", str(empty)) for a in extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_calibration_draws_from_several_sets_and_refuses_evaluation_sets(dense, data, tmp_path):
    other = write_manifest(tmp_path / "other", n=2)
    out = tmp_path / "out"
    args = ["prune", "-m", str(dense), "--calib", str(data), "--calib", str(other), "--calib-n", "4", "--score", "fisher",
            "--heads", "0.5", "--out", str(out), "-q", "--threads", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 utterances" in result.output  # 2 + 2: both sets were drawn from
    calib = json.loads((out / "pruning.json").read_text())["configs"]["prune"]["calib"]
    assert calib["data"] == str(data) and calib["more_data"] == [str(other)]
    ev = write_manifest(tmp_path / "shared" / "librispeech-clean-mini", n=1)
    refused = tmp_path / "refused"
    result = runner.invoke(app, ["prune", "-m", str(dense), "--calib", str(data), "--calib", str(ev), "--score", "fisher",
                                 "--heads", "0.5", "--out", str(refused), "-q"])  # fmt: skip
    assert result.exit_code == 2 and "is an evaluation set: never calibrate on it" in result.output
    assert not refused.exists()


def test_plan_with_unknown_head_lists_valid_names(dense, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"remove": ["encoder.0.self_attn.head.9"]}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["prune", "-m", str(dense), "--plan", str(plan), "--out", str(out), "-q"])
    assert result.exit_code == 2
    assert "has heads 0..3" in result.output and "encoder.0.self_attn.head.{0..3}" in result.output
    assert not out.exists()


def test_existing_out_needs_force(dense, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    result = runner.invoke(app, ["prune", "-m", str(dense), "--heads", "0.5", "--score", "magnitude", "--out", str(out), "-q"])
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "mine.txt").read_text() == "user data"


def test_sensitivity_command(dense, data, tmp_path):
    out, plot = tmp_path / "s.json", tmp_path / "s.png"
    result = runner.invoke(app, ["sensitivity", "-m", str(dense), "--data", str(data), "--calib-n", "1",
                                 "--out", str(out), "--plot", str(plot), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decoder.1.cross_attn" in result.output
    assert len(json.loads(out.read_text())["rows"]) == 10 and plot.stat().st_size > 0


def test_prune_recipe_and_flag_set_the_calibration_packing(dense, data, tmp_path, monkeypatch):
    """`--recipe oneshot-25` packs as it was measured (30 s windows); --calib-pack-seconds overrides it;
    --calib-timestamps reaches the calibration config."""
    import importlib

    from slimwhisper.errors import UserError

    prune_mod = importlib.import_module("slimwhisper.compress.prune")  # the package exports the function as `prune`

    seen = []

    def stop(config, **kw):
        seen.append(config)
        raise UserError("stopped by the test")

    monkeypatch.setattr(prune_mod, "prune", stop)
    base = ["prune", "-m", str(dense), "--calib", str(data), "--recipe", "oneshot-25", "-q"]
    stream = ["--reconstruct-target", "stream", "--refit-all"]
    for k, extra in enumerate(([], ["--calib-pack-seconds", "12"], ["--calib-timestamps", "0"], stream)):
        res = runner.invoke(app, [*base, "--out", str(tmp_path / f"o{k}"), *extra])
        assert "stopped by the test" in res.output, res.output
    assert [c.calib.pack_seconds for c in seen] == [30.0, 12.0, 30.0, 30.0]
    assert [c.calib.timestamps for c in seen] == [0.5, 0.5, 0.0, 0.5]  # the recipe's share, unless given
    assert seen[0].reconstruct.sequential and seen[0].alloc.sensitivity.n == 16
    assert (seen[0].reconstruct.target, seen[0].reconstruct.refit_all) == ("layer", False)
    assert (seen[3].reconstruct.target, seen[3].reconstruct.refit_all, seen[3].reconstruct.method) == ("stream", True, "lstsq")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "ds"), "--reconstruct", "lstsq", "--dense-stats", *stream])
    assert res.exit_code != 0 and "need sequential statistics" in res.output and not (tmp_path / "ds").exists()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--calib-pack-seconds", "31"])
    assert res.exit_code != 0 and "pack_seconds must be in (0, 30]" in res.output
