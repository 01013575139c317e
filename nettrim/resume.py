"""A per-layer run state for :func:`nettrim.prune`: an interrupted run continues where it stopped.

After each finished layer the driver writes, atomically (a temporary file renamed into place,
:func:`nettrim.io.files.atomic_write`), the pruned copy's weights, the report rows so far and a
fingerprint of the run's options, model and inputs. A run given the same file finds the layers already done,
restores their weights and rows, and solves only the layers after them: in cascade mode the
next layer's inputs come from the restored pruned layers, as they would have.

The file is a ``torch.save`` of plain tensors, strings and numbers, read back with
``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from .io.files import atomic_write, read_state_file
from .results import LayerReport

__all__ = ["RESUME_VERSION", "ResumeState", "load_state", "run_fingerprint", "save_state"]

RESUME_VERSION = 1


@dataclasses.dataclass
class ResumeState:
    """What a run had finished: ``done`` layer names in order, their ``rows``, the skipped
    layers found so far, and the pruned copy's ``state`` (its state dict)."""

    fingerprint: str
    done: list
    rows: list
    skipped: dict
    state: dict


def run_fingerprint(options: Mapping[str, Any], model: nn.Module, inputs: Any) -> str:
    """SHA-256 of what decides a run's result: the options (their ``repr``, keys sorted), the
    model's state dict and, when ``inputs`` is a tensor, its bytes (other inputs, e.g. a
    DataLoader, are the caller's to keep the same)."""
    digest = hashlib.sha256(repr(sorted((str(k), repr(v)) for k, v in options.items()))
                            .encode("utf-8"))
    tensors = list(model.state_dict().items())
    if isinstance(inputs, torch.Tensor):
        tensors.append(("inputs", inputs))
    for name, tensor in tensors:
        digest.update(name.encode("utf-8") + str(tuple(tensor.shape)).encode("ascii"))
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_state(path: str | os.PathLike, fingerprint: str, rows: list, skipped: Mapping,
               model: nn.Module) -> pathlib.Path:
    """Write the state after a finished layer (atomically: the old state stays whole until the
    new one is in place)."""
    doc = {"version": RESUME_VERSION, "fingerprint": fingerprint,
           "done": [r.name for r in rows],
           "rows": [{k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in dataclasses.asdict(r).items()} for r in rows],
           "skipped": {str(k): str(v) for k, v in skipped.items()},
           "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    return atomic_write(path, lambda tmp: torch.save(doc, tmp))


def load_state(path: str | os.PathLike, fingerprint: str) -> Optional[ResumeState]:
    """The state in ``path`` (None when there is no file). Raises ValueError naming ``path``
    when it belongs to a run with other options, or is not a state file."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    doc = read_state_file(path, "a nettrim run state (resume=)",
                          "version", RESUME_VERSION)
    if doc["fingerprint"] != fingerprint:
        msg = (f"resume: {path} holds the state of a run with another model, other data or "
               "other options; delete it to start afresh, or run with those it was written for")
        raise ValueError(msg)
    rows = [LayerReport(**{k: (tuple(v) if k == "shape" else v) for k, v in r.items()})
            for r in doc["rows"]]
    return ResumeState(doc["fingerprint"], list(doc["done"]), rows, dict(doc["skipped"]),
                       dict(doc["state"]))
