"""A layer's database for the loss-aware global budget: fits at a ladder of kept counts.

Each rung of a layer's ladder is a weight matrix with a given number of nonzero weights, the
least-squares fit of the layer's own outputs (its pre-activations ``T = X W0^T + b0``) on a
support of that size. The supports are nested and start from an *anchor*: the support of
Net-Trim's own l1 solution at the ladder's top, the most weights the budget leaves the layer
(the other layers at their floors; a layer that may stay dense starts from its own weights).
Measured on LeNet-300-100 at 95% (test accuracy, parallel / cascade): anchored at each layer's
uniform share 93.49 / 94.77%, at twice it 94.15 / 94.78, at four times 94.64 / 95.07, at the top
94.55 / 95.34 (the fill step below then only serves leftover budget and floors). From there

* down the ladder, the weights whose removal costs least are dropped, by the optimal brain
  surgeon saliency of the least-squares fit on the current support,
  ``w_j^2 / [(G_S)^-1]_jj`` (the increase of ``||X_S w_S - t||^2`` when weight j goes and the
  rest is refit; Hassibi & Stork 1993), ranked over all the layer's neurons together;
* up the ladder, the zero weights whose entry helps most are added, by the correlation of
  their input with the current residual, ``(X^T (X W^T - T))_jm^2 / G_jj`` (the first step of
  orthogonal matching pursuit);

and every rung is refit exactly. Everything is computed from the Gram matrix ``G = X^T X`` and
``C = X^T T`` (one pass over the rows), so a rung costs ``sum_m k_m^3`` for the neurons'
supports of ``k_m`` weights, whatever the number of rows. Measured on LeNet-300-100's 784 -> 300
layer (1,000 MNIST rows, one thread): a ladder of 20 Net-Trim solves, each warm-started from the
one before with :func:`solvers.solve_lagrangian`, took 86 s (50-80 iterations per rung: the
count controller re-converges at every rung) against 2-5 s for one solve; this ladder costs
about one solve.

Symbols: ``X (P, N)`` the layer's inputs (a ones column appended for a bias), ``T (P, M)`` its
outputs, ``W (M, N)``, ``G = X^T X (N, N)``, ``C = X^T T (N, M)``, ``S_m`` neuron m's support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from solvers import SETTLED, SUCCESS, NetTrimProblem, solve_lagrangian
from solvers.lagrangian import SETTLE_TOL

from ..layer import SETTLE_MAX_ITER, prune_layer
from ..model.capture import group_blocks

__all__ = ["LADDER_LEVELS", "LayerLadder", "Rung", "anchor_weight", "ladder_counts",
           "least_squares_on_support"]

#: Rungs per layer (geometric in the kept count between the layer's floor and its cap), plus
#: the anchor.
LADDER_LEVELS = 20
#: Ridge added to the Gram matrix, relative to its mean diagonal (inputs that are zero on every
#: row, or copies of each other, leave G singular).
RIDGE = 1e-6
#: Bytes of the batched per-neuron systems solved at once (neurons are grouped by support size).
CHUNK_BYTES = 64 << 20
#: A batch holds supports of at most ``PAD_RATIO * smallest + PAD_SLACK`` weights: padded to
#: the largest, the systems of a layer whose neurons keep 20 to 300 weights would cost as
#: 300-weight ones (measured: 0.23 s for a rung of the 784 -> 300 layer, 9x its factorization).
PAD_RATIO = 1.25
PAD_SLACK = 8


@dataclass
class Rung:
    """One rung: ``kept`` nonzero weights, ``weight (M, N)`` and ``bias (M,)`` (or None) in the
    layout of the module's weight matrix (a grouped convolution's ``N`` is one group's)."""

    kept: int
    weight: torch.Tensor
    bias: Optional[torch.Tensor]


def least_squares_on_support(G: torch.Tensor, C: torch.Tensor, support: torch.Tensor, *,
                             inverse_diagonal: bool = False):
    """Per neuron, ``w_S = (G_SS + r I)^-1 C_S`` and zeros off its support.

    Parameters
    ----------
    G : Tensor of shape (N, N)
        ``X^T X`` (float64 recommended).
    C : Tensor of shape (N, M)
        ``X^T T``.
    support : bool Tensor of shape (M, N)
    inverse_diagonal : bool
        Also return ``[(G_SS + r I)^-1]_jj`` on the support (0 elsewhere).

    Returns
    -------
    W : Tensor of shape (M, N)
    inv : Tensor of shape (M, N) or None
    """
    N, M = C.shape
    sizes = support.sum(1)
    widest = max(int(sizes.max()), 1) if M else 1
    # padded slots index an identity block after G, so that padded systems stay regular
    Gp = G.new_zeros(N + widest, N + widest)
    Gp[:N, :N] = G
    Gp.diagonal()[:N] += RIDGE * float(G.diagonal().mean().clamp(min=1e-300))
    Gp.diagonal()[N:] = 1.0
    Cp = C.new_zeros(N + widest, M)
    Cp[:N] = C
    W = G.new_zeros(M, N + widest)
    inv = G.new_zeros(M, N + widest) if inverse_diagonal else None
    order = torch.argsort(sizes)
    ordered = sizes[order].tolist()
    start = 0
    while start < M:
        end = start + 1
        # neurons of similar support sizes together (padding wastes little), within CHUNK_BYTES
        while end < M and ordered[end] <= PAD_RATIO * ordered[start] + PAD_SLACK and \
                (end + 1 - start) * max(ordered[end], 1) ** 2 * 8 * 3 <= CHUNK_BYTES:
            end += 1
        rows = order[start:end]
        k = max(ordered[end - 1], 1)
        mask = support[rows]
        rank = mask.cumsum(1) - 1
        idx = (N + torch.arange(k, device=G.device)).repeat(len(rows), 1)
        r, c = mask.nonzero(as_tuple=True)
        idx[r, rank[r, c]] = c
        width = Gp.shape[1]   # A = G_pad[S_m, S_m] per neuron, as one flat gather
        A = Gp.view(-1)[(idx[:, :, None] * width + idx[:, None, :]).view(-1)].view(len(rows), k, k)
        L = torch.linalg.cholesky(A)
        w = torch.cholesky_solve(Cp[idx, rows[:, None]][..., None], L)[..., 0]
        W[rows[:, None], idx] = w
        if inv is not None:
            inv[rows[:, None], idx] = torch.cholesky_inverse(L).diagonal(dim1=1, dim2=2)
        start = end
    W = W[:, :N].masked_fill(~support, 0.0)
    return W, (None if inv is None else inv[:, :N].masked_fill(~support, 0.0))


def anchor_weight(X: torch.Tensor, Y: torch.Tensor, W0: torch.Tensor, b0: Optional[torch.Tensor],
                  keep: int, *, relu: bool, groups: int = 1, solver: str = "admm",
                  solver_options: Optional[dict] = None) -> tuple:
    """Net-Trim's support at ``keep`` weights: the l1 solve of the default pipeline at a target
    count (:func:`solvers.solve_lagrangian`, stopped once its support settles, within half a
    point of the count), without its refit, whose weights the ladder replaces by its own fits.

    Parameters
    ----------
    X : Tensor of shape (P, N_all)
    Y : Tensor of shape (P, M)
        The program's target (post-ReLU for a ReLU layer).
    W0 : Tensor of shape (M, N_all / groups)
    b0 : Tensor of shape (M,) or None
    keep : int
    relu, groups, solver, solver_options
        As for :func:`nettrim.prune_layer`; a solve that does not settle, or
        ``solver="cvxpy"``, takes :func:`nettrim.prune_layer`'s whole pipeline instead.

    Returns
    -------
    weight : Tensor of shape (M, N_all / groups)
        Nonzero on the support.
    status : str
    """
    M = Y.shape[1]
    if X.dtype not in (torch.float32, torch.float64):   # half-precision records: in float32
        X, Y = X.float(), Y.float()
    parts, statuses = [], []
    blocks = group_blocks(groups, X.shape[1], M)
    for cols, rows in blocks:
        Xg, Yg, Wg = X[:, cols], Y[:, rows], W0[rows].to(X)
        bg = None if b0 is None else b0[rows].to(X)
        k = round(keep * Wg.numel() / W0.numel())
        live = (Xg != 0).any(0)   # inputs zero on every row never enter
        weight, status = None, "SKIPPED"
        if solver == "admm" and k < Wg.numel():
            Xa = Xg[:, live]
            penalty = None
            if bg is not None:
                Xa = torch.cat([Xa, Xa.new_ones(Xa.shape[0], 1)], 1)
                penalty = Xa.new_ones(Yg.shape[1], Xa.shape[1])
                penalty[:, -1] = 0.0
            options = dict(settle_tol=SETTLE_TOL, max_iter=SETTLE_MAX_ITER)
            options.update(solver_options or {})
            result = solve_lagrangian(NetTrimProblem(Xa, Yg, 0.0, relu=relu),
                                      nonzeros=min(k, int(live.sum()) * Yg.shape[1]),
                                      penalty=penalty, **options)
            status = result.status
            if status in SUCCESS + (SETTLED,):
                weight = torch.zeros_like(Wg)
                weight[:, live] = torch.as_tensor(result.W, device=Wg.device)[:, :int(live.sum())]
        if weight is None and k < Wg.numel():
            solved = prune_layer(Xg, Yg, sparsity=1.0 - k / Wg.numel(), relu=relu,
                                 bias=bg is not None, W0=Wg, b0=bg, solver=solver,
                                 reweight=0, solver_options=solver_options)
            weight, status = solved.weight, solved.report["status"]
        parts.append(Wg.clone() if weight is None else weight)
        statuses.append(status)
    return torch.cat(parts), next((s for s in statuses if s not in SUCCESS + (SETTLED,)),
                                  statuses[0])


def ladder_counts(anchor: int, floor: int, cap: int, levels: int = LADDER_LEVELS,
                  extra: Sequence[int] = ()) -> list:
    """Kept counts of a ladder: ``levels`` geometric steps from ``cap`` down to ``floor`` (and
    0 when the floor is 0), ``anchor`` and the ``extra`` counts; distinct, descending."""
    lowest = floor
    floor, cap = max(floor, 1), max(cap, 1)
    anchor = min(max(anchor, floor), cap)
    steps = max(levels - 1, 1)
    counts = {round(cap * (floor / cap) ** (i / steps)) for i in range(levels)} if cap > floor \
        else {cap}
    if lowest <= 0:   # no floor: the layer may lose every weight
        counts.add(0)
    counts |= {min(max(k, lowest), cap) for k in extra}
    return sorted(counts | {anchor}, reverse=True)


class LayerLadder:
    """One layer's database: least-squares fits of its outputs on nested supports.

    Parameters
    ----------
    name : str
    X : Tensor of shape (P, N_all)
        The layer's inputs (all groups' columns of a grouped convolution).
    target : Tensor of shape (P, M)
        The layer's outputs to fit (pre-activations, bias included).
    weight_columns : int
        Columns of the module's weight matrix (``N_all / groups``).
    groups : int
    bias : bool
        Fit an (unpenalized) bias too.
    original : Tensor of shape (M, weight_columns), optional
        The layer's weights: kept on inputs that are zero on every row (which the fit leaves
        undetermined) where a support holds them.
    """

    def __init__(self, name: str, X: torch.Tensor, target: torch.Tensor, *,
                 weight_columns: int, groups: int = 1, bias: bool = False,
                 original: Optional[torch.Tensor] = None):
        self.name = name
        X = X.to(torch.float64)
        P, N = X.shape
        M = target.shape[1]
        self.M, self.N, self.groups, self.bias = M, N, groups, bias
        self.weight_columns = weight_columns
        if bias:
            X = torch.cat([X, X.new_ones(P, 1)], 1)
        self.G = X.T @ X
        self.C = X.T @ target.to(torch.float64)
        cols = X.shape[1]
        # neuron m may use its group's columns (and the bias column)
        self.allowed = torch.zeros(M, cols, dtype=torch.bool, device=X.device)
        n, m = N // groups, M // groups
        for g in range(groups):
            self.allowed[g * m:(g + 1) * m, g * n:(g + 1) * n] = True
        self.penalized = torch.ones(cols, dtype=torch.bool, device=X.device)
        if bias:
            self.allowed[:, -1] = True
            self.penalized[-1] = False
        self.dead = self.G.diagonal() <= 0
        self.original = None if original is None else self.spread(original)
        self.rungs: list = []        # Rung, by kept count descending
        self._supports: list = []    # the (M, cols) support of each rung

    # ---- layouts ---------------------------------------------------------------------------
    def spread(self, weight: torch.Tensor) -> torch.Tensor:
        """A module-layout matrix (M, weight_columns) in the (M, cols) layout (zeros outside
        each neuron's group, and in the bias column)."""
        full = self.G.new_zeros(self.allowed.shape)
        weight = weight.reshape(self.M, -1).to(full)
        n, m = self.N // self.groups, self.M // self.groups
        for g in range(self.groups):
            full[g * m:(g + 1) * m, g * n:(g + 1) * n] = weight[g * m:(g + 1) * m]
        return full

    def embed(self, weight: torch.Tensor) -> torch.Tensor:
        """A module-layout support (M, weight_columns) as a bool (M, cols) support."""
        support = self.spread(weight) != 0
        support[:, ~self.penalized] = True
        return support

    def _fit(self, support, inverse_diagonal=False):
        """Least squares on ``support``; a weight on an input that is zero on every row (no
        effect on the fit) keeps the original weight's value, so that it stays counted."""
        W, inv = least_squares_on_support(self.G, self.C, support,
                                          inverse_diagonal=inverse_diagonal)
        if self.original is not None and bool(self.dead.any()):
            keep = support & self.dead[None, :]
            W = torch.where(keep, self.original, W)
        return W, inv

    def _rung(self, W: torch.Tensor, support: torch.Tensor, dtype) -> Rung:
        if self.groups == 1:
            weight = W[:, :self.N]
        else:
            n, m = self.N // self.groups, self.M // self.groups
            weight = torch.cat([W[g * m:(g + 1) * m, g * n:(g + 1) * n]
                                for g in range(self.groups)])
        kept = int(support[:, self.penalized].sum())
        return Rung(kept=kept, weight=weight.to(dtype).contiguous(),
                    bias=W[:, -1].to(dtype).contiguous() if self.bias else None)

    # ---- the ladder ------------------------------------------------------------------------
    def build(self, anchor_weight: torch.Tensor, counts: Sequence[int],
              dtype: torch.dtype = torch.float32) -> "LayerLadder":
        """Rungs at ``counts`` (descending) from the anchor's support (a module-layout weight
        whose nonzeros are the support, e.g. Net-Trim's solution at the layer's share)."""
        support = self.embed(anchor_weight)
        W, inv = self._fit(support, inverse_diagonal=True)
        anchor = int(support[:, self.penalized].sum())
        found = {anchor: (W, support)}
        S, Wk, ik = support, W, inv
        for k in sorted((c for c in counts if c < anchor), reverse=True):
            S, Wk, ik = self._drop(S, Wk, ik, int(S[:, self.penalized].sum()) - k)
            found[int(S[:, self.penalized].sum())] = (Wk, S)
        S, Wk = support, W
        for k in sorted(c for c in counts if c > anchor):
            S, Wk = self._add(S, Wk, k - int(S[:, self.penalized].sum()))
            found[int(S[:, self.penalized].sum())] = (Wk, S)
        self.rungs, self._supports = [], []
        lowest = min(counts, default=0)   # the floor: an anchor below it is no rung
        usable = [k for k in found if k >= lowest] or [max(found)]
        for kept in sorted(usable, reverse=True):
            Wk, S = found[kept]
            self.rungs.append(self._rung(Wk, S, dtype))
            self._supports.append(S)
        return self

    def fit(self, weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> Rung:
        """The least-squares fit on the support of ``weight`` (module layout; zeros off it)."""
        support = self.embed(weight)
        W, _ = self._fit(support)
        return self._rung(W, support, dtype)

    def extend(self, index: int, extra: int, dtype: torch.dtype = torch.float32) -> Rung:
        """Rung ``index`` with ``extra`` more weights (the fill step and a refit)."""
        S, W = self._add(self._supports[index], None, extra)
        return self._rung(W, S, dtype)

    def _drop(self, S, W, inv, count):
        """Remove ``count`` weights of least saliency ``w^2 / inv`` and refit."""
        if count <= 0:
            return S, W, inv
        saliency = (W ** 2 / inv.clamp(min=1e-300)).masked_fill(~S, math.inf)
        saliency[:, ~self.penalized] = math.inf
        count = min(count, int(torch.isfinite(saliency).sum()))
        S = S.clone()
        S.view(-1)[torch.topk(saliency.flatten(), count, largest=False).indices] = False
        W, inv = self._fit(S, inverse_diagonal=True)
        return S, W, inv

    def _add(self, S, W, count):
        """Add ``count`` weights of largest ``r^2 / G_jj`` (r: the residual's correlation);
        weights on inputs that are zero on every row come last (a floor may need them)."""
        if W is None:
            W, _ = self._fit(S)
        if count <= 0:
            return S, W
        diag = self.G.diagonal()
        score = ((self.C - self.G @ W.T) ** 2 / diag.clamp(min=1e-300)[:, None]).T
        if bool(self.dead.any()):   # inputs zero on every row: last, by the original's size
            size = 0.0 if self.original is None else self.original.abs()
            score = torch.where(self.dead[None, :], -1.0 / (1.0 + size), score)
        score = score.masked_fill(S | ~self.allowed, -math.inf)
        count = min(count, int(torch.isfinite(score).sum()))
        S = S.clone()
        S.view(-1)[torch.topk(score.flatten(), count).indices] = True
        W, _ = self._fit(S)
        return S, W
