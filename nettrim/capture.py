"""Record the inputs and outputs of a model's prunable layers on calibration data.

Forward hooks are registered inside a context manager and removed in ``finally``; they return
None, so the model computes exactly what it computes without them. A ``Conv2d`` is turned into a
matrix product: its input is unfolded into patches (``F.unfold``), one row per output position,
so ``patches @ weight.flatten(1).T`` equals the convolution's output (bias aside) and the same
convex program applies; the solved ``(out, in * kh * kw)`` matrix maps back to the weight shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerData", "capture", "capture_cascade", "prunable_layers", "detect_activations",
           "layer_matrix", "subsample_note", "SUPPORTED", "DEFAULT_BATCH"]

#: Module types Net-Trim prunes.
SUPPORTED = (nn.Linear, nn.Conv2d)
#: Rows per forward pass when ``inputs`` is a single tensor.
DEFAULT_BATCH = 1024
#: Modules that pass a ReLU through unchanged in eval mode (skipped when looking for the ReLU).
_TRANSPARENT = (nn.Dropout, nn.Identity)


@dataclass
class LayerData:
    """What :func:`capture` recorded for one layer.

    Attributes
    ----------
    name : str
        The module's qualified name in the model.
    kind : {"linear", "conv2d"}
    X : Tensor of shape (P, N)
        Layer input, one row per sample (conv: per output position, the unfolded patch;
        ``N = in_channels * kh * kw``).
    pre : Tensor of shape (P, M)
        Layer output before the activation, bias included (conv: ``M = out_channels``).
    post : Tensor of shape (P, M)
        After the activation (``relu(pre)``), or ``pre`` when ``activation`` is None.
    activation : {"relu", None}
    has_bias : bool
    weight_shape : tuple
        The module's weight shape; ``weight.reshape(weight_shape)`` maps an (M, N) matrix back.
    rows_seen : int
        Rows produced by the calibration data before subsampling (``P <= rows_seen``).
    """

    name: str
    kind: str
    X: torch.Tensor
    pre: torch.Tensor
    post: torch.Tensor
    activation: Optional[str]
    has_bias: bool
    weight_shape: tuple
    rows_seen: int

    def __repr__(self) -> str:
        return (f"LayerData({self.name!r}, {self.kind}, X={tuple(self.X.shape)}, "
                f"Y={tuple(self.post.shape)}, activation={self.activation}, "
                f"rows {self.X.shape[0]} of {self.rows_seen})")


# ---- which layers ------------------------------------------------------------------------------
def _check_conv(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        msg = (f"layer {name!r} is a grouped/depthwise Conv2d (groups={module.groups}); only "
               "groups=1 convolutions are supported: pass ignore=[...] to skip it")
        raise TypeError(msg)


def prunable_layers(model: nn.Module, layers: Any = None,
                    ignore: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The layers to prune, in ``model.named_modules()`` order.

    Parameters
    ----------
    model : nn.Module
    layers : None, str, type, or a sequence of names and/or module types
        None: every ``nn.Linear`` and ``nn.Conv2d``. Names must exist and be supported layers;
        types select all modules of that type.
    ignore : iterable of str
        Names to leave out.

    Raises
    ------
    ValueError
        An unknown name, or nothing left to prune.
    TypeError
        A named module of an unsupported type (or a grouped convolution).
    """
    if not isinstance(model, nn.Module):
        msg = f"model must be a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    modules = dict(model.named_modules())
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)
    unknown = [n for n in ignore if n not in modules]
    if unknown:
        msg = f"ignore names unknown modules {unknown}; known: {_supported_names(modules)}"
        raise ValueError(msg)
    if layers is None:
        wanted: list = list(SUPPORTED)
    elif isinstance(layers, (str, type)):
        wanted = [layers]
    else:
        wanted = list(layers)
    selected: dict[str, nn.Module] = {}
    for item in wanted:
        if isinstance(item, str):
            if item not in modules:
                msg = f"layers names {item!r}, which is not a module of the model; prunable " \
                      f"layers are {_supported_names(modules)}"
                raise ValueError(msg)
            if not isinstance(modules[item], SUPPORTED):
                msg = (f"layer {item!r} is a {type(modules[item]).__name__}; Net-Trim prunes "
                       "nn.Linear and nn.Conv2d layers")
                raise TypeError(msg)
        elif not (isinstance(item, type) and issubclass(item, nn.Module)):
            msg = f"layers must hold module names or nn.Module types, got {item!r}"
            raise TypeError(msg)
        elif not issubclass(item, SUPPORTED):
            msg = f"layers names the type {item.__name__}; Net-Trim prunes nn.Linear and nn.Conv2d"
            raise TypeError(msg)
    for name, module in modules.items():
        if name in ignore or not isinstance(module, SUPPORTED):
            continue
        if any(name == w if isinstance(w, str) else isinstance(module, w) for w in wanted):
            _check_conv(name, module)
            selected[name] = module
    if not selected:
        msg = "no prunable layers (nn.Linear / nn.Conv2d) selected in the model"
        raise ValueError(msg)
    return selected


def _supported_names(modules: Mapping[str, nn.Module]) -> list[str]:
    return [n for n, m in modules.items() if isinstance(m, SUPPORTED)]


def layer_matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear / Conv2d as an (M, N) matrix (a view, detached)."""
    if not isinstance(module, SUPPORTED):
        msg = f"module must be nn.Linear or nn.Conv2d, got {type(module).__name__}"
        raise TypeError(msg)
    return module.weight.detach().flatten(1)


# ---- which activation follows each layer -------------------------------------------------------
def _is_relu_call(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _passes_through(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(node.target), _TRANSPARENT)


def _detect_fx(model: nn.Module) -> dict[str, Optional[str]]:
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    found: dict[str, Optional[str]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), SUPPORTED):
            continue
        users = list(node.users)
        while len(users) == 1 and _passes_through(users[0], modules):
            users = list(users[0].users)
        relu = bool(users) and all(_is_relu_call(u, modules) for u in users)
        # a layer called twice (weight sharing) is left linear: its two uses may differ
        found[node.target] = "relu" if relu and node.target not in found else None
    return found


def _flatten_sequential(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _flatten_sequential(child, full + ".")
        else:
            yield full, child


def _detect_sequential(model: nn.Module) -> dict[str, Optional[str]]:
    found: dict[str, Optional[str]] = {}
    containers = [("", model)] if isinstance(model, nn.Sequential) else []
    containers += [(n + ".", m) for n, m in model.named_modules()
                   if n and isinstance(m, nn.Sequential)]
    for prefix, seq in containers:
        chain = list(_flatten_sequential(seq, prefix))
        for i, (name, module) in enumerate(chain):
            if not isinstance(module, SUPPORTED) or name in found:
                continue
            j = i + 1
            while j < len(chain) and isinstance(chain[j][1], _TRANSPARENT):
                j += 1
            found[name] = "relu" if j < len(chain) and isinstance(chain[j][1], nn.ReLU) else None
    return found


def detect_activations(model: nn.Module) -> dict[str, Optional[str]]:
    """``{layer name: "relu" | None}`` for every Linear / Conv2d, read from the model's structure.

    The model is traced with ``torch.fx``: a layer whose every use is a ReLU (module
    ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``.relu()``, possibly through Dropout/Identity) is
    "relu". When tracing fails (data-dependent control flow), the order of ``nn.Sequential``
    containers is used instead, which cannot see functional ReLUs: declare those with
    ``activations={name: "relu"}``. Layers nothing is known about are None (linear), which is
    always safe: the linear program constrains every output entry.
    """
    try:
        found = _detect_fx(model)
    except Exception:  # noqa: BLE001 - any tracing failure falls back to the structure
        found = _detect_sequential(model)
    return {name: found.get(name) for name, m in model.named_modules() if isinstance(m, SUPPORTED)}


def _resolve_activations(model: nn.Module, names: Sequence[str],
                         activations: Optional[Mapping[str, Optional[str]]]) -> dict:
    detected = detect_activations(model)
    if activations is None:
        activations = {}
    if not isinstance(activations, Mapping):
        msg = f"activations must be a dict {{layer name: 'relu' or None}}, got {activations!r}"
        raise TypeError(msg)
    for name, act in activations.items():
        if name not in detected:
            msg = f"activations names {name!r}, which is not a Linear/Conv2d of the model"
            raise ValueError(msg)
        if act not in ("relu", None):
            msg = f"activations[{name!r}] must be 'relu' or None, got {act!r}"
            raise ValueError(msg)
    return {name: activations.get(name, detected[name]) for name in names}


# ---- streaming, hooks, subsampling -------------------------------------------------------------
def _batches(inputs: Any) -> Iterator[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 0:
            msg = "inputs must have a batch dimension, got a 0-d tensor"
            raise ValueError(msg)
        yield from inputs.split(DEFAULT_BATCH)
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        msg = ("inputs must be a tensor or an iterable of batches (tensors or (x, y) pairs, e.g. "
               f"a DataLoader), got {type(inputs).__name__}")
        raise TypeError(msg)
    for batch in inputs:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            msg = f"each batch of inputs must be a tensor or an (x, y) pair, got {type(x).__name__}"
            raise TypeError(msg)
        yield x


def _as_rows(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple:
    """(input rows (B, N), output rows (B, M)) of one call."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
    if x.ndim == 3:  # unbatched conv input
        x, out = x[None], out[None]
    kh, kw = module.kernel_size
    dh, dw = module.dilation
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pad = (0, 0, 0, 0)
        else:  # "same": torch puts the odd element on the right/bottom
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = module.padding
        pad = (pw, pw, ph, ph)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    patches = F.unfold(x, (kh, kw), dilation=module.dilation, stride=module.stride)
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return rows, out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])


class _Reservoir:
    """Keeps at most ``cap`` rows seen in a stream: the ones with the smallest seeded random keys,
    in stream order (so one seed selects the same rows of the same data, pass after pass)."""

    def __init__(self, cap: Optional[int], seed: int):
        self.cap = cap
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[list[torch.Tensor]] = []
        self.keys: Optional[torch.Tensor] = None
        self.order: Optional[torch.Tensor] = None
        self.seen = 0

    def add(self, *arrays: torch.Tensor) -> None:
        n = arrays[0].shape[0]
        index = torch.arange(self.seen, self.seen + n)
        self.seen += n
        if self.cap is None:
            self.parts.append(list(arrays))
            return
        keys = torch.rand(n, generator=self.gen)
        if self.parts:
            keys = torch.cat([self.keys, keys])
            index = torch.cat([self.order, index])
            arrays = tuple(torch.cat([old, new]) for old, new in zip(self.parts[0], arrays))
        if keys.shape[0] > self.cap:
            keep = torch.topk(keys, self.cap, largest=False).indices.sort().values
            keys, index = keys[keep], index[keep]
            arrays = tuple(a[keep.to(a.device)] for a in arrays)
        self.parts, self.keys, self.order = [list(arrays)], keys, index

    def result(self) -> list[torch.Tensor]:
        return [torch.cat(cols) for cols in zip(*self.parts)]


@contextlib.contextmanager
def _hooks(named: Mapping[str, nn.Module], sink: dict) -> Iterator[None]:
    handles = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            # clone: a later in-place op (ReLU(inplace=True)) would rewrite the records
            sink[name] = (args[0].detach().clone(), out.detach().clone())
        return hook

    try:
        for name, module in named.items():
            handles.append(module.register_forward_hook(make(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_options(max_samples: Any, seed: Any) -> None:
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        msg = f"max_samples must be a positive integer or None, got {max_samples!r}"
        raise ValueError(msg)
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"seed must be an integer, got {seed!r}"
        raise TypeError(msg)


def _run(models: Sequence[nn.Module], inputs: Any, names: Sequence[str],
         take: Any, max_samples: Optional[int], seed: int, dtype: Any, device: Any) -> dict:
    """Stream ``inputs`` through every model (hooks on ``names``), ``take(sinks, name)`` ->
    the (X, pre) rows kept for a layer; returns ``{name: (X, pre, rows_seen)}``."""
    reservoirs = {name: _Reservoir(max_samples, seed + 7919 * i) for i, name in enumerate(names)}
    run_device = _model_device(models[0])
    sinks = [dict() for _ in models]
    named = [{n: dict(m.named_modules())[n] for n in names} for m in models]
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_eval_mode(*models))
        for model, hooks, sink in zip(models, named, sinks):
            stack.enter_context(_hooks(hooks, sink))
        batches = 0
        for x in _batches(inputs):
            batches += 1
            x = x.to(run_device)
            for model, sink in zip(models, sinks):
                sink.clear()
                model(x)
            for name in names:
                if any(name not in sink for sink in sinks):
                    msg = f"layer {name!r} was not called by the model's forward pass"
                    raise ValueError(msg)
                X, pre = take(sinks, name)
                X = X.to(device=device or X.device, dtype=dtype or X.dtype)
                pre = pre.to(device=device or pre.device, dtype=dtype or pre.dtype)
                reservoirs[name].add(X, pre)
    if batches == 0:
        msg = "inputs yielded no batches"
        raise ValueError(msg)
    return {name: (*reservoirs[name].result(), reservoirs[name].seen) for name in names}


def _check_finite(name: str, X: torch.Tensor, pre: torch.Tensor) -> None:
    for what, a in (("input", X), ("output", pre)):
        bad = int((~torch.isfinite(a)).sum())
        if bad:
            msg = (f"layer {name!r}: {bad} NaN/Inf entries in the recorded {what}; check the "
                   "model and the calibration data")
            raise ValueError(msg)


def _layer_data(name: str, module: nn.Module, X, pre, seen, activation) -> LayerData:
    _check_finite(name, X, pre)
    post = torch.relu(pre) if activation == "relu" else pre
    return LayerData(name=name, kind="linear" if isinstance(module, nn.Linear) else "conv2d",
                     X=X, pre=pre, post=post, activation=activation,
                     has_bias=module.bias is not None, weight_shape=tuple(module.weight.shape),
                     rows_seen=seen)


def capture(model: nn.Module, inputs: Union[torch.Tensor, Iterable], layers: Any = None, *,
            ignore: Iterable[str] = (), activations: Optional[Mapping[str, Optional[str]]] = None,
            max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
            dtype: Optional[torch.dtype] = None) -> dict[str, LayerData]:
    """Record the input, pre- and post-activation output of each prunable layer.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (dropout off) under ``torch.no_grad``; its mode is restored after.
    inputs : Tensor or iterable of batches
        A tensor (split into batches of :data:`DEFAULT_BATCH`) or an iterable of tensors or
        ``(x, y)`` pairs (a DataLoader), streamed batch by batch.
    layers, ignore
        Selection, see :func:`prunable_layers`.
    activations : dict, optional
        ``{name: "relu" | None}`` overriding :func:`detect_activations` (functional ReLUs).
    max_samples : int, optional
        Keep at most this many rows per layer: a uniform random subset (seeded; for a conv,
        of output positions/patches), chosen while streaming so memory stays bounded
        (about twice the kept rows). ``LayerData.rows_seen`` says how many there were.
    seed : int
        Seed of the subsampling: the same seed on the same data keeps the same rows.
    device, dtype : optional
        Where and in which dtype the records are kept (default: as the model produces them).

    Returns
    -------
    dict[str, LayerData]
        In model order. Hooks are removed before returning, also on error.
    """
    _check_options(max_samples, seed)
    selected = prunable_layers(model, layers, ignore)
    acts = _resolve_activations(model, list(selected), activations)
    raw = _run([model], inputs, list(selected), lambda sinks, n: _as_rows(selected[n], *sinks[0][n]),
               max_samples, seed, dtype, device)
    return {n: _layer_data(n, selected[n], *raw[n], acts[n]) for n in selected}


def capture_cascade(original: nn.Module, pruned: nn.Module, inputs: Any, name: str, *,
                    activations: Optional[Mapping[str, Optional[str]]] = None,
                    max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
                    dtype: Optional[torch.dtype] = None) -> LayerData:
    """One layer's cascade data: input ``X`` from ``pruned``, outputs from ``original``.

    Both models see the same batches in the same pass, so rows pair up even when the data
    loader shuffles. ``pruned`` must have the same architecture as ``original``.
    """
    _check_options(max_samples, seed)
    module = prunable_layers(original, [name])[name]
    prunable_layers(pruned, [name])
    acts = _resolve_activations(original, [name], activations)

    def take(sinks, n):
        x_hat, out_hat = sinks[1][n]
        x, out = sinks[0][n]
        rows_hat, _ = _as_rows(module, x_hat, out_hat)
        _, pre = _as_rows(module, x, out)
        return rows_hat, pre

    raw = _run([original, pruned], inputs, [name], take, max_samples, seed, dtype, device)
    return _layer_data(name, module, *raw[name], acts[name])


def subsample_note(data: LayerData) -> str:
    """A one-line description of what was kept, for reports."""
    kept = data.X.shape[0]
    unit = "patches" if data.kind == "conv2d" else "rows"
    if kept == data.rows_seen:
        return f"{kept} {unit} (all)"
    return f"{kept} of {data.rows_seen} {unit} ({100 * kept / data.rows_seen:.1f}%, seeded)"

