"""One model layer's program in its solved form, and the way back to the model.

:class:`LayerProgram` folds a BatchNorm ``a * z + c`` after the layer into its weights
(``diag(a) W``, bias ``a b + c``), carries the residual offset S of a ReLU after an add, splits
a grouped convolution into one program per group (:func:`merge_groups` joins the solutions),
solves with :func:`nettrim.layer.prune_layer` (rows, or the statistics of a linear layer's rows)
and writes the solution back to the unchanged architecture (the BatchNorm's shift absorbs the
refit bias); :func:`fold_into` gives the folded form instead (``fold_bn=True``).
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

from solvers import OPTIMAL, OPTIMAL_INACCURATE, SUCCESS
from solvers.problem import safe_norm

from .layer import prune_layer
from .model.capture import RELU_PROGRAM, LayerData, group_blocks, in_solver_dtype, layer_matrix
from .model.graph import batchnorm_affine
from .model.surgery import set_layer_weight
from .results import LayerPruneResult

__all__ = ["LayerProgram", "fold_into", "merge_groups", "rows_note"]


def rows_note(data: LayerData) -> str:
    P, N = data.rows, data.inputs
    stats = "statistics of all rows" if data.X is None else ""
    if P >= N:
        return stats
    return "; ".join(n for n in (stats, f"{P} rows for {N} inputs (underdetermined, see "
                                        "CalibrationWarning)") if n)


class LayerProgram:
    """One layer's program in its solved form: the BatchNorm ``a * z + c`` folded into the
    weights (``diag(a) W``, bias ``a b + c``), the residual offset S, and one block per group of
    a grouped convolution. ``write_back`` maps the solution to the unchanged architecture."""

    def __init__(self, data: LayerData, module: nn.Module, bn: Optional[nn.Module]):
        data = in_solver_dtype(data)   # half precision: solved in float32 (note in _finish)
        self.data, self.module, self.bn = data, module, bn
        self.relu = data.activation in RELU_PROGRAM
        self.X, self.Y, self.pre = data.X, data.post, data.pre
        like = data.X if data.X is not None else \
            torch.empty(0, dtype=data.stats.dtype, device=data.stats.G.device)
        self.S = None if data.offset is None else data.offset.to(like)
        # clones: the write-back overwrites the module's tensors
        W = layer_matrix(module).to(like, copy=True)
        b = None if module.bias is None else module.bias.detach().to(like, copy=True)
        self.nonzeros_before = int((W != 0).sum())
        self.a = None
        if bn is not None:
            a, c = batchnorm_affine(bn)
            self.a, self.c = a.to(like), c.to(like)
            W = self.a[:, None] * W
            b = self.c + (0 if b is None else self.a * b)
        self.W0, self.b0 = W, b
        self.program = "+".join(p for p in (
            data.activation if self.relu else f"linear({data.activation})" if data.activation
            else "linear",
            "bn" if bn is not None else "", "offset" if self.S is not None else "",
            f"groups={data.groups}" if data.groups > 1 else "") if p)

    def solve(self, *, sparsity, epsilon, cascade, cascade_slack, **kwargs) -> LayerPruneResult:
        if self.X is None:
            return self._solve_statistics(sparsity, epsilon, cascade_slack, **kwargs)
        M, N = self.W0.shape
        parts = []
        for cols, out in group_blocks(self.data.groups, self.X.shape[1], M):
            X, Y = self.X[:, cols], self.Y[:, out]
            S = None if self.S is None else self.S[:, out]
            W0 = self.W0[out]
            b0 = None if self.b0 is None else self.b0[out]
            V = None
            pre_hat = X @ W0.T + (0 if b0 is None else b0) + (0 if S is None else S)
            if cascade and self.relu:
                V = pre_hat
            common = dict(relu=self.relu, bias=b0 is not None, W0=W0, b0=b0, V=V, offset=S,
                          pre=self.pre[:, out] if self.relu else None, **kwargs)
            if sparsity is not None:
                parts.append(prune_layer(X, Y, sparsity=sparsity, **common))
            elif cascade_slack is not None:
                D = pre_hat - Y
                if self.relu:
                    D = D.masked_fill(Y <= 0, 0.0)
                eps_abs = math.sqrt(cascade_slack) * float(torch.linalg.vector_norm(D))
                parts.append(prune_layer(X, Y, epsilon=eps_abs, absolute=True, **common))
            else:
                parts.append(prune_layer(X, Y, epsilon=epsilon, **common))
        # the candidate kept (nettrim.layer.program): "linear..." a linear program's support
        # (or the linear refit), "...+soft" the ReLU-aware refit; said in the name, with the
        # count of groups where only some kept it
        names = [p.report.get("program", "relu") for p in parts]
        linear = sum(n.startswith("linear") for n in names)
        soft = sum(n.endswith("+soft") for n in names)
        act = self.data.activation
        if linear:
            self.program = self.program.replace(act, f"linear({act})", 1) + (
                f"(linear in {linear})" if linear < len(parts) else "")
            act = f"linear({act})"
        if soft:
            self.program = self.program.replace(act, f"{act}+soft", 1) + (
                f"(soft in {soft})" if soft < len(parts) else "")
        if len(parts) == 1:
            return parts[0]
        for p in parts:   # one line for the groups instead of one per group
            own = p.report.pop("program_note", None)
            if own:
                p.report["note"] = "; ".join(n for n in p.report["note"].split("; ") if n != own)
        merged = merge_groups(parts, self.Y)
        said = [f"linear program's support kept in {linear} of {len(parts)} groups" if linear
                else "", f"ReLU-aware refit in {soft} of {len(parts)} groups" if soft else ""]
        if linear or soft:
            note = "; ".join(n for n in said if n) + " (lower post-ReLU calibration error)"
            merged.report["note"] = "; ".join(n for n in (merged.report.get("note"), note) if n)
        return merged

    def _solve_statistics(self, sparsity, epsilon, cascade_slack, **kwargs) -> LayerPruneResult:
        """The linear program of a layer captured as statistics (one group, no offset)."""
        stats = self.data.stats
        common = dict(relu=False, bias=self.b0 is not None, W0=self.W0, b0=self.b0, **kwargs)
        if sparsity is not None:
            return prune_layer(stats, None, sparsity=sparsity, **common)
        if cascade_slack is not None:   # gamma times the original weights' error on these rows
            W = self.W0 if self.b0 is None else torch.cat([self.W0, self.b0[:, None]], 1)
            error_sq = float(stats.residual_sq(W.to(torch.float64)).sum())
            return prune_layer(stats, None, epsilon=math.sqrt(cascade_slack * error_sq),
                               absolute=True, **common)
        return prune_layer(stats, None, epsilon=epsilon, **common)

    @torch.no_grad()
    def write_back(self, result: LayerPruneResult) -> str:
        """Write the solution into the module (and its BatchNorm); a note or ''."""
        if self.bn is None:
            set_layer_weight(self.module, result.weight, result.bias)
            return ""
        a = self.a
        dead = a == 0
        W = torch.where(dead[:, None], torch.zeros_like(result.weight),
                        result.weight / torch.where(dead, torch.ones_like(a), a)[:, None])
        set_layer_weight(self.module, W, None)
        # the folded bias b' = a b + c' gives the BatchNorm's new shift c' = b' - a b
        shift = result.bias - (0 if self.module.bias is None else
                               a * self.module.bias.detach().to(a))
        bn = self.bn
        mean = bn.running_mean.detach().to(a)
        if bn.bias is not None:      # c' = beta' - a mean
            bn.bias.copy_((shift + a * mean).to(bn.bias))
        else:                        # c' = -a mean'
            keep = torch.where(dead, mean, -shift / torch.where(dead, torch.ones_like(a), a))
            bn.running_mean.copy_(keep.to(bn.running_mean))
        return f"{int(dead.sum())} channel(s) with BatchNorm scale 0 are dead" if bool(dead.any()) \
            else ""


def merge_groups(parts: list, Y: torch.Tensor) -> LayerPruneResult:
    """One result from a grouped layer's blocks (weights stacked by output channel)."""
    reps = [p.report for p in parts]
    weight = torch.cat([p.weight for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    y_norm = float(safe_norm(Y))
    sq = lambda key: math.sqrt(sum(r[key] ** 2 for r in reps))  # noqa: E731
    errors, start = 0.0, 0   # each block's absolute error, from its relative one
    for r, p in zip(reps, parts):
        m = p.weight.shape[0]
        errors += (r["relative_error"] * float(safe_norm(Y[:, start:start + m]))) ** 2
        start += m
    errors = math.sqrt(errors)
    statuses = [r["status"] for r in reps]
    status = next((s for s in statuses if s not in SUCCESS), None) or \
        (OPTIMAL_INACCURATE if OPTIMAL_INACCURATE in statuses else OPTIMAL)
    nonzeros, total = sum(r["nonzeros"] for r in reps), sum(r["total"] for r in reps)
    notes = sorted({r["note"] for r in reps if r.get("note")})
    report = dict(
        nonzeros=nonzeros, total=total, sparsity=1.0 - nonzeros / total,
        epsilon_abs=sq("epsilon_abs"), relative_error=errors / y_norm if y_norm > 0 else 0.0,
        status=status, iterations=sum(r["iterations"] for r in reps),
        seconds=sum(r["seconds"] for r in reps), solver=reps[0]["solver"],
        objective=sum(r["objective"] for r in reps), residual=sq("residual"),
        violation=max(r["violation"] for r in reps), groups=len(parts),
        peak_memory_mb=max((r.get("peak_memory_mb") or 0.0 for r in reps), default=None))
    report["epsilon"] = report["epsilon_abs"] / y_norm if y_norm > 0 else float("nan")
    if notes:
        report["note"] = f"{len(parts)} groups: " + "; ".join(notes)
    return LayerPruneResult(weight=weight, bias=bias, report=report)


@torch.no_grad()
def fold_into(model: nn.Module, name: str, norm: str, weight: torch.Tensor,
               bias: torch.Tensor) -> None:
    """The folded form: the layer holds ``diag(a) W`` and bias ``a b + c``; its BatchNorm
    becomes ``nn.Identity``."""
    layer = model.get_submodule(name)
    if layer.bias is None:   # a layer with a bias: rebuilt, the weight tensor kept
        new = copy.deepcopy(layer)
        new.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                            device=layer.weight.device))
        model.set_submodule(name, new)
        layer = new
    layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
    layer.bias.copy_(bias.to(layer.bias))
    model.set_submodule(norm, nn.Identity())
