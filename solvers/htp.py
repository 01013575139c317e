"""Hard-thresholding pursuit on a linear program's support at a fixed count of weights.

At a target sparsity, the l1 program chooses which weights to keep and the refit
(:func:`solvers.refit`) fits them by least squares. The l1 support is a good start but not the
best set of that size: the l1 weight shrinks correlated inputs together and keeps some that a
least-squares fit does not need. This module improves the support at the same count, for a
program without inequalities (a linear layer, or the linear candidate of a ReLU layer), by
hard-thresholding pursuit (Foucart, SIAM J. Numer. Anal. 2011) on the whole layer::

    f(W) = ||X W^T - Y||_F^2 = sum_m  w_m^T G w_m - 2 c_m^T w_m + ||y_m||^2,
    G = X^T X,  C = X^T Y                                       (float64, built once)

    round:  Z = W - eta * grad f(W)   (in column-scaled coordinates, below)
            S = the K largest |Z| over the layer's counted entries, plus the uncounted
                entries of the start's support
            W' = least squares on S for the neurons whose support changed (the refit's
                 factors and corrections, from G: :func:`solvers.refit.support_lstsq`)
            keep W' where it lowers f (below)

Everything after the Gram pass costs O(N^2 M) per round plus the least squares, whatever the
number of rows. The count ``K`` is the layer's (a neuron may gain a weight that another
loses), as the target sparsity counts the layer. A neuron whose count the proposal leaves
unchanged takes its new weights when they lower its f; those whose counts moved take theirs
together, when they lower f in total (their count changes sum to zero, so the layer keeps
K). f only falls: weights feasible for the program at some epsilon stay feasible.

Coordinates: input j is scaled by ``sqrt(G_jj)`` (``||x_j||``), so that ``|Z|`` ranks a weight
by its effect on the output (``|w_j| ||x_j||``, Wanda's score, for a kept weight; the
gradient in those units for a zero one) whatever the inputs' scales. The step ``eta`` is in
units of ``1 / lambda_max`` of the scaled Gram matrix. The gradient step at ``1 / lambda_max``
(plain HTP) moved 0 of 78,643 weights on a 512 -> 512 layer with correlated inputs, so it
starts at :data:`HTP_STEP` and adapts: times :data:`HTP_GROW` after a round whose whole
proposal lowered f, divided by :data:`HTP_SHRINK` otherwise, doubled while the proposed
support is the current one.

Measured on bench_scale's 512 -> 512 ReLU layer (16,384 correlated rows, 70%, the linear
program's support from the pipeline, one thread): the held-out post-ReLU error fell from
0.2288 to 0.2224 in 3 rounds, 0.2219 in 5 (the default: 1.9 s more than the layer's 3.3 s
without it) and 0.2212 in 8 (SparseGPT: 0.2788). Starting at ``eta = 1`` stopped at 0.2239
(16 rounds); growing the step by 1.5 and shrinking it by 4 gave 0.2219 in 8 rounds (0.2225
from a first step of 1000). A variant with each neuron's count fixed (each neuron accepting on its own) stalled at 0.2233:
moving weights between neurons is where much of the gain is. Rounds are capped by
:data:`HTP_ROUNDS` and by work (:data:`HTP_MAX_WORK` multiply-adds), so on a wide layer the
pursuit stops early, or does not start, rather than cost more than the solve (bench_scale's
2304 -> 256 layer: 14 rounds would gain 2.5% of held-out error for 79 s on top of 29 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .admm import TINY
from .problem import NetTrimProblem
from .refit import (FACTOR_BYTES, PROX_REL, _chunks, compact_support, padded_gram,
                    support_factors, support_lstsq)

__all__ = ["HTP_GROW", "HTP_MAX_WORK", "HTP_ROUNDS", "HTP_SHRINK", "HTP_STEP", "PursuitResult",
           "hard_threshold_pursuit"]

#: Rounds of the pursuit (each one proposal, and least squares where it changes the support).
HTP_ROUNDS = 5
#: Multiply-adds the pursuit may spend: the Gram pass ``P N (N + M)``, per round the gradient
#: GEMM ``M N^2`` and the least squares (``k_m^3 / 3 + 8 k_m^2`` per neuron refit). A round
#: that would pass it is not run.
HTP_MAX_WORK = 2.0e10
#: First step, in units of ``1 / lambda_max`` of the column-scaled Gram matrix.
HTP_STEP = 300.0
#: The step's factor after a round whose whole proposal lowered f, and its divisor otherwise.
HTP_GROW = 1.25
HTP_SHRINK = 2.0
#: New weights count as lower when they lower f by more than this fraction of ``||Y||^2``
#: (the layer's, or the neuron's for a neuron taken on its own).
HTP_RTOL = 1e-12
#: Power iterations for ``lambda_max`` (the step's unit: a few digits suffice).
POWER_ITERATIONS = 30
#: Proximal corrections of each least squares (as the refit's, :func:`solvers.refit.refit`).
LSQ_CORRECTIONS = 3


@dataclass
class PursuitResult:
    """The pursuit's weights and what it did: ``rounds`` proposals, ``kept`` of them lowered
    the residual; ``residual_before`` / ``residual`` are ``||X W^T - Y||_F`` at the start and
    end; ``moved`` the entries in the final support that were not in the start's;
    ``work`` the multiply-adds spent; ``stopped`` why it ended."""
    W: Any
    rounds: int
    kept: int
    residual_before: float
    residual: float
    moved: int
    work: float
    stopped: str


def hard_threshold_pursuit(problem: NetTrimProblem, W: Any, *, counted: Any = None,
                           rounds: Optional[int] = None, max_work: Optional[float] = None,
                           step: Optional[float] = None) -> PursuitResult:
    """Improve the support of ``W`` at the same number of counted nonzeros (module docstring).

    Parameters
    ----------
    problem : NetTrimProblem
        A program without inequalities (``relu=False``); its ``program_tensors`` (the target
        less an offset S) are fitted. epsilon plays no part.
    W : Tensor of shape (M, N)
        Start: least squares on its own support (the refit's output), so that every kept
        round improves on it.
    counted : bool Tensor of shape (M, N), optional
        The entries the count is over, which the pursuit may move (default: all). The others
        keep their start membership (a bias column: in the support if it was).
    rounds, max_work, step
        Default :data:`HTP_ROUNDS`, :data:`HTP_MAX_WORK` and :data:`HTP_STEP`.

    Returns
    -------
    PursuitResult
        ``W`` in the dtype and device of the problem's X: as many counted nonzeros as the
        start (a kept round changes the support, not its size; inputs zero on every row are
        never chosen) and a residual at most the start's.
    """
    rounds = HTP_ROUNDS if rounds is None else rounds
    max_work = HTP_MAX_WORK if max_work is None else max_work
    step = HTP_STEP if step is None else step
    if problem.relu:
        raise ValueError("hard_threshold_pursuit: the problem has inequalities (relu=True); "
                         "it fits only a program without them")
    X, Y, _ = problem.program_tensors()
    P, N, M = problem.shape
    W = torch.as_tensor(W, device=X.device, dtype=X.dtype)
    if tuple(W.shape) != (M, N):
        raise ValueError(f"W must have shape {(M, N)}, got {tuple(W.shape)}")
    free = torch.ones(M, N, dtype=torch.bool, device=X.device) if counted is None else \
        torch.as_tensor(counted, device=X.device).bool()
    if tuple(free.shape) != (M, N):
        raise ValueError(f"counted must have shape {(M, N)}, got {tuple(free.shape)}")
    work = 2.0 * P * N * (N + M)
    if rounds <= 0 or work + M * N * N > max_work:   # not even one round: no Gram pass
        residual = problem.residual(W)
        return PursuitResult(W=W, rounds=0, kept=0, residual_before=residual,
                             residual=residual, moved=0, work=0.0,
                             stopped="rounds" if rounds <= 0 else "work")
    X64, Y64 = X.to(torch.float64), Y.to(torch.float64)
    G = X64.T @ X64
    C = (X64.T @ Y64).T.contiguous()                       # (M, N)
    y_sq = (Y64 * Y64).sum(0)                              # (M,)
    total_sq = float(y_sq.sum())
    W64 = W.to(torch.float64)

    def residual_sq(Wm: torch.Tensor, C_rows: torch.Tensor, y_rows: torch.Tensor):
        return ((Wm @ G) * Wm).sum(1) - 2.0 * (Wm * C_rows).sum(1) + y_rows

    f_rows = residual_sq(W64, C, y_sq)
    start_sq = float(f_rows.sum())
    start_support = W != 0
    fix = start_support & ~free           # kept as they are
    K = int((start_support & free).sum())
    d = G.diagonal().clone()
    live = d > 0                          # an input zero on every row is never chosen
    choosable = int((free & live[None, :]).sum())
    scale = torch.where(live, d.sqrt(), torch.ones_like(d))     # ||x_j||
    Gs = G / scale[:, None] / scale[None, :]
    lam_max = _largest_eigenvalue(Gs)
    Gp = padded_gram(G)
    delta = PROX_REL * max(float(d.max()), TINY)   # the refit's proximal weight
    eta = step / lam_max if lam_max > 0 else 0.0
    support = start_support.clone()
    kept = done = 0
    stopped = "rounds"
    tol = HTP_RTOL * total_sq
    tol_rows = HTP_RTOL * y_sq
    for _ in range(rounds):
        if K == 0 or eta == 0.0:
            stopped = "nothing to choose"
            break
        if work + M * N * N > max_work:
            stopped = "work"
            break
        done += 1
        work += M * N * N
        grad = W64 @ G - C                                          # (M, N), 1/2 of it
        Z = (W64 * scale - eta * grad / scale).abs()
        Z.masked_fill_(~free | ~live[None, :], -math.inf)
        proposal = fix.clone()
        proposal.view(-1)[torch.topk(Z.flatten(), min(K, choosable)).indices] = True
        changed = (proposal != support).any(1).nonzero().flatten()
        if changed.numel() == 0:
            eta *= 2.0
            continue
        # the least squares: each neuron's factor and solves
        k = proposal[changed].sum(1).to(torch.float64)
        cost = float((k ** 3 / 3 + 8 * k * k).sum())
        if work + cost > max_work:
            stopped = "work"
            break
        work += cost
        W_new = _least_squares(Gp, C, proposal, changed, delta).to(X.dtype).to(torch.float64)
        if not bool(torch.isfinite(W_new).all()):
            eta /= HTP_SHRINK
            continue
        f_new = residual_sq(W_new, C[changed], y_sq[changed])
        gain = f_rows[changed] - f_new                          # > 0: that neuron improved
        # a neuron whose count is unchanged is kept on its own when it improved (the layer's
        # count stays); those whose counts moved are kept together when they improved in
        # total (their count changes sum to 0)
        same = proposal[changed].sum(1) == support[changed].sum(1)
        take = same & (gain > tol_rows[changed])
        if float(gain[~same].sum()) > tol:
            take |= ~same
        if bool(take.any()):
            rows = changed[take]
            W64[rows] = W_new[take]
            f_rows[rows] = f_new[take]
            support[rows] = proposal[rows]
            kept += 1
        # the step grows while whole proposals improve the layer, shrinks when one does not
        eta = eta * HTP_GROW if float(gain.sum()) > tol else eta / HTP_SHRINK
    final_sq = max(float(f_rows.sum()), 0.0)
    return PursuitResult(
        W=W64.to(X.dtype), rounds=done, kept=kept,
        residual_before=problem.full_residual(math.sqrt(max(start_sq, 0.0))),
        residual=problem.full_residual(math.sqrt(final_sq)),
        moved=int((support & ~start_support).sum()), work=work, stopped=stopped)


def _least_squares(Gp: torch.Tensor, C: torch.Tensor, support: torch.Tensor,
                   rows: torch.Tensor, delta: float) -> torch.Tensor:
    """(len(rows), N) float64: each row's least squares on its support from the Gram matrix,
    with the refit's factors and corrections (:func:`solvers.refit.support_lstsq`), in groups
    of neurons whose factors fit :data:`solvers.refit.FACTOR_BYTES`."""
    S = support[rows]
    out = torch.zeros(S.shape, dtype=torch.float64, device=S.device)
    sizes = S.sum(1)
    nonempty = torch.nonzero(sizes > 0).flatten()
    for group in _chunks(sizes[nonempty].cpu(), FACTOR_BYTES):
        group = nonempty[group.to(S.device)]
        idx, valid = compact_support(S[group])
        L = support_factors(Gp, idx, valid, delta)
        coef = support_lstsq(L, torch.gather(C[rows[group]], 1, idx), valid, delta,
                             LSQ_CORRECTIONS)
        out[group] = torch.zeros_like(out[group]).scatter_add_(1, idx, coef)
    return out


def _largest_eigenvalue(A: torch.Tensor) -> float:
    """``lambda_max`` of a symmetric PSD matrix by power iteration (an estimate from below;
    the step is heuristic, so a few digits suffice)."""
    v = torch.ones(A.shape[0], dtype=A.dtype, device=A.device)
    lam = 0.0
    for _ in range(POWER_ITERATIONS):
        u = A @ v
        norm = float(torch.linalg.vector_norm(u))
        if norm == 0.0:
            return 0.0
        lam, v = norm / float(torch.linalg.vector_norm(v)), u / norm
    return lam
