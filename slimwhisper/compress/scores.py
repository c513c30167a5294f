"""Importance scores for pruning groups (``groups.Group``): registered handlers, name -> function.

Every score is "how much would the calibration loss suffer if this group were removed"; lower =
safer to remove. All handlers work on per-element statistics reduced to groups through one
vectorised ``GroupIndex`` (no Python loop over thousands of neurons).

* ``magnitude``: ||w_G||_1 or ||w_G||_2^2 over all weights of the group (Li et al. 2017 style).
  Data-free; the scale differs from layer to layer, so by default it is normalised per block.
* ``taylor``: first-order Taylor, E_n | sum_{j in G} w_j g_nj |. Removing G sets w_j -> 0, so the
  first-order loss change on sample n is -sum_j w_j g_nj. We sum inside the group with signs
  (the weights move TOGETHER, their first-order effects add) and take the absolute value per
  sample before averaging (Molchanov et al. 2019): at a trained model the mean gradient is close
  to 0, so |sum_j w_j mean_n g_nj| would mostly measure noise cancellation, not importance.
* ``fisher``: diagonal empirical Fisher F_jj = mean_n g_nj^2 and the Optimal Brain Damage
  saliency 0.5 * sum_j F_jj w_j^2 (LeCun et al. 1990): the second-order loss increase of zeroing
  the group when the gradient term vanishes and the Hessian is approximated by the Fisher.

``taylor`` and ``fisher`` are in loss units and comparable across layers as they are; magnitude
is not. ``ScoreConfig.normalize`` (default: per handler) divides each score by the mean score
per parameter of its (block, kind), so score/params = 1.0 means "average for its block".

Activation-aware scores (``obs``, ``flap``, ``wanda``) read the calibration Gram matrices of
``stats.py`` instead of gradients; they are registered in ``gramscores.py``. Each handler declares
what it needs (``needs``: ``grads`` and/or ``grams``; ``grad_stats``: which per-example gradient
accumulators of ``GradStats``), and ``score_groups`` computes only that: a new score is one
``register_score`` call, never an edit of ``GradStats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from slimwhisper.compress.calib import CalibExample, per_example_grads
from slimwhisper.compress.groups import Group
from slimwhisper.errors import UserError


class ScoreError(UserError, ValueError):
    """Unknown score or bad score options; the message lists what is valid."""


class Normalize(str, Enum):
    NONE = "none"
    BLOCK = "block"  # divide by the mean score per parameter of the same (block, kind)


@dataclass(frozen=True)
class ScoreConfig:
    name: str = "fisher"
    p: int = 2  # magnitude norm: 1 (L1) or 2 (L2)
    normalize: Normalize | None = None  # None: the handler's default

    def __post_init__(self) -> None:
        problems = []
        if self.name not in SCORES:
            problems.append(f"unknown score {self.name!r}; choose from {', '.join(sorted(SCORES))}")
        if self.p not in (1, 2):
            problems.append(f"magnitude norm p must be 1 or 2, got {self.p!r}")
        if self.normalize is not None:
            try:
                object.__setattr__(self, "normalize", Normalize(self.normalize))
            except ValueError:
                problems.append(f"normalize must be one of {[n.value for n in Normalize]}, got {self.normalize!r}")
        if problems:
            raise ScoreError("invalid score config", problems)

    @property
    def needs_grads(self) -> bool:
        return "grads" in SCORES[self.name].needs

    @property
    def needs_grams(self) -> bool:
        return "grams" in SCORES[self.name].needs

    @property
    def needs_calib(self) -> bool:
        """True when the score reads calibration audio (gradients or Gram matrices)."""
        return bool(SCORES[self.name].needs)

    @property
    def effective_normalize(self) -> Normalize:
        return self.normalize if self.normalize is not None else SCORES[self.name].normalize

    def to_dict(self) -> dict:
        return {"name": self.name, "p": self.p, "normalize": self.effective_normalize.value}


# ---- groups -> flat index ------------------------------------------------------------------------


class GroupIndex:
    """Maps per-element tensors to per-group sums in one ``index_add_`` per parameter.

    For each (param, dim) it keeps the positions along ``dim`` and the group id each one feeds;
    a tensor is first summed over its other dims, then gathered and added into the group vector.
    Overlapping groups (a head and a channel of it) are fine: a position may feed several ids.
    """

    def __init__(self, groups: list[Group]):
        self.groups = groups
        entries: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for gid, g in enumerate(groups):
            for s in g.slices:
                pos, ids = entries.setdefault((s.param, s.dim), ([], []))
                pos.extend(s.index)
                ids.extend([gid] * len(s.index))
        self.entries = {k: (torch.tensor(p, dtype=torch.long), torch.tensor(i, dtype=torch.long)) for k, (p, i) in entries.items()}

    @property
    def param_names(self) -> list[str]:
        return sorted({name for name, _ in self.entries})

    def reduce(self, per_element: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """sum over each group's elements of ``per_element(param_name)`` (shape [G], float64).

        Element-wise work stays in the tensor's dtype; only the reduced vectors (one entry per
        row/column) are accumulated in float64, so scores of many groups add up exactly enough.
        """
        out = torch.zeros(len(self.groups), dtype=torch.float64)
        cache: dict[str, torch.Tensor] = {}
        for (name, dim), (pos, ids) in self.entries.items():
            if name not in cache:
                cache[name] = per_element(name).detach()
            x = cache[name]
            other = [d for d in range(x.dim()) if d != dim]
            vec = (x.sum(dim=other) if other else x).to("cpu", torch.float64)
            out.index_add_(0, ids, vec[pos])
        return out


# ---- one pass over calibration data ---------------------------------------------------------------


# Per-example gradient accumulators a handler may ask for (``grad_stats``):
#   sum_sq     sum_n g_n^2 per element (N x the diagonal empirical Fisher);
#   taylor_abs sum_n |sum_{j in G} w_j g_nj| per group.
GRAD_STATS = ("sum_sq", "taylor_abs")


class GradStats:
    """The per-example gradient accumulators the requested scores declared, in one pass (batch 1)."""

    def __init__(self, index: GroupIndex, weights: dict[str, torch.Tensor], wants: frozenset[str] | set[str] = frozenset(GRAD_STATS)):
        self.index, self.weights = index, weights
        self.n = 0
        self.loss_sum = 0.0
        self.sum_sq = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()} if "sum_sq" in wants else {}
        self.taylor_abs = torch.zeros(len(index.groups), dtype=torch.float64) if "taylor_abs" in wants else None

    def update(self, loss: float, grads: dict[str, torch.Tensor]) -> None:
        self.n += 1
        self.loss_sum += loss
        for name, acc in self.sum_sq.items():
            acc.addcmul_(grads[name], grads[name])
        if self.taylor_abs is not None:
            self.taylor_abs += self.index.reduce(lambda name: self.weights[name] * grads[name]).abs()


def run_pass(model, examples: list[CalibExample], stats: list, progress: bool = True, label: str = "calibration") -> None:
    """One backward per example; each object in ``stats`` gets ``update(loss, grads)``.

    Gradients are taken for the union of the parameters the stats ask for (``.weights``).
    """
    from slimwhisper.progress import progress_bar

    named = dict(model.named_parameters(remove_duplicate=False))
    wanted = sorted({n for s in stats for n in s.weights})
    params = {n: named[n] for n in wanted}
    with progress_bar(len(examples), f"{label} gradients", enabled=progress) as bar:
        for loss, grads in per_example_grads(model, examples, params):
            for s in stats:
                s.update(loss, grads)
            bar.advance(loss=f"{loss:.3f}")


# ---- handlers -------------------------------------------------------------------------------------


@dataclass
class ScoreContext:
    """What a handler may read: the groups, their weights and the statistics it declared."""

    model: object
    groups: list[Group]
    index: GroupIndex
    weights: dict[str, torch.Tensor]
    grads: GradStats | None = None
    grams: object | None = None  # stats.DenseStats


@dataclass(frozen=True)
class ScoreHandler:
    fn: Callable[[ScoreContext, ScoreConfig], torch.Tensor]
    needs: frozenset[str]  # subset of {"grads", "grams"}; empty = data-free
    normalize: Normalize  # default
    grad_stats: frozenset[str] = frozenset()  # GRAD_STATS entries, when "grads" is needed

    @property
    def needs_grads(self) -> bool:
        return "grads" in self.needs


SCORES: dict[str, ScoreHandler] = {}


def register_score(name: str, *, normalize: Normalize, needs: tuple[str, ...] = (), grad_stats: tuple[str, ...] = ()):
    """Register ``fn(ctx: ScoreContext, config) -> tensor[G]`` under ``name``."""
    bad = sorted(set(needs) - {"grads", "grams"}) + sorted(set(grad_stats) - set(GRAD_STATS))
    if bad:
        raise ValueError(f"score {name!r}: unknown statistics {bad}")

    def wrap(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} registered twice")
        SCORES[name] = ScoreHandler(fn, frozenset(needs), normalize, frozenset(grad_stats))
        return fn

    return wrap


@register_score("magnitude", normalize=Normalize.BLOCK)
def _magnitude(ctx, config):
    # L1 = sum |w|, "L2" = sum w^2 (the squared norm ranks like the norm but, like the OBD
    # saliency, adds up over parameters, so per-parameter normalisation is meaningful).
    if config.p == 1:
        return ctx.index.reduce(lambda n: ctx.weights[n].abs())
    return ctx.index.reduce(lambda n: ctx.weights[n].square())


@register_score("taylor", normalize=Normalize.NONE, needs=("grads",), grad_stats=("taylor_abs",))
def _taylor(ctx, config):
    return ctx.grads.taylor_abs / max(ctx.grads.n, 1)


@register_score("fisher", normalize=Normalize.NONE, needs=("grads",), grad_stats=("sum_sq",))
def _fisher(ctx, config):
    n = max(ctx.grads.n, 1)
    return 0.5 * ctx.index.reduce(lambda name: (ctx.grads.sum_sq[name] / n) * ctx.weights[name].float().square())


def normalize_per_block(groups: list[Group], scores: torch.Tensor) -> torch.Tensor:
    """Divide each score by the mean score PER PARAMETER of its (block, kind).

    After this an average group of any block scores its own parameter count, so ``score /
    params`` (what a global ranking compares) is ~1 for an average group everywhere and below 1
    for groups weaker than their block's average. Single-group blocks (layers) stay as they are.
    """
    members: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault((g.block, g.kind), []).append(i)
    out = scores.clone()
    for idx in members.values():
        if len(idx) < 2:
            continue
        t = torch.tensor(idx)
        per_param = scores[t].sum() / sum(groups[i].params for i in idx)
        if per_param > 0:
            out[t] = scores[t] / per_param
    return out


# ---- public entry points --------------------------------------------------------------------------


def weights_of(model, index: GroupIndex) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    return {n: named[n].detach() for n in index.param_names}


def score_groups(
    model,
    groups: list[Group],
    configs: list[ScoreConfig],
    examples: list[CalibExample] | None = None,
    progress: bool = True,
    observers: list | None = None,
    grams=None,
) -> dict[str, torch.Tensor]:
    """Scores of ``groups`` for every config, computing only the statistics they declare;
    {score name: tensor[G]}.

    ``observers`` (objects with ``weights`` and ``update(loss, grads)``) ride along on the same
    gradient pass, e.g. ``sensitivity.SensitivityStats``. ``grams`` (a ``stats.DenseStats``) is
    computed from ``examples`` with default settings when a score needs it and none is given.
    """
    if not groups:
        raise ScoreError("no groups to score: the group space selects nothing in this model")
    index = GroupIndex(groups)
    weights = weights_of(model, index)
    ctx = ScoreContext(model, groups, index, weights)
    handlers = [SCORES[c.name] for c in configs]
    need_grads = any(h.needs_grads for h in handlers) or bool(observers)
    need_grams = any("grams" in h.needs for h in handlers)
    if need_grads and not examples:
        raise ScoreError("gradient scores need calibration examples (at least 1)")
    if need_grams and grams is None and not examples:
        raise ScoreError("activation-aware scores (obs, flap, wanda) need calibration examples (at least 1)")
    if need_grads:
        wants = frozenset().union(*(h.grad_stats for h in handlers))
        ctx.grads = GradStats(index, weights, wants)
        run_pass(model, examples, [ctx.grads, *(observers or [])], progress=progress)
    if need_grams:
        if grams is None:
            from slimwhisper.compress.stats import StatsConfig, dense_stats

            grams = dense_stats(model, examples, StatsConfig(), progress=progress)
        ctx.grams = grams
    out = {}
    for c in configs:
        raw = SCORES[c.name].fn(ctx, c)
        out[c.name] = normalize_per_block(groups, raw) if c.effective_normalize is Normalize.BLOCK else raw
    return out


