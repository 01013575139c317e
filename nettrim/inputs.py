"""Calibration inputs: what one batch feeds to ``model.forward``, how a tensor is batched, and
where the batches go. One home for these conventions: capture, the output discrepancy, the
baselines' scores and the training loops all read inputs the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_BATCH", "batches", "forward_args", "model_device", "model_inputs",
           "reiterable", "to_device"]

#: Rows per forward pass when ``inputs`` is a single tensor.
DEFAULT_BATCH = 1024


def model_inputs(batch: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` that one calibration batch feeds to ``model.forward``.

    The label convention: a tensor ``x`` is fed as ``model(x)``; a dict as ``model(**batch)``;
    a tuple or list is ``(inputs, labels...)`` (a DataLoader's ``(x, y)``) and only its first
    item is fed: a tensor as ``model(x)``, a tuple/list as ``model(*x)``, a dict as
    ``model(**x)``. So a model with ``forward(x, mask)`` takes batches ``((x, mask), y)`` or
    ``((x, mask),)``, or dicts ``{"x": x, "mask": mask}``.
    """
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            msg = "a batch of inputs is an empty tuple; expected (inputs, labels...)"
            raise ValueError(msg)
        batch = batch[0]
        if isinstance(batch, Mapping):
            return (), dict(batch)
        if isinstance(batch, (tuple, list)):
            return tuple(batch), {}
    if not isinstance(batch, torch.Tensor):
        msg = ("each batch of inputs must be a tensor, a dict of keyword arguments or an "
               f"(inputs, labels) pair, got {type(batch).__name__}")
        raise TypeError(msg)
    return (batch,), {}


def batches(inputs: Any, rows: int = DEFAULT_BATCH) -> Iterator[Any]:
    """The batches of ``inputs`` as they come: a tensor split into blocks of ``rows`` rows, a
    dict as one batch (keyword arguments), any other iterable (a list, a DataLoader) item by
    item."""
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 0:
            msg = "inputs must have a batch dimension, got a 0-d tensor"
            raise ValueError(msg)
        yield from inputs.split(rows)
        return
    if isinstance(inputs, Mapping):   # one batch of keyword arguments
        yield inputs
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        msg = ("inputs must be a tensor, a dict of keyword arguments or an iterable of batches "
               f"(tensors, dicts or (x, y) pairs, e.g. a DataLoader), got {type(inputs).__name__}")
        raise TypeError(msg)
    yield from inputs


def forward_args(inputs: Any) -> Iterator[tuple[tuple, dict]]:
    """``(args, kwargs)`` of every batch of ``inputs`` (:func:`batches`, :func:`model_inputs`)."""
    for batch in batches(inputs):
        yield model_inputs(batch)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors of ``obj`` (nested in tuples, lists and dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def reiterable(inputs: Any) -> bool:
    """Whether ``inputs`` can be iterated again (a tensor, a list, a DataLoader): False for a
    one-shot iterator, which a first pass uses up."""
    if isinstance(inputs, torch.Tensor):
        return True
    try:
        return iter(inputs) is not inputs
    except TypeError:
        return False


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
