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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from slimwhisper.compress.calib import CalibExample, per_example_grads
from slimwhisper.compress.groups import Group


class ScoreError(ValueError):
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
            raise ScoreError("invalid score config:\n  - " + "\n  - ".join(problems))

    @property
    def needs_grads(self) -> bool:
        return SCORES[self.name].needs_grads

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


class GradStats:
    """What the gradient scores need, accumulated in one pass (per-sample grads, batch 1).

    ``sum_sq[name]``: sum_n g_n^2 per element (N x diagonal empirical Fisher), when ``fisher``;
    ``taylor_abs``: sum_n |sum_{j in G} w_j g_nj| per group, when ``taylor``.
    """

    def __init__(self, index: GroupIndex, weights: dict[str, torch.Tensor], fisher: bool = True, taylor: bool = True):
        self.index, self.weights = index, weights
        self.n = 0
        self.loss_sum = 0.0
        self.sum_sq = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()} if fisher else {}
        self.taylor_abs = torch.zeros(len(index.groups), dtype=torch.float64) if taylor else None

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


@dataclass(frozen=True)
class ScoreHandler:
    fn: Callable[[GroupIndex, dict[str, torch.Tensor], GradStats | None, ScoreConfig], torch.Tensor]
    needs_grads: bool
    normalize: Normalize  # default


SCORES: dict[str, ScoreHandler] = {}


def register_score(name: str, needs_grads: bool, normalize: Normalize):
    def wrap(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} registered twice")
        SCORES[name] = ScoreHandler(fn, needs_grads, normalize)
        return fn

    return wrap


@register_score("magnitude", needs_grads=False, normalize=Normalize.BLOCK)
def _magnitude(index, weights, stats, config):
    # L1 = sum |w|, "L2" = sum w^2 (the squared norm ranks like the norm but, like the OBD
    # saliency, adds up over parameters, so per-parameter normalisation is meaningful).
    if config.p == 1:
        return index.reduce(lambda n: weights[n].abs())
    return index.reduce(lambda n: weights[n].square())


@register_score("taylor", needs_grads=True, normalize=Normalize.NONE)
def _taylor(index, weights, stats, config):
    return stats.taylor_abs / max(stats.n, 1)


@register_score("fisher", needs_grads=True, normalize=Normalize.NONE)
def _fisher(index, weights, stats, config):
    n = max(stats.n, 1)
    return 0.5 * index.reduce(lambda name: (stats.sum_sq[name] / n) * weights[name].float().square())


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
) -> dict[str, torch.Tensor]:
    """Scores of ``groups`` for every config in one calibration pass; {score name: tensor[G]}.

    ``observers`` (objects with ``weights`` and ``update(loss, grads)``) ride along on the same
    pass, e.g. ``sensitivity.SensitivityStats``.
    """
    if not groups:
        raise ScoreError("no groups to score: the group space selects nothing in this model")
    index = GroupIndex(groups)
    weights = weights_of(model, index)
    stats = None
    if any(c.needs_grads for c in configs) or observers:
        if not examples:
            raise ScoreError("gradient scores need calibration examples (at least 1)")
        names = {c.name for c in configs}
        stats = GradStats(index, weights, fisher="fisher" in names, taylor="taylor" in names)
        run_pass(model, examples, [stats, *(observers or [])], progress=progress)
    out = {}
    for c in configs:
        raw = SCORES[c.name].fn(index, weights, stats, c)
        out[c.name] = normalize_per_block(groups, raw) if c.effective_normalize is Normalize.BLOCK else raw
    return out
