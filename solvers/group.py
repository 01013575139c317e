"""Group-l1 Net-Trim (structured): remove whole input units of a layer.

Symbols as in :mod:`solvers.problem`; ``g(n)`` assigns each input column ``n`` of ``W (M, N)``
to a group ``j`` (an input unit: a neuron of the layer before, or a channel with its
``kh * kw`` patch columns), ``-1`` for an unpenalized column (a bias)::

    minimize    sum_j || W[:, g == j] ||_F
    subject to  || (X W^T - Y) on Omega ||_F <= epsilon
                X W^T <= V                       off Omega

A group that comes out all-zero removes input unit j, i.e. output unit j of the layer before,
with the same epsilon guarantee on the layer's outputs.

ADMM: the splitting, data scaling, W3 system, projection and residual balancing of
:mod:`solvers.admm` (reused from there); only the W2 step changes, the soft threshold becomes
the group soft threshold (DESIGN.md section 7)::

    W2[g == j, :] = V_j max(0, 1 - (1/rho) / ||V_j||_F),    V = W3 - U2  (W3 is N x M)
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
import torch

from .admm import RHO_START, TINY, ADMMSettings, _Ball, _Factor, _iterate, checked_settings
from .problem import NetTrimProblem
from .reference import below_floor_result
from .result import NetTrimResult

__all__ = ["group_soft_threshold", "group_norms", "solve_group_admm", "solve_group_cvxpy",
           "check_groups"]


def check_groups(groups: Any, N: int) -> torch.Tensor:
    """``groups`` as a long tensor of shape (N,) with entries -1 (unpenalized) or 0..G-1."""
    g = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups)
    if g.ndim != 1 or g.numel() != N or g.dtype.is_floating_point or g.dtype == torch.bool:
        msg = f"groups must be an integer array of shape (N,) = ({N},), got {tuple(g.shape)} {g.dtype}"
        raise ValueError(msg)
    g = g.to(torch.long)
    if N and int(g.min()) < -1:
        msg = "groups entries must be -1 (unpenalized) or a group index >= 0"
        raise ValueError(msg)
    return g


def group_norms(W3: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``||W3[groups == j, :]||_F`` for j < n_groups (W3 of shape (N, M): groups of rows)."""
    sq = (W3 * W3).sum(1)
    keep = groups >= 0
    out = torch.zeros(n_groups, dtype=W3.dtype, device=W3.device)
    return out.index_add_(0, groups[keep], sq[keep]).sqrt_()


def group_soft_threshold(V: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Proximal operator of ``threshold * sum_j ||V[groups == j, :]||_F`` (rows grouped).

    Each group is scaled by ``max(0, 1 - threshold / ||V_j||_F)`` (exact zeros when its norm
    is at most ``threshold``); rows with group -1 pass unchanged.
    """
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    norms = group_norms(V, groups, n_groups)
    scale = torch.clamp(1.0 - threshold / torch.clamp(norms, min=TINY), min=0.0)
    row_scale = torch.ones(V.shape[0], dtype=V.dtype, device=V.device)
    keep = groups >= 0
    row_scale[keep] = scale[groups[keep]]
    return V * row_scale[:, None]


def solve_group_admm(problem: NetTrimProblem, groups: Any, *, W0: Any = None,
                     rho: Optional[float] = None, eps_abs: float = ADMMSettings.eps_abs,
                     eps_rel: float = ADMMSettings.eps_rel,
                     feas_tol: float = ADMMSettings.feas_tol,
                     max_iter: int = ADMMSettings.max_iter) -> NetTrimResult:
    """Solve the group-l1 program by ADMM (module docstring).

    Parameters
    ----------
    problem : NetTrimProblem
    groups : int array of shape (N,)
        Group of each input column (-1: unpenalized, e.g. the bias column).
    W0 : array of shape (M, N), optional
        Warm start.
    rho, eps_abs, eps_rel, feas_tol, max_iter
        As in :func:`solvers.solve_admm`.

    Returns
    -------
    NetTrimResult
        ``objective`` is ``sum_j ||W[:, g == j]||_F``; ``solver="admm:group"``. Status
        ``OPTIMAL`` only when W2 (with its exact zero groups) is feasible within ``feas_tol``.
    """
    settings = checked_settings(problem, rho=1.0 if rho is None else rho, eps_abs=eps_abs,
                                eps_rel=eps_rel, feas_tol=feas_tol, max_iter=max_iter)
    t0 = time.perf_counter()
    if problem.below_floor:   # compressed rows: epsilon below what any W leaves
        return below_floor_result(problem, t0, "admm:group")
    P, N, M = problem.shape
    ball = _Ball(problem, settings.feas_tol)
    X = ball.X
    g = check_groups(groups, N).to(X.device)
    n_groups = int(g.max()) + 1 if N else 0
    factor = _Factor(X)
    W3 = problem._weight(W0).T.contiguous() if W0 is not None else \
        torch.zeros(N, M, device=X.device, dtype=X.dtype)
    if rho is None:  # as solve_admm: rho ~ 1 / (typical group norm) of the reference weights
        W_ref = W3 if W0 is not None else factor.solve(X.T @ ball.Y)[0]
        g_mean = float(group_norms(W_ref, g, n_groups).mean()) if n_groups else 0.0
        rho_k = RHO_START / g_mean if g_mean > 0 else 1.0
    else:
        rho_k = settings.rho
    W2, status, it, r_norm, s_norm, rho_k = _iterate(
        ball, factor, W3, rho_k, settings,
        lambda V, rho_: group_soft_threshold(V, g, 1.0 / rho_))   # the group soft threshold
    _, res, viol = ball.feasible(W2)
    objective = float(group_norms(W2, g, n_groups).sum())
    W = W2.T.contiguous()
    if problem.is_numpy:
        W = W.cpu().numpy()
    s = ball.s
    return NetTrimResult(
        W=W, status=status, iterations=it, objective=objective, residual=res * s,
        violation=viol * s, epsilon=problem.epsilon, primal_residual=r_norm * s,
        dual_residual=s_norm * s, solve_time=time.perf_counter() - t0, solver="admm:group",
        rho=rho_k)


def solve_group_cvxpy(problem: NetTrimProblem, groups: Any, *, solver: str = "CLARABEL",
                      solver_options: Optional[dict] = None) -> NetTrimResult:
    """The group-l1 program in cvxpy (the reference for small layers); see the module docstring."""
    import cvxpy as cp

    from .reference import STATUS_MAP, problem_residuals, program_constraints
    from .status import SOLVER_ERROR

    t0 = time.perf_counter()
    if problem.below_floor:   # compressed rows: epsilon below what any W leaves
        return below_floor_result(problem, t0, f"cvxpy:{solver}:group")
    P, N, M = problem.shape
    g = check_groups(groups, N).numpy()
    Xt = problem.tensors()[0]
    W = cp.Variable((M, N))
    constraints, X, Y, active, V = program_constraints(problem, W)
    terms = [cp.norm(W[:, np.flatnonzero(g == j)], "fro") for j in range(int(g.max()) + 1)
             if (g == j).any()]
    prog = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), constraints)
    try:
        prog.solve(solver=solver, **(solver_options or {}))
        status = STATUS_MAP.get(prog.status, SOLVER_ERROR)
    except cp.error.SolverError:
        status = SOLVER_ERROR
    if W.value is None:
        W_np, res, viol, obj = np.full((M, N), np.nan), math.nan, math.nan, math.nan
    else:
        W_np = W.value
        res, viol = problem_residuals(X, Y, active, V, W_np, problem.relu)
        res = problem.full_residual(res)
        obj = float(sum(np.linalg.norm(W_np[:, g == j]) for j in range(int(g.max()) + 1)))
    return NetTrimResult(
        W=W_np if problem.is_numpy else torch.as_tensor(W_np, dtype=Xt.dtype),
        status=status, iterations=0, objective=obj, residual=res, violation=viol,
        epsilon=problem.epsilon, primal_residual=math.nan, dual_residual=math.nan,
        solve_time=time.perf_counter() - t0, solver=f"cvxpy:{solver}:group")
