"""Module kinds known by what they compute rather than by class: transformers' ``Conv1D``, a
Linear whose weight is stored transposed, recognised without importing transformers."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TransposedLinear", "weight_matrix"]


class _ByName(type):
    """``isinstance(m, TransposedLinear)`` holds for transformers' ``Conv1D`` without importing
    transformers (a model that holds one has imported it already)."""

    def __instancecheck__(cls, obj) -> bool:
        return cls.__subclasscheck__(type(obj))

    def __subclasscheck__(cls, sub) -> bool:
        return sub is cls or any(
            k.__name__ == "Conv1D" and k.__module__.split(".")[0] == "transformers"
            for k in getattr(sub, "__mro__", ()))


class TransposedLinear(metaclass=_ByName):
    """transformers' ``Conv1D`` (GPT-2's projections): ``x @ weight + bias``, a Linear whose
    weight is stored transposed, shape (in, out). Pruned as the Linear it is
    (:func:`weight_matrix` gives the (out, in) matrix; the write-back transposes it again)."""


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a prunable layer as an (out, in) matrix (a view; a convolution's
    flattened to ``(out, in * kernel)``, a :class:`TransposedLinear`'s transposed back)."""
    weight = module.weight.detach()
    return weight.T if isinstance(module, TransposedLinear) else weight.flatten(1)
