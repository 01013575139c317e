"""Write pruned weights back into a model, hold zeros with masks, and shrink the model.

* :func:`set_layer_weight` writes an (M, N) matrix into a Linear / Conv2d in place (dtype,
  device and the Parameter object kept).
* :func:`apply_masks` / :func:`remove_masks` attach and fold ``torch.nn.utils.prune`` masks so
  that fine-tuning keeps pruned weights at zero (a saved ``state_dict``'s masks fold when it is
  loaded: :func:`nettrim.io.checkpoint.fold_pruning_state_dict`).
* :func:`remove_units` and :func:`compact` do structured surgery: dead neurons / channels go,
  with the next layer's matching inputs, giving a genuinely smaller model that computes the same
  function. On an ``nn.Sequential`` the chain order says which layer consumes which (here); on
  any other model the coupling comes from Torch-Pruning's ``DependencyGraph``
  (:mod:`nettrim.model.dependency`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .capture import SUPPORTED
from .dependency import compact_graph, eval_output, keep_indices, max_change, remove_units_graph
from .graph import flatten_sequential, shared_parameters
from .kinds import TransposedLinear

__all__ = ["set_layer_weight", "apply_masks", "remove_masks", "count_parameters",
           "count_nonzeros", "consumer", "remove_units", "compact", "CompactResult",
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
    None leaves the existing bias unchanged. transformers' ``Conv1D`` stores its weight
    transposed, (N, M): ``weight`` is still the (M, N) matrix, written back transposed.
    """
    if not isinstance(module, SUPPORTED):
        msg = f"module must be nn.Linear or nn.Conv2d, got {type(module).__name__}"
        raise TypeError(msg)
    target = _weight_param(module)
    weight = torch.as_tensor(weight)
    if isinstance(module, TransposedLinear):
        target = target.T   # a view: the copy below writes the stored (N, M) weight
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
        stored = _weight_param(module)
        module.weight_mask.copy_((stored != 0).to(module.weight_mask.dtype))
        module.weight = stored * module.weight_mask
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
    can fine-tune. A layer whose weight is tied to a named one's (the same tensor) gets the same
    mask, so that fine-tuning keeps them one tensor. Returns ``model``.
    """
    selected = _selected(model, names)
    modules = dict(model.named_modules())
    for group in shared_parameters(model):
        if any(n in selected for n in group):
            selected.update({n: modules[n] for n in group if isinstance(modules[n], SUPPORTED)
                             and not hasattr(modules[n], "weight_orig")})
    for module in selected.values():
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
    return list(flatten_sequential(model))


def _plain_chain(model: nn.Module) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` whose chain order alone says which layer feeds
    which (Linear, groups=1 Conv2d, BatchNorm, Flatten and the zero-preserving modules)."""
    if not isinstance(model, nn.Sequential):
        return False
    for _, m in flatten_sequential(model):
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


def consumer(chain: Sequence[tuple[str, nn.Module]], index: int):
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
        return remove_units_graph(model, layer_name, keep, example_input)
    chain = _chain(model)
    names = [n for n, _ in chain]
    if layer_name not in names or not isinstance(chain[names.index(layer_name)][1], SUPPORTED):
        msg = f"layer_name: {layer_name!r} is not a Linear/Conv2d of the Sequential chain"
        raise ValueError(msg)
    index = names.index(layer_name)
    module = chain[index][1]
    n_out = module.weight.shape[0]
    keep = keep_indices(keep, n_out, layer_name)
    nxt_name, nxt, flatten, bns = consumer(chain, index)
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


def _dead_units(chain, index) -> torch.Tensor:
    """Bool mask of removable output units of chain[index] (Linear/Conv2d)."""
    name, module = chain[index]
    nxt_name, nxt, flatten, bns = consumer(chain, index)
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


#: Seconds of timed passes after which :func:`measure_latency` stops (once it has at least
#: ``MIN_REPEATS`` of them): a slow model is timed a few times, not ``repeats`` times.
LATENCY_BUDGET_S = 1.0
MIN_REPEATS = 3


def measure_latency(model: nn.Module, example_input: torch.Tensor, *, repeats: int = 20,
                    budget_s: float = LATENCY_BUDGET_S) -> float:
    """Median milliseconds of one forward pass of ``example_input`` (eval mode, no grad, CPU
    timer): ``repeats`` timed passes after a warm-up, fewer once they have taken ``budget_s``
    seconds (at least ``MIN_REPEATS``, and at most ``3 * budget_s`` seconds past the first)."""
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
                spent = sum(times)
                if spent >= budget_s and (len(times) >= MIN_REPEATS
                                          or spent - times[0] >= 3 * budget_s):
                    break
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
    :data:`nettrim.model.dependency.ROUNDING_TOL` times its largest entry.

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
        before_out = eval_output(reference, example_input)
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
        removed, notes = compact_graph(work, example_input, before_out)
    return CompactResult(model=work, removed=removed, params_before=params_before,
                         params_after=count_parameters(work),
                         latency_before_ms=latency_before,
                         latency_after_ms=measure_latency(work, example_input, repeats=repeats),
                         max_abs_diff=max_change(eval_output(work, example_input), before_out),
                         notes=notes)


def _compact_chain(work: nn.Sequential) -> dict:
    """:func:`compact` on an ``nn.Sequential`` (in place): ``{layer: units removed}``."""
    removed: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        chain = _chain(work)
        for index, (name, module) in enumerate(chain):
            if not isinstance(module, SUPPORTED) or consumer(chain, index)[1] is None:
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
