"""Iterative Net-Trim: rounds of Net-Trim and masked retraining, as a schedule for the user's
loop (:class:`NetTrimPruner`).

Each round prunes the *current* (retrained) network with the fast target-sparsity pipeline of
:func:`nettrim.prune` (cascade mode by default: each layer refit to the original outputs from
the already-pruned layers' inputs), writes the solution (weights and refit biases) back, and
holds its zeros with ``torch.nn.utils.prune`` masks while the loop retrains. Net-Trim chooses
each round's support by solving the layer's convex program, not by magnitude, and refits the
kept weights, so little retraining is needed between rounds.

Sits above the model driver (it calls :func:`nettrim.prune`), beside :mod:`nettrim.train_prune`.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from .prune import MODES, prune
from .training.schedules import check_steps, round_sparsity
from .training.sparsifier import Sparsifier, per_layer_fraction

__all__ = ["NetTrimPruner", "DEFAULT_ROUNDS"]

#: Net-Trim / retraining rounds.
DEFAULT_ROUNDS = 3


class NetTrimPruner(Sparsifier):
    """Rounds of Net-Trim at rising sparsity, with the loop retraining in between.

    At iterations ``0, round_steps, 2 round_steps, ...`` (``rounds`` times) the model is
    pruned by :func:`nettrim.prune` on ``calibration`` to ``1 - (1 - s)^(r / R)`` per layer in
    round ``r`` of ``R`` (each round keeps the same fraction of the weights left; the last
    reaches ``s``). Unlike magnitude pruning, a round may choose weights an earlier round cut
    (the convex program picks the support from the layer's data); between rounds the zeros are
    held exactly.

    Parameters
    ----------
    model : nn.Module
    calibration : Tensor or iterable of batches
        Net-Trim's calibration inputs (re-iterable for cascade mode).
    sparsity : float in [0, 1) or dict of {layer: float}
        Final fraction of zeros per layer.
    rounds : int, default 3
    round_steps : int, default 1
        Training iterations between rounds.
    mode : {"cascade", "parallel"}, default "cascade"
    prune_options : dict, optional
        More keyword arguments of :func:`nettrim.prune` (``max_samples``, ``reweight``,
        ``solver_options``, ...).
    layers, ignore : optional

    Attributes
    ----------
    round : int
    log : list of dict
        Per round: ``round``, ``sparsity`` (per layer asked), ``seconds`` (wall) and
        ``cpu_seconds`` of the solve, ``output_error`` (on the calibration inputs, against the
        network before the round) and ``layers`` (the report rows).
    """

    method = "nettrim"

    def __init__(self, model: nn.Module, calibration: Any, sparsity: Any, *,
                 rounds: int = DEFAULT_ROUNDS, round_steps: int = 1, mode: str = "cascade",
                 prune_options: Optional[dict] = None, layers: Any = None,
                 ignore: Iterable[str] = ()):
        self.rounds = check_steps(rounds, "rounds", minimum=1)
        self.round_steps = check_steps(round_steps, "round_steps", minimum=1)
        if mode not in MODES:
            msg = f"mode must be one of {MODES}, got {mode!r}"
            raise ValueError(msg)
        if prune_options is not None and not isinstance(prune_options, dict):
            msg = f"prune_options must be a dict of nettrim.prune options, got {prune_options!r}"
            raise TypeError(msg)
        reserved = {"sparsity", "epsilon", "mode", "layers", "ignore", "inplace", "masks"} & set(
            prune_options or {})
        if reserved:
            msg = f"prune_options must not set {sorted(reserved)}: the pruner sets them"
            raise ValueError(msg)
        super().__init__(model, layers=layers, ignore=ignore)
        with self.undo_on_error():
            self.targets = per_layer_fraction(sparsity, list(self.layers), "sparsity")
        self.calibration = calibration
        self.mode = mode
        self.prune_options = dict(prune_options or {})
        self.round = 0
        self.log: List[dict] = []

    def update(self, iteration: int) -> None:
        if iteration % self.round_steps or self.round >= self.rounds:
            return
        self.round += 1
        goal = {n: round_sparsity(s, self.round, self.rounds) for n, s in self.targets.items()}
        wall, cpu = time.perf_counter(), time.process_time()
        plain = self.plain_copy()   # plain weights, the zeros as they are
        result = prune(plain, self.calibration, sparsity=goal, mode=self.mode,
                       layers=list(self.layers), **self.prune_options)
        solved = dict(result.model.named_modules())
        for name, module in self.layers.items():
            weight = solved[name].weight.detach()
            module.weight_orig.copy_(weight)
            self.set_mask(name, weight != 0)
            if module.bias is not None and solved[name].bias is not None:
                module.bias.copy_(solved[name].bias.detach())
        self.log.append({"round": self.round, "sparsity": goal,
                         "seconds": time.perf_counter() - wall,
                         "cpu_seconds": time.process_time() - cpu,
                         "output_error": result.output_error,
                         "layers": [row.as_dict() for row in result.report]})

    def extra_state(self) -> dict:
        return {"round": self.round, "log": list(self.log)}

    def load_extra_state(self, extra: dict) -> None:
        self.round = int(extra.get("round", 0))
        self.log = list(extra.get("log", []))

    def solve_seconds(self) -> Dict[str, float]:
        """Wall and CPU seconds of the Net-Trim solves so far."""
        return {"seconds": sum(r["seconds"] for r in self.log),
                "cpu_seconds": sum(r["cpu_seconds"] for r in self.log)}


def calibration_subset(x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """A seeded random subset of ``samples`` rows of ``x`` (all of them when fewer)."""
    if samples >= x.shape[0]:
        return x
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[order[:samples].sort().values]
