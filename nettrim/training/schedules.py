"""The arithmetic of the pruning schedules: sparsity over steps, thresholds, probabilities.

Pure functions and frozen records, no model: the pruners of :mod:`.pruners` call them, and the
tests check them against the papers' formulas.

=====================  ==========================================================  =========
name                   formula                                                     source
=====================  ==========================================================  =========
:class:`PolynomialDecay`  ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^p``  Zhu & Gupta
                       at ``t_0 <= t <= t_1`` every ``frequency`` steps, ``p = 3``  2017
:class:`ConstantSparsity`  ``s_t = s`` at ``t_0 <= t <= t_1`` every ``frequency``     tfmot
:func:`han_threshold`  ``quality * std(W)``                                        Han 2015
:func:`adjust_dropout` ``D_r = D_o sqrt(C_ir / C_io)``                             Han 2015
:func:`dns_probability`  ``(1 + gamma t)^-power``                                  Guo 2016
:func:`dns_thresholds`  ``a = 0.9 t``, ``b = 1.1 t``, ``t = max(mu + c sigma, 0)``    Guo 2016
                       with ``mu``, ``sigma`` the mean and std of ``|W|``
=====================  ==========================================================  =========

A step is one training iteration (one batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

__all__ = ["ConstantSparsity", "DNS_BAND", "PolynomialDecay", "adjust_dropout",
           "check_steps", "dns_probability", "dns_thresholds", "han_threshold",
           "keep_largest", "round_sparsity"]

#: Guo et al.'s hysteresis: a weight is cut below ``0.9 t`` and spliced back above ``1.1 t``.
DNS_BAND = (0.9, 1.1)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0.0 <= value < 1.0:
        msg = f"{name} must be a number in [0, 1), got {value!r}"
        raise ValueError(msg)
    return float(value)


def check_steps(value: Any, name: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (a step count or index), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{name} must be an int >= {minimum}, got {value!r}"
        raise ValueError(msg)
    return value


@dataclass(frozen=True)
class PolynomialDecay:
    """Zhu & Gupta's gradual schedule ("To prune, or not to prune", 2017), as in tfmot.

    ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^power`` for ``t_0 <= t <= t_1``;
    the masks are updated at ``t_0``, every ``frequency`` steps after it, and at ``t_1``.
    The sparsity rises fast at first, while the network has many redundant weights, and
    slowly near the end.

    Attributes
    ----------
    initial_sparsity : float in [0, 1), default 0.0
        ``s_i``.
    final_sparsity : float in [0, 1)
        ``s_f``.
    begin_step : int, default 0
        ``t_0``.
    end_step : int
        ``t_1 > t_0``; after it the masks stay as they are (the fine-tuning phase).
    power : float, default 3
        The paper's cubic.
    frequency : int, default 100
        ``Delta t``: steps between mask updates (the paper's 100 to 1000; tfmot's default 100).
    """

    final_sparsity: float
    end_step: int
    initial_sparsity: float = 0.0
    begin_step: int = 0
    power: float = 3.0
    frequency: int = 100

    def __post_init__(self):
        _fraction(self.initial_sparsity, "initial_sparsity")
        _fraction(self.final_sparsity, "final_sparsity")
        check_steps(self.begin_step, "begin_step")
        check_steps(self.end_step, "end_step", minimum=self.begin_step + 1)
        check_steps(self.frequency, "frequency", minimum=1)
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float)) \
                or not self.power > 0:
            msg = f"power must be a number > 0, got {self.power!r}"
            raise ValueError(msg)

    def sparsity(self, step: int) -> float:
        """``s_t`` (``s_i`` before ``t_0``, ``s_f`` after ``t_1``)."""
        progress = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - progress) ** self.power

    def __call__(self, step: int) -> Tuple[bool, float]:
        """``(update the masks at this step?, s_t)``."""
        due = self.begin_step <= step <= self.end_step and (
            (step - self.begin_step) % self.frequency == 0 or step == self.end_step)
        return due, self.sparsity(step)


@dataclass(frozen=True)
class ConstantSparsity:
    """One sparsity from ``begin_step`` on, the masks recomputed every ``frequency`` steps
    until ``end_step`` (None: for ever), as tfmot's ``ConstantSparsity``.

    Attributes
    ----------
    sparsity_level : float in [0, 1)
    begin_step : int, default 0
    end_step : int or None, default None
    frequency : int, default 100
    """

    sparsity_level: float
    begin_step: int = 0
    end_step: Optional[int] = None
    frequency: int = 100

    def __post_init__(self):
        _fraction(self.sparsity_level, "sparsity_level")
        check_steps(self.begin_step, "begin_step")
        if self.end_step is not None:
            check_steps(self.end_step, "end_step", minimum=self.begin_step)
        check_steps(self.frequency, "frequency", minimum=1)

    @property
    def final_sparsity(self) -> float:
        return self.sparsity_level

    def sparsity(self, step: int) -> float:
        """The level from ``begin_step`` on (0 before)."""
        return self.sparsity_level if step >= self.begin_step else 0.0

    def __call__(self, step: int) -> Tuple[bool, float]:
        """``(update the masks at this step?, sparsity)``."""
        inside = step >= self.begin_step and (self.end_step is None or step <= self.end_step)
        due = inside and ((step - self.begin_step) % self.frequency == 0 or step == self.end_step)
        return due, self.sparsity(step)


def round_sparsity(final: float, round_index: int, rounds: int) -> float:
    """The sparsity after round ``r`` of ``R`` rounds that each keep the same fraction of the
    weights left: ``1 - (1 - s)^(r / R)`` (``s`` at ``r = R``)."""
    if round_index >= rounds:
        return final
    return 1.0 - (1.0 - final) ** (round_index / rounds)


def han_threshold(weight: torch.Tensor, quality: float) -> float:
    """Han et al. 2015's pruning threshold: ``quality * std(weight)``.

    Parameters
    ----------
    weight : Tensor of any shape
        The weights whose spread sets the threshold (the pruner passes a layer's surviving
        weights).
    quality : float >= 0

    Returns
    -------
    float
        Weights with ``|w| < threshold`` are pruned.
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not quality >= 0:
        msg = f"quality must be a number >= 0, got {quality!r}"
        raise ValueError(msg)
    w = weight.detach().to(torch.float64).flatten()
    if w.numel() < 2:
        return 0.0
    return float(quality * w.std())


def adjust_dropout(rate: float, connections_retrain: int, connections_original: int) -> float:
    """Han et al. 2015's dropout ratio for retraining a pruned layer.

    ``D_r = D_o sqrt(C_ir / C_io)``: dropout acts on neurons and a layer's connections ``C_i``
    grow as the product of its neurons in and out, so a layer that kept a fraction of its
    connections is already regularised and gets a proportionally lower dropout.

    Parameters
    ----------
    rate : float in [0, 1)
        ``D_o``, the dropout probability the network was trained with.
    connections_retrain : int >= 0
        ``C_ir``, the layer's nonzero connections after pruning.
    connections_original : int > 0
        ``C_io``, its connections before.

    Returns
    -------
    float
        ``D_r``.
    """
    rate = _fraction(rate, "rate")
    check_steps(connections_original, "connections_original", minimum=1)
    check_steps(connections_retrain, "connections_retrain")
    if connections_retrain > connections_original:
        msg = (f"connections_retrain ({connections_retrain}) must not exceed "
               f"connections_original ({connections_original})")
        raise ValueError(msg)
    return rate * math.sqrt(connections_retrain / connections_original)


def dns_probability(iteration: int, gamma: float = 1e-4, power: float = 1.0) -> float:
    """Guo et al. 2016's probability of updating the masks at an iteration:
    ``(1 + gamma * iteration)^-power`` (1 at the start, then ever rarer)."""
    check_steps(iteration, "iteration")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
        msg = f"gamma must be a number >= 0, got {gamma!r}"
        raise ValueError(msg)
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power >= 0:
        msg = f"power must be a number >= 0, got {power!r}"
        raise ValueError(msg)
    return (1.0 + gamma * iteration) ** (-power)


def dns_thresholds(mu: float, sigma: float, crate: float,
                   band: Tuple[float, float] = DNS_BAND) -> Tuple[float, float]:
    """Guo et al. 2016's two thresholds ``(a, b) = (0.9 t, 1.1 t)``, ``t = max(mu + c sigma, 0)``.

    A kept weight with ``|w| <= a`` is cut; a cut weight with ``|w| > b`` is spliced back;
    between the two a weight keeps its state (the hysteresis that stops masks flickering).

    Parameters
    ----------
    mu, sigma : float
        Mean and standard deviation of the layer's ``|W|``.
    crate : float
        ``c``, the layer's compression rate (larger: more pruned).
    band : (float, float), default (0.9, 1.1)
    """
    t = max(mu + crate * sigma, 0.0)
    return band[0] * t, band[1] * t


def keep_largest(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest entries of ``score`` (ties broken arbitrarily)."""
    flat = score.detach().flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        mask[torch.topk(flat, min(keep, flat.numel()), sorted=False).indices] = True
    return mask.view(score.shape)
