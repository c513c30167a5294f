"""Prune with reconstruction: re-fit what consumes the removed structures (OBC / ZipLM / SlimGPT).

Removing heads or V/O channels deletes input columns of attention ``out_proj``; removing FFN
neurons deletes input columns of ``fc2``. A registered reconstructor (``RECONSTRUCTORS``) then
re-fits the kept columns and the bias of that consumer (``reconstruct_config.py`` registers them,
``solve.py`` has the formulas):

* ``none``  keep the surviving weights as they are;
* ``bias``  FLAP's bias compensation (arXiv 2312.11983): only the bias changes, so the mean
  output matches the dense layer's;
* ``lstsq`` least squares to the DENSE layer's output on calibration activations (ridge toward 0);
* ``anchored`` the same least squares with the ridge pulling the kept weights toward their DENSE
  values (``solve.refit(anchor=True)``): directions the calibration audio hardly excites keep the
  dense weights instead of shrinking, so the re-fit generalises past the calibration speakers;
  ``damp`` sets how strongly (0.01 = a small ridge, as ``lstsq``; 1 = about one mean-diagonal).

``damp_grid`` (least-squares methods): each block's damping is chosen among these values by 2-fold
cross-validation over the calibration examples (``solve.cv_damp``: fit on one half, held-out error
to the dense output on the other), then the block is fitted on all examples with it. A block with
few rows per input (the decoder FFNs) then gets a stronger pull than one with many (the encoder).
The choice per block is in the report (``pruning.json``: ``reconstruction.damp``).

``sequential=True`` walks the model sublayer by sublayer (encoder first, then the decoder on the
pruned encoder's output): each block's Grams come from the model whose earlier blocks are already
pruned and re-fitted, with the dense output as target through the cross-Gram of pruned and dense
inputs (SparseGPT's order), so earlier errors are compensated. With ``reselect`` and an
activation-aware score, each block's groups are re-chosen on those statistics (for ``obs``: the
ZipLM greedy path from the full re-fit W*); the block's COUNT stays what the allocation chose.
``sequential=False`` uses the dense model's (cached) Grams for every block.

``target="stream"`` (sequential only) fits the DENSE RESIDUAL STREAM after the block instead of
the dense consumer output: with h_p, h_d the block's residual inputs in the pruned and the dense
model, the block's output h_p + W' x~_p should equal h_d + W~_d x~_d, so the consumer's target
becomes W~_d x~_d + (h_d - h_p). Earlier blocks' errors that reach the residual stream directly
(not only through this block's inputs) are then corrected where they can be, from x_p. It costs
nothing new in the solver: the dense side is augmented, x_d -> [x_d, h_d - h_p] and
W~_d -> [W_d, I, b], so ``solve.refit``, ``bias_fit`` and ``cv_damp`` work unchanged (``refit``'s
right-hand side H_pd W~_d^T gains the cross term sum x~_p (h_d - h_p)^T). ``refit_all`` also re-fits
the consumers of blocks that lose nothing (all columns kept), so every block corrects the drift.
Measured on tiny.en at 35% (README "Pruning"): ``stream`` about equal to ``layer``, ``stream`` +
``refit_all`` worse (every block then fits the calibration windows): options, not defaults.

What is not compensated: Q/K channels change attention logits, not a linear output, so their
removal is applied before the block's statistics are taken and only the out_proj re-fit that
follows absorbs part of the change (the softmax itself is not re-fitted). Dropped layers are
re-fitted nowhere; with sequential statistics the blocks after them see the model without them.
The model is masked (``groups.zero_groups``) during the walk and cut once at the end
(``surgery.apply_plan``), so the saved record has one step.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from slimwhisper.compress import stats as S
from slimwhisper.compress.gramscores import consumer_columns
from slimwhisper.compress.groups import Group, GroupSpace, enumerate_groups, zero_groups
from slimwhisper.compress.plan import PrunePlan
from slimwhisper.compress.reconstruct_config import (
    RECONSTRUCTORS,
    ReconstructConfig,
    ReconstructError,
)
from slimwhisper.compress.solve import cv_damp, full_refit, removal_path
from slimwhisper.errors import raise_problems

# ---- plan -> per-block work ---------------------------------------------------------------------


def plan_groups(model, plan: PrunePlan) -> dict[str, Group]:
    """Every group named in ``plan`` plus its block's siblings (candidates for re-selection)."""
    kinds = {"head", "neuron", "layer", "qk", "vo"}
    out: dict[str, Group] = {}
    for pattern in ("shared", "per_head"):
        for g in enumerate_groups(model, GroupSpace(kinds, pattern)):
            out[g.name] = g
    return out


@dataclass
class BlockWork:
    columns: list[Group]  # head / vo / neuron groups to remove (their count is what matters)
    qk: list[Group]
    candidates: list[Group]  # every group of the same kind(s) in the block


def block_work(model, plan: PrunePlan) -> tuple[dict[str, BlockWork], list[Group]]:
    allg = plan_groups(model, plan)
    chosen = [allg[n] for n in sorted(plan.remove)]
    layers = [g for g in chosen if g.kind == "layer"]
    dropped = {(g.side, g.layer) for g in layers}
    work: dict[str, BlockWork] = {}
    for g in chosen:
        if g.kind == "layer" or (g.side, g.layer) in dropped:
            continue
        w = work.setdefault(g.block, BlockWork([], [], []))
        (w.qk if g.kind == "qk" else w.columns).append(g)
    for block, w in work.items():
        sig = {(g.kind, g.head is None) for g in w.columns}
        w.candidates = [g for g in allg.values() if g.block == block and (g.kind, g.head is None) in sig]
    return work, layers


def rows_problems(model, examples, work: dict[str, BlockWork], config: ReconstructConfig, stride: int) -> list[str]:
    """Too few calibration rows for a well-posed least-squares re-fit: say how many utterances."""
    if not config.least_squares or config.min_rows == 0:
        return []
    n = len(examples)
    enc_rows = n * math.ceil(1500 / stride) if n else 0
    dec_rows = sum(int(ex.tokens.shape[1]) - 1 for ex in examples)
    problems = []
    for block, w in sorted(work.items()):
        if not w.columns:
            continue
        sub = _sub(block)
        width = S.consumer(model, sub).in_features
        kept = width - len({c for g in w.columns for c in consumer_columns(g)})
        rows = enc_rows if sub.side == "encoder" else dec_rows
        need = config.min_rows * (kept + 1)
        if rows < need:
            per = rows / max(n, 1)
            utts = math.ceil(need / per) if per > 0 else "more"
            problems.append(f"{block}: {rows} calibration rows for {kept} kept inputs; need about {utts} utterances (have {n})")
    return problems


def _sub(block: str) -> S.Sublayer:
    side, layer, comp = block.split(".")
    return S.Sublayer(side, int(layer), comp)


# ---- selection + re-fit of one block ------------------------------------------------------------


def _select(block: str, w: BlockWork, W_star, H_pp, score: str, config: ReconstructConfig) -> list[Group]:
    """Re-choose ``len(w.columns)`` groups among the candidates on the pruned model's statistics."""
    per_head = any(g.kind == "vo" and g.head is not None for g in w.candidates)  # widths must stay equal
    if not w.columns or not (config.reselect and score in ("obs", "flap", "wanda")) or per_head:
        return w.columns
    units = [consumer_columns(g) for g in w.candidates]
    k = len(w.columns)
    if score == "obs":
        order, _ = removal_path(W_star, H_pp, units, k, config.damp, chunk=max(1, len(units) // 128))
        return [w.candidates[i] for i in order]
    n = max(float(H_pp[-1, -1]), 1.0)
    if score == "flap":
        mean = H_pp[-1, :-1] / n
        per_col = (torch.diagonal(H_pp)[:-1] / n - mean.square()).clamp_min(0) * W_star[:, :-1].square().sum(0)
    else:
        per_col = W_star[:, :-1].abs().sum(0) * torch.diagonal(H_pp)[:-1].clamp_min(0).sqrt()
    s = torch.stack([per_col[torch.tensor(u)].sum() for u in units])
    return [w.candidates[int(i)] for i in torch.argsort(s)[:k]]


@torch.no_grad()
def refit_block(work_model, dense_model, sub: S.Sublayer, w: BlockWork, H_pp, H_pd, rows: int, score: str, config: ReconstructConfig,
                folds=None) -> tuple[list[Group], float]:  # fmt: skip
    """Choose (maybe re-select), mask and re-fit one block in ``work_model``; (the groups removed,
    the damping used). ``folds``: [(H_pp, H_pd)] of the two example folds, for ``damp_grid``."""
    from slimwhisper.compress.gramscores import weight_aug

    lin = S.consumer(work_model, sub)
    wname = f"model.{sub.side}.layers.{sub.layer}." + ("fc2" if sub.component == "ffn" else
            ("self_attn" if sub.component == "self_attn" else "encoder_attn") + ".out_proj") + ".weight"  # fmt: skip
    W_dense, W_cur = weight_aug(dense_model, wname), weight_aug(work_model, wname)
    if config.target == "stream":  # [W, b] -> [W, I, b]: the dense side carries h_d - h_p (module docstring)
        eye = torch.eye(W_dense.shape[0], dtype=W_dense.dtype)
        W_dense = torch.cat([W_dense[:, :-1], eye, W_dense[:, -1:]], dim=1)
    W_star = full_refit(W_dense, H_pp, H_pd, config.damp, config.anchor) if config.least_squares else W_cur
    chosen = _select(sub.block, w, W_star, H_pp, score, config)
    gone = sorted({c for g in chosen for c in consumer_columns(g)})
    keep = [c for c in range(lin.in_features) if c not in set(gone)]
    if config.damp_grid and folds is not None:
        damp, _ = cv_damp(W_dense, folds, keep, config.damp_grid, config.anchor)
        config = dataclasses.replace(config, damp=damp)
    new = RECONSTRUCTORS[config.method].fn(W_dense, W_cur, H_pp, H_pd, rows, keep, config)
    zero_groups(work_model, chosen)
    weight = torch.zeros_like(lin.weight)
    weight[:, keep] = new[:, :-1].to(weight.dtype)
    lin.weight.copy_(weight)
    lin.bias.copy_(new[:, -1].to(lin.bias.dtype))
    return chosen, config.damp


# ---- the walks ----------------------------------------------------------------------------------


def _accumulate(work_model, dense_model, sub, sp: S.Streams, sd: S.Streams, stride: int, stream: bool = False):
    """H_pp, H_pd at ``sub``'s consumer, and [(H_pp, H_pd)] of fold A and fold B (for ``damp_grid``);
    advances the dense stream (the pruned one is NOT advanced). ``stream``: the dense side is
    [x_d, h_d - h_p] (the residual-stream target)."""
    cap_p, cap_d = S.Capture(S.consumer(work_model, sub)), S.Capture(S.consumer(dense_model, sub))
    H_pp = H_pd = A_pp = A_pd = None
    rows = first = 0
    try:
        hp_list, hd_list = (sp.enc, sd.enc) if sub.side == "encoder" else (sp.dec, sd.dec)
        for i, (hp, hd) in enumerate(zip(hp_list, hd_list, strict=True)):
            s = stride if sub.side == "encoder" else 1
            mask = S.causal_mask(hp.shape[1], hp) if sub.side == "decoder" and sub.component == "self_attn" else None
            S.run_sublayer(work_model, sub, hp, mask, sp.enc_out[i] if sub.component == "cross_attn" else None)
            hd_list[i] = S.run_sublayer(dense_model, sub, hd, mask, sd.enc_out[i] if sub.component == "cross_attn" else None)
            xd = torch.cat([cap_d.x, hd - hp], dim=-1) if stream else cap_d.x
            (g_pp, a_pp), (g_pd, a_pd) = S.fold_gram(cap_p.x, cap_p.x, first, s), S.fold_gram(cap_p.x, xd, first, s)
            H_pp, A_pp = (g_pp, a_pp) if H_pp is None else (H_pp + g_pp, A_pp + a_pp)
            H_pd, A_pd = (g_pd, a_pd) if H_pd is None else (H_pd + g_pd, A_pd + a_pd)
            rows += int(g_pp[-1, -1])  # the constant column counts the rows
            first += hp.shape[0]
    finally:
        cap_p.close()
        cap_d.close()
    return H_pp, H_pd, rows, [(A_pp, A_pd), (H_pp - A_pp, H_pd - A_pd)]


def _advance(model, sub, streams: S.Streams) -> None:
    hs = streams.enc if sub.side == "encoder" else streams.dec
    for i, h in enumerate(hs):
        mask = S.causal_mask(h.shape[1], h) if sub.side == "decoder" and sub.component == "self_attn" else None
        hs[i] = S.run_sublayer(model, sub, h, mask, streams.enc_out[i] if sub.component == "cross_attn" else None)


@torch.no_grad()
def sequential_walk(work_model, dense_model, examples, work: dict[str, BlockWork], dropped: set, score: str,
                    config: ReconstructConfig, stats_config: S.StatsConfig, damps: dict[str, float],
                    progress: bool = True) -> list[Group]:  # fmt: skip
    """Mask + re-fit block by block on the already-pruned model's inputs; ``damps`` gets each
    re-fitted block's damping."""
    from slimwhisper.progress import progress_bar

    h0 = S.encoder_inputs(dense_model, examples, stats_config.batch)
    sp, sd = S.Streams([h.clone() for h in h0]), S.Streams(h0)
    removed: list[Group] = []
    subs = S.sublayers(dense_model, "encoder") + S.sublayers(dense_model, "decoder")
    with progress_bar(len(subs), "sequential re-fit", enabled=progress) as bar:
        for sub in subs:
            if sub.side == "decoder" and not sd.dec:
                S.finish_encoder(work_model, sp)
                S.finish_encoder(dense_model, sd)
                sd.dec = S.decoder_inputs(dense_model, examples, sd.enc_out)
                sp.dec = [h.clone() for h in sd.dec]
            w = work.get(sub.block)
            if (sub.side, sub.layer) in dropped:
                _advance(dense_model, sub, sd)  # the pruned stream skips the (zeroed) layer
            elif not ((w is not None and w.columns) or config.refit_all):
                if w is not None:
                    zero_groups(work_model, w.qk)
                    removed += w.qk
                _advance(dense_model, sub, sd)
                _advance(work_model, sub, sp)
            else:
                w = w or BlockWork([], [], [])  # refit_all: a block that loses nothing is re-fitted too
                zero_groups(work_model, w.qk)
                H_pp, H_pd, rows, folds = _accumulate(work_model, dense_model, sub, sp, sd, stats_config.stride, config.target == "stream")
                chosen, damps[sub.block] = refit_block(work_model, dense_model, sub, w, H_pp, H_pd, rows, score, config, folds)
                removed += w.qk + chosen
                _advance(work_model, sub, sp)
            bar.advance()
    return removed


@torch.no_grad()
def dense_refit(work_model, dense_model, stats: S.DenseStats, work: dict[str, BlockWork], score: str, config: ReconstructConfig,
                damps: dict[str, float]) -> list[Group]:  # fmt: skip
    """Every block re-fitted on the dense model's Grams (non-sequential; no forward pass)."""
    removed: list[Group] = []
    for block, w in work.items():
        zero_groups(work_model, w.qk)
        removed += w.qk
        if w.columns:
            st = stats.blocks[block]
            chosen, damps[block] = refit_block(work_model, dense_model, _sub(block), w, st.H, st.H, st.rows, score, config, st.folds())
            removed += chosen
    return removed


def reconstruct_prune(loaded, dense_model, plan: PrunePlan, examples, config: ReconstructConfig, stats_config: S.StatsConfig,
                      score: str, stats: S.DenseStats | None = None, progress: bool = True, log=print) -> tuple[PrunePlan, dict]:  # fmt: skip
    """Mask + re-fit ``loaded.model`` block by block; return the plan actually applied (re-selected
    groups) and a report. The caller cuts the model with ``surgery.apply_plan``."""
    import time

    t0 = time.perf_counter()
    work, layers = block_work(loaded.model, plan)
    raise_problems(ReconstructError, "too little calibration data for a least-squares re-fit",
                   rows_problems(loaded.model, examples, work, config, stats_config.stride))  # fmt: skip
    zero_groups(loaded.model, layers)
    dropped = {(g.side, g.layer) for g in layers}
    damps: dict[str, float] = {}
    if config.sequential:
        removed = sequential_walk(loaded.model, dense_model, examples, work, dropped, score, config, stats_config, damps, progress)
    else:
        if stats is None:
            stats = S.dense_stats(dense_model, examples, stats_config, progress, log)
        removed = dense_refit(loaded.model, dense_model, stats, work, score, config, damps)
    names = {g.name for g in removed} | {g.name for g in layers}
    refitted = defaultdict(int)
    for block, w in work.items():
        if w.columns:
            refitted[block] = len(w.columns)
    report = {
        "method": config.method,
        "sequential": config.sequential,
        "refitted_blocks": dict(refitted),
        "qk_not_compensated": sorted({g.block for w in work.values() for g in w.qk}),
        "layers_dropped_not_refitted": sorted(g.name for g in layers),
        "reselected": len(names - set(plan.remove)),
        "damp": damps,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if config.damp_grid and damps:
        log("reconstruction damping (2-fold cross-validated): " + ", ".join(f"{b} {d:g}" for b, d in sorted(damps.items())))
    if layers:
        log(f"reconstruction: {len(layers)} dropped layers are not re-fitted ({', '.join(report['layers_dropped_not_refitted'])})")
    return PrunePlan(frozenset(names)), report
