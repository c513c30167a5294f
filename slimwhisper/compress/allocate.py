"""Turn group scores into a ``PrunePlan``: how many of which groups to remove where (options: ``alloc_config.py``).

Steps, in order (each skips what an earlier one removed):
1. drop K encoder / decoder layers: the K lowest-scoring ``layer`` groups of that side;
2. explicit per-component ratios (``decoder.self_attn=0.5``, ``encoder[-4:].self_attn.qk=0.25``):
   that fraction of the units of each selected block, lowest scores first;
3. per-kind ratios (heads / ffn / qk / vo) on the remaining blocks:
   - ``local``: the same fraction in every block;
   - ``global``: that fraction of all units of the kind, one ranking across layers;
4. a budget (``target_params`` or ``target_flops``): more units of ``budget_kinds`` until the
   budget is reached — global: one ranking of everything; local: the smallest uniform ratio.

Global rankings use ``score / cost``: the importance lost per parameter (or FLOP) saved. Gradient
scores are already in loss units, so this is the greedy knapsack order for "least loss increase
per parameter removed"; magnitude scores are first normalised per block by ``scores.py`` (mean 1
in every block), as their raw scale differs from layer to layer.

A unit is what can be removed alone: a head, a neuron, a shared Q/K or V/O channel, a layer, or —
for per-head channels — one channel from EVERY head of the block (the i-th least important of
each), so kept heads keep equal widths. Guards: never remove every unit of a block (keep >= 1
head / neuron / channel per block, >= 1 layer per side). Counts round half up: 50% of 6 heads = 3.

``target_params`` is a fraction of the parameters of the encoder and decoder LAYERS
(attention, FFN and their LayerNorms); the conv stem, positions and token embedding are not
prunable groups and are excluded. ``target_flops`` is a fraction of one 30 s window's FLOPs
(``ArchSpec.flops`` with ``FLOP_TOKENS`` decoded tokens at mean context ``FLOP_TOKENS // 2``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from slimwhisper.compress.alloc_config import RATIO_KINDS, AllocConfig, AllocError, Selector, Threshold
from slimwhisper.compress.groups import Group
from slimwhisper.compress.plan import PrunePlan
from slimwhisper.spec import ArchSpec

FLOP_TOKENS = 64
# ---- units ------------------------------------------------------------------------------------


@dataclass
class Unit:
    groups: list[Group]
    key: tuple[str, str]  # (block, kind)
    score: float
    cost: float


def _units(groups: list[Group], scores: torch.Tensor) -> dict[tuple[str, str], list[Unit]]:
    """Units per (block, kind), each list sorted by ascending score (least important first)."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        by_key.setdefault((g.block, g.kind), []).append(i)
    out: dict[tuple[str, str], list[Unit]] = {}
    for key, idx in by_key.items():
        per_head: dict[int, list[int]] = {}
        for i in idx:
            g = groups[i]
            per_head.setdefault(g.head if g.kind in ("qk", "vo") and g.head is not None else -1, []).append(i)
        if -1 in per_head:  # heads, neurons, layers, shared channels: one group per unit
            units = [Unit([groups[i]], key, float(scores[i]), float(groups[i].params)) for i in idx]
        else:  # per-head channels: the r-th least important channel of every head together
            ranked = [sorted(ids, key=lambda i: float(scores[i])) for _, ids in sorted(per_head.items())]
            units = [
                Unit([groups[i] for i in col], key, sum(float(scores[i]) for i in col), sum(groups[i].params for i in col))
                for col in zip(*ranked, strict=True)
            ]
        out[key] = sorted(units, key=lambda u: u.score)
    return out


def _count(ratio: float, n: int) -> int:
    return min(n - 1, int(math.floor(ratio * n + 0.5)))


def _flop_costs(spec: ArchSpec, units: dict[tuple[str, str], list[Unit]]) -> None:
    """Replace each unit's cost by the FLOPs its removal saves (exact: FLOPs are linear in widths)."""

    def total(s: ArchSpec) -> int:
        return sum(s.flops(tokens=FLOP_TOKENS, context=FLOP_TOKENS // 2).values())

    base = total(spec)
    for (block, kind), us in units.items():
        side, layer, comp = block.split(".")
        layers = list(getattr(spec, side))
        ly = layers[int(layer)]
        if kind == "layer":
            smaller = dataclasses.replace(spec, **{side: tuple(layers[: int(layer)] + layers[int(layer) + 1 :])})
        elif kind == "neuron":
            smaller = dataclasses.replace(spec, **{side: _swap(layers, int(layer), dataclasses.replace(ly, ffn_dim=ly.ffn_dim - 1))})
        else:
            a = getattr(ly, comp)
            field = {"head": "heads", "qk": "qk_dim", "vo": "vo_dim"}[kind]
            if getattr(a, field) < 2:
                continue
            a2 = dataclasses.replace(a, **{field: getattr(a, field) - 1})
            smaller = dataclasses.replace(spec, **{side: _swap(layers, int(layer), dataclasses.replace(ly, **{comp: a2}))})
        saved = base - total(smaller)
        for u in us:
            u.cost = float(saved)


def _swap(layers, i, new):
    return tuple(layers[:i] + [new] + layers[i + 1 :])


def budget_total(spec: ArchSpec, flops: bool) -> float:
    if flops:
        return float(sum(spec.flops(tokens=FLOP_TOKENS, context=FLOP_TOKENS // 2).values()))
    return float(sum(n for comp, n in spec.params_by_component().items() if not comp.endswith(".embed")))


# ---- allocation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    plan: PrunePlan
    counts: dict[str, tuple[int, int]]  # "block/kind" -> (units removed, units there)
    removed: float  # parameters (or FLOPs, with target_flops) the plan removes, by unit costs
    total: float  # what a budget fraction is a fraction of
    metric: str  # "params" or "flops"
    details: dict | None = None  # sensitivity allocation: per block kind / ratio / predicted loss

    @property
    def fraction(self) -> float:
        return self.removed / self.total if self.total else 0.0


class _State:
    def __init__(self, units: dict[tuple[str, str], list[Unit]]):
        self.units = units
        self.taken = dict.fromkeys(units, 0)
        self.assigned: set[tuple[str, str]] = set()
        self.dropped: set[str] = set()  # "encoder.3"

    def live(self, key) -> bool:
        return key[0].rsplit(".", 1)[0] not in self.dropped and key[1] != "layer"

    def take(self, key, count: int) -> None:
        self.taken[key] = max(self.taken[key], min(count, len(self.units[key]) - 1))

    def removed_cost(self) -> float:
        total = sum(u.cost for k in self.units if k[1] == "layer" and k[0].rsplit(".", 1)[0] in self.dropped for u in self.units[k])
        return total + sum(sum(u.cost for u in self.units[k][:n]) for k, n in self.taken.items() if self.live(k))


def _drop_layers(state: _State, side: str, k: int, spec: ArchSpec) -> None:
    if k == 0:
        return
    n = len(getattr(spec, side))
    if k >= n:
        raise AllocError(f"cannot drop {k} {side} layers: it has {n}; keep at least one (use at most {n - 1})")
    layers = sorted((u for key, us in state.units.items() if key[1] == "layer" and key[0].startswith(side + ".") for u in us), key=lambda u: u.score)
    for u in layers[:k]:
        state.dropped.add(u.key[0].rsplit(".", 1)[0])


def _greedy(state: _State, keys: list, *, units: int | None = None, cost: float | None = None) -> None:
    """Take the unit with the lowest score/cost across ``keys`` until ``units`` more units are
    taken or the removed cost reaches ``cost`` (one unit past it at most)."""
    import heapq

    def entry(key):
        i = state.taken[key]
        if i >= len(state.units[key]) - 1:
            return None
        u = state.units[key][i]
        return (u.score / u.cost if u.cost > 0 else math.inf, key)

    heap = [e for e in map(entry, keys) if e is not None]
    heapq.heapify(heap)
    removed, n = state.removed_cost(), 0
    while heap and not ((units is not None and n >= units) or (cost is not None and removed >= cost)):
        _, key = heapq.heappop(heap)
        removed += state.units[key][state.taken[key]].cost
        state.taken[key] += 1
        n += 1
        nxt = entry(key)
        if nxt is not None:
            heapq.heappush(heap, nxt)


def _ratio_step(state: _State, keys: list, ratio: float, threshold: Threshold) -> None:
    if threshold is Threshold.LOCAL:
        for key in keys:
            state.take(key, _count(ratio, len(state.units[key])))
        return
    _greedy(state, keys, units=int(math.floor(ratio * sum(len(state.units[k]) for k in keys) + 0.5)))


def _budget_step(state: _State, keys: list, target: float, threshold: Threshold) -> None:
    if state.removed_cost() >= target:
        return
    if threshold is Threshold.GLOBAL:
        _greedy(state, keys, cost=target)
        return
    # local: the smallest uniform ratio (a count in every block) that reaches the budget
    before = dict(state.taken)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        state.taken = dict(before)
        for key in keys:
            state.take(key, _count(mid, len(state.units[key])))
        lo, hi = (lo, mid) if state.removed_cost() >= target else (mid, hi)
    state.taken = dict(before)
    for key in keys:
        state.take(key, _count(hi, len(state.units[key])))


def allocate(groups: list[Group], scores: torch.Tensor, config: AllocConfig, spec: ArchSpec) -> Allocation:
    """Choose the groups to remove (see the module docstring for the steps and guards)."""
    if len(groups) != len(scores):
        raise AllocError(f"{len(groups)} groups but {len(scores)} scores")
    if config.threshold is Threshold.SENSITIVITY:
        raise AllocError("threshold 'sensitivity' needs calibration statistics: run it through prune() "
                         "(or sensalloc.allocate_sensitivity)")  # fmt: skip
    units = _units(groups, scores)
    flops = config.target_flops is not None
    if flops:
        _flop_costs(spec, units)
    state = _State(units)
    _drop_layers(state, "encoder", config.drop_encoder_layers, spec)
    _drop_layers(state, "decoder", config.drop_decoder_layers, spec)
    problems = []
    for text, ratio in config.components:
        sel = Selector.parse(text)
        layers = sel.layers(len(getattr(spec, sel.side)))
        if not layers:
            problems.append(f"{text!r} selects no layer of the {len(getattr(spec, sel.side))} {sel.side} layers")
        for i in layers:
            key = (f"{sel.side}.{i}.{sel.component}", sel.kind)
            if key in units and state.live(key):
                state.take(key, _count(ratio, len(units[key])))
                state.assigned.add(key)
    if problems:
        raise AllocError("invalid component ratios", problems)
    for name, kind in RATIO_KINDS.items():
        ratio = getattr(config, name)
        keys = [k for k in units if k[1] == kind and state.live(k) and k not in state.assigned]
        if ratio > 0 and keys:
            _ratio_step(state, keys, ratio, config.threshold)
            state.assigned.update(keys)
    total = budget_total(spec, flops)
    if config.has_budget:
        frac = config.target_flops if flops else config.target_params
        keys = [k for k in units if k[1] in config.budget_kinds and state.live(k)]
        if config.threshold is Threshold.LOCAL:
            keys = [k for k in keys if k not in state.assigned]
        _budget_step(state, keys, frac * total, config.threshold)
        if state.removed_cost() < frac * total:
            raise AllocError(
                f"the budget {frac:.0%} of {'FLOPs' if flops else 'layer parameters'} cannot be reached: removing all "
                f"but one {'/'.join(config.budget_kinds)} per block gives {state.removed_cost() / total:.0%}; "
                "lower the target, add budget kinds or drop layers"
            )
    return _result(state, total, "flops" if flops else "params")


def _result(state: _State, total: float, metric: str) -> Allocation:
    names = {f"{layer}.layer" for layer in state.dropped}
    counts = {}
    for key, n in state.taken.items():
        if not state.live(key):
            continue
        counts[f"{key[0]}/{key[1]}"] = (n, len(state.units[key]))
        for u in state.units[key][:n]:
            names.update(g.name for g in u.groups)
    for layer in state.dropped:
        counts[f"{layer}/layer"] = (1, 1)
    return Allocation(PrunePlan(frozenset(names)), counts, state.removed_cost(), total, metric)
