"""Choosing each layer's rung: the network's calibration loss under the global count.

:class:`CalibrationLoss` runs the model on the calibration batches with chosen weights in its
layers and measures

* ``"cross_entropy"``: the mean cross-entropy of the logits on integer class labels (given as
  ``targets=``, or the labels of ``(inputs, labels)`` batches);
* ``"mse"``: the mean squared error to floating targets of the output's shape;
* ``"output_discrepancy"``: without labels, ``||f(x) - f_dense(x)||^2 / ||f_dense(x)||^2`` over
  every batch and output tensor (the dense model's outputs computed once).

:func:`search_levels` picks one rung per layer with ``sum kept <= budget`` (SPDY, Frantar &
Alistarh 2022, searches the same kind of database): a dynamic program over the layers on the
additive proxy ``loss(layer l at rung j, every other layer dense) - loss(dense)``, then a local
search on the real loss: one layer moves one or two rungs sparser and another takes the densest
rung the freed budget allows, the best improving move kept, until none improves (or the
evaluation cap). The proxy ignores how the layers' errors compound; the local search does not.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import DEFAULT_BATCH, batches, model_inputs, to_device
from ..model.surgery import set_layer_weight
from ..results import output_tensors

__all__ = ["LOSSES", "MAX_EVALUATIONS", "DP_UNITS", "CalibrationLoss", "batch_labels",
           "search_levels"]

LOSSES = ("cross_entropy", "mse", "output_discrepancy")
#: At most this many evaluations of the network's loss per search.
MAX_EVALUATIONS = 400
#: The dynamic program counts weights in units of ``ceil(budget / DP_UNITS)`` (rounded up, so
#: that its choice never exceeds the budget).
DP_UNITS = 2000


def batch_labels(batch: Any) -> Optional[torch.Tensor]:
    """The labels of an ``(inputs, labels)`` batch (a tensor second item), else None."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and \
            isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


class CalibrationLoss:
    """The network's loss on the calibration data, with weights written into a copy of it.

    Parameters
    ----------
    model : nn.Module
        The dense model (copied; never modified).
    inputs : Tensor or iterable of batches
        Calibration data (read once and kept).
    targets : Tensor, optional
        Labels for a tensor ``inputs``: integer class labels of shape (n,) (cross-entropy) or
        floating targets of the output's shape (mean squared error). Default: the labels of
        ``(inputs, labels)`` batches when every batch has them, else no labels.
    device : optional
        Where the forward passes run (default: the model's device).

    Attributes
    ----------
    kind : str
        One of :data:`LOSSES`.
    dense : float
        The dense model's loss.
    evaluations : int
    """

    def __init__(self, model: nn.Module, inputs: Any, targets: Any = None, device: Any = None):
        self.model = copy.deepcopy(model).eval()
        if device is not None:
            self.model.to(device)
        self.device = device
        self.modules = dict(self.model.named_modules())
        items = list(batches(inputs))
        labels: list = [batch_labels(b) for b in items]
        if targets is not None:
            if not isinstance(inputs, torch.Tensor):
                msg = ("targets= goes with a tensor of inputs (one label per row); with batches, "
                       "give (inputs, labels) pairs")
                raise TypeError(msg)
            targets = torch.as_tensor(targets)
            if targets.shape[0] != inputs.shape[0]:
                msg = (f"targets must have one entry per input row ({inputs.shape[0]}), got "
                       f"shape {tuple(targets.shape)}")
                raise ValueError(msg)
            labels = list(targets.split(DEFAULT_BATCH))
        elif any(lab is None for lab in labels):
            labels = [None] * len(items)
        self.batches = [(model_inputs(b), lab) for b, lab in zip(items, labels)]
        self.kind = "output_discrepancy"
        if labels and labels[0] is not None:
            self.kind = "mse" if labels[0].is_floating_point() else "cross_entropy"
        self.reference = None
        if self.kind == "output_discrepancy":
            self.reference = [[t.detach() for t in output_tensors(out)] for out in self._outputs()]
        self.evaluations = 0
        self.dense = self()

    def _outputs(self, model=None):
        model = self.model if model is None else model
        with torch.no_grad():
            for (args, kwargs), _ in self.batches:
                if self.device is not None:
                    args, kwargs = to_device(args, self.device), to_device(kwargs, self.device)
                yield model(*args, **kwargs)

    def set(self, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        """Write ``weight`` (M, N) and ``bias`` into layer ``name`` of the working copy."""
        set_layer_weight(self.modules[name], weight, bias)

    def __call__(self, model: Optional[nn.Module] = None) -> float:
        """The loss of the working copy as its layers are now (or of ``model``, in eval
        mode)."""
        self.evaluations += 1
        total, count = 0.0, 0
        reference = 0.0
        training = None if model is None else model.training
        if model is not None:
            model.eval()
        outputs = list(self._outputs(model))
        if model is not None:
            model.train(training)
        for i, out in enumerate(outputs):
            labels = self.batches[i][1]
            tensors = output_tensors(out)
            if self.kind == "output_discrepancy":
                for got, ref in zip(tensors, self.reference[i]):
                    total += float(torch.linalg.vector_norm(got - ref)) ** 2
                    reference += float(torch.linalg.vector_norm(ref)) ** 2
                continue
            logits = tensors[0] if tensors else None
            if logits is None or (self.kind == "cross_entropy" and logits.ndim != 2):
                msg = ("calibration labels need a model whose (first) output is a tensor of "
                       "logits (batch, classes)")
                raise ValueError(msg)
            labels = labels.to(logits.device)
            if self.kind == "cross_entropy":
                total += float(F.cross_entropy(logits.float(), labels.long(), reduction="sum"))
                count += logits.shape[0]
            else:
                total += float(F.mse_loss(logits.float(), labels.float(), reduction="sum"))
                count += logits.numel()
        if self.kind == "output_discrepancy":
            return total / reference if reference > 0 else total
        return total / max(count, 1)


def search_levels(kept: Mapping[str, list], budget: int,
                  loss_of: Callable[[Mapping[str, Optional[int]]], float], *,
                  starts: Sequence[Mapping[str, int]] = (),
                  max_evaluations: int = MAX_EVALUATIONS):
    """One rung per layer, ``sum kept <= budget``, of least ``loss_of``.

    Parameters
    ----------
    kept : dict of {layer: list of int}
        Each layer's rungs (kept counts, descending).
    budget : int
        Weights the layers may keep together.
    loss_of : callable
        ``loss_of({layer: rung index, or None for the dense layer})``: the network's loss.
    starts : list of dict of {layer: rung index}
        Other allocations to start from (e.g. global magnitude's counts): the local search
        starts from the best of these and the dynamic program's choice.
    max_evaluations : int

    Returns
    -------
    choice : dict of {layer: rung index}
    trace : dict
        ``proxy`` (the dynamic program's choice), ``proxy_loss``, ``start`` (where the local
        search started), ``loss``, ``moves`` (the local search's accepted moves),
        ``evaluations``.
    """
    names = list(kept)
    memo: dict = {}

    def loss(choice):
        key = tuple(choice.get(n) for n in names)
        if key not in memo:
            memo[key] = loss_of(dict(zip(names, key)))
        return memo[key]

    dense = loss({})
    proxy = {n: [loss({n: j}) - dense for j in range(len(kept[n]))] for n in names}
    choice = _dynamic_program(kept, proxy, budget)
    trace = dict(proxy={n: kept[n][choice[n]] for n in names})
    current = trace["proxy_loss"] = loss(choice)
    trace["start"] = "proxy"
    for i, start in enumerate(starts):
        if sum(kept[n][start[n]] for n in names) <= budget:
            value = loss(start)
            if value < current:
                current, choice, trace["start"] = value, dict(start), f"start {i}"
    moves = 0
    while len(memo) < max_evaluations:
        candidates = []
        for a in names:
            for step in (1, 2):
                if choice[a] + step >= len(kept[a]):
                    continue
                for b in names:
                    if b == a:
                        continue
                    new = dict(choice)
                    new[a] += step
                    room = budget - sum(kept[n][new[n]] for n in names if n != b)
                    fits = [j for j, k in enumerate(kept[b]) if k <= room]
                    if fits and min(fits) != new[b]:
                        new[b] = min(fits)
                        candidates.append(new)
        best = None
        for new in candidates:
            if len(memo) >= max_evaluations:
                break
            value = loss(new)
            if value < current and (best is None or value < best[0]):
                best = (value, new)
        if best is None:
            break
        current, choice = best
        moves += 1
    trace.update(loss=current, moves=moves, evaluations=len(memo), dense=dense)
    return choice, trace


def _dynamic_program(kept, proxy, budget):
    """The rungs minimizing ``sum proxy`` with ``sum kept <= budget`` (counts in units rounded
    up); the sparsest rungs when nothing fits."""
    names = list(kept)
    unit = max(1, math.ceil(budget / DP_UNITS))
    size = budget // unit + 1
    inf = math.inf
    best = torch.full((size,), inf, dtype=torch.float64)
    best[0] = 0.0
    back = []
    for n in names:
        new = torch.full((size,), inf, dtype=torch.float64)
        arg = torch.full((size,), -1, dtype=torch.long)
        for j, k in enumerate(kept[n]):
            u = math.ceil(k / unit)
            if u >= size:
                continue
            cand = torch.full((size,), inf, dtype=torch.float64)
            cand[u:] = best[:size - u] + proxy[n][j]
            better = cand < new
            new = torch.where(better, cand, new)
            arg = torch.where(better, torch.full_like(arg, j), arg)
        back.append(arg)
        best = new
    if not bool(torch.isfinite(best).any()):
        return {n: len(kept[n]) - 1 for n in names}
    u = int(torch.argmin(best))
    choice = {}
    for i in range(len(names) - 1, -1, -1):
        j = int(back[i][u])
        choice[names[i]] = j
        u -= math.ceil(kept[names[i]][j] / unit)
    return choice
