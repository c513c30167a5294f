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


def damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H + lambda I on the feature columns (the last, constant column is not damped)."""
    n = H.shape[0] - 1
    diag = torch.diagonal(H)[:n]
    lam = damp * float(diag.mean()) if n > 0 and float(diag.mean()) > 0 else damp
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


def refit(W_dense: torch.Tensor, H_pp: torch.Tensor, H_pd: torch.Tensor, keep: list[int], damp: float) -> torch.Tensor:
    """W' (out x |keep|+1, last column = bias) minimising the squared error to the dense output.

    ``W_dense`` is W~_d (out x n_d+1); ``H_pp`` (n_p+1)^2 and ``H_pd`` (n_p+1 x n_d+1) are in the
    pruned model's column positions; ``keep`` lists kept feature columns (the bias is added).
    """
    R = torch.tensor(list(keep) + [H_pp.shape[0] - 1], dtype=torch.long)
    L, _ = cholesky(H_pp[R][:, R], damp)
    rhs = H_pd[R] @ W_dense.T.to(torch.float64)  # (|R|+1, out)
    return torch.cholesky_solve(rhs, L).T


def bias_fit(W_dense: torch.Tensor, H_pd: torch.Tensor, rows: int, W_kept: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """FLAP's bias compensation (arXiv 2312.11983, eq. 7), generalised to sequential inputs:
    keep the kept weights and choose the bias so the MEAN output equals the dense mean output,
    b' = W~_d E[x~_d] - W_R E[x_p,R]."""
    mean_d = H_pd[-1] / rows  # E[x~_d] (the constant row of the cross-Gram)
    mean_p = H_pd[:, -1] / rows  # E[x~_p]
    return W_dense.to(torch.float64) @ mean_d - W_kept.to(torch.float64) @ mean_p[list(keep)]


def full_refit(W_dense: torch.Tensor, H_pp: torch.Tensor, H_pd: torch.Tensor, damp: float) -> torch.Tensor:
    """W* with every column kept: the start of an OBS path when statistics are sequential
    (the loss to the dense output then splits into ||(W' - W*) x_p||^2 + const)."""
    return refit(W_dense, H_pp, H_pd, list(range(H_pp.shape[0] - 1)), damp)


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
