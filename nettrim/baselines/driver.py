"""The baselines on a model: :func:`prune_baseline` runs a layer method on each layer.

It captures the layers' inputs with :func:`nettrim.model.capture.capture`, runs a layer method
on each layer (``sequential=True``: each layer sees the inputs produced by the
already-pruned layers before it, as SparseGPT does) and writes the weights back. With
``scope="global"`` one ranking of the method's score over all layers picks the mask
(:data:`GLOBAL_SCORES`, :func:`nettrim.budget.global_keep_masks`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from ..budget import DEFAULT_MIN_PER_UNIT, check_budget, check_scope, global_keep_masks
from ..checks import check_model, check_sparsity
from ..inputs import reiterable
from ..model.capture import capture, capture_cascade, group_blocks, layer_matrix, prunable_layers
from ..model.graph import parameter_counts, warn_unknown_weights
from ..model.surgery import set_layer_weight
from ..results import (LayerPruneResult, PruneResult, layer_result, output_discrepancy,
                       pre_activation, report_row, skipped_rows)
from .magnitude_family import global_magnitude, magnitude, random_prune, wanda
from .obs_family import DEFAULT_DAMP, lobs, obd, obs_saliency, sparsegpt

__all__ = ["BASELINES", "GLOBAL_SCORES", "METHODS", "prune_baseline"]

#: Layer methods by name: ``method(W, X, *, sparsity, bias=None, relu=True, Y=None, **opts)``.
BASELINES: dict = {
    "random": random_prune,
    "magnitude": magnitude,
    "obd": obd,
    "lobs": lobs,
    "sparsegpt": sparsegpt,
    "wanda": wanda,
}
#: Every name :func:`prune_baseline` accepts (the layer methods and the model-wide one).
METHODS = tuple(BASELINES) + ("global_magnitude",)


def _per_group(fn, name, W, X, groups, bias, Y, relu, **kw) -> LayerPruneResult:
    """A layer method applied to each group of a grouped convolution (its own input columns
    and output channels, as Net-Trim solves it), merged into one result."""
    t0 = time.perf_counter()
    W_new = torch.zeros_like(W)
    b_new = None if bias is None else bias.clone()
    sq = 0.0   # squared output error, summed over the groups
    for cols, rows in group_blocks(groups, X.shape[1], W.shape[0]):
        part = fn(W[rows], X[:, cols], bias=None if bias is None else bias[rows], relu=relu,
                  Y=Y[:, rows], **kw)
        W_new[rows] = part.weight.to(W.dtype)
        if part.bias is not None:
            b_new[rows] = part.bias.to(b_new.dtype)
        out = pre_activation(X[:, cols], W_new[rows], None if b_new is None else b_new[rows])
        out = torch.relu(out) if relu else out
        sq += float(torch.linalg.vector_norm(out - Y[:, rows].to(out.dtype))) ** 2
    result = layer_result(name, W, W_new, None, b_new, None, relu, t0)
    y_norm = float(torch.linalg.vector_norm(Y))
    result.report["relative_error"] = math.sqrt(sq) / y_norm if y_norm > 0 else math.sqrt(sq)
    return result


def prune_baseline(model: nn.Module, inputs: Any, method: Union[str, Callable], sparsity: Any, *,
                   layers: Any = None, ignore: Iterable[str] = (),
                   activations: Optional[dict] = None, max_samples: Optional[int] = None,
                   seed: int = 0, sequential: bool = True, inplace: bool = False,
                   device: Any = None, method_options: Optional[dict] = None,
                   scope: str = "layer", min_per_unit: Optional[int] = None) -> PruneResult:
    """Prune a model's Linear / Conv2d layers with a comparison method.

    Parameters
    ----------
    model : nn.Module
        Never modified unless ``inplace=True``.
    inputs : Tensor or iterable of batches
        Calibration data (``(x, y)`` batches use ``x``); must be re-iterable with
        ``sequential=True`` (a tensor, list or DataLoader).
    method : str or callable
        A name of :data:`BASELINES`, ``"global_magnitude"`` (one threshold for all the selected
        layers), or a layer function with the :data:`BASELINES` signature.
    sparsity : float in [0, 1) or dict of {layer: float}
        Per-layer target (global magnitude: the model-wide fraction, a float).
    layers, ignore, activations, max_samples, seed, device
        As in :func:`nettrim.prune` / :func:`nettrim.capture`.
    sequential : bool, default True
        Each layer sees the inputs produced by the already-pruned layers before it (as
        SparseGPT); False: every layer sees the original network's inputs.
    inplace : bool, default False
    method_options : dict, optional
        Keyword options of the layer method (``seed``, ``damp``, ``blocksize``, ``nm``, ...).
    scope : {"layer", "global"}
        ``"global"``: ``sparsity`` (a float) is the fraction of all the selected weights
        together, and the mask comes from one ranking over all layers of the method's usual
        score (:func:`nettrim.budget.global_keep_masks`): ``|W|`` for magnitude,
        ``|W_ij| ||X_j||_2`` for Wanda, the OBS saliency ``w^2 / [H^-1]_jj`` (H the damped
        ``X^T X / P``) for SparseGPT, which then applies its weight updates under that mask.
        Only these three methods have a global rule.
    min_per_unit : int, optional
        Layer-collapse guard of ``scope="global"`` (default
        :data:`nettrim.budget.DEFAULT_MIN_PER_UNIT` kept weights per output unit).

    Returns
    -------
    PruneResult
        ``.report`` has one :class:`LayerReport` per layer (``solver`` = the method name,
        ``relative_error`` against the original network's layer output), then a ``SKIPPED``
        row for each module left as it is (as :func:`nettrim.prune` reports them: a tied weight
        is pruned once, weights in modules the toolkit does not know stay dense with an
        :class:`~nettrim.graph.UnknownWeightsWarning`); ``.skipped`` ``{name: reason}``.
    """
    check_model(model)
    is_global = method == "global_magnitude"
    if callable(method):
        fn, name_of_method = method, getattr(method, "__name__", "custom")
    elif is_global:
        fn, name_of_method = magnitude, "global_magnitude"
    elif isinstance(method, str) and method in BASELINES:
        fn, name_of_method = BASELINES[method], method
    else:
        msg = f"method must be one of {METHODS} or a layer function, got {method!r}"
        raise ValueError(msg)
    if not isinstance(sequential, bool):
        msg = f"sequential must be True or False, got {sequential!r}"
        raise TypeError(msg)
    opts = dict(method_options or {})
    names = list(prunable_layers(model, layers, ignore))
    if check_scope(scope) == "global" and name_of_method not in GLOBAL_SCORES:
        msg = (f"scope='global' has a rule for {sorted(GLOBAL_SCORES)} only, got method "
               f"{name_of_method!r}")
        raise ValueError(msg)
    if min_per_unit is not None and scope != "global":
        msg = "min_per_unit is the guard of a global budget: it needs scope='global'"
        raise ValueError(msg)
    keep_masks = None
    if scope == "global":
        check_budget(sparsity)
        spars_of = {n: None for n in names}
    elif is_global:
        if isinstance(sparsity, Mapping):
            msg = "global_magnitude takes one model-wide sparsity (a float), not a dict"
            raise TypeError(msg)
        check_sparsity(sparsity)
        spars_of = {}
    elif isinstance(sparsity, Mapping):
        unknown = sorted(set(sparsity) - set(names))
        if unknown:
            msg = f"sparsity names unknown layers {unknown}; prunable layers are {names}"
            raise ValueError(msg)
        missing = [n for n in names if n not in sparsity]
        if missing:
            msg = f"sparsity dict misses layers {missing} (name every selected layer)"
            raise ValueError(msg)
        spars_of = {n: check_sparsity(sparsity[n], f"sparsity[{n!r}]") for n in names}
    else:
        s = None if (sparsity is None and ("nm" in opts or "mask" in opts)) \
            else check_sparsity(sparsity)
        spars_of = {n: s for n in names}
    if sequential and not reiterable(inputs):
        msg = ("inputs must be re-iterable with sequential=True (a tensor, a list of batches or "
               "a DataLoader), got a one-shot iterator")
        raise TypeError(msg)
    # fold=False: the methods work on the layer's own weights and outputs
    cap = dict(activations=activations, max_samples=max_samples, seed=seed, device=device,
               fold=False)
    before = parameter_counts(model)   # before any write: the "before" of skipped rows
    warn_unknown_weights(model)
    original = capture(model, inputs, layers=names, **cap)
    reference = copy.deepcopy(model) if inplace else model
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    if scope == "global":
        scores = {n: GLOBAL_SCORES[name_of_method](layer_matrix(modules[n]), original[n].X,
                                                   opts.get("damp", DEFAULT_DAMP))
                  for n in names}
        keep_masks = global_keep_masks(
            scores, sparsity,
            min_per_unit=DEFAULT_MIN_PER_UNIT if min_per_unit is None else min_per_unit)
    globally = None
    if is_global:
        globally = global_magnitude({n: layer_matrix(modules[n]) for n in names},
                                    sparsity=sparsity)
    rows = []
    for index, name in enumerate(names):
        data = original[name]
        module = modules[name]
        W_orig = layer_matrix(module).clone()
        b_orig = None if module.bias is None else module.bias.detach().clone()
        if sequential and index > 0:
            # inputs from the pruned layers before, targets from the original model (same rows)
            data = capture_cascade(reference, target, inputs, name, **cap)
        X, relu = data.X, data.activation == "relu"
        Xw = X.to(W_orig.dtype) if X.dtype != W_orig.dtype else X
        Yw = data.post.to(Xw.dtype)
        bw = None if b_orig is None else b_orig.to(Xw.device)
        if keep_masks is not None and name_of_method == "sparsegpt":
            result = fn(W_orig.to(Xw.device), Xw, bias=bw, relu=relu, Y=Yw,
                        **dict(opts, mask=~keep_masks[name].to(Xw.device)))
        elif keep_masks is not None:
            result = layer_result(
                name_of_method, W_orig.to(Xw.device),
                W_orig.to(Xw.device).masked_fill(~keep_masks[name].to(Xw.device), 0.0),
                Xw, bw, Yw, relu, time.perf_counter())
        elif is_global:
            t0 = time.perf_counter()
            result = layer_result("global_magnitude", W_orig.to(Xw.device),
                                  globally[name].to(Xw.device), Xw, bw, Yw, relu, t0)
        elif getattr(data, "groups", 1) > 1:
            result = _per_group(fn, name_of_method, W_orig.to(Xw.device), Xw, data.groups,
                                bw, Yw, relu, sparsity=spars_of[name], **opts)
        else:
            result = fn(W_orig.to(Xw.device), Xw, sparsity=spars_of[name], bias=bw, relu=relu,
                        Y=Yw, **opts)
        weight = result.weight.to(device=module.weight.device, dtype=module.weight.dtype)
        bias = None if result.bias is None else result.bias.to(module.weight.device)
        set_layer_weight(module, weight, bias)
        rows.append(report_row(name, data, module, W_orig, result.report))
    options = dict(method=name_of_method, sparsity=sparsity, sequential=sequential,
                   max_samples=max_samples, seed=seed, layers=names, method_options=opts,
                   scope=scope)
    skipped = dict(original.skipped)
    rows += skipped_rows(skipped, before, parameter_counts(target, skipped))
    out = PruneResult(model=target, report=rows, options=options, skipped=skipped)
    if reiterable(inputs):
        out.output_error = output_discrepancy(reference, target, inputs, device=device)
    return out


#: Scores of the global rules (scope="global"), ``score(W (M, N), X (P, N), damp) -> (M, N)``;
#: higher is kept first.
GLOBAL_SCORES: dict = {
    "magnitude": lambda W, X, damp: W.abs(),
    "wanda": lambda W, X, damp: W.to(torch.float64).abs()
    * torch.linalg.vector_norm(X.to(torch.float64), dim=0).to(W.device),
    "sparsegpt": obs_saliency,
}
