"""The record every Net-Trim solver returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NetTrimResult"]


@dataclass(frozen=True)
class NetTrimResult:
    """Solution of one layer's program.

    Attributes
    ----------
    W : ndarray or Tensor of shape (M, N)
        The pruned weight; same array kind, device and dtype as the problem's X. Entries the
        l1 penalty removed are exact zeros.
    status : str
        One of :data:`solvers.status.STATUSES`.
    iterations : int
        Solver iterations (ADMM iterations, or the backend's count for cvxpy).
    objective : float
        ``sum |W|`` (weighted by the penalty when one was given).
    residual : float
        Active-set residual ``|| (X W^T - Y) on Omega ||_F`` of the returned W.
    violation : float
        Largest inequality violation of the returned W (0 for a linear layer).
    epsilon : float
        The tolerance of the program solved (absolute).
    primal_residual, dual_residual : float
        Final ADMM residuals (NaN for solvers that do not report them).
    solve_time : float
        Wall-clock seconds, set-up included.
    solver : str
        ``"admm"`` or ``"cvxpy:<BACKEND>"``.
    rho : float
        Final ADMM penalty (NaN for cvxpy); pass it back to warm-start a related solve.
    lam : float
        Final Lagrangian weight of :func:`solvers.lagrangian.solve_lagrangian` (scaled data;
        pass it back to warm-start a related solve); NaN for the other solvers.
    working_rows : int or None
        Rows of the working set the iterations ran on (``rows="working-set"`` of
        :func:`solvers.lagrangian.solve_lagrangian`; the answer is still checked on every
        row); None when every iteration touched every row.
    """

    W: Any
    status: str
    iterations: int
    objective: float
    residual: float
    violation: float
    epsilon: float
    primal_residual: float
    dual_residual: float
    solve_time: float
    solver: str
    rho: float = float("nan")
    lam: float = float("nan")
    working_rows: Any = None

    @property
    def nonzeros(self) -> int:
        """Number of nonzero entries of W."""
        return int((self.W != 0).sum())

    @property
    def sparsity(self) -> float:
        """Fraction of zero entries of W."""
        return 1.0 - self.nonzeros / max(1, self.W.shape[0] * self.W.shape[1])
