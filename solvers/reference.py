"""The Net-Trim program in cvxpy: the reference solution for small and medium layers.

The program is written exactly as in :mod:`solvers.problem`, vectorised over all M neurons::

    minimize    sum |W|
    subject to  || vec(X W^T + S - Y)[Omega] ||_2 <= epsilon
                vec(X W^T + S)[not Omega] <= vec(V)[not Omega]

and handed to a conic solver (Clarabel by default).

Support rule. An interior-point method returns no exact zeros (the entries that are zero at the
optimum come back near 1e-10), so the solver's W is thresholded by a documented rule before it
is returned: penalized entries are removed in increasing order of ``|w|`` as long as the W
without them stays feasible, i.e. the largest ``k`` (found by bisection on ``k``) such that
zeroing the ``k`` smallest keeps::

    residual  <= max(epsilon, r0) (1 + SUPPORT_RTOL) + SUPPORT_RTOL ||Y||_F
    violation <= v0 + SUPPORT_RTOL max|Y|

with ``r0``, ``v0`` those of the solver's own W. Then the program is solved again with W = 0 off
that support (the *polish*), so the returned W is optimal on its support and feasible to the
backend's accuracy. On a well-posed problem this gives the support of the exact solution, the
one the ADMM (whose soft threshold makes exact zeros) finds.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from .problem import NetTrimProblem, as_tensor
from .result import NetTrimResult
from .status import INFEASIBLE, MAX_ITER, OPTIMAL, OPTIMAL_INACCURATE, SOLVER_ERROR

__all__ = ["solve_cvxpy", "STATUS_MAP", "MAX_REFERENCE_SIZE", "SUPPORT_RTOL", "program_constraints",
           "program_data", "problem_residuals", "below_floor_result"]

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

#: Relative slack of the support rule (module docstring): the removed entries may raise the
#: residual by this fraction of epsilon (plus this fraction of ||Y||_F) and the violation by this
#: fraction of max|Y|.
SUPPORT_RTOL = 1e-6

#: A success status is kept only when the returned W meets the program within this relative
#: tolerance (:meth:`NetTrimProblem.is_feasible`, as solve_admm's ``feas_tol``); else
#: SOLVER_ERROR.
CHECK_RTOL = 1e-3

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
        ``status`` from :data:`STATUS_MAP`, and SOLVER_ERROR in place of a success whose W
        misses the program by more than :data:`CHECK_RTOL`; W is all NaN when no solution
        came back. W has
        exact zeros off the support chosen by the rule in the module docstring (solved twice:
        once for the support, once polished on it; ``iterations`` counts both).
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
    Xt = problem.tensors()[0]
    if problem.below_floor:   # compressed rows: epsilon is below what any W leaves
        return below_floor_result(problem, t0, f"cvxpy:{solver}")
    X, Y, active, V = program_data(problem)
    # scaled as the ADMM is, and further: X by its scale, Y, V and epsilon by Y's, so W by
    # their ratio; the conic solver's absolute tolerances then mean the same at every scale
    # (unscaled, Y ~ 1e-10 came back OPTIMAL at 5-20x epsilon and Y ~ 1e10 INFEASIBLE)
    x_scale, y_scale = _scales(X, Y, V)
    Xs, Ys = X / x_scale, Y / y_scale
    Vs = None if V is None else V / y_scale
    eps_s = problem.radius / y_scale
    w_scale = y_scale / x_scale
    weights = None
    if penalty is not None:
        weights = as_tensor(penalty, name="penalty").detach().cpu().double().numpy()
        if weights.shape != (M, N) or (weights < 0).any():
            msg = f"penalty must be nonnegative with shape ({M}, {N}), got {weights.shape}"
            raise ValueError(msg)

    def solve(fixed_zero=None):
        return _solve_program(cp, Xs, Ys, active, Vs, eps_s, problem.relu, weights,
                              fixed_zero, dict(solver=solver, verbose=verbose,
                                               **(solver_options or {})))

    W_np, status, iterations = solve()
    if W_np is not None and status in (OPTIMAL, OPTIMAL_INACCURATE):
        support = _support(Xs, Ys, active, Vs, W_np, weights, eps_s, problem.relu)
        polished, polish_status, its = solve(~support)
        iterations += its
        if polished is not None and polish_status in (OPTIMAL, OPTIMAL_INACCURATE):
            W_np, status = polished, max(status, polish_status, key=_RANK.index)
        W_np = np.where(support, W_np, 0.0)

    if W_np is None:
        W_np = np.full((M, N), np.nan)
        res = viol = obj = float("nan")
    else:
        W_np = W_np * w_scale
        res, viol = problem_residuals(X, Y, active, V, W_np, problem.relu)
        res = problem.full_residual(res)
        if status in (OPTIMAL, OPTIMAL_INACCURATE) and not problem.is_feasible(
                W_np, rtol=CHECK_RTOL):
            status = SOLVER_ERROR   # the backend's point misses the program: never a success
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


def below_floor_result(problem: NetTrimProblem, t0: float, solver: str) -> NetTrimResult:
    """``INFEASIBLE`` with W = 0 for a compressed linear program whose epsilon is below its
    floor (:attr:`solvers.NetTrimProblem.below_floor`): the ball of radius 0 on the
    compressed rows is met by some W, the program itself by none."""
    Xt = problem.tensors()[0]
    M, N = problem.shape[2], problem.shape[1]
    W = torch.zeros(M, N, dtype=Xt.dtype, device=Xt.device)
    return NetTrimResult(
        W=W.cpu().numpy() if problem.is_numpy else W, status=INFEASIBLE, iterations=0,
        objective=0.0, residual=problem.residual(W), violation=0.0, epsilon=problem.epsilon,
        primal_residual=float("nan"), dual_residual=float("nan"),
        solve_time=time.perf_counter() - t0, solver=solver)


def _scales(X: np.ndarray, Y: np.ndarray, V: Optional[np.ndarray]) -> tuple[float, float]:
    """X's largest column norm and Y's largest magnitude (V's where Y is all zero), 1 where
    zero: the units the program is solved in."""
    x_scale = float(np.linalg.norm(X, axis=0).max()) if X.size else 0.0
    y_scale = float(np.abs(Y).max()) if Y.size else 0.0
    if y_scale == 0.0 and V is not None and V.size:
        y_scale = float(np.abs(V).max())
    return (x_scale if x_scale > 0 else 1.0), (y_scale if y_scale > 0 else 1.0)


#: Of two success statuses, the result takes the less accurate one.
_RANK = (OPTIMAL, OPTIMAL_INACCURATE)


def _solve_program(cp, X, Y, active, V, epsilon, relu, weights, fixed_zero, options):
    """One cvxpy solve of the program (W = 0 where ``fixed_zero``): (W or None, status, its)."""
    M, N = Y.shape[1], X.shape[1]
    W = cp.Variable((M, N))
    constraints = _constraints(cp, X, Y, active, V, epsilon, relu, W)
    if fixed_zero is not None and fixed_zero.any():
        constraints.append(cp.vec(W, order="C")[np.flatnonzero(fixed_zero.ravel())] == 0)
    objective = cp.sum(cp.abs(W)) if weights is None else cp.sum(cp.multiply(weights, cp.abs(W)))
    prog = cp.Problem(cp.Minimize(objective), constraints)
    try:
        prog.solve(**options)
        status = STATUS_MAP.get(prog.status, SOLVER_ERROR)
    except cp.error.SolverError:
        status = SOLVER_ERROR
    iterations = int(getattr(prog.solver_stats, "num_iters", None) or 0) if prog.solver_stats else 0
    return W.value, status, iterations


def _constraints(cp, X, Y, active, V, epsilon, relu, W) -> list:
    """The program's constraints on the cvxpy variable W (M, N), numpy float64 data."""
    z = cp.vec(X @ W.T, order="C")                    # (P, M) pre-activations, row-major
    on = np.flatnonzero(active.ravel())
    off = np.flatnonzero(~active.ravel())
    constraints = [cp.norm(z[on] - Y.ravel()[on], 2) <= epsilon]
    if relu and off.size:
        bound = np.zeros_like(Y) if V is None else V
        constraints.append(z[off] <= bound.ravel()[off])
    return constraints


def program_data(problem: NetTrimProblem) -> tuple:
    """``(X, Y - S, active, V - S)`` of the program as float64 numpy arrays (the bound None
    when absent, i.e. 0), see :meth:`NetTrimProblem.program_tensors`."""
    Xt, Yt, Vt = problem.program_tensors()
    X = Xt.detach().cpu().double().numpy()
    Y = Yt.detach().cpu().double().numpy()
    active = problem.active_mask().cpu().numpy()
    V = None if Vt is None else Vt.detach().cpu().double().numpy()
    return X, Y, active, V


def program_constraints(problem: NetTrimProblem, W: Any) -> tuple:
    """The program's constraints on a cvxpy variable ``W`` of shape (M, N), for other
    objectives over the same feasible set (the group-l1 reference): ``(constraints, X, Y,
    active, V)``, the data as float64 numpy arrays."""
    import cvxpy as cp

    X, Y, active, V = program_data(problem)
    return _constraints(cp, X, Y, active, V, problem.radius, problem.relu, W), X, Y, active, V


def _support(X, Y, active, V, W, weights, epsilon, relu) -> np.ndarray:
    """The support rule of the module docstring: True where W keeps an entry."""
    r0, v0 = problem_residuals(X, Y, active, V, W, relu)
    res_tol = max(epsilon, r0) * (1 + SUPPORT_RTOL) + SUPPORT_RTOL * float(np.linalg.norm(Y))
    viol_tol = v0 + SUPPORT_RTOL * float(np.abs(Y).max())
    candidates = (W != 0) if weights is None else (W != 0) & (weights > 0)
    flat = np.flatnonzero(candidates.ravel())
    order = flat[np.argsort(np.abs(W.ravel()[flat]), kind="stable")]

    def without(k):
        Wk = W.copy().ravel()
        Wk[order[:k]] = 0.0
        return Wk.reshape(W.shape)

    lo, hi = 0, order.size     # zeroing lo entries is feasible; find the largest such count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        res, viol = problem_residuals(X, Y, active, V, without(mid), relu)
        if res <= res_tol and viol <= viol_tol:
            lo = mid
        else:
            hi = mid - 1
    return without(lo) != 0 if weights is None else (without(lo) != 0) | (weights == 0)


def problem_residuals(X, Y, active, V, W, relu) -> tuple[float, float]:
    """Active-set residual and largest violation of W (V an array or None), float64 numpy."""
    Z = X @ W.T
    if not relu:
        return float(np.linalg.norm(Z - Y)), 0.0
    res = float(np.linalg.norm((Z - Y)[active]))
    off = (Z if V is None else Z - V)[~active]
    return res, max(0.0, float(off.max())) if off.size else 0.0
