"""Component sensitivity (arXiv 2511.08092): table shape, values by hand, JSON and heat map."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from slimwhisper.compress.calib import CalibConfig, example_loss, prepare
from slimwhisper.compress.sensitivity import (
    SensitivityConfig,
    SensitivityError,
    format_table,
    plot_heatmap,
    sensitivity_table,
    write_json,
)


@pytest.fixture
def table(tiny_random):
    rng = np.random.default_rng(1)
    utts = [SimpleNamespace(id="a", audio=(0.1 * rng.standard_normal(8000)).astype("float32"), text="good morning")]
    examples = prepare(tiny_random, CalibConfig("unused", n=1), utts)
    return tiny_random, examples, sensitivity_table(tiny_random, examples, progress=False)


def test_shape_and_finite(table):
    loaded, _, rows = table
    # 2 encoder layers x (self_attn, ffn) + 2 decoder layers x (self_attn, cross_attn, ffn)
    assert [r.name for r in rows][:2] == ["encoder.0.self_attn", "encoder.0.ffn"]
    assert len(rows) == 2 * 2 + 2 * 3
    assert all(math.isfinite(r.grad) and r.grad > 0 and math.isfinite(r.fisher) and r.fisher > 0 for r in rows)
    ffn = next(r for r in rows if r.name == "decoder.1.ffn")
    assert ffn.params == 2 * 64 * 128 + 128 + 64


def test_values_by_hand(table):
    loaded, examples, rows = table
    model = loaded.model
    model.zero_grad(set_to_none=True)
    example_loss(model, examples[0]).backward()
    named = dict(model.named_parameters())
    names = [n for n in named if n.startswith("model.decoder.layers.0.encoder_attn.")]
    g2 = sum(float(named[n].grad.square().sum()) for n in names)
    w2 = sum(float(named[n].detach().square().sum()) for n in names)
    size = sum(named[n].numel() for n in names)
    model.zero_grad(set_to_none=True)
    row = next(r for r in rows if r.name == "decoder.0.cross_attn")
    assert row.grad == pytest.approx(math.sqrt(g2) / math.sqrt(w2), rel=1e-4)
    assert row.fisher == pytest.approx(g2 / size, rel=1e-4)


def test_json_plot_and_table(table, tmp_path):
    _, _, rows = table
    write_json(rows, tmp_path / "s.json", {"model": "tiny-random"})
    data = json.loads((tmp_path / "s.json").read_text())
    assert len(data["rows"]) == len(rows) and data["rows"][0]["name"] == "encoder.0.self_attn"
    plot_heatmap(rows, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "decoder.1.cross_attn" in format_table(rows)


def test_config_refuses_existing_out(tmp_path):
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(SensitivityError, match="already exists; choose another file or pass --force"):
        SensitivityConfig("tiny.en", CalibConfig("d"), out=str(tmp_path / "s.json"))
    SensitivityConfig("tiny.en", CalibConfig("d"), out=str(tmp_path / "s.json"), force=True)


def test_sensitivity_holdout_is_spread_over_the_calibration_sets():
    """The KL hold-out takes examples evenly from the id-sorted list (every data set), not the last n."""
    from slimwhisper.compress.prune import holdout_split

    examples = [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)]
    fit, held = holdout_split(examples, 4)
    assert len(held) == 4 and len(fit) == 20 and not set(fit) & set(held)
    assert {h[0] for h in held} == {"a", "b"}
    assert holdout_split(examples[:3], 3)[0] == []
