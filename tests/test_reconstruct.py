"""Least-squares reconstruction, Gram statistics and their cache, OBS scores, sensitivity allocation."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slimwhisper.compress import AllocConfig, CalibConfig, PruneConfig, ScoreConfig, prune
from slimwhisper.compress.calib import prepare
from slimwhisper.compress.gramscores import consumer_columns
from slimwhisper.compress.groups import GroupSpace, enumerate_groups
from slimwhisper.compress.plan import PrunePlan
from slimwhisper.compress.reconstruct import reconstruct_prune
from slimwhisper.compress.reconstruct_config import ReconstructConfig, ReconstructError
from slimwhisper.compress.scores import score_groups
from slimwhisper.compress.sensalloc import SensAllocConfig
from slimwhisper.compress.solve import cv_damp, heldout_error, obs_saliency, refit, removal_path
from slimwhisper.compress.stats import StatsConfig, Sublayer, dense_stats, run_sublayer, sublayers
from slimwhisper.models import load_model
from slimwhisper.models.slimdir import save_slim
from slimwhisper.models.testing import tiny_random_loaded
from _helpers import write_manifest
from slimwhisper.errors import UserError

TEXT = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches in the hall"


def utts(n=4):
    rng = np.random.default_rng(0)
    return [SimpleNamespace(id=f"u{i}", audio=(0.1 * rng.standard_normal(16000)).astype("float32"), text=TEXT) for i in range(n)]


@pytest.fixture(scope="module")
def setup():
    loaded = tiny_random_loaded()
    return loaded, prepare(loaded, CalibConfig("unused", n=8), utts(8))


def aug(x):
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def logits(model, examples):
    with torch.no_grad():
        return [model(input_features=ex.features, decoder_input_ids=ex.tokens[:, :-1]).logits for ex in examples]


# ---- the solver -------------------------------------------------------------------------------


def test_refit_reproduces_output_when_removed_inputs_are_combinations_of_kept():
    g = torch.Generator().manual_seed(0)
    kept = torch.randn(500, 6, generator=g, dtype=torch.float64)
    X = torch.cat([kept, kept[:, :2] @ torch.tensor([[1.5, -2.0], [0.5, 3.0]], dtype=torch.float64)], 1)  # cols 6,7 dependent
    W = torch.cat([torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 1, generator=g, dtype=torch.float64)], 1)
    H = aug(X).T @ aug(X)
    new = refit(W, H, H, list(range(6)), damp=1e-12)
    assert torch.allclose(aug(kept) @ new.T, aug(X) @ W.T, atol=1e-7)
    dropped = aug(kept) @ W[:, [0, 1, 2, 3, 4, 5, 8]].T  # un-fitted: simply lose columns 6, 7
    assert (dropped - aug(X) @ W.T).abs().max() > 0.1


def test_refit_beats_unfitted_on_held_out_data_and_obs_is_the_refit_error():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(10, 10, generator=g, dtype=torch.float64)
    train, test = (torch.randn(n, 10, generator=g, dtype=torch.float64) @ mix for n in (400, 400))
    W = torch.randn(5, 11, generator=g, dtype=torch.float64)
    H = aug(train).T @ aug(train)
    keep = [0, 1, 2, 4, 5, 7, 9]
    new = refit(W, H, H, keep, damp=1e-9)
    target = aug(test) @ W.T
    Xk = aug(test)[:, keep + [10]]
    fitted, unfitted = (Xk @ new.T - target).square().sum(), (Xk @ W[:, keep + [10]].T - target).square().sum()
    assert fitted < 0.5 * unfitted
    # OBS saliency of one unit alone == squared training error of the optimal re-fit without it
    units = [[3, 6, 8], [0]]
    rho = obs_saliency(W, H, units, damp=1e-9)
    for unit, r in zip(units, rho, strict=True):
        rest = [c for c in range(10) if c not in unit]
        w2 = refit(W, H, H, rest, damp=1e-9)
        err = (aug(train)[:, rest + [10]] @ w2.T - aug(train) @ W.T).square().sum()
        assert float(r) == pytest.approx(float(err), rel=1e-5)
    order, errors = removal_path(W, H, [[c] for c in range(10)], 3, damp=1e-9)
    rest = [c for c in range(10) if c not in order]
    w3 = refit(W, H, H, rest, damp=1e-9)
    err3 = (aug(train)[:, rest + [10]] @ w3.T - aug(train) @ W.T).square().sum()
    assert errors[-1] == pytest.approx(float(err3), rel=1e-5) and errors == sorted(errors)


def test_anchored_refit_interpolates_between_lstsq_and_the_dense_weights():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(300, 8, generator=g, dtype=torch.float64)
    W = torch.randn(3, 9, generator=g, dtype=torch.float64)
    H = aug(X).T @ aug(X)
    keep = [0, 2, 3, 5, 6]
    # nothing removed, dense Grams: the dense weights whatever the damping (a zero ridge would shrink them)
    assert torch.allclose(refit(W, H, H, list(range(8)), damp=1.0, anchor=True), W, atol=1e-10)
    assert not torch.allclose(refit(W, H, H, list(range(8)), damp=1.0), W, atol=1e-3)
    # tiny damping: the plain least squares; huge damping: the kept dense weights (bias still re-fitted)
    plain = refit(W, H, H, keep, damp=1e-10)
    assert torch.allclose(refit(W, H, H, keep, damp=1e-10, anchor=True), plain, atol=1e-6)
    stiff = refit(W, H, H, keep, damp=1e6, anchor=True)
    assert torch.allclose(stiff[:, :-1], W[:, keep], atol=1e-4)
    assert not torch.allclose(stiff[:, -1], W[:, -1], atol=1e-3)  # the bias absorbs the removed mean


def test_anchored_refit_keeps_unexcited_directions_at_the_dense_weights():
    """Calibration rows that never excite input 4: lstsq shrinks its weight toward 0, anchored keeps it,
    and on data that does excite it the anchored re-fit is the better one."""
    g = torch.Generator().manual_seed(3)
    calib = torch.randn(200, 6, generator=g, dtype=torch.float64)
    calib[:, 4] = 0.0
    test = torch.randn(200, 6, generator=g, dtype=torch.float64)
    W = torch.randn(4, 7, generator=g, dtype=torch.float64)
    H = aug(calib).T @ aug(calib)
    keep = [0, 1, 2, 4, 5]
    zero, anch = refit(W, H, H, keep, damp=0.01), refit(W, H, H, keep, damp=0.01, anchor=True)
    assert float(zero[:, 3].abs().max()) < 1e-9  # column 3 of the kept set is input 4
    assert torch.allclose(anch[:, 3], W[:, 4], atol=1e-9)
    target = aug(test) @ W.T
    Xk = aug(test)[:, keep + [6]]
    assert (Xk @ anch.T - target).square().sum() < 0.8 * (Xk @ zero.T - target).square().sum()


def test_cv_damp_trusts_plentiful_rows_and_damps_scarce_ones():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(6, 41, generator=g, dtype=torch.float64)
    keep = list(range(30))
    grid = (1e-4, 1e-2, 1.0)

    M = torch.randn(8, 40, generator=g, dtype=torch.float64)

    def folds(n):  # 8 shared factors (what a re-fit can exploit) + as much independent noise per input
        X = torch.randn(n, 8, generator=g, dtype=torch.float64) @ M + torch.randn(n, 40, generator=g, dtype=torch.float64)
        a, b = aug(X[0::2]), aug(X[1::2])
        return [(a.T @ a, a.T @ a), (b.T @ b, b.T @ b)]

    plenty, scarce = folds(4000), folds(60)  # 2,000 vs 30 rows per fold for 30 kept inputs
    d_plenty, errs = cv_damp(W, plenty, keep, grid, anchor=True)
    d_scarce, _ = cv_damp(W, scarce, keep, grid, anchor=True)
    assert len(errs) == 3 and d_plenty == 1e-2 and d_scarce == 1.0
    # the held-out error it minimises is the real one up to a constant
    (A, _), (B, _) = plenty
    fit = refit(W, A, A, keep, 0.01, anchor=True)

    def true(w):  # the held-out error over fold B in the full column space (removed columns = 0)
        d = torch.cat([w[:, :-1], torch.zeros(6, 10, dtype=torch.float64), w[:, -1:]], 1) - W
        return float(torch.trace(d @ B @ d.T))

    other = refit(W, A, A, keep, 1.0, anchor=True)
    assert heldout_error(fit, W, B, B, keep) - heldout_error(other, W, B, B, keep) == pytest.approx(true(fit) - true(other), rel=1e-6)
    empty = [(torch.zeros(41, 41, dtype=torch.float64),) * 2, plenty[1]]
    assert cv_damp(W, empty, keep, grid, anchor=False) == (1e-4, [])


@pytest.mark.parametrize("sequential", [False, True])
def test_damp_grid_is_chosen_per_block_and_reported(setup, sequential, tmp_path):
    loaded, examples = setup
    work = copy.deepcopy(loaded)
    plan = PrunePlan(frozenset({*(f"decoder.0.ffn.neuron.{j}" for j in range(8)), *(f"encoder.1.ffn.neuron.{j}" for j in range(8))}))
    cfg = ReconstructConfig("anchored", sequential=sequential, damp_grid=(0.01, 1.0), min_rows=0)
    _, report = reconstruct_prune(work, loaded.model, plan, examples, cfg, StatsConfig(cache_dir=str(tmp_path)), "fisher",
                                  progress=False, log=lambda m: None)  # fmt: skip
    assert set(report["damp"]) == {"decoder.0.ffn", "encoder.1.ffn"} and set(report["damp"].values()) <= {0.01, 1.0}
    with pytest.raises(ReconstructError, match="--reconstruct bias has none"):
        ReconstructConfig("bias", damp_grid=(0.1,))


# ---- sublayers and statistics ---------------------------------------------------------------------


def test_run_sublayer_matches_transformers_layers(setup):
    loaded, examples = setup
    model = loaded.model
    enc = model.model.encoder
    with torch.no_grad():
        out = enc(examples[0].features, output_hidden_states=True)
        h = out.hidden_states[0]
        for sub in sublayers(model, "encoder")[:2]:
            h = run_sublayer(model, sub, h)
        assert torch.allclose(h, out.hidden_states[1], atol=1e-5)


def test_dense_stats_cache_is_keyed_by_weights(setup, tmp_path):
    loaded, examples = setup
    model = copy.deepcopy(loaded.model)
    cfg = StatsConfig(cache_dir=str(tmp_path))
    first = dense_stats(model, examples, cfg, progress=False, log=lambda m: None)
    again = dense_stats(model, examples, cfg, progress=False, log=lambda m: None)
    assert not first.cached and again.cached and torch.equal(first.blocks["decoder.1.ffn"].H, again.blocks["decoder.1.ffn"].H)
    # every encoder frame of the 30 s window is a row; H is symmetric with the row count in the corner
    st = first.blocks["encoder.0.ffn"]
    assert st.rows == 8 * 1500 and float(st.H[-1, -1]) == st.rows and torch.allclose(st.H, st.H.T)
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight.mul_(2.0)
    other = dense_stats(model, examples, cfg, progress=False, log=lambda m: None)
    assert not other.cached and not torch.allclose(other.blocks["encoder.0.ffn"].H, first.blocks["encoder.0.ffn"].H)
    # a file planted under the new key but recorded for the old weights is recomputed, not reused
    (tmp_path / f"dense-{other.key}.pt").write_bytes((tmp_path / f"dense-{first.key}.pt").read_bytes())
    msgs = []
    redo = dense_stats(model, examples, cfg, progress=False, log=msgs.append)
    assert not redo.cached and torch.allclose(redo.blocks["encoder.0.ffn"].H, other.blocks["encoder.0.ffn"].H)


def test_obs_scores_a_dead_neuron_lowest(setup):
    loaded, examples = setup
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        model.model.decoder.layers[1].fc2.weight[:, 7] = 0.0
    groups = enumerate_groups(model, GroupSpace({"neuron", "head"}))
    got = score_groups(model, groups, [ScoreConfig(n) for n in ("obs", "flap", "wanda")], examples, progress=False)
    block = [i for i, g in enumerate(groups) if g.block == "decoder.1.ffn"]
    for name, s in got.items():
        assert groups[min(block, key=lambda i: float(s[i]))].name == "decoder.1.ffn.neuron.7", name
        assert torch.isfinite(s).all()


# ---- reconstruct_prune -----------------------------------------------------------------------------


@pytest.mark.parametrize("sequential", [True, False])
def test_nothing_removed_leaves_weights_unchanged(setup, sequential, tmp_path):
    loaded, examples = setup
    work = copy.deepcopy(loaded)
    before = {n: p.clone() for n, p in work.model.state_dict().items()}
    cfg = ReconstructConfig("lstsq", sequential=sequential)
    plan, report = reconstruct_prune(work, loaded.model, PrunePlan(frozenset()), examples, cfg, StatsConfig(cache_dir=str(tmp_path)),
                                     "obs", progress=False, log=lambda m: None)  # fmt: skip
    assert not plan.remove and report["refitted_blocks"] == {}
    assert all(torch.equal(before[n], p) for n, p in work.model.state_dict().items())


def _duplicate_neurons(model, block_layer=1, pairs=((3, 10), (5, 20), (40, 41))):
    fc1 = model.model.decoder.layers[block_layer].fc1
    with torch.no_grad():
        for src, dup in pairs:
            fc1.weight[dup] = fc1.weight[src]
            fc1.bias[dup] = fc1.bias[src]


@pytest.mark.parametrize("sequential,method", [(True, "lstsq"), (False, "lstsq"), (True, "anchored")])
def test_duplicated_neurons_are_reproduced_exactly(setup, sequential, method, tmp_path):
    loaded, examples = setup
    dense = copy.deepcopy(loaded)
    _duplicate_neurons(dense.model)
    work = copy.deepcopy(dense)
    plan = PrunePlan(frozenset(f"decoder.1.ffn.neuron.{j}" for j in (10, 20, 41)))
    cfg = ReconstructConfig(method, damp=1e-9, sequential=sequential, reselect=False, min_rows=0)  # exactness, not the row guard
    applied, _ = reconstruct_prune(work, dense.model, plan, examples, cfg, StatsConfig(cache_dir=str(tmp_path)), "fisher",
                                   progress=False, log=lambda m: None)  # fmt: skip
    assert applied == plan
    for a, b in zip(logits(work.model, examples), logits(dense.model, examples), strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    plain = copy.deepcopy(dense)  # no re-fit: the same plan changes the output
    reconstruct_prune(plain, dense.model, plan, examples, ReconstructConfig("none"), StatsConfig(cache_dir=""), "fisher", progress=False)
    from slimwhisper.compress.groups import zero_groups

    zero_groups(plain.model, [g for g in enumerate_groups(plain.model, GroupSpace({"neuron"})) if g.name in plan.remove])
    diff = max(float((a - b).abs().max()) for a, b in zip(logits(plain.model, examples), logits(dense.model, examples), strict=True))
    assert diff > 1e-3


def _encoder_out(model, examples):
    with torch.no_grad():
        return torch.cat([model.model.encoder(ex.features).last_hidden_state for ex in examples])


def test_stream_target_pulls_the_residual_stream_back_to_dense(setup, tmp_path):
    """Encoder layer 0 loses half its FFN neurons; re-fitting only that block to its own dense output
    leaves the drift it cannot absorb in the stream, while the stream target with every later
    consumer re-fitted brings the encoder output closer to the dense one (on the calibration audio)."""
    loaded, examples = setup
    plan = PrunePlan(frozenset(f"encoder.0.ffn.neuron.{j}" for j in range(0, 128, 2)))
    err = {}
    for name, cfg in {"layer": ReconstructConfig("lstsq", reselect=False, min_rows=0),
                      "stream-all": ReconstructConfig("lstsq", reselect=False, min_rows=0, target="stream", refit_all=True)}.items():
        work = copy.deepcopy(loaded)
        _, report = reconstruct_prune(work, loaded.model, plan, examples, cfg, StatsConfig(cache_dir=str(tmp_path)), "fisher",
                                      progress=False, log=lambda m: None)  # fmt: skip
        assert report["refitted_blocks"] == {"encoder.0.ffn": 64}
        err[name] = float((_encoder_out(work.model, examples) - _encoder_out(loaded.model, examples)).square().mean())
    assert err["stream-all"] < 0.8 * err["layer"], err


def test_stream_target_with_nothing_removed_keeps_the_dense_model(setup, tmp_path):
    loaded, examples = setup
    work = copy.deepcopy(loaded)
    cfg = ReconstructConfig("lstsq", damp=1e-9, min_rows=0, target="stream", refit_all=True)
    reconstruct_prune(work, loaded.model, PrunePlan(frozenset()), examples, cfg, StatsConfig(cache_dir=str(tmp_path)), "obs",
                      progress=False, log=lambda m: None)  # fmt: skip
    for a, b in zip(logits(work.model, examples), logits(loaded.model, examples), strict=True):
        assert torch.allclose(a, b, atol=1e-3)


def test_stream_target_and_refit_all_need_the_sequential_walk():
    with pytest.raises(ReconstructError) as err:
        ReconstructConfig("lstsq", sequential=False, target="stream", refit_all=True)
    assert "--reconstruct-target stream and --refit-all need sequential statistics" in str(err.value)
    with pytest.raises(ReconstructError, match="need a re-fit"):
        ReconstructConfig("none", target="stream")
    with pytest.raises(ReconstructError, match="unknown reconstruction target 'residual'"):
        ReconstructConfig("lstsq", target="residual")


def test_too_small_calibration_set_says_how_many_utterances(setup, tmp_path):
    loaded, examples = setup
    work = copy.deepcopy(loaded)
    plan = PrunePlan(frozenset(f"decoder.0.ffn.neuron.{j}" for j in range(4)))
    with pytest.raises(ReconstructError, match=r"decoder\.0\.ffn: \d+ calibration rows for 124 kept inputs; need about \d+ utterances \(have 1\)"):
        reconstruct_prune(work, loaded.model, plan, examples[:1], ReconstructConfig("lstsq"), StatsConfig(cache_dir=""), "obs", progress=False)


def test_prune_with_sensitivity_and_lstsq_reloads_with_equal_logits(tmp_path):
    dense_dir = tmp_path / "dense"
    save_slim(tiny_random_loaded(), dense_dir)
    calib = write_manifest(tmp_path / "calib", n=3)
    out = tmp_path / "pruned"
    config = PruneConfig(
        model=str(dense_dir), out=str(out), score=ScoreConfig("obs"),
        alloc=AllocConfig(threshold="sensitivity", target_params=0.2, sensitivity=SensAllocConfig(n=2)),
        calib=CalibConfig(str(calib), n=3), reconstruct=ReconstructConfig("lstsq", min_rows=0),
        stats=StatsConfig(cache_dir=str(tmp_path / "cache")),
    )  # fmt: skip
    result = prune(config, progress=False, log=lambda m: None)
    assert result.allocation.fraction >= 0.2
    ratios = [d["ratio"] for d in result.allocation.details.values()]
    assert max(ratios) < 1.0 and len(set(ratios)) > 1  # non-uniform, no block emptied
    again = load_model(str(out))
    examples = prepare(again, CalibConfig(str(calib), n=2))
    for a, b in zip(logits(again.model, examples), logits(result.loaded.model, examples), strict=True):
        assert torch.equal(a, b)
    saved = json.loads((out / "pruning.json").read_text())["configs"]
    assert saved["prune"]["reconstruct"]["method"] == "lstsq" and saved["prune"]["alloc"]["threshold"] == "sensitivity"
    assert saved["allocation"]["blocks"] and saved["reconstruction"]["refitted_blocks"]
    assert list((tmp_path / "cache").glob("sens-*.pt"))


def test_consumer_columns_of_a_head():
    loaded = tiny_random_loaded()
    g = next(g for g in enumerate_groups(loaded.model, GroupSpace({"head"})) if g.name == "encoder.1.self_attn.head.2")
    assert consumer_columns(g) == list(range(32, 48))
    assert Sublayer("encoder", 1, "self_attn").block == g.block


# ---- allocation and configs (no model) ---------------------------------------------------------------


def test_sensitivity_greedy_spends_the_budget_where_loss_is_flat():
    from slimwhisper.compress.groups import Group
    from slimwhisper.compress.sensalloc import Curve, choose_counts

    def curve(block, slope):
        units = [Group(f"{block}.neuron.{i}", "encoder", 0, "ffn", "neuron", None, i, (), 10) for i in range(10)]
        return Curve(block, "neuron", units, [slope * k * k for k in range(10)], 1.0, 10.0)

    flat, steep = curve("encoder.0.ffn", 0.01), curve("encoder.1.ffn", 1.0)
    counts = choose_counts([flat, steep], target=100.0, unit_costs={})
    assert sum(counts.values()) * 10 >= 100 and counts[("encoder.0.ffn", "neuron")] > counts[("encoder.1.ffn", "neuron")]
    with pytest.raises(UserError, match="budget cannot be reached"):
        choose_counts([flat, steep], target=1000.0, unit_costs={})


def test_bad_configs_list_every_problem():
    from slimwhisper.compress.alloc_config import AllocError

    with pytest.raises(AllocError) as err:
        AllocConfig(threshold="sensitivity", heads=0.5)
    assert "give --target-params" in str(err.value) and "drop --heads" in str(err.value)
    with pytest.raises(ReconstructError) as err:
        ReconstructConfig("ridge", damp=0, sequential="yes")
    assert "unknown reconstruction 'ridge'" in str(err.value) and "damp" in str(err.value) and "sequential" in str(err.value)
    with pytest.raises(UserError, match="measure must be one of"):
        SensAllocConfig(measure="loss")
    assert ScoreConfig("obs").needs_grams and not ScoreConfig("obs").needs_grads and ScoreConfig("obs").needs_calib
    assert ScoreConfig("fisher").needs_grads and not ScoreConfig("magnitude").needs_calib


def test_grad_stats_hold_only_what_scores_declare(setup):
    from slimwhisper.compress.scores import GradStats, GroupIndex, weights_of

    loaded, _ = setup
    index = GroupIndex(enumerate_groups(loaded.model, GroupSpace({"head"})))
    only_fisher = GradStats(index, weights_of(loaded.model, index), frozenset({"sum_sq"}))
    assert only_fisher.taylor_abs is None and only_fisher.sum_sq


def test_prune_config_needs_calibration_for_reconstruction(tmp_path):
    from slimwhisper.compress import PruneError

    with pytest.raises(PruneError) as err:
        PruneConfig("tiny.en", str(tmp_path / "o"), ScoreConfig("obs"), AllocConfig(threshold="sensitivity", target_params=0.25),
                    reconstruct=ReconstructConfig("lstsq"))  # fmt: skip
    text = str(err.value)
    assert "score 'obs' needs calibration audio" in text and "--reconstruct lstsq needs calibration audio" in text


def test_sensitivity_prices_the_reconstruction_it_will_get(tmp_path):
    calib = CalibConfig("calib.tsv", n=16)
    alloc = AllocConfig(threshold="sensitivity", target_params=0.25)
    anchored = PruneConfig("tiny.en", str(tmp_path / "a"), ScoreConfig("obs"), alloc, calib=calib,
                           reconstruct=ReconstructConfig("anchored", damp=0.3))  # fmt: skip
    assert anchored.alloc.sensitivity.anchor and anchored.alloc.sensitivity.anchor_damp == 0.3
    assert anchored.to_dict()["alloc"]["sensitivity"]["anchor"] is True  # the saved config says so
    plain = PruneConfig("tiny.en", str(tmp_path / "b"), ScoreConfig("obs"), alloc, calib=calib, reconstruct=ReconstructConfig("lstsq"))
    assert not plain.alloc.sensitivity.anchor
    with pytest.raises(UserError, match="anchor_damp must be in"):
        SensAllocConfig(anchor=True, anchor_damp=0)


def test_sensitivity_hold_out_larger_than_the_packed_windows_is_refused(tmp_path):
    """Packed calibration counts windows, not clips: the error says how to get more of them."""
    from slimwhisper.compress import PruneError

    dense_dir = tmp_path / "dense"
    save_slim(tiny_random_loaded(), dense_dir)
    calib = write_manifest(tmp_path / "calib", n=4)  # four 0.5 s clips -> one 3.5 s window
    config = PruneConfig(
        model=str(dense_dir), out=str(tmp_path / "pruned"), score=ScoreConfig("obs"),
        alloc=AllocConfig(threshold="sensitivity", target_params=0.2, sensitivity=SensAllocConfig(n=2)),
        calib=CalibConfig(str(calib), n=4, pack_seconds=30), reconstruct=ReconstructConfig("lstsq", min_rows=0),
        stats=StatsConfig(cache_dir=str(tmp_path / "cache")),
    )  # fmt: skip
    with pytest.raises(PruneError, match=r"got 1 windows of 30 s; pass more --calib-n clips"):
        prune(config, progress=False, log=lambda m: None)
    assert not (tmp_path / "pruned").exists()
