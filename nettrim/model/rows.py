"""A layer's calls as the rows of its program, and the seeded subsample of those rows.

A ``Linear`` call gives one row per sample (per token on ``(batch, tokens, features)``). A
``Conv2d`` (``Conv1d``) call is turned into a matrix product: its input is unfolded into patches
(``F.unfold``, padding applied as the layer pads), one row per output position, so
``patches @ weight.flatten(1).T`` equals the convolution's output (bias aside). A BatchNorm or a
residual add after the layer gives its rows per channel the same way. :class:`Reservoir` keeps a
uniform random subset of the rows of a stream, seeded, in bounded memory;
:class:`StatisticsSink` keeps the statistics of every row of a linear layer instead (the Gram
domain, :class:`solvers.GramStats`: ``X^T X``, ``X^T Y``, ``||Y||^2``), in ``O(N^2 + N M)``
memory whatever the number of rows.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from solvers import GramStats

from .graph import LayerPattern
from .kinds import TransposedLinear

__all__ = ["Reservoir", "StatisticsSink", "call_rows", "check_records"]


def _padding(module: nn.Module) -> list[int]:
    """F.pad amounts (last dim first) of a Conv1d/Conv2d's padding."""
    kernel, dilation = module.kernel_size, module.dilation
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [0] * (2 * len(kernel))
        pad = []   # "same": torch puts the odd element on the right/bottom
        for k, d in zip(reversed(kernel), reversed(dilation)):
            t = d * (k - 1)
            pad += [t // 2, t - t // 2]
        return pad
    pad = []
    for p in reversed(module.padding):
        pad += [p, p]
    return pad


def _as_rows(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple:
    """(input rows (B, N), output rows (B, M)) of one call."""
    if isinstance(module, (nn.Linear, TransposedLinear)):
        return x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
    if x.ndim == len(module.kernel_size) + 1:  # unbatched conv input
        x, out = x[None], out[None]
    pad = _padding(module)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):   # a (k, 1) kernel over a (L, 1) image
        x, kernel, dilation, stride = x[..., None], (kernel[0], 1), (dilation[0], 1), (stride[0], 1)
    patches = F.unfold(x, kernel, dilation=dilation, stride=stride)
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return rows, _channel_rows(out)


def _channel_rows(out: torch.Tensor) -> torch.Tensor:
    """A (B, C, ...) conv or BatchNorm output as (B * positions, C) rows."""
    return out.movedim(1, -1).reshape(-1, out.shape[1])


class Reservoir:
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


def check_records(name: str, X: torch.Tensor, pre: torch.Tensor) -> None:
    """Raise ValueError naming the layer when its recorded rows hold NaN or Inf."""
    for what, a in (("input", X), ("output", pre)):
        bad = int((~torch.isfinite(a)).sum())
        if bad:
            msg = (f"layer {name!r}: {bad} NaN/Inf entries in the recorded {what}; check the "
                   "model and the calibration data")
            raise ValueError(msg)


class StatisticsSink:
    """Accumulates the statistics of a linear layer's rows batch by batch, keeping no row: the
    sink of :class:`Reservoir`'s interface for layers whose program has no per-row constraint.

    ``ones``: the statistics carry a ones column last (the layer, or the BatchNorm folded into
    it, has a bias). ``result()`` is ``[GramStats]``; ``seen`` counts the rows.
    """

    def __init__(self, name: str, ones: bool):
        self.name, self.ones = name, ones
        self.stats: Optional[GramStats] = None
        self.seen = 0

    def add(self, X: torch.Tensor, pre: torch.Tensor, *rest: torch.Tensor) -> None:
        if rest:
            msg = f"layer {self.name!r}: statistics hold no per-row offset"
            raise ValueError(msg)
        check_records(self.name, X, pre)
        part = GramStats.from_rows(X, pre, ones=self.ones)
        self.stats = part if self.stats is None else self.stats.merge(part)
        self.seen += X.shape[0]

    def result(self) -> list:
        return [self.stats]


def call_rows(name: str, module: nn.Module, pattern: LayerPattern, sink: dict) -> tuple:
    """``(X, pre, S)`` rows of every call of ``name`` in one batch (S None without offset)."""
    calls = sink[name]
    Xs, pres, offsets = [], [], []
    norms = sink.get(pattern.norm, []) if pattern.norm else []
    adds = sink.get("@" + pattern.offset, []) if pattern.offset else []
    for i, (x, out) in enumerate(calls):
        rows, pre = _as_rows(module, x, out)
        if pattern.norm and i < len(norms):
            pre = _channel_rows(norms[i][1])
        Xs.append(rows)
        pres.append(pre)
        if pattern.offset and i < len(adds):
            total = adds[i].reshape(-1, pre.shape[1]) \
                if isinstance(module, (nn.Linear, TransposedLinear)) \
                else _channel_rows(adds[i])
            offsets.append(total - pre)
    X = torch.cat(Xs)
    pre = torch.cat(pres)
    S = torch.cat(offsets) if offsets else None
    return X, pre, S
