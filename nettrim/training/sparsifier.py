"""Masks held by :mod:`torch.nn.utils.prune` while the user's own loop trains: the base of the
pruning schedules.

The convention of ``torch.ao.pruning`` and ``tfmot``: a pruner is built on a model (each
selected Linear / Conv weight gets a ``torch.nn.utils.prune`` mask, ``weight = weight_orig *
weight_mask``), and the loop calls :meth:`Sparsifier.step` once per training batch, *before*
the batch; the step applies the mask updates due at that iteration (the first call: those of
iteration 0) and counts it. After training, :meth:`Sparsifier.remove` folds the masks: the
model has plain weights with exact zeros again::

    pruner = GradualPruner(model, PolynomialDecay(0.9, end_step=3000))
    for epoch in range(epochs):
        for x, y in loader:
            pruner.step()
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    pruner.remove()

A weight outside the mask gets no gradient (``weight_orig * mask``), except under a splicing
mask (Dynamic Network Surgery), whose backward pass gives every entry the gradient of the
masked weight (:class:`SpliceMask`), so cut weights keep learning and can come back.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Dict, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..checks import check_model, check_sparsity, per_layer
from ..model.capture import prunable_layers
from .schedules import check_steps

__all__ = ["SpliceMask", "Sparsifier", "optional_int", "per_layer_fraction"]


class SpliceMask(torch_prune.CustomFromMask):
    """A ``torch.nn.utils.prune`` mask whose gradient passes through: the forward pass uses
    ``weight_orig * mask``; the backward pass gives ``weight_orig`` the gradient of the masked
    weight on every entry, masked or not (Guo et al. 2016: cut weights keep being updated so
    that they can be spliced back)."""

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        orig = getattr(module, self._tensor_name + "_orig")
        mask = getattr(module, self._tensor_name + "_mask").to(dtype=orig.dtype)
        # forward: orig * mask exactly (orig - orig.detach() is 0); d/d orig = mask + 1 - mask
        return orig * mask + (orig - orig.detach()) * (1 - mask)


def _fold(module: nn.Module) -> None:
    """Fold any ``torch.nn.utils.prune`` reparametrisation of ``module.weight``."""
    for hook in list(module._forward_pre_hooks.values()):
        if isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == "weight":
            torch_prune.remove(module, "weight")


class Sparsifier:
    """Base of the pruning schedules: masks on the selected layers and a step counter.

    Side effects: every selected layer's ``weight`` becomes a ``torch.nn.utils.prune``
    reparametrisation (``weight_orig`` a parameter, ``weight_mask`` a buffer; the parameter
    object is the same, so an optimizer built before keeps working). Zeros already in a weight
    start out pruned; a mask already on a layer is folded first (its zeros kept).

    Parameters
    ----------
    model : nn.Module
    layers, ignore : optional
        Which Linear / Conv1d / Conv2d layers (:func:`nettrim.prunable_layers`); default all.
    splice : bool, default False
        :class:`SpliceMask` masks (gradient to every entry) instead of plain ones.

    Attributes
    ----------
    model : nn.Module
    layers : dict of {name: nn.Module}
    iteration : int
        Steps taken (training batches seen).
    """

    #: The method's name in reports and checkpoints.
    method = "base"

    def __init__(self, model: nn.Module, *, layers: Any = None, ignore: Iterable[str] = (),
                 splice: bool = False):
        check_model(model)
        self.model = model
        self.layers: Dict[str, nn.Module] = prunable_layers(model, layers, ignore)
        self.iteration = 0
        self.removed = False
        kind = SpliceMask if splice else torch_prune.CustomFromMask
        attached = []
        try:
            for module in self.layers.values():
                _fold(module)
                kind.apply(module, "weight", mask=module.weight.detach() != 0)
                attached.append(module)
        except BaseException:
            for module in attached:
                _fold(module)
            raise
        self.connections = {name: int(m.weight_mask.sum()) for name, m in self.layers.items()}

    # ---- what every schedule shares --------------------------------------------------------
    def step(self) -> None:
        """Apply the mask updates due at this iteration, then count it (call before each
        training batch)."""
        self._check_live()
        with torch.no_grad():
            self.update(self.iteration)
        self.iteration += 1

    def update(self, iteration: int) -> None:
        """The schedule's mask updates at ``iteration`` (subclasses)."""
        raise NotImplementedError

    def set_mask(self, name: str, keep: torch.Tensor, *, zero_cut: bool = True) -> None:
        """Replace layer ``name``'s mask by ``keep`` (bool, the weight's shape); with
        ``zero_cut`` the cut entries of ``weight_orig`` are set to zero too (a plain prune:
        they never come back)."""
        module = self.layers[name]
        keep = keep.to(module.weight_mask.device)
        with torch.no_grad():
            module.weight_mask.copy_(keep.to(module.weight_mask.dtype))
            if zero_cut:
                module.weight_orig.masked_fill_(~keep, 0.0)

    @property
    def masks(self) -> Dict[str, torch.Tensor]:
        """``{layer: bool mask}`` (True = kept), copies."""
        self._check_live()
        return {name: m.weight_mask.detach().bool().clone() for name, m in self.layers.items()}

    def nonzeros(self) -> Dict[str, int]:
        """Nonzero entries of each layer's effective (masked) weight."""
        return {name: int((self._weight(name) != 0).sum()) for name in self.layers}

    def sparsity(self) -> Dict[str, float]:
        """Fraction of zeros of each layer's effective weight."""
        nz = self.nonzeros()
        return {name: 1.0 - nz[name] / self._weight(name).numel() for name in self.layers}

    def total_sparsity(self) -> float:
        """Fraction of zeros over all the selected weights together."""
        total = sum(self._weight(n).numel() for n in self.layers)
        return 1.0 - sum(self.nonzeros().values()) / total

    def compression(self) -> float:
        """Selected weights / nonzero selected weights (``inf`` when all are zero)."""
        total = sum(self._weight(n).numel() for n in self.layers)
        nz = sum(self.nonzeros().values())
        return total / nz if nz else float("inf")

    def state_dict(self) -> dict:
        """What resumes the schedule (with the model's own state dict, which holds
        ``weight_orig`` and ``weight_mask``): the iteration, the masks, the method's state."""
        return {"method": self.method, "iteration": self.iteration,
                "masks": self.masks, "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (same method, same layers)."""
        self._check_live()
        if state.get("method") != self.method:
            msg = f"state is of a {state.get('method')!r} pruner, not {self.method!r}"
            raise ValueError(msg)
        masks = state["masks"]
        if set(masks) != set(self.layers):
            msg = f"state masks layers {sorted(masks)}, this pruner holds {sorted(self.layers)}"
            raise ValueError(msg)
        for name, keep in masks.items():
            self.set_mask(name, keep.bool(), zero_cut=False)
        self.iteration = int(state["iteration"])
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict:
        """The method's own state for :meth:`state_dict` (subclasses)."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        """Restore :meth:`extra_state` (subclasses)."""

    def plain_copy(self) -> nn.Module:
        """A deep copy of the model with plain weights (the masks folded in the copy; this
        model keeps its masks)."""
        self._check_live()
        for module in self.layers.values():   # a non-leaf ``weight`` cannot be deep-copied
            module.weight = (module.weight_orig * module.weight_mask).detach()
        clone = copy.deepcopy(self.model)
        for module in clone.modules():
            _fold(module)
        return clone

    def remove(self) -> nn.Module:
        """Fold the masks into plain weights (exact zeros); the pruner is done. Returns the
        model."""
        if not self.removed:
            for module in self.layers.values():
                _fold(module)
            self.removed = True
        return self.model

    # ---- helpers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def undo_on_error(self) -> Iterator[None]:
        """For a subclass's checks after the masks are attached: any error folds them again,
        so a rejected pruner leaves the model as it was (its zeros aside)."""
        try:
            yield
        except BaseException:
            self.remove()
            raise

    def _weight(self, name: str) -> torch.Tensor:
        module = self.layers[name]
        if self.removed:
            return module.weight.detach()
        return (module.weight_orig * module.weight_mask).detach()

    def _check_live(self) -> None:
        if self.removed:
            msg = f"this {self.method} pruner's masks were removed (remove() was called)"
            raise RuntimeError(msg)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.layers)} layers, iteration {self.iteration}, "
                f"sparsity {self.total_sparsity():.4f})")


def per_layer_fraction(value: Any, names: Iterable[str], what: str) -> Dict[str, float]:
    """``{layer: fraction in [0, 1)}`` from one number or a dict naming every layer."""
    names = list(names)
    values = per_layer(value, names, what)
    missing = [n for n in names if n not in values]
    if missing:
        msg = f"{what} dict misses layers {missing}; give every pruned layer a value"
        raise ValueError(msg)
    return {n: check_sparsity(values[n], f"{what}[{n!r}]") for n in names}


def optional_int(value: Optional[int], name: str, minimum: int = 0) -> Optional[int]:
    """None, or ``value`` checked as an int >= ``minimum``."""
    return None if value is None else check_steps(value, name, minimum=minimum)
