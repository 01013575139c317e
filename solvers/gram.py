"""The programs without inequalities in the Gram domain: cost that does not grow with the rows.

A linear layer's program (and every linear program of the pipeline: the linear candidate of a
ReLU layer, its linear refit) reads the data only through one quadratic::

    || X W^T - T ||_F^2  =  tr(W G W^T) - 2 tr(W C) + ||T||_F^2,
    G = X^T X (N, N),   C = X^T T (N, M),   T = Y - S (the ball's center)

so ``G``, ``C`` and the column norms of ``T`` (:class:`GramStats`), accumulated in one streamed
pass over the rows, are all it needs. Rather than write every solver again for them, the rows
are *compressed*: with ``G = R^T R`` (Cholesky, or a rank-revealing ``eigh`` where G is
singular) and ``Q = R^{-T} C``::

    || X W^T - T ||_F^2  =  || R W^T - Q ||_F^2  +  floor,     floor = ||T||_F^2 - ||Q||_F^2 >= 0

``floor`` is the part of T outside the range of X, which no weight can fit. The program on
``(R, Q)`` with the ball's radius ``sqrt(epsilon^2 - floor)`` is the same program: the same
feasible set and objective, so the same solutions, statuses and residuals
(``sqrt(||R W^T - Q||^2 + floor)``), with ``r = rank(G) <= N`` rows instead of P. Every solver
of this package reads such a problem (:class:`solvers.NetTrimProblem`'s ``floor_sq``), and an
iteration then costs O(N^2 M) whatever P is. The bias column (a ones column in X, whose row of
G holds the column sums and P), a residual offset S (the center T = Y - S) and cascade targets
carry over exactly.

Memory: the pass holds one chunk of rows at a time plus ``G`` and ``C``, ``8 (N^2 + N M)``
bytes (float64); the compressed problem ``R, Q`` takes ``r (N + M)`` entries in the data's
dtype.

Accuracy: G and C are accumulated in float64 whatever the data's dtype (products of float32
numbers are exact in float64), so the squared residual is known to ~1e-16 of ``||T||^2``; the
subtraction that gives ``floor`` loses nothing beyond that.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .problem import NetTrimProblem, as_tensor, check_finite

__all__ = ["GramStats", "check_stats", "compress", "compress_problem", "CHUNK_BYTES", "RANK_RTOL"]

#: Memory of one chunk's float64 copy when statistics are accumulated from a tensor: the
#: rows per GEMM are this over 8 (N + M) bytes (at least CHUNK_MIN_ROWS).
CHUNK_BYTES = 16 * 2 ** 20
CHUNK_MIN_ROWS = 256
#: eigh fallback (G singular): eigenvalues below RANK_RTOL * max eigenvalue count as zero.
RANK_RTOL = 1e-13


class GramStats:
    """``G = X^T X``, ``C = X^T T`` and ``||T_m||^2`` of rows seen so far (float64).

    Accumulate with :meth:`update` (a streamed pass: one chunk of rows at a time) or build at
    once with :meth:`from_rows`; statistics of disjoint row sets add (:meth:`merge`).

    Parameters
    ----------
    N, M : int
        Inputs (columns of X, the ones column of a bias included) and outputs.
    device : torch.device, optional
        Where the statistics live (that of the rows given to :meth:`update`).

    Attributes
    ----------
    G : Tensor of shape (N, N), float64
    C : Tensor of shape (N, M), float64
    tt : Tensor of shape (M,), float64
        Squared norm of each column of T.
    yy : Tensor of shape (M,), float64
        Squared norm of each column of the outputs Y (``T = Y - S`` with an offset S).
    ones : bool
        Whether the last input is a ones column (a bias's).
    rows : int
        Rows accumulated, P.
    """

    def __init__(self, N: int, M: int, *, device: Any = None):
        if not (isinstance(N, int) and N >= 1 and isinstance(M, int) and M >= 1):
            msg = f"N and M must be positive integers, got N={N!r}, M={M!r}"
            raise ValueError(msg)
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.G = torch.zeros(N, N, dtype=torch.float64, device=dev)
        self.C = torch.zeros(N, M, dtype=torch.float64, device=dev)
        self.tt = torch.zeros(M, dtype=torch.float64, device=dev)
        self.yy = torch.zeros(M, dtype=torch.float64, device=dev)
        self.rows = 0
        self.ones = False                          # the last input is a ones column (a bias)
        self.dtype: Optional[torch.dtype] = None   # the data's dtype (of the first update)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(P, N, M)`` as for :class:`solvers.NetTrimProblem`."""
        return (self.rows, self.G.shape[0], self.C.shape[1])

    @classmethod
    def from_rows(cls, X: Any, T: Any, *, ones: bool = False, offset: Any = None,
                  chunk_rows: Optional[int] = None) -> "GramStats":
        """Statistics of ``X (P, N)`` and ``T (P, M)`` (numpy or torch), in chunks of rows.

        ``ones``: X gets a ones column last (a bias), never materialized; ``offset (P, M)``:
        the center is ``T - offset``. Memory beyond the statistics: one chunk in float64.
        """
        X = as_tensor(X, name="X")
        T = as_tensor(T, name="T").to(device=X.device)
        S = None if offset is None else as_tensor(offset, name="offset").to(device=X.device)
        stats = cls(X.shape[1] + bool(ones), T.shape[1], device=X.device)
        if chunk_rows is None:
            chunk_rows = max(CHUNK_MIN_ROWS, CHUNK_BYTES // (8 * (X.shape[1] + T.shape[1])))
        for i in range(0, X.shape[0], chunk_rows):
            Tc = T[i:i + chunk_rows]
            stats.update(X[i:i + chunk_rows], Tc if S is None else Tc - S[i:i + chunk_rows],
                         ones=ones, Y=None if S is None else Tc)
        return stats

    def update(self, X: Any, T: Any, *, ones: bool = False, Y: Any = None) -> "GramStats":
        """Add the rows ``X (p, N)`` (with a ones column last when ``ones``), ``T (p, M)``;
        ``Y``: the outputs when the center T is not them (``T = Y - S``), for :attr:`yy`.
        Returns self."""
        X = as_tensor(X, name="X")
        T = as_tensor(T, name="T")
        if X.shape[0] != T.shape[0] or X.shape[1] + bool(ones) != self.G.shape[0] \
                or T.shape[1] != self.C.shape[1]:
            msg = (f"rows of shape X {tuple(X.shape)}, T {tuple(T.shape)} (ones={ones}) do not "
                   f"fit statistics of N={self.G.shape[0]} inputs and M={self.C.shape[1]} "
                   "outputs")
            raise ValueError(msg)
        check_finite(X, "X")
        check_finite(T, "T")
        if self.dtype is None:
            self.dtype = X.dtype
        self.ones = bool(ones)
        X64 = X.to(device=self.G.device, dtype=torch.float64)
        T64 = T.to(device=self.G.device, dtype=torch.float64)
        n = X.shape[1]
        self.G[:n, :n].addmm_(X64.T, X64)
        self.C[:n].addmm_(X64.T, T64)
        tt = (T64 * T64).sum(0)
        self.tt.add_(tt)
        if Y is None:
            self.yy.add_(tt)
        else:
            Y64 = as_tensor(Y, name="Y").to(device=self.G.device, dtype=torch.float64)
            self.yy.add_((Y64 * Y64).sum(0))
        if ones:
            col = X64.sum(0)
            self.G[:n, n].add_(col)
            self.G[n, :n].add_(col)
            self.G[n, n] += X.shape[0]
            self.C[n].add_(T64.sum(0))
        self.rows += X.shape[0]
        return self

    def restrict(self, columns: Any) -> "GramStats":
        """The statistics of the inputs ``columns`` (a bool mask or indices) alone."""
        idx = torch.as_tensor(columns, device=self.G.device)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        out = GramStats(len(idx), self.C.shape[1], device=self.G.device)
        out.G = self.G[idx][:, idx].clone()
        out.C = self.C[idx].clone()
        out.tt, out.yy = self.tt.clone(), self.yy.clone()
        out.rows, out.dtype = self.rows, self.dtype
        out.ones = self.ones and bool(idx.numel()) and int(idx[-1]) == self.G.shape[0] - 1
        return out

    def merge(self, other: "GramStats") -> "GramStats":
        """Add the statistics of another (disjoint) set of rows; returns self."""
        if self.G.shape != other.G.shape or self.C.shape != other.C.shape:
            msg = f"cannot merge statistics of shapes {self.shape} and {other.shape}"
            raise ValueError(msg)
        self.G += other.G.to(self.G.device)
        self.C += other.C.to(self.G.device)
        self.tt += other.tt.to(self.G.device)
        self.yy += other.yy.to(self.G.device)
        self.rows += other.rows
        self.dtype = self.dtype or other.dtype
        return self

    def residual_sq(self, W: Any) -> torch.Tensor:
        """Per-neuron squared residual ``||X w_m - t_m||^2`` of ``W (M, N)`` (float64, M)."""
        W64 = as_tensor(W, name="W").to(device=self.G.device, dtype=torch.float64)
        if tuple(W64.shape) != (self.C.shape[1], self.G.shape[0]):
            msg = (f"W must have shape (M, N) = ({self.C.shape[1]}, {self.G.shape[0]}), got "
                   f"{tuple(W64.shape)}")
            raise ValueError(msg)
        quad = ((W64 @ self.G) * W64).sum(1)
        return (quad - 2.0 * (W64 * self.C.T).sum(1) + self.tt).clamp_(min=0.0)


def _factor_rows(G: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``R (r, N)`` with ``R^T R = G`` and a function ``C -> R^{-T} C`` (the range part).

    Cholesky when G is positive definite (``R = L^T``, upper triangular); else the
    eigendecomposition, keeping eigenvalues above :data:`RANK_RTOL` of the largest (G is
    singular where inputs are dependent: a constant input beside a bias, or fewer rows than
    inputs), ``R = diag(sqrt(lambda)) U^T`` and ``R^{-T} C = diag(lambda^-1/2) U^T C``."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0 and bool(torch.isfinite(L).all()):
        d = L.diagonal()
        # a pivot far below its column's scale: dependent inputs that rounding let through
        if float(d.min()) ** 2 > RANK_RTOL * float(G.diagonal().max()):
            return L.T, lambda C: torch.linalg.solve_triangular(L, C, upper=False)
    lam, U = torch.linalg.eigh(G)
    keep = lam > RANK_RTOL * max(float(lam.max()), 0.0)
    lam, U = lam[keep], U[:, keep]
    root = lam.sqrt()
    return root[:, None] * U.T, lambda C: (U.T @ C) / root[:, None]


def check_stats(stats: Any) -> GramStats:
    """``stats`` if it is a :class:`GramStats` holding rows; TypeError / ValueError otherwise."""
    if not isinstance(stats, GramStats):
        msg = f"stats must be solvers.GramStats, got {type(stats).__name__}"
        raise TypeError(msg)
    if stats.rows == 0:
        msg = "stats hold no rows: accumulate some with update() first"
        raise ValueError(msg)
    return stats


def compress(stats: GramStats, epsilon: float, *, dtype: Optional[torch.dtype] = None
             ) -> NetTrimProblem:
    """The linear program ``||X W^T - T||_F <= epsilon`` of ``stats`` on compressed rows.

    Parameters
    ----------
    stats : GramStats
        Statistics of the layer's rows (``T = Y - S``: the ball's center).
    epsilon : float
        Absolute tolerance on the full residual ``||X W^T - T||_F``.
    dtype : torch.dtype, optional
        dtype of the compressed data (default: that of the rows accumulated, float64 when
        unknown).

    Returns
    -------
    NetTrimProblem
        ``X = R (r, N)``, ``Y = Q (r, M)``, ``relu=False`` and ``floor_sq = floor`` (module
        docstring): every solver of this package solves it as the original program, and its
        ``residual(W)`` is the original residual.
    """
    check_stats(stats)
    dt = dtype or stats.dtype or torch.float64
    # inputs zero on every row (a zero diagonal) are left out of the factor: their columns of R
    # are 0, and the rest factors by Cholesky instead of the eigh fallback
    live = stats.G.diagonal() > 0
    if bool(live.any()):
        R_live, range_part = _factor_rows(stats.G[live][:, live])
        Q = range_part(stats.C[live])
    else:
        R_live = stats.G[:0, :0]
        Q = stats.C[:0]
    R = torch.zeros(R_live.shape[0], stats.G.shape[0], dtype=torch.float64,
                    device=stats.G.device)
    R[:, live] = R_live
    floor = max(float(stats.tt.sum()) - float((Q * Q).sum()), 0.0)
    if R.shape[0] == 0:   # X = 0: nothing is in range, the residual is ||T|| for every W
        R = torch.zeros(1, stats.G.shape[0], dtype=torch.float64, device=stats.G.device)
        Q = torch.zeros(1, stats.C.shape[1], dtype=torch.float64, device=stats.G.device)
    return NetTrimProblem(R.to(dt).contiguous(), Q.to(dt).contiguous(), epsilon, relu=False,
                          floor_sq=floor)


def compress_problem(problem: NetTrimProblem, *, chunk_rows: Optional[int] = None
                     ) -> NetTrimProblem:
    """A linear problem with many rows as the same program on at most N rows.

    Returns ``problem`` itself when it has inequalities (a ReLU layer: they are per row) or no
    more rows than inputs (nothing to gain). numpy in, numpy out; torch stays on its device.
    """
    if not isinstance(problem, NetTrimProblem):
        msg = f"problem must be a NetTrimProblem, got {type(problem).__name__}"
        raise TypeError(msg)
    P, N, M = problem.shape
    if problem.relu or P <= N:
        return problem
    X, T, _ = problem.program_tensors()
    stats = GramStats.from_rows(X, T, chunk_rows=chunk_rows)
    reduced = compress(stats, problem.epsilon, dtype=X.dtype)
    floor = reduced.floor_sq + problem.floor_sq
    if problem.is_numpy:
        return NetTrimProblem(reduced.X.cpu().numpy(), reduced.Y.cpu().numpy(), problem.epsilon,
                              relu=False, floor_sq=floor)
    return NetTrimProblem(reduced.X, reduced.Y, problem.epsilon, relu=False, floor_sq=floor)
