"""The ReLU program's data term on per-neuron Gram matrices and a working set of rows.

For neuron m the Lagrangian's data term (:mod:`solvers.lagrangian`) reads::

    1/2 ||X_Om w - y_Om||^2  +  indicator(X_i w <= v_i  for every row i off Omega_m)

The row ADMM touches all P rows at every iteration (two ``P x N x M`` GEMMs). Here:

* the active rows of each neuron enter through their Gram matrix ``G_m = X_Om^T X_Om``
  (one pass over the rows), as N compressed rows ``R_m = diag(sqrt(l)) V^T`` from
  ``G_m = V diag(l) V^T`` with targets ``q_m = diag(1/sqrt(l)) V^T X_Om^T y_Om``:
  ``||R_m w - q_m||^2`` is the active residual less a constant (the part of ``y_Om`` outside
  the range of ``X_Om``);
* the inequalities enter on a working set S of rows; every check on the full data (each
  stopping test, and every :data:`GROW_EVERY` iterations) adds the rows that violate, the most
  violated first (constraint generation). The program restricted to S has a larger feasible
  set than the full one, so its solution solves the full one as soon as no row outside S is
  violated: a stop is only accepted then, and the answer is certified on every row.

An iteration then costs ``O(N^2 M + |S| N M)`` instead of ``O(P N M)``; the one-time cost is
the Gram pass (``sum_m min(|Omega_m|, P' - |Omega_m|) N^2`` on the P' distinct rows: a
neuron active on most rows takes the full Gram matrix less its inactive rows') and the
eigendecompositions (``O(N^3 M)``). It pays where P is large next to N
(:func:`use_working_set`): a convolution's patches, a layer calibrated on many tokens.

The stacked rows of neuron m are ``[R_m; X_S]``: the ADMM of :mod:`solvers.lagrangian` runs on
them unchanged (the R rows are active with targets q; a row of S is an inequality where it is
off Omega_m and free, bound +inf, where it is on it, since that row's fit is already in R_m).
"""

from __future__ import annotations

import math

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .admm import RELAX

__all__ = ["WorkingSetRows", "distinct_rows", "iterates_on_working_set", "use_working_set",
           "working_rows_for", "GROW_EVERY", "GROW_FRACTION",
           "MIN_ROWS_PER_INPUT", "MIN_ROW_WORK", "MAX_GRAM_ENTRIES"]

#: Iterations between two checks of the rows outside the working set (one ``P x N x M`` GEMM).
GROW_EVERY = 10
#: Rows added at one check: the most violated, at least this fraction of P and at most as
#: many again as the working set has (it doubles): the early iterates violate most rows, few
#: of which bind at the end.
GROW_FRACTION = 1 / 32
#: The working set is used where the rows are at least this many times the inputs: below
#: it the row ADMM's GEMMs are cheaper than the per-neuron matrix products, which run at
#: memory speed (``bench_rows.py --sweep``: an iteration on the working set cost 1.1x less
#: than on all rows at 115 rows per input, 1.3x more at 46) ...
MIN_ROWS_PER_INPUT = 100
#: ... where an iteration on all rows is work enough (``P N M`` at least this; below it the
#: working set's bookkeeping costs more than it saves: 2.5x slower per iteration on a
#: depthwise convolution's one-channel programs, ``N = 10, M = 1``, whose iterations on all
#: rows take 0.1-1 ms) ...
MIN_ROW_WORK = 5e5
#: ... and the per-neuron matrices (``M N^2`` entries, two of them) fit in this many entries.
MAX_GRAM_ENTRIES = 1.5e8
#: Neurons per batch of the Gram pass and eigendecompositions (float64 temporaries).
CHUNK_ENTRIES = 2e7


def distinct_rows(X: torch.Tensor, Y: torch.Tensor, bound: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first of each set of identical rows of ``(X, Y, bound)`` and how many there are:
    ``(indices, counts)``, counts in X's dtype. Rows are grouped by a random projection and
    each is compared with its group's first row, so rows that differ are never merged."""
    g = torch.Generator(device=X.device).manual_seed(0)
    finite = torch.where(torch.isfinite(bound), bound, torch.full_like(bound, -1.0))
    key = torch.cat([X, Y, finite], 1).double()
    h = key @ torch.randn(key.shape[1], dtype=torch.float64, generator=g, device=X.device)
    _, group = torch.unique(h, return_inverse=True)
    P = X.shape[0]
    index = torch.arange(P, device=X.device)
    first = torch.full((int(group.max()) + 1 if P else 0,), P, device=X.device,
                       dtype=torch.long).scatter_reduce_(0, group, index, "amin")
    head = first[group]
    same = (key == key[head]).all(dim=1)
    head = torch.where(same, head, index)   # a hash collision keeps its own row
    keep = head == index
    counts = torch.zeros(P, dtype=X.dtype, device=X.device).index_add_(
        0, head, torch.ones(P, dtype=X.dtype, device=X.device))
    return index[keep], counts[keep]


def use_working_set(P: int, N: int, M: int) -> bool:
    """Whether the working set is the cheaper way to solve a ReLU program of this shape."""
    return (P >= MIN_ROWS_PER_INPUT * N and P * N * M >= MIN_ROW_WORK
            and M * N * N <= MAX_GRAM_ENTRIES)


def iterates_on_working_set(problem, rows: str = "auto") -> bool:
    """Whether :func:`solvers.solve_lagrangian` with this ``rows`` runs ``problem`` on a
    working set: a ReLU program, asked for one or ``"auto"`` where :func:`use_working_set`."""
    return problem.relu and (rows == "working-set" or (
        rows == "auto" and use_working_set(*problem.shape)))


#: Each program's rows from its last working-set solve (freed with the program).
_LAST: WeakIdKeyDictionary = WeakIdKeyDictionary()


def working_rows_for(problem, X: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
                     bound: torch.Tensor) -> "WorkingSetRows":
    """:class:`WorkingSetRows` of ``problem``'s scaled data, with an empty working set; the next
    solve of the same program (the pruning pipeline's reweighted rounds) reuses them, so that
    the Gram pass and the eigendecompositions run once; each solve starts from an empty set,
    so that it gives what a fresh solve gives. The data are matched by shape and sums, so a
    program whose arrays were changed in place gets new rows."""
    finite = torch.where(torch.isfinite(bound), bound, torch.zeros_like(bound))
    key = (tuple(X.shape), tuple(Y.shape), float(X.sum()), float(Y.sum()), float(finite.sum()),
           int(active.sum()))
    last = _LAST.get(problem)
    if last is not None and last[0] == key:
        last[1].restart()
        return last[1]
    rows = WorkingSetRows(X, Y, active, bound)
    _LAST[problem] = (key, rows)
    return rows


class WorkingSetRows:
    """The stacked rows ``[R_m; X_S]`` of every neuron (module docstring) and their ADMM step.

    ``X (P, N)``, ``Y (P, M)``, ``active (P, M)``, ``bound (P, M)`` are the program's scaled
    data (:func:`solvers.admm.scaled_data`; bound +inf on the active set). The attributes
    ``Y``, ``active``, ``bound`` are the stacked rows' (``N + |S|`` rows), as the row ADMM
    reads them; :meth:`check` measures an iterate on all P rows and grows S.
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
                 bound: torch.Tensor):
        P, N = X.shape
        # the inequalities and the checks run on distinct rows only (a convolution's patches
        # repeat: 73% of the first layer's 100,352 rows of 128 MNIST images are copies)
        rows, self.count = distinct_rows(X, Y, bound)
        whole = rows.numel() == P
        self.X_all = X if whole else X[rows]
        self.Y_all = Y if whole else Y[rows]
        self.active_all = active if whole else active[rows]
        self.bound_all = bound if whole else bound[rows]
        M = Y.shape[1]
        self.R = torch.empty(M, N, N, dtype=X.dtype, device=X.device)
        q = torch.empty(M, N, dtype=X.dtype, device=X.device)
        # the Gram pass on the distinct rows, each weighted by its copies; a neuron active on
        # more than half of them from the other side, G_m = G - X_off^T X_off
        Xd, c, on = self.X_all, self.count.unsqueeze(1), self.active_all
        B = (Xd.T @ self.Y_all.masked_fill(~on, 0.0).mul_(c)).T.double()   # X_Om^T y_Om (M, N)
        half = on.sum(dim=0) * 2 > on.shape[0]
        G_all = (Xd.T @ (Xd * c)).double() if bool(half.any()) else None
        cut = torch.finfo(X.dtype).eps * N            # eigenvalues below cut * largest: noise
        chunk = max(1, int(CHUNK_ENTRIES // max(N * N, 1)))
        for m0 in range(0, M, chunk):
            m1 = min(M, m0 + chunk)
            G = torch.empty(m1 - m0, N, N, dtype=torch.float64, device=X.device)
            for j, m in enumerate(range(m0, m1)):
                side = ~on[:, m] if half[m] else on[:, m]
                Xs = Xd[side]
                G[j] = (Xs.T @ (Xs * c[side])).double()
                if half[m]:
                    torch.sub(G_all, G[j], out=G[j])
            lam, V = torch.linalg.eigh(G)             # ascending; V's columns
            del G
            lam = lam.clamp(min=0.0)
            keep = lam > cut * lam[:, -1:].clamp(min=1e-300)
            root = lam.sqrt()
            self.R[m0:m1] = (root.unsqueeze(2) * V.transpose(1, 2)).to(X.dtype)
            proj = (V.transpose(1, 2) @ B[m0:m1].unsqueeze(2)).squeeze(2)
            q[m0:m1] = torch.where(keep, proj / root.clamp(min=1e-300), 0.0).to(X.dtype)
        self.q = q.T.contiguous()                     # (N, M)
        self.N, self.M = N, M
        self.S = torch.empty(0, dtype=torch.long, device=X.device)
        self._build()

    def restart(self) -> None:
        """Empty the working set (a new solve)."""
        self.S = self.S[:0]
        self._build()

    @property
    def rows(self) -> int:
        """Stacked rows per neuron: ``N + |S|``."""
        return self.N + int(self.S.numel())

    @property
    def working_rows(self) -> int:
        """Rows of the working set, ``|S|``."""
        return int(self.S.numel())

    def _build(self) -> None:
        """The stacked data and the per-neuron inverse of ``R_m^T R_m + X_S^T X_S + I``."""
        X, N, M = self.X_all, self.N, self.M
        # a row that stands for c copies is scaled by sqrt(c), bound too: the same inequality,
        # with the weight c copies have in the ADMM's penalty
        weight = self.count[self.S].sqrt().unsqueeze(1)
        self.XS = X[self.S] * weight
        ones = torch.ones(N, M, dtype=torch.bool, device=X.device)
        self.Y = torch.cat([self.q, self.Y_all[self.S]])
        self.active = torch.cat([ones, torch.zeros_like(self.active_all[self.S])])
        self.bound = torch.cat([torch.full_like(self.q, math.inf),
                                self.bound_all[self.S] * weight])
        H = (self.XS.T @ self.XS).double()
        H.diagonal().add_(1.0)
        self.K_inv = torch.empty_like(self.R)
        chunk = max(1, int(CHUNK_ENTRIES // max(N * N, 1)))
        for m0 in range(0, M, chunk):
            m1 = min(M, m0 + chunk)
            R = self.R[m0:m1].double()
            K = R.transpose(1, 2) @ R + H
            self.K_inv[m0:m1] = torch.cholesky_inverse(torch.linalg.cholesky(K)).to(self.R.dtype)

    def mul(self, W3: torch.Tensor) -> torch.Tensor:
        """The stacked rows times ``W3 (N, M)``: ``(N + |S|, M)``."""
        top = torch.bmm(self.R, W3.T.unsqueeze(2)).squeeze(2).T
        return torch.cat([top, self.XS @ W3])

    def step(self, W1: torch.Tensor, W2: torch.Tensor, W3: torch.Tensor, XW: torch.Tensor,
             U1: torch.Tensor, U2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The W3 step of :meth:`solvers.admm._Factor.step` on the stacked rows (each neuron
        its own matrix). Returns ``(W3, stacked X W3, W2h)``."""
        N = self.N
        W1.mul_(RELAX).add_(XW, alpha=1.0 - RELAX)
        W2h = W2.mul(RELAX).add_(W3, alpha=1.0 - RELAX)
        A = W1 + U1
        rhs = torch.bmm(self.R.transpose(1, 2), A[:N].T.unsqueeze(2)).squeeze(2).T
        rhs.add_(self.XS.T @ A[N:]).add_(W2h).add_(U2)
        W3_new = torch.bmm(self.K_inv, rhs.T.unsqueeze(2)).squeeze(2).T.contiguous()
        return W3_new, self.mul(W3_new), W2h

    def check(self, W: torch.Tensor) -> tuple[float, float, float]:
        """``W (N, M)`` on all P rows (each distinct row once, weighted by its copies):
        ``(active-set residual, largest violation on the rows of S, largest violation on the
        other rows)``; :meth:`grow` then adds the violated ones."""
        XW = self.X_all @ W
        D = (XW - self.Y_all).masked_fill_(~self.active_all, 0.0)
        res = math.sqrt(float(((D * D).sum(dim=1) * self.count).sum()))
        del D
        row_viol = (XW - self.bound_all).amax(dim=1)      # -inf on rows active everywhere
        del XW
        inside = row_viol[self.S]
        viol_in = max(0.0, float(inside.max())) if inside.numel() else 0.0
        row_viol[self.S] = -math.inf
        self._row_viol = row_viol
        return res, viol_in, max(0.0, float(row_viol.max()))

    def grow(self, threshold: float) -> bool:
        """Add the rows outside S that the last :meth:`check` found violated by more than
        ``threshold``, the most violated first, at most ``max(GROW_FRACTION P, |S|)``; whether
        any was added (the caller then extends its row variables with :meth:`extend`)."""
        row_viol = self._row_viol
        out = torch.nonzero(row_viol > threshold).squeeze(1)
        if out.numel() == 0:
            return False
        cap = max(math.ceil(GROW_FRACTION * row_viol.numel()), self.working_rows)
        if out.numel() > cap:
            out = out[torch.topk(row_viol[out], cap).indices]
        self.S = torch.cat([self.S, out])
        self._build()
        return True

    def extend(self, U1: torch.Tensor) -> torch.Tensor:
        """``U1`` with zero rows for the rows the last :meth:`check` added."""
        return torch.cat([U1, U1.new_zeros(self.rows - U1.shape[0], U1.shape[1])])
