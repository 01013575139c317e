"""A sparsity budget for the whole model (``scope="global"``) and its allocation over layers.

``nettrim.prune(model, inputs, sparsity=0.9, scope="global")`` zeroes 90% of the selected
layers' weights *together*; how many each layer keeps is Net-Trim's choice:

* ``allocation="epsilon"`` (default): one relative epsilon for all layers, in parallel mode,
  searched until the layers' nonzeros add up to the budget (DESIGN.md section 7). A layer whose
  outputs are easy to reproduce with few weights ends sparser than a layer that needs many: each
  layer's sparsity reflects its redundancy, measured by its own program.
* ``allocation="marginal"``: the same search, then the split that equalizes the marginal error
  per weight removed over the solutions it computed (:func:`marginal_split`; no extra solves).
* ``allocation="magnitude"``: the per-layer counts that one global magnitude threshold picks,
  each reached by Net-Trim's per-layer sparsity search (a cheaper, data-free split; compared
  with the epsilon split in ``benchmarks/bench_global.py``).

Measured (``benchmarks/bench_global.py``, LeNet-300-100 and a narrow 784-64-32-10 MLP at
90/95/98%): all three beat the baselines' global magnitude in every cell; ``epsilon`` is the
default because it was never far from the best split and the only one that ran everywhere
(``magnitude`` was best on LeNet at 90/95% but its per-layer searches failed on the narrow MLP;
``marginal`` won there at 90/95% and lost at 98%).

Layer-collapse guard: a budget never leaves a layer fewer than ``min_per_unit`` kept weights per
output unit on average, ``min(min_per_unit, in_features) * out_features`` in total
(default :data:`DEFAULT_MIN_PER_UNIT`); such a layer is fixed at that floor and the rest of the
budget is shared by the other layers. A budget the floors alone exceed is refused.

The baselines' global rules (:func:`nettrim.baselines.prune_baseline` with ``scope="global"``)
use :func:`global_keep_masks` on their own scores with the same guard.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from solvers import OPTIMAL, OPTIMAL_INACCURATE, SUCCESS, ADMMSettings

from .checks import check_sparsity
from .inputs import reiterable
from .layer import prune_layer
from .model.capture import capture, in_solver_dtype, prunable_layers
from .model.surgery import apply_masks, set_layer_weight
from .results import (MAX_ITER_HINT, PruneResult, PruningError, PruningWarning, layer_result,
                      output_discrepancy, report_row)

__all__ = ["DEFAULT_MIN_PER_UNIT", "SCOPES", "ALLOCATIONS", "GLOBAL_TOL", "check_budget",
           "check_scope", "layer_floors", "global_keep_masks", "interpolated_counts",
           "marginal_split", "prune_global", "format_allocation"]

#: Layer-collapse guard: kept weights per output unit (on average) a global budget leaves a layer.
DEFAULT_MIN_PER_UNIT = 4
SCOPES = ("layer", "global")
ALLOCATIONS = ("epsilon", "marginal", "magnitude")
#: The global sparsity reached is within this of the target (0.5 points).
GLOBAL_TOL = 0.005
#: Relative epsilons searched for the global count (log scale); at the upper end W = 0 is feasible.
GLOBAL_EPS_RANGE = (1e-3, 1.0)
#: At most this many whole-model evaluations (every free layer solved) per search.
GLOBAL_MAX_EVALS = 10


def check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        msg = f"scope must be one of {SCOPES}, got {scope!r}"
        raise ValueError(msg)
    return scope


def check_budget(sparsity: Any, name: str = "sparsity") -> float:
    """A model-wide budget: one number in [0, 1) (not a dict, not a bool)."""
    if isinstance(sparsity, Mapping):
        msg = f"{name} must be one model-wide fraction in [0, 1) with scope='global', got a dict"
        raise TypeError(msg)
    return check_sparsity(sparsity, name)


def _check_min_per_unit(min_per_unit: Any) -> int:
    if isinstance(min_per_unit, bool) or not isinstance(min_per_unit, int) or min_per_unit < 0:
        msg = f"min_per_unit must be an integer >= 0 (kept weights per output unit), got {min_per_unit!r}"
        raise ValueError(msg)
    return min_per_unit


def layer_floors(shapes: Mapping[str, tuple], min_per_unit: int) -> dict:
    """``{name: min(min_per_unit, N) * M}`` for weight matrices of shape (M, N)."""
    k = _check_min_per_unit(min_per_unit)
    return {name: min(k, N) * M for name, (M, N) in shapes.items()}


def _kept_budget(total: int, sparsity: float, floors: Mapping[str, int]) -> int:
    kept = total - min(total, int(math.floor(sparsity * total + 0.5)))
    need = sum(floors.values())
    if need > kept:
        msg = (f"sparsity {sparsity} keeps {kept} of {total} weights, but the layer-collapse "
               f"guard needs {need} (min_per_unit kept weights per output unit); lower "
               "min_per_unit or the sparsity")
        raise ValueError(msg)
    return kept


def global_keep_masks(scores: Mapping[str, torch.Tensor], sparsity: float, *,
                      min_per_unit: int = DEFAULT_MIN_PER_UNIT) -> dict:
    """Keep the highest scores over all layers together, with the layer-collapse guard.

    Parameters
    ----------
    scores : dict of {name: Tensor of shape (M, N)}
        Importance of each weight (higher = kept first); comparable across layers.
    sparsity : float in [0, 1)
        Fraction of all the weights together to zero (``round(sparsity * total)``).
    min_per_unit : int
        Each layer keeps at least ``min(min_per_unit, N) * M`` weights (its top scores); the
        remaining budget goes to the global ranking of the other layers.

    Returns
    -------
    dict of {name: bool Tensor of shape (M, N)}
        True where the weight is kept.
    """
    s = check_budget(sparsity)
    shapes = {n: tuple(v.shape) for n, v in scores.items()}
    floors = layer_floors(shapes, min_per_unit)
    total = sum(v.numel() for v in scores.values())
    budget = _kept_budget(total, s, floors)
    flat = {n: v.detach().reshape(-1).to(torch.float64).cpu() for n, v in scores.items()}
    fixed: dict = {}
    while True:
        free = [n for n in flat if n not in fixed]
        left = budget - sum(fixed.values())
        counts = dict(fixed)
        if free and left > 0:
            joined = torch.cat([flat[n] for n in free])
            top = torch.argsort(joined, descending=True, stable=True)[:left]
            owner = torch.repeat_interleave(torch.arange(len(free)),
                                            torch.tensor([flat[n].numel() for n in free]))
            got = torch.bincount(owner[top], minlength=len(free))
            counts.update({n: int(got[i]) for i, n in enumerate(free)})
        else:
            counts.update({n: 0 for n in free})
        low = [n for n in free if counts[n] < floors[n]]
        if not low:
            break
        fixed.update({n: floors[n] for n in low})
    masks = {}
    for name, v in flat.items():
        keep = torch.zeros(v.numel(), dtype=torch.bool)
        keep[torch.argsort(v, descending=True, stable=True)[:counts[name]]] = True
        masks[name] = keep.reshape(shapes[name]).to(scores[name].device)
    return masks


def interpolated_counts(dense: Mapping[str, int], sparse: Mapping[str, int], target: int) -> dict:
    """Per-layer counts between two allocations (``dense >= sparse`` entrywise) adding to
    ``target``: each layer moves the same fraction of the way from ``dense`` to ``sparse``
    (largest remainders get the rounding)."""
    d_total, s_total = sum(dense.values()), sum(sparse.values())
    if d_total <= target or d_total == s_total:
        return dict(dense)
    t = (d_total - target) / (d_total - s_total)
    raw = {n: dense[n] - t * (dense[n] - min(sparse[n], dense[n])) for n in dense}
    counts = {n: int(math.floor(v)) for n, v in raw.items()}
    short = target - sum(counts.values())
    for n in sorted(raw, key=lambda n: counts[n] - raw[n])[:max(0, short)]:
        counts[n] += 1
    return counts


def _keep_largest(weight: torch.Tensor, count: int) -> torch.Tensor:
    """``weight`` with all but its ``count`` largest |entries| zeroed."""
    if int((weight != 0).sum()) <= count:
        return weight
    keep = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    keep[torch.argsort(weight.abs().reshape(-1), descending=True, stable=True)[:count]] = True
    return weight.masked_fill(~keep.reshape(weight.shape), 0.0)


# ---- Net-Trim's own allocation ---------------------------------------------------------------
class _Layer:
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


def _search_epsilon(layers, budget: int, total: int, progress: bool):
    """One relative epsilon for ``layers`` whose nonzeros add up to ``budget`` (within
    GLOBAL_TOL of ``total``): safeguarded false position on log epsilon.

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
        if abs(kept - budget) <= GLOBAL_TOL * total:
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


def prune_global(model: nn.Module, inputs: Any, sparsity: Any, *, allocation: str = "epsilon",
                 min_per_unit: int = DEFAULT_MIN_PER_UNIT, mode: str = "parallel",
                 solver: str = "admm", layers: Any = None, ignore: Any = (),
                 activations: Optional[dict] = None, max_samples: Optional[int] = None,
                 seed: int = 0, device: Any = None, inplace: bool = False, masks: bool = False,
                 strict: bool = False, progress: bool = False, refit: bool = True,
                 reweight: int = 1, solver_options: Optional[dict] = None,
                 per_layer_prune: Optional[Callable] = None):
    """``nettrim.prune(..., sparsity=s, scope="global")``: see the module docstring.

    ``per_layer_prune`` is the per-layer model driver (:func:`nettrim.prune`, which passes
    itself: it sits above this module) that ``allocation="magnitude"`` runs with each layer's
    share as its sparsity; the other allocations solve the layers here (:func:`prune_layer`).

    Returns a :class:`nettrim.PruneResult` whose ``options`` add ``scope``, ``allocation``
    (``{layer: {"kept", "total", "sparsity"}}``), ``global_sparsity`` (reached),
    ``min_per_unit``, ``floored`` (layers held at the guard) and, for the epsilon split,
    ``epsilon`` (the common relative epsilon) and ``search`` (``[(epsilon, kept)]``).
    """
    target_s = check_budget(sparsity)
    if allocation not in ALLOCATIONS:
        msg = f"allocation must be one of {ALLOCATIONS}, got {allocation!r}"
        raise ValueError(msg)
    if mode != "parallel":
        msg = ("scope='global' searches one epsilon over the layers in parallel mode; use "
               f"mode='parallel' (got {mode!r}), or give cascade a per-layer sparsity dict")
        raise ValueError(msg)
    selected = prunable_layers(model, layers, ignore)
    shapes = {n: (m.weight.shape[0], m.weight[0].numel()) for n, m in selected.items()}
    floors = layer_floors(shapes, min_per_unit)
    total = sum(M * N for M, N in shapes.values())
    budget = _kept_budget(total, target_s, floors)
    common = dict(solver=solver, layers=list(selected), activations=activations,
                  max_samples=max_samples, seed=seed, device=device, inplace=inplace,
                  masks=masks, strict=strict, progress=progress, refit=refit,
                  reweight=reweight, solver_options=solver_options)

    if allocation == "magnitude":
        if per_layer_prune is None:
            msg = ("allocation='magnitude' runs the per-layer driver: pass per_layer_prune="
                   "nettrim.prune (or call nettrim.prune(..., scope='global'))")
            raise TypeError(msg)
        keep = global_keep_masks({n: m.weight.detach().flatten(1).abs() for n, m in
                                  selected.items()}, target_s, min_per_unit=min_per_unit)
        per_layer = {n: 1.0 - int(k.sum()) / k.numel() for n, k in keep.items()}
        out = per_layer_prune(model, inputs, sparsity=per_layer, mode="parallel", **common)
        floored = [n for n, k in keep.items() if int(k.sum()) <= floors[n]]
        return _finish_global(out, target_s, total, "magnitude", min_per_unit, floored)

    t0 = time.perf_counter()
    data = capture(model, inputs, layers=list(selected), activations=activations,
                   max_samples=max_samples, seed=seed, device=device, fold=False)
    layer_kwargs = dict(solver=solver, refit=refit, reweight=reweight,
                        solver_options=solver_options, progress=False)
    state = {n: _Layer(n, data.pop(n), selected[n], layer_kwargs) for n in selected}
    fixed: dict = {}     # name -> LayerPruneResult held at its floor
    while True:
        free = [state[n] for n in state if n not in fixed]
        left = budget - sum(r.report["nonzeros"] for r in fixed.values())
        dense, sparse, path = _search_epsilon(free, left, total, progress)
        if dense is None:  # even the lowest epsilon tried was too sparse: the densest solution
            dense = min(free[0].solved) if free else None
        counts = {}
        if free:
            d_counts = {layer.name: layer.kept(dense) for layer in free}
            s_counts = d_counts if sparse is None else {layer.name: layer.kept(sparse) for layer in free}
            counts = interpolated_counts(d_counts, s_counts, left)
        low = [n for n, c in counts.items() if c < floors[n]]
        if not low:
            break
        for n in low:  # layer-collapse guard: hold it at its floor, share the rest again
            fixed[n] = _floor_solution(state[n], floors[n])
    eps_of = {layer.name: dense for layer in free}
    if allocation == "marginal" and free:
        eps_of, counts = marginal_split(free, left, floors)

    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    rows, allocation_of = [], {}
    for name, layer in state.items():
        if name in fixed:
            result = fixed[name]
        else:
            result = layer.solve(eps_of[name])
            if counts[name] < result.report["nonzeros"]:  # between two epsilons: trim
                trimmed = _keep_largest(result.weight, counts[name])
                redo = layer_result("nettrim", layer.W0, trimmed, layer.data.X, result.bias,
                                    layer.data.post, layer.kwargs["relu"], time.perf_counter())
                rep = dict(result.report)
                rep.update({k: redo.report[k] for k in ("nonzeros", "sparsity",
                                                        "relative_error")})
                if rep["status"] == OPTIMAL and \
                        rep["relative_error"] > rep["epsilon"] * (1 + ADMMSettings.feas_tol):
                    # trimmed past its epsilon: solved weights, no longer that program's optimum
                    rep["status"] = OPTIMAL_INACCURATE
                result = type(result)(weight=redo.weight, bias=result.bias, report=rep)
        rep = result.report
        if rep["status"] not in SUCCESS:
            msg = (f"layer {name!r}: solver status {rep['status']} after {rep['iterations']} "
                   f"iterations; {MAX_ITER_HINT}")
            if strict:
                raise PruningError(msg)
            warnings.warn(msg, PruningWarning, stacklevel=3)
        module = modules[name]
        set_layer_weight(module, result.weight, result.bias)
        rep = dict(rep, seconds=sum(r.report["seconds"] for r in layer.solved.values()))
        rows.append(report_row(name, layer.data, module, layer.W0, rep))
        allocation_of[name] = rep["nonzeros"]
    if masks:
        apply_masks(target, list(state))
    options = dict(epsilon=None, sparsity=sparsity, mode="parallel", solver=solver,
                   max_samples=max_samples, seed=seed, refit=refit, reweight=reweight,
                   solver_options=solver_options, layers=list(state),
                   epsilon_common=dense, search=path, seconds=time.perf_counter() - t0)
    out = PruneResult(model=target, report=rows, options=options)
    if reiterable(inputs):
        out.output_error = output_discrepancy(model, target, inputs, device=device)
    out.options["epsilon_per_layer"] = {n: eps_of.get(n) for n in state}
    return _finish_global(out, target_s, total, allocation, min_per_unit, sorted(fixed))


def marginal_split(layers, budget: int, floors: Mapping[str, int]):
    """Equalize the marginal error per weight removed over the solutions already computed.

    Each layer has solutions at several epsilons (from the common-epsilon search), each with a
    kept count k and a relative output error e. Starting from every layer's densest solution,
    repeatedly move the layer whose next sparser solution costs the least increase of e^2 per
    weight removed, until the total is at most ``budget``; the last move is partial (that
    layer's solution trimmed by magnitude to the count that meets the budget).

    Returns ``({layer: epsilon}, {layer: kept count})``.
    """
    paths = {}
    for layer in layers:
        pts = sorted(((r.report["nonzeros"], r.report["relative_error"] ** 2, eps)
                      for eps, r in layer.solved.items()), reverse=True)
        pts = [p for p in pts if p[0] >= floors[layer.name]] or pts[:1]
        paths[layer.name] = pts
    pos = {n: 0 for n in paths}
    total = sum(paths[n][0][0] for n in paths)
    while total > budget:
        best = None
        for n, pts in paths.items():
            i = pos[n]
            if i + 1 < len(pts) and pts[i + 1][0] < pts[i][0]:
                rate = (pts[i + 1][1] - pts[i][1]) / (pts[i][0] - pts[i + 1][0])
                if best is None or rate < best[0]:
                    best = (rate, n)
        if best is None:
            break
        n = best[1]
        step = paths[n][pos[n]][0] - paths[n][pos[n] + 1][0]
        if total - step < budget:  # partial move: trim the current solution instead
            counts = {m: paths[m][pos[m]][0] for m in paths}
            counts[n] -= total - budget
            return {m: paths[m][pos[m]][2] for m in paths}, counts
        pos[n] += 1
        total -= step
    return ({m: paths[m][pos[m]][2] for m in paths}, {m: paths[m][pos[m]][0] for m in paths})


def _floor_solution(layer: _Layer, floor: int):
    """The layer pruned to about ``floor`` kept weights, never fewer, by its own sparsity
    search (asked for GLOBAL_TOL denser: the search lands within that of its target)."""
    target = max(0.0, 1.0 - floor / layer.total - GLOBAL_TOL)
    return prune_layer(layer.data.X, layer.data.post, sparsity=target, W0=layer.W0, b0=layer.b0,
                       **layer.kwargs)


def format_allocation(options: Mapping) -> str:
    """One line for a global budget: target, reached, the split rule, floored layers."""
    text = (f"global budget: {options['global_sparsity']:.2%} of the selected weights zeroed "
            f"(target {options['target_sparsity']:.2%}), split by {options['allocation_rule']}")
    if options.get("epsilon_common") is not None and options["allocation_rule"] == "epsilon":
        text += f" (common relative epsilon {options['epsilon_common']:.4g})"
    if options.get("floored"):
        text += (f"; held at the layer-collapse guard ({options['min_per_unit']} per output "
                 f"unit): {', '.join(options['floored'])}")
    return text


def _finish_global(out, target: float, total: int, allocation: str, min_per_unit: int,
                   floored: list):
    kept = sum(r.nonzeros_after for r in out.report)
    out.options.update(
        scope="global", allocation_rule=allocation, min_per_unit=min_per_unit, floored=floored,
        target_sparsity=target, global_sparsity=1.0 - kept / total,
        allocation={r.name: {"kept": r.nonzeros_after, "total": r.total,
                             "sparsity": r.sparsity} for r in out.report})
    return out
