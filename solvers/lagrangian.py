"""The Net-Trim program at a target number of weights, through its Lagrangian.

The ball constraint is the only thing that couples the M neurons, and it couples them through
one number, its multiplier. With symbols as in :mod:`solvers.problem`::

    minimize  lam sum penalty |W|  +  f(X W^T)                                   (L_lam)
    f(Z) = 1/2 || (Z - Y) on Omega ||_F^2  +  indicator(Z <= V off Omega)

has the KKT conditions of the program whose epsilon is the residual
``||(X W^T - Y) on Omega||_F`` of its own solution (lam is the inverse of the ball's multiplier;
Boyd & Vandenberghe 5.5.3). So every solution of ``L_lam`` solves the program for the epsilon
it reaches, and the number of nonzeros falls as lam grows: a target count is reached by
steering lam, with no search over epsilon. For a fixed lam, ``L_lam`` is M independent
problems, one per neuron: each neuron gets its own ADMM penalty ``rho_m`` (residual balancing
per neuron) and its support settles on its own clock. lam is adapted while the iterations run,
``lam *= (nnz / k) ** NNZ_GAIN`` every :data:`ADAPT_EVERY` iterations, the gain halved at each
crossing of the target.

ADMM in scaled form (``W3 (N, M)``, ``W1 (P, M)``, ``W2 (N, M)``; over-relaxation and the one
factorization of ``X^T X + I`` as in :mod:`solvers.admm`)::

    Z  = X W3 - U1
    W1 = (Y + rho Z) / (1 + rho)  on Omega ;  min(Z, V)  off Omega               # prox of f
    W2 = S_{lam penalty / rho}(W3 - U2)                                         # soft threshold
    W3 = (X^T X + I)^{-1} (X^T (W1 + U1) + W2 + U2)
    U1 = U1 + W1 - X W3 ;   U2 = U2 + W2 - W3

Stops: ``OPTIMAL`` when every neuron's primal and dual residuals meet ``eps_abs``/``eps_rel``
with the count within :data:`NNZ_TOL` and the inequalities met (``feas_tol``). With
``settle_tol``, earlier, once the support has settled (at most ``settle_tol * M * N`` entries
changed at each of :data:`SETTLE_WINDOW` consecutive iterations) with the count within
:data:`NNZ_SETTLE`: ``OPTIMAL_INACCURATE`` when the iterate meets the inequalities, else
``SETTLED`` (a support to refit on, not a solution; the default pruning pipeline refits it and
checks the refit).

Why: the ball ADMM of :func:`solvers.admm.solve_admm` ties every neuron to one global norm, its
support settles only as the ball's multiplier does, and a target sparsity needs a search over
epsilon on top. Measured on LeNet-300-100's 784 -> 300 layer (5,000 MNIST rows, one thread):
the ball ADMM took 440 iterations at the epsilon of 83% sparsity (and the search several such
solves); this controller reaches 83% and a settled support in 62 iterations from zero, and the
reweighted solve after it 90% in about 20. (Steering lam to a residual instead was tried and
oscillated on cascade layers; epsilon mode keeps the ball ADMM.)
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch

from .admm import (RHO_ADAPT, RHO_RANGE, RHO_START, TINY, ADMMSettings, Callback,
                   _Ball, _check_warm_start, _Factor, _feasibility, checked_settings, l1_result,
                   soft_threshold)
from .problem import NetTrimProblem, as_tensor
from .result import NetTrimResult
from .status import MAX_ITER, OPTIMAL, OPTIMAL_INACCURATE, SETTLED
from .working_set import GROW_EVERY, iterates_on_working_set, working_rows_for

__all__ = ["solve_lagrangian", "ADAPT_EVERY", "SETTLE_WINDOW", "SETTLE_TOL", "NNZ_TOL",
           "NNZ_SETTLE"]

#: The data term's treatment of the inequalities (see ``loss`` of :func:`solve_lagrangian`).
LOSSES = ("hard", "soft")
#: Which rows the iterations touch (see ``rows`` of :func:`solve_lagrangian`).
ROWS = ("auto", "all", "working-set")
#: Period (iterations) of the residual balancing and of the lam update.
ADAPT_EVERY = 5
#: Exponent of the count controller ``lam *= (nnz / k) ** NNZ_GAIN``.
NNZ_GAIN = 0.7
#: Largest factor of one lam update (either way).
LAM_STEP = 8.0
#: The count controller acts until ``k - NNZ_TOL M N <= nnz <= k + NNZ_TOL M N`` (one weight
#: more at least); a settled stop takes the count within NNZ_SETTLE (prune's sparsity
#: tolerance, 0.5 points; two weights more at least).
NNZ_TOL = 0.002
NNZ_SETTLE = 0.005
#: A settled support: at most ``settle_tol * M * N`` changes at each of SETTLE_WINDOW iterations.
SETTLE_TOL = 2e-3
SETTLE_WINDOW = 5
#: Count mode: after this many crossings of the target (the count jumps over it), a settled
#: support with up to JUMP_BAND times the target more weights is accepted (prune trims them).
MAX_CROSSINGS = 8
#: ... and STREAK checks in a row on one side of the target give one halving back.
STREAK = 3
JUMP_BAND = 0.1
#: lam stays above LAM_FLOOR times its start (the count is capped at the weights that can
#: move, so a smaller lam has nothing left to add)
LAM_FLOOR = 1e-12
#: lam above LAM_CEIL times its start ends the solve (MAX_ITER): the inequalities keep more
#: weights than the count asks for.
LAM_CEIL = 1e8
#: First lam of the count controller: this fraction of the correlation |X^T Y| / penalty at
#: the target's rank (the lasso's entry point for an orthogonal design; correlated inputs
#: need less shrinkage, hence the fraction).
LAM_START = 0.1


def _correlations(X: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
                  weight: Optional[torch.Tensor]) -> torch.Tensor:
    """``|X^T (Y on Omega)| / penalty`` (N, M), 0 where the penalty is 0."""
    corr = (X.T @ Y.masked_fill(~active, 0.0)).abs()
    if weight is not None:
        corr = (corr / weight.clamp(min=TINY)).masked_fill_(weight == 0, 0.0)
    return corr


def _initial_lam(corr: torch.Tensor, keep: int) -> float:
    """LAM_START times the correlation at the target's rank (1 when there is none)."""
    values = corr.flatten()
    values = values[values > 0]
    if values.numel() == 0 or keep <= 0:
        return 1.0
    return LAM_START * float(torch.topk(values, min(keep, values.numel())).values[-1])


def solve_lagrangian(problem: NetTrimProblem, *, nonzeros: int, W0: Any = None,
                     penalty: Any = None, lam: Optional[float] = None,
                     rho: Optional[float] = None, settle_tol: Optional[float] = None,
                     eps_abs: float = ADMMSettings.eps_abs, eps_rel: float = ADMMSettings.eps_rel,
                     feas_tol: float = ADMMSettings.feas_tol,
                     max_iter: int = ADMMSettings.max_iter, callback: Callback = None,
                     loss: str = "hard", rows: str = "auto") -> NetTrimResult:
    """Solve the Net-Trim program through its Lagrangian (see the module docstring).

    Parameters
    ----------
    problem : NetTrimProblem
        The program; numpy in, numpy out; torch runs on its device.
    W0 : ndarray or Tensor of shape (M, N), optional
        Warm start.
    penalty : ndarray or Tensor of shape (M, N), optional
        Weighted l1 (0 leaves an entry unpenalized, e.g. a bias column).
    nonzeros : int
        Steer lam to this many nonzero penalized weights; the result solves the program at
        the epsilon it reaches, ``result.epsilon`` (``problem.epsilon`` is not used).
        Where a group of weights enters and leaves together, so that the count jumps over
        the target, each crossing halves the controller's gain (STREAK checks in a row on
        one side give a halving back), and after
        :data:`MAX_CROSSINGS` a support on the denser side is accepted (the result keeps a
        few more weights than asked; prune trims them). The count is
        capped at the weights that can move (an input that is always zero, or a neuron that
        never fires, leaves its weights at 0 for every lam).
    lam : float, optional
        Initial lam (a related solve's ``result.lam``); default: a guess from the data.
    rho : float, optional
        Initial per-neuron ADMM penalty (default 1: the data term has weight 1 on the scaled
        data; measured on the 784 -> 300 layer: 62 iterations to a settled support from 1,
        266 from solve_admm's 1 / mean|W| rule).
    settle_tol : float, optional
        Enable the settled-support stop (``OPTIMAL_INACCURATE``) with this fraction.
    loss : {"hard", "soft"}, default "hard"
        ``"soft"``: the inequalities become the penalty ``1/2 ||max(0, X W^T - V) off
        Omega||^2`` of :func:`solvers.refit.refit_soft` (the prox off Omega is then ``Z`` below
        V and ``(V + rho Z) / (1 + rho)`` above it), an upper bound on the post-ReLU error of
        a parallel layer; the result then solves that penalized program, not the hard one.
    rows : {"auto", "all", "working-set"}, default "auto"
        ``"all"``: every iteration touches all P rows. ``"working-set"`` (ReLU programs): the
        active rows through per-neuron Gram matrices and the inequalities on a working set of
        rows grown by constraint generation (:mod:`solvers.working_set`); the answer is
        checked on all rows before any stop, so the statuses mean what they mean with
        ``"all"``. ``"auto"``: the working set where :func:`solvers.working_set.use_working_set`
        says it is cheaper (many rows per input).
    eps_abs, eps_rel, feas_tol, max_iter, callback
        As in :func:`solvers.solve_admm`.

    Returns
    -------
    NetTrimResult
        ``solver="admm-lagrangian"``; ``lam`` the final weight. ``epsilon`` is
        ``problem.epsilon``, or with ``nonzeros`` the residual reached.
    """
    settings = checked_settings(problem, rho=RHO_START if rho is None else rho, eps_abs=eps_abs,
                                eps_rel=eps_rel, feas_tol=feas_tol, max_iter=max_iter)
    if loss not in LOSSES:
        msg = f"loss must be one of {LOSSES}, got {loss!r}"
        raise ValueError(msg)
    soft = loss == "soft" and problem.relu
    if rows not in ROWS:
        msg = f"rows must be one of {ROWS}, got {rows!r}"
        raise ValueError(msg)
    if rows == "working-set" and not problem.relu:
        msg = "rows='working-set' is for ReLU programs (a linear program has no inequalities)"
        raise ValueError(msg)
    if settle_tol is not None and not (isinstance(settle_tol, (int, float)) and settle_tol >= 0):
        msg = f"settle_tol must be a number >= 0, got {settle_tol!r}"
        raise ValueError(msg)
    if lam is not None and not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
        msg = f"lam must be a positive finite number, got {lam!r}"
        raise ValueError(msg)
    t0 = time.perf_counter()
    P, N, M = problem.shape
    ball = _Ball(problem, settings.feas_tol)   # the scaled data
    X, Y, active, bound, floor = ball.X, ball.Y, ball.active, ball.bound, ball.floor
    weight = None
    if penalty is not None:
        weight = as_tensor(penalty, name="penalty").to(device=X.device, dtype=X.dtype)
        if tuple(weight.shape) != (M, N) or bool((weight < 0).any()) \
                or not bool(torch.isfinite(weight).all()):
            msg = (f"penalty must be a finite nonnegative array of shape (M, N) = ({M}, {N}), "
                   f"got shape {tuple(weight.shape)}")
            raise ValueError(msg)
        weight = weight.T.contiguous()
    penalized = N * M if weight is None else int((weight > 0).sum())
    if isinstance(nonzeros, bool) or not isinstance(nonzeros, int) or \
            not 0 <= nonzeros <= penalized:
        msg = (f"nonzeros must be an integer in [0, {penalized}] (the penalized weights), "
               f"got {nonzeros!r}")
        raise ValueError(msg)
    viol_tol = settings.feas_tol * float(Y.abs().max())
    W3_start = None if W0 is None else _check_warm_start(problem, W0, X)
    working = iterates_on_working_set(problem, rows)
    data = (working_rows_for(problem, X, Y, active, bound) if working
            else _AllRows(X, Y, active, bound, problem.relu, floor))
    W3 = W3_start if W3_start is not None else torch.zeros(N, M, device=X.device, dtype=X.dtype)
    XW = data.mul(W3)
    U1 = torch.zeros_like(data.Y)
    U2 = torch.zeros_like(W3)
    rho_0 = RHO_START if rho is None else float(rho)
    rho_m = torch.full((M,), rho_0, device=X.device, dtype=X.dtype)
    corr = _correlations(X, Y, active, weight)
    # weights of inputs that are always zero (or of neurons that never fire) stay 0 for every
    # lam: the count aims at most at the weights that can move
    nonzeros = min(nonzeros, int((corr > 0).sum()))
    lam_k = float(lam) if lam is not None else _initial_lam(corr, nonzeros)
    del corr
    pen_mask = None if weight is None else weight > 0
    max_changes = None if settle_tol is None else settle_tol * N * M
    # the count moves in steps of one weight: small layers get a band of a few weights
    nnz_tol = NNZ_TOL * N * M
    # settled: within NNZ_SETTLE below the target; above it, a few weights more are fine too
    # (the caller trims them), which small layers need
    nnz_below, nnz_above = NNZ_SETTLE * N * M, max(NNZ_SETTLE * N * M, 2.0)

    status, it = MAX_ITER, 0
    support, calm = None, 0
    crossings, last_side, streak = 0, 0, 0
    lam_floor, lam_ceil = LAM_FLOOR * lam_k, LAM_CEIL * lam_k
    r_norm = s_norm = math.inf
    nnz = 0
    for it in range(1, settings.max_iter + 1):
        # W1 = prox of f / rho at Z = X W3 - U1, per neuron
        Z = XW - U1
        W1 = (data.Y + rho_m * Z) / (1.0 + rho_m)
        if bound is not None:
            # hard: min(Z, V) off Omega; soft: the prox of 1/2 max(0, z - V)^2 there
            W1 = torch.where(data.active, W1, torch.minimum(Z, data.bound) if not soft else
                             torch.where(Z <= data.bound, Z,
                                         (data.bound + rho_m * Z) / (1.0 + rho_m)))
        del Z
        # W2 = S_{lam penalty / rho}(W3 - U2)
        thr = lam_k / rho_m if weight is None else weight * (lam_k / rho_m)
        W2 = soft_threshold(W3 - U2, thr)
        now = W2 != 0
        nnz = int(now.sum()) if pen_mask is None else int((now & pen_mask).sum())
        if max_changes is not None:
            changes = N * M if support is None else int((now ^ support).sum())
            support = now
            calm = calm + 1 if changes <= max_changes else 0
        del now
        # over-relaxation, W3 = (X^T X + I)^{-1} (X^T (W1 + U1) + W2 + U2)
        W3_new, XW_new, W2h = data.step(W1, W2, W3, XW, U1, U2)
        r1 = W1.sub_(XW_new)           # W1's storage now holds the primal residual
        U1.add_(r1)
        r2 = W2h.sub_(W3_new)
        U2.add_(r2)
        check = it % ADAPT_EVERY == 0
        if check or callback is not None:
            r_m = torch.sqrt(_col_sq(r1) + _col_sq(r2))
            s_m = rho_m * torch.sqrt(_col_sq(XW_new - XW) + _col_sq(W3_new - W3))
            r_norm, s_norm = float(r_m.norm()), float(s_m.norm())
        W3, XW = W3_new, XW_new
        if callback is not None:
            callback(it, r_norm, s_norm, float(rho_m.median()))
        # how far the target is
        on_target = nonzeros - nnz_tol <= nnz <= nonzeros + max(nnz_tol, 1.0)
        near = nonzeros - nnz_below <= nnz <= nonzeros + nnz_above or (
            crossings >= MAX_CROSSINGS
            and nonzeros <= nnz <= nonzeros + max(nnz_above, JUMP_BAND * nonzeros))
        settled = max_changes is not None and calm >= SETTLE_WINDOW and near
        if not (check or settled):
            continue
        converged = False
        if check:
            abs_tol = math.sqrt(data.rows + N) * settings.eps_abs
            pri = torch.maximum(torch.sqrt(_col_sq(XW) + _col_sq(W3)),
                                torch.sqrt(_col_sq(r1.add_(XW)) + _col_sq(W2)))
            dual = rho_m * torch.sqrt(_col_sq(U1) + _col_sq(U2))
            converged = on_target and bool(((r_m <= abs_tol + settings.eps_rel * pri)
                                            & (s_m <= abs_tol + settings.eps_rel * dual)).all())
        if converged or settled:
            W2 = soft_threshold(W3 - U2, thr)
            res, viol_in, viol_out = data.check(W2)
            viol = max(viol_in, viol_out)
            # not a solution while a row outside the working set is violated: the rows that
            # are (more than the set's own rows, as the iterate may not be feasible yet) join
            if data.grow(viol_tol if soft else max(viol_tol, viol_in)):
                U1, XW = data.extend(U1), data.mul(W3)
                continue
            if viol <= viol_tol or soft:   # soft: the inequalities are a penalty
                status = OPTIMAL if converged else OPTIMAL_INACCURATE
                break
            if settled:   # a support for a refit, but not (yet) a feasible point
                status = SETTLED
                break
        if check:
            # residual balancing per neuron (normalized, as OSQP does), within RHO_RANGE
            ratio = torch.sqrt((r_m / pri.clamp(min=TINY)).clamp(min=TINY)
                               / (s_m / dual.clamp(min=TINY)).clamp(min=TINY))
            change = ((ratio > RHO_ADAPT) | (ratio < 1.0 / RHO_ADAPT)) & torch.isfinite(ratio)
            if bool(change.any()):
                new = torch.where(change, rho_m * ratio, rho_m).clamp(
                    min=rho_0 / RHO_RANGE, max=rho_0 * RHO_RANGE)
                f = new / rho_m
                rho_m = new
                U1.div_(f)
                U2.div_(f)
            # the scalar controller
            if not on_target:
                # each crossing of the target halves the gain: where a group of weights enters
                # and leaves together, lam closes in on the jump instead of oscillating
                side = 1 if nnz > nonzeros else -1
                crossings += side != last_side and last_side != 0
                streak = streak + 1 if side == last_side else 0
                if streak >= STREAK:   # stuck on one side (the crossings were a transient)
                    crossings, streak = max(crossings - 1, 0), 0
                last_side = side
                gain = NNZ_GAIN / 2 ** min(crossings, 30)
                step = (max(nnz, 1) / max(nonzeros, 1)) ** gain
                lam_k = max(lam_k * min(max(step, 1.0 / LAM_STEP), LAM_STEP), lam_floor)
                if lam_k > lam_ceil:
                    # the inequalities alone keep more weights than asked (a cascade bound V
                    # below 0 with no bias to absorb it): the count is out of reach
                    break
        if working and it % GROW_EVERY == 0:
            _, viol_in, _ = data.check(W2)
            if data.grow(max(viol_tol, viol_in)):
                # rows outside the working set violated: they join it (their duals start at 0)
                U1, XW = data.extend(U1), data.mul(W3)

    if status == MAX_ITER:
        W2 = soft_threshold(W3 - U2, lam_k / rho_m if weight is None else
                            weight * (lam_k / rho_m))
    return l1_result(problem, ball, W2, weight, status=status, iterations=it,
                     residuals=(r_norm, s_norm), t0=t0, solver="admm-lagrangian",
                     rho=float(rho_m.median()), lam=lam_k, reached=True,
                     working_rows=data.working_rows)


class _AllRows:
    """Every row of the program's scaled data, with the interface of
    :class:`solvers.working_set.WorkingSetRows` (nothing to grow)."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
                 bound: Optional[torch.Tensor], relu: bool, floor: float):
        self.X, self.Y, self.active, self.bound = X, Y, active, bound
        self.relu, self.floor = relu, floor
        self.rows = X.shape[0]
        self.working_rows = None
        self.factor = _Factor(X)
        self.step = self.factor.step

    def mul(self, W3: torch.Tensor) -> torch.Tensor:
        return self.X @ W3

    def check(self, W: torch.Tensor) -> tuple[float, float, float]:
        res, viol = _feasibility(self.X @ W, self.Y, self.active, self.bound, self.relu,
                                 self.floor)
        return res, viol, 0.0

    def grow(self, viol_tol: float) -> bool:
        return False

    def extend(self, U1: torch.Tensor) -> torch.Tensor:
        return U1


def _col_sq(A: torch.Tensor) -> torch.Tensor:
    """Squared norm of every column of A."""
    return torch.linalg.vector_norm(A, dim=0) ** 2
