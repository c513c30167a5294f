"""Activation-aware scores read from the calibration Gram matrices (``stats.DenseStats``).

A head, V/O channel or FFN neuron is a set S of input columns of its consumer (attention
``out_proj`` / FFN ``fc2``); W~ = [W, b] is that consumer, H = sum [x,1][x,1]^T its Gram and N the
number of calibration rows. Lower = safer to remove.

* ``obs``   structured OBS (ZipLM, arXiv 2302.04089): rho_S = tr(W_S [(H^-1)_SS]^-1 W_S^T), the
  summed squared output error of removing S when the other columns are re-fitted optimally
  (``solve.obs_saliency``; H damped as in the re-fit). The score to pair with ``lstsq``.
* ``flap``  FLAP fluctuation (arXiv 2312.11983, eq. 3): sum_{j in S} Var(x_j) ||W_:,j||^2, the
  output variance the bias-only compensation cannot restore. The score to pair with ``bias``.
* ``wanda`` Wanda-sp (An et al., FLAP paper baseline; Wanda, arXiv 2306.11695):
  sum_{j in S} sum_i |W_ij| ||x_j||_2.

Q/K channels feed no linear output (they are terms of the attention logits q.k), so for ``qk``
groups all three scores use the energy of the removed logit terms, sum_c E[q_c^2] E[k_c^2], from
the Grams of the query and key inputs. Layer groups score the summed output energy
tr(W~ H W~^T) / N of the layer's sublayers (what dropping it removes, nothing re-fitted).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from slimwhisper.compress.groups import Group
from slimwhisper.compress.scores import Normalize, ScoreError, register_score
from slimwhisper.compress.solve import obs_saliency

DEFAULT_DAMP = 0.01
CONSUMERS = (".out_proj.weight", ".fc2.weight")


def consumer_columns(group: Group) -> list[int]:
    """The consumer input columns a head / V/O channel / neuron group removes."""
    return sorted({i for s in group.slices if s.dim == 1 and s.param.endswith(CONSUMERS) for i in s.index})


def consumer_param(group: Group) -> str | None:
    return next((s.param for s in group.slices if s.dim == 1 and s.param.endswith(CONSUMERS)), None)


def weight_aug(model, weight_name: str) -> torch.Tensor:
    """W~ = [W, b] of a consumer, float64."""
    named = dict(model.named_parameters(remove_duplicate=False))
    W = named[weight_name].detach().to(torch.float64)
    b = named[weight_name[: -len("weight")] + "bias"].detach().to(torch.float64)
    return torch.cat([W, b[:, None]], dim=1)


def _blocks(groups: list[Group]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        out[(g.block, g.kind)].append(i)
    return out


def _stats_of(ctx, block: str):
    if ctx.grams is None or block not in ctx.grams.blocks:
        raise ScoreError(f"no calibration statistics for {block}: they were computed for another model")
    return ctx.grams.blocks[block]


def _qk_energy(ctx, groups: list[Group], idx: list[int]) -> torch.Tensor:
    st = _stats_of(ctx, groups[idx[0]].block)
    named = dict(ctx.model.named_parameters(remove_duplicate=False))
    out = torch.zeros(len(idx), dtype=torch.float64)
    for j, i in enumerate(idx):
        q_name = next(s for s in groups[i].slices if s.param.endswith("q_proj.weight"))
        rows = torch.tensor(q_name.index)
        base = q_name.param[: -len("q_proj.weight")]
        wq = torch.cat([named[q_name.param].detach()[rows], named[base + "q_proj.bias"].detach()[rows][:, None]], 1).double()
        wk = named[base + "k_proj.weight"].detach()[rows].double()
        wk = torch.cat([wk, torch.zeros(len(rows), 1, dtype=torch.float64)], 1)
        eq = ((wq @ st.q) * wq).sum(1) / st.rows
        ek = ((wk @ st.kv) * wk).sum(1) / st.rows
        out[j] = float((eq * ek).sum())
    return out


def _layer_energy(ctx, group: Group) -> float:
    total = 0.0
    for block, st in ctx.grams.blocks.items():
        if not block.startswith(f"{group.side}.{group.layer}."):
            continue
        suffix = "fc2.weight" if block.endswith("ffn") else ("self_attn" if "self_attn" in block else "encoder_attn") + ".out_proj.weight"
        W = weight_aug(ctx.model, f"model.{group.side}.layers.{group.layer}.{suffix}")
        total += float(torch.trace(W @ st.H @ W.T)) / max(st.rows, 1)
    return total


def _gram_score(ctx, column_score) -> torch.Tensor:
    """Dispatch per (block, kind): ``column_score(W~, stats, units)`` for column groups."""
    groups = ctx.groups
    out = torch.zeros(len(groups), dtype=torch.float64)
    for (block, kind), idx in _blocks(groups).items():
        if kind == "layer":
            for i in idx:
                out[i] = _layer_energy(ctx, groups[i])
        elif kind == "qk":
            out[torch.tensor(idx)] = _qk_energy(ctx, groups, idx)
        else:
            W = weight_aug(ctx.model, consumer_param(groups[idx[0]]))
            units = [consumer_columns(groups[i]) for i in idx]
            out[torch.tensor(idx)] = column_score(W, _stats_of(ctx, block), units)
    return out


@register_score("obs", normalize=Normalize.NONE, needs=("grams",))
def _obs(ctx, config):
    return _gram_score(ctx, lambda W, st, units: obs_saliency(W, st.H, units, DEFAULT_DAMP))


def _variance(st) -> torch.Tensor:
    n = max(st.rows, 1)
    mean = st.H[-1, :-1] / n
    return (torch.diagonal(st.H)[:-1] / n - mean.square()).clamp_min(0.0)


@register_score("flap", normalize=Normalize.BLOCK, needs=("grams",))
def _flap(ctx, config):
    def fluct(W, st, units):
        per_col = _variance(st) * W[:, :-1].square().sum(0)
        return torch.stack([per_col[torch.tensor(u)].sum() for u in units])

    return _gram_score(ctx, fluct)


@register_score("wanda", normalize=Normalize.BLOCK, needs=("grams",))
def _wanda(ctx, config):
    def wanda(W, st, units):
        norms = torch.diagonal(st.H)[:-1].clamp_min(0.0).sqrt()
        per_col = W[:, :-1].abs().sum(0) * norms
        return torch.stack([per_col[torch.tensor(u)].sum() for u in units])

    return _gram_score(ctx, wanda)
