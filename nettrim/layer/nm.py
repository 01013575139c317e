"""N:M sparsity for Net-Trim: ``sparsity="2:4"`` in :func:`nettrim.prune_layer` and
:func:`nettrim.prune`.

``"n:m"`` means **n zeros in every m consecutive weights** of each row (each output unit's
weights, inputs in order; for a convolution, the flattened ``in * kh * kw`` inputs), the
convention of the baselines' ``nm=(n, m)``: ``"2:4"`` keeps 2 of every 4 (50%), ``"1:4"``
keeps 3, ``"6:8"`` keeps 2. The number of inputs must be a multiple of m.

How the support is chosen, then fitted:

1. Net-Trim's own program at the unstructured sparsity ``n / m`` (the default pipeline of
   :func:`nettrim.prune_layer`, with its choice of program), giving weights ``W_l1``.
2. In each group of m inputs of a row, the ``m - n`` largest ``|W_l1[i, j]| ||X_j||_2`` are
   kept (weights that the l1 solution zeroed come last, ranked by ``|W0[i, j]| ||X_j||_2``, so a
   group the l1 solution left with too few weights is filled by Wanda's score).
3. The exact refit on that support (:func:`solvers.refit`): for a ReLU layer both the ReLU
   program's refit (least active-set residual under the inequalities) and the least squares on
   the pre-activations ``pre`` are computed, and the one with the lower post-activation error on
   the calibration rows is kept (``program="auto"``'s rule; ``program="relu"`` keeps the first).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np
import torch

from solvers import NetTrimProblem, SUCCESS
from solvers.problem import as_tensor, safe_norm
from solvers.refit import refit as refit_support

from ..model.capture import layer_matrix
from ..results import LayerPruneResult
from .target_count import at_reached_epsilon

__all__ = ["check_nm_layers", "nm_pattern", "nm_groups_ok", "prune_layer_nm"]


def nm_pattern(sparsity: Any) -> Optional[tuple[int, int]]:
    """``(n, m)`` when ``sparsity`` is an N:M string ``"n:m"`` (n zeros in every m), else None.

    Raises ValueError for a string that is not ``"n:m"`` with ``0 < n < m``.
    """
    if not isinstance(sparsity, str):
        return None
    parts = sparsity.split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        msg = (f"sparsity must be a number in [0, 1) or an N:M string like '2:4' (n zeros in "
               f"every m weights), got {sparsity!r}")
        raise ValueError(msg) from None
    if not 0 < n < m:
        msg = f"sparsity={sparsity!r}: an N:M pattern needs 0 < n < m (n zeros in every m weights)"
        raise ValueError(msg)
    return n, m


def nm_groups_ok(N: int, sparsity: Any, what: str) -> None:
    """ValueError naming ``what`` unless an N:M ``sparsity`` divides the ``N`` inputs."""
    pattern = nm_pattern(sparsity)
    if pattern is not None and N % pattern[1]:
        msg = (f"{what}: sparsity={sparsity!r} needs the inputs in groups of {pattern[1]}, but "
               f"there are {N} (not a multiple of {pattern[1]})")
        raise ValueError(msg)


def check_nm_layers(model: torch.nn.Module, sparsity_of: dict) -> None:
    """Before any solving: every layer given an N:M sparsity has its inputs (per group of a
    grouped convolution) in whole groups of m; ValueError naming the first that does not."""
    modules = dict(model.named_modules())
    for name, sparsity in sparsity_of.items():
        if nm_pattern(sparsity) is not None:
            module = modules[name]
            N = layer_matrix(module).shape[1]   # per group of a grouped convolution
            nm_groups_ok(N, sparsity, f"layer {name!r}")


def _group_support(W_l1: torch.Tensor, W0: Optional[torch.Tensor], norms: torch.Tensor,
                   n: int, m: int) -> torch.Tensor:
    """Boolean (M, N): the ``m - n`` best of every m inputs of each row (see the module
    docstring, step 2)."""
    M, N = W_l1.shape
    first = W_l1.abs() * norms
    second = (W_l1.abs() if W0 is None else W0.abs()) * norms
    # every weight the l1 solution kept ranks above every weight it zeroed
    lift = float(second.max()) + 1.0 if second.numel() else 1.0
    score = torch.where(W_l1 != 0, first + lift, second).reshape(M, N // m, m)
    order = torch.argsort(score, dim=2, descending=True, stable=True)[:, :, :m - n]
    support = torch.zeros_like(score, dtype=torch.bool)
    support.scatter_(2, order, True)
    return support.reshape(M, N)


def _post_error(X, W, b, offset, relu, Y) -> float:
    out = X @ W.T + (0 if b is None else b)
    if offset is not None:
        out = out + offset
    if relu:
        out = torch.relu(out)
    y_norm = float(safe_norm(Y))
    return float(safe_norm(out - Y)) / y_norm if y_norm > 0 else float(safe_norm(out - Y))


def prune_layer_nm(X: Any, Y: Any, pattern: tuple[int, int], *, solve: Callable,
                   relu: bool, bias: bool, V: Any, offset: Any, W0: Any, b0: Any, pre: Any,
                   program: str, options: dict) -> LayerPruneResult:
    """:func:`nettrim.prune_layer` at an N:M ``sparsity`` (see the module docstring).

    ``solve`` is :func:`nettrim.prune_layer` (step 1 runs it at ``n / m`` with ``options``,
    its keyword arguments other than these); the other arguments are prune_layer's.
    """
    t0 = time.perf_counter()
    n, m = pattern
    X = as_tensor(X, name="X")
    Y = as_tensor(Y, name="Y").to(X)
    P, N = X.shape
    M = Y.shape[1]
    nm_groups_ok(N, f"{n}:{m}", "X")
    base = solve(X, Y, sparsity=n / m, relu=relu, bias=bias, V=V, offset=offset, W0=W0, b0=b0,
                 pre=pre, program=program, **options)
    W_l1 = base.weight.to(X)
    W_start = None if W0 is None else as_tensor(W0, name="W0").to(X)
    norms = torch.linalg.vector_norm(X, dim=0)
    support = _group_support(W_l1, W_start, norms, n, m)
    moved = int((support != (W_l1 != 0)).sum())
    S = None if offset is None else as_tensor(offset, name="offset").to(X)
    Xa = torch.cat([X, torch.ones(P, 1, dtype=X.dtype, device=X.device)], 1) if bias else X
    sup_a = torch.cat([support, torch.ones(M, 1, dtype=torch.bool, device=X.device)], 1) \
        if bias else support
    start = torch.cat([W_l1 * support, base.bias.to(X)[:, None]], 1) if bias else W_l1 * support

    def fitted(problem_for, label):
        result = refit_support(problem_for(0.0), sup_a, W0=start)
        W = torch.as_tensor(result.W).to(X)
        weight, b = (W[:, :N].contiguous(), W[:, N].contiguous()) if bias else (W, None)
        reached, eps = at_reached_epsilon(problem_for, replace(result, W=W), result.status)
        return dict(weight=weight, bias=b, result=reached, eps=eps, refit_status=result.status,
                    program=label, error=_post_error(X, weight, b, S, relu, Y),
                    iterations=result.iterations)

    candidates = [fitted(lambda e: NetTrimProblem(Xa, Y, e, V=V, relu=relu, S=S),
                         "relu" if relu else "linear")]
    target_pre = None
    if relu and program != "relu":
        if pre is not None:
            target_pre = as_tensor(pre, name="pre").to(X)
        elif W_start is not None:
            b_start = torch.zeros(M, dtype=X.dtype) if b0 is None else torch.as_tensor(b0).to(X)
            target_pre = X @ W_start.T + (b_start if bias else 0)
    if target_pre is not None:
        candidates.append(fitted(lambda e: NetTrimProblem(Xa, target_pre, e, relu=False),
                                 "linear-refit"))
    best = candidates[0]
    for other in candidates[1:]:
        if other["error"] < best["error"] * (1 - 1e-2) - 1e-6 and \
                other["result"].status in SUCCESS:
            best = other
    weight, b, result = best["weight"], best["bias"], best["result"]
    nonzeros = int((weight != 0).sum())
    y_norm = float(safe_norm(Y))
    note = (f"N:M {n}:{m} ({n} zeros in every {m} inputs): the support from the l1 solution at "
            f"sparsity {n / m:g} ({moved} weights moved into or out of it)")
    if best["program"] == "linear-refit":
        note += (f"; least squares on the pre-activations kept: post-ReLU error "
                 f"{best['error']:.4g} vs {candidates[0]['error']:.4g} for the ReLU program's refit")
    report = dict(
        nonzeros=nonzeros, total=M * N, sparsity=1.0 - nonzeros / (M * N), nm=(n, m),
        target_sparsity=n / m, epsilon=best["eps"] / y_norm if y_norm > 0 else math.nan,
        epsilon_abs=best["eps"], relative_error=best["error"], status=result.status,
        iterations=base.report["iterations"] + sum(c["iterations"] for c in candidates),
        seconds=time.perf_counter() - t0, solver=base.report["solver"],
        objective=float(weight.abs().sum()), residual=result.residual,
        violation=float(result.violation) if np.isfinite(result.violation) else math.nan,
        refit_status=best["refit_status"], l1_sparsity=base.report["sparsity"],
        note="; ".join(x for x in (base.report.get("note"), note) if x))
    if relu:   # the program kept, as prune_layer reports it for a ReLU layer
        report.update(program=best["program"],
                      program_errors={c["program"]: c["error"] for c in candidates})
    return LayerPruneResult(weight=weight, bias=b, report=report)
