"""ALPS: the l0-constrained layer reconstruction solved by ADMM, then refit on its support.

Meng, Behdin, Wang & Mazumder, "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning
for Large Language Models", NeurIPS 2024. Written here from the paper's description.

Symbols (one layer; PyTorch's convention, samples are rows):

    X   (P, N)  the layer input          W0  (M, N)  the dense weight
    H   (N, N)  X^T X + lambda I, lambda = damp * mean(diag(X^T X))   (damped Gram matrix)
    k           weights kept: M N - round(sparsity M N)  (or n zeros in every m, ``nm``)

Program::

    minimize_W  f(W) = 1/2 tr((W - W0) H (W - W0)^T)      (= 1/2 ||X (W - W0)^T||_F^2 + ridge)
    subject to  ||W||_0 <= k                              (or the N:M pattern)

Steps:

1. **Scale** by ``d = sqrt(diag(H))``: ``H~ = D^-1 H D^-1`` has a unit diagonal and ``W~ = W D``
   (the objective keeps its form; the projection then ranks ``|W_ij| d_j``, Wanda's score).
2. **Factor once**: ``H~ = Q diag(L) Q^T`` (``eigh``), so ``(H~ + rho I)^-1 = Q diag(1 /
   (L + rho)) Q^T`` for every rho without refactoring.
3. **ADMM** on the split ``W = S`` (S sparse), with the (unscaled) dual ``V``::

       W = (W0 H~ - V + rho S) (H~ + rho I)^-1           # the quadratic step
       S = project(W + V / rho)                          # keep the k largest |.| (or N:M)
       V = V + rho (W - S)

   **rho schedule**: every :data:`UPDATE_EVERY` iterations, ``s`` = the entries that entered or
   left the support since the last check; rho is multiplied by 1.3 when ``s >= 0.1 k``, 1.2
   when ``s >= 0.005 k``, 1.1 when ``s >= 1``. A support that does not move at all before
   rho ever grew means rho started too large: it is divided by 5 and the ADMM restarts from
   W0. Growing rho makes the iterates settle on one support (the paper's convergence
   guarantee rests on it); rho is capped at :data:`RHO_MAX`.
   **Stopping rule**: the support unchanged over a check after rho has grown, or, after
   :data:`MIN_ITER` iterations, fewer than ``STOP_FRACTION * k`` entries changed; at most
   ``max_iter`` iterations.
4. **Refit on the final support** ``project(W)``: ``f`` minimized over the weights on it by
   preconditioned conjugate gradients, all rows at once (the products with ``H~`` masked to
   the support; the preconditioner is ``diag(H)``, the identity after step 1's scaling),
   started from the ADMM's weights, until every row's residual is below ``cg_tol`` of its
   starting residual or ``cg_iter`` iterations.

The bias is kept, as by SparseGPT. Weights that are already zero count towards the k removed
and stay zero (the convention of :mod:`nettrim.baselines`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..checks import check_sparsity
from ..results import LayerPruneResult, layer_result
from .masks import check_damp, check_nm, n_zeros, nm_mask, prepare

__all__ = ["ALPS_CG_ITER", "ALPS_MAX_ITER", "ALPS_RHO", "MIN_ITER", "RHO_MAX", "STOP_FRACTION",
           "UPDATE_EVERY", "alps"]

#: Initial rho (in the scaled problem, where ``diag(H~) = 1``).
ALPS_RHO = 0.1
#: ADMM iterations at most.
ALPS_MAX_ITER = 300
#: Iterations between two looks at the support (the rho schedule's period).
UPDATE_EVERY = 3
#: The early stop (fewer than ``STOP_FRACTION * k`` support changes) applies after this many.
MIN_ITER = 30
#: Early stop: fraction of k.
STOP_FRACTION = 3e-4
#: rho is capped here.
RHO_MAX = 1e6
#: Conjugate-gradient iterations of the refit at most (the layers here are small: the refit
#: runs to its tolerance; the paper's code stops large LLM layers after 10).
ALPS_CG_ITER = 100
#: Refit tolerance: a row stops when its residual is this fraction of its starting one.
CG_TOL = 1e-6


def _projector(W0: torch.Tensor, sparsity: Any, nm: Any):
    """``project(Z) -> (S, support)``: the k largest ``|Z|`` (or ``n`` zeros in every ``m`` of
    a row), weights zero in W0 never kept; and the number kept."""
    M, N = W0.shape
    held = W0 == 0
    if nm is not None:
        n, m = check_nm(nm, sparsity, N)

        def project(Z):
            scores = Z.abs().masked_fill(held, -1.0)
            drop = nm_mask(scores, n, m) | held
            return Z.masked_fill(drop, 0.0), ~drop

        return project, int((~(nm_mask(W0.abs().masked_fill(held, -1.0), n, m) | held)).sum())
    s = check_sparsity(sparsity)
    keep = min(M * N - n_zeros(M * N, s), int((~held).sum()))

    def project(Z):
        support = torch.zeros(M * N, dtype=torch.bool, device=Z.device)
        if keep > 0:
            scores = Z.abs().masked_fill(held, -1.0).flatten()
            support[torch.topk(scores, keep, sorted=False).indices] = True
        support = support.reshape(M, N)
        return Z * support, support

    return project, keep


def _admm(W0, C, Q, L, project, keep, rho, max_iter):
    """Step 3: returns ``(W, iterations, final rho)``."""
    S, support = project(W0)
    start = (S.clone(), support.clone())
    W, V = W0.clone(), torch.zeros_like(W0)
    grown = False
    last = support
    it = 0
    while it < max_iter:
        it += 1
        # W = (W0 H~ - V + rho S) (H~ + rho I)^-1, through the eigendecomposition
        W = ((C - V + rho * S) @ Q / (L + rho)) @ Q.T
        S, support = project(W + V / rho)
        V = V + rho * (W - S)
        if it % UPDATE_EVERY:
            continue
        changed = int((support != last).sum())
        last = support
        if changed >= 0.1 * keep:
            rho, grown = rho * 1.3, True
        elif changed >= 0.005 * keep:
            rho, grown = rho * 1.2, True
        elif changed >= 1:
            if grown:
                rho *= 1.1
            else:   # the support barely moves from the start: rho is too large to explore
                rho /= 5.0
                W, V = W0.clone(), torch.zeros_like(W0)
                S, last = start[0].clone(), start[1].clone()
        elif grown:
            break   # the support is settled
        else:
            rho /= 5.0
        rho = min(rho, RHO_MAX)
        if it >= MIN_ITER and changed < STOP_FRACTION * keep:
            break
    return W, it, rho


def _refit(W: torch.Tensor, W0: torch.Tensor, H: torch.Tensor, support: torch.Tensor,
           max_iter: int, tol: float) -> tuple[torch.Tensor, int]:
    """Step 4: ``min_W 1/2 tr((W - W0) H (W - W0)^T)`` with ``W = 0`` off ``support``, by
    conjugate gradients on every row at once (``H`` has a unit diagonal: the Jacobi
    preconditioner is the identity). Returns ``(W, iterations)``."""
    mask = support.to(W.dtype)
    W = W * mask
    R = ((W0 - W) @ H) * mask            # minus the gradient, on the support
    P = R.clone()
    rr = (R * R).sum(1)
    stop = (tol ** 2) * rr
    it = 0
    for it in range(1, max_iter + 1):
        if bool((rr <= stop).all()):
            it -= 1
            break
        HP = (P @ H) * mask
        pHp = (P * HP).sum(1)
        alpha = torch.where(pHp > 0, rr / torch.where(pHp > 0, pHp, torch.ones_like(pHp)),
                            torch.zeros_like(pHp))
        W = W + alpha[:, None] * P
        R = R - alpha[:, None] * HP
        rr_new = (R * R).sum(1)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)),
                           torch.zeros_like(rr))
        P = R + beta[:, None] * P
        rr = rr_new
    return W, it


def alps(W: Any, X: Any, *, sparsity: Any = None, bias: Any = None, relu: bool = True,
         Y: Any = None, nm: Any = None, damp: float = 0.01, rho: float = ALPS_RHO,
         max_iter: int = ALPS_MAX_ITER, cg_iter: int = ALPS_CG_ITER) -> LayerPruneResult:
    """ALPS (Meng et al. 2024): ADMM on the l0-constrained reconstruction, then a CG refit.

    See the module docstring for the program, the rho schedule and the stopping rule.

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
        The dense weight (a conv weight flattened to ``(out, in * kh * kw)``).
    X : ndarray or Tensor of shape (P, N)
        The layer input (required).
    sparsity : float in [0, 1)
        Fraction of the layer's weights to zero (exactly ``round(sparsity * M * N)``). May be
        omitted with ``nm``; otherwise it must equal ``n / m``.
    bias : Tensor of shape (M,), optional
        Kept unchanged.
    relu : bool, default True
        Whether the layer's output goes through a ReLU (for the reported error only: ALPS
        reconstructs the pre-activations).
    Y : Tensor of shape (P, M), optional
        Target of the reported error (default: the unpruned output).
    nm : (int, int) or str, optional
        ``n`` zeros in every ``m`` consecutive weights of a row (``"2:4"``); N must be a
        multiple of m.
    damp : float, default 0.01
        ``lambda = damp * mean(diag(X^T X))``.
    rho : float, default 0.1
        Initial ADMM penalty (scaled problem).
    max_iter : int, default 300
        ADMM iterations at most.
    cg_iter : int, default 100
        Conjugate-gradient iterations of the refit at most.

    Returns
    -------
    LayerPruneResult
        Computed in float64, returned in W's dtype. The report adds ``iterations`` (ADMM),
        ``cg_iterations``, ``rho`` (final) and ``reconstruction_before_refit`` /
        ``reconstruction`` (``f(W)`` relative to ``1/2 tr(W0 H W0^T)``).
    """
    t0 = time.perf_counter()
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=True)
    damp = check_damp(damp)
    for name, value in (("rho", rho),):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            msg = f"{name} must be a positive number, got {value!r}"
            raise ValueError(msg)
    for name, value in (("max_iter", max_iter), ("cg_iter", cg_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = f"{name} must be an integer >= 0, got {value!r}"
            raise ValueError(msg)
    if nm is None and sparsity is None:
        check_sparsity(sparsity)   # the error naming sparsity
    W64 = W.to(torch.float64)
    project, keep = _projector(W64, sparsity, nm)
    X64 = X.to(torch.float64)
    H = X64.T @ X64
    lam = damp * float(torch.diagonal(H).mean())
    if not lam > 0:
        lam = 1.0   # X = 0: any positive ridge (the reconstruction is then W = W0 on the support)
    H.diagonal().add_(lam)
    d = torch.sqrt(torch.diagonal(H))
    Hs = H / d[:, None] / d[None, :]                 # unit diagonal
    W0s = W64 * d                                     # W~ = W D
    L, Q = torch.linalg.eigh(Hs)
    C = W0s @ Hs
    Ws, iterations, rho_final = _admm(W0s, C, Q, L, project, keep, float(rho), max_iter)
    S, support = project(Ws)

    def objective(Z):
        E = Z - W0s
        return 0.5 * float(((E @ Hs) * E).sum())

    base = 0.5 * float(((W0s @ Hs) * W0s).sum())
    before = objective(S)
    refit, cg_its = _refit(S, W0s, Hs, support, cg_iter, CG_TOL)
    W_new = refit / d
    extra = dict(iterations=iterations, cg_iterations=cg_its, rho=rho_final, damp=damp,
                 reconstruction_before_refit=before / base if base > 0 else 0.0,
                 reconstruction=objective(refit) / base if base > 0 else 0.0)
    if nm is not None:
        extra["nm"] = check_nm(nm, sparsity, W.shape[1])
    return layer_result("alps", W, W_new, X, bias, Y, relu, t0, extra)
