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
import copy
import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from solvers import GramStats

from ..checks import check_model
from ..inputs import forward_args, model_device, reiterable, to_device
from .graph import (ACTIVATION_NAMES, PRUNABLE, LayerPattern, ModelPlan, analyze,
                    attention_projections, default_skipped, describe_skipped, skipped_layers)
from .calibration import rows_needed, run_sparsity
from .hooks import Replay, eval_mode, forward_replay, plain_attention, record_calls
from .kinds import TransposedLinear, weight_matrix
from .rows import Reservoir, StatisticsSink, call_rows, check_records

__all__ = ["LayerData", "Captured", "capture", "capture_cascade", "prunable_layers",
           "detect_activations", "layer_matrix", "group_blocks", "subsample_note",
           "CalibrationWarning", "rows_needed", "SUPPORTED", "RELU_PROGRAM", "record_layers",
           "resolve_patterns", "check_options", "SOLVE_DTYPES", "in_solver_dtype",
           "statistics_layers"]

#: Module types Net-Trim prunes.
SUPPORTED = PRUNABLE
#: Activations solved with the ReLU program (with ``fold=True``): ReLU6 with its target clipped at
#: 6. Clipping to [0, 6] is a projection onto a set holding Y, so it only brings the pruned
#: output closer: the ReLU program's bound ``||relu(X W^T) - Y|| <= epsilon`` holds for ReLU6.
RELU_PROGRAM = ("relu", "relu6")
_KINDS = ((nn.Linear, "linear"), (nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d"),
          (TransposedLinear, "linear"))
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
    stats : solvers.GramStats or None
        Captured with ``statistics=True``, a layer solved by the linear program (no ReLU
        program, no residual offset, one group): the statistics of all its rows, ``X^T X``,
        ``X^T pre`` and ``||pre||^2`` (a ones column last where the layer or its folded
        BatchNorm has a bias); ``X``, ``pre`` and ``post`` are then None.
    """

    name: str
    kind: str
    X: Optional[torch.Tensor]
    pre: Optional[torch.Tensor]
    post: Optional[torch.Tensor]
    activation: Optional[str]
    has_bias: bool
    weight_shape: tuple
    rows_seen: int
    norm: Optional[str] = None
    offset: Optional[torch.Tensor] = None
    groups: int = 1
    calls: int = 1
    stats: Optional[GramStats] = None

    @property
    def rows(self) -> int:
        """Rows of the program, P (kept rows, or every row the statistics hold)."""
        return self.X.shape[0] if self.X is not None else self.stats.rows

    @property
    def inputs(self) -> int:
        """Inputs of one neuron, N (of one group for a grouped convolution)."""
        if self.X is None:
            return self.stats.G.shape[0] - self.stats.ones
        return self.X.shape[1] // self.groups

    def __repr__(self) -> str:
        extra = "".join([f", norm={self.norm}" if self.norm else "",
                         ", offset" if self.offset is not None else "",
                         f", groups={self.groups}" if self.groups > 1 else ""])
        what = (f"X={tuple(self.X.shape)}, Y={tuple(self.post.shape)}" if self.X is not None
                else f"statistics of N={self.inputs}, M={self.stats.C.shape[1]}")
        return (f"LayerData({self.name!r}, {self.kind}, {what}, activation={self.activation}"
                f"{extra}, rows {self.rows} of {self.rows_seen})")


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
    if data.X is None:   # statistics are float64; the program is built in a solver dtype
        if data.stats.dtype in SOLVE_DTYPES:
            return data
        stats = copy.copy(data.stats)
        stats.dtype = torch.float32
        return dataclasses.replace(data, stats=stats)
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
    by_default = default_skipped(model)   # the LM head: only when named
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
        elif not (isinstance(item, type) and (issubclass(item, nn.Module) or item in SUPPORTED)):
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
        if name in by_default and name not in wanted:
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
    """The weight of a Linear / Conv1d / Conv2d / transformers Conv1D as an (M, N) matrix
    (a view, detached)."""
    if not isinstance(module, SUPPORTED):
        msg = (f"module must be nn.Linear, nn.Conv1d, nn.Conv2d or transformers' Conv1D, got "
               f"{type(module).__name__}")
        raise TypeError(msg)
    return weight_matrix(module)


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


def resolve_patterns(plan: ModelPlan, names: Sequence[str],
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


def check_options(max_samples: Any, seed: Any) -> None:
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        msg = f"max_samples must be a positive integer or None, got {max_samples!r}"
        raise ValueError(msg)
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"seed must be an integer, got {seed!r}"
        raise TypeError(msg)


def _run(models: Sequence[nn.Module], streams: Sequence[Any], names: Sequence[str],
         patterns: Mapping, take: Any, max_samples: Optional[int], seed: Any, dtype: Any,
         device: Any, outputs: Optional[list] = None,
         statistics: Optional[Mapping[str, bool]] = None) -> tuple:
    """Stream ``streams[i]`` through ``models[i]``, batch by batch together (hooks on ``names``
    and their BatchNorms, residual adds replayed from the traced graph); ``take(sinks, name)``
    -> the (X, pre, S) rows kept for a layer. ``seed``: an int (layer i of ``names`` subsampled
    with ``seed + 7919 i``) or ``{name: seed}``; ``outputs``: a list per model that receives
    each batch's return value; ``statistics``: ``{name: ones}`` of the layers whose rows are
    accumulated as :class:`solvers.GramStats` (every row; ``X`` is then the statistics and
    ``pre`` None). Returns ``({name: (X, pre, S or None, rows_seen, calls)}, {name: reason})``
    with the layers the forward pass never called in the second dict."""
    seeds = seed if isinstance(seed, Mapping) else \
        {name: seed + 7919 * i for i, name in enumerate(names)}
    statistics = statistics or {}
    reservoirs = {name: StatisticsSink(name, statistics[name]) if name in statistics
                  else Reservoir(max_samples, seeds[name]) for name in names}
    run_device = model_device(models[0])
    sinks = [dict() for _ in models]
    projections = attention_projections(models[0])
    hooked = {n for n in names if n not in projections}
    hooked |= {patterns[n].norm for n in names if patterns[n].norm}
    named = [{n: dict(m.named_modules())[n] for n in hooked} for m in models]
    attention = [{n: dict(m.named_modules())[projections[n]] for n in names if n in projections}
                 for m in models]
    watch = {patterns[n].offset for n in names if patterns[n].offset}
    replays = [Replay(torch.fx.symbolic_trace(m), watch, sink) if watch else None
               for m, sink in zip(models, sinks)]
    calls: dict = {}
    missing: dict = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(eval_mode(*models))
        stack.enter_context(plain_attention())
        for hooks, attn, sink in zip(named, attention, sinks):
            stack.enter_context(record_calls(hooks, sink, attn))
        batches = 0
        # one pass over shared inputs (a shuffling loader gives both models the same batch)
        shared = all(stream is streams[0] for stream in streams)
        for fed in ((b,) * len(streams) for b in forward_args(streams[0])) if shared else \
                zip(*(forward_args(stream) for stream in streams)):
            batches += 1
            for i, (model, replay, sink) in enumerate(zip(models, replays, sinks)):
                args, kwargs = to_device(fed[i], run_device)
                sink.clear()
                out = forward_replay(model, replay, args, dict(kwargs))
                if outputs is not None:
                    outputs[i].append(out)
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
        X, pre = kept[0], kept[1] if len(kept) > 1 else None   # (statistics: X alone)
        S = kept[2] if len(kept) > 2 else None
        out[name] = (X, pre, S, reservoirs[name].seen, calls[name])
    return out, missing




def _check_rows(data: LayerData) -> None:
    P, N = data.rows, data.inputs
    if P < N:
        target, at = run_sparsity(data.name)
        msg = (f"layer {data.name!r} has {P} calibration rows for {N} inputs per neuron "
               f"(ratio {P / N:.3g}): its program is underdetermined and can return a very "
               f"sparse layer that fits only these rows. Rows needed: {N} for a determined fit; "
               f"Net-Trim's sample complexity O(s log(N/s)) for s nonzero weights per neuron is "
               f"about {rows_needed(N, keep=1.0 - target)} {at}. Give more calibration data "
               "(or a larger max_samples / --max-rows)")
        warnings.warn(msg, CalibrationWarning, stacklevel=3)


def statistics_layers(modules: Mapping[str, nn.Module], patterns: Mapping,
                      fold: bool) -> dict[str, bool]:
    """``{name: ones}`` of the layers of ``modules`` that :func:`capture` records as
    statistics when asked (``statistics=True``): those solved by the linear program (no ReLU
    program, no residual offset) with one group; ``ones``: a bias in the program (the
    layer's, or its folded BatchNorm's shift)."""
    return {n: m.bias is not None or patterns[n].norm is not None
            for n, m in modules.items()
            if not _relu_program(patterns[n], fold) and not patterns[n].offset
            and getattr(m, "groups", 1) == 1}


def _relu_program(pattern: LayerPattern, fold: bool) -> bool:
    return pattern.activation in (RELU_PROGRAM if fold else ("relu",))


def _layer_data(name: str, module: nn.Module, X, pre, S, seen, calls,
                pattern: LayerPattern, fold: bool) -> LayerData:
    stats = X if isinstance(X, GramStats) else None
    if stats is not None:   # checked as the rows came (nettrim.model.rows.StatisticsSink)
        X = None
    else:
        check_records(name, X, pre)
    relu = _relu_program(pattern, fold)
    post = torch.relu(pre if S is None else pre + S) if relu else pre
    if relu and pattern.activation == "relu6":
        post = post.clamp(max=6.0)
    data = LayerData(name=name, kind=next(k for t, k in _KINDS if isinstance(module, t)),
                     X=X, pre=pre, post=post, activation=pattern.activation, stats=stats,
                     has_bias=module.bias is not None,
                     weight_shape=tuple(weight_matrix(module).shape)
                     if isinstance(module, TransposedLinear) else tuple(module.weight.shape),
                     rows_seen=seen, norm=pattern.norm, offset=S if relu else None,
                     groups=getattr(module, "groups", 1), calls=calls)
    _check_rows(data)
    return data


def capture(model: nn.Module, inputs: Any, layers: Any = None, *,
            ignore: Iterable[str] = (), activations: Optional[Mapping[str, Optional[str]]] = None,
            max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
            dtype: Optional[torch.dtype] = None, plan: Optional[ModelPlan] = None,
            fold: bool = True, statistics: bool = False) -> Captured:
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
    statistics : bool, default False
        True: the layers solved by the linear program (no ReLU program, no residual offset,
        one group; :func:`statistics_layers`) keep no rows but the statistics of all of them
        (``LayerData.stats``, :class:`solvers.GramStats`, ``O(N^2 + N M)`` memory whatever the
        number of rows; ``max_samples`` does not apply to them), which
        :func:`nettrim.prune_layer` solves exactly as it would the rows.

    Returns
    -------
    Captured
        ``{name: LayerData}`` in model order, with ``.skipped`` (``{name: reason}``: layers
        never called by the forward pass, and the unsupported layers of
        :func:`nettrim.graph.skipped_layers`). Hooks are removed before returning, also on
        error. A layer with fewer rows than inputs raises a :class:`CalibrationWarning`.
    """
    check_options(max_samples, seed)
    selected = prunable_layers(model, layers, ignore)
    plan = plan or analyze(model, example=inputs if reiterable(inputs) else None)
    patterns = resolve_patterns(plan, list(selected), activations, fold)
    raw, missing = _run([model], [inputs], list(selected), patterns,
                        lambda sinks, n: call_rows(n, selected[n], patterns[n], sinks[0]),
                        max_samples, seed, dtype, device, statistics=statistics_layers(
                            selected, patterns, fold) if statistics else None)
    data = {n: _layer_data(n, selected[n], *raw[n], patterns[n], fold) for n in selected
            if n in raw}
    skipped = {n: r for n, r in plan.skipped.items() if n not in selected}
    return Captured(data, {**skipped, **missing})


def capture_cascade(original: nn.Module, pruned: nn.Module, inputs: Any, name: str, *,
                    activations: Optional[Mapping[str, Optional[str]]] = None,
                    max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
                    dtype: Optional[torch.dtype] = None, plan: Optional[ModelPlan] = None,
                    fold: bool = True, statistics: bool = False) -> Optional[LayerData]:
    """One layer's cascade data: input ``X`` (and a residual offset) from ``pruned``, the
    target outputs from ``original``.

    Both models see the same batches in the same pass, so rows pair up even when the data
    loader shuffles. ``pruned`` must have the same architecture as ``original``. Returns None
    when the forward pass never calls the layer. ``fold`` and ``statistics`` as in
    :func:`capture` (statistics pair the pruned model's inputs with the original's targets
    row by row as they come).
    """
    check_options(max_samples, seed)
    module = prunable_layers(original, [name])[name]
    prunable_layers(pruned, [name])
    plan = plan or analyze(original, example=inputs if reiterable(inputs) else None)
    patterns = resolve_patterns(plan, [name], activations, fold)
    raw, missing = _run([original, pruned], [inputs, inputs], [name], patterns,
                        _pair_take({name: module}, patterns), max_samples, seed, dtype, device,
                        statistics=statistics_layers({name: module}, patterns, fold)
                        if statistics else None)
    if name in missing:
        return None
    return _layer_data(name, module, *raw[name], patterns[name], fold)


def _pair_take(modules: Mapping[str, nn.Module], patterns: Mapping):
    """``take`` of a cascade pass: inputs (and a residual offset) from the pruned model
    (``sinks[1]``), targets from the original (``sinks[0]``)."""
    def take(sinks, n):
        X_hat, _, S_hat = call_rows(n, modules[n], patterns[n], sinks[1])
        _, pre, S = call_rows(n, modules[n], patterns[n], sinks[0])
        if S is None:
            return X_hat, pre, None
        # the original's target relu(pre + S) is kept as pre + S - S_hat, so that
        # relu(pre' + S_hat) reproduces it with the pruned network's offset S_hat
        return X_hat, pre + S - S_hat, S_hat
    return take


def record_layers(models: Sequence[nn.Module], streams: Sequence[Any],
                  modules: Mapping[str, nn.Module], patterns: Mapping, *, seeds: Mapping,
                  max_samples: Optional[int] = None, device: Any = None,
                  dtype: Optional[torch.dtype] = None, fold: bool = False,
                  outputs: Optional[list] = None, statistics: bool = False
                  ) -> tuple[dict, dict]:
    """The :class:`LayerData` of ``modules`` (named as in ``models[0]``) from one pass of
    ``streams[i]`` through ``models[i]``: one model (its own inputs and outputs) or two (a
    cascade pair: inputs from ``models[1]``, the pruned one, targets from ``models[0]``).
    Used on one block of a model at a time (:mod:`nettrim.model.blocks`); ``seeds``
    ``{name: seed}`` of each layer's row subsample, ``outputs`` as in :func:`_run`,
    ``statistics`` as in :func:`capture`.
    Returns ``({name: LayerData}, {name: reason never called})``."""
    names = list(modules)
    take = _pair_take(modules, patterns) if len(models) == 2 else \
        (lambda sinks, n: call_rows(n, modules[n], patterns[n], sinks[0]))
    raw, missing = _run(models, streams, names, patterns, take, max_samples, seeds, dtype,
                        device, outputs, statistics=statistics_layers(modules, patterns, fold)
                        if statistics else None)
    return {n: _layer_data(n, modules[n], *raw[n], patterns[n], fold) for n in raw}, missing


def subsample_note(data: LayerData) -> str:
    """A one-line description of what was kept, for reports."""
    kept = data.rows
    unit = "rows" if data.kind == "linear" else "patches"
    if data.X is None:
        return f"statistics of {kept} {unit} (all)"
    if kept == data.rows_seen:
        return f"{kept} {unit} (all)"
    return f"{kept} of {data.rows_seen} {unit} ({100 * kept / data.rows_seen:.1f}%, seeded)"
