"""`slimwhisper recover` / `slimwhisper tspar` end to end on a tiny random Whisper and a synthesised manifest."""

from __future__ import annotations

import json

import pytest
from _helpers import assert_user_error, write_manifest
from typer.testing import CliRunner

import slimwhisper.cli.train  # noqa: F401  (registers the commands)
from slimwhisper.cli import app
from slimwhisper.compress import PrunePlan, apply_plan
from slimwhisper.models import load_model
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    dense = tiny_random_loaded()
    save_slim(dense, root / "dense")
    pruned = tiny_random_loaded()
    record = apply_plan(pruned.model, PrunePlan(frozenset({"encoder.1.self_attn.head.0", "decoder.0.ffn.neuron.2"})))
    save_slim(pruned, root / "pruned", record=record, configs={"prune": {"score": {"name": "magnitude"}}})
    return root / "dense", root / "pruned", write_manifest(root / "data")


def test_recover_lora_end_to_end(folders, tmp_path):
    dense, pruned, data = folders
    out = tmp_path / "rec"
    args = ["recover", "--model", str(pruned), "--teacher", str(dense), "--method", "lora", "--data", str(data),
            "--steps", "1", "--batch-size", "2", "--out", str(out), "--eval", str(data), "--eval-limit", "1", "--quiet", "--threads", "1"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "WER before" in res.output and "merged" in res.output
    again, before = load_model(str(out)), load_model(str(pruned))
    assert again.spec == before.spec and again.spec.params() == before.spec.params()
    configs = json.loads((out / "pruning.json").read_text())["configs"]
    assert configs["prune"]["score"]["name"] == "magnitude" and configs["recover"]["method"] == "lora"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "distill"], "needs --teacher"),
        (["--method", "sgd"], "method must be one of"),
        (["--steps", "0"], "train.steps"),
        (["--method", "finetune", "--cached-stem"], "only the layerwise method caches"),
    ],
)
def test_recover_bad_input_exits_2(folders, tmp_path, extra, message):
    _, pruned, data = folders
    out = tmp_path / "rec"
    res = runner.invoke(app, ["recover", "--model", str(pruned), "--data", str(data), "--out", str(out), *extra])
    assert res.exit_code == 2 and message in res.output and not out.exists()


def test_recover_refuses_a_non_slim_model_and_existing_out(folders, tmp_path):
    _, _, data = folders
    out = tmp_path / "exists"
    out.mkdir()
    (out / "mine.txt").write_text("x")  # an empty folder is used as is (outputs.py); a full one is refused
    res = runner.invoke(app, ["recover", "--model", "tiny.en", "--data", str(data), "--out", str(out)])
    assert res.exit_code == 2 and "not a slimwhisper folder" in res.output and "already exists" in res.output


def test_recover_says_how_to_install_peft(folders, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    _, pruned, data = folders
    res = runner.invoke(app, ["recover", "--model", str(pruned), "--data", str(data), "--out", str(tmp_path / "o"), "--method", "lora"])
    assert res.exit_code == 2 and "pip install '.[recovery]'" in res.output


def test_tspar_command(folders, tmp_path):
    dense, _, data = folders
    out = tmp_path / "tspar"
    args = ["tspar", "--model", str(dense), "--data", str(data), "--out", str(out), "--steps", "1", "--batch-size", "2",
            "--lambda-group", "0.5", "--target-params", "0.3", "--quiet", "--threads", "1", "--pack-seconds", "1.5"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "pass 1 removed" in res.output and "layers (enc+dec)" in res.output
    assert json.loads((out / "pruning.json").read_text())["configs"]["tspar"]["train"]["pack_seconds"] == 1.5
    assert load_model(str(out)).spec.params() < load_model(str(dense)).spec.params()
    bad = runner.invoke(app, ["tspar", "--model", str(dense), "--data", str(data), "--out", str(out), "--lambda-group", "0"])
    assert bad.exit_code == 2 and "already exists" in bad.output and "both 0" in bad.output


def test_recover_distill_checkpoints_and_refuses_a_resume_with_other_settings(folders, tmp_path):
    dense, pruned, data = folders
    out, ck = tmp_path / "kd", tmp_path / "ck"
    base = ["recover", "--model", str(pruned), "--teacher", str(dense), "--method", "distill", "--data", str(data),
            "--steps", "2", "--batch-size", "2", "--out", str(out), "--teacher-cache", str(tmp_path / "tc"),
            "--checkpoint-dir", str(ck), "--checkpoint-every", "1", "--quiet", "--threads", "1"]  # fmt: skip
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    assert json.loads((ck / "latest.json").read_text())["step"] == 2 and (ck / "job.json").is_file()
    configs = json.loads((out / "pruning.json").read_text())["configs"]
    assert configs["recover"]["method"] == "distill" and configs["recover"]["top_k"] == 64
    again = runner.invoke(app, [*base, "--resume", "--lr", "0.001", "--force"])
    assert_user_error(again, "other settings", "recover.train.lr")


def test_recover_refuses_unlabelled_audio_without_a_teacher(folders, tmp_path):
    _, pruned, _ = folders
    data = write_manifest(tmp_path / "unlabelled", n=1)
    (data / "transcripts.tsv").write_text("u0\tu0.wav\t\n")
    res = runner.invoke(app, ["recover", "--model", str(pruned), "--data", str(data), "--out", str(tmp_path / "o"), "--steps", "1"])
    assert_user_error(res, "no reference text", "--teacher")


def test_recover_refuses_evaluation_sets_and_a_resume_without_checkpoints(folders, tmp_path):
    _, pruned, _ = folders
    shared = tmp_path / "shared"
    ev = write_manifest(shared / "librispeech-clean-mini", n=1)
    res = runner.invoke(app, ["recover", "--model", str(pruned), "--data", str(ev), "--out", str(tmp_path / "o"), "--steps", "1"])
    assert_user_error(res, "is an evaluation set")
    (shared / "ljspeech").mkdir()
    (shared / "ljspeech" / "dev.tsv").write_text("d0\t../librispeech-clean-mini/u0.wav\tgood morning 0\n")
    mixed = tmp_path / "mine.tsv"  # a hand-made manifest whose only line is evaluation audio
    mixed.write_text(f"m0\t{ev / 'u0.wav'}\tgood morning\n")
    res = runner.invoke(app, ["recover", "--model", str(pruned), "--data", str(mixed), "--out", str(tmp_path / "o"), "--steps", "1", "-q"])
    assert_user_error(res, "no utterance outside the evaluation sets")
    res = runner.invoke(app, ["recover", "--model", str(pruned), "--data", str(mixed), "--out", str(tmp_path / "o2"), "--resume"])
    assert_user_error(res, "no checkpoint folder")


def test_tspar_refuses_a_negative_lambda(folders, tmp_path):
    dense, _, data = folders
    res = runner.invoke(app, ["tspar", "--model", str(dense), "--data", str(data), "--out", str(tmp_path / "t"), "--lambda-group", "-1"])
    assert_user_error(res, "lambda_group must be a finite number >= 0")


def test_imp_command_refuses_bad_input_before_work(folders, tmp_path):
    dense, _, data = folders
    res = runner.invoke(app, ["imp", "--model", str(dense), "--data", str(data), "--out", str(tmp_path / "i"),
                              "--target-params", "1.5", "--rounds", "3", "--steps", "2"])  # fmt: skip
    assert_user_error(res, "target_params must be in (0, 1)", "every round needs >= 1 step")
    res = runner.invoke(app, ["imp", "--model", str(dense), "--data", str(data), "--out", str(tmp_path / "i"), "--pack-seconds", "40"])
    assert_user_error(res, "train.pack_seconds must be in (0, 30]")
    assert not (tmp_path / "i").exists()
