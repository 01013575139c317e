"""Net-Trim's epsilon split of a global budget (``allocation="epsilon"`` and ``"marginal"``).

``"epsilon"``: one relative epsilon for all layers, in parallel mode, searched until the layers'
nonzeros add up to the budget (DESIGN.md section 7). A layer whose outputs are easy to
reproduce with few weights ends sparser than a layer that needs many: each layer's sparsity
reflects its redundancy, measured by its own program. ``"marginal"``: the same search, then the
split that equalizes the marginal error per weight removed over the solutions it computed
(:func:`marginal_split`; no extra solves). A layer the budget would push below its floor is held
at the floor (:func:`floor_solution`) and the rest is shared by the others.
"""

from __future__ import annotations

import math
import time
from typing import Mapping

import torch

from solvers import OPTIMAL, OPTIMAL_INACCURATE, ADMMSettings

from ..layer import prune_layer
from ..model.capture import in_solver_dtype
from ..results import layer_result
from .guard import interpolated_counts, keep_largest

__all__ = ["GLOBAL_EPS_RANGE", "GLOBAL_MAX_EVALS", "EpsilonLayer", "epsilon_split",
           "floor_solution", "marginal_split", "search_epsilon", "trimmed_to"]

#: Relative epsilons searched for the global count (log scale); at the upper end W = 0 is feasible.
GLOBAL_EPS_RANGE = (1e-3, 1.0)
#: At most this many whole-model evaluations (every free layer solved) per search.
GLOBAL_MAX_EVALS = 10


class EpsilonLayer:
    """One layer's captured data, its prune_layer options and the solutions found so far."""

    def __init__(self, name, data, module, layer_kwargs):
        self.name = name
        self.data = data = in_solver_dtype(data)   # float16 / bfloat16: solved in float32
        self.W0 = module.weight.detach().flatten(1).to(data.X, copy=True)
        self.b0 = None if module.bias is None else module.bias.detach().to(data.X, copy=True)
        self.kwargs = dict(layer_kwargs, relu=data.activation == "relu",
                           bias=module.bias is not None)
        self.total = self.W0.numel()
        self.solved: dict = {}   # relative epsilon -> LayerPruneResult

    def solve(self, eps: float):
        if eps not in self.solved:
            warm = None
            if self.solved:  # warm start from the nearest epsilon already solved
                warm = self.solved[min(self.solved, key=lambda e: abs(math.log(e / eps)))]
            self.solved[eps] = prune_layer(
                self.data.X, self.data.post, epsilon=eps,
                W0=self.W0 if warm is None else warm.weight,
                b0=self.b0 if warm is None else warm.bias, **self.kwargs)
        return self.solved[eps]

    def kept(self, eps: float) -> int:
        return self.solve(eps).report["nonzeros"]


def search_epsilon(layers, budget: int, total: int, tolerance: float, progress: bool):
    """One relative epsilon for ``layers`` whose nonzeros add up to ``budget`` (within
    ``tolerance * total``): safeguarded false position on log epsilon.

    Returns ``(dense_eps, sparse_eps, path)``: the closest evaluated epsilons with at least /
    at most ``budget`` kept (equal when one is within tolerance; None at a bracket end that
    was never solved), and the evaluations ``[(eps, kept)]``.
    """
    lo, hi = (math.log(e) for e in GLOBAL_EPS_RANGE)
    k_lo = sum(layer.total for layer in layers)  # taken as dense at the lower end
    k_hi = 0                                     # and as all-zero at the upper end
    dense = sparse = None
    path = []
    side = 0   # Illinois rule: an end kept twice in a row has its excess halved
    for _ in range(GLOBAL_MAX_EVALS):
        f_lo, f_hi = k_lo - budget, k_hi - budget
        t = f_lo / (f_lo - f_hi) if f_lo > f_hi else 0.5
        mid = lo + min(max(t, 0.05), 0.95) * (hi - lo)
        eps = math.exp(mid)
        kept = sum(layer.kept(eps) for layer in layers)
        path.append((eps, kept))
        if progress:
            print(f"global budget: epsilon {eps:.4g} keeps {kept} (target {budget})", flush=True)
        if abs(kept - budget) <= tolerance * total:
            return eps, eps, path
        if kept > budget:
            lo, k_lo, dense = mid, kept, eps
            if side == 1:
                k_hi = budget + (k_hi - budget) / 2
            side = 1
        else:
            hi, k_hi, sparse = mid, kept, eps
            if side == -1:
                k_lo = budget + (k_lo - budget) / 2
            side = -1
    return dense, sparse, path


def epsilon_split(state: Mapping[str, EpsilonLayer], floors: Mapping[str, int], budget: int,
                  total: int, allocation: str, tolerance: float, progress: bool):
    """Each layer's solution under the global count: the common-epsilon search, the guard,
    and for ``allocation="marginal"`` the marginal split.

    Returns ``(results, epsilon_common, path, epsilon_of, fixed)``: ``{layer: LayerPruneResult}``
    at its count, the common epsilon, the search's evaluations, each layer's epsilon (None when
    held at its floor) and the layers held at their floors.
    """
    fixed: dict = {}     # name -> LayerPruneResult held at its floor
    while True:
        free = [state[n] for n in state if n not in fixed]
        left = budget - sum(r.report["nonzeros"] for r in fixed.values())
        dense, sparse, path = search_epsilon(free, left, total, tolerance, progress)
        if dense is None:  # even the lowest epsilon tried was too sparse: the densest solution
            dense = min(free[0].solved) if free else None
        counts = {}
        if free:
            d_counts = {layer.name: layer.kept(dense) for layer in free}
            s_counts = d_counts if sparse is None else \
                {layer.name: layer.kept(sparse) for layer in free}
            counts = interpolated_counts(d_counts, s_counts, left)
            if sum(counts.values()) > left:   # the sparsest solutions still keep too many
                counts = interpolated_counts(counts, {n: floors[n] for n in counts}, left)
        low = [n for n, c in counts.items() if c < floors[n]]
        if not low:
            break
        for n in low:  # layer-collapse guard: hold it at its floor, share the rest again
            fixed[n] = floor_solution(state[n], floors[n])
    eps_of = {layer.name: dense for layer in free}
    if allocation == "marginal" and free:
        eps_of, counts = marginal_split(free, left, floors)
    results = {}
    for name, layer in state.items():
        results[name] = fixed[name] if name in fixed else \
            trimmed_to(layer, layer.solve(eps_of[name]), counts[name])
    return results, dense, path, {n: eps_of.get(n) for n in state}, sorted(fixed)


def trimmed_to(layer: EpsilonLayer, result, count: int):
    """``result`` with its smallest weights zeroed down to ``count`` nonzeros (report redone;
    OPTIMAL becomes OPTIMAL_INACCURATE when the trim leaves its epsilon behind)."""
    if count >= result.report["nonzeros"]:
        return result
    trimmed = keep_largest(result.weight, count)
    redo = layer_result("nettrim", layer.W0, trimmed, layer.data.X, result.bias,
                        layer.data.post, layer.kwargs["relu"], time.perf_counter())
    rep = dict(result.report)
    rep.update({k: redo.report[k] for k in ("nonzeros", "sparsity", "relative_error")})
    if rep["status"] == OPTIMAL and \
            rep["relative_error"] > rep["epsilon"] * (1 + ADMMSettings.feas_tol):
        # trimmed past its epsilon: solved weights, no longer that program's optimum
        rep["status"] = OPTIMAL_INACCURATE
    return type(result)(weight=redo.weight, bias=result.bias, report=rep)


def marginal_split(layers, budget: int, floors: Mapping[str, int]):
    """Equalize the marginal error per weight removed over the solutions already computed.

    Each layer has solutions at several epsilons (from the common-epsilon search), each with a
    kept count k and a relative output error e (of equal counts, the lowest error is kept).
    Starting from every layer's densest solution, repeatedly move the layer whose next sparser
    solution costs the least increase of e^2 per weight removed, until the total is at most
    ``budget``; the last move is partial (that layer's solution trimmed by magnitude to the
    count that meets the budget). When every layer is at its sparsest solution above its floor
    and the total is still over the budget, the layers are trimmed the same fraction of the
    way to their floors.

    Returns ``({layer: epsilon}, {layer: kept count})``.
    """
    paths = {}
    for layer in layers:
        best: dict = {}
        for eps, r in layer.solved.items():
            k, e = r.report["nonzeros"], r.report["relative_error"] ** 2
            if k not in best or e < best[k][1]:
                best[k] = (k, e, eps)
        pts = sorted(best.values(), reverse=True)
        pts = [p for p in pts if p[0] >= floors[layer.name]] or pts[:1]
        paths[layer.name] = pts
    pos = {n: 0 for n in paths}
    total = sum(paths[n][0][0] for n in paths)
    while total > budget:
        best_move = None
        for n, pts in paths.items():
            i = pos[n]
            if i + 1 < len(pts):
                rate = (pts[i + 1][1] - pts[i][1]) / (pts[i][0] - pts[i + 1][0])
                if best_move is None or rate < best_move[0]:
                    best_move = (rate, n)
        if best_move is None:
            break
        n = best_move[1]
        step = paths[n][pos[n]][0] - paths[n][pos[n] + 1][0]
        if total - step < budget:  # partial move: trim the current solution instead
            counts = {m: paths[m][pos[m]][0] for m in paths}
            counts[n] -= total - budget
            return {m: paths[m][pos[m]][2] for m in paths}, counts
        pos[n] += 1
        total -= step
    counts = {m: paths[m][pos[m]][0] for m in paths}
    if total > budget:   # out of solutions: trim towards the floors
        counts = interpolated_counts(counts, {m: min(floors[m], counts[m]) for m in counts},
                                     budget)
    return {m: paths[m][pos[m]][2] for m in paths}, counts


def floor_solution(layer: EpsilonLayer, floor: int):
    """The layer pruned to exactly ``floor`` kept weights (its own sparsity search, then the
    smallest weights trimmed if it kept more). A solution with fewer (the inputs are zero on
    every calibration row, so the program zeroes their weights) gets original weights back,
    those on such inputs first (they leave the calibration outputs as they are)."""
    result = prune_layer(layer.data.X, layer.data.post, sparsity=max(0.0, 1.0 - floor / layer.total),
                         W0=layer.W0, b0=layer.b0, **layer.kwargs)
    missing = floor - result.report["nonzeros"]
    if missing > 0:
        weight = result.weight.clone()
        dead = ~(layer.data.X != 0).any(0)
        score = layer.W0.abs() + dead.to(layer.W0)[None, :] * (1 + float(layer.W0.abs().max()))
        score = score.masked_fill((weight != 0) | (layer.W0 == 0), -1.0)
        add = torch.topk(score.flatten(), min(missing, int((score >= 0).sum()))).indices
        weight.view(-1)[add] = layer.W0.reshape(-1)[add].to(weight)
        redo = layer_result("nettrim", layer.W0, weight, layer.data.X, result.bias,
                            layer.data.post, layer.kwargs["relu"], time.perf_counter())
        report = dict(result.report)
        report.update({k: redo.report[k] for k in ("nonzeros", "sparsity", "relative_error")})
        result = type(result)(weight=redo.weight, bias=result.bias, report=report)
    return trimmed_to(layer, result, floor)
