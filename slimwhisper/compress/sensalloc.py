"""Allocation from measured sensitivity: non-uniform ratios per component and depth for a budget.

A global threshold compares raw scores of different layers, which live on different scales; that
is why one-shot pruning with it collapses. Here every block b (``encoder.2.ffn``,
``decoder.0.cross_attn``, ...) gets a loss curve L_b(k) for removing its k least important units
(heads, shared V/O channels or FFN neurons), and the budget is spent where the curves are flat:

1. reconstruction-error curve (ZipLM, arXiv 2302.04089): the OBS removal path on the dense Gram
   (``solve.removal_path``) gives E_b(k), the squared output error after an optimal re-fit when
   the k first units go (greedy OBS order for ``obs``; the score's order otherwise), divided by
   the energy of the residual stream after the block: e_b(k) = E_b(k) / ||h_b||^2.
2. ``measure="kl"`` (default) turns that relative error into loss units per block: remove
   round(ratio x n) units of the block alone, re-fit it (lstsq, dense Grams), measure the mean
   KL(dense || pruned) of the next-token distribution on ``n`` calibration utterances held out
   of the Grams (in-sample, a re-fit with about as many decoder tokens as inputs looks perfect), and scale:
   L_b(k) = KL_b / e_b(k_m) x e_b(k). This is what makes encoder and decoder comparable (an error
   early in the encoder travels through everything after it). ``measure="recon"`` uses e_b(k).
3. Greedy knapsack on the lower convex hull of each (cost, L_b) curve: the segments with the
   lowest loss per parameter (or FLOP) removed are taken until the budget is met. Guards: at
   most ``max_ratio`` of a block's units and never all of them.

Curves and KL weights are cached beside the calibration statistics (same key + these settings).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from slimwhisper.compress import stats as S
from slimwhisper.compress.gramscores import consumer_columns, consumer_param, weight_aug
from slimwhisper.compress.groups import Group, zero_groups
from slimwhisper.compress.solve import refit, removal_path
from slimwhisper.compress.sensconfig import SENS_MEASURES, SensAllocConfig, SensAllocError  # noqa: F401 (re-exported)

SENS_VERSION = 2  # part of the cache key: bump when curves are computed differently
PATH_STEPS = 128  # OBS steps per block path (FFN neurons go in chunks of n // 128)


@dataclass
class Curve:
    block: str
    kind: str
    units: list[Group]  # in removal order (the path)
    rel_error: list[float]  # e_b(k), k = 0..K
    weight: float  # loss units per unit of relative error
    unit_cost: float

    def loss(self, k: int) -> float:
        return self.weight * self.rel_error[k]


def _block_units(groups: list[Group], kinds: tuple[str, ...]) -> dict[tuple[str, str], list[Group]]:
    out: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        if g.kind in kinds and g.kind != "qk" and not (g.kind == "vo" and g.head is not None):
            out.setdefault((g.block, g.kind), []).append(g)
    attn = {}
    for block, kind in out:
        if kind in ("head", "vo"):
            attn.setdefault(block, set()).add(kind)
    bad = [b for b, k in attn.items() if len(k) > 1]
    if bad:
        raise SensAllocError(f"sensitivity allocation takes one attention kind per block (head or vo); {bad[0]} has both")
    return out


def _path(model, stats: S.DenseStats, block: str, units: list[Group], order_scores, steps: int, damp: float):
    W = weight_aug(model, consumer_param(units[0]))
    cols = [consumer_columns(g) for g in units]
    order = None if order_scores is None else sorted(range(len(units)), key=lambda i: float(order_scores[i]))[:steps]
    st = stats.blocks[block]
    chunk = max(1, len(units) // PATH_STEPS)
    picked, errors = removal_path(W, st.H, cols, steps, damp, order, chunk=chunk)
    energy = max(st.energy, 1e-30)
    gone = set(picked)
    return [units[i] for i in picked] + [u for i, u in enumerate(units) if i not in gone], [0.0] + [e / energy for e in errors]


@torch.no_grad()
def _kl_weights(model, stats, curves: list[Curve], examples, config: SensAllocConfig, progress: bool) -> None:
    """KL(dense || one block pruned + re-fitted) at ``config.ratio``, per curve."""
    from slimwhisper.progress import progress_bar

    exs = examples[: config.n]
    enc_out = [model.model.encoder(ex.features) for ex in exs]
    ref = [torch.log_softmax(_logits(model, ex, e), -1) for ex, e in zip(exs, enc_out, strict=True)]
    named = dict(model.named_parameters(remove_duplicate=False))
    with progress_bar(len(curves), "sensitivity (KL per block)", enabled=progress) as bar:
        for c in curves:
            k = min(max(1, round(config.ratio * len(c.units))), len(c.rel_error) - 1)
            saved = {n: p.detach().clone() for n, p in named.items() if n.startswith(_layer_prefix(c.block))}
            _mask_refit(model, stats, c, k, config.anchor_damp if config.anchor else config.damp, config.anchor)
            kl = 0.0
            for ex, e, lp in zip(exs, enc_out, ref, strict=True):
                e2 = model.model.encoder(ex.features) if c.block.startswith("encoder") else e
                lq = torch.log_softmax(_logits(model, ex, e2), -1)
                kl += float((lp.exp() * (lp - lq)).sum(-1).mean())
            for n, t in saved.items():
                named[n].copy_(t)
            e_k = c.rel_error[k]
            c.weight = (kl / len(exs)) / e_k if e_k > 0 else (kl / len(exs)) / 1e-12
            bar.advance()


def _logits(model, ex, enc_out) -> torch.Tensor:
    out = model(encoder_outputs=enc_out, decoder_input_ids=ex.tokens[:, :-1]).logits[0, ex.n_prefix - 1 :]
    return out.float()


def _layer_prefix(block: str) -> str:
    side, layer, _ = block.split(".")
    return f"model.{side}.layers.{layer}."


def _mask_refit(model, stats, c: Curve, k: int, damp: float, anchor: bool = False) -> None:
    gone = c.units[:k]
    cols = sorted({i for g in gone for i in consumer_columns(g)})
    lin_name = consumer_param(gone[0])
    named = dict(model.named_parameters(remove_duplicate=False))
    W = weight_aug(model, lin_name)
    keep = [i for i in range(W.shape[1] - 1) if i not in set(cols)]
    st = stats.blocks[c.block]
    new = refit(W, st.H, st.H, keep, damp, anchor)
    zero_groups(model, gone)
    weight = torch.zeros_like(named[lin_name])
    weight[:, keep] = new[:, :-1].to(weight.dtype)
    named[lin_name].copy_(weight)
    named[lin_name[: -len("weight")] + "bias"].copy_(new[:, -1].to(weight.dtype))


def curves_for(model, groups, scores, kinds, stats: S.DenseStats, examples, score_name: str, config: SensAllocConfig,
               cache_root: Path | None, progress: bool = True) -> list[Curve]:  # fmt: skip
    """Every block's curve (cached on disk under the statistics key + settings)."""
    key = hashlib.sha256(f"{stats.key}|{score_name}|{sorted(kinds)}|{config}|v{SENS_VERSION}".encode()).hexdigest()[:24]
    path = None if cache_root is None or not stats.key else cache_root / f"sens-{key}.pt"
    by_name = {g.name: g for g in groups}
    if path is not None and path.is_file():
        data = torch.load(path, weights_only=True)
        return [Curve(d["block"], d["kind"], [by_name[n] for n in d["units"]], d["rel_error"], d["weight"], d["unit_cost"]) for d in data]
    index = {g.name: i for i, g in enumerate(groups)}
    curves = []
    for (block, kind), units in _block_units(groups, kinds).items():
        steps = min(len(units) - 1, math.floor(config.max_ratio * len(units)))
        if steps < 1:
            continue
        order_scores = None if score_name == "obs" else [scores[index[g.name]] for g in units]
        path_units, errs = _path(model, stats, block, units, order_scores, steps, config.damp)
        curves.append(Curve(block, kind, path_units, errs, 1.0, float(units[0].params)))
    if config.measure == "kl":
        _kl_weights(model, stats, curves, examples, config, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save([{**asdict(c), "units": [g.name for g in c.units]} for c in curves], path)
    return curves


def _hull(c: Curve) -> list[tuple[int, float]]:
    """Lower convex hull of (k, L(k)) from k=0: [(k, slope per unit)], slopes non-decreasing."""
    pts = [(k, c.loss(k)) for k in range(len(c.rel_error))]
    hull = [pts[0]]
    for p in pts[1:]:
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0]) >= (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0]):
            hull.pop()
        hull.append(p)
    return [(b[0], (b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(hull, hull[1:])]


def choose_counts(curves: list[Curve], target: float, unit_costs: dict[tuple[str, str], float]) -> dict[tuple[str, str], int]:
    """Greedy over hull segments in order of loss per cost until ``target`` cost is removed."""
    segs = []
    for c in curves:
        cost = unit_costs.get((c.block, c.kind), c.unit_cost)
        for k, slope in _hull(c):
            segs.append((slope / cost if cost > 0 else math.inf, k, c, cost))
    segs.sort(key=lambda s: s[0])
    counts = {(c.block, c.kind): 0 for c in curves}
    removed = 0.0
    for _, k, c, cost in segs:
        if removed >= target:
            break
        key = (c.block, c.kind)
        k = min(k, counts[key] + math.ceil((target - removed) / cost)) if cost > 0 else k  # no overshoot
        removed += (k - counts[key]) * cost
        counts[key] = k
    if removed < target:
        raise SensAllocError(
            f"the budget cannot be reached: removing up to max_ratio of every block gives {removed:.0f} of {target:.0f}; "
            "lower the target or raise sensitivity.max_ratio"
        )
    return counts


def allocate_sensitivity(model, groups, scores, config, spec, stats: S.DenseStats, examples, score_name: str,
                         cache_root: Path | None, progress: bool = True, log=print):  # fmt: skip
    """An ``allocate.Allocation`` for ``config`` (threshold ``sensitivity``, a params/FLOPs budget)."""
    from slimwhisper.compress.allocate import Allocation, _flop_costs, _units, budget_total
    from slimwhisper.compress.plan import PrunePlan

    sens = config.sensitivity
    kinds = tuple(k for k in config.budget_kinds if k != "qk")
    curves = curves_for(model, groups, scores, kinds, stats, examples, score_name, sens, cache_root, progress)
    flops = config.target_flops is not None
    units = _units(groups, torch.zeros(len(groups)))
    if flops:
        _flop_costs(spec, units)
    costs = {key: us[0].cost for key, us in units.items() if us}
    total = budget_total(spec, flops)
    frac = config.target_flops if flops else config.target_params
    counts = choose_counts(curves, frac * total, costs)
    names, table, removed = set(), {}, 0.0
    for c in curves:
        k = counts[(c.block, c.kind)]
        names.update(g.name for g in c.units[:k])
        removed += k * costs[(c.block, c.kind)]
        table[f"{c.block}/{c.kind}"] = (k, len(c.units))
    details = {c.block: {"kind": c.kind, "removed": counts[(c.block, c.kind)], "units": len(c.units),
                         "ratio": round(counts[(c.block, c.kind)] / len(c.units), 4),
                         "predicted_loss": c.loss(counts[(c.block, c.kind)]), "weight": c.weight} for c in curves}  # fmt: skip
    log(format_allocation(details, removed / total, "FLOPs" if flops else "layer parameters"))
    return Allocation(PrunePlan(frozenset(names)), table, removed, total, "flops" if flops else "params", details)


def format_allocation(details: dict, fraction: float, metric: str) -> str:
    lines = [f"sensitivity allocation: {fraction:.1%} of {metric} removed",
             f"  {'block':<22}{'kind':>7}{'removed':>12}{'ratio':>8}{'pred. loss':>12}"]  # fmt: skip
    for block, d in details.items():
        lines.append(f"  {block:<22}{d['kind']:>7}{d['removed']:>7}/{d['units']:<4}{d['ratio']:>8.2f}{d['predicted_loss']:>12.4g}")
    return "\n".join(lines)
