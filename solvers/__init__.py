"""Numerical core of Net-Trim: the per-layer convex program and its solvers.

Arrays only (numpy or torch tensors); nothing here knows about models.

    from solvers import NetTrimProblem, solve_admm, solve_cvxpy
    problem = NetTrimProblem(X, Y, epsilon)      # X (P, N), Y (P, M), epsilon absolute
    result = solve_admm(problem)                 # result.W (M, N), result.status, ...
"""

from .admm import ADMMSettings, project_ball, project_constraints, soft_threshold, solve_admm
from .problem import NetTrimProblem
from .reference import MAX_REFERENCE_SIZE, solve_cvxpy
from .refit import refit, reweighted_penalty
from .soft import refit_soft
from .htp import hard_threshold_pursuit
from .gram import GramStats, compress, compress_problem
from .result import NetTrimResult
from .lagrangian import solve_lagrangian
from .status import (INFEASIBLE, MAX_ITER, OPTIMAL, OPTIMAL_INACCURATE, SETTLED, SOLVER_ERROR, STATUSES,
                     SUCCESS)

__all__ = [
    "NetTrimProblem", "NetTrimResult", "solve_admm", "solve_cvxpy", "solve_lagrangian", "SETTLED", "ADMMSettings",
    "soft_threshold", "project_ball", "project_constraints", "MAX_REFERENCE_SIZE",
    "OPTIMAL", "OPTIMAL_INACCURATE", "INFEASIBLE", "MAX_ITER", "SOLVER_ERROR", "STATUSES",
    "SUCCESS", "refit", "refit_soft", "reweighted_penalty", "GramStats", "compress", "compress_problem",
    "hard_threshold_pursuit",
]
