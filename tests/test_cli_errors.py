"""Every subcommand answers bad input the same way (exit 2, one ``error:`` line, indented problems
only), and no command can destroy data: ``--force`` never replaces a folder slimwhisper did not
make, nor the input it reads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from slimwhisper.cli import _register, app
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded

from _helpers import assert_user_error, write_manifest

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("data") / "set", n=1)


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    path = tmp_path_factory.mktemp("slim") / "tiny-random"
    save_slim(tiny_random_loaded(), path)
    return path


@pytest.fixture
def foreign(tmp_path):
    """A folder of the user's own files."""
    path = tmp_path / "mine"
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


# One bad input per subcommand; each fails before any model is loaded. (The note's table.)
CASES = {
    "transcribe": (["transcribe", "--model", "tiny.en", "--threads", "0", "x.wav"], "--threads"),
    "eval": (["eval", "--model", "tiny.en", "--data", "{tmp}/nowhere.tsv"], "nowhere.tsv"),
    "synth-data": (["synth-data", "{foreign}", "--force"], "not a synthetic data set"),
    "sensitivity": (["sensitivity", "-m", "tiny.en", "--data", "{data}", "--plot", "{tmp}/no/dir/s.png"],
                    "does not exist"),
    "prune": (["prune", "-m", "tiny.en", "--out", "{tmp}/p", "--heads", "1.5"], "--heads"),
    "recover": (["recover", "-m", "tiny.en", "--data", "{data}", "--out", "{tmp}/r"], "not a slimwhisper folder"),
    "tspar": (["tspar", "-m", "tiny.en", "--data", "{data}", "--out", "{tmp}/t", "--lambda-group", "-1"],
              "lambda_group"),
    "export": (["export", "-m", "{slim}", "--out", "{slim}", "--force"], "input"),
    "export-smoothed": (["export", "-m", "{slim}", "--out", "{tmp}/b", "--quantize", "int8", "--encoder-int8", "smoothed"],
                        "--calib"),
    "bench": (["bench", "tiny.en", "--data", "{data}", "--out", "{foreign}", "--force"], "not a benchmark report"),
    "run": (["run", "-m", "tiny.en", "--data", "{data}", "--out", "{tmp}/run"], "--recipe"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_subcommand_reports_bad_input_in_one_line(name, tmp_path, data, slim, foreign):
    args, phrase = CASES[name]
    args = [a.format(tmp=tmp_path, data=data, slim=slim, foreign=foreign) for a in args]
    result = runner.invoke(app, args)
    assert_user_error(result, phrase)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # these are single-problem inputs
    assert (foreign / "thesis.txt").read_text() == "years of work"
    assert (slim / "model.safetensors").is_file()


def test_usage_errors_are_one_line_too():
    result = runner.invoke(app, ["eval", "--model", "tiny.en"])
    assert_user_error(result, "Missing option '--data'", "slimwhisper eval --help")
    result = runner.invoke(app, ["no-such-command"])
    assert_user_error(result, "No such command")


def test_export_never_replaces_the_model_it_exports(slim):
    before = (slim / "model.safetensors").read_bytes()
    for out in (slim, slim / "bundle"):
        result = runner.invoke(app, ["export", "-m", str(slim), "--out", str(out), "--force"])
        assert_user_error(result, "input")
    assert (slim / "model.safetensors").read_bytes() == before and not (slim / "bundle").exists()


@pytest.mark.parametrize("command", ["export", "run", "prune"])
def test_force_never_replaces_a_foreign_folder(command, foreign, data, slim):
    args = {
        "export": ["export", "-m", str(slim), "--out", str(foreign), "--force"],
        "run": ["run", "-m", str(slim), "--data", str(data), "--out", str(foreign), "--recipe", "global-30-magnitude",
                "--force", "-q"],
        "prune": ["prune", "-m", str(slim), "--out", str(foreign), "--recipe", "global-30-magnitude", "--force", "-q"],
    }[command]  # fmt: skip
    result = runner.invoke(app, args)
    assert_user_error(result, "refusing to replace it even with --force")
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.txt"]
    assert (foreign / "thesis.txt").read_text() == "years of work"


def test_eval_json_is_not_overwritten_without_force(tmp_path, data):
    out = tmp_path / "result.json"
    out.write_text("{\"precious\": true}")
    result = runner.invoke(app, ["eval", "--model", "tiny.en", "--data", str(data), "--json", str(out)])
    assert_user_error(result, "--force")
    assert out.read_text() == "{\"precious\": true}"


def test_debug_env_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMWHISPER_DEBUG", "1")
    result = runner.invoke(app, ["prune", "-m", "tiny.en", "--out", str(tmp_path / "p"), "--heads", "1.5"])
    assert result.exit_code != 0 and result.exception is not None and type(result.exception).__name__ == "AllocError"
