"""Structured baselines: whole neurons / channels ranked by a criterion and removed.

``l1`` (the unit's weight norm, Li et al. 2017), ``apoz`` (average percentage of zeros of its
output, Hu et al. 2016), first-order ``taylor`` (Molchanov et al. 2017), the ``oracle`` (the
loss change when the unit is removed, measured), ``infogain`` (the mutual information between
the unit's activation and the label) or ``mean_activation`` (Molchanov et al. 2017's baseline);
the units go through :func:`nettrim.model.surgery.remove_units`, so the model shrinks.
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
from ..model.graph import analyze
from ..model.surgery import remove_units
from ..results import LayerReport, PruneResult, output_discrepancy
from .masks import n_zeros, smallest_mask

__all__ = ["INFOGAIN_BINS", "ORACLE_MAX_ENTRIES", "STRUCTURED_CRITERIA", "information_gain",
           "prune_structured", "unit_scores"]

#: Rows per forward pass when a model is scored on a tensor of inputs.
_BATCH_ROWS = 512
#: Unit criteria: the units with the LOWEST score are removed.
STRUCTURED_CRITERIA = ("l1", "apoz", "taylor", "oracle", "infogain", "mean_activation")
#: Oracle: the most activation entries one forward pass holds when several units are removed at
#: once (replicas of the calibration batch past the layer): 2^25 float32 entries, 128 MiB.
ORACLE_MAX_ENTRIES = 1 << 25
#: Information gain: equal-frequency bins of each unit's activation.
INFOGAIN_BINS = 16


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


def _unit_outputs(model: nn.Module, modules: Mapping[str, nn.Module],
                  activations: Optional[dict]) -> dict:
    """``{layer: (module whose output carries the layer's units, activation name)}``: the
    eval-mode BatchNorm after the layer when there is one (a unit removed by
    :func:`remove_units` takes its BatchNorm entry with it), else the layer itself."""
    plan = analyze(model, warn=False)
    named = dict(model.named_modules())
    out = {}
    for name, module in modules.items():
        pattern = plan.patterns.get(name)
        norm = pattern.norm if pattern is not None else None
        act = pattern.activation if pattern is not None else None
        if activations and name in activations:
            act = activations[name]
        out[name] = (named[norm] if norm else module, act)
    return out


@contextlib.contextmanager
def _units_removed(module: nn.Module, state: dict):
    """While active, ``module``'s output (B, M, ...) is replaced by ``state["g"]`` copies
    stacked along the batch, copy ``i`` with unit ``state["start"] + i`` set to zero."""
    def hook(_module, _inputs, output):
        g, start = state["g"], state["start"]
        copies = output.unsqueeze(0).repeat(g, *[1] * output.ndim)
        index = torch.arange(g, device=output.device)
        copies[index, :, start + index] = 0
        state["entries"] = output.numel()
        return copies.flatten(0, 1)

    handle = module.register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


def _removal_losses(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                    module: nn.Module, units: int, entries: int) -> torch.Tensor:
    """Summed cross-entropy of the batch with each unit of ``module``'s output removed, shape
    (units,). Several units per forward pass (copies of the batch past the layer, at most
    :data:`ORACLE_MAX_ENTRIES` entries); the first group is checked against a one-unit pass,
    and a model whose later layers do not take the stacked copies as a batch (a skip from
    before the layer, a batch size read early) is run one unit at a time."""
    losses = torch.empty(units, dtype=torch.float64)
    batch = x.shape[0]
    group = max(1, min(units, ORACLE_MAX_ENTRIES // max(1, entries)))
    state = {"g": 1, "start": 0}

    def run(start: int, g: int) -> torch.Tensor:
        state.update(g=g, start=start)
        out = model(x)
        per = nn.functional.cross_entropy(out, labels.repeat(g), reduction="none")
        return per.view(g, batch).sum(1).to(torch.float64).cpu()

    with _units_removed(module, state):
        start = 0
        while start < units:
            g = min(group, units - start)
            if g > 1 and start == 0:
                try:
                    first = run(0, g)
                    ok = bool(torch.allclose(first[:1], run(0, 1), rtol=1e-4, atol=1e-4))
                except RuntimeError:
                    ok = False
                if not ok:
                    group = g = 1
                else:
                    losses[:g] = first
                    start = g
                    continue
            losses[start:start + g] = run(start, g)
            start += g
    return losses


def _oracle_scores(model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module],
                   device: Any, activations: Optional[dict]) -> dict:
    """The oracle: ``L(without unit k) - L`` per unit, the summed cross-entropy on the
    calibration batches (against the labels, else the model's own predictions) with the unit's
    output set to zero, divided by the number of samples. Units whose removal lowers the loss
    score below zero and go first."""
    targets = _unit_outputs(model, modules, activations)
    sums: dict = {name: None for name in modules}
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches(inputs, _BATCH_ROWS):
                x, y = _split(batch)
                if device is not None:
                    x = x.to(device)
                sizes: dict = {}
                handles = [target.register_forward_hook(
                    lambda _m, _i, out, name=name: sizes.__setitem__(name, out.numel()))
                    for name, (target, _) in targets.items()]
                try:
                    out = model(x)
                finally:
                    for h in handles:
                        h.remove()
                labels = out.argmax(1) if y is None else y.to(out.device)
                base = float(nn.functional.cross_entropy(out, labels, reduction="sum"))
                for name, (target, _) in targets.items():
                    units = layer_matrix(modules[name]).shape[0]
                    delta = _removal_losses(model, x, labels, target, units, sizes[name]) - base
                    sums[name] = delta if sums[name] is None else sums[name] + delta
                count += x.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        msg = "inputs gave no batches"
        raise ValueError(msg)
    return {name: v / count for name, v in sums.items()}


def _unit_activations(model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module],
                      device: Any, activations: Optional[dict], *, magnitude: bool):
    """Per sample and unit, the unit's activation averaged over positions (conv), shape
    (n, M) per layer, and the labels (None when the batches carry none). The activation is
    ``relu(z)`` (``min(relu(z), 6)``) for a layer followed by a ReLU (ReLU6), with ``z`` the
    layer's (BatchNorm's) output; otherwise ``z``, or ``|z|`` with ``magnitude``."""
    targets = _unit_outputs(model, modules, activations)
    store: dict = {name: [] for name in modules}
    labels: list = []

    def make(name, act):
        def hook(_module, _inputs, output):
            a = output.detach()
            if act == "relu":
                a = a.clamp(min=0)
            elif act == "relu6":
                a = a.clamp(0, 6)
            elif magnitude:
                a = a.abs()
            a = a.flatten(2).mean(2) if a.ndim > 2 else a
            store[name].append(a.to(torch.float64).cpu())
        return hook

    was_training = model.training
    model.eval()
    handles = []
    try:
        for name, (target, act) in targets.items():
            handles.append(target.register_forward_hook(make(name, act)))
        with torch.no_grad():
            for batch in batches(inputs, _BATCH_ROWS):
                x, y = _split(batch)
                model(x if device is None else x.to(device))
                labels.append(None if y is None else y.detach().cpu().long())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not labels:
        msg = "inputs gave no batches"
        raise ValueError(msg)
    y = None if any(t is None for t in labels) else torch.cat(labels)
    return {name: torch.cat(parts) for name, parts in store.items()}, y


def information_gain(activation: torch.Tensor, labels: torch.Tensor, *,
                     bins: int = INFOGAIN_BINS) -> torch.Tensor:
    """Mutual information ``I(a_k; y)`` (nats) between each unit's activation and the label.

    ``I = H(y) - H(y | a_k) = sum_{b, c} p(b, c) log(p(b, c) / (p(b) p(c)))`` with ``a_k``
    discretised into ``bins`` equal-frequency bins (the unit's own quantiles; tied edges merge
    bins, so a unit that is zero on most samples has few bins).

    Parameters
    ----------
    activation : Tensor of shape (n, M)
        One row per sample, one column per unit.
    labels : Tensor of shape (n,), integer class labels >= 0
    bins : int, default 16

    Returns
    -------
    Tensor of shape (M,), float64, >= 0
    """
    if activation.ndim != 2 or labels.ndim != 1 or labels.shape[0] != activation.shape[0]:
        msg = (f"activation must be (n, M) and labels (n,), got {tuple(activation.shape)} and "
               f"{tuple(labels.shape)}")
        raise ValueError(msg)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        msg = f"bins must be an int >= 2, got {bins!r}"
        raise ValueError(msg)
    a = activation.to(torch.float64)
    y = labels.long()
    n, units = a.shape
    classes = int(y.max()) + 1
    q = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    edges = torch.quantile(a, q, dim=0)                                  # (bins - 1, M)
    which = (a.unsqueeze(0) > edges.unsqueeze(1)).sum(0)                 # (n, M) in [0, bins)
    joint = torch.zeros(units, bins * classes, dtype=torch.float64)
    joint.scatter_add_(1, (which * classes + y.unsqueeze(1)).T,
                       torch.ones(units, n, dtype=torch.float64))
    p = (joint / n).view(units, bins, classes)
    pb = p.sum(2, keepdim=True)
    pc = p.sum(1, keepdim=True)
    ratio = torch.where(p > 0, p / (pb * pc).clamp_min(1e-300), torch.ones_like(p))
    return (p * ratio.log()).sum((1, 2)).clamp_min(0.0)


def unit_scores(model: nn.Module, inputs: Any, criterion: str, *, layers: Any = None,
                ignore: Iterable[str] = (), activations: Optional[dict] = None,
                max_samples: Optional[int] = None, seed: int = 0, device: Any = None) -> dict:
    """Importance of every output unit (neuron / channel) of the selected layers.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor or iterable of batches
        Calibration data (not needed by ``"l1"``); ``"taylor"`` and ``"oracle"`` use
        ``(x, y)`` labels when the batches have them, ``"infogain"`` needs them.
    criterion : {"l1", "apoz", "taylor", "oracle", "infogain", "mean_activation"}
        ``l1``: ``sum_j |W_kj|`` of the unit's (flattened) weights (Li et al. 2017).
        ``apoz``: the negated average percentage of zeros of the unit's post-activation over
        samples (and positions) (Hu et al. 2016). ``taylor``: first-order Taylor estimate of
        the loss change (Molchanov et al. 2017). ``oracle``: the loss change measured with
        the unit removed, ``(L(without k) - L) / n`` on the calibration batches (cross-entropy
        against the labels, else the model's predictions; its output, after its BatchNorm,
        set to zero; several units per forward pass). ``infogain``: the mutual information
        between the unit's activation (averaged over positions) and the label
        (:func:`information_gain`; needs labels). ``mean_activation``: the unit's mean
        post-ReLU activation over samples and positions (mean ``|z|`` without a ReLU)
        (Molchanov et al. 2017's baseline).
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
    if criterion == "oracle":
        return _oracle_scores(model, inputs, selected, device, activations)
    if criterion in ("infogain", "mean_activation"):
        acts, labels = _unit_activations(model, inputs, selected, device, activations,
                                         magnitude=criterion == "mean_activation")
        if criterion == "mean_activation":
            return {n: a.mean(0) for n, a in acts.items()}
        if labels is None:
            msg = ("criterion 'infogain' needs labelled batches (x, y): the information gain "
                   "is between a unit's activation and the label")
            raise ValueError(msg)
        return {n: information_gain(a, labels) for n, a in acts.items()}
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
    criterion : {"l1", "apoz", "taylor", "oracle", "infogain", "mean_activation"}
        See :func:`unit_scores`.
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
