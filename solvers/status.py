"""Status names shared by every Net-Trim solver.

A solver never raises because it did not converge: it returns one of these names in
``NetTrimResult.status`` and the caller decides (``nettrim`` warns, or raises with
``strict=True``).
"""

__all__ = [
    "OPTIMAL",
    "OPTIMAL_INACCURATE",
    "INFEASIBLE",
    "MAX_ITER",
    "SOLVER_ERROR",
    "SETTLED",
    "STATUSES",
    "SUCCESS",
]

#: Converged to the requested tolerances (and the returned W is feasible within them).
OPTIMAL = "OPTIMAL"
#: The backend stopped with a solution it flags as less accurate than requested.
OPTIMAL_INACCURATE = "OPTIMAL_INACCURATE"
#: The constraints admit no W (epsilon too small for the data).
INFEASIBLE = "INFEASIBLE"
#: The iteration cap was reached before the stopping criteria held.
MAX_ITER = "MAX_ITER"
#: The backend failed (numerical trouble, missing solver, ...).
SOLVER_ERROR = "SOLVER_ERROR"

#: Stopped once the support settled (``solve_lagrangian(settle_tol=...)``) before the iterate
#: met the inequalities: a support to refit on, not a solution.
SETTLED = "SETTLED"

STATUSES = (OPTIMAL, OPTIMAL_INACCURATE, INFEASIBLE, MAX_ITER, SOLVER_ERROR, SETTLED)
#: Statuses whose W can be used as a solution.
SUCCESS = (OPTIMAL, OPTIMAL_INACCURATE)
