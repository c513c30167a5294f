"""Weight averaging of recovered runs (``train/soup.py``, ``slimwhisper average``)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import slimwhisper.cli.train  # noqa: F401  (registers the commands)
from slimwhisper.cli import app
from slimwhisper.compress.plan import PrunePlan
from slimwhisper.compress.surgery import apply_plan
from slimwhisper.models import load_model
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded
from slimwhisper.train.soup import SoupConfig, SoupError, average_models, save_soup

runner = CliRunner()
PLAN = PrunePlan({"encoder.0.self_attn.head.2", "decoder.1.ffn.neuron.7", "decoder.0.cross_attn.head.1"})


def _run(tmp_path, name: str, shift: float, plan: PrunePlan = PLAN):
    """A 'recovered run': the same pruned start, then its own weight change."""
    loaded = tiny_random_loaded()
    apply_plan(loaded.model, plan)
    with torch.no_grad():
        loaded.model.model.decoder.layers[1].fc2.weight.add_(shift)
        loaded.model.model.encoder.layers[0].fc1.bias.add_(2 * shift)
        loaded.model.model.decoder.embed_tokens.weight[:50].add_(shift)  # tied to the output projection
    return save_slim(loaded, tmp_path / name)


def test_average_is_the_weighted_mean_and_keeps_the_record(tmp_path):
    a, b = _run(tmp_path, "a", 0.3), _run(tmp_path, "b", -0.1)
    config = SoupConfig((str(a), str(b)), weights=(3.0, 1.0))
    out = save_soup(average_models(config, log=lambda m: None), config, tmp_path / "soup")
    soup, la, lb = load_model(str(out)), load_model(str(a)), load_model(str(b))
    for (name, ps), pa, pb in zip(soup.model.named_parameters(), la.model.parameters(), lb.model.parameters(), strict=True):
        assert torch.allclose(ps, 0.75 * pa + 0.25 * pb, atol=1e-6), name
    emb = soup.model.model.decoder.embed_tokens.weight
    assert torch.allclose(emb, 0.75 * la.model.model.decoder.embed_tokens.weight + 0.25 * lb.model.model.decoder.embed_tokens.weight)
    assert emb.data_ptr() == soup.model.proj_out.weight.data_ptr()  # still tied
    w_a = la.model.model.decoder.layers[1].fc2.weight
    assert not torch.allclose(soup.model.model.decoder.layers[1].fc2.weight, w_a)  # it did move
    assert soup.spec == la.spec and soup.spec.params() < tiny_random_loaded().spec.params()
    saved = json.loads((out / "pruning.json").read_text())
    assert saved["configs"]["average"]["weights"] == [0.75, 0.25]
    assert saved["record"] == json.loads((a / "pruning.json").read_text())["record"]


def test_runs_from_different_pruned_starts_are_refused(tmp_path):
    a = _run(tmp_path, "a", 0.1)
    other = _run(tmp_path, "other", 0.1, PrunePlan({"encoder.0.self_attn.head.1", "decoder.1.ffn.neuron.7", "decoder.0.cross_attn.head.1"}))
    with pytest.raises(SoupError, match="kept other heads/neurons"):
        average_models(SoupConfig((str(a), str(other))), log=lambda m: None)
    shaped = _run(tmp_path, "shaped", 0.1, PrunePlan({"decoder.1.ffn.neuron.7"}))
    with pytest.raises(SoupError, match="other layer shapes"):
        average_models(SoupConfig((str(a), str(shaped))), log=lambda m: None)


def test_bad_average_configs_list_every_problem():
    with pytest.raises(SoupError) as err:
        SoupConfig(("a",), weights=(1.0, -2.0))
    assert "at least 2 models" in str(err.value) and "2 weights for 1 models" in str(err.value)
    with pytest.raises(SoupError, match="positive numbers"):
        SoupConfig(("a", "b"), weights=(1.0, 0.0))
    with pytest.raises(SoupError, match="listed twice"):
        SoupConfig(("a", "a"))


def test_average_cli_writes_and_refuses_to_overwrite(tmp_path):
    a, b = _run(tmp_path, "a", 0.2), _run(tmp_path, "b", 0.0)
    res = runner.invoke(app, ["average", str(a), str(b), "--out", str(tmp_path / "s"), "-q"])
    assert res.exit_code == 0, res.output
    assert "averaged 2 models" in res.output and (tmp_path / "s" / "model.safetensors").is_file()
    again = runner.invoke(app, ["average", str(a), str(b), "--out", str(tmp_path / "s")])
    assert again.exit_code == 2 and "already exists" in again.output
    into = runner.invoke(app, ["average", str(a), str(b), "--out", str(a)])
    assert into.exit_code == 2 and "is (or holds, or lies inside) the input" in into.output
    assert load_model(str(a)).model.model.decoder.layers[1].fc2.weight.shape[1] == 127  # the member is untouched
