"""A layer's calibration data as :func:`nettrim.layer.prune_layer` reads it: rows, or the
statistics of a linear layer's rows.

Both answer the same questions: the inputs zero on every row, the program (its base problem
at epsilon 0), ``||Y||_F`` (relative epsilons are fractions of it) and the relative output
error of candidate weights. :class:`LayerRows` holds ``X (P, N)`` and ``Y (P, M)``; a linear
program with many more rows than inputs is built on compressed rows (:mod:`solvers.gram`) in
one chunked pass, and the error is measured chunk by chunk, so a linear layer's extra memory
is ``O(N^2 + N M)`` plus one chunk, whatever P is. :class:`LayerStats` holds only
:class:`solvers.GramStats` (a linear layer; no rows were kept).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from solvers import GramStats, NetTrimProblem, compress
from solvers.gram import check_stats
from solvers.problem import as_tensor, safe_norm

__all__ = ["COMPRESS_RATIO", "ERROR_CHUNK_ROWS", "LayerRows", "LayerStats", "layer_data"]

#: A linear program is solved on compressed rows (:func:`solvers.compress`: at most N rows,
#: exactly the same program) when it has more than this many times as many rows as inputs
#: (the pass that builds them costs about one of the solver's GEMMs).
COMPRESS_RATIO = 2
#: Rows per chunk when a layer's output error is measured (bounds the memory of the pass).
ERROR_CHUNK_ROWS = 8192


class LayerRows:
    """``X (P, N)`` and ``Y (P, M)`` (torch, Y in X's dtype and device), with the bound
    ``V`` and the offset ``S`` of the program when given."""

    def __init__(self, X: Any, Y: Any, *, relu: bool, V: Any = None, offset: Any = None):
        self.X = as_tensor(X, name="X")
        self.Y = as_tensor(Y, name="Y").to(device=self.X.device, dtype=self.X.dtype)
        if self.Y.shape[0] != self.X.shape[0]:
            msg = (f"X has shape {tuple(self.X.shape)} and Y has shape {tuple(self.Y.shape)}: "
                   "the row counts differ")
            raise ValueError(msg)
        self.relu, self.V, self.offset = relu, V, offset

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.X.shape[0], self.X.shape[1], self.Y.shape[1])

    @property
    def device(self) -> torch.device:
        return self.X.device

    @property
    def dtype(self) -> torch.dtype:
        return self.X.dtype

    def dead_inputs(self) -> torch.Tensor:
        """(N,) True for the inputs zero on every row (no weight on them changes an output)."""
        any_nonzero = torch.zeros(self.X.shape[1], dtype=torch.bool, device=self.device)
        for i in range(0, self.X.shape[0], ERROR_CHUNK_ROWS):
            any_nonzero |= (self.X[i:i + ERROR_CHUNK_ROWS] != 0).any(0)
        return ~any_nonzero

    def restrict(self, live: torch.Tensor) -> "LayerRows":
        return LayerRows(self.X[:, live], self.Y, relu=self.relu, V=self.V, offset=self.offset)

    def y_norm(self) -> float:
        return float(safe_norm(self.Y))

    def y_max(self) -> float:
        return float(self.Y.abs().max()) if self.Y.numel() else 0.0

    def problem(self, bias: bool) -> tuple[NetTrimProblem, dict]:
        """The program at epsilon 0 (``replace(problem, epsilon=e)`` sets it), and report
        entries."""
        P = self.X.shape[0]
        X = self.X
        if bias:
            X = torch.cat([X, torch.ones(P, 1, dtype=X.dtype, device=X.device)], 1)
        return NetTrimProblem(X, self.Y, 0.0, V=self.V, relu=self.relu, S=self.offset), {}

    def output_error(self, weight: torch.Tensor, b: Optional[torch.Tensor],
                     relu: Optional[bool] = None) -> float:
        """``||act(X W^T + b + S) - Y||_F / ||Y||_F`` (act: ReLU or identity; 0 if Y = 0),
        measured in chunks of :data:`ERROR_CHUNK_ROWS` rows."""
        relu = self.relu if relu is None else relu
        y_norm = self.y_norm()
        if y_norm == 0:
            return 0.0
        S = None if self.offset is None else as_tensor(self.offset, name="offset")
        W = weight.T.to(self.X)
        total = 0.0
        for i in range(0, self.X.shape[0], ERROR_CHUNK_ROWS):
            rows = slice(i, i + ERROR_CHUNK_ROWS)
            out = self.X[rows] @ W
            if b is not None:
                out += b.to(out)
            if S is not None:
                out += S[rows].to(out)
            if relu:
                out.relu_()
            total += float(safe_norm(out - self.Y[rows])) ** 2
        return math.sqrt(total) / y_norm


class LayerStats:
    """The statistics of a linear layer's rows (:class:`solvers.GramStats`; their last input
    a ones column where the layer has a bias): no rows, so no ReLU program."""

    relu = False

    def __init__(self, stats: GramStats):
        self.stats = check_stats(stats)

    @property
    def shape(self) -> tuple[int, int, int]:
        P, Na, M = self.stats.shape
        return (P, Na - self.stats.ones, M)

    @property
    def device(self) -> torch.device:
        return self.stats.G.device

    @property
    def dtype(self) -> torch.dtype:
        return self.stats.dtype or torch.float64

    def dead_inputs(self) -> torch.Tensor:
        N = self.shape[1]
        return self.stats.G.diagonal()[:N] == 0

    def restrict(self, live: torch.Tensor) -> "LayerStats":
        columns = live
        if self.stats.ones:
            columns = torch.cat([live, torch.ones(1, dtype=torch.bool, device=live.device)])
        return LayerStats(self.stats.restrict(columns))

    def y_norm(self) -> float:
        return math.sqrt(float(self.stats.yy.sum()))

    def y_max(self) -> float:
        return 0.0   # only a ReLU program's inequalities read it

    def problem(self, bias: bool) -> tuple[NetTrimProblem, dict]:
        if bias != self.stats.ones:
            msg = (f"bias={bias} but the statistics {'have' if self.stats.ones else 'lack'} "
                   "a ones column: build them with GramStats.from_rows(..., ones=bias)")
            raise ValueError(msg)
        base = compress(self.stats, 0.0, dtype=self.dtype)
        return base, {"compressed_rows": base.shape[0]}

    def output_error(self, weight: torch.Tensor, b: Optional[torch.Tensor],
                     relu: Optional[bool] = None) -> float:
        y_norm = self.y_norm()
        if y_norm == 0:
            return 0.0
        W = weight.to(torch.float64)
        if b is not None:
            W = torch.cat([W, b.to(torch.float64)[:, None]], 1)
        return math.sqrt(float(self.stats.residual_sq(W).sum())) / y_norm


def layer_data(X: Any, Y: Any, *, relu: bool, bias: bool, V: Any = None, offset: Any = None):
    """``X, Y`` as :class:`LayerRows`, or as :class:`LayerStats` for a linear layer with more
    than :data:`COMPRESS_RATIO` times as many rows as inputs (one chunked pass; the rows are
    not read again), or ``X`` a :class:`solvers.GramStats` (then ``Y`` is None and the layer
    linear) as :class:`LayerStats`."""
    if isinstance(X, GramStats):
        if Y is not None or relu or V is not None or offset is not None:
            msg = ("X is a GramStats (the statistics of a linear layer's rows): Y, V and offset "
                   "must be None and relu=False (the offset is part of the statistics' center)")
            raise ValueError(msg)
        return LayerStats(X)
    rows = LayerRows(X, Y, relu=relu, V=V, offset=offset)
    P, N, _ = rows.shape
    if not relu and V is None and P > COMPRESS_RATIO * (N + bool(bias)):
        return LayerStats(GramStats.from_rows(rows.X, rows.Y, ones=bool(bias), offset=offset))
    return rows
