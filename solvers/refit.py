"""Debiasing refit on a fixed support, and the reweighted-l1 penalty (issue 5).

The l1 objective of Net-Trim shrinks the weights it keeps. Once the l1 solve has chosen the
support ``S`` (which weights are nonzero), this module re-solves for the weights on ``S`` that
fit the layer best under the SAME inequalities, which removes the shrinkage::

    minimize    1/2 || (X W^T - Y) on Omega ||_F^2          (linear layer: all entries)
    subject to  (X W^T)[p, m] <= V[p, m]                      (p, m) not in Omega   (ReLU)
                W[m, n] = 0                                  (m, n) not in S

Symbols as in :mod:`solvers.problem`: ``X (P, N)``, ``Y (P, M)``, ``V (P, M)`` (0 when None),
``W (M, N)``, ``Omega = {Y > 0}``. Neuron m only sees its own column of Y and its own support
``S_m``, so the program splits into M independent convex QPs.

How they are solved. A linear layer's QPs are least squares on each support, solved directly
(:func:`_least_squares`). A ReLU layer's are solved exactly on the CPU, neuron by neuron, as
least-distance programs by one nonnegative least squares each (Lawson & Hanson 1974), over the
rows that bind, found by constraint generation (:func:`_exact`); on LeNet-300-100 (5,000 MNIST
rows, 90%) this took the 784 -> 300 layer's refit from 6.3 s (275 ADMM iterations) to 1.5 s.
What that leaves (rounding trouble, a neuron not settled in :data:`EXACT_ROUNDS` rounds), and
every neuron of data on a GPU, where a loop of small sequential solves would idle the device,
goes to the batched ADMM below (not measured on a GPU: none was available).

ADMM splitting (scaled form, penalty ``rho_m`` per neuron, scaled dual ``U (P, M)``)::

    minimize  f(Z) + g(W)    subject to  Z = X W^T
    f(Z) = 1/2 ||(Z - Y) on Omega||^2 + indicator(Z <= V off Omega),  g = indicator(W on S)

    A = X W^T - U
    Z = (Y + rho A) / (1 + rho)  on Omega ;  min(A, V)  off Omega           # prox of f
    Zh = a Z + (1 - a) X W^T                                               # over-relaxation
    w_m = (X_S^T X_S + delta I)^{-1} (X_S^T (Zh + U)_m + delta w_m_prev)     # LS on S_m
    U = U + Zh - X W^T

The W step is least squares on each neuron's support with a tiny proximal term
``rho delta / 2 ||w - w_prev||^2`` (proximal ADMM, convergent for any ``delta > 0``; Deng & Yin
2016). The term keeps the system positive definite when ``X_S`` has dependent or all-zero
columns (MNIST's border pixels) and, scaled by rho, makes the matrix independent of rho, so
residual balancing never refactors. Residuals, per neuron (Boyd et al. 2011, 3.3)::

    primal  r_m = || Z_m - X w_m ||      dual  s_m = rho_m || X (w_m - w_m_prev) ||

A neuron stops when ``r_m <= sqrt(P) eps_abs + eps_rel max(||Z_m||, ||X w_m||)``,
``s_m <= sqrt(P) eps_abs + eps_rel rho_m ||U_m||`` and its inequalities hold within
``feas_tol max|Y|`` (solve_admm's rule); converged neurons leave the working set, so the
GEMMs shrink as the solve proceeds.

A linear layer has no inequalities: each neuron's QP is then plain least squares on its support,
solved directly from the same factors (:func:`_least_squares`, no ADMM). Measured on the linear
candidate of ``program="auto"`` on LeNet's 784 -> 300 layer at 90%: 0.23-0.28 s, against 1.8 s
for 20 ADMM iterations and the polish.

Polish (as OSQP does). ADMM reaches 1e-4 relative accuracy slowly, but it identifies early
which inequalities bind (the rows its Z step clips). On convergence, and every
:data:`POLISH_EVERY` iterations for the neurons still running, those rows are made equalities
and the equality-constrained least squares on the support is solved exactly (a KKT system of
size ``k_m + |E_m|``, Hessian ``X_OS^T X_OS`` built once per neuron); a few primal-dual
active-set corrections fix a wrong guess. A solution that is feasible with nonnegative
multipliers meets the KKT conditions of the QP, so it is optimal up to rounding: the neuron is
then finished (certified). Measured: without the polish, ADMM at the default tolerances is
only ~1e-3 accurate in the objective on small ReLU instances (the cvxpy tests then fail), with
it the objective matches cvxpy to ~1e-8; on LeNet-300-100's 300 -> 100 layer at 85% sparsity
(5,000 samples, one CPU thread) the active-set corrections took the refit from 60 s / 1,100
iterations (polish without corrections) to 9 s / 550. Degenerate neurons (more tight rows
than support entries) rarely certify and run to the residual test instead.

Choice of the W-step solver (measured, see benchmarks/bench_refit.py): every neuron has its own
support, so the exact step needs one ``k_m x k_m`` Cholesky factor per neuron, ``k_m = |S_m|``.
The factors are built once from one Gram matrix ``G = X^T X`` (gathered, no further pass over
the data) and kept in float64; an iteration is then two GEMMs of size P x N x M (the floor, as
in solve_admm) plus batched triangular solves costing ``sum_m k_m^2``, small next to ``P N M``
at the sparsities pruning targets. Memory is ``16 k_max^2`` bytes per neuron (factor and
polish Hessian, float64): 190 MB for 300 neurons with supports of up to 200 inputs. Neurons
are sorted by support size and processed in chunks that fit :data:`FACTOR_BYTES`, so a
3136 -> 512 layer at low sparsity still fits (chunks run one after another, for the same GEMM
work in total, only narrower). An exact step keeps ADMM's convergence guarantee, which batched
conjugate gradients (inexact steps) would not; measured on LeNet-300-100 (5,000 samples, one
shared CPU thread) the refit costs about one l1 solve on the 785 -> 300 layer (126 s vs 136 s
at 85% sparsity) and a tenth of one on the 301 -> 100 layer (5 s vs 43 s at 78%).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import replace
from typing import Any, Optional

import numpy as np
import torch
from scipy.optimize import nnls

from .admm import RELAX, RHO_ADAPT, TINY, ADMMSettings, checked_settings, scaled_data
from .problem import NetTrimProblem, as_tensor
from .result import NetTrimResult
from .status import INFEASIBLE, MAX_ITER, OPTIMAL, SOLVER_ERROR

__all__ = ["refit", "reweighted_penalty", "FACTOR_BYTES", "PROX_REL", "DELTA_REL"]

#: Memory allowed for one chunk's per-neuron float64 matrices (Cholesky factors and polish
#: Hessians, 16 k^2 bytes per neuron).
FACTOR_BYTES = 256 * 2 ** 20
#: Chunks also split where supports fall below 1 / CHUNK_SPREAD of the chunk's largest (each
#: neuron's factor, Hessian and KKT system are padded to it), once CHUNK_MIN neurons are in.
#: Measured on LeNet-300-100's 784 -> 300 layer at 90% (supports 40-203): the pilot refit's
#: KKT solves took 2.0 s instead of 3.4 s, and the whole refit 7.6 s instead of 10.1 s.
CHUNK_SPREAD = 1.25
CHUNK_MIN = 32
#: Starting penalty of every neuron (scaled data). Measured on the same layer's final refit:
#: the first polish certifies 214 of 285 neurons from rho = 3 (166 from rho = 1), and all are
#: done in 150 iterations instead of 250 (10 -> 3: no further gain, 30: slower).
RHO_START = 3.0
#: Proximal weight delta of the W step, relative to max diag(X^T X) of the scaled data.
PROX_REL = 1e-7
#: Residual balancing period (iterations).
ADAPT_EVERY = 5
#: Try to certify the unfinished neurons by a polish every this many iterations.
POLISH_EVERY = 25
#: Regularization of the polish's KKT system, relative to max diag(X^T X) (scaled data).
POLISH_REL = 1e-9
#: Iterative-refinement steps of the polish.
POLISH_REFINE = 4
#: Polish: at most this many active-set corrections (KKT solves).
POLISH_STEPS = 8
#: Polish: rows violated by more than this fraction of the tolerance join the active set.
POLISH_ADD = 1e-3
#: Polish, degenerate neurons (more clipped rows than unknowns): keep only rows whose ADMM
#: multiplier exceeds this fraction of the largest (and at most as many as unknowns).
POLISH_STRONG = 1e-3
#: Polish: multipliers down to -POLISH_LAMBDA_TOL (1 + max|lambda|) count as nonnegative.
POLISH_LAMBDA_TOL = 1e-7
#: Exact solve (:func:`_exact`): rounds of constraint generation before a neuron is left to
#: ADMM (0: ADMM only). Measured on LeNet-300-100 at 90%: 2-3 rounds.
EXACT_ROUNDS = 20
#: Exact solve: the rows a neuron starts with and adds in one round are its most violated,
#: at most this many or as many as it has (it doubles). A QP with k unknowns has at most
#: about k rows with a multiplier at its solution; on LeNet-5's first convolution at 90%
#: (172,800 rows, 3-11 weights per neuron) the start met or violated 30,000-50,000 rows, and
#: their NNLS was 64% of prune_layer's time.
EXACT_ADD = 256
#: The ADMM that takes the neurons the exact solve leaves (CPU) stops after at most this many
#: multiply-adds of its GEMMs (``iterations * P * N * neurons``), returning ``MAX_ITER``: on a
#: conv layer of 100,352 rows x 289 inputs one such neuron ran 5,000 iterations in 160 s and
#: did not converge. On LeNet's layers (P N <= 4e6) one neuron keeps the full ``max_iter``.
FALLBACK_MAX_WORK = 3e10
#: Exact solve: at most this many proximal solves per neuron and round (the first included),
#: stopped once the objective falls by less than EXACT_KKT_TOL of its size.
EXACT_REFINE = 8
EXACT_KKT_TOL = 1e-10
#: Exact solve: a proximal step longer than this many times the step before it means the QP
#: is not convex in floating point (their lengths never grow on a convex one); the neuron is
#: then left to ADMM.
PROX_GROWTH = 1.5
#: Default delta of :func:`reweighted_penalty`, relative to max|W|.
DELTA_REL = 1e-3


# ---- reweighted l1 ----------------------------------------------------------------------------
def reweighted_penalty(W: Any, delta: Optional[float] = None) -> Any:
    """Weights of the next reweighted-l1 round: ``1 / (|W| + delta)``, normalised to mean 1.

    Reweighted l1 (Candes, Wakin & Boyd 2008) solves ``min sum penalty * |W|`` repeatedly with
    the penalty built from the previous solution, so that large weights become cheap and small
    ones expensive: it approaches an l0 objective and gives sparser weights for the same
    epsilon. Feed the result to ``solve_admm(problem, penalty=...)``.

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
        The previous solution.
    delta : float, optional
        Positive smoothing constant (how small a weight counts as zero); default
        ``DELTA_REL * max|W|`` (``1e-3 max|W|``).

    Returns
    -------
    ndarray or Tensor of shape (M, N)
        Positive penalty with mean 1, same array kind, device and dtype as W. The
        normalisation keeps the l1 scale, so ADMM's tolerances and rho stay meaningful.
        An all-zero W gives all ones.
    """
    t = as_tensor(W, name="W")
    if not bool(torch.isfinite(t).all()):
        msg = "W must be finite"
        raise ValueError(msg)
    A = t.abs()
    w_max = float(A.max())
    if delta is None:
        delta = DELTA_REL * w_max
    else:
        try:
            delta = float(delta)
        except (TypeError, ValueError):
            msg = f"delta must be a positive number, got {delta!r}"
            raise TypeError(msg) from None
        if not (math.isfinite(delta) and delta > 0):
            msg = f"delta must be positive and finite, got {delta}"
            raise ValueError(msg)
    if delta == 0.0:  # W == 0: no information, plain l1
        pen = torch.ones_like(A)
    else:
        pen = 1.0 / (A + delta)
        pen = pen / pen.mean()
    return pen.numpy() if isinstance(W, np.ndarray) else pen


# ---- the refit --------------------------------------------------------------------------------
def _support_tensor(support: Any, M: int, N: int, device: torch.device) -> torch.Tensor:
    if isinstance(support, np.ndarray):
        if support.dtype != np.bool_:
            msg = (f"support must be a boolean array (True = weight kept), got dtype "
                   f"{support.dtype}; pass e.g. W != 0")
            raise TypeError(msg)
        S = torch.from_numpy(np.ascontiguousarray(support))
    elif isinstance(support, torch.Tensor):
        if support.dtype != torch.bool:
            msg = (f"support must be a boolean tensor (True = weight kept), got dtype "
                   f"{support.dtype}; pass e.g. W != 0")
            raise TypeError(msg)
        S = support.detach()
    else:
        msg = f"support must be a numpy array or a torch tensor, got {type(support).__name__}"
        raise TypeError(msg)
    if tuple(S.shape) != (M, N):
        msg = f"support must have shape (M, N) = ({M}, {N}), got {tuple(S.shape)}"
        raise ValueError(msg)
    return S.to(device)


def _chunks(sizes: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Neuron indices, largest supports first, grouped so that ``len(chunk) * max_k^2 * 16 <=
    budget`` (one at least: the chunk's float64 Cholesky factors and polish Hessians) and, past
    :data:`CHUNK_MIN` neurons, no support is below ``max_k / CHUNK_SPREAD``."""
    order = torch.argsort(sizes, descending=True, stable=True)
    sorted_sizes = sizes[order].tolist()
    out, i = [], 0
    while i < len(order):
        k = max(1, sorted_sizes[i])
        count = max(1, budget // (16 * k * k))
        # padding: close the chunk where supports fall below k / CHUNK_SPREAD
        j = i + CHUNK_MIN
        while j < min(len(order), i + count) and sorted_sizes[j] * CHUNK_SPREAD >= k:
            j += 1
        count = min(count, max(j - i, 1))
        out.append(order[i:i + count])
        i += count
    return out


def compact_support(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx, valid)``, both (m, k_max): row j's support indices in order, padded with index 0
    (``valid`` False) past ``k_j``."""
    k = int(S.sum(1).max()) if S.numel() else 0
    # support indices first (stable sort of ~S puts True first, in index order)
    idx = torch.argsort((~S).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.gather(S, 1, idx)
    return idx.masked_fill(~valid, 0), valid


def padded_gram(G: torch.Tensor) -> torch.Tensor:
    """``G`` (N, N) in float64 with a zero row and column after it (the padding index of
    :func:`support_factors`)."""
    N = G.shape[0]
    out = torch.zeros(N + 1, N + 1, dtype=torch.float64, device=G.device)
    out[:N, :N] = G
    return out


def support_factors(gram: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
                    delta: float) -> torch.Tensor:
    """(m, k, k) Cholesky factors of ``G_S + delta I`` per row of ``(idx, valid)``
    (:func:`compact_support`), identity on the padding; ``gram`` from :func:`padded_gram`.
    Where a factor fails (numerically indefinite), delta is raised on that one."""
    N = gram.shape[0] - 1
    # one flat take (0.44 s for 512 neurons x 154^2 where a 2-D index took 0.60 s); the
    # padding points at the zero row and column (no mask pass: 20% faster)
    pad = idx.masked_fill(~valid, N)
    Gs = torch.take(gram, pad[:, :, None] * gram.shape[1] + pad[:, None, :])
    Gs.diagonal(dim1=1, dim2=2).add_(torch.where(valid, delta, 1.0))
    L, info = torch.linalg.cholesky_ex(Gs)
    bump = delta
    while bool((info > 0).any()):  # numerically indefinite: raise delta on those
        bump *= 100.0
        bad = info > 0
        Gs[bad] = Gs[bad] + bump * torch.eye(Gs.shape[1], dtype=Gs.dtype, device=Gs.device)
        L2, info2 = torch.linalg.cholesky_ex(Gs[bad])
        L[bad] = L2
        info = torch.zeros_like(info)
        info[bad] = info2
    return L


def support_solve(L: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(G_S + delta I)^{-1} rhs`` per row, ``rhs (m, k, 1)``: two triangular solves with the
    factors (5x faster than ``cholesky_solve`` on one right-hand side each)."""
    half = torch.linalg.solve_triangular(L, rhs, upper=False)
    return torch.linalg.solve_triangular(L.transpose(1, 2), half, upper=True)


def support_lstsq(L: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, delta: float,
                  steps: int) -> torch.Tensor:
    """(m, k) least squares ``G_S w = b_S`` per row (``b`` = X^T y gathered on the support,
    float64), solved with the factors of ``G_S + delta I``, then ``steps`` proximal-point
    corrections that remove the delta bias (the residual after a step is ``delta`` times the
    step)."""
    C = support_solve(L, b[..., None])
    step = C
    for _ in range(steps):
        step = delta * support_solve(L, step)
        C = C + step
    return C[..., 0].masked_fill_(~valid, 0.0)


class _Chunk:
    """ADMM state of a group of neurons (columns ``cols`` of Y) on their supports.

    Coefficients are kept compact: ``C (m, k)`` holds neuron j's weights on the indices
    ``idx[j] (k,)`` (padded with index 0 and coefficient exactly 0 past ``k_j``).
    """

    def __init__(self, X, gram, Y, active, bound, support, cols, W_init, delta, constant,
                 start_zero=False, reach=True):
        self.X, self.dt, self.Xt = X, X.dtype, None
        N = X.shape[1]
        idx, valid = compact_support(support[cols])
        self.idx, self.valid, self.N = idx, valid, N
        self.gram, self._L, self.delta = gram, None, delta   # factors: built on first use
        self.polish_delta = delta * POLISH_REL / PROX_REL
        self.Y = Y[:, cols]
        self.active = active[:, cols]
        self.bound = None if bound is None else bound[:, cols]
        # start: the given weights on the support, else least squares on all rows
        if W_init is not None:
            self.C = torch.gather(W_init[cols].to(torch.float64), 1, idx).masked_fill_(~valid, 0.0)
        elif start_zero:
            self.C = torch.zeros(idx.shape, dtype=torch.float64, device=X.device)
        else:
            self.C = self.least_squares(0)
        # polish data, built on first use: H = X_OS^T X_OS (m, k, k), g = X_OS^T y_O (m, k);
        # H allocated on first use too (a linear layer's least squares never needs it: 16 m k^2
        # bytes to zero, 0.03 s of a 0.3 s refit for 512 neurons of 154 inputs)
        self._H = None
        self.g = torch.zeros_like(self.C)
        self.has_H = torch.zeros(len(cols), dtype=torch.bool, device=X.device)
        # rows each neuron's inequalities can bind: off Omega with some input of the support
        # nonzero (one GEMM of nonnegative terms: positive exactly when one term is). Rows
        # whose only nonzero support inputs are constant columns (a bias's ones) all read
        # ``c w_c <= v_p``: one constraint, of which only the least bound counts. Such rows
        # are many (MNIST images blank on a sparse neuron's pixels: 350 of the 388 tight rows
        # per neuron on LeNet's first layer at 90%) and would make every neuron degenerate.
        self.reach = None
        if self.bound is not None and reach:
            M_sup = torch.zeros(len(cols), N, dtype=X.dtype, device=X.device)
            M_sup.scatter_add_(1, idx, valid.to(X.dtype))   # add: the padding's index 0 adds 0
            has_const = (M_sup[:, constant] > 0).any(1)                   # (m,)
            M_sup[:, constant] = 0.0
            self.reach = (~self.active) & ((X.abs() @ M_sup.T) > 0)      # (P, m)
            flat = (~self.active) & ~self.reach                          # x_S is constant
            least = self.bound.masked_fill(~flat, math.inf).argmin(0)    # (m,)
            rep = has_const & flat[least, torch.arange(len(cols), device=X.device)]
            self.reach[least[rep], torch.nonzero(rep).flatten()] = True

    @property
    def H(self) -> torch.Tensor:
        """(m, k, k) float64 polish Hessians (zeros until :meth:`build_hessians`)."""
        if self._H is None:
            k = self.idx.shape[1]
            self._H = torch.zeros(len(self.idx), k, k, dtype=torch.float64,
                                  device=self.idx.device)
        return self._H

    @property
    def L(self) -> torch.Tensor:
        """(m, k, k) Cholesky factors of ``G_S + delta I`` (float64, identity on the padding),
        of the neurons still in the chunk; built on first use (the ADMM's W step and the
        least-squares start; the exact solve does not need them)."""
        if self._L is None:
            self._L = support_factors(self.gram(), self.idx, self.valid, self.delta)
        return self._L

    def least_squares(self, steps: int) -> torch.Tensor:
        """(m, k) least squares on all rows, each on its support (:func:`support_lstsq`)."""
        B = (self.X.T @ self.Y).T.to(torch.float64)            # (m, N) = (X^T Y)^T
        return support_lstsq(self.L, torch.gather(B, 1, self.idx), self.valid, self.delta,
                             steps)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``(G_S + delta I)^{-1} rhs`` per neuron, ``rhs (m, k, 1)``."""
        return support_solve(self.L, rhs)

    def build_hessians(self, rows: torch.Tensor) -> None:
        """Fill H and g of the working rows ``rows`` not built yet (one small GEMM each, over
        the neuron's active rows and support columns only), in float64.

        float64 whatever the data's dtype: a float32 ``X_OS^T X_OS`` of a rank-deficient
        ``X_OS`` (fewer active rows than support entries) is indefinite at float32's rounding
        (~1e-8 of its norm), above the factor's regularization (:attr:`polish_delta`, ~1e-9):
        the QP is then unbounded along that direction and the proximal steps of
        :func:`_least_distance` diverge (weights of 1e5-1e18 were returned as OPTIMAL on a
        neuron with one active row and seven inputs). Products of float32 numbers are exact in
        float64, so the rounding left is float64's (~1e-16). The float32 build was 20% faster
        on LeNet's first layer (0.4 s per refit)."""
        todo = rows[~self.has_H[rows]].tolist()
        if todo and self.Xt is None:
            self.Xt = self.X.T.contiguous()   # support rows of X^T are contiguous gathers
        for j in todo:
            sup = self.idx[j][self.valid[j]]
            om = torch.nonzero(self.active[:, j]).flatten()
            # 20-40% faster than X[:, sup][om] here
            Xo = self.Xt[sup][:, om].to(torch.float64)   # (k, |Omega|)
            n = len(sup)
            self.H[j, :n, :n] = Xo @ Xo.T
            self.g[j, :n] = Xo @ self.Y[om, j].to(Xo.dtype)
        self.has_H[rows] = True

    def dense(self, C: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(m, N) weights in the data dtype from compact coefficients (exact zeros off S)."""
        idx = self.idx if rows is None else self.idx[rows]
        W = torch.zeros(C.shape[0], self.N, dtype=torch.float64, device=C.device)
        return W.scatter_add_(1, idx, C).to(self.dt)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the neurons not in ``rows`` (indices into the current working set)."""
        for name in ("idx", "valid", "C", "g", "has_H"):   # one row per neuron
            setattr(self, name, getattr(self, name)[rows])
        for name in ("_L", "_H"):   # when built
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[rows])
        for name in ("Y", "active", "bound", "reach"):   # one column per neuron
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[:, rows])


def refit(problem: NetTrimProblem, support: Any, *, W0: Any = None, eps_abs: float = 1e-6,
          eps_rel: float = 1e-4, max_iter: int = 5000) -> NetTrimResult:
    """Least active-set residual on a fixed support, under the program's inequalities.

    Solves, for every neuron at once (see the module docstring for the ADMM)::

        minimize    || (X W^T - Y) on Omega ||_F        (linear layer: all entries)
        subject to  X W^T <= V off Omega                (ReLU layer; V = 0 when None)
                    W = 0 off support

    Run after an l1 solve has chosen the support (``support = W != 0``) to undo the l1
    shrinkage of the kept weights. epsilon plays no part: the residual is minimised.

    Parameters
    ----------
    problem : NetTrimProblem
        The layer's program (X, Y, V, relu). numpy data runs on the CPU and returns numpy;
        torch data runs on its device and returns a tensor there, in the same dtype.
    support : bool ndarray or bool Tensor of shape (M, N)
        True where a weight may be nonzero. Entries off the support are exact zeros in the
        result.
    W0 : ndarray or Tensor of shape (M, N), optional
        Starting point (the l1 solution). Neuron by neuron, the result is never worse than
        W0: where a row of W0 is supported and feasible (violation <= feas_tol max|Y|) and
        fits better than the refit row (by more than ``sqrt(P) eps_abs`` in the scaled
        residual), that row of W0 is returned.
    eps_abs, eps_rel : float
        Absolute and relative tolerances of the per-neuron primal/dual residual test.
    max_iter : int
        Iteration cap of each chunk of neurons; reaching it returns status ``MAX_ITER``. On the
        CPU the ADMM only takes the neurons the exact solve leaves, and stops sooner where its
        GEMMs would pass :data:`FALLBACK_MAX_WORK` multiply-adds.

    Returns
    -------
    NetTrimResult
        ``solver="refit"``. ``residual`` is the minimised active-set residual (the refit's
        objective); ``objective`` is ``sum |W|`` as for the l1 solvers; ``iterations`` the
        largest iteration count of any chunk; ``rho`` the median final per-neuron penalty.
        ``status`` is ``OPTIMAL`` when every neuron converged with its inequalities met,
        ``MAX_ITER`` when a chunk hit the cap, ``INFEASIBLE`` when a neuron with an empty
        support violates its inequalities (W = 0 is then its only candidate).

    Notes
    -----
    Cost of the exact solve (CPU, ReLU layer): per neuron a Hessian on its support and active
    rows (``|Omega_m| k_m^2``) and a few NNLS solves on the rows that bind; per round one GEMM
    checking every row. Of the ADMM (what the exact solve leaves, CUDA): one Gram matrix
    ``X^T X`` (P N^2), one Cholesky factor per neuron (``k_m^3 / 3``), then per iteration two
    GEMMs of size P x N x (neurons not yet converged) and batched triangular solves; the
    factors of one chunk take at most :data:`FACTOR_BYTES`.
    """
    settings = checked_settings(problem, eps_abs=eps_abs, eps_rel=eps_rel, max_iter=max_iter)
    t0 = time.perf_counter()
    X, Y, V = problem.program_tensors()
    P, N, M = problem.shape
    dev, dt = X.device, X.dtype
    S = _support_tensor(support, M, N, dev)
    W_start = None if W0 is None else problem._weight(W0)

    # ---- scaling and constant data --------------------------------------------------------
    X, Y, s, active, bound = scaled_data(problem, X, Y, V)
    y_scale = float(Y.abs().max())
    viol_tol = settings.feas_tol * y_scale
    # the Gram matrix X^T X (float64) only where the ADMM's factors or the least-squares start
    # need it; the exact solve does not (P N^2: 0.1 s per refit on LeNet's first layer)
    @functools.cache
    def gram() -> torch.Tensor:
        """``X^T X`` in float64, padded (:func:`padded_gram`)."""
        X64 = X.to(torch.float64)
        return padded_gram(X64.T @ X64)

    diag = torch.linalg.vector_norm(X, dim=0, dtype=torch.float64) ** 2   # diag(X^T X)
    delta = PROX_REL * max(float(diag.max()), TINY)
    # constant nonzero columns (the ones column of a bias)
    constant = (X.amax(0) == X.amin(0)) & (X[0] != 0) if P else \
        torch.zeros(N, dtype=torch.bool, device=dev)

    W = torch.zeros(M, N, dtype=dt, device=dev)
    rho_final = torch.full((M,), math.nan, dtype=torch.float64)   # NaN: solved exactly
    sizes = S.sum(1)
    status = OPTIMAL
    iterations = 0
    r_all = torch.zeros(M, dtype=torch.float64)
    s_all = torch.zeros(M, dtype=torch.float64)
    nonempty = torch.nonzero(sizes > 0).flatten()
    for cols in _chunks(sizes[nonempty].cpu(), FACTOR_BYTES):
        cols = nonempty[cols.to(dev)]
        chunk = _Chunk(X, gram, Y, active, bound, S, cols, W_start, delta, constant)
        if bound is None:   # linear layer: least squares on each support, solved directly
            done, its = _least_squares(chunk, cols, W), 0
        else:
            exact = _exact(chunk, viol_tol) if EXACT_ROUNDS and dev.type == "cpu" else \
                torch.zeros(len(cols), dtype=torch.bool, device=dev)
            W[cols[exact]] = chunk.dense(chunk.C[exact], exact)
            done, its = True, 0
            if not bool(exact.all()):   # left to ADMM (and its polish), its work bounded
                rest = torch.nonzero(~exact).flatten()
                chunk.keep(rest)
                cap = max(2 * POLISH_EVERY, int(FALLBACK_MAX_WORK / max(P * N * len(rest), 1)))
                done, its = _run_chunk(chunk, cols[rest], W,
                                       replace(settings, max_iter=min(settings.max_iter, cap)),
                                       viol_tol, rho_final, r_all, s_all)
        iterations = max(iterations, its)
        if not done:
            status = MAX_ITER
    gram.cache_clear()

    # ---- per-neuron safeguard against W0, final measures -----------------------------------
    res_m, viol_m = _measure(X @ W.T, Y, active, bound)
    if W_start is not None:
        supported = ~((W_start != 0) & ~S).any(1)
        res0, viol0 = _measure(X @ W_start.T, Y, active, bound)
        # better by more than the absolute tolerance: on a layer with fewer rows than
        # inputs both may fit to rounding, and the refit's support is what was asked for
        better = res0 < res_m - math.sqrt(P) * settings.eps_abs
        take = supported & (viol0 <= viol_tol) & (better | (viol_m > viol_tol))
        if bool(take.any()):
            W[take] = W_start[take]
            res_m = torch.where(take, res0, res_m)
            viol_m = torch.where(take, viol0, viol_m)
    broken = viol_m > viol_tol * (1 + 1e-6)
    if status == OPTIMAL and bool(broken.any()):
        # a row off Omega on which every input of the support is zero reads 0 <= V: with V
        # below -viol_tol no weight on the support meets it (an empty support is one case)
        blind = (~active) & ((X.abs() @ S.T.to(X.dtype)) == 0)
        stuck = (blind & (bound < -viol_tol)).any(0).cpu()
        # anything else is never OPTIMAL either (a bug's safety net)
        status = INFEASIBLE if bool((stuck | ~broken).all()) else SOLVER_ERROR
    residual = problem.full_residual(float(torch.linalg.vector_norm(res_m)) * s)
    violation = float(viol_m.max()) * s if M else 0.0
    objective = float(W.abs().sum())
    rho = float(rho_final.nanmedian())
    W_out = W.cpu().numpy() if problem.is_numpy else W
    return NetTrimResult(
        W=W_out, status=status, iterations=iterations, objective=objective, residual=residual,
        violation=violation, epsilon=problem.epsilon,
        primal_residual=float(torch.linalg.vector_norm(r_all)) * s,
        dual_residual=float(torch.linalg.vector_norm(s_all)) * s,
        solve_time=time.perf_counter() - t0, solver="refit", rho=rho)


def _measure(XW: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
             bound: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron active-set residual and largest violation (float64, CPU), scaled units."""
    D = XW - Y
    if bound is None:
        res = torch.linalg.vector_norm(D, dim=0)
        viol = torch.zeros_like(res)
    else:
        res = torch.linalg.vector_norm(D.masked_fill_(~active, 0.0), dim=0)
        viol = (XW - bound).amax(dim=0).clamp_(min=0.0)   # bound is +inf on Omega
    return res.double().cpu(), viol.double().cpu()


def _least_squares(ch: _Chunk, cols: torch.Tensor, W: torch.Tensor) -> bool:
    """A linear layer's refit: no inequalities, so each neuron's QP is the least squares on
    its support (:meth:`_Chunk.least_squares`, three bias corrections), no ADMM (timing in
    the module docstring). Writes W; returns True."""
    ch.C = ch.least_squares(3)
    W[cols] = ch.dense(ch.C)
    return True


def _exact(ch: _Chunk, viol_tol: float) -> torch.Tensor:
    """Each neuron's QP solved exactly, as a least-distance program; returns the solved mask.

    Neuron m's refit is ``min 1/2 w^T H w - g^T w  s.t.  B w <= v`` with ``H = X_OS^T X_OS``,
    ``g = X_OS^T y_O`` and ``B = X_RS``, ``v = V_R`` on a set R of candidate rows. With
    ``H (+ polish_delta I, removed again by proximal steps: :func:`_least_distance`) = L L^T``,
    ``c = L^{-1} g`` and ``x = L^T w - c`` it reads
    ``min ||x||  s.t.  -D x >= D c - v =: h``, ``D = B L^{-T}``: a least-distance program,
    which Lawson & Hanson (1974, ch. 23) solve by one nonnegative least squares::

        z = argmin_{z >= 0} || [-D^T; h^T] z - e_{k+1} ||,   r = [-D^T; h^T] z - e_{k+1}
        x = -r[:k] / r[k],    multipliers  lambda = z / (-r[k]) >= 0

    (``r[k] = 0``: the rows R admit no w). The NNLS (scipy's Lawson-Hanson active set) ends in
    finitely many steps also on degenerate neurons, those with more tight rows than support
    entries, where the ADMM polish's active-set guesses cycle. Its solution meets the KKT
    conditions on R by construction; R starts with the rows the start point (the l1
    solution) meets or violates and grows by every row outside it violated by more than
    ``POLISH_ADD * viol_tol`` (one GEMM per round checks all rows) until none is and every
    row is met within ``viol_tol`` (the rows of R are met exactly in float64; what the data's
    dtype reads back is rounding): the multipliers of the rows outside R are 0, so the
    neuron's QP is then solved (certified). A neuron not solved in :data:`EXACT_ROUNDS`
    rounds, or with no row to add while a row of R is still violated, is left to ADMM. Measured on
    LeNet-300-100 (5,000 MNIST rows, one thread, 90%): the 784 -> 300 layer's final refit
    6.3 s / 275 ADMM iterations -> 1.5 s (2-3 rounds; ~0.6 s of them in the per-neuron
    solves, 0.4 s building H), its capped pilot refit 8.1 s -> 2.3 s, the 300 -> 100 layer's
    cascade refit 3.6 s -> 0.35 s; residuals equal to the ADMM's within 2e-6 relative, with
    violations ~1e-6 of max|Y| instead of up to the tolerance.
    """
    m = ch.C.shape[0]
    dev = ch.X.device
    all_rows = torch.arange(m, device=dev)
    ch.build_hessians(all_rows)
    L, info = _factor(ch, all_rows)   # info > 0 (not positive definite): left to ADMM
    L_cpu, g_cpu, delta = L.cpu(), ch.g.cpu(), ch.polish_delta
    sizes = ch.valid.sum(1).tolist()
    X = ch.X
    XW = X @ ch.dense(ch.C).T
    # the start's tight rows, the most violated first
    over = (XW - ch.bound).masked_fill_(~ch.reach, -math.inf)
    rows_R = _most_violated(over, over >= 0, EXACT_ADD)
    del XW, over
    C = ch.C.clone()
    # 1/2 ||y on Omega||^2 per neuron: the objective's constant, its scale (w = 0 gives it)
    y_sq = (0.5 * torch.linalg.vector_norm(ch.Y.masked_fill(~ch.active, 0.0), dim=0,
                                           dtype=torch.float64) ** 2).tolist()
    solved = torch.zeros(m, dtype=torch.bool, device=dev)
    todo = torch.nonzero(info == 0).flatten()
    for _ in range(EXACT_ROUNDS):
        ok = torch.ones(len(todo), dtype=torch.bool, device=dev)
        for i, j in enumerate(todo.tolist()):
            n = sizes[j]
            w = _least_distance(X, ch.idx[j, :n], torch.nonzero(rows_R[:, j]).flatten(),
                                ch.bound[:, j], L_cpu[j, :n, :n], g_cpu[j, :n], delta,
                                C[j, :n].cpu(), y_sq[j])
            if w is None:
                ok[i] = False
            else:
                C[j, :n] = w.to(dev)
        todo = todo[ok]
        if len(todo) == 0:
            break
        over = (X @ ch.dense(C[todo], todo).T - ch.bound[:, todo]).masked_fill_(
            ~ch.reach[:, todo], -math.inf)
        # rows outside R violated by more than POLISH_ADD * viol_tol join it; the rows of R
        # the solve met exactly (in float64), and what the data's dtype reads back of them is
        # rounding: they count as met up to viol_tol (on a conv layer of 100,352 float32 rows
        # three neurons read 1e-3 - 1e-2 viol_tol on rows of R, above POLISH_ADD viol_tol,
        # and were left to ADMM at 2 s per iteration)
        cap = max(EXACT_ADD, int(rows_R[:, todo].sum(0).max()))
        new = _most_violated(over, (over > POLISH_ADD * viol_tol) & ~rows_R[:, todo], cap)
        grows = new.any(0)
        feasible = ~grows & (over.amax(0) <= viol_tol)
        solved[todo[feasible]] = True
        rows_R[:, todo] |= new
        todo = todo[grows]   # a neuron with no row to add and not met: left to ADMM
        if len(todo) == 0:
            break
    ch.C[solved] = C[solved]
    return solved


def _most_violated(over: torch.Tensor, keep: torch.Tensor, cap: int) -> torch.Tensor:
    """The entries of ``keep (P, m)`` with the largest ``over``, at most ``cap`` per column."""
    if over.shape[0] <= cap:
        return keep
    top = torch.topk(over.masked_fill(~keep, -math.inf), cap, dim=0).indices
    return keep & torch.zeros_like(keep).scatter_(0, top, True)


def _factor(ch: _Chunk, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factors of ``H + polish_delta I`` of the neurons ``rows`` (identity on the
    padding) and cholesky_ex's info (> 0: not positive definite)."""
    H = ch.H[rows].clone()
    H.diagonal(dim1=1, dim2=2).add_(torch.where(ch.valid[rows], ch.polish_delta, 1.0))
    return torch.linalg.cholesky_ex(H)


def _least_distance(X, sup, rows, bound, L, g, delta, w, y_sq=0.0):
    """One neuron's QP on the rows ``rows`` (see :func:`_exact`): w on its support (float64,
    CPU), or None where the rows admit no w or the NNLS did not finish. ``L`` (the factor of
    ``H + delta I``), ``g`` and the start ``w`` are float64 CPU tensors.

    ``delta`` keeps the factor safe on a singular ``X_OS``; its bias is removed by proximal
    point steps (each the least-distance program of ``1/2 w^T (H + delta I) w - (g + delta
    w_prev)^T w``, whose fixed point is the QP's solution) until the objective ``1/2 w^T H w -
    g^T w`` falls by less than :data:`EXACT_KKT_TOL` of its size, at most
    :data:`EXACT_REFINE` steps (a direction still moving after them has curvature of order
    delta: it changes the objective by that order). On a well-conditioned neuron the second
    step already stops. The algebra is torch's (it keeps to torch's thread count, where numpy's
    BLAS would start its own threads: 1.6x the CPU time on LeNet's first layer), only the NNLS
    is scipy's."""
    k = len(sup)
    if len(rows):
        B = X[rows[:, None], sup[None, :]].to(device="cpu", dtype=torch.float64)   # X_RS
        v = bound[rows].to(device="cpu", dtype=torch.float64)
        # identical constraints once: restricted to the support, a convolution's rows repeat
        # (blank patches; on LeNet-5's first layer at 90% the NNLS was 64% of prune_layer)
        Bv = torch.unique(torch.cat([B, v[:, None]], 1), dim=0)
        B, v = Bv[:, :k], Bv[:, k].contiguous()
        D = torch.linalg.solve_triangular(L, B.T, upper=False)          # (k, r) = (B L^-T)^T
        E = torch.cat([-D, torch.zeros_like(v)[None]])
        e = torch.zeros(k + 1, dtype=torch.float64)
        e[-1] = 1.0
    f_old, step_old = math.inf, math.inf
    for _ in range(EXACT_REFINE):
        w_prev = w
        c = torch.linalg.solve_triangular(L, (g + delta * w)[:, None], upper=False)[:, 0]
        x = torch.zeros_like(c)
        if len(rows):
            h = c @ D - v
            scale = max(float(h.abs().max()), TINY)   # normalised: r[k] is of order one
            E[-1] = h / scale
            try:
                z, _ = nnls(E.numpy(), e.numpy(), maxiter=50 * (k + 1))
            except RuntimeError:   # iteration limit
                return None
            r = E @ torch.from_numpy(z) - e
            if not (float(r[-1]) < -1e-12) or not bool(torch.isfinite(r).all()):
                return None        # r[k] = 0: the rows admit no w
            x = -(r[:k] / r[-1]) * scale
        u = c + x                                             # = L^T w
        w = torch.linalg.solve_triangular(L.T, u[:, None], upper=True)[:, 0]
        terms = (0.5 * float(u @ u), 0.5 * delta * float(w @ w), float(g @ w))
        f = terms[0] - terms[1] - terms[2]
        # the objective's rounding scales with its terms and its constant ``y_sq`` (1/2
        # ||y on Omega||^2, dropped from f), not with f: on LeNet's first layer, neurons pinned
        # at w ~ 1e-14 by their rows had f rise from 4e-16 to 1.5e-15 (|g| ~ 0.9), which a
        # tolerance relative to |f| read as divergence; each was left to ADMM (620 iterations)
        size = EXACT_KKT_TOL * (sum(abs(t) for t in terms) + y_sq + TINY)
        # on a convex QP proximal steps never lengthen and never raise the objective; where
        # they do, H is indefinite at rounding level and the steps diverge: not certified
        step = float(torch.linalg.vector_norm(w - w_prev))
        if step > PROX_GROWTH * step_old + TINY or f > f_old + size:
            return None
        if f_old - f <= size:
            break
        f_old, step_old = f, step
    return w


def _run_chunk(ch: _Chunk, cols: torch.Tensor, W: torch.Tensor, settings: ADMMSettings,
               viol_tol: float, rho_final: torch.Tensor, r_all: torch.Tensor,
               s_all: torch.Tensor) -> tuple[bool, int]:
    """ADMM on one chunk; writes finished rows of W as they finish. Returns (all done, its).

    A neuron finishes when its residual test passes (its rows are then polished) or earlier
    when a polish every :data:`POLISH_EVERY` iterations certifies it optimal.
    """
    X = ch.X
    P = X.shape[0]
    dev, dt = X.device, X.dtype
    live = cols.clone()                              # global neuron index of each working row
    XW = X @ ch.dense(ch.C).T                        # (P, m)
    U = torch.zeros_like(XW)
    rho = torch.full((len(live),), RHO_START, dtype=dt, device=dev)
    abs_tol = math.sqrt(P) * settings.eps_abs
    r = sd = torch.full_like(rho, math.inf)
    it = 0
    for it in range(1, settings.max_iter + 1):
        # Z = prox_f(X W^T - U): weighted average with Y on Omega, min(., V) off it
        A = XW - U
        Z = (ch.Y + rho * A) / (1.0 + rho)
        if ch.bound is not None:
            Z = torch.where(ch.active, Z, torch.minimum(A, ch.bound))
        del A
        # over-relaxation: Zh = a Z + (1 - a) X W^T
        Zh = Z * RELAX + XW * (1.0 - RELAX)
        # W step: (G_S + delta I) w = X_S^T (Zh + U) + delta w_prev, per neuron
        B = (X.T @ (Zh + U)).T.to(torch.float64)    # (m, N)
        rhs = torch.gather(B, 1, ch.idx).masked_fill_(~ch.valid, 0.0).add_(ch.C, alpha=ch.delta)
        ch.C = ch.solve(rhs[..., None])[..., 0].masked_fill_(~ch.valid, 0.0)
        XW_new = X @ ch.dense(ch.C).T
        # U += Zh - X W^T
        U.add_(Zh).sub_(XW_new)
        # per-neuron residuals
        r = torch.linalg.vector_norm(Z - XW_new, dim=0)
        sd = rho * torch.linalg.vector_norm(XW_new - XW, dim=0)
        pri_scale = torch.maximum(torch.linalg.vector_norm(XW_new, dim=0),
                                  torch.linalg.vector_norm(Z, dim=0))
        XW = XW_new
        del Z, Zh, B, rhs
        dual_scale = rho * torch.linalg.vector_norm(U, dim=0)
        ok = (r <= abs_tol + settings.eps_rel * pri_scale) & \
             (sd <= abs_tol + settings.eps_rel * dual_scale)
        if bool(ok.any()) and ch.bound is not None:
            ok &= (XW - ch.bound).amax(dim=0) <= viol_tol
        if bool(ok.any()):
            _polish(ch, torch.nonzero(ok).flatten(), XW, U, viol_tol)
        elif it % POLISH_EVERY == 0:
            ok = torch.zeros_like(ok)
            ok[torch.arange(len(live), device=dev)] = _polish(
                ch, torch.arange(len(live), device=dev), XW, U, viol_tol)
        if bool(ok.any()):
            _write(ch, torch.nonzero(ok).flatten(), live, W, rho, r, sd, rho_final, r_all, s_all)
            keep = torch.nonzero(~ok).flatten()
            if len(keep) == 0:
                return True, it
            ch.keep(keep)
            live, XW, U, rho = live[keep], XW[:, keep], U[:, keep], rho[keep]
            r, sd, pri_scale, dual_scale = r[keep], sd[keep], pri_scale[keep], dual_scale[keep]
        # residual balancing per neuron: rho *= sqrt(r'/s') outside [1/RHO_ADAPT, RHO_ADAPT]
        if it % ADAPT_EVERY == 0:
            ratio = torch.sqrt((r / pri_scale.clamp(min=TINY)).clamp(min=TINY)
                               / (sd / dual_scale.clamp(min=TINY)).clamp(min=TINY))
            change = (ratio > RHO_ADAPT) | (ratio < 1.0 / RHO_ADAPT)
            if bool(change.any()):
                factor = torch.where(change, ratio, torch.ones_like(ratio))
                rho = rho * factor
                U = U / factor
    rows = torch.arange(len(live), device=dev)
    certified = _polish(ch, rows, XW, U, viol_tol)
    _write(ch, rows, live, W, rho, r, sd, rho_final, r_all, s_all)
    return bool(certified.all()), it


def _polish(ch: _Chunk, rows: torch.Tensor, XW: torch.Tensor, U: torch.Tensor,
            viol_tol: float) -> torch.Tensor:
    """Exact solve on the active set guessed by ADMM; kept where the KKT conditions hold.

    For neuron m with support S, the inequalities ADMM holds at their bound
    (``E = {p not in Omega: (X W^T - U)[p] >= V[p]}``, the rows its Z step clips) become
    equalities and the equality-constrained least squares is solved exactly::

        [ X_OS^T X_OS   X_ES^T ] [w     ]   [ X_OS^T y_O ]
        [ X_ES          0      ] [lambda] = [ v_E        ]

    (O = Omega rows; a ``polish_delta`` regularization of both diagonal blocks keeps the
    factorization safe; iterative refinement started from the ADMM row removes it). The
    solution is stationary and complementary by construction; where it is also feasible
    (violation <= viol_tol) with ``lambda >= 0`` it satisfies the KKT conditions of the
    refit QP, hence is optimal: it replaces the ADMM row and the neuron is certified.
    Otherwise E is corrected as in a primal-dual active-set method (drop rows with
    ``lambda < 0``, add violated rows) for up to :data:`POLISH_STEPS` solves.
    Returns the certified mask over ``rows``.
    """
    ch.build_hessians(rows)
    return _polish_rows(ch, rows, XW[:, rows], U[:, rows], viol_tol)


def _polish_rows(ch, rows, XW, U, viol_tol) -> torch.Tensor:
    X = ch.X
    d = len(rows)
    idx, valid = ch.idx[rows], ch.valid[rows]
    n_free = valid.sum(1)
    H, g = ch.H[rows], ch.g[rows]
    w0 = ch.C[rows]
    if ch.bound is None:
        bound = None
        E = torch.zeros(d, X.shape[0], dtype=torch.bool, device=X.device)
        candidates = E
    else:
        bound = ch.bound[:, rows].T                              # (d, P), +inf on Omega
        candidates = ch.reach[:, rows].T                         # rows that can bind
        E = candidates & ((XW - U).T >= bound)
        lam_admm = (-U.T).clamp(min=0.0).masked_fill(~E, 0.0)
        # more clipped rows than unknowns (degenerate: tight rows with zero multiplier):
        # keep the clearly positive multipliers only, at most as many as unknowns
        many = E.sum(1) > n_free
        if bool(many.any()):
            lm = lam_admm[many]
            kth = torch.sort(lm, dim=1, descending=True).values.gather(
                1, (n_free[many] - 1).clamp(min=0)[:, None])
            E[many] &= (lm > POLISH_STRONG * lm.amax(1, keepdim=True)) & (lm >= kth) & (lm > 0)
    certified = torch.zeros(d, dtype=torch.bool, device=X.device)
    best = w0.clone()
    for _ in range(POLISH_STEPS if bound is not None else 1):
        todo = ~certified & (E.sum(1) <= n_free)
        if not bool(todo.any()):
            break
        t = torch.nonzero(todo).flatten()
        w, lam, ok = _kkt_solve(X, idx[t], H[t], g[t], w0[t], valid[t], E[t],
                                None if bound is None else bound[t], ch.polish_delta)
        viol_rows = None
        if bound is not None:
            z = (X @ ch.dense(w, rows[t]).T).T                   # (t, P)
            over = (z - bound[t]).masked_fill(~candidates[t], -math.inf)
            ok &= over.amax(1) <= viol_tol
            viol_rows = over > POLISH_ADD * viol_tol   # above rounding, E's rows excluded
        ok &= (lam >= -POLISH_LAMBDA_TOL * (1.0 + lam.abs().amax(1, keepdim=True))).all(1) \
            if lam.shape[1] else torch.ones_like(ok)
        good = t[ok]
        best[good] = w[ok]
        certified[good] = True
        if bound is None:
            break
        # primal-dual active-set update of the failures
        bad = ~ok
        Et = E[t]
        drop = torch.zeros_like(Et)
        if lam.shape[1]:
            erow = _rows_of(Et, lam.shape[1])
            neg = lam < 0
            drop.scatter_(1, erow, neg & torch.gather(Et, 1, erow))
        E[t[bad]] = ((Et & ~drop) | (viol_rows & ~Et))[bad]
    if bool(certified.any()):
        C = ch.C[rows]
        C[certified] = best[certified]
        ch.C[rows] = C
    return certified


def _rows_of(E: torch.Tensor, e: int) -> torch.Tensor:
    """Indices of the True entries of each row of E first, in order, padded: (d, e)."""
    return torch.argsort((~E).to(torch.int8), dim=1, stable=True)[:, :e]


def _kkt_solve(X, idx, H, g, w0, valid, E, bound, delta):
    """Solve the polish's KKT system for a batch; returns (w, lambda, solved mask)."""
    d, k = idx.shape
    f64 = torch.float64
    e = int(E.sum(1).max()) if d else 0
    erow = _rows_of(E, e)
    evalid = torch.gather(E, 1, erow)
    A = X[erow[:, :, None], idx[:, None, :]].to(f64)             # (d, e, k) = X[E, S]
    A.mul_(evalid[..., None].to(f64)).mul_(valid[:, None, :].to(f64))
    vE = torch.zeros(d, e, dtype=f64, device=X.device) if bound is None else \
        torch.gather(bound, 1, erow).to(f64).masked_fill_(~evalid, 0.0)
    # KKT matrix with identity rows on the padding (padded unknowns solve to 0)
    K0 = torch.zeros(d, k + e, k + e, dtype=f64, device=X.device)
    K0[:, :k, :k] = H
    K0[:, :k, k:] = A.transpose(1, 2)
    K0[:, k:, :k] = A
    pad = torch.cat([~valid, ~evalid], 1)
    K0.diagonal(dim1=1, dim2=2).masked_fill_(pad, 1.0)
    reg = torch.cat([torch.ones_like(valid, dtype=f64), -torch.ones_like(evalid, dtype=f64)], 1)
    reg.mul_(delta).masked_fill_(pad, 0.0)
    K = K0.clone()
    K.diagonal(dim1=1, dim2=2).add_(reg)
    rhs = torch.cat([g, vE], 1)[..., None]
    LU, piv, info = lu_factor_batched(K)
    # start from the ADMM row, so that refinement (a proximal-point iteration on the exact
    # KKT system) stays next to it along directions the data do not determine
    sol = torch.cat([w0, torch.zeros_like(vE)], 1)[..., None]
    for _ in range(POLISH_REFINE):
        sol = sol + torch.linalg.lu_solve(LU, piv, rhs - K0 @ sol)
    sol = sol[..., 0]
    ok = (info == 0) & torch.isfinite(sol).all(1)
    w = sol[:, :k].masked_fill(~valid, 0.0)
    lam = sol[:, k:].masked_fill(~evalid, 0.0)
    return w, lam, ok


def lu_factor_batched(K: torch.Tensor):
    """``torch.linalg.lu_factor_ex`` of a batch, on the CPU with one thread.

    torch 2.13.0's CPU build returns invalid pivots for batched LU with more than one
    thread (MKL "Parameter 6 was incorrect on entry to DLASWP"; every call on (12, 195, 195)
    float64 with 2 threads, none with 1; batched ``torch.linalg.solve`` likewise), and
    ``lu_solve`` then fails or hangs. Batched Cholesky is not affected.
    """
    threads = torch.get_num_threads()
    if K.device.type != "cpu" or threads == 1:
        return torch.linalg.lu_factor_ex(K)
    torch.set_num_threads(1)
    try:
        return torch.linalg.lu_factor_ex(K)
    finally:
        torch.set_num_threads(threads)


def _write(ch, rows, live, W, rho, r, sd, rho_final, r_all, s_all) -> None:
    """Copy finished working rows into the outputs."""
    targets = live[rows]
    W[targets] = ch.dense(ch.C[rows], rows)
    t_cpu = targets.cpu()
    rho_final[t_cpu] = rho[rows].double().cpu()
    r_all[t_cpu] = r[rows].double().cpu()
    s_all[t_cpu] = sd[rows].double().cpu()
