"""Record the inputs and outputs of a model's prunable layers on calibration data.

Forward hooks are registered inside a context manager and removed in ``finally``; they return
None, so the model computes exactly what it computes without them. A ``Conv2d`` (``Conv1d``) is
turned into a matrix product: its input is unfolded into patches (``F.unfold``), one row per
output position, so ``patches @ weight.flatten(1).T`` equals the convolution's output (bias
aside) and the same convex program applies; the solved ``(out, in * kh * kw)`` matrix maps back
to the weight shape (:mod:`nettrim.model.rows`). A grouped convolution's patches hold every
input channel; group ``g`` reads its own block of columns (:func:`group_blocks`).

What follows each layer (activation, BatchNorm, residual add) is read by
:mod:`nettrim.model.graph`.
A BatchNorm after the layer is folded in: the recorded output is the BatchNorm's. A residual
offset (``relu(bn(conv(x)) + skip)``) is recorded per row by replaying the traced graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..checks import check_model
from ..inputs import forward_args, model_device, to_device
from .graph import (ACTIVATION_NAMES, PRUNABLE, LayerPattern, ModelPlan, analyze,
                    attention_projections, describe_skipped, skipped_layers)
from .calibration import rows_needed, run_sparsity
from .rows import Reservoir, call_rows

__all__ = ["LayerData", "Captured", "capture", "capture_cascade", "prunable_layers",
           "detect_activations", "layer_matrix", "group_blocks", "subsample_note",
           "CalibrationWarning", "rows_needed", "SUPPORTED", "RELU_PROGRAM", "SOLVE_DTYPES",
           "in_solver_dtype"]

#: Module types Net-Trim prunes.
SUPPORTED = PRUNABLE
#: Activations solved with the ReLU program (with ``fold=True``): ReLU6 with its target clipped at
#: 6. Clipping to [0, 6] is a projection onto a set holding Y, so it only brings the pruned
#: output closer: the ReLU program's bound ``||relu(X W^T) - Y|| <= epsilon`` holds for ReLU6.
RELU_PROGRAM = ("relu", "relu6")
_KINDS = ((nn.Linear, "linear"), (nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d"))
#: dtypes the solvers take; records in other floating dtypes (float16, bfloat16) are solved in
#: float32 (:func:`in_solver_dtype`).
SOLVE_DTYPES = (torch.float32, torch.float64)


class CalibrationWarning(UserWarning):
    """A layer has fewer calibration rows than the program needs (see :func:`rows_needed`)."""


@dataclass
class LayerData:
    """What :func:`capture` recorded for one layer.

    Attributes
    ----------
    name : str
        The module's qualified name in the model.
    kind : {"linear", "conv1d", "conv2d"}
    X : Tensor of shape (P, N)
        Layer input, one row per sample (a token for a Linear on ``(batch, tokens, features)``;
        conv: per output position, the unfolded patch, ``N = in_channels * kernel size``).
    pre : Tensor of shape (P, M)
        Output before the activation, bias included (conv: ``M = out_channels``); with a
        BatchNorm folded in (``norm``), the BatchNorm's output.
    post : Tensor of shape (P, M)
        The program's target: ``relu(pre + offset)`` for a ReLU layer (``min(relu(pre), 6)``
        for ReLU6 captured with ``fold=True``), ``pre`` otherwise (other activations are solved
        with the linear program on their pre-activations).
    activation : str or None
        What follows the layer (:data:`nettrim.graph.ACTIVATION_NAMES`), as the graph reads it
        (:func:`detect_activations`); captured with ``fold=False``, None for a layer whose
        activation comes after a BatchNorm or a residual add (its own output is linear).
    has_bias : bool
    weight_shape : tuple
        The module's weight shape; ``weight.reshape(weight_shape)`` maps an (M, N) matrix back
        (for a grouped convolution, N is the channels of one group times the kernel size).
    rows_seen : int
        Rows produced by the calibration data before subsampling (``P <= rows_seen``).
    norm : str or None
        Name of the BatchNorm folded into the program.
    offset : Tensor of shape (P, M) or None
        The per-row residual term added before the ReLU.
    groups : int
        Groups of a grouped convolution (1 otherwise).
    calls : int
        How many times the layer ran per forward pass (every call's rows are kept).
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
    norm: Optional[str] = None
    offset: Optional[torch.Tensor] = None
    groups: int = 1
    calls: int = 1

    def __repr__(self) -> str:
        extra = "".join([f", norm={self.norm}" if self.norm else "",
                         ", offset" if self.offset is not None else "",
                         f", groups={self.groups}" if self.groups > 1 else ""])
        return (f"LayerData({self.name!r}, {self.kind}, X={tuple(self.X.shape)}, "
                f"Y={tuple(self.post.shape)}, activation={self.activation}{extra}, "
                f"rows {self.X.shape[0]} of {self.rows_seen})")


class Captured(dict):
    """``{name: LayerData}`` in model order, plus ``skipped``: ``{name: reason}`` of the layers
    left as they are (unsupported, or never called by the forward pass)."""

    def __init__(self, data: Mapping, skipped: Mapping[str, str]):
        super().__init__(data)
        self.skipped = dict(skipped)


def in_solver_dtype(data: LayerData) -> LayerData:
    """``data`` with its records in a dtype the solvers take: float16 and bfloat16 records
    become float32 (every driver solves such a layer in float32 and writes the solution back in
    the layer's own dtype, saying so in the layer's note); float32 and float64 are kept."""
    if data.X.dtype in SOLVE_DTYPES:
        return data
    return dataclasses.replace(
        data, X=data.X.float(), pre=data.pre.float(), post=data.post.float(),
        offset=None if data.offset is None else data.offset.float())


# ---- which layers ------------------------------------------------------------------------------
def prunable_layers(model: nn.Module, layers: Any = None,
                    ignore: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The layers to prune, in ``model.named_modules()`` order.

    Parameters
    ----------
    model : nn.Module
    layers : None, str, type, or a sequence of names and/or module types
        None: every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (grouped ones included)
        except those :func:`nettrim.graph.skipped_layers` lists (``nn.MultiheadAttention``'s
        projections). Names must exist and be supported layers; types select all modules of
        that type.
    ignore : iterable of str
        Names to leave out.

    Raises
    ------
    ValueError
        An unknown name, or nothing left to prune.
    TypeError
        A named module of an unsupported type.
    """
    check_model(model)
    modules = dict(model.named_modules())
    skipped = skipped_layers(model)
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
    for item in wanted:
        if isinstance(item, str):
            if item not in modules:
                msg = f"layers names {item!r}, which is not a module of the model; prunable " \
                      f"layers are {_supported_names(modules)}"
                raise ValueError(msg)
            if not isinstance(modules[item], SUPPORTED) or item in skipped:
                why = skipped.get(item, "Net-Trim prunes nn.Linear, nn.Conv1d and nn.Conv2d")
                msg = f"layer {item!r} is a {type(modules[item]).__name__}: {why}"
                raise TypeError(msg)
        elif not (isinstance(item, type) and issubclass(item, nn.Module)):
            msg = f"layers must hold module names or nn.Module types, got {item!r}"
            raise TypeError(msg)
        elif not issubclass(item, SUPPORTED):
            msg = (f"layers names the type {item.__name__}; Net-Trim prunes nn.Linear, nn.Conv1d "
                   "and nn.Conv2d")
            raise TypeError(msg)
    selected: dict[str, nn.Module] = {}
    for name, module in modules.items():
        if name in ignore or name in skipped or not isinstance(module, SUPPORTED):
            continue
        if any(name == w if isinstance(w, str) else isinstance(module, w) for w in wanted):
            selected[name] = module
    if not selected:
        msg = "no prunable layers (nn.Linear / nn.Conv1d / nn.Conv2d) selected in the model"
        if skipped:
            msg += f"; skipped: {describe_skipped(model, skipped)}"
        raise ValueError(msg)
    return selected


def _supported_names(modules: Mapping[str, nn.Module]) -> list[str]:
    return [n for n, m in modules.items() if isinstance(m, SUPPORTED)]


def layer_matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear / Conv1d / Conv2d as an (M, N) matrix (a view, detached)."""
    if not isinstance(module, SUPPORTED):
        msg = f"module must be nn.Linear, nn.Conv1d or nn.Conv2d, got {type(module).__name__}"
        raise TypeError(msg)
    return module.weight.detach().flatten(1)


def group_blocks(groups: int, N: int, M: int) -> list[tuple[slice, slice]]:
    """``(columns of X, rows of W)`` of each group of a grouped convolution whose unfolded input
    has N columns (all channels, channel-major) and M output channels."""
    n, m = N // groups, M // groups
    return [(slice(g * n, (g + 1) * n), slice(g * m, (g + 1) * m)) for g in range(groups)]


# ---- which activation follows each layer -------------------------------------------------------
def detect_activations(model: nn.Module) -> dict[str, Optional[str]]:
    """``{layer name: activation or None}`` for every prunable layer, read from the graph.

    See :mod:`nettrim.graph`: a layer whose every use (through Dropout/Identity, and through
    an eval-mode BatchNorm or a residual add for a ReLU) is an activation gets its name
    (``"relu"``, ``"relu6"``, ``"gelu"``, ``"silu"``, ``"leaky_relu"``, ``"tanh"``). When
    tracing fails, ``nn.Sequential`` order is used, which cannot see functional ReLUs: declare
    those with ``activations={name: "relu"}``. None (linear) is always safe: the linear program
    constrains every output entry.
    """
    return {n: p.activation for n, p in analyze(model, warn=False).patterns.items()}


def _resolve_patterns(plan: ModelPlan, names: Sequence[str],
                      activations: Optional[Mapping[str, Optional[str]]],
                      fold: bool = True) -> dict:
    """``{name: LayerPattern}`` with the user's ``activations`` overriding the detected ones
    (a declared activation drops a detected residual offset). Without ``fold``, a layer whose
    activation comes after a BatchNorm or a residual add is read as linear (its own output)."""
    if activations is None:
        activations = {}
    if not isinstance(activations, Mapping):
        msg = f"activations must be a dict {{layer name: 'relu' or None}}, got {activations!r}"
        raise TypeError(msg)
    for name, act in activations.items():
        if name not in plan.patterns:
            msg = f"activations names {name!r}, which is not a prunable layer of the model"
            raise ValueError(msg)
        if act not in ACTIVATION_NAMES:
            msg = f"activations[{name!r}] must be one of {ACTIVATION_NAMES}, got {act!r}"
            raise ValueError(msg)
    out = {}
    for name in names:
        pattern = plan.patterns[name]
        if name in activations and activations[name] != pattern.activation:
            pattern = LayerPattern(activation=activations[name], norm=pattern.norm)
        if not fold and (pattern.norm or pattern.offset):
            pattern = LayerPattern()
        out[name] = pattern
    return out


@contextlib.contextmanager
def _hooks(named: Mapping[str, nn.Module], sink: dict,
           attention: Optional[Mapping[str, nn.Module]] = None) -> Iterator[None]:
    """Every call of each named module appends ``(input, output)`` to ``sink[name]``.

    ``attention`` maps an ``out_proj`` name to its ``nn.MultiheadAttention``, which applies it
    functionally: the hook on the attention re-runs it with ``out_proj`` as the identity to get
    the projection's input (the heads' concatenated output)."""
    handles = []
    busy = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            # clone: a later in-place op (ReLU(inplace=True), +=) would rewrite the records
            sink.setdefault(name, []).append((args[0].detach().clone(), out.detach().clone()))
        return hook

    def make_attention(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if busy:   # the re-run below
                return
            E = module.out_proj.weight.shape[0]
            eye = torch.eye(E, dtype=module.out_proj.weight.dtype, device=module.out_proj.weight.device)
            busy.append(True)
            try:
                heads = torch.func.functional_call(
                    module, {"out_proj.weight": eye, "out_proj.bias": torch.zeros_like(eye[0])},
                    args, kwargs)[0]
            finally:
                busy.pop()
            sink.setdefault(name, []).append((heads.detach().clone(), out[0].detach().clone()))
        return hook

    try:
        for name, module in named.items():
            handles.append(module.register_forward_hook(make(name)))
        for name, module in (attention or {}).items():
            handles.append(module.register_forward_hook(make_attention(name), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Replay(torch.fx.Interpreter):
    """Runs a traced model node by node, keeping the values of the ``watch`` nodes (residual
    adds) in ``sink["@" + node name]``; the model's own modules run, so hooks fire."""

    def __init__(self, module: torch.fx.GraphModule, watch: set, sink: dict):
        super().__init__(module)
        self.watch, self.sink = watch, sink

    def run_node(self, node: Any) -> Any:
        value = super().run_node(node)
        if node.name in self.watch:
            self.sink.setdefault("@" + node.name, []).append(value.detach().clone())
        return value


def _forward(model: nn.Module, replay: Optional[_Replay], args: tuple, kwargs: dict) -> Any:
    if replay is None:
        return model(*args, **kwargs)
    placeholders = [n.target for n in replay.module.graph.nodes if n.op == "placeholder"]
    if kwargs:   # keyword arguments in the traced signature's order (defaults kept)
        args = list(args)
        for name in placeholders[len(args):]:
            if name not in kwargs:
                break
            args.append(kwargs.pop(name))
        if kwargs:
            msg = f"inputs give keyword arguments {sorted(kwargs)} the traced forward does not take"
            raise TypeError(msg)
    return replay.run(*args)


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


@contextlib.contextmanager
def _plain_attention() -> Iterator[None]:
    """The fused fast path of nn.MultiheadAttention / TransformerEncoderLayer (taken in eval
    mode without grad) skips the Linear modules' hooks: turned off while capturing."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    try:
        mha.set_fastpath_enabled(False)
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _check_options(max_samples: Any, seed: Any) -> None:
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        msg = f"max_samples must be a positive integer or None, got {max_samples!r}"
        raise ValueError(msg)
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"seed must be an integer, got {seed!r}"
        raise TypeError(msg)


def _run(models: Sequence[nn.Module], inputs: Any, names: Sequence[str], patterns: Mapping,
         take: Any, max_samples: Optional[int], seed: int, dtype: Any, device: Any) -> tuple:
    """Stream ``inputs`` through every model (hooks on ``names`` and their BatchNorms, residual
    adds replayed from the traced graph); ``take(sinks, name)`` -> the (X, pre, S) rows kept
    for a layer. Returns ``({name: (X, pre, S or None, rows_seen, calls)}, {name: reason})``
    with the layers the forward pass never called in the second dict."""
    reservoirs = {name: Reservoir(max_samples, seed + 7919 * i) for i, name in enumerate(names)}
    run_device = model_device(models[0])
    sinks = [dict() for _ in models]
    projections = attention_projections(models[0])
    hooked = {n for n in names if n not in projections}
    hooked |= {patterns[n].norm for n in names if patterns[n].norm}
    named = [{n: dict(m.named_modules())[n] for n in hooked} for m in models]
    attention = [{n: dict(m.named_modules())[projections[n]] for n in names if n in projections}
                 for m in models]
    watch = {patterns[n].offset for n in names if patterns[n].offset}
    replays = [_Replay(torch.fx.symbolic_trace(m), watch, sink) if watch else None
               for m, sink in zip(models, sinks)]
    calls: dict = {}
    missing: dict = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_eval_mode(*models))
        stack.enter_context(_plain_attention())
        for hooks, attn, sink in zip(named, attention, sinks):
            stack.enter_context(_hooks(hooks, sink, attn))
        batches = 0
        for args, kwargs in forward_args(inputs):
            batches += 1
            args, kwargs = to_device(args, run_device), to_device(kwargs, run_device)
            for model, replay, sink in zip(models, replays, sinks):
                sink.clear()
                _forward(model, replay, args, dict(kwargs))
            for name in names:
                if name in missing:
                    continue
                if any(name not in sink for sink in sinks):
                    missing[name] = "not called by the model's forward pass (used functionally?)"
                    continue
                calls[name] = len(sinks[0][name])
                arrays = [a for a in take(sinks, name) if a is not None]
                arrays = [a.to(device=device or a.device, dtype=dtype or a.dtype) for a in arrays]
                reservoirs[name].add(*arrays)
    if batches == 0:
        msg = "inputs yielded no batches"
        raise ValueError(msg)
    out = {}
    for name in names:
        if name in missing:
            continue
        if reservoirs[name].seen == 0:
            msg = (f"inputs hold no rows: layer {name!r} received 0 calibration rows in "
                   f"{batches} batch(es); give inputs with at least one sample")
            raise ValueError(msg)
        kept = reservoirs[name].result()
        X, pre = kept[0], kept[1]
        S = kept[2] if len(kept) > 2 else None
        out[name] = (X, pre, S, reservoirs[name].seen, calls[name])
    return out, missing


def _check_finite(name: str, X: torch.Tensor, pre: torch.Tensor) -> None:
    for what, a in (("input", X), ("output", pre)):
        bad = int((~torch.isfinite(a)).sum())
        if bad:
            msg = (f"layer {name!r}: {bad} NaN/Inf entries in the recorded {what}; check the "
                   "model and the calibration data")
            raise ValueError(msg)


def _check_rows(data: LayerData) -> None:
    P = data.X.shape[0]
    N = data.X.shape[1] // data.groups
    if P < N:
        target, at = run_sparsity(data.name)
        msg = (f"layer {data.name!r} has {P} calibration rows for {N} inputs per neuron "
               f"(ratio {P / N:.3g}): its program is underdetermined and can return a very "
               f"sparse layer that fits only these rows. Rows needed: {N} for a determined fit; "
               f"Net-Trim's sample complexity O(s log(N/s)) for s nonzero weights per neuron is "
               f"about {rows_needed(N, keep=1.0 - target)} {at}. Give more calibration data "
               "(or a larger max_samples / --max-rows)")
        warnings.warn(msg, CalibrationWarning, stacklevel=3)


def _layer_data(name: str, module: nn.Module, X, pre, S, seen, calls,
                pattern: LayerPattern, fold: bool) -> LayerData:
    _check_finite(name, X, pre)
    relu = pattern.activation in (RELU_PROGRAM if fold else ("relu",))
    post = torch.relu(pre if S is None else pre + S) if relu else pre
    if relu and pattern.activation == "relu6":
        post = post.clamp(max=6.0)
    data = LayerData(name=name, kind=next(k for t, k in _KINDS if isinstance(module, t)),
                     X=X, pre=pre, post=post, activation=pattern.activation,
                     has_bias=module.bias is not None, weight_shape=tuple(module.weight.shape),
                     rows_seen=seen, norm=pattern.norm, offset=S if relu else None,
                     groups=getattr(module, "groups", 1), calls=calls)
    _check_rows(data)
    return data


def capture(model: nn.Module, inputs: Any, layers: Any = None, *,
            ignore: Iterable[str] = (), activations: Optional[Mapping[str, Optional[str]]] = None,
            max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
            dtype: Optional[torch.dtype] = None, plan: Optional[ModelPlan] = None,
            fold: bool = True) -> Captured:
    """Record the input, pre- and post-activation output of each prunable layer.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (dropout off) under ``torch.no_grad``; its mode is restored after.
    inputs : Tensor, dict or iterable of batches
        A tensor (split into batches of :data:`nettrim.inputs.DEFAULT_BATCH`), a dict of keyword arguments
        (one batch), or an iterable of batches streamed one by one (a DataLoader); what each
        batch feeds to ``forward`` is :func:`nettrim.inputs.model_inputs` (tensor, dict, or ``(inputs,
        labels)`` whose inputs may be a tuple of tensors).
    layers, ignore
        Selection, see :func:`prunable_layers`.
    activations : dict, optional
        ``{name: activation or None}`` overriding the graph's reading (functional ReLUs
        where tracing fails); values from :data:`nettrim.graph.ACTIVATION_NAMES`.
    max_samples : int, optional
        Keep at most this many rows per layer: a uniform random subset (seeded; for a conv,
        of output positions/patches; for a Linear on sequences, of tokens), chosen while
        streaming so memory stays bounded (about twice the kept rows).
        ``LayerData.rows_seen`` says how many there were.
    seed : int
        Seed of the subsampling: the same seed on the same data keeps the same rows.
    device, dtype : optional
        Where and in which dtype the records are kept (default: as the model produces them).
    plan : ModelPlan, optional
        The graph reading (:func:`nettrim.graph.analyze`) when the caller has it already.
    fold : bool, default True
        True: what :func:`nettrim.prune` solves, read from the same graph
        (:func:`nettrim.graph.analyze`, as :func:`detect_activations`): a BatchNorm after the
        layer folded in (``pre`` is its output, ``norm`` its name), a residual add before the
        ReLU recorded as ``offset``, and a ReLU6 layer's target ``min(relu(pre), 6)`` for the
        ReLU program; ``activation`` is the one that follows the layer. False: every layer's
        own output, for methods that work on the layer's weights alone (the baselines); a layer
        whose activation comes after a BatchNorm or an add is then linear (``activation`` None),
        and only "relu" layers have ``post = relu(pre)``.

    Returns
    -------
    Captured
        ``{name: LayerData}`` in model order, with ``.skipped`` (``{name: reason}``: layers
        never called by the forward pass, and the unsupported layers of
        :func:`nettrim.graph.skipped_layers`). Hooks are removed before returning, also on
        error. A layer with fewer rows than inputs raises a :class:`CalibrationWarning`.
    """
    _check_options(max_samples, seed)
    selected = prunable_layers(model, layers, ignore)
    plan = plan or analyze(model)
    patterns = _resolve_patterns(plan, list(selected), activations, fold)
    raw, missing = _run([model], inputs, list(selected), patterns,
                        lambda sinks, n: call_rows(n, selected[n], patterns[n], sinks[0]),
                        max_samples, seed, dtype, device)
    data = {n: _layer_data(n, selected[n], *raw[n], patterns[n], fold) for n in selected
            if n in raw}
    return Captured(data, {**plan.skipped, **missing})


def capture_cascade(original: nn.Module, pruned: nn.Module, inputs: Any, name: str, *,
                    activations: Optional[Mapping[str, Optional[str]]] = None,
                    max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
                    dtype: Optional[torch.dtype] = None, plan: Optional[ModelPlan] = None,
                    fold: bool = True) -> Optional[LayerData]:
    """One layer's cascade data: input ``X`` (and a residual offset) from ``pruned``, the
    target outputs from ``original``.

    Both models see the same batches in the same pass, so rows pair up even when the data
    loader shuffles. ``pruned`` must have the same architecture as ``original``. Returns None
    when the forward pass never calls the layer. ``fold`` as in :func:`capture`.
    """
    _check_options(max_samples, seed)
    module = prunable_layers(original, [name])[name]
    prunable_layers(pruned, [name])
    plan = plan or analyze(original)
    patterns = _resolve_patterns(plan, [name], activations, fold)
    pattern = patterns[name]

    def take(sinks, n):
        X_hat, _, S_hat = call_rows(n, module, pattern, sinks[1])
        _, pre, S = call_rows(n, module, pattern, sinks[0])
        if S is None:
            return X_hat, pre, None
        # the original's target relu(pre + S) is kept as pre + S - S_hat, so that
        # relu(pre' + S_hat) reproduces it with the pruned network's offset S_hat
        return X_hat, pre + S - S_hat, S_hat

    raw, missing = _run([original, pruned], inputs, [name], patterns, take, max_samples, seed,
                        dtype, device)
    if name in missing:
        return None
    return _layer_data(name, module, *raw[name], pattern, fold)


def subsample_note(data: LayerData) -> str:
    """A one-line description of what was kept, for reports."""
    kept = data.X.shape[0]
    unit = "rows" if data.kind == "linear" else "patches"
    if kept == data.rows_seen:
        return f"{kept} {unit} (all)"
    return f"{kept} of {data.rows_seen} {unit} ({100 * kept / data.rows_seen:.1f}%, seeded)"
