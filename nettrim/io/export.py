"""``torch.export`` programs (``.pt2``): export a module, and rebuild a chain-shaped program as
an ``nn.Sequential`` whose layers can be pruned (a program is a graph, not a module whose
layers can be rewritten). :mod:`nettrim.io.checkpoint` reads and writes them as the ``export``
format.
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional

import torch
from torch import nn

from .files import CheckpointError

__all__ = ["export_model", "save_program", "sequential_from_program"]


def export_model(model: nn.Module, example_input: torch.Tensor, *, dynamic_batch: bool = False):
    """``torch.export.export(model, (example_input,))`` in eval mode (dim 0 dynamic if asked)."""
    was_training = model.training
    model.eval()
    try:
        shapes = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
        return torch.export.export(model, (example_input,), dynamic_shapes=shapes)
    finally:
        model.train(was_training)


def save_program(program, temp: str) -> None:
    """``torch.export.save`` to ``temp`` (it wants a name ending in .pt2: staged beside it)."""
    staged = temp + ".pt2"
    try:
        torch.export.save(program, staged)
        os.replace(staged, temp)
    finally:
        pathlib.Path(staged).unlink(missing_ok=True)


class _View(nn.Module):
    """``x.reshape(x.shape[0], *shape)`` (a batch-preserving view from an exported graph)."""

    def __init__(self, shape: tuple):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self):
        return f"shape={self.shape}"


def sequential_from_program(program, path: str | os.PathLike = "<program>") -> nn.Sequential:
    """Rebuild a chain-shaped exported program as an ``nn.Sequential`` with the same weights.

    Supported ATen operations, each applied to the previous one's output: ``flatten``, batch-
    preserving ``view``/``reshape``, ``linear``, ``conv2d``, ``relu``, ``max_pool2d``,
    ``avg_pool2d``, ``dropout`` (eval: identity). Anything else (branches, residual additions,
    other operators) raises :class:`CheckpointError` asking for ``--arch``.
    """
    aten = torch.ops.aten
    params = {**program.state_dict, **getattr(program, "constants", {})}
    sig = program.graph_signature
    name_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
               **getattr(sig, "inputs_to_lifted_tensor_constants", {})}

    def tensor(node):
        if node is None:
            return None
        key = name_of.get(getattr(node, "name", None))
        if key is None or key not in params:
            msg = (f"checkpoint {path}: operator input {node} is not a stored weight; "
                   "pass --arch to load the program's weights into your model instead")
            raise CheckpointError(msg)
        return params[key].detach().clone()

    def unsupported(node, why=""):
        msg = (f"checkpoint {path}: cannot rebuild the exported graph as a chain of layers "
               f"(at {node.name}: {node.target}{why}); pass --arch module:callable to load the "
               "program's weights into your model")
        return CheckpointError(msg)

    user_input = sig.user_inputs[0]
    current = next(n for n in program.graph.nodes if n.name == user_input)
    layers: list[nn.Module] = []
    for node in program.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op != "call_function":
            raise unsupported(node)
        if not node.args or node.args[0] is not current:
            raise unsupported(node, ", not a chain")
        args = list(node.args) + [None] * 8
        target = node.target
        if target in (aten.linear.default,):
            weight, bias = tensor(args[1]), tensor(args[2])
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            _assign(layer, weight, bias)
        elif target in (aten.conv2d.default,):
            weight, bias = tensor(args[1]), tensor(args[2])
            stride, padding, dilation = (args[3] or 1), (args[4] or 0), (args[5] or 1)
            groups = args[6] or 1
            if isinstance(padding, str):
                raise unsupported(node, f", padding={padding!r}")
            layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                              stride=stride, padding=padding, dilation=dilation, groups=groups,
                              bias=bias is not None)
            _assign(layer, weight, bias)
        elif target in (aten.relu.default, aten.relu_.default):
            layer = nn.ReLU()
        elif target in (aten.flatten.using_ints,):
            start = node.args[1] if len(node.args) > 1 else 0
            end = node.args[2] if len(node.args) > 2 else -1
            if start != 1 or end != -1:
                raise unsupported(node, f", flatten({start}, {end})")
            layer = nn.Flatten()
        elif target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            out_shape = node.meta["val"].shape
            in_shape = current.meta["val"].shape
            if len(out_shape) < 1 or str(out_shape[0]) != str(in_shape[0]):
                raise unsupported(node, ", a view that changes the batch dimension")
            layer = _View(tuple(int(s) for s in out_shape[1:]))
        elif target in (aten.max_pool2d.default,):
            layer = nn.MaxPool2d(args[1], stride=args[2] or args[1], padding=args[3] or 0,
                                 dilation=args[4] or 1, ceil_mode=bool(args[5]))
        elif target in (aten.avg_pool2d.default,):
            layer = nn.AvgPool2d(args[1], stride=args[2] or args[1], padding=args[3] or 0,
                                 ceil_mode=bool(args[4]),
                                 count_include_pad=True if args[5] is None else bool(args[5]))
        elif target in (aten.dropout.default, aten.clone.default, aten.alias.default):
            layer = nn.Identity()
        else:
            raise unsupported(node)
        if not isinstance(layer, nn.Identity):
            layers.append(layer)
        current = node
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    if not (isinstance(outputs, (tuple, list)) and len(outputs) == 1 and outputs[0] is current):
        msg = (f"checkpoint {path}: the exported program does not return its last operation's "
               "result alone; pass --arch module:callable")
        raise CheckpointError(msg)
    return nn.Sequential(*layers)


def _assign(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    with torch.no_grad():
        layer.weight = nn.Parameter(weight)
        if bias is not None:
            layer.bias = nn.Parameter(bias)
