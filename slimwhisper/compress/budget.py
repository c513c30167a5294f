"""Pruning to a latency budget on a named device: the smallest removal whose estimate meets it.

The allocation is the pruning core's own (``allocate.allocate`` for global/local thresholds,
``sensalloc.allocate_sensitivity`` for sensitivity); this module only chooses its budget
fraction. ``search_budget`` bisects ``target_flops`` (or ``target_params``) in [0, f_max]:
each candidate plan becomes the ``ArchSpec`` surgery would produce (``spec_after``, pure, no
weights cut) and is priced by ``devices.estimate.estimate_spec`` for one clip of
``clip_seconds`` (ceil(clip / 30 s) encoder windows + the decoder tokens such a clip needs). The
search is sound because both sides are monotone: a larger fraction removes a superset of units
(the greedy order / the uniform count only grows), and the roofline estimate never rises when
FLOPs and bytes fall. f_max is the allocator's maximum (its guards keep one unit per block).

Decisions (documented in the README and ``prune --help``):
- a dense model that already meets the budget is refused (nothing to prune, nothing written);
- a budget above reach at f_max is refused in one line with the best estimate reachable and the
  phase that dominates it (usually the decoder's vocabulary projection, which head/FFN pruning
  does not touch), instead of emptying blocks.

compress may import devices.estimate / devices.profile; devices never imports compress.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slimwhisper.compress.alloc_config import AllocConfig, AllocError
from slimwhisper.compress.allocate import Allocation
from slimwhisper.compress.groups import parse_name
from slimwhisper.compress.plan import PlanError, PrunePlan
from slimwhisper.compress.sensconfig import SensAllocError
from slimwhisper.devices.estimate import (
    BYTES_PER_WEIGHT,
    Estimate,
    decoder_workload,
    estimate_spec,
    prompt_length,
)
from slimwhisper.devices.profile import DeviceError, DeviceProfile, get_profile
from slimwhisper.errors import UserError, check_positive_int
from slimwhisper.spec import ArchSpec

METRICS = {"flops": "target_flops", "params": "target_params"}  # what the bisected fraction counts
PRECISIONS = ("int8", "fp32")  # the bundle variants the estimator and export both know
METRIC_WORDS = {"flops": "FLOPs", "params": "layer parameters"}
MAX_FRACTION = 0.999  # allocate.py accepts ratios in [0, 1)
STEPS = 30  # bisection steps: resolution 2^-30 of the budget total, below one unit's cost
TOP_STEPS = 16  # the allocator's maximum needs less: the search below it resolves the rest


class BudgetError(UserError, ValueError):
    """A latency budget cannot be searched for as asked; the message says what to do."""


def parse_seconds(text: str | float) -> float:
    """``1.5``, ``1.5s`` or ``800ms`` -> seconds (the issue writes ``--latency-budget 1.5s``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(ms|s)?\s*", str(text), re.IGNORECASE)
    if m is None:
        raise BudgetError(f"--latency-budget {text!r} is not a duration; write seconds, e.g. 1.5, 1.5s or 800ms")
    return float(m[1]) / (1000.0 if (m[2] or "").lower() == "ms" else 1.0)


@dataclass(frozen=True)
class LatencyBudget:
    """Estimated seconds of one ``clip_seconds`` clip on profile ``device`` must be <= ``seconds``."""

    device: str
    seconds: float
    clip_seconds: float = 10.0
    precision: str = "int8"
    threads: int | None = None  # threads on the device; None: all the profile's cores
    metric: str = "flops"  # the allocation budget the search bisects: target_flops or target_params

    def __post_init__(self) -> None:
        problems = []
        try:
            get_profile(self.device)
        except DeviceError as exc:  # its message lists the known profiles
            problems.append(str(exc))
        for name, hint in (("seconds", "--latency-budget"), ("clip_seconds", "--clip-seconds")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                problems.append(f"{hint} must be a number of seconds > 0, got {v!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_positive_int(problems, "--device-threads", self.threads, allow_none=True)
        if self.metric not in METRICS:
            problems.append(f"--budget-metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if problems:
            raise BudgetError("invalid latency budget", problems)

    def profile(self) -> DeviceProfile:
        return get_profile(self.device)

    def estimate(self, spec: ArchSpec, profile: DeviceProfile | None = None) -> Estimate:
        return estimate_spec(spec, profile or self.profile(), self.clip_seconds, precision=self.precision,
                             threads=self.threads)

    def template(self, alloc: AllocConfig) -> AllocConfig:
        """``alloc`` with the searched target at 0 and the other target cleared."""
        targets = {"target_params": None, "target_flops": None, METRICS[self.metric]: 0.0}
        return dataclasses.replace(alloc, **targets)

    def placeholder_targets(self) -> tuple[float | None, float | None]:
        """(target_params, target_flops) for building the template: 0.0 holds the searched one's place
        (threshold 'sensitivity' refuses an AllocConfig without a target)."""
        return (0.0, None) if self.metric == "params" else (None, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def budget_from_options(device: str | None, latency_budget: str | None, *, clip_seconds: float, precision: str,
                        threads: int | None, metric: str, target_params: float | None, target_flops: float | None,
                        plan: object, recipe: str | None) -> LatencyBudget | None:
    """The ``prune`` options -> a ``LatencyBudget`` (None without --latency-budget); every misuse at once."""
    if latency_budget is None and device is None:
        return None
    problems = []
    if latency_budget is None:
        problems.append("--device names the profile of --latency-budget SECONDS: give both (or neither)")
    if device is None:
        problems.append("--latency-budget needs --device PROFILE (see `slimwhisper devices list`)")
    given = [n for n, v in (("--target-params", target_params), ("--target-flops", target_flops)) if v is not None]
    if given:
        problems.append(f"--latency-budget chooses the removal fraction itself; drop {', '.join(given)} "
                        "(--budget-metric flops|params says what the fraction counts)")
    if plan is not None:
        problems.append("--plan fixes what to remove and --latency-budget chooses it: give one of them")
    if recipe is not None:
        problems.append("--recipe fixes how much to remove and --latency-budget chooses it: give one of them "
                        "(use --score/--threshold/--reconstruct to pick the method)")
    if problems:
        raise BudgetError("invalid latency-budget options", problems)
    return LatencyBudget(device, parse_seconds(latency_budget), clip_seconds, precision, threads, metric)


# ---- plan -> spec (what surgery would produce, without cutting weights) -------------------------


def spec_after(spec: ArchSpec, plan: PrunePlan) -> ArchSpec:
    """The ``ArchSpec`` ``surgery.apply_plan`` gives ``plan`` on a model of ``spec`` (same widths,
    same dropped layers, ``scale_dim`` kept); equal to ``spec_from_model`` after surgery (tested)."""
    by_block: dict[tuple[str, int, str], list] = defaultdict(list)
    for name in plan.remove:
        key = parse_name(name)
        if key is None:
            raise PlanError([f"{name!r} is not a group name"])
        by_block[(key.side, key.layer, key.component)].append(key)
    sides = {}
    for side in ("encoder", "decoder"):
        kept = []
        for i, layer in enumerate(getattr(spec, side)):
            if (side, i, "layer") in by_block:
                continue
            attn = {c: _attn_after(getattr(layer, c), by_block[(side, i, c)], f"{side}.{i}.{c}")
                    for c in ("self_attn", "cross_attn") if getattr(layer, c) is not None}
            ffn = layer.ffn_dim - len({k.index for k in by_block[(side, i, "ffn")]})
            kept.append(dataclasses.replace(layer, ffn_dim=ffn, **attn))
        sides[side] = tuple(kept)
    return dataclasses.replace(spec, **sides)  # ArchSpec validation refuses an emptied side or block


def _attn_after(a, keys: list, block: str):
    gone = {k.index for k in keys if k.kind == "head"}
    kept_heads = [h for h in range(a.heads) if h not in gone]
    widths = {}
    for kind, width in (("qk", a.qk_dim), ("vo", a.vo_dim)):
        shared = {k.index for k in keys if k.kind == kind and k.head is None}
        per_head = Counter(k.head for k in keys if k.kind == kind and k.head is not None and k.index not in shared)
        left = {width - len(shared) - per_head[h] for h in kept_heads}
        if len(left) > 1:
            raise PlanError([f"{block}: per-head {kind} removal leaves unequal head widths"])
        widths[kind] = left.pop() if left else width
    return dataclasses.replace(a, heads=len(kept_heads), qk_dim=widths["qk"], vo_dim=widths["vo"])


# ---- the search ---------------------------------------------------------------------------------

AllocateFn = Callable[..., Allocation]  # (AllocConfig, log=...) -> Allocation: the core's allocator


@dataclass(frozen=True)
class BudgetAllocation(Allocation):
    """The allocation the search chose, with its record (saved in pruning.json as ``latency_budget``)."""

    budget: dict[str, Any] = field(default_factory=dict)


def _quiet(*_args, **_kwargs) -> None:
    return None


class _Search:
    """Candidate fraction -> (allocation, estimate); each distinct plan is priced once."""

    def __init__(self, allocate_at: AllocateFn, template: AllocConfig, spec: ArchSpec, budget: LatencyBudget):
        self.allocate_at, self.template, self.spec, self.budget = allocate_at, template, spec, budget
        self.profile = budget.profile()
        self.target = METRICS[budget.metric]
        self.priced: dict[frozenset[str], Estimate] = {}
        self.calls = 0

    def at(self, fraction: float, *, strict: bool = False) -> tuple[Allocation, Estimate] | None:
        """None when the allocator cannot remove ``fraction`` (past its maximum), unless ``strict``."""
        self.calls += 1
        try:
            a = self.allocate_at(dataclasses.replace(self.template, **{self.target: fraction}), log=_quiet)
        except (AllocError, SensAllocError):
            if strict:
                raise
            return None
        if a.plan.remove not in self.priced:
            self.priced[a.plan.remove] = self.budget.estimate(spec_after(self.spec, a.plan), self.profile)
        return a, self.priced[a.plan.remove]

    def top(self) -> tuple[float, tuple[Allocation, Estimate]]:
        """The allocator's maximum fraction (bisected on success; its guards decide) and its candidate."""
        best = self.at(MAX_FRACTION)
        if best is not None:
            return MAX_FRACTION, best
        lo, hi, best = 0.0, MAX_FRACTION, self.at(0.0, strict=True)
        for _ in range(TOP_STEPS):
            mid = (lo + hi) / 2
            got = self.at(mid)
            lo, hi, best = (mid, hi, got) if got is not None else (lo, mid, best)
        return lo, best


def with_vocab(spec: ArchSpec, kept: int) -> ArchSpec:
    """``spec`` after vocabulary pruning to ``kept`` tokens (what ``vocabprune.slice_vocab`` makes)."""
    return dataclasses.replace(spec, vocab=kept, source_vocab=spec.source_vocab or spec.vocab)


def search_budget(allocate_at: AllocateFn, alloc: AllocConfig, spec: ArchSpec, budget: LatencyBudget,
                  log=print, vocab: int | None = None) -> BudgetAllocation:
    """The smallest budget fraction whose plan's estimate is <= ``budget.seconds`` (see the module doc).

    ``vocab``: the kept vocabulary when the same command also prunes it (after the structure); every
    candidate is then priced with that smaller output projection, so the search removes no more
    structure than the budget needs. A vocabulary alone that meets the budget gives fraction 0.
    """
    s = _Search(allocate_at, budget.template(alloc), spec if vocab is None else with_vocab(spec, vocab), budget)
    dense = budget.estimate(spec, s.profile)
    if dense.total_s <= budget.seconds:
        raise BudgetError(f"the dense model already meets the budget on {budget.device}: {dense.label} "
                          f"{_phases(dense)} <= {budget.seconds:.3f} s; nothing to prune (export it as it is), "
                          f"or lower --latency-budget below {dense.total_s:.3f} s")
    base = s.at(0.0, strict=True)  # the template's fixed ratios alone (often nothing)
    if base[1].total_s <= budget.seconds:
        return _result(s, 0.0, base, dense, None, log)
    f_max, top = s.top()
    if top[1].total_s > budget.seconds:
        raise BudgetError(unreachable_message(budget, s.spec, top, dense))
    lo, hi, below, found = 0.0, f_max, base, top
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        got = s.at(mid)
        if got is None or got[1].total_s <= budget.seconds:  # None cannot happen below f_max; stay safe
            hi, found = (mid, got) if got is not None else (mid, found)
        else:
            lo, below = mid, got
    return _result(s, hi, found, dense, (lo, below), log)


def _phases(e: Estimate) -> str:
    return f"encoder {e.encoder_s:.3f} s + decoder {e.decoder_s:.3f} s ({e.tokens} tokens) = {e.total_s:.3f} s"


def dominant(e: Estimate, spec: ArchSpec, precision: str) -> str:
    """Which phase dominates ``e`` and why pruning cannot shrink it further (the estimate's own figures)."""
    if e.encoder_s >= e.decoder_s:
        return (f"the encoder window dominates ({e.encoder_s:.3f} s of {e.total_s:.3f} s, {e.bounds['encoder']}-bound; "
                "the conv stem and the units the guards keep remain)")
    w = decoder_workload(spec, precision, prompt_length(spec) + e.tokens // 2)
    bound = e.bounds["decoder_token"]
    vocab = spec.vocab * spec.d_model
    share = vocab * BYTES_PER_WEIGHT[precision] / w.bytes if bound == "memory" else 2 * vocab / w.flops
    return (f"the decoder's {e.tokens} tokens dominate ({e.decoder_s:.3f} s of {e.total_s:.3f} s, {bound}-bound: "
            f"the {spec.vocab}x{spec.d_model} vocabulary projection, which head/FFN pruning does not touch, is "
            f"{share:.0%} of the {'bytes' if bound == 'memory' else 'FLOPs'} of each step)")


def unreachable_message(budget: LatencyBudget, spec: ArchSpec, top: tuple[Allocation, Estimate], dense: Estimate) -> str:
    a, e = top
    pruned = spec_after(spec, a.plan)
    also = "use --precision int8, " if budget.precision != "int8" else ""
    return (f"the latency budget {budget.seconds:.3f} s cannot be met on {budget.device}: removing the most the "
            f"allocation can ({a.fraction:.0%} of {METRIC_WORDS[a.metric]}) gives {e.label} {e.total_s:.3f} s (dense "
            f"{dense.total_s:.3f} s); {dominant(e, pruned, budget.precision)}; raise --latency-budget to at least "
            f"{e.total_s:.3f} s, shorten --clip-seconds, {also}or drop layers (--drop-decoder-layers)")


def _est_dict(e: Estimate) -> dict[str, Any]:
    keys = ("encoder_window_s", "encoder_s", "decoder_token_s", "decoder_s", "total_s", "windows", "tokens", "label", "bounds")
    return {k: getattr(e, k) for k in keys}


def _result(s: _Search, fraction: float, found: tuple[Allocation, Estimate], dense: Estimate,
            below: tuple[float, tuple[Allocation, Estimate]] | None, log) -> BudgetAllocation:
    a, e = found
    b = s.budget
    record = {
        **b.to_dict(), "profile": s.profile.name, "profile_calibrated": s.profile.calibrated,
        "profile_path": s.profile.path, "label": e.label, "threads_used": e.threads,
        "fraction": fraction, "removed_fraction": a.fraction, "metric": a.metric,
        "estimate": _est_dict(e), "dense_estimate": _est_dict(dense),
        "next_smaller": None if below is None else {"fraction": below[0], "removed_fraction": below[1][0].fraction,
                                                    "estimate": _est_dict(below[1][1])},
        "candidates_priced": len(s.priced), "allocations": s.calls, "notes": list(e.notes),
        "priced_vocab": s.spec.vocab,
    }  # fmt: skip
    cut = [f"{k} {n}/{of}" for k, (n, of) in a.counts.items() if n]
    log(format_budget(record) + f"\n  plan: {len(a.plan.remove)} groups ({', '.join(cut) or 'none'})")
    return BudgetAllocation(a.plan, a.counts, a.removed, a.total, a.metric, a.details, record)


def format_budget(r: dict[str, Any]) -> str:
    """The lines ``prune`` prints: budget, profile state, dense vs chosen estimate, the step below."""

    def line(name: str, e: dict) -> str:
        return (f"  {name:<15}{e['label']}: encoder {e['encoder_s']:.3f} s + decoder {e['decoder_s']:.3f} s "
                f"({e['tokens']} tokens) = {e['total_s']:.3f} s")

    state = "calibrated" if r["profile_calibrated"] else "uncalibrated"
    head = (f"latency budget {r['seconds']:.3f} s on {r['profile']} ({state} profile), {r['precision']}, "
            f"{r['threads_used']} threads, {r['clip_seconds']:g} s clip:")
    chosen = (f"  <= budget; {r['removed_fraction']:.1%} of {METRIC_WORDS[r['metric']]} removed "
              f"(target fraction {r['fraction']:.4f})")
    out = [head, line("dense", r["dense_estimate"]), line("chosen", r["estimate"]) + chosen]
    if r["next_smaller"] is not None:
        n = r["next_smaller"]
        out.append(line("one step less", n["estimate"]) + f"  > budget ({n['removed_fraction']:.1%} removed)")
    out += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(out)
