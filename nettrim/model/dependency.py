"""Structured surgery on any graph, through Torch-Pruning's ``DependencyGraph``.

Traced once on an example batch, the graph says which layers are coupled to a layer's output
channels: a residual add ties the channels of both branches together, a concatenation maps a
producer's channels to a slice of the consumer's inputs, and every coupled layer (BatchNorm
included) shrinks with them. :func:`nettrim.model.surgery.remove_units` and
:func:`nettrim.model.surgery.compact` use it for every model that is not a plain
``nn.Sequential`` chain; each removal :func:`compact_graph` makes is checked on the example
batch and undone if the output moved by more than :data:`ROUNDING_TOL` times its largest entry.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from .capture import SUPPORTED
from .kinds import TransposedLinear

__all__ = ["ROUNDING_TOL", "compact_graph", "eval_output", "keep_indices", "max_change",
           "remove_units_graph"]

#: Names of autograd nodes (``type(grad_fn).__name__`` without ``Backward<n>``) of the operations
#: that act on each channel separately and map a zero channel to zero: a channel's value through
#: them depends on that channel alone, and an all-zero channel stays all zero.
_CHANNELWISE_OPS = frozenset({
    "Relu", "Hardtanh", "LeakyRelu", "Gelu", "Silu", "Tanh", "Elu", "Hardswish", "Add", "Sub",
    "Mul", "Mean", "Sum", "MaxPool2DWithIndices", "AvgPool2D", "AdaptiveAvgPool2D",
    "AdaptiveMaxPool2D", "View", "Reshape", "UnsafeView", "Clone", "Permute", "Transpose", "T",
    "Squeeze", "Unsqueeze", "Flatten", "Cat", "Split", "SplitWithSizes", "Slice", "Select"})
#: Relative size of an output change that :func:`compact` accepts as rounding (removing exact
#: zeros from sums changes the order of the remaining terms).
ROUNDING_TOL = 1e-4


def keep_indices(keep: Any, n_out: int, layer_name: str) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n_out):
        msg = f"keep: indices must be in [0, {n_out}), got {keep.tolist()}"
        raise ValueError(msg)
    keep = torch.unique(keep)
    if keep.numel() == 0:
        msg = f"keep: at least one unit of {layer_name!r} must remain"
        raise ValueError(msg)
    return keep


def _dependency_graph(model: nn.Module, example_input: Any):
    """Torch-Pruning's DependencyGraph of ``model`` traced on ``example_input`` (eval mode)."""
    import torch_pruning as tp  # noqa: PLC0415 - imported where needed (import cost)

    if not isinstance(example_input, torch.Tensor):
        msg = (f"example_input: the graph of the {type(model).__name__} is traced on an example "
               f"batch (a tensor); got {type(example_input).__name__}")
        raise TypeError(msg)
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                         verbose=False)
    except Exception as err:  # noqa: BLE001 - any tracing failure gets one clear message
        msg = (f"could not trace {type(model).__name__} on example_input of shape "
               f"{tuple(example_input.shape)} to find its coupled layers: "
               f"{type(err).__name__}: {err}")
        raise TypeError(msg) from err
    finally:
        model.train(was)


def _out_group(graph, module: nn.Module, idxs):
    """The group of every layer coupled to output channels ``idxs`` of ``module``."""
    handler = graph.get_pruner_of_module(module).prune_out_channels
    return graph.get_pruning_group(module, handler, [int(i) for i in idxs])


def _name_of(graph, module: nn.Module) -> str:
    """The module's name in the traced model."""
    return next((n for n, m in graph.model.named_modules() if m is module), type(module).__name__)


def _reaches_output(graph, group) -> Optional[str]:
    """Why the group's channels are part of the model's output (None if they are not)."""
    for dep, _ in group:
        node = dep.target
        if not node.outputs and graph.is_out_channel_pruning_fn(dep.handler):
            return f"they are outputs of {_name_of(graph, node.module)!r}"
    return None


def remove_units_graph(model, layer_name, keep, example_input):
    module = dict(model.named_modules()).get(layer_name)
    if not isinstance(module, SUPPORTED) or isinstance(module, TransposedLinear):
        msg = f"layer_name: {layer_name!r} is not a Linear/Conv2d of the model"
        raise ValueError(msg)
    if example_input is None:
        msg = (f"example_input: remove_units traces the graph of this {type(model).__name__} (not "
               "a plain nn.Sequential chain) on an example batch: pass example_input=x")
        raise ValueError(msg)
    n_out = module.weight.shape[0]
    keep = keep_indices(keep, n_out, layer_name)
    drop = sorted(set(range(n_out)) - set(keep.tolist()))
    graph = _dependency_graph(model, example_input)
    if not drop:
        return model
    group = _out_group(graph, module, drop)
    reason = _reaches_output(graph, group)
    if reason:
        msg = f"layer {layer_name!r}: removing its outputs changes the model output ({reason})"
        raise ValueError(msg)
    group.prune()
    return model


def _op_name(node) -> str:
    name = type(node.grad_fn).__name__ if node.grad_fn is not None else ""
    return name.split("Backward")[0]


def _dead_channels(graph, group) -> tuple[list, Optional[str]]:
    """Channels of a group (indices of its root layer's outputs) that can go without changing
    the model's function, or ``([], why not)``.

    A channel can go when its value is zero wherever it flows (every producing layer has zero
    weights and bias on it, and the operations on the way map zero to zero: ReLU, ReLU6, the add
    of a residual, pooling, concatenation; a BatchNorm only when its shift on that channel is 0)
    or when nothing uses it (every consuming Linear / Conv2d has zero weights on it). Groups
    that pass through anything else (LayerNorm, attention, unknown operations) are left alone.
    The caller checks first that the channels do not reach the model's output.
    """
    from torch_pruning import ops  # noqa: PLC0415

    root = group[0].dep.target.module
    n = graph.get_out_channels(root)
    zero_in = torch.ones(n, dtype=torch.bool)
    unused = torch.ones(n, dtype=torch.bool)
    for item in group:
        dep, idxs = item.dep, torch.as_tensor(item.idxs, dtype=torch.long)
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        node, module = dep.target, dep.target.module
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        if node.type in (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR):
            if getattr(module, "groups", 1) != 1:
                return [], f"grouped convolution {_name_of(graph, module)!r}"
            W = module.weight.detach()
            if is_out:
                rows = W.flatten(1)[idxs]
                live = (rows != 0).any(1)
                if module.bias is not None:
                    live |= module.bias.detach()[idxs] != 0
                zero_in[roots[live]] = False
            else:
                cols = W[:, idxs] != 0
                cols = cols.flatten(2) if W.ndim > 2 else cols[..., None]
                unused[roots[cols.any(2).any(0)]] = False
        elif node.type == ops.OPTYPE.DEPTHWISE_CONV:
            if module.bias is not None:
                zero_in[roots[module.bias.detach()[idxs] != 0]] = False
        elif node.type == ops.OPTYPE.BN:
            shift = module.bias.detach() if module.bias is not None else \
                torch.zeros(module.num_features)
            if module.running_mean is not None:
                scale = 1.0 if module.weight is None else module.weight.detach()
                shift = shift - scale * module.running_mean / torch.sqrt(
                    module.running_var + module.eps)
            zero_in[roots[shift[idxs] != 0]] = False
        elif node.type in (ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.RESHAPE,
                           ops.OPTYPE.SLICE, ops.OPTYPE.UNBIND):
            continue
        elif node.type == ops.OPTYPE.ELEMENTWISE and _op_name(node) in _CHANNELWISE_OPS:
            continue
        else:
            what = _name_of(graph, module) if isinstance(module, nn.Module) else node.name
            return [], f"its channels pass through {what!r} ({type(module).__name__})"
    dead = torch.nonzero(zero_in | unused).flatten().tolist()
    if len(dead) == n:  # keep one channel so that the shapes stay valid (it carries zeros)
        dead = dead[1:]
    return dead, None


def max_change(a: Any, b: Any) -> float:
    """Largest absolute entry difference between two outputs (tensors or nested tuples)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return math.inf
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((max_change(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys():
        return max((max_change(a[k], b[k]) for k in a), default=0.0)
    return math.inf


def _magnitude(out: Any) -> float:
    if isinstance(out, torch.Tensor):
        return float(out.abs().max()) if out.numel() else 0.0
    values = out.values() if isinstance(out, Mapping) else out
    return max((_magnitude(v) for v in values), default=0.0)


def eval_output(model: nn.Module, example_input: torch.Tensor) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example_input)
    finally:
        model.train(was)


def compact_graph(work: nn.Module, example_input: torch.Tensor, reference_out: Any):
    """Remove the dead channels of every coupled group of ``work`` (in place), until none is
    left. Each removal is checked on ``example_input``; one that changes the output is undone
    and its group left alone. Returns ``(removed, notes)``: ``{root layer: count}`` and
    ``{root layer: why its dead channels were kept}``."""
    tol = ROUNDING_TOL * max(1.0, _magnitude(reference_out))
    removed: dict[str, int] = {}
    notes: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        graph = _dependency_graph(work, example_input)
        for group in graph.get_all_groups():
            root = group[0].dep.target.module
            name = _name_of(graph, root)
            if name in notes:
                continue
            if _reaches_output(graph, group):
                continue
            dead, why = _dead_channels(graph, group)
            if why is not None:
                notes[name] = why
            if not dead:
                continue
            saved = copy.deepcopy(work)
            try:
                _out_group(graph, root, dead).prune()
                change = max_change(eval_output(work, example_input), reference_out)
            except Exception as err:  # noqa: BLE001 - a removal the model cannot run is undone
                change, why = math.inf, f"{type(err).__name__}: {err}"
            if change > tol:
                work.__dict__.clear()           # back to the copy taken before this group
                work.__dict__.update(saved.__dict__)
                notes[name] = why or f"removing its dead channels moved the output by {change:.3g}"
                changed = True                  # the graph traced the undone modules: retrace
                break
            removed[name] = removed.get(name, 0) + len(dead)
            changed = True
    return removed, notes
