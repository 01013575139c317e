"""The Net-Trim program in cvxpy: the reference solution for small and medium layers.

The program is written exactly as in :mod:`solvers.problem`, vectorised over all M neurons::

    minimize    sum |W|
    subject to  || vec(X W^T - Y)[Omega] ||_2 <= epsilon
                vec(X W^T)[not Omega] <= vec(V)[not Omega]

and handed to a conic solver (Clarabel by default).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from .problem import NetTrimProblem, as_tensor
from .result import NetTrimResult
from .status import INFEASIBLE, MAX_ITER, OPTIMAL, OPTIMAL_INACCURATE, SOLVER_ERROR

__all__ = ["solve_cvxpy", "STATUS_MAP", "MAX_REFERENCE_SIZE"]

#: cvxpy status -> project status.
STATUS_MAP = {
    "optimal": OPTIMAL,
    "optimal_inaccurate": OPTIMAL_INACCURATE,
    "infeasible": INFEASIBLE,
    "infeasible_inaccurate": INFEASIBLE,
    "unbounded": SOLVER_ERROR,
    "unbounded_inaccurate": SOLVER_ERROR,
    "infeasible_or_unbounded": INFEASIBLE,
    "user_limit": MAX_ITER,
    "solver_error": SOLVER_ERROR,
}

#: Largest ``P * N * M`` (nonzeros of the constraint matrix) solved without ``force=True``:
#: about 3e7 takes Clarabel about a minute on 2 cores, 1e8 tens of minutes, 1e9 hours.
MAX_REFERENCE_SIZE = 100_000_000


def solve_cvxpy(problem: NetTrimProblem, *, solver: str = "CLARABEL", penalty: Any = None,
                force: bool = False, verbose: bool = False,
                solver_options: Optional[dict] = None) -> NetTrimResult:
    """Solve the program with cvxpy (the reference solver).

    Parameters
    ----------
    problem : NetTrimProblem
        The program; solved in float64 on the CPU. The returned W has the array kind, device
        and dtype of the problem's X.
    solver : str, default "CLARABEL"
        Any cvxpy conic solver that handles second-order cones (CLARABEL, SCS, ...).
    penalty : ndarray or Tensor of shape (M, N), optional
        Nonnegative weights of a weighted l1 objective (0 = unpenalized, e.g. a bias column).
    force : bool, default False
        Solve even when ``P * N * M`` exceeds :data:`MAX_REFERENCE_SIZE` (may take hours).
    verbose : bool
        Print the backend's log.
    solver_options : dict, optional
        Passed to ``cvxpy.Problem.solve`` (e.g. tolerances).

    Returns
    -------
    NetTrimResult
        ``status`` from :data:`STATUS_MAP`; W is all NaN when no solution came back.
    """
    import cvxpy as cp  # imported lazily: the ADMM path never needs it

    if not isinstance(problem, NetTrimProblem):
        msg = f"problem must be a NetTrimProblem, got {type(problem).__name__}"
        raise TypeError(msg)
    P, N, M = problem.shape
    if P * N * M > MAX_REFERENCE_SIZE and not force:
        msg = (f"problem of size P*N*M = {P}*{N}*{M} = {P * N * M:.3g} exceeds "
               f"MAX_REFERENCE_SIZE = {MAX_REFERENCE_SIZE:.3g}: the cvxpy reference would take "
               "hours; use solve_admm, subsample rows, or pass force=True to solve anyway")
        raise ValueError(msg)
    t0 = time.perf_counter()
    Xt, _, Vt = problem.tensors()
    weights = None
    if penalty is not None:
        weights = as_tensor(penalty, name="penalty").detach().cpu().double().numpy()
        if weights.shape != (M, N) or (weights < 0).any():
            msg = f"penalty must be nonnegative with shape ({M}, {N}), got {weights.shape}"
            raise ValueError(msg)

    W = cp.Variable((M, N))
    constraints, X, Y, active = program_constraints(problem, W)
    objective = cp.sum(cp.abs(W)) if weights is None else cp.sum(cp.multiply(weights, cp.abs(W)))
    prog = cp.Problem(cp.Minimize(objective), constraints)
    try:
        prog.solve(solver=solver, verbose=verbose, **(solver_options or {}))
        status = STATUS_MAP.get(prog.status, SOLVER_ERROR)
    except cp.error.SolverError:
        status = SOLVER_ERROR
    iterations = int(getattr(prog.solver_stats, "num_iters", None) or 0) if prog.solver_stats else 0

    if W.value is None:
        W_np = np.full((M, N), np.nan)
        res = viol = obj = float("nan")
    else:
        W_np = W.value
        res, viol = problem_residuals(X, Y, active, Vt, W_np, problem.relu)
        obj = float(np.abs(W_np).sum() if weights is None else (weights * np.abs(W_np)).sum())
    if problem.is_numpy:
        W_out = W_np.astype(problem.X.dtype)
    else:
        import torch
        W_out = torch.as_tensor(W_np, dtype=Xt.dtype, device=Xt.device)
    return NetTrimResult(
        W=W_out, status=status, iterations=iterations, objective=obj, residual=res,
        violation=viol, epsilon=problem.epsilon, primal_residual=float("nan"),
        dual_residual=float("nan"), solve_time=time.perf_counter() - t0,
        solver=f"cvxpy:{solver}")


def program_constraints(problem: NetTrimProblem, W: Any) -> tuple:
    """The program's constraints on a cvxpy variable ``W`` of shape (M, N).

    Returns ``(constraints, X, Y, active)`` with the data as float64 numpy arrays.
    """
    import cvxpy as cp

    Xt, Yt, Vt = problem.tensors()
    X = Xt.detach().cpu().double().numpy()
    Y = Yt.detach().cpu().double().numpy()
    active = problem.active_mask().cpu().numpy()
    z = cp.vec(X @ W.T, order="C")                    # (P, M) pre-activations, row-major
    on = np.flatnonzero(active.ravel())
    off = np.flatnonzero(~active.ravel())
    constraints = [cp.norm(z[on] - Y.ravel()[on], 2) <= problem.epsilon]
    if problem.relu and off.size:
        V = np.zeros_like(Y) if Vt is None else Vt.detach().cpu().double().numpy()
        constraints.append(z[off] <= V.ravel()[off])
    return constraints, X, Y, active


def problem_residuals(X: np.ndarray, Y: np.ndarray, active: np.ndarray, V: Any,
                      W: np.ndarray, relu: bool) -> tuple[float, float]:
    """Active-set residual and largest violation of W, in float64 numpy."""
    Z = X @ W.T
    if not relu:
        return float(np.linalg.norm(Z - Y)), 0.0
    res = float(np.linalg.norm((Z - Y)[active]))
    if V is not None:
        Z = Z - V.detach().cpu().double().numpy()
    off = Z[~active]
    return res, max(0.0, float(off.max())) if off.size else 0.0
