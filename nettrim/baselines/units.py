"""Structured baselines: whole neurons / channels ranked by a criterion and removed.

``l1`` (the unit's weight norm, Li et al. 2017), ``apoz`` (average percentage of zeros of its
output, Hu et al. 2016) or first-order ``taylor`` (Molchanov et al. 2017); the units go through
:func:`nettrim.model.surgery.remove_units`, so the model shrinks.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from solvers.status import OPTIMAL

from ..checks import check_model, check_sparsity
from ..inputs import batches, forward_args, reiterable
from ..model.capture import capture, layer_matrix, prunable_layers
from ..model.surgery import remove_units
from ..results import LayerReport, PruneResult, output_discrepancy
from .masks import n_zeros, smallest_mask

__all__ = ["STRUCTURED_CRITERIA", "prune_structured", "unit_scores"]

#: Rows per forward pass when a model is scored on a tensor of inputs.
_BATCH_ROWS = 512
#: Unit criteria: the units with the LOWEST score are removed.
STRUCTURED_CRITERIA = ("l1", "apoz", "taylor")


def _split(batch: Any):
    if isinstance(batch, (tuple, list)):
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        return x, y
    return batch, None


@contextlib.contextmanager
def _output_hooks(modules: Mapping[str, nn.Module], store: dict):
    """Keep each named module's output tensor (with its graph) in ``store[name]``."""
    handles = []

    def make(name):
        def hook(_module, _inputs, output):
            output.retain_grad()
            store[name] = output
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _taylor_scores(model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module],
                   device: Any) -> dict:
    """First-order Taylor criterion of Molchanov et al. 2017, per output unit.

    ``Theta_k = mean over samples of |mean over positions of a_k * dL/da_k|``, with ``a`` the
    post-ReLU activation; for a ReLU, ``a dL/da = z dL/dz`` entrywise (both vanish where
    ``z <= 0``), so the layer's own output ``z`` is hooked. The loss is the summed
    cross-entropy against the batch labels, or against the model's own predictions when the
    batches carry no labels.
    """
    sums = {name: None for name in modules}
    count = 0
    store: dict = {}
    was_training = model.training
    model.eval()
    try:
        with _output_hooks(modules, store):
            for batch in batches(inputs, _BATCH_ROWS):
                x, y = _split(batch)
                if device is not None:
                    x = x.to(device)
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    out = model(x)
                    labels = out.detach().argmax(1) if y is None else y.to(out.device)
                    loss = nn.functional.cross_entropy(out, labels, reduction="sum")
                    loss.backward()
                for name in modules:
                    z = store[name]
                    prod = (z * z.grad).detach()
                    per_sample = prod.flatten(2).mean(2) if prod.ndim > 2 else prod
                    contrib = per_sample.abs().sum(0).to(torch.float64).cpu()
                    sums[name] = contrib if sums[name] is None else sums[name] + contrib
                count += x.shape[0]
                store.clear()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        msg = "inputs gave no batches"
        raise ValueError(msg)
    return {name: v / count for name, v in sums.items()}


def unit_scores(model: nn.Module, inputs: Any, criterion: str, *, layers: Any = None,
                ignore: Iterable[str] = (), activations: Optional[dict] = None,
                max_samples: Optional[int] = None, seed: int = 0, device: Any = None) -> dict:
    """Importance of every output unit (neuron / channel) of the selected layers.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor or iterable of batches
        Calibration data (not needed by ``"l1"``); ``"taylor"`` uses ``(x, y)`` labels when
        the batches have them.
    criterion : {"l1", "apoz", "taylor"}
        ``l1``: ``sum_j |W_kj|`` of the unit's (flattened) weights (Li et al. 2017).
        ``apoz``: the negated average percentage of zeros of the unit's post-activation over
        samples (and positions) (Hu et al. 2016). ``taylor``: first-order Taylor estimate of
        the loss change (Molchanov et al. 2017).
    layers, ignore, activations, max_samples, seed, device
        As in :func:`nettrim.capture`.

    Returns
    -------
    dict of {layer name: Tensor of shape (M,)}
        Higher = more important (the lowest are removed first).
    """
    check_model(model)
    if criterion not in STRUCTURED_CRITERIA:
        msg = f"criterion must be one of {STRUCTURED_CRITERIA}, got {criterion!r}"
        raise ValueError(msg)
    selected = prunable_layers(model, layers, ignore)
    if criterion == "l1":
        return {n: layer_matrix(m).abs().sum(1).to(torch.float64).cpu() for n, m in selected.items()}
    if criterion == "apoz":
        data = capture(model, inputs, layers=list(selected), activations=activations,
                       max_samples=max_samples, seed=seed, device=device, fold=False)
        return {n: -(data[n].post <= 0).to(torch.float64).mean(0).cpu() for n in selected}
    return _taylor_scores(model, inputs, selected, device)


def _example_input(inputs: Any) -> Optional[torch.Tensor]:
    """The first batch's tensor input of re-iterable ``inputs`` (None for a one-shot iterator,
    or a batch fed as several arguments or keywords)."""
    if not reiterable(inputs):
        return None
    for args, kwargs in forward_args(inputs):
        one = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
        return args[0] if one else None
    return None


def prune_structured(model: nn.Module, inputs: Any, criterion: str, fraction: Any, *,
                     layers: Any = None, ignore: Iterable[str] = (),
                     activations: Optional[dict] = None, max_samples: Optional[int] = None,
                     seed: int = 0, device: Any = None, inplace: bool = False) -> PruneResult:
    """Remove whole neurons / channels with the lowest criterion scores, shrinking the model.

    In each selected layer the ``round(fraction * M)`` lowest-scoring output units (see
    :func:`unit_scores`) are removed with :func:`nettrim.remove_units`, together with
    the matching inputs of the next layer. Scores are computed once on the original model.
    The default selection is every prunable layer except the last (whose units are the
    model's outputs).

    Parameters
    ----------
    model : nn.Module
        A flat ``nn.Sequential``-like model (what ``remove_units`` supports).
    inputs : Tensor or iterable of batches
    criterion : {"l1", "apoz", "taylor"}
    fraction : float in [0, 1) or dict of {layer: float}
        Fraction of each layer's units to remove (at least one unit always stays).
    layers, ignore, activations, max_samples, seed, device, inplace
        As in :func:`prune_baseline`.

    Returns
    -------
    PruneResult
        ``.report`` rows: ``shape`` the new weight shape, ``nonzeros_before`` / ``total`` of
        the original layer, ``nonzeros_after`` of the shrunk one, ``sparsity`` the fraction
        of the layer's original weights gone; ``options["removed"]`` = units removed per layer.
    """
    check_model(model)
    if criterion not in STRUCTURED_CRITERIA:
        msg = f"criterion must be one of {STRUCTURED_CRITERIA}, got {criterion!r}"
        raise ValueError(msg)
    every = list(prunable_layers(model))
    if layers is None:
        names = [n for n in every[:-1] if n not in set(ignore)]
    else:
        names = list(prunable_layers(model, layers, ignore))
        if every and every[-1] in names:
            msg = (f"layer {every[-1]!r} is the model's output layer: its units cannot be "
                   "removed; leave it out of layers")
            raise ValueError(msg)
    if isinstance(fraction, Mapping):
        unknown = sorted(set(fraction) - set(names))
        if unknown:
            msg = f"fraction names unknown or unprunable layers {unknown}; allowed: {names}"
            raise ValueError(msg)
        frac_of = {n: check_sparsity(fraction.get(n, 0.0), f"fraction[{n!r}]") for n in names}
    else:
        f = check_sparsity(fraction, "fraction")
        frac_of = {n: f for n in names}
    t0 = time.perf_counter()
    scores = unit_scores(model, inputs, criterion, layers=names, activations=activations,
                         max_samples=max_samples, seed=seed, device=device) if names else {}
    t_scores = time.perf_counter() - t0
    reference = copy.deepcopy(model) if inplace else model
    target = model if inplace else copy.deepcopy(model)
    before = {n: layer_matrix(m).clone() for n, m in target.named_modules() if n in names}
    example = _example_input(inputs)   # traces the graph of a model that is no plain chain
    removed = {}
    for name in names:
        M = scores[name].numel()
        k = n_zeros(M, frac_of[name])
        if k >= M:
            k = M - 1
        drop = smallest_mask(scores[name], k)
        keep = torch.nonzero(~drop).flatten()
        if k > 0:
            if example is None and not isinstance(target, nn.Sequential):
                msg = ("inputs: removing units of this "
                       f"{type(target).__name__} traces its graph on an example batch, and a "
                       "one-shot iterator of batches was used up by the scores; pass a tensor, "
                       "a list of batches or a DataLoader")
                raise ValueError(msg)
            remove_units(target, name, keep, example_input=example)
        removed[name] = k
    modules = dict(target.named_modules())
    rows = []
    for name in names:
        module = modules[name]
        W_old = before[name]
        W_new = layer_matrix(module)
        nz_after = int((W_new != 0).sum())
        rows.append(LayerReport(
            name=name, kind="linear" if isinstance(module, nn.Linear) else "conv2d",
            shape=tuple(module.weight.shape), nonzeros_before=int((W_old != 0).sum()),
            nonzeros_after=nz_after, total=W_old.numel(),
            sparsity=1.0 - W_new.numel() / W_old.numel(), epsilon=float("nan"),
            epsilon_abs=float("nan"), relative_error=float("nan"), status=OPTIMAL,
            iterations=0, seconds=t_scores / max(1, len(names)), solver=f"structured:{criterion}"))
    options = dict(method=f"structured:{criterion}", fraction=fraction, layers=names,
                   removed=removed, max_samples=max_samples, seed=seed)
    out = PruneResult(model=target, report=rows, options=options)
    if reiterable(inputs):
        out.output_error = output_discrepancy(reference, target, inputs, device=device)
    return out
