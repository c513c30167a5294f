"""Sparse Group LASSO over the structured pruner's own groups (heads, FFN neurons, ...).

    Omega(w) = lambda_g * sum_g sqrt(p_g) * ||w_g||_2  +  lambda_1 * ||w||_1

(Simon, Friedman, Hastie & Tibshirani 2013, "A sparse-group lasso"; p_g = the group's size).
The group term pushes WHOLE groups to exactly zero — a head or neuron whose weights vanish can be
removed by ``surgery.apply_plan`` without changing the output — and the L1 term adds sparsity
inside the surviving groups. Groups are ``groups.Group`` objects, so what is penalised is exactly
what the pruner can remove; the L1 term runs over the weights those groups cover.

Two ways to minimise ``loss + Omega``:

* ``penalty``: add ``Omega`` to the loss and let autograd take its subgradient (what TSPAR
  describes; weights hover near zero rather than reaching it);
* ``proximal`` (default): after each optimizer step with step size eta, apply the proximal
  operator of eta * Omega, which for the sparse-group lasso is elementwise soft-thresholding by
  eta * lambda_1 followed by group soft-thresholding w_g <- w_g * max(0, 1 - eta * lambda_g *
  sqrt(p_g) / ||w_g||) (Friedman, Hastie & Tibshirani 2010; Simon et al. 2013, sec. 3). Groups
  really reach zero, which makes TSPAR's pass-1 threshold meaningful.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn

from slimwhisper.compress.groups import Group
from slimwhisper.compress.scores import GroupIndex
from slimwhisper.errors import UserError

EPS = 1e-12  # inside the square root: finite (sub)gradient of ||w_g|| at w_g = 0


class LassoError(UserError, ValueError):
    """Bad sparse-group-lasso options; the message says what is valid."""


class Regularize(str, Enum):
    PENALTY = "penalty"
    PROXIMAL = "proximal"


class GroupNorms:
    """Per-group L2 norms of a model's live weights, differentiable, one ``index_add`` per tensor.

    Uses ``scores.GroupIndex``'s (param, dim) -> (positions, group ids) map. Every position must
    belong to at most one group (true for heads + neurons, the groups TSPAR uses); overlapping
    kinds (a head and its Q/K channels) would count weights twice and are refused.
    """

    def __init__(self, model: nn.Module, groups: list[Group]):
        if not groups:
            raise LassoError("no groups to regularise: the group space selects nothing in this model")
        self.groups = groups
        self.index = GroupIndex(groups)
        named = dict(model.named_parameters(remove_duplicate=False))
        self.params = {n: named[n] for n in self.index.param_names}
        self.sizes = torch.tensor([float(g.numel) for g in groups], dtype=torch.float32)
        for (name, dim), (pos, _) in self.index.entries.items():
            if pos.unique().numel() != pos.numel():
                raise LassoError(f"groups overlap in {name} (dim {dim}); use non-overlapping kinds such as heads + neurons")

    def _along(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        other = [d for d in range(x.dim()) if d != dim]
        return x.sum(dim=other) if other else x

    def squared(self) -> torch.Tensor:
        """sum_{j in g} w_j^2 for every group (shape [G], float32, differentiable)."""
        out = torch.zeros(len(self.groups), dtype=torch.float32, device=self.sizes.device)
        for (name, dim), (pos, ids) in self.index.entries.items():
            vec = self._along(self.params[name].float().square(), dim).to(out.device)
            out = out.index_add(0, ids, vec[pos])
        return out

    def norms(self) -> torch.Tensor:
        return (self.squared() + EPS).sqrt()

    def l1(self) -> torch.Tensor:
        """||w||_1 over the elements the groups cover (each counted once)."""
        total = torch.zeros((), dtype=torch.float32)
        for (name, dim), (pos, _) in self.index.entries.items():
            total = total + self._along(self.params[name].float().abs(), dim).cpu()[pos].sum()
        return total

    def penalty(self, lambda_group: float, lambda_l1: float) -> torch.Tensor:
        """Omega(w) = lambda_g sum_g sqrt(p_g) ||w_g||_2 + lambda_1 ||w||_1."""
        omega = lambda_group * (self.sizes.sqrt() * self.norms()).sum()
        return omega + lambda_l1 * self.l1() if lambda_l1 else omega

    @torch.no_grad()
    def prox(self, lambda_group: float, lambda_l1: float, step: float) -> None:
        """w <- prox_{step * Omega}(w), in place: L1 soft-threshold, then group soft-threshold."""
        if lambda_l1:
            t = step * lambda_l1
            for (name, dim), (pos, _) in self.index.entries.items():
                w = self.params[name]
                sub = w.index_select(dim, pos.to(w.device))
                w.index_copy_(dim, pos.to(w.device), sub.sign() * (sub.abs() - t).clamp_min(0))
        if lambda_group:
            norms = self.squared().sqrt()
            scale = (1 - step * lambda_group * self.sizes.sqrt() / norms.clamp_min(EPS)).clamp_min(0)
            for (name, dim), (pos, ids) in self.index.entries.items():
                w = self.params[name]
                shape = [1] * w.dim()
                shape[dim] = pos.numel()
                factor = scale[ids].to(w.device, w.dtype).reshape(shape)
                idx = pos.to(w.device)
                w.index_copy_(dim, idx, w.index_select(dim, idx) * factor)
