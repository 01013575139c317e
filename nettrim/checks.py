"""Argument checks shared by the public entry points: one home for each.

Each check raises with a message that names the argument, what was expected and what came
(STYLE.md 4); the callers validate at their public entry points only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["as_matrix", "check_fraction", "check_model", "check_sparsity", "check_xy",
           "per_layer"]


def check_model(model: Any) -> None:
    """TypeError unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        msg = f"model must be a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)


def check_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    """A fraction of weights (or units) to zero: a number in [0, 1), not a bool; required."""
    if sparsity is None:
        msg = f"{name} is required: a fraction of weights to zero in [0, 1)"
        raise TypeError(msg)
    if isinstance(sparsity, bool):
        msg = f"{name} must be a number in [0, 1), got {sparsity!r}"
        raise TypeError(msg)
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        msg = f"{name} must be a number in [0, 1), got {sparsity!r}"
        raise TypeError(msg) from None
    if not 0.0 <= value < 1.0:
        msg = f"{name} must be in [0, 1), got {value}"
        raise ValueError(msg)
    return value


def check_fraction(value: Any, name: str, *, upper_open: bool) -> float:
    """A number in [0, 1) (``upper_open``) or a finite number >= 0 (a relative epsilon)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a number, got {value!r}"
        raise TypeError(msg) from None
    ok = 0.0 <= v < 1.0 if upper_open else 0.0 <= v and math.isfinite(v)
    if not ok:
        msg = f"{name} must be in [0, 1), got {v}" if upper_open else f"{name} must be >= 0, got {v}"
        raise ValueError(msg)
    return v


def as_matrix(a: Any, name: str) -> torch.Tensor:
    """``a`` (a numpy array or a tensor) as a detached 2-D tensor; float32 and float64 are kept,
    other dtypes become float64."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        msg = f"{name} must be a numpy array or a torch tensor, got {type(a).__name__}"
        raise TypeError(msg)
    if a.ndim != 2:
        msg = f"{name} must be 2-D, got shape {tuple(a.shape)}"
        raise ValueError(msg)
    return a.detach() if a.dtype in (torch.float32, torch.float64) else a.detach().double()


def check_xy(x: object, y: object) -> None:
    """Validate a (samples, labels) pair for classification."""
    if not isinstance(x, torch.Tensor):
        msg = f"x: expected a torch.Tensor of shape (n, ...), got {type(x).__name__}"
        raise TypeError(msg)
    if not isinstance(y, torch.Tensor):
        msg = f"y: expected an int64 torch.Tensor of shape (n,), got {type(y).__name__}"
        raise TypeError(msg)
    if y.ndim != 1 or y.dtype != torch.int64:
        msg = f"y: expected an int64 tensor of shape (n,), got {y.dtype} of shape {tuple(y.shape)}"
        raise ValueError(msg)
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        msg = f"x: expected {y.shape[0]} samples (as many as y), got shape {tuple(x.shape)}"
        raise ValueError(msg)


def per_layer(value: Any, names: Any, what: str) -> dict:
    """``{layer: value}`` from one value for every layer, or a dict naming only known layers."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            msg = f"{what} names unknown layers {unknown}; prunable layers are {list(names)}"
            raise ValueError(msg)
        return dict(value)
    return {name: value for name in names}
