"""Linear algebra of layer-wise reconstruction: damped solves, the least-squares re-fit, OBS paths.

Notation: a consumer layer computes y = W x + b. With the constant column appended, x~ = [x, 1]
and W~ = [W, b], so y = W~ x~ and the Gram is H = sum x~ x~^T (``stats.py``). Column n (the
last) is the bias and is never removed.

* Re-fit (OBC / SlimGPT, and ZipLM's "optimal update"): keep input columns R of the PRUNED model's
  inputs x_p and fit the DENSE layer's output y_d = W~_d x~_d in least squares:
      min_W' sum ||W' x~_p,R - W~_d x~_d||^2  =>  W' (H_pp[R,R] + lambda I) = W~_d H_pd[R,:]^T
  with H_pp = sum x~_p x~_p^T and the cross-Gram H_pd = sum x~_p x~_d^T. Without sequential
  statistics x_p = x_d and this is W' = W~ H[:,R] H[R,R]^-1 of the issue.
* lambda = damp x mean(diag H) on the feature columns (not the bias column); a Cholesky that
  fails is retried with 10x the damping (SparseGPT does the same).
* Anchored re-fit: the plain ridge pulls every kept weight toward ZERO, which is what an
  under-determined re-fit (a decoder FFN with ~3 calibration tokens per input) does in the
  directions the calibration audio never excites: other speakers then meet shrunken weights. With
  ``anchor`` the ridge pulls toward the DENSE weights of the kept columns instead,
      min_W' sum ||W' x~_p,R - W~_d x~_d||^2 + lambda ||W'_R - W_d,R||^2
      =>  W' (H_pp[R,R] + lambda I) = W~_d H_pd[R,:]^T + lambda W_d,R
  (Tikhonov regularisation with a prior mean; the bias column is not damped, so not anchored).
  lambda -> 0 is the plain re-fit, lambda -> inf keeps the kept weights as they are; with nothing
  removed and dense Grams the solution is W_d itself, whatever lambda.
* Cross-validated damping (``cv_damp``): how much to trust the calibration rows depends on how
  many a block has (an encoder FFN sees ~100k frames, a decoder FFN ~6k tokens for 1,536 inputs).
  Each damping of a grid is fitted on one fold of the calibration examples and scored on the
  other (2-fold; both ways): the held-out squared error to the dense output,
      err(W') = tr(W'_R H_pp[R,R] W'_R^T) - 2 tr(W'_R H_pd[R,:] W~_d^T) + const,
  needs only the held-out fold's Grams (the constant does not depend on W'). The damping with the
  lowest summed error is then used for the fit on all examples.
* Structured OBS (ZipLM, arXiv 2302.04089, eq. 4): removing the column set S of W~ and re-fitting
  the rest optimally costs  rho_S = tr(W_S [(H^-1)_SS]^-1 W_S^T)  in summed squared output
  error; the re-fit is dW = -W_S [(H^-1)_SS]^-1 (H^-1)_S,: and the inverse Hessian of the
  remaining columns is the Schur complement H^-1 - (H^-1)_:,S [(H^-1)_SS]^-1 (H^-1)_S,:.
  ``removal_path`` applies that step by step (greedily, lowest rho first, or in a given order)
  and records the cumulative error: the reconstruction-error curve that allocation reads.
"""

from __future__ import annotations

import torch

from slimwhisper.errors import UserError


class SolveError(UserError, ValueError):
    """A Gram matrix stays singular even with heavy damping (too little or degenerate calibration data)."""


def ridge_lambda(H: torch.Tensor, damp: float) -> float:
    """lambda = damp x mean of the feature diagonal of H (``damp`` itself when that is not positive)."""
    n = H.shape[0] - 1
    mean = float(torch.diagonal(H)[:n].mean()) if n > 0 else 0.0
    return damp * mean if mean > 0 else damp


def damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H + lambda I on the feature columns (the last, constant column is not damped)."""
    n = H.shape[0] - 1
    lam = ridge_lambda(H, damp)
    out = H.clone()
    idx = torch.arange(n)
    out[idx, idx] += lam
    return out


def cholesky(H: torch.Tensor, damp: float, tries: int = 6) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of the damped H, retrying with 10x damping; (L, damp used)."""
    d = damp
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(damped(H, d))
        if int(info) == 0:
            return L, d
        d = max(d * 10, 1e-8)
    raise SolveError(
        f"a {H.shape[0]}x{H.shape[0]} Gram matrix is not positive definite even with damping {d / 10:g}; "
        "calibrate on more (and non-silent) utterances"
    )


def inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    L, _ = cholesky(H, damp)
    return torch.cholesky_inverse(L)


def refit(
    W_dense: torch.Tensor, H_pp: torch.Tensor, H_pd: torch.Tensor, keep: list[int], damp: float, anchor: bool = False
) -> torch.Tensor:
    """W' (out x |keep|+1, last column = bias) minimising the squared error to the dense output.

    ``W_dense`` is W~_d (out x n_d+1); ``H_pp`` (n_p+1)^2 and ``H_pd`` (n_p+1 x n_d+1) are in the
    pruned model's column positions (masked, not cut, so kept column c is dense column c);
    ``keep`` lists kept feature columns (the bias is added). ``anchor``: ridge toward the dense
    weights instead of zero (module docstring).
    """
    R = torch.tensor(list(keep) + [H_pp.shape[0] - 1], dtype=torch.long)
    H_RR = H_pp[R][:, R]
    L, used = cholesky(H_RR, damp)
    W64 = W_dense.to(torch.float64)
    rhs = H_pd[R] @ W64.T  # (|R|+1, out)
    if anchor:
        rhs[:-1] += ridge_lambda(H_RR, used) * W64[:, list(keep)].T
    return torch.cholesky_solve(rhs, L).T


def heldout_error(W_new: torch.Tensor, W_dense: torch.Tensor, H_pp: torch.Tensor, H_pd: torch.Tensor, keep: list[int]) -> float:
    """Squared error to the dense output on the fold whose Grams are given, up to a constant."""
    R = list(keep) + [H_pp.shape[0] - 1]
    Wn, Wd = W_new.to(torch.float64), W_dense.to(torch.float64)
    return float(torch.trace(Wn @ H_pp[R][:, R] @ Wn.T) - 2 * torch.trace(Wn @ H_pd[R] @ Wd.T))


def cv_damp(
    W_dense: torch.Tensor, folds: list[tuple[torch.Tensor, torch.Tensor]], keep: list[int], grid: tuple[float, ...], anchor: bool
) -> tuple[float, list[float]]:
    """(the damping of ``grid`` with the lowest 2-fold held-out error, the errors per damping).

    ``folds`` = [(H_pp, H_pd) of fold A, of fold B]; each damping is fitted on one fold and scored on
    the other, both ways. A fold without rows cannot be scored: then the first grid value is returned."""
    if len(folds) != 2 or any(float(h[-1, -1]) < 1 for h, _ in folds):
        return grid[0], []
    errors = []
    for d in grid:
        err = 0.0
        for (fit_pp, fit_pd), (ev_pp, ev_pd) in (folds, folds[::-1]):
            err += heldout_error(refit(W_dense, fit_pp, fit_pd, keep, d, anchor), W_dense, ev_pp, ev_pd, keep)
        errors.append(err)
    return grid[min(range(len(grid)), key=errors.__getitem__)], errors


def bias_fit(W_dense: torch.Tensor, H_pd: torch.Tensor, rows: int, W_kept: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """FLAP's bias compensation (arXiv 2312.11983, eq. 7), generalised to sequential inputs:
    keep the kept weights and choose the bias so the MEAN output equals the dense mean output,
    b' = W~_d E[x~_d] - W_R E[x_p,R]."""
    mean_d = H_pd[-1] / rows  # E[x~_d] (the constant row of the cross-Gram)
    mean_p = H_pd[:, -1] / rows  # E[x~_p]
    return W_dense.to(torch.float64) @ mean_d - W_kept.to(torch.float64) @ mean_p[list(keep)]


def full_refit(W_dense: torch.Tensor, H_pp: torch.Tensor, H_pd: torch.Tensor, damp: float, anchor: bool = False) -> torch.Tensor:
    """W* with every column kept: the start of an OBS path when statistics are sequential
    (the loss to the dense output then splits into ||(W' - W*) x_p||^2 + const)."""
    return refit(W_dense, H_pp, H_pd, list(range(H_pp.shape[0] - 1)), damp, anchor)


def _unit_errors(W: torch.Tensor, Hinv: torch.Tensor, units: list[list[int]], alive: list[int]) -> torch.Tensor:
    """rho_S for every alive unit (vectorised when all units are single columns)."""
    if all(len(units[u]) == 1 for u in alive):
        cols = torch.tensor([units[u][0] for u in alive])
        return W[:, cols].square().sum(0) / torch.diagonal(Hinv)[cols].clamp_min(1e-30)
    out = torch.empty(len(alive), dtype=torch.float64)
    for i, u in enumerate(alive):
        S = torch.tensor(units[u])
        WS = W[:, S]
        out[i] = torch.trace(WS @ torch.linalg.solve(Hinv[S][:, S], WS.T))
    return out


def obs_saliency(W: torch.Tensor, H: torch.Tensor, units: list[list[int]], damp: float) -> torch.Tensor:
    """rho_S of removing each unit alone (every other column kept and re-fitted)."""
    Hinv = inverse(H, damp)
    return _unit_errors(W.to(torch.float64), Hinv, units, list(range(len(units))))


def removal_path(
    W: torch.Tensor, H: torch.Tensor, units: list[list[int]], steps: int, damp: float, order: list[int] | None = None,
    chunk: int = 1,
) -> tuple[list[int], list[float]]:
    """Remove ``steps`` units (greedy lowest rho, or in ``order``); return the units in removal
    order and the cumulative squared output error after each one (with the optimal re-fit).

    ``chunk`` > 1 removes that many units per OBS step (the ``chunk`` lowest rho at once, their
    joint error rho_S spread evenly over them): a BLAS-3 update instead of many rank-1 ones, for
    FFN blocks with thousands of neurons. ``chunk=1`` is ZipLM's exact greedy path.
    """
    W = W.to(torch.float64).clone()
    Hinv = inverse(H, damp)
    alive = list(range(len(units)))
    removed, errors, total = [], [], 0.0
    while len(removed) < steps:
        m = min(chunk, steps - len(removed))
        if order is None:
            errs = _unit_errors(W, Hinv, units, alive)
            picked = [alive[int(i)] for i in torch.argsort(errs)[:m]]
        else:
            picked = order[len(removed) : len(removed) + m]
        S = torch.tensor([c for u in picked for c in units[u]])
        block = torch.linalg.inv(Hinv[S][:, S])
        WS = W[:, S]
        err = float(torch.trace(WS @ block @ WS.T))
        rows_S = Hinv[S]  # (|S|, n+1)
        W -= (WS @ block) @ rows_S
        Hinv -= Hinv[:, S] @ block @ rows_S
        Hinv[S] = 0.0
        Hinv[:, S] = 0.0
        Hinv[S, S] = 1.0  # keeps the diagonal finite for columns already gone (never picked again)
        for _ in picked:
            total += max(err, 0.0) / len(picked)
            errors.append(total)
        removed += picked
        gone = set(picked)
        alive = [u for u in alive if u not in gone]
    return removed, errors
