"""A sparsity budget for the whole model (``scope="global"``) and its allocation over layers.

``nettrim.prune(model, inputs, sparsity=0.9, scope="global")`` zeroes 90% of the selected
layers' weights *together*; how many each layer keeps is chosen here:

* ``allocation="loss"`` (default): the counts that minimize the network's loss on the
  calibration data (cross-entropy on the calibration labels when given, else the output
  discrepancy against the dense model). Each layer gets a database of solutions at a ladder of
  kept counts (:mod:`nettrim.allocation.ladder`: Net-Trim's support at the most weights the
  budget leaves the layer, then least-squares fits on supports pruned from it), and a dynamic
  program and a local search over the ladders pick one rung per layer
  (:mod:`nettrim.allocation.search`, as SPDY does). Parallel mode returns the chosen rungs;
  cascade mode refits each layer, in order, on its chosen support from the pruned layers'
  outputs (least squares to the original outputs). Measured on LeNet-300-100 at 90/95/98%:
  this refit reached 96.30 / 94.77 / 91.43% test accuracy in 3-5 s, re-solving each layer
  with Net-Trim's cascade pipeline at the same counts 95.83 / 94.08 / 90.91% in 15-35 s
  (one shared CPU thread; that re-solve is ``nettrim.prune(..., mode="cascade",
  sparsity={layer: 1 - kept / total})`` with the counts of ``result.options["allocation"]``).
* ``allocation="epsilon"``: one relative epsilon for all layers, searched to the global count
  in parallel mode; ``"marginal"``: the same search, then the split equalizing the marginal
  error per weight removed (:mod:`nettrim.allocation.epsilon`).
* ``allocation="magnitude"``: the per-layer counts that one global magnitude threshold picks,
  each reached by Net-Trim's per-layer pipeline.

Measured (``benchmarks/bench_global.py``, LeNet-300-100 and a narrow 784-64-32-10 MLP at
90/95/98%): see the README's global-budget table.

Layer-collapse guard (:mod:`nettrim.allocation.guard`): no layer keeps fewer than
``min_per_unit`` weights per output unit on average; a budget the floors alone exceed is
refused. Layers the forward pass never calls are skipped (status ``SKIPPED``, the reason in the
report and in ``result.skipped``) and the budget is reached over the layers that are pruned.
``sparsity=0`` keeps every layer as it is.

The baselines' global rules (:func:`nettrim.baselines.prune_baseline` with ``scope="global"``)
use :func:`global_keep_masks` on their own scores with the same guard.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn

from solvers import OPTIMAL_INACCURATE, SUCCESS

from .allocation import (LADDER_LEVELS, CalibrationLoss, LayerLadder, anchor_weight,
                         ladder_counts, search_levels)
from .allocation.epsilon import EpsilonLayer, epsilon_split, marginal_split
from .allocation.guard import (DEFAULT_MIN_PER_UNIT, GLOBAL_TOL, SCOPES, check_budget,
                               check_min_per_unit, check_scope, global_keep_masks,
                               interpolated_counts, kept_budget, layer_floors, within_tolerance)
from .inputs import batches, reiterable
from .model.capture import (CalibrationWarning, capture, capture_cascade, group_blocks,
                            layer_matrix, prunable_layers)
from .model.graph import parameter_counts
from .model.surgery import apply_masks, set_layer_weight
from .results import (MAX_ITER_HINT, SKIPPED, PruneResult, PruningError, PruningWarning,
                      layer_result, output_discrepancy, report_row, skipped_rows)

__all__ = ["DEFAULT_MIN_PER_UNIT", "SCOPES", "ALLOCATIONS", "GLOBAL_TOL", "check_budget",
           "check_scope", "layer_floors", "global_keep_masks", "interpolated_counts",
           "marginal_split", "prune_global", "format_allocation", "within_tolerance"]

ALLOCATIONS = ("loss", "epsilon", "marginal", "magnitude")
MODES = ("parallel", "cascade")


def prune_global(model: nn.Module, inputs: Any, sparsity: Any, *, allocation: str = "loss",
                 min_per_unit: int = DEFAULT_MIN_PER_UNIT, mode: str = "parallel",
                 solver: str = "admm", layers: Any = None, ignore: Any = (),
                 activations: Optional[dict] = None, max_samples: Optional[int] = None,
                 seed: int = 0, device: Any = None, inplace: bool = False, masks: bool = False,
                 strict: bool = False, progress: bool = False, refit: bool = True,
                 reweight: int = 1, solver_options: Optional[dict] = None,
                 per_layer_prune: Optional[Callable] = None, targets: Any = None,
                 levels: int = LADDER_LEVELS, executor: Any = None):
    """``nettrim.prune(..., sparsity=s, scope="global")``: see the module docstring.

    ``per_layer_prune`` is the per-layer model driver (:func:`nettrim.prune`, which passes
    itself: it sits above this module); ``allocation="magnitude"`` runs it with each layer's
    share and ``sparsity=0`` with no pruning. ``targets``: calibration labels for the loss
    (:class:`nettrim.allocation.CalibrationLoss`). ``levels``: rungs per ladder.
    ``executor`` (:mod:`nettrim.executors`): where the per-layer driver's solves run (the
    ladders and the epsilon splits' solves run in this process).

    Returns a :class:`nettrim.PruneResult` whose ``options`` add ``scope``, ``allocation``
    (``{layer: {"kept", "total", "sparsity"}}``), ``allocation_rule``, ``global_sparsity``
    (reached), ``target_sparsity``, ``min_per_unit``, ``floored`` (layers held at the guard);
    for ``"loss"``: ``allocation_loss`` (which loss), ``loss`` (dense / chosen values and the
    search's record), ``ladder`` (each layer's rungs), ``seconds_database``,
    ``seconds_search``, ``seconds_final``; for the epsilon splits ``epsilon_common`` and
    ``search`` (``[(epsilon, kept)]``).
    """
    target_s = check_budget(sparsity)
    if allocation not in ALLOCATIONS:
        msg = f"allocation must be one of {ALLOCATIONS}, got {allocation!r}"
        raise ValueError(msg)
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    if mode == "cascade" and allocation in ("epsilon", "marginal"):
        msg = (f"allocation={allocation!r} searches one epsilon over the layers in parallel "
               f"mode; use mode='parallel' (got {mode!r}), or allocation='loss' or 'magnitude'")
        raise ValueError(msg)
    if targets is not None and allocation != "loss":
        msg = f"targets= feeds the calibration loss of allocation='loss', got allocation={allocation!r}"
        raise ValueError(msg)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        msg = f"levels must be an integer >= 2 (rungs per ladder), got {levels!r}"
        raise ValueError(msg)
    check_min_per_unit(min_per_unit)
    if per_layer_prune is None and (allocation == "magnitude" or target_s == 0.0):
        msg = (f"allocation={allocation!r} runs the per-layer driver: pass per_layer_prune="
               "nettrim.prune (or call nettrim.prune(..., scope='global'))")
        raise TypeError(msg)
    if executor is not None and per_layer_prune is not None:
        per_layer_prune = functools.partial(per_layer_prune, executor=executor)
    if not reiterable(inputs):   # a one-shot iterator: every pass below needs the batches again
        inputs = list(batches(inputs))
    selected = prunable_layers(model, layers, ignore)
    names, uncalled = _called_layers(model, inputs, selected, activations, seed, device)
    shapes = {n: (selected[n].weight.shape[0], selected[n].weight[0].numel()) for n in names}
    floors = layer_floors(shapes, min_per_unit)
    total = sum(M * N for M, N in shapes.values())
    budget = kept_budget(total, target_s, floors)
    common = dict(solver=solver, layers=names, activations=activations,
                  max_samples=max_samples, seed=seed, device=device, inplace=inplace,
                  masks=masks, strict=strict, progress=progress, refit=refit,
                  reweight=reweight, solver_options=solver_options)
    floored: list = []
    if budget == total:   # nothing to remove: every layer as it is
        out = per_layer_prune(model, inputs, sparsity=0.0, mode=mode, **common)
    elif allocation == "magnitude":
        keep = global_keep_masks({n: selected[n].weight.detach().flatten(1).abs()
                                  for n in names}, target_s, min_per_unit=min_per_unit)
        per_layer = {n: 1.0 - int(k.sum()) / k.numel() for n, k in keep.items()}
        out = per_layer_prune(model, inputs, sparsity=per_layer, mode=mode, **common)
        floored = [n for n, k in keep.items() if int(k.sum()) <= floors[n]]
    elif allocation == "loss":
        out = _loss_split(model, inputs, names, floors, budget, target_s, mode, common, targets,
                          levels, min_per_unit, per_layer_prune)
        floored = [r.name for r in out.report if r.nonzeros_after <= floors.get(r.name, -1)]
    else:
        out, floored = _epsilon_global(model, inputs, selected, names, floors, budget, total,
                                       allocation, common)
    out.report += skipped_rows(uncalled, parameter_counts(model, uncalled),
                               parameter_counts(out.model, uncalled))
    out.skipped.update(uncalled)
    return _finish_global(out, target_s, total, allocation, min_per_unit, floored)


def _called_layers(model, inputs, selected, activations, seed, device):
    """The selected layers the forward pass calls (in order), and ``{name: reason}`` of the
    others: one forward pass that keeps a single row per layer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        probe = capture(model, inputs, layers=list(selected), activations=activations,
                        max_samples=1, seed=seed, device=device, fold=False)
    names = [n for n in selected if n in probe]
    uncalled = {n: probe.skipped.get(n, "not called by the model's forward pass")
                for n in selected if n not in probe}
    if not names:
        msg = (f"none of the selected layers {list(selected)} is called by the model's forward "
               "pass on these inputs")
        raise ValueError(msg)
    return names, uncalled


def _loss_split(model, inputs, names, floors, budget, target_s, mode, common, targets, levels,
                min_per_unit, per_layer_prune):
    """``allocation="loss"``: anchors, ladders, the search, then the chosen rungs (parallel),
    or each refit on its support from the pruned layers' outputs (cascade)."""
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    totals = {n: modules[n].weight.numel() for n in names}
    # the most a layer can keep (the others at their floors): the anchor, the ladder's top
    caps = {n: min(totals[n], budget - sum(floors[o] for o in names if o != n)) for n in names}
    data = capture(model, inputs, layers=names, activations=common["activations"],
                   max_samples=common["max_samples"], seed=common["seed"],
                   device=common["device"], fold=False)
    # global magnitude's counts: rungs of their own and a start of the search
    magnitude = {n: int(k.sum()) for n, k in global_keep_masks(
        {n: layer_matrix(modules[n]).abs() for n in names}, target_s,
        min_per_unit=min_per_unit).items()}
    ladders, anchors = {}, {}
    for n in names:
        d, module = data[n], modules[n]
        W0 = layer_matrix(module)
        support, status = anchor_weight(
            d.X, d.post, W0, module.bias, caps[n], relu=d.activation == "relu",
            groups=d.groups, solver=common["solver"], solver_options=common["solver_options"])
        anchors[n] = {"kept": int((support != 0).sum()), "status": status}
        ladders[n] = LayerLadder(n, d.X, d.pre, weight_columns=W0.shape[1], groups=d.groups,
                                 bias=module.bias is not None, original=W0).build(
            support, ladder_counts(anchors[n]["kept"], floors[n], caps[n], levels,
                                   extra=[magnitude[n]]),
            dtype=module.weight.dtype)
    t_database = time.perf_counter() - t0

    loss = CalibrationLoss(model, inputs, targets, device=common["device"])
    written: dict = {}

    def use(name, rung):   # rung None: the dense layer
        key = "dense" if rung is None else rung
        if written.get(name, "dense") is not key:
            module = modules[name]
            loss.set(name, layer_matrix(module) if rung is None else rung.weight,
                     module.bias if rung is None else rung.bias)
            written[name] = key

    def loss_of(choice):
        for n in names:
            use(n, None if choice.get(n) is None else ladders[n].rungs[choice[n]])
        return loss()

    kept = {n: [r.kept for r in ladders[n].rungs] for n in names}
    start = {n: kept[n].index(magnitude[n]) for n in names if magnitude[n] in kept[n]}
    choice, record = search_levels(kept, budget, loss_of,
                                   starts=[start] if len(start) == len(names) else [])
    chosen = {n: ladders[n].rungs[choice[n]] for n in names}
    record["slack_filled"] = _fill_slack(ladders, choice, chosen, budget, totals, use, loss)
    for n in names:
        use(n, chosen[n])
    record["final_loss"] = record["ladder_loss"] = loss()
    t_search = time.perf_counter() - t0 - t_database

    resolved = None
    if mode == "parallel" and per_layer_prune is not None:
        # Net-Trim's own pipeline at the chosen counts: kept when its loss is lower (on small
        # layers its linear program can choose better supports than the ladder's pruning)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PruningWarning)
            resolved = per_layer_prune(model, inputs, mode="parallel",
                                       **dict(common, inplace=False, masks=False, strict=False),
                                       sparsity={n: 1.0 - chosen[n].kept / totals[n]
                                                 for n in names})
        record["resolved_loss"] = loss(resolved.model)
    if resolved is not None and record["resolved_loss"] < record["final_loss"] and \
            _holds(resolved, chosen, floors, budget, sum(totals.values())):
        out = _adopt(model, resolved, common)
        record["final_loss"] = record["resolved_loss"]
        record["kept_solution"] = "per-layer pipeline at the chosen counts"
    else:
        out = _write_rungs(model, inputs, names, chosen, data, common,
                           cascade=mode == "cascade")
        record["kept_solution"] = "ladder"
    out.options.update(
        allocation_loss=loss.kind, loss=dict(record, kind=loss.kind, evaluations=loss.evaluations),
        ladder={n: [r.kept for r in ladders[n].rungs] for n in names},
        anchor=anchors,
        seconds_database=t_database, seconds_search=t_search,
        seconds_final=time.perf_counter() - t0 - t_database - t_search,
        seconds=time.perf_counter() - t0)
    return out


def _fill_slack(ladders, choice, chosen, budget, totals, use, loss):
    """Give the weights the rungs leave under the budget to the layer whose loss they lower
    most (a fill step of its ladder), then to the next while some are left. Updates
    ``chosen``; returns ``{layer: weights added}``."""
    added: dict = {}
    left = budget - sum(r.kept for r in chosen.values())
    while left > 0:
        best = None
        for n, ladder in ladders.items():
            room = totals[n] - chosen[n].kept
            if room <= 0 or n in added:
                continue
            rung = ladder.extend(choice[n], min(left, room), dtype=chosen[n].weight.dtype)
            use(n, rung)
            value = loss()
            use(n, chosen[n])
            if rung.kept > chosen[n].kept and (best is None or value < best[0]):
                best = (value, n, rung)
        if best is None:
            break
        _, n, rung = best
        added[n] = rung.kept - chosen[n].kept
        left -= added[n]
        chosen[n] = rung
    return added


def _holds(resolved, chosen, floors, budget, total) -> bool:
    """Whether the per-layer pipeline's result solved every layer, kept the floors and the
    budget (within GLOBAL_TOL: its per-layer counts are within the sparsity tolerance)."""
    rows = [r for r in resolved.report if r.name in chosen]
    return all(r.status in SUCCESS and r.nonzeros_after >= floors[r.name] for r in rows) and \
        abs(sum(r.nonzeros_after for r in rows) - budget) <= GLOBAL_TOL * total


def _adopt(model, resolved, common):
    """The per-layer pipeline's result in place of the rungs (into ``model`` when inplace)."""
    if common["inplace"]:   # its output error was measured against the unchanged model
        model.load_state_dict(resolved.model.state_dict())
        resolved.model = model
    if common["masks"]:
        apply_masks(resolved.model, [r.name for r in resolved.report if r.status != SKIPPED])
    return resolved


def _write_rungs(model, inputs, names, chosen, data, common, cascade):
    """The chosen rungs written into the (copied) model, one report row each. Cascade mode
    refits each layer, in order, on its rung's support from the pruned network's inputs (the
    least-squares fit of the original outputs). A rung is the least-squares fit of the layer's
    outputs on its support: a solution of the linear program at the epsilon it reaches (its
    residual), reported OPTIMAL_INACCURATE as :func:`nettrim.prune_layer`'s linear refit is."""
    target = model if common["inplace"] else copy.deepcopy(model)
    reference = copy.deepcopy(model) if common["inplace"] else model
    modules = dict(target.named_modules())
    rows = []
    for n in names:
        t0 = time.perf_counter()
        module = modules[n]
        W0 = layer_matrix(module).clone()
        bias0 = None if module.bias is None else module.bias.detach().clone()
        rung, d = chosen[n], data[n]
        if cascade:   # inputs from the layers pruned so far, targets from the original
            d = capture_cascade(reference, target, inputs, n, activations=common["activations"],
                                max_samples=common["max_samples"], seed=common["seed"],
                                device=common["device"], fold=False)
            rung = LayerLadder(n, d.X, d.pre, weight_columns=W0.shape[1], groups=d.groups,
                               bias=bias0 is not None, original=rung.weight).fit(
                rung.weight, dtype=rung.weight.dtype)
        relu = d.activation == "relu"
        X = d.X.to(rung.weight.dtype) if d.X.dtype != rung.weight.dtype else d.X
        fit = torch.cat([X[:, cols] @ rung.weight[out].T for cols, out in
                         group_blocks(d.groups, X.shape[1], rung.weight.shape[0])], 1)
        if rung.bias is not None:
            fit = fit + rung.bias
        out = torch.relu(fit) if relu else fit
        y_norm = float(torch.linalg.vector_norm(d.post))
        residual = float(torch.linalg.vector_norm(fit - d.pre.to(fit)))
        error = float(torch.linalg.vector_norm(out - d.post.to(out)))
        rep = layer_result("nettrim-ladder", W0, rung.weight, None, bias0, None, relu, t0).report
        rep.update(status=OPTIMAL_INACCURATE, epsilon_abs=residual, residual=residual,
                   epsilon=residual / y_norm if y_norm > 0 else float("nan"),
                   relative_error=error / y_norm if y_norm > 0 else error)
        set_layer_weight(module, rung.weight, rung.bias)
        row = report_row(n, d, module, W0, rep)
        row.program = f"linear({d.activation})" if d.activation else "linear"
        row.note = ("least-squares fit of the layer's outputs on the support the loss-aware "
                    "global budget chose" + (", from the pruned layers' outputs" if cascade
                                             else ""))
        row.rows, row.rows_seen = d.X.shape[0], d.rows_seen
        rows.append(row)
    if common["masks"]:
        apply_masks(target, names)
    out = PruneResult(model=target, report=rows, options=dict(
        epsilon=None, sparsity=None, mode="cascade" if cascade else "parallel",
        solver="nettrim-ladder", max_samples=common["max_samples"], seed=common["seed"],
        layers=names))
    out.output_error = output_discrepancy(reference, target, inputs, device=common["device"])
    return out


def _epsilon_global(model, inputs, selected, names, floors, budget, total, allocation, common):
    """``allocation="epsilon" | "marginal"``: the common-epsilon search and the write-back."""
    t0 = time.perf_counter()
    data = capture(model, inputs, layers=names, activations=common["activations"],
                   max_samples=common["max_samples"], seed=common["seed"],
                   device=common["device"], fold=False)
    layer_kwargs = dict(solver=common["solver"], refit=common["refit"],
                        reweight=common["reweight"], solver_options=common["solver_options"],
                        progress=False)
    state = {n: EpsilonLayer(n, data.pop(n), selected[n], layer_kwargs) for n in names}
    results, eps_common, path, eps_of, fixed = epsilon_split(
        state, floors, budget, total, allocation, GLOBAL_TOL, common["progress"])
    target = model if common["inplace"] else copy.deepcopy(model)
    modules = dict(target.named_modules())
    rows = []
    for name, layer in state.items():
        result = results[name]
        rep = result.report
        if rep["status"] not in SUCCESS:
            msg = (f"layer {name!r}: solver status {rep['status']} after {rep['iterations']} "
                   f"iterations; {MAX_ITER_HINT}")
            if common["strict"]:
                raise PruningError(msg)
            warnings.warn(msg, PruningWarning, stacklevel=4)
        module = modules[name]
        set_layer_weight(module, result.weight, result.bias)
        rep = dict(rep, seconds=sum(r.report["seconds"] for r in layer.solved.values()))
        rows.append(report_row(name, layer.data, module, layer.W0, rep))
    if common["masks"]:
        apply_masks(target, names)
    options = dict(epsilon=None, sparsity=None, mode="parallel", solver=common["solver"],
                   max_samples=common["max_samples"], seed=common["seed"],
                   refit=common["refit"], reweight=common["reweight"],
                   solver_options=common["solver_options"], layers=names,
                   epsilon_common=eps_common, search=path, seconds=time.perf_counter() - t0,
                   epsilon_per_layer=eps_of)
    out = PruneResult(model=target, report=rows, options=options)
    out.output_error = output_discrepancy(model, target, inputs, device=common["device"])
    return out, fixed


_LOSS_WORDS = {"cross_entropy": "cross-entropy on the calibration labels",
               "mse": "mean squared error to the calibration targets",
               "output_discrepancy": "output discrepancy against the dense model (no labels)"}


def format_allocation(options) -> str:
    """One line for a global budget: target, reached, the split rule, floored layers."""
    text = (f"global budget: {options['global_sparsity']:.2%} of the selected weights zeroed "
            f"(target {options['target_sparsity']:.2%}), split by {options['allocation_rule']}")
    if options.get("allocation_loss"):
        text += (f" ({_LOSS_WORDS[options['allocation_loss']]}; database "
                 f"{options['seconds_database']:.1f} s, search {options['seconds_search']:.1f} s)")
    if options.get("epsilon_common") is not None and options["allocation_rule"] == "epsilon":
        text += f" (common relative epsilon {options['epsilon_common']:.4g})"
    if options.get("floored"):
        text += (f"; held at the layer-collapse guard ({options['min_per_unit']} per output "
                 f"unit): {', '.join(options['floored'])}")
    return text


def _finish_global(out, target: float, total: int, allocation: str, min_per_unit: int,
                   floored: list):
    pruned = [r for r in out.report if r.status != SKIPPED]
    kept = sum(r.nonzeros_after for r in pruned)
    out.options.update(
        scope="global", sparsity=target, allocation_rule=allocation, min_per_unit=min_per_unit,
        floored=floored, target_sparsity=target, global_sparsity=1.0 - kept / total,
        allocation={r.name: {"kept": r.nonzeros_after, "total": r.total,
                             "sparsity": r.sparsity} for r in pruned})
    return out
