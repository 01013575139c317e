"""Write pruned weights back into a model, hold zeros with masks, and shrink the model.

* :func:`set_layer_weight` writes an (M, N) matrix into a Linear / Conv2d in place (dtype,
  device and the Parameter object kept).
* :func:`apply_masks` / :func:`remove_masks` attach and fold ``torch.nn.utils.prune`` masks so
  that fine-tuning keeps pruned weights at zero; :func:`fold_pruning_state_dict` does the same
  for a saved ``state_dict``.
* :func:`remove_units` and :func:`compact` do structured surgery: dead neurons / channels go,
  with the next layer's matching inputs, giving a genuinely smaller model that computes the same
  function. On an ``nn.Sequential`` the chain order says which layer consumes which; on any
  other model the coupling comes from Torch-Pruning's ``DependencyGraph`` (traced once on an
  example batch): a residual add ties the channels of both branches together, a concatenation
  maps a producer's channels to a slice of the consumer's inputs, and every coupled layer
  (BatchNorm included) shrinks with them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .capture import SUPPORTED, _flatten_sequential

__all__ = ["set_layer_weight", "apply_masks", "remove_masks", "fold_pruning_state_dict",
           "count_parameters", "count_nonzeros", "remove_units", "compact", "CompactResult",
           "measure_latency"]

#: Modules that map a zero input to a zero output elementwise/per channel (eval mode), so a unit
#: whose output is identically zero stays zero through them.
_ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _weight_param(module: nn.Module) -> torch.Tensor:
    """The tensor holding the weight values: ``weight_orig`` under a prune mask, else ``weight``."""
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


@torch.no_grad()
def set_layer_weight(module: nn.Module, weight: Any, bias: Any = None) -> None:
    """Write ``weight`` (M, N) (and ``bias`` (M,)) into a Linear / Conv2d in place.

    The module keeps its dtype, device and Parameter objects. Under a ``torch.nn.utils.prune``
    mask, the values go to ``weight_orig`` and the mask becomes ``weight != 0``. A ``bias`` of
    None leaves the existing bias unchanged.
    """
    if not isinstance(module, SUPPORTED):
        msg = f"module must be nn.Linear or nn.Conv2d, got {type(module).__name__}"
        raise TypeError(msg)
    target = _weight_param(module)
    weight = torch.as_tensor(weight)
    M = target.shape[0]
    N = target[0].numel()
    if tuple(weight.shape) not in ((M, N), tuple(target.shape)):
        msg = (f"weight must have shape (M, N) = ({M}, {N}) or {tuple(target.shape)} for this "
               f"{type(module).__name__}, got {tuple(weight.shape)}")
        raise ValueError(msg)
    if not bool(torch.isfinite(weight).all()):
        msg = "weight has NaN/Inf entries"
        raise ValueError(msg)
    target.copy_(weight.reshape(target.shape))
    if hasattr(module, "weight_mask"):
        module.weight_mask.copy_((target != 0).to(module.weight_mask.dtype))
        module.weight = target * module.weight_mask
    if bias is not None:
        if module.bias is None:
            msg = f"bias given but the {type(module).__name__} has no bias"
            raise ValueError(msg)
        bias = torch.as_tensor(bias)
        if tuple(bias.shape) != (M,):
            msg = f"bias must have shape ({M},), got {tuple(bias.shape)}"
            raise ValueError(msg)
        module.bias.copy_(bias)


def _selected(model: nn.Module, names: Optional[Iterable[str]]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if names is None:
        return {n: m for n, m in modules.items() if isinstance(m, SUPPORTED)}
    names = [names] if isinstance(names, str) else list(names)
    out = {}
    for n in names:
        if n not in modules or not isinstance(modules[n], SUPPORTED):
            msg = f"names: {n!r} is not a Linear/Conv2d of the model"
            raise ValueError(msg)
        out[n] = modules[n]
    return out


def apply_masks(model: nn.Module, names: Optional[Iterable[str]] = None) -> nn.Module:
    """Hold the current zeros of each weight with a ``torch.nn.utils.prune`` mask (in place).

    After this, ``module.weight = weight_orig * weight_mask``: gradients still flow into
    ``weight_orig`` but the masked entries stay zero in every forward pass, so any optimiser
    can fine-tune. Returns ``model``.
    """
    for module in _selected(model, names).values():
        mask = (module.weight.detach() != 0)
        torch_prune.custom_from_mask(module, "weight", mask)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` reparametrisation into plain parameters (in place)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model


def fold_pruning_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``x_orig`` / ``x_mask`` pairs of a saved state_dict by ``x = x_orig * x_mask``.

    Keys keep their order; a ``_orig`` without its ``_mask`` (or the reverse) is an error.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("_mask"):
            base = key[: -len("_mask")]
            if base + "_orig" not in state_dict:
                msg = f"state_dict has {key!r} but no {base + '_orig'!r}"
                raise ValueError(msg)
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            mask = state_dict.get(base + "_mask")
            if mask is None:
                msg = f"state_dict has {key!r} but no {base + '_mask'!r}"
                raise ValueError(msg)
            out[base] = value * mask.to(value.dtype)
        else:
            out[key] = value
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries the model computes with (masked weights count once)."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            total += p.numel()
    return total


def count_nonzeros(model: nn.Module) -> int:
    """Number of nonzero entries of the effective parameters (after any pruning mask)."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            effective = getattr(module, name[: -len("_orig")]) if name.endswith("_orig") else p
            total += int((effective != 0).sum())
    return total


# ---- structured surgery -----------------------------------------------------------------------
def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        msg = (f"structured surgery needs an nn.Sequential model (nested Sequentials are fine), "
               f"got {type(model).__name__}")
        raise TypeError(msg)
    return list(_flatten_sequential(model))


def _plain_chain(model: nn.Module) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` whose chain order alone says which layer feeds
    which (Linear, groups=1 Conv2d, BatchNorm, Flatten and the zero-preserving modules)."""
    if not isinstance(model, nn.Sequential):
        return False
    for _, m in _flatten_sequential(model):
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            return False
        if not isinstance(m, SUPPORTED + (nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten)
                          + _ZERO_PRESERVING):
            return False
    return True


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _consumer(chain: Sequence[tuple[str, nn.Module]], index: int):
    """The next Linear/Conv2d after chain[index], and whether a Flatten sits in between."""
    flatten = False
    between = []
    for name, module in chain[index + 1:]:
        if isinstance(module, SUPPORTED):
            return name, module, flatten, between
        if isinstance(module, nn.Flatten):
            flatten = True
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            between.append((name, module))
        elif not isinstance(module, _ZERO_PRESERVING):
            msg = (f"cannot follow unit removal through {name!r} ({type(module).__name__}); "
                   "supported in between: ReLU, Dropout, Identity, pooling, Flatten, BatchNorm")
            raise TypeError(msg)
    return None, None, flatten, between


def _sliced(module: nn.Module, out_keep=None, in_keep=None) -> nn.Module:
    """A copy of a Linear/Conv2d keeping the given output and input indices."""
    W = module.weight.detach()
    b = None if module.bias is None else module.bias.detach()
    if out_keep is not None:
        W = W[out_keep]
        b = None if b is None else b[out_keep]
    if in_keep is not None:
        W = W[:, in_keep]
    new = copy.deepcopy(module)
    new.weight = nn.Parameter(W.clone(), requires_grad=module.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.clone(), requires_grad=module.bias.requires_grad)
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = W.shape
    else:
        new.out_channels, new.in_channels = W.shape[:2]
    return new


def _sliced_bn(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = copy.deepcopy(bn)
    new.num_features = int(keep.numel())
    for attr in ("weight", "bias"):
        p = getattr(bn, attr)
        if p is not None:
            setattr(new, attr, nn.Parameter(p.detach()[keep].clone()))
    for attr in ("running_mean", "running_var"):
        buf = getattr(bn, attr)
        if buf is not None:
            setattr(new, attr, buf[keep].clone())
    return new


def _check_no_masks(model: nn.Module, what: str) -> None:
    if any(hasattr(m, "weight_orig") for m in model.modules()):
        msg = f"{what}: fold the pruning masks first (nettrim.surgery.remove_masks)"
        raise ValueError(msg)


def _keep_indices(keep: Any, n_out: int, layer_name: str) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n_out):
        msg = f"keep: indices must be in [0, {n_out}), got {keep.tolist()}"
        raise ValueError(msg)
    keep = torch.unique(keep)
    if keep.numel() == 0:
        msg = f"keep: at least one unit of {layer_name!r} must remain"
        raise ValueError(msg)
    return keep


def remove_units(model: nn.Module, layer_name: str, keep: Any, *,
                 example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """Keep only output units (Linear) / channels (Conv2d) ``keep`` of a layer, in place.

    On an ``nn.Sequential`` of Linear, Conv2d (groups=1), BatchNorm, Flatten, ReLU, pooling
    and Dropout, the next Linear/Conv2d loses the matching inputs (through a Flatten: each
    channel's block of ``H * W`` features) and BatchNorm layers in between are sliced too.
    On any other model (an ``nn.Sequential`` with other modules too, given ``example_input``),
    the layers coupled to these channels come from Torch-Pruning's
    ``DependencyGraph`` traced on ``example_input`` (required there): the other branches of a
    residual add lose the same channels, every consumer (through a concatenation: its matching
    slice of inputs) loses the matching inputs, BatchNorms are sliced. Removing units that reach
    the model's output is refused (it would change the output's shape). Returns ``model``.
    """
    _check_no_masks(model, "remove_units")
    if not _plain_chain(model) and (example_input is not None
                                    or not isinstance(model, nn.Sequential)):
        return _remove_units_graph(model, layer_name, keep, example_input)
    chain = _chain(model)
    names = [n for n, _ in chain]
    if layer_name not in names or not isinstance(chain[names.index(layer_name)][1], SUPPORTED):
        msg = f"layer_name: {layer_name!r} is not a Linear/Conv2d of the Sequential chain"
        raise ValueError(msg)
    index = names.index(layer_name)
    module = chain[index][1]
    n_out = module.weight.shape[0]
    keep = _keep_indices(keep, n_out, layer_name)
    nxt_name, nxt, flatten, bns = _consumer(chain, index)
    if nxt is None:
        msg = f"layer {layer_name!r} is the last layer: removing its outputs changes the model output"
        raise ValueError(msg)
    in_keep = keep.to(module.weight.device)
    if flatten:
        per = nxt.weight.shape[1] // n_out
        if per * n_out != nxt.weight.shape[1]:
            msg = (f"{nxt_name!r} takes {nxt.weight.shape[1]} inputs, not a multiple of the "
                   f"{n_out} units of {layer_name!r}")
            raise ValueError(msg)
        in_keep = (in_keep[:, None] * per + torch.arange(per, device=in_keep.device)).flatten()
    _replace(model, layer_name, _sliced(module, out_keep=keep.to(module.weight.device)))
    for bn_name, bn in bns:
        _replace(model, bn_name, _sliced_bn(bn, keep.to(module.weight.device)))
    _replace(model, nxt_name, _sliced(nxt, in_keep=in_keep.to(nxt.weight.device)))
    return model


# ---- structured surgery on any graph: Torch-Pruning's DependencyGraph ---------------------------
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


def _remove_units_graph(model, layer_name, keep, example_input):
    module = dict(model.named_modules()).get(layer_name)
    if not isinstance(module, SUPPORTED):
        msg = f"layer_name: {layer_name!r} is not a Linear/Conv2d of the model"
        raise ValueError(msg)
    if example_input is None:
        msg = (f"example_input: remove_units traces the graph of this {type(model).__name__} (not "
               "a plain nn.Sequential chain) on an example batch: pass example_input=x")
        raise ValueError(msg)
    n_out = module.weight.shape[0]
    keep = _keep_indices(keep, n_out, layer_name)
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


def _max_change(a: Any, b: Any) -> float:
    """Largest absolute entry difference between two outputs (tensors or nested tuples)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return math.inf
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((_max_change(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys():
        return max((_max_change(a[k], b[k]) for k in a), default=0.0)
    return math.inf


def _magnitude(out: Any) -> float:
    if isinstance(out, torch.Tensor):
        return float(out.abs().max()) if out.numel() else 0.0
    values = out.values() if isinstance(out, Mapping) else out
    return max((_magnitude(v) for v in values), default=0.0)


def _eval_output(model: nn.Module, example_input: torch.Tensor) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example_input)
    finally:
        model.train(was)


def _compact_graph(work: nn.Module, example_input: torch.Tensor, reference_out: Any):
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
                change = _max_change(_eval_output(work, example_input), reference_out)
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


def _dead_units(chain, index) -> torch.Tensor:
    """Bool mask of removable output units of chain[index] (Linear/Conv2d)."""
    name, module = chain[index]
    nxt_name, nxt, flatten, bns = _consumer(chain, index)
    W = module.weight.detach().flatten(1)
    n_out = W.shape[0]
    no_input = (W == 0).all(1)
    if module.bias is not None:
        no_input &= module.bias.detach() == 0
    if bns:  # BatchNorm maps 0 to a nonzero constant: zero incoming weights do not make it dead
        no_input = torch.zeros_like(no_input)
    W_next = nxt.weight.detach()
    W_next = W_next.flatten(2) if W_next.ndim == 4 else W_next[:, :, None]
    if flatten:
        W_next = W_next.reshape(W_next.shape[0], n_out, -1)
    no_output = (W_next == 0).all(2).all(0)
    return no_input | no_output


def measure_latency(model: nn.Module, example_input: torch.Tensor, *, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass of ``example_input`` (eval mode, no grad, CPU timer)."""
    was = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            model(example_input)  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(example_input)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was)
    times.sort()
    return 1000 * times[len(times) // 2]


@dataclass
class CompactResult:
    """Result of :func:`compact`. ``removed``: ``{layer: units removed}`` (on a graph model,
    one layer names each coupled group: the producers of a residual stream lose the same
    channels). ``notes``: ``{layer: why its group's dead channels were kept}`` (groups a graph
    model could not compact; empty on an ``nn.Sequential``)."""

    model: nn.Module
    removed: dict
    params_before: int
    params_after: int
    latency_before_ms: float
    latency_after_ms: float
    max_abs_diff: float
    notes: dict = field(default_factory=dict)

    def summary(self) -> str:
        units = ", ".join(f"{k}: -{v}" for k, v in self.removed.items() if v) or "none"
        return (f"compaction removed units ({units}); parameters {self.params_before} -> "
                f"{self.params_after}; CPU latency {self.latency_before_ms:.3f} ms -> "
                f"{self.latency_after_ms:.3f} ms; max |output change| {self.max_abs_diff:.2e}")


def compact(model: nn.Module, example_input: torch.Tensor, *, inplace: bool = False,
            repeats: int = 20) -> CompactResult:
    """Remove dead neurons / channels of a model.

    A unit is dead when its incoming weights and bias are all zero (its output is 0 and stays 0
    through ReLU, ReLU6, pooling, Dropout) or when the weights of every layer consuming it are
    all zero on it. Dead units go, with the consumers' inputs for them; this repeats until
    nothing changes. The model's outputs are kept.

    On an ``nn.Sequential`` of Linear, Conv2d (groups=1), BatchNorm, Flatten, ReLU, ReLU6,
    pooling and Dropout the next layer in the chain is the consumer. On any other model the
    coupling comes from Torch-Pruning's ``DependencyGraph`` traced on ``example_input``: a
    channel of a residual stream goes only when it is dead in every branch of the add, a
    concatenation's slice maps back to its producer, BatchNorms are sliced with their layer (a
    BatchNorm with a nonzero shift keeps a zero-input channel alive). Groups whose channels pass
    through other operations (LayerNorm, attention) are left alone (``notes`` says why); each
    removal is checked on ``example_input`` and undone if the output moved by more than
    :data:`ROUNDING_TOL` times its largest entry.

    Parameters
    ----------
    model : nn.Module
        Plain weights (fold masks first with :func:`remove_masks`).
    example_input : Tensor
        A batch used to trace the graph (non-Sequential models), to measure CPU latency before
        and after and to check that the outputs did not change (``max_abs_diff``).
    inplace : bool
        Modify ``model`` instead of a copy.
    """
    if not isinstance(example_input, torch.Tensor):
        msg = f"example_input must be a tensor batch, got {type(example_input).__name__}"
        raise TypeError(msg)
    _check_no_masks(model, "compact")
    work = model if inplace else copy.deepcopy(model)
    reference = copy.deepcopy(model).eval()
    try:
        before_out = _eval_output(reference, example_input)
    except Exception as err:  # noqa: BLE001 - the user's model or batch: one clear message
        msg = (f"compact: the {type(model).__name__} does not run on example_input of shape "
               f"{tuple(example_input.shape)}: {type(err).__name__}: {err}")
        raise TypeError(msg) from err
    params_before = count_parameters(work)
    latency_before = measure_latency(reference, example_input, repeats=repeats)
    notes: dict[str, str] = {}
    if _plain_chain(model):
        removed = _compact_chain(work)
    else:
        removed, notes = _compact_graph(work, example_input, before_out)
    return CompactResult(model=work, removed=removed, params_before=params_before,
                         params_after=count_parameters(work),
                         latency_before_ms=latency_before,
                         latency_after_ms=measure_latency(work, example_input, repeats=repeats),
                         max_abs_diff=_max_change(_eval_output(work, example_input), before_out),
                         notes=notes)


def _compact_chain(work: nn.Sequential) -> dict:
    """:func:`compact` on an ``nn.Sequential`` (in place): ``{layer: units removed}``."""
    removed: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        chain = _chain(work)
        for index, (name, module) in enumerate(chain):
            if not isinstance(module, SUPPORTED) or _consumer(chain, index)[1] is None:
                continue
            dead = _dead_units(chain, index)
            if bool(dead.any()):
                keep = torch.nonzero(~dead).flatten()
                if keep.numel() == 0:  # keep one unit so shapes stay valid (its output is 0)
                    keep = torch.zeros(1, dtype=torch.long)
                if keep.numel() == dead.numel():
                    continue
                remove_units(work, name, keep)
                removed[name] = removed.get(name, 0) + int(dead.numel() - keep.numel())
                changed = True
                break
    return removed
