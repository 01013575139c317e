"""Per-layer reports: what a model's prunable layers hold and how far a pruned model drifts
from its original. The rows render with :mod:`nettrim.tables` (text, JSON, CSV).

Rows from :func:`layer_rows` have the keys ``name, kind, shape, nonzeros, total, sparsity`` and,
after :func:`add_layer_errors`, ``relative_error``. ``sparsity`` always counts the weights only
(biases excluded), as the prune report does.

The per-layer relative error of a pruned model against its original is measured on the same
inputs, each network running on its own activations (so errors accumulate through the layers,
as they do in use): ``||act(z_l(pruned)) - act(z_l(original))||_F / ||act(z_l(original))||_F``,
with ``act`` the layer's activation (ReLU or none) as
:func:`nettrim.model.capture.detect_activations` finds it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .model.capture import prunable_layers
from .model.graph import analyze
from .results import model_logits

__all__ = ["add_layer_errors", "layer_errors", "layer_rows"]


# ---- measuring -----------------------------------------------------------------------------------
def layer_rows(model: nn.Module, layers: Any = None, ignore: Sequence[str] = ()) -> list[dict]:
    """One row per prunable layer of ``model``: shape, weight nonzeros, total, sparsity.

    Parameters
    ----------
    model : nn.Module
    layers, ignore
        Selection, as :func:`nettrim.prunable_layers` takes it.

    Returns
    -------
    list of dict
        Keys ``name, kind, shape, nonzeros, total, sparsity, bias_nonzeros`` (``bias_nonzeros``
        is None for a layer without bias).
    """
    rows = []
    for name, module in prunable_layers(model, layers, ignore).items():
        weight = module.weight.detach()
        nonzeros = int((weight != 0).sum())
        bias = getattr(module, "bias", None)
        rows.append({
            "name": name,
            "kind": "conv2d" if isinstance(module, nn.Conv2d) else "linear",
            "shape": list(weight.shape),
            "nonzeros": nonzeros,
            "total": weight.numel(),
            "sparsity": 1.0 - nonzeros / weight.numel(),
            "bias_nonzeros": None if bias is None else int((bias.detach() != 0).sum()),
        })
    return rows


@contextlib.contextmanager
def _output_hooks(modules: Mapping[str, nn.Module], sink: dict) -> Iterator[None]:
    """Record each module's output under its name; hooks removed on exit."""
    handles = []

    def hook_for(name):
        def hook(module, args, output):
            sink[name] = output.detach()
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_errors(reference: nn.Module, model: nn.Module, x: torch.Tensor, *,
                 layers: Any = None, ignore: Sequence[str] = (),
                 batch_size: int = 1024) -> tuple[dict, float]:
    """Relative error of each layer's (activated) output, and of the model output.

    Parameters
    ----------
    reference : nn.Module
        The original model.
    model : nn.Module
        The pruned one, with the same layer names.
    x : Tensor of shape (n, ...)
        Inputs; both models run on them in eval mode (their modes are restored).
    layers, ignore
        Which layers (default: every Linear / Conv2d of ``reference``).
    batch_size : int, default 1024

    Returns
    -------
    errors : dict
        ``{layer: ||a_l(model) - a_l(reference)||_F / ||a_l(reference)||_F}``.
    output_error : float
        The same ratio for the final outputs (their logits: a ``ModelOutput``'s ``.logits``,
        see :func:`nettrim.results.model_logits`).

    Raises
    ------
    ValueError
        The two models do not have the same prunable layers.
    """
    ref_layers = prunable_layers(reference, layers, ignore)
    names = list(ref_layers)
    other = dict(model.named_modules())
    missing = [n for n in names if n not in other or type(other[n]) is not type(ref_layers[n])]
    if missing:
        msg = f"model: the pruned model lacks the layers {missing} of the reference"
        raise ValueError(msg)
    # the layer's own output: relu only where the ReLU follows it directly
    activations = {n: p.activation for n, p in analyze(reference, warn=False).patterns.items()
                   if not (p.norm or p.offset)}
    num = dict.fromkeys(names, 0.0)
    den = dict.fromkeys(names, 0.0)
    out_num = out_den = 0.0
    device = next(reference.parameters()).device
    modes = (reference.training, model.training)
    reference.eval()
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            got_ref: dict = {}
            got: dict = {}
            with _output_hooks(ref_layers, got_ref):
                y_ref = reference(xb)
            with _output_hooks({n: other[n] for n in names}, got):
                y = model(xb)
            for name in names:
                a_ref, a = got_ref[name], got[name]
                if activations.get(name) == "relu":
                    a_ref, a = torch.relu(a_ref), torch.relu(a)
                num[name] += float(torch.linalg.vector_norm(a - a_ref)) ** 2
                den[name] += float(torch.linalg.vector_norm(a_ref)) ** 2
            y, y_ref = model_logits(y), model_logits(y_ref)   # a ModelOutput: its .logits
            out_num += float(torch.linalg.vector_norm(y - y_ref)) ** 2
            out_den += float(torch.linalg.vector_norm(y_ref)) ** 2
    finally:
        reference.train(modes[0])
        model.train(modes[1])
    errors = {n: (math.sqrt(num[n] / den[n]) if den[n] > 0 else 0.0) for n in names}
    return errors, (math.sqrt(out_num / out_den) if out_den > 0 else 0.0)


def add_layer_errors(rows: list[dict], errors: Mapping[str, float]) -> list[dict]:
    """Set ``relative_error`` in each row from ``errors`` (NaN where a layer is absent)."""
    for row in rows:
        row["relative_error"] = float(errors.get(row["name"], float("nan")))
    return rows
