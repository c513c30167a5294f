"""Pruning to a latency budget on a named device (issue 13 part 6, ``compress/budget.py``).

Tiny random models; the profiles are the built-in files (user copies are hidden by pointing
SLIMWHISPER_PROFILE_DIR at an empty folder), so every estimate is deterministic.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from _helpers import assert_user_error, tiny_whisper, write_manifest
from typer.testing import CliRunner

from slimwhisper.compress import (
    AllocConfig,
    CalibConfig,
    PruneConfig,
    PruneError,
    ScoreConfig,
    SensAllocConfig,
    StatsConfig,
    allocate,
    enumerate_groups,
    prune,
)
from slimwhisper.compress.budget import (
    BudgetError,
    LatencyBudget,
    budget_from_options,
    parse_seconds,
    search_budget,
    spec_after,
    with_vocab,
)
from slimwhisper.compress.scores import score_groups
from slimwhisper.compress.surgery import apply_plan
from slimwhisper.devices.profile import builtin_profile
from slimwhisper.models.slim import spec_from_model
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded


@pytest.fixture(autouse=True)
def builtin_profiles_only(tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setenv("SLIMWHISPER_PROFILE_DIR", str(folder))
    return folder


def _model():
    # wider and longer than the default tiny model so the encoder is not all per-call overhead
    return tiny_whisper(max_source_positions=200, vocab_size=2000, d_model=128, encoder_ffn_dim=512, decoder_ffn_dim=512)


def _allocator(model, alloc: AllocConfig):
    """The core allocator over magnitude scores, as ``prune.choose_plan`` builds it."""
    spec = spec_from_model(model)
    groups = enumerate_groups(model, alloc.group_space())
    scores = score_groups(model, groups, [ScoreConfig("magnitude")], None, progress=False)["magnitude"]
    return spec, (lambda a, log=print: allocate(groups, scores, a, spec))


@pytest.mark.parametrize("alloc", [
    AllocConfig(threshold="global", target_params=0.4, budget_kinds=("head", "neuron", "vo")),
    AllocConfig(threshold="local", qk=0.25, channel_pattern="per_head", drop_encoder_layers=1, target_flops=0.3),
])  # fmt: skip
def test_spec_after_equals_the_spec_surgery_produces(alloc):
    model = _model()
    spec, run = _allocator(model, alloc)
    plan = run(alloc).plan
    predicted = spec_after(spec, plan)
    apply_plan(model, plan)
    assert predicted == spec_from_model(model)
    assert predicted != spec


@pytest.mark.parametrize("threshold,metric", [("global", "flops"), ("local", "params")])
def test_search_meets_the_budget_and_one_step_less_misses_it(threshold, metric):
    model = _model()
    alloc = AllocConfig(threshold=threshold)
    probe = LatencyBudget("rpi5", 1.0, clip_seconds=10, metric=metric)
    spec, run = _allocator(model, probe.template(alloc))
    dense = probe.estimate(spec).total_s
    budget = dataclasses.replace(probe, seconds=0.7 * dense)
    logged = []
    result = search_budget(run, alloc, spec, budget, log=logged.append)
    chosen = budget.estimate(spec_after(spec, result.plan)).total_s
    assert chosen <= budget.seconds < dense
    rec = result.budget
    assert rec["estimate"]["total_s"] == pytest.approx(chosen) and rec["metric"] == metric
    # monotone search: the largest fraction below the found one gives a plan over budget
    lo = rec["next_smaller"]["fraction"]
    assert 0 <= lo < rec["fraction"]
    smaller = run(dataclasses.replace(budget.template(alloc), **{f"target_{metric}": lo})).plan
    assert smaller.remove < result.plan.remove
    assert budget.estimate(spec_after(spec, smaller)).total_s > budget.seconds
    assert "chosen" in logged[0] and "one step less" in logged[0] and "uncalibrated" in logged[0]


def test_a_pruned_vocabulary_is_priced_and_needs_no_more_structure():
    model = _model()
    alloc = AllocConfig(threshold="global")
    probe = LatencyBudget("rpi5", 1.0, clip_seconds=10)
    spec, run = _allocator(model, probe.template(alloc))
    small = with_vocab(spec, 10)
    assert (small.vocab, small.source_vocab) == (10, spec.vocab) and small.params() < spec.params()
    budget = dataclasses.replace(probe, seconds=0.7 * probe.estimate(spec).total_s)
    full = search_budget(run, alloc, spec, budget, log=lambda *_: None)
    priced = search_budget(run, alloc, spec, budget, log=lambda *_: None, vocab=10)
    assert priced.budget["priced_vocab"] == 10 and full.budget["priced_vocab"] == spec.vocab
    assert priced.plan.remove <= full.plan.remove
    assert budget.estimate(spec_after(small, priced.plan)).total_s <= budget.seconds
    assert priced.budget["dense_estimate"] == full.budget["dense_estimate"]  # the reference stays the dense model
    # a budget the smaller vocabulary alone meets removes no structure (the dense model alone misses it)
    between = (probe.estimate(small).total_s + probe.estimate(spec).total_s) / 2
    alone = search_budget(run, alloc, spec, dataclasses.replace(probe, seconds=between), log=lambda *_: None, vocab=10)
    assert not alone.plan.remove and alone.budget["fraction"] == 0.0


def test_unreachable_budget_is_one_line_with_the_best_estimate_and_what_dominates():
    model = _model()
    alloc = AllocConfig(threshold="global")
    probe = LatencyBudget("rpi5", 1.0)
    spec, run = _allocator(model, probe.template(alloc))
    dense = probe.estimate(spec).total_s
    with pytest.raises(BudgetError) as err:
        search_budget(run, alloc, spec, dataclasses.replace(probe, seconds=0.1 * dense), log=lambda *_: None)
    text = str(err.value)
    assert "\n" not in text and "cannot be met on rpi5" in text and "estimate (uncalibrated)" in text
    assert "vocabulary projection" in text and "raise --latency-budget to at least" in text


def test_dense_model_within_budget_is_refused():
    model = _model()
    alloc = AllocConfig(threshold="global")
    probe = LatencyBudget("rpi5", 1.0)
    spec, run = _allocator(model, probe.template(alloc))
    with pytest.raises(BudgetError, match="already meets the budget.*nothing to prune"):
        search_budget(run, alloc, spec, dataclasses.replace(probe, seconds=10 * probe.estimate(spec).total_s))


def test_latency_budget_validation_reports_every_problem():
    with pytest.raises(BudgetError) as err:
        LatencyBudget("pi9000", 0.0, clip_seconds=-1, precision="fp16", threads=0, metric="joules")
    text = str(err.value)
    for phrase in ("unknown device profile 'pi9000'", "rpi5", "x86-local", "--latency-budget must be",
                   "--clip-seconds", "--precision", "--device-threads", "--budget-metric"):
        assert phrase in text, phrase
    assert parse_seconds("1.5s") == 1.5 and parse_seconds("800ms") == pytest.approx(0.8) and parse_seconds(2) == 2.0
    with pytest.raises(BudgetError, match="not a duration"):
        parse_seconds("fast")
    common = {"clip_seconds": 10.0, "precision": "int8", "threads": None, "metric": "flops"}
    with pytest.raises(BudgetError) as err:
        budget_from_options(None, "1s", target_params=0.3, target_flops=None, plan="p.json", recipe=None, **common)
    assert all(p in str(err.value) for p in ("needs --device", "drop --target-params", "--plan"))
    assert budget_from_options(None, None, target_params=0.3, target_flops=None, plan=None, recipe=None, **common) is None


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "tiny-random"
    save_slim(tiny_random_loaded(), path)
    return path


def _calibrated_rpi5(folder):
    data = builtin_profile("rpi5").to_dict()
    data["calibrated"] = True
    data["calibration"] = {"phases": {"encoder/int8": {"efficiency": 0.4, "runs": 3},
                                      "decoder_token/int8": {"efficiency": 0.3, "runs": 3}}}  # fmt: skip
    (folder / "rpi5.json").write_text(json.dumps(data))


def test_prune_saves_device_estimate_and_calibration_in_pruning_json(dense_dir, tmp_path, builtin_profiles_only):
    _calibrated_rpi5(builtin_profiles_only)
    probe = LatencyBudget("rpi5", 1.0, clip_seconds=5)
    dense = probe.estimate(tiny_random_loaded().spec)
    # the 51864-token vocabulary dominates this model's decoder: a budget between the floor and dense
    budget = dataclasses.replace(probe, seconds=dense.total_s - 0.3 * dense.encoder_s)
    out = tmp_path / "pruned"
    config = PruneConfig(str(dense_dir), str(out), ScoreConfig("magnitude"), AllocConfig(threshold="global"),
                         latency=budget)
    result = prune(config, progress=False, log=lambda *_: None)
    saved = json.loads((out / "pruning.json").read_text())["configs"]
    rec = saved["latency_budget"]
    assert saved["prune"]["latency_budget"]["device"] == "rpi5"
    assert rec["profile"] == "rpi5" and rec["profile_calibrated"] is True
    assert rec["label"] == "estimate (calibrated on 3 runs)"
    assert rec["estimate"]["total_s"] <= budget.seconds < rec["dense_estimate"]["total_s"]
    assert {"encoder_s", "decoder_s", "total_s", "tokens"} <= set(rec["estimate"])
    assert probe.estimate(result.loaded.spec).total_s == pytest.approx(rec["estimate"]["total_s"])


def test_prune_config_refuses_a_budget_with_a_plan_file(dense_dir, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"remove": ["decoder.0.self_attn.head.1"]}')
    with pytest.raises(PruneError, match="latency budget chooses the plan"):
        PruneConfig(str(dense_dir), str(tmp_path / "p"), plan=str(plan), latency=LatencyBudget("rpi5", 1.0))


# ---- CLI ----------------------------------------------------------------------------------------
def _cli(args):
    from slimwhisper.cli import _register, app

    _register()
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("extra,phrase", [
    (["--latency-budget", "1.5s"], "needs --device"),
    (["--device", "rpi5"], "give both"),
    (["--device", "pi9000", "--latency-budget", "1"], "known profiles: "),
    (["--device", "rpi5", "--latency-budget", "0"], "--latency-budget must be a number of seconds > 0"),
    (["--device", "rpi5", "--latency-budget", "soon"], "not a duration"),
    (["--device", "rpi5", "--latency-budget", "1", "--target-params", "0.3"], "drop --target-params"),
    (["--device", "rpi5", "--latency-budget", "1", "--recipe", "global-30-magnitude"], "--recipe fixes"),
])  # fmt: skip
def test_cli_budget_errors_before_loading(tmp_path, extra, phrase):
    result = _cli(["prune", "-m", "tiny.en", "--out", str(tmp_path / "p"), *extra])
    assert_user_error(result, phrase)
    assert not (tmp_path / "p").exists()


def test_cli_unreachable_and_already_met(dense_dir, tmp_path):
    base = ["prune", "-m", str(dense_dir), "--score", "magnitude", "--threshold", "global", "--device", "rpi5", "-q"]
    result = _cli([*base, "--out", str(tmp_path / "a"), "--latency-budget", "1ms"])
    assert_user_error(result, "cannot be met on rpi5", "dominate")
    result = _cli([*base, "--out", str(tmp_path / "b"), "--latency-budget", "100"])
    assert_user_error(result, "already meets the budget")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow  # ~50 s here: the sensitivity curves (KL per block) are measured once, then cached
def test_sensitivity_threshold_drives_the_search_with_cached_curves(dense_dir, tmp_path):
    probe = LatencyBudget("rpi5", 1.0, clip_seconds=5)
    dense = probe.estimate(tiny_random_loaded().spec)
    budget = dataclasses.replace(probe, seconds=dense.total_s - 0.2 * dense.encoder_s)
    out = tmp_path / "pruned"
    config = PruneConfig(
        str(dense_dir), str(out), ScoreConfig("obs"),
        AllocConfig(threshold="sensitivity", target_flops=0.0, sensitivity=SensAllocConfig(n=2)),
        calib=CalibConfig(str(write_manifest(tmp_path / "calib", n=3)), n=3),
        stats=StatsConfig(cache_dir=str(tmp_path / "cache")), latency=budget,
    )  # fmt: skip
    result = prune(config, progress=False, log=lambda *_: None)
    rec = result.allocation.budget
    assert rec["estimate"]["total_s"] <= budget.seconds < rec["next_smaller"]["estimate"]["total_s"]
    assert result.allocation.details and len(list((tmp_path / "cache").glob("sens-*.pt"))) == 1
