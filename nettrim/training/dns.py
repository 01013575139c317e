"""Guo et al. 2016's Dynamic Network Surgery ("Dynamic Network Surgery for Efficient DNNs"), as
a schedule for the user's loop: :class:`DNSPruner`.

Pruning and splicing: the masks are recomputed during training, with probability
``(1 + gamma t)^-power`` at iteration ``t``; a kept weight with ``|w| <= a`` is cut and a cut
weight with ``|w| > b`` is spliced back, ``(a, b) = (0.9 t_l, 1.1 t_l)`` around the layer's
``t_l = max(mu + c sigma, 0)`` (``mu``, ``sigma``: mean and std of the layer's ``|W|``,
measured once, at the first update, as the authors' Caffe layers do). The masks are
:class:`.sparsifier.SpliceMask`: the forward pass uses the masked weights, and every weight,
cut or not, is updated with the gradient of the masked one, so a cut weight that grows
important comes back. The authors' LeNet settings are the defaults: ``gamma = 1e-4``,
``power = 1``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from ..checks import per_layer
from .schedules import DNS_BAND, dns_probability, dns_thresholds, keep_largest
from .sparsifier import Sparsifier, optional_int, per_layer_fraction

__all__ = ["DNSPruner", "DEFAULT_GAMMA", "DEFAULT_POWER"]

#: The authors' LeNet settings (their Caffe ``cinner_product_param``).
DEFAULT_GAMMA = 1e-4
DEFAULT_POWER = 1.0


class DNSPruner(Sparsifier):
    """Prune and splice (Dynamic Network Surgery).

    Parameters
    ----------
    model : nn.Module
    sparsity : float in [0, 1) or dict of {layer: float}, optional
        Target fraction of zeros per layer: every ``refresh`` iterations the layer's ``c`` is
        re-solved so that ``t_l`` is that quantile of its current ``|W|`` (the band then moves
        a few weights either way), and when the updates stop (``iter_stop``) the masks are cut
        to the target count exactly (the largest ``|W|``).
    crate : float or dict of {layer: float}, optional
        The paper's ``c`` per layer instead of ``sparsity`` (thresholds fixed from the first
        update; the sparsity is what it comes to).
    gamma, power : float, default 1e-4 and 1
        Update probability ``(1 + gamma t)^-power``.
    iter_stop : int, optional
        No mask update from this iteration on (the authors' ``iter_stop``); default never.
    band : (float, float), default (0.9, 1.1)
        ``(a, b)`` as multiples of ``t_l``.
    seed : int, default 0
        Seed of the update draws (one per layer and iteration, as each Caffe layer draws).
    refresh : int, default 100
        With ``sparsity``: iterations between two solves of ``c`` (a quantile of ``|W|`` is
        the costly part: re-solved at every update it made a LeNet-300-100 step 2.6x slower,
        5.4 ms against a 3.3 ms training step).
    layers, ignore : optional

    Attributes
    ----------
    moments : dict of {layer: (mu, sigma)}
    crates : dict of {layer: float}
        The ``c`` of the last update.
    """

    method = "dns"

    def __init__(self, model: nn.Module, sparsity: Any = None, *, crate: Any = None,
                 gamma: float = DEFAULT_GAMMA, power: float = DEFAULT_POWER,
                 iter_stop: Optional[int] = None, band: Tuple[float, float] = DNS_BAND,
                 seed: int = 0, refresh: int = 100, layers: Any = None,
                 ignore: Iterable[str] = ()):
        if (sparsity is None) == (crate is None):
            msg = "give exactly one of sparsity (a fraction of zeros) and crate (the paper's c)"
            raise ValueError(msg)
        dns_probability(0, gamma, power)   # checks gamma and power
        self.iter_stop = optional_int(iter_stop, "iter_stop")
        self.refresh = optional_int(refresh, "refresh", minimum=1)
        if (not isinstance(band, (tuple, list)) or len(band) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in band)
                or not 0 < band[0] <= band[1]):
            msg = f"band must be two numbers 0 < a <= b (multiples of t), got {band!r}"
            raise ValueError(msg)
        super().__init__(model, layers=layers, ignore=ignore, splice=True)
        names = list(self.layers)
        with self.undo_on_error():
            self.targets = None if sparsity is None else per_layer_fraction(
                sparsity, names, "sparsity")
            self.crate = None if crate is None else _crates(crate, names)
        self.gamma, self.power = float(gamma), float(power)
        self.band = (float(band[0]), float(band[1]))
        self.generator = torch.Generator().manual_seed(seed)
        self.moments: Dict[str, Tuple[float, float]] = {}
        self.crates: Dict[str, float] = {}
        self.solved: Dict[str, Tuple[int, float]] = {}   # layer -> (iteration, t) of the last solve
        self.updates = 0
        self.final_cut = False

    def update(self, iteration: int) -> None:
        if self.iter_stop is not None and iteration >= self.iter_stop:
            if self.targets is not None and not self.final_cut:
                for name in self.layers:
                    w = self.layers[name].weight_orig.detach()
                    keep = w.numel() - int(math.floor(self.targets[name] * w.numel() + 0.5))
                    self.set_mask(name, keep_largest(w.abs(), keep), zero_cut=False)
                self.final_cut = True
            return
        probability = dns_probability(iteration, self.gamma, self.power)
        for name in self.layers:
            draw = float(torch.rand((), generator=self.generator))
            if not probability > draw:
                continue
            module = self.layers[name]
            magnitude = module.weight_orig.detach().abs()
            mask = module.weight_mask.bool()
            if name not in self.moments:
                kept = magnitude[mask].to(torch.float64)
                self.moments[name] = (float(kept.mean()), float(kept.std(unbiased=False))) \
                    if kept.numel() else (0.0, 0.0)
            mu, sigma = self.moments[name]
            if self.targets is not None:
                last = self.solved.get(name)
                if last is None or iteration - last[0] >= self.refresh:
                    k = int(math.floor(self.targets[name] * magnitude.numel() + 0.5))
                    t = float(magnitude.flatten().kthvalue(k).values) if k > 0 else 0.0
                    self.solved[name] = (iteration, t)
                    self.crates[name] = (t - mu) / sigma if sigma > 0 else 0.0
                t = self.solved[name][1]
                lo, hi = self.band[0] * t, self.band[1] * t
            else:
                self.crates[name] = self.crate[name]
                lo, hi = dns_thresholds(mu, sigma, self.crate[name], self.band)
            keep = (mask & (magnitude > lo)) | (~mask & (magnitude > hi))
            self.set_mask(name, keep, zero_cut=False)
        self.updates += 1

    def extra_state(self) -> dict:
        return {"moments": dict(self.moments), "crates": dict(self.crates),
                "solved": dict(self.solved),
                "generator": self.generator.get_state(), "updates": self.updates,
                "final_cut": self.final_cut}

    def load_extra_state(self, extra: dict) -> None:
        self.moments = {k: tuple(v) for k, v in extra.get("moments", {}).items()}
        self.crates = dict(extra.get("crates", {}))
        self.solved = {k: tuple(v) for k, v in extra.get("solved", {}).items()}
        if "generator" in extra:
            self.generator.set_state(extra["generator"])
        self.updates = int(extra.get("updates", 0))
        self.final_cut = bool(extra.get("final_cut", False))


def _crates(crate: Any, names: list) -> Dict[str, float]:
    c = per_layer(crate, names, "crate")
    bad = {n: c.get(n) for n in names if isinstance(c.get(n), bool)
           or not isinstance(c.get(n), (int, float)) or not math.isfinite(c.get(n))}
    if bad:
        msg = f"crate must be a finite number for every layer, got {bad}"
        raise ValueError(msg)
    return {n: float(c[n]) for n in names}
