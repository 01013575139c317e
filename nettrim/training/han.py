"""Han et al. 2015's prune-retrain ("Learning both Weights and Connections for Efficient Neural
Networks"), as a schedule for the user's loop: :class:`HanPruner`.

Round after round, each layer loses its weights below ``quality * std`` (the std of its
surviving weights); between rounds the loop retrains the survivors with the cut weights held
at zero. The paper's other prescriptions are defaults here or in :func:`nettrim.train_prune`:
L2 regularisation (weight decay, better than L1 once the network is retrained), a lower
learning rate for retraining (``lr_factor``: the optimizer's rates are scaled at the first
round when the pruner is given the optimizer), and the dropout of each pruned layer lowered
as its connections go: ``D_r = D_o sqrt(C_ir / C_io)`` (:func:`.schedules.adjust_dropout`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..checks import per_layer
from ..model.graph import PRUNABLE
from .schedules import adjust_dropout, check_steps, han_threshold, keep_largest, round_sparsity
from .sparsifier import Sparsifier, per_layer_fraction

__all__ = ["HanPruner", "DEFAULT_LR_FACTOR", "DEFAULT_ROUNDS", "DEFAULT_WEIGHT_DECAY"]

#: Retraining learning rate as a fraction of the training rate. The paper asks for a lower
#: rate when retraining without one number for LeNet; a tenth is the usual choice.
DEFAULT_LR_FACTOR = 0.1
#: Prune / retrain rounds.
DEFAULT_ROUNDS = 3
#: L2 weight decay of Caffe's LeNet solver, which the paper's LeNet runs used.
DEFAULT_WEIGHT_DECAY = 5e-4
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)


class HanPruner(Sparsifier):
    """Iterative magnitude pruning with Han et al.'s threshold ``quality * std(W)``.

    At iterations ``0, round_steps, 2 round_steps, ...`` (``rounds`` times) every layer loses
    its surviving weights with ``|w| < quality * std(surviving w)``. With ``sparsity`` instead
    of ``quality`` the quality of round ``r`` is the one that prunes the layer to
    ``1 - (1 - s)^(r / R)`` (each round keeps the same fraction of what is left; the last
    reaches ``s`` exactly); the qualities used are in :attr:`qualities`. Cut weights are set to
    zero and never come back.

    Parameters
    ----------
    model : nn.Module
    sparsity : float in [0, 1) or dict of {layer: float}, optional
        Final fraction of zeros per layer.
    quality : float >= 0 or dict of {layer: float}, optional
        The paper's quality parameter instead of ``sparsity`` (the same in every round).
    rounds : int, default 3
    round_steps : int, default 1
        Training iterations between rounds (the retraining of each round).
    optimizer : torch.optim.Optimizer, optional
        When given, its learning rates (``lr``, and ``initial_lr`` of a scheduler) are
        multiplied by ``lr_factor`` at the first round: the network is being retrained.
    lr_factor : float in (0, 1], default 0.1
    dropout : bool, default True
        Lower each ``nn.Dropout`` that follows a pruned layer (the next module of that kind
        before any other prunable layer, in module order) to
        ``D_o sqrt(C_ir / C_io)`` after every round.
    layers, ignore : optional
        Which layers (default every Linear / Conv).

    Attributes
    ----------
    round : int
        Rounds done.
    qualities, thresholds : dict of {layer: float}
        Of the last round.
    """

    method = "han"

    def __init__(self, model: nn.Module, sparsity: Any = None, *, quality: Any = None,
                 rounds: int = DEFAULT_ROUNDS, round_steps: int = 1,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 lr_factor: float = DEFAULT_LR_FACTOR, dropout: bool = True,
                 layers: Any = None, ignore: Iterable[str] = ()):
        if (sparsity is None) == (quality is None):
            msg = "give exactly one of sparsity (a fraction of zeros) and quality (x std)"
            raise ValueError(msg)
        self.rounds = check_steps(rounds, "rounds", minimum=1)
        self.round_steps = check_steps(round_steps, "round_steps", minimum=1)
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) \
                or not 0 < lr_factor <= 1:
            msg = f"lr_factor must be a number in (0, 1], got {lr_factor!r}"
            raise ValueError(msg)
        super().__init__(model, layers=layers, ignore=ignore)
        names = list(self.layers)
        with self.undo_on_error():
            self.targets = None if sparsity is None else per_layer_fraction(
                sparsity, names, "sparsity")
            self.quality = None if quality is None else _qualities(quality, names)
        self.optimizer = optimizer
        self.lr_factor = float(lr_factor)
        self.lr_lowered = False
        self.round = 0
        self.qualities: Dict[str, float] = {}
        self.thresholds: Dict[str, float] = {}
        self.dropouts: Dict[str, List[Tuple[nn.Module, float]]] = (
            self._find_dropouts() if dropout else {})

    def update(self, iteration: int) -> None:
        if iteration % self.round_steps or self.round >= self.rounds:
            return
        self.round += 1
        for name in self.layers:
            w = self._weight(name)
            alive = self.layers[name].weight_mask.bool()
            std_scale = float(w[alive].to(torch.float64).std()) if int(alive.sum()) > 1 else 0.0
            if self.targets is not None:
                s = round_sparsity(self.targets[name], self.round, self.rounds)
                keep_count = w.numel() - int(math.floor(s * w.numel() + 0.5))
                keep = keep_largest(torch.where(alive, w.abs(), torch.full_like(w, -1.0)),
                                    keep_count) & alive
                kept = w.abs()[keep]
                threshold = float(kept.min()) if kept.numel() else float("inf")
                quality = threshold / std_scale if std_scale > 0 else float("inf")
            else:
                quality = self.quality[name]
                threshold = han_threshold(w[alive], quality)
                keep = alive & (w.abs() >= threshold)
            self.set_mask(name, keep)
            self.qualities[name], self.thresholds[name] = quality, threshold
        self._adjust_dropout()
        if self.optimizer is not None and not self.lr_lowered:
            for group in self.optimizer.param_groups:
                for key in ("lr", "initial_lr"):
                    if key in group:
                        group[key] = group[key] * self.lr_factor
            self.lr_lowered = True

    def extra_state(self) -> dict:
        return {"round": self.round, "qualities": dict(self.qualities),
                "thresholds": dict(self.thresholds), "lr_lowered": self.lr_lowered}

    def load_extra_state(self, extra: dict) -> None:
        self.round = int(extra.get("round", 0))
        self.qualities = dict(extra.get("qualities", {}))
        self.thresholds = dict(extra.get("thresholds", {}))
        self.lr_lowered = bool(extra.get("lr_lowered", False))
        self._adjust_dropout()

    def _find_dropouts(self) -> Dict[str, List[Tuple[nn.Module, float]]]:
        found: Dict[str, List[Tuple[nn.Module, float]]] = {}
        last = None
        for name, module in self.model.named_modules():
            if isinstance(module, PRUNABLE):
                last = name if name in self.layers else None
            elif isinstance(module, _DROPOUT) and last is not None:
                found.setdefault(last, []).append((module, float(module.p)))
        return found

    def _adjust_dropout(self) -> None:
        nz = self.nonzeros()
        for name, pairs in self.dropouts.items():
            for module, rate in pairs:
                module.p = adjust_dropout(rate, nz[name], max(1, self.connections[name]))


def _qualities(quality: Any, names: List[str]) -> Dict[str, float]:
    q = per_layer(quality, names, "quality")
    for name in names:
        value = q.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            msg = f"quality[{name!r}] must be a number >= 0, got {value!r}"
            raise ValueError(msg)
    return {n: float(q[n]) for n in names}
