"""Zhu & Gupta 2017's gradual magnitude pruning ("To prune, or not to prune"), as a schedule for
the user's loop: :class:`GradualPruner`, driven by :class:`.schedules.PolynomialDecay` (or
:class:`.schedules.ConstantSparsity`).

At every step the schedule marks as due, each layer keeps its ``(1 - s_t) n`` largest
``|w|`` among the weights it still has; the sparsity climbs along the cubic while the network
trains, so it recovers from each small cut before the next.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Union

import torch
from torch import nn

from .schedules import ConstantSparsity, PolynomialDecay, keep_largest
from .sparsifier import Sparsifier

__all__ = ["GradualPruner", "DEFAULT_FREQUENCY"]

#: Steps between mask updates (tfmot's default; the paper used 100 to 1000).
DEFAULT_FREQUENCY = 100
Schedule = Union[PolynomialDecay, ConstantSparsity]


class GradualPruner(Sparsifier):
    """Magnitude pruning on a sparsity schedule, per layer.

    Parameters
    ----------
    model : nn.Module
    schedule : PolynomialDecay or ConstantSparsity, or dict of {layer: schedule}
        One schedule for every layer, or one per layer (every layer named).
    layers, ignore : optional
        Which layers (default every Linear / Conv).

    Notes
    -----
    At a due step ``t`` with sparsity ``s_t``, a layer of ``n`` weights keeps the
    ``n - round(s_t n)`` largest ``|w|`` of those it kept before (masks only shrink: a cut
    weight is set to zero and stays so).
    """

    method = "gradual"

    def __init__(self, model: nn.Module, schedule: Union[Schedule, Mapping[str, Schedule]], *,
                 layers: Any = None, ignore: Iterable[str] = ()):
        super().__init__(model, layers=layers, ignore=ignore)
        with self.undo_on_error():
            self.schedules: Dict[str, Schedule] = _per_layer(schedule, list(self.layers))

    def update(self, iteration: int) -> None:
        for name, schedule in self.schedules.items():
            due, s = schedule(iteration)
            if not due:
                continue
            w = self._weight(name)
            alive = self.layers[name].weight_mask.bool()
            keep_count = w.numel() - int(math.floor(s * w.numel() + 0.5))
            if keep_count >= int(alive.sum()):
                continue
            score = torch.where(alive, w.abs(), torch.full_like(w, -1.0))
            self.set_mask(name, keep_largest(score, keep_count) & alive)


def _per_layer(schedule: Any, names: list) -> Dict[str, Schedule]:
    if isinstance(schedule, Mapping):
        unknown = sorted(set(schedule) - set(names))
        missing = [n for n in names if n not in schedule]
        if unknown or missing:
            msg = (f"schedule dict must name every pruned layer {names}: unknown {unknown}, "
                   f"missing {missing}")
            raise ValueError(msg)
        schedules = dict(schedule)
    else:
        schedules = {n: schedule for n in names}
    for name, item in schedules.items():
        if not isinstance(item, (PolynomialDecay, ConstantSparsity)):
            msg = (f"schedule[{name!r}] must be a PolynomialDecay or ConstantSparsity, got "
                   f"{type(item).__name__}")
            raise TypeError(msg)
    return schedules
