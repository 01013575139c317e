"""Structured Net-Trim: remove whole units (neurons / channels) and shrink the model.

``nettrim.prune(model, inputs, epsilon=... | sparsity=..., structured=True)`` solves, for each
selected layer, the group-l1 program (:mod:`solvers.group`): the least ``sum_j ||W[:, j]||``
over the layer's *input units* j (a neuron of the layer before; for a convolution, an input
channel with its ``kh * kw`` patch columns; after a Flatten, a channel's ``H * W`` features)
under the same constraints, so the layer's outputs stay within epsilon of the original. A unit
whose group comes out zero feeds nothing, so it is removed from the layer before (its weight
rows and bias, and the matching entries of any BatchNorm in between) with
:func:`nettrim.model.surgery.remove_units`: the returned model is physically smaller.

Parallel mode: every layer's program uses the original network's activations; removing units of
the layer before does not change the inputs the layer keeps, so each layer's epsilon guarantee
holds in the shrunk model as solved.

Which layers: every Linear / Conv2d whose inputs are the outputs of another Linear / Conv2d of the
``nn.Sequential`` chain (through ReLU, Dropout, pooling, Flatten, BatchNorm). The first layer's
inputs are the model's inputs and cannot be removed; naming it is an error.

``sparsity`` here is the fraction of each layer's input units to remove (the epsilon reaching it
is searched on a log scale; a last few units are dropped by group norm when the search lands
short).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import nn

from solvers import (INFEASIBLE, MAX_ITER, OPTIMAL_INACCURATE, SUCCESS, ADMMSettings,
                     NetTrimProblem)
from solvers.group import group_norms, solve_group_admm, solve_group_cvxpy
from solvers.refit import refit as refit_support

from .checks import per_layer
from .inputs import reiterable
from .model.capture import SUPPORTED, capture, in_solver_dtype, prunable_layers
from .model.graph import flatten_sequential, shared_parameters
from .model.surgery import (apply_masks, consumer, count_parameters, measure_latency,
                            remove_units, set_layer_weight)
from .results import PruneResult, PruningError, PruningWarning, output_discrepancy, report_row

__all__ = ["prune_units", "unit_groups", "count_flops", "model_cost"]

#: Sparsity mode: at most this many group-l1 solves per layer.
MAX_SOLVES = 12
#: Seconds one layer's search for a sparsity may take: the search stops after the solve that
#: passes it and keeps the best point found so far.
SEARCH_SECONDS = 120.0
#: Relative epsilons searched in sparsity mode.
EPS_RANGE = (1e-3, 1.0)


def unit_groups(model: nn.Module, names: Optional[list] = None) -> dict:
    """For each layer whose inputs are another layer's outputs: ``(producer, groups)``.

    ``groups`` (long tensor of shape (N,)) gives the producer's unit feeding each column of the
    layer's (M, N) weight matrix. ``names``: the layers wanted (default: every such layer);
    a named layer whose inputs cannot be removed raises ValueError saying which and why.
    """
    found, why, first, index_of = _unit_groups(model)
    if names is None:
        return found
    out = {}
    for name in names:
        if name in found:
            out[name] = found[name]
            continue
        reason = why.get(name)
        if reason is None and name == first:
            reason = "it takes the model's input: there is no layer before whose units could go"
        if reason is None and name not in index_of:
            reason = "it is not a module of the Sequential chain"
        msg = f"structured=True: the input units of layer {name!r} cannot be removed: {reason}"
        raise ValueError(msg)
    return out


def _unit_groups(model: nn.Module) -> tuple:
    """``(found, why, first, index_of)``: :func:`unit_groups` of every layer, ``{layer: reason}``
    of the layers after the first whose input units cannot be removed, the first layer's name
    and ``{module name: position in the chain}``."""
    if not isinstance(model, nn.Sequential):
        msg = (f"structured=True removes units through an nn.Sequential chain (nested "
               f"Sequentials are fine); got a {type(model).__name__}")
        raise TypeError(msg)
    chain = list(flatten_sequential(model))
    index_of = {name: i for i, (name, _) in enumerate(chain)}
    layers = [(i, name, m) for i, (name, m) in enumerate(chain) if isinstance(m, SUPPORTED)]
    shared = {n: [m for m in group if m != n] for group in shared_parameters(model) for n in group}
    found, why = {}, {}
    for (pi, pname, prod), (ci, cname, cons) in zip(layers, layers[1:]):
        try:
            nxt_name, _, flatten, _ = consumer(chain, pi)
        except TypeError as err:
            why[cname] = str(err)
            continue
        if nxt_name != cname:
            continue
        grouped = [(n, m) for n, m in ((pname, prod), (cname, cons))
                   if getattr(m, "groups", 1) != 1]
        if grouped:
            n, m = grouped[0]
            why[cname] = (f"{n!r} is a grouped convolution (groups={m.groups}), which reads each "
                          "input channel in one group only; structured=True removes units "
                          "between ungrouped layers")
            continue
        tied = [n for n in (pname, cname) if n in shared]
        if tied:
            why[cname] = (f"{tied[0]!r} shares a parameter with {shared[tied[0]]} (tied "
                          "weights), which removing units would break")
            continue
        n_units = prod.weight.shape[0]
        N = cons.weight[0].numel()
        per = N // n_units
        if per * n_units != N:
            why[cname] = f"its {N} inputs are not a multiple of the {n_units} units of {pname!r}"
            continue
        found[cname] = (pname, torch.arange(N) // per)
    first = layers[0][1] if layers else None
    return found, why, first, index_of


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``example`` through the Linear / Conv2d layers,
    per sample."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            total[0] += module.in_features * module.out_features * (output.numel() //
                                                                    output.shape[-1])
        else:
            kh, kw = module.kernel_size
            per_out = module.in_channels // module.groups * kh * kw
            total[0] += output.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SUPPORTED)]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    return total[0] // max(1, example.shape[0])


def model_cost(model: nn.Module, example: torch.Tensor, *, batches=(1, 256),
               repeats: int = 20) -> dict:
    """Parameters, MACs per sample and median CPU latency (ms) at each batch size."""
    rows = example.shape[0]
    lat = {}
    for b in batches:
        x = example[:b] if rows >= b else example.repeat((math.ceil(b / rows),) + (1,) *
                                                         (example.ndim - 1))[:b]
        lat[f"batch_{b}"] = measure_latency(model, x, repeats=repeats)
    return dict(parameters=count_parameters(model), macs=count_flops(model, example[:1]),
                latency_ms=lat)


class _Solver:
    """Group-l1 solves of one layer (X with a ones column for a bias)."""

    def __init__(self, data, module, groups, solver, solver_options):
        data = in_solver_dtype(data)   # float16 / bfloat16: solved in float32
        X = data.X
        self.bias = module.bias is not None
        W0 = module.weight.detach().flatten(1).to(X, copy=True)
        if self.bias:
            X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
            W0 = torch.cat([W0, module.bias.detach().to(X)[:, None]], 1)
            groups = torch.cat([groups, torch.tensor([-1])])
        self.X, self.Y, self.W0, self.groups = X, data.post, W0, groups.to(X.device)
        self.relu = data.activation == "relu"
        self.n_groups = int(groups.max()) + 1
        self.y_norm = float(torch.linalg.vector_norm(self.Y))
        self.solver, self.options = solver, dict(solver_options or {})
        self.iterations = 0

    def problem(self, eps_rel: float) -> NetTrimProblem:
        return NetTrimProblem(self.X, self.Y, eps_rel * self.y_norm, relu=self.relu)

    def solve(self, eps_rel: float, W_start=None):
        problem = self.problem(eps_rel)
        if self.solver == "cvxpy":
            result = solve_group_cvxpy(problem, self.groups.cpu())
        else:
            result = solve_group_admm(problem, self.groups, W0=self.W0 if W_start is None
                                      else W_start, **self.options)
        self.iterations += result.iterations
        return result

    def zero_groups(self, W) -> torch.Tensor:
        return group_norms(torch.as_tensor(W).T, self.groups, self.n_groups) == 0

    def search(self, fraction: float):
        """(result, eps) removing about ``fraction`` of the groups (never more than asked)."""
        want = int(math.floor(fraction * self.n_groups + 0.5))
        lo, hi = (math.log(e) for e in EPS_RANGE)
        best = None   # (removed, result, eps) with removed <= want, most removed
        fewest = None  # fewest units removed by a usable solve (all too many when best is None)
        warm = None
        deadline = time.perf_counter() + SEARCH_SECONDS
        last = None
        for _ in range(MAX_SOLVES):
            if last is not None and time.perf_counter() > deadline:
                break   # bounded in time: the best point so far (or the fallback below)
            mid = 0.5 * (lo + hi)
            result = last = self.solve(math.exp(mid), warm)
            usable = result.status in SUCCESS or result.status == MAX_ITER  # refit decides
            removed = int(self.zero_groups(result.W).sum()) if usable else -1
            if usable:
                warm = result.W
                fewest = removed if fewest is None else min(fewest, removed)
            if 0 <= removed <= want and (best is None or removed > best[0]):
                best = (removed, result, math.exp(mid))
            if removed == want:
                break
            if removed < want:
                lo = mid
            else:
                hi = mid
        if best is None and fewest is not None:
            msg = (f"every epsilon tried in {EPS_RANGE} removes more than the {want} units asked "
                   f"(at least {fewest} of {self.n_groups}): the layer's outputs barely depend "
                   "on its inputs on these calibration rows (constant or dead inputs?): check "
                   "the calibration data, or give epsilon instead of a sparsity")
            raise RuntimeError(msg)
        if best is None:   # no usable solve: the layer as it was, with the solver's status
            return replace(last, W=self.W0.clone()), math.exp(0.5 * (lo + hi))
        removed, result, eps = best
        if removed < want:  # drop the weakest remaining groups to reach the count exactly
            W = torch.as_tensor(result.W).clone()
            norms = group_norms(W.T, self.groups, self.n_groups)
            norms[norms == 0] = math.inf
            drop = torch.argsort(norms)[:want - removed]
            W[:, torch.isin(self.groups, drop.to(self.groups.device))] = 0.0
            # the trimmed weights must be checked again: feasible ones stay at the solve's
            # status, others are INFEASIBLE until the refit (if any) makes them feasible
            status = result.status if self.feasible(W, eps) else INFEASIBLE
            result = replace(result, W=W, status=status)
        return result, eps

    def feasible(self, W, eps_rel: float) -> bool:
        """Whether ``W`` meets the program at ``eps_rel`` (solve_admm's tolerances)."""
        Z = self.X @ torch.as_tensor(W).to(self.X).T
        tol = ADMMSettings.feas_tol
        if not self.relu:
            return float(torch.linalg.vector_norm(Z - self.Y)) <= eps_rel * self.y_norm * (1 + tol)
        active = self.Y > 0
        res = float(torch.linalg.vector_norm((Z - self.Y).masked_fill(~active, 0.0)))
        viol = float(Z.masked_fill(active, -float("inf")).max().clamp(min=0.0))
        return (res <= eps_rel * self.y_norm * (1 + tol)
                and viol <= tol * float(self.Y.abs().max()))


def _refit(solver: _Solver, eps_rel: float, result):
    """Least residual on the kept groups (undoes the group shrinkage).

    Replaces the group-l1 weights when it is feasible for the program (residual within
    epsilon, inequalities within ``feas_tol max|Y|``) and fits no worse. A group-l1 solve
    stopped at its cap (MAX_ITER) whose support refits feasibly becomes OPTIMAL_INACCURATE:
    feasible weights, units chosen by a not fully converged solve."""
    W = torch.as_tensor(result.W)
    kept = ~solver.zero_groups(W)[solver.groups.clamp(min=0)] | (solver.groups == -1)
    support = kept[None, :].expand(W.shape).clone()
    problem = solver.problem(eps_rel)
    refitted = refit_support(problem, support, W0=result.W)
    solver.iterations += refitted.iterations
    tol = ADMMSettings.feas_tol
    feasible = (refitted.residual <= problem.epsilon * (1 + tol) + 1e-12
                and refitted.violation <= tol * float(solver.Y.abs().max()))
    if not feasible or (result.status in SUCCESS and refitted.residual > result.residual):
        return result
    status = result.status if result.status in SUCCESS else OPTIMAL_INACCURATE
    return replace(refitted, status=status, solver=result.solver + "+refit")


def prune_units(model: nn.Module, inputs: Any, epsilon: Any = None, *, sparsity: Any = None,
                scope: str = "layer", mode: str = "parallel", solver: str = "admm",
                layers: Any = None, ignore: Any = (), activations: Optional[dict] = None,
                max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
                inplace: bool = False, masks: bool = False, strict: bool = False,
                progress: bool = False, refit: bool = True, reweight: int = 1,
                solver_options: Optional[dict] = None):
    """``nettrim.prune(..., structured=True)`` (module docstring).

    ``epsilon``: relative tolerance per layer (float or ``{layer: float}``); ``sparsity``:
    fraction of each layer's input units to remove. ``reweight`` is not used (group-l1 has
    no reweighting yet); ``refit`` re-solves on the kept units.

    Returns
    -------
    PruneResult
        ``.model`` the shrunk model; ``.report`` one row per solved layer (``shape`` the new
        weight shape, ``sparsity`` the fraction of the layer's original weights gone);
        ``.options["removed"]``: ``{producer layer: [removed unit indices]}``;
        ``.options["cost"]``: ``{"before": ..., "after": ...}`` parameters, MACs per sample
        and CPU latency (ms, batch 1 and 256; :func:`model_cost`).
    """
    if scope != "layer":
        msg = "structured=True takes per-layer targets: scope='global' is not supported with it"
        raise ValueError(msg)
    if mode != "parallel":
        msg = f"structured=True runs in parallel mode, got mode={mode!r}"
        raise ValueError(msg)
    if (epsilon is None) == (sparsity is None):
        msg = "give exactly one of epsilon (relative tolerance) and sparsity (fraction of units)"
        raise ValueError(msg)
    wanted = None if layers is None else list(prunable_layers(model, layers, ignore))
    groups_of = unit_groups(model, wanted)
    why = {}   # layers of the default selection whose input units cannot be removed
    if wanted is None:
        groups_of = {n: g for n, g in groups_of.items() if n not in set(ignore)}
        why = {n: w for n, w in _unit_groups(model)[1].items() if n not in set(ignore)}
    if not groups_of:
        msg = "structured=True: no layer of the model takes another layer's units as inputs"
        msg += "".join(f"; {n!r}: {w}" for n, w in why.items())
        raise ValueError(msg)
    skipped = {n: f"structured=True cannot remove its input units: {w}" for n, w in why.items()}
    names = list(groups_of)
    what = "epsilon" if sparsity is None else "sparsity"
    targets = per_layer(epsilon if sparsity is None else sparsity, names, what)
    missing = [n for n in names if n not in targets]
    if missing:
        msg = f"{what} dict misses layers {missing} (structured=True prunes {names})"
        raise ValueError(msg)
    for n, v in targets.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            v >= 0 if sparsity is None else 0 <= v < 1)
        if not ok:
            what = "epsilon must be a number >= 0" if sparsity is None else \
                "sparsity (fraction of units) must be in [0, 1)"
            msg = f"{what}, got {v!r} for layer {n!r}"
            raise ValueError(msg)
    t0 = time.perf_counter()
    data = capture(model, inputs, layers=names, activations=activations,
                   max_samples=max_samples, seed=seed, device=device, fold=False)
    example = next(iter([inputs] if isinstance(inputs, torch.Tensor) else inputs))
    example = example[0] if isinstance(example, (tuple, list)) else example
    cost_before = model_cost(model, example)   # after the capture, which checks the inputs
    target = model if inplace else copy.deepcopy(model)
    solved = {}
    for name in names:
        module = target.get_submodule(name)
        s = _Solver(data.pop(name), module, groups_of[name][1], solver, solver_options)
        t_layer = time.perf_counter()
        if sparsity is None:
            eps = float(targets[name])
            result = s.solve(eps)
        else:
            result, eps = s.search(float(targets[name]))
        if refit and result.status in SUCCESS + (MAX_ITER, INFEASIBLE):
            result = _refit(s, eps, result)
        if result.status not in SUCCESS:
            msg = (f"layer {name!r}: group-l1 solver status {result.status} after "
                   f"{s.iterations} iterations and {time.perf_counter() - t_layer:.0f} s "
                   f"(a sparsity's search stops after {SEARCH_SECONDS:.0f} s with its best "
                   "point; no usable point leaves the layer as it was); give an epsilon "
                   "instead of a sparsity (one solve per layer), fewer rows (max_samples), or "
                   "a larger iteration cap through solver_options={'max_iter': ...}")
            if strict:
                raise PruningError(msg)
            warnings.warn(msg, PruningWarning, stacklevel=3)
        solved[name] = (s, result, eps, time.perf_counter() - t_layer)

    removed, rows = {}, []
    for name in names:
        s, result, eps, seconds = solved[name]
        W = torch.as_tensor(result.W)
        dead = s.zero_groups(W)
        if bool(dead.all()):  # keep one unit so that the shapes stay valid (it feeds nothing)
            dead[0] = False
        module = target.get_submodule(name)
        W_orig = module.weight.detach().flatten(1).clone()
        N = W_orig.shape[1]
        set_layer_weight(module, W[:, :N], W[:, N] if s.bias else None)
        producer = groups_of[name][0]
        keep = torch.nonzero(~dead.cpu()).flatten()
        if bool(dead.any()):
            remove_units(target, producer, keep)
        removed[producer] = torch.nonzero(dead.cpu()).flatten().tolist()
        out = s.X @ W.T.to(s.X)
        out = torch.relu(out) if s.relu else out
        rep = dict(total=W_orig.numel(), epsilon=eps, epsilon_abs=eps * s.y_norm,
                   relative_error=float(torch.linalg.vector_norm(out - s.Y)) / s.y_norm
                   if s.y_norm > 0 else 0.0, status=result.status, iterations=s.iterations,
                   seconds=seconds, solver=result.solver)
        rows.append((name, W_orig, rep))
    for i, (name, W_orig, rep) in enumerate(rows):   # counted once every unit is removed
        module = target.get_submodule(name)
        nz = int((module.weight != 0).sum())
        rep.update(nonzeros=nz, sparsity=1.0 - nz / W_orig.numel())
        rows[i] = report_row(name, None, module, W_orig, rep)
    if masks:
        apply_masks(target, [n for n, m in target.named_modules() if isinstance(m, SUPPORTED)])
    options = dict(structured=True, epsilon=epsilon, sparsity=sparsity, mode="parallel",
                   solver=solver, max_samples=max_samples, seed=seed, refit=refit,
                   solver_options=solver_options, layers=names, removed=removed,
                   removed_count={p: len(v) for p, v in removed.items()},
                   cost={"before": cost_before, "after": model_cost(target, example)},
                   seconds=time.perf_counter() - t0)
    out = PruneResult(model=target, report=rows, options=options, skipped=skipped)
    if reiterable(inputs):
        out.output_error = output_discrepancy(model, target, inputs, device=device)
    return out
