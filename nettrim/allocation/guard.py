"""A global budget's arithmetic: the checks, the layer-collapse guard, one ranking over layers.

Layer-collapse guard: a budget never leaves a layer fewer than ``min_per_unit`` kept weights per
output unit on average, ``min(min_per_unit, in_features) * out_features`` in total
(default :data:`DEFAULT_MIN_PER_UNIT`). A budget the floors alone exceed is refused.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..checks import check_sparsity

__all__ = ["DEFAULT_MIN_PER_UNIT", "GLOBAL_TOL", "SCOPES", "check_budget", "check_min_per_unit",
           "check_scope", "global_keep_masks", "interpolated_counts", "keep_largest",
           "kept_budget", "layer_floors", "within_tolerance"]

#: Layer-collapse guard: kept weights per output unit (on average) a global budget leaves a layer.
DEFAULT_MIN_PER_UNIT = 4
SCOPES = ("layer", "global")
#: The global sparsity reached is within this of the target (0.5 points), or within one weight
#: of it on a model of fewer than 200 weights.
GLOBAL_TOL = 0.005


def within_tolerance(reached: float, target: float, total: int) -> bool:
    """Whether a reached global sparsity is within the documented tolerance of the target:
    :data:`GLOBAL_TOL`, or one weight of ``total`` when that is more."""
    return abs(reached - target) <= max(GLOBAL_TOL, 1.0 / max(total, 1)) + 1e-12


def check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        msg = f"scope must be one of {SCOPES}, got {scope!r}"
        raise ValueError(msg)
    return scope


def check_budget(sparsity: Any, name: str = "sparsity") -> float:
    """A model-wide budget: one number in [0, 1) (not a dict, not a bool)."""
    if isinstance(sparsity, Mapping):
        msg = f"{name} must be one model-wide fraction in [0, 1) with scope='global', got a dict"
        raise TypeError(msg)
    return check_sparsity(sparsity, name)


def check_min_per_unit(min_per_unit: Any) -> int:
    if isinstance(min_per_unit, bool) or not isinstance(min_per_unit, int) or min_per_unit < 0:
        msg = f"min_per_unit must be an integer >= 0 (kept weights per output unit), got {min_per_unit!r}"
        raise ValueError(msg)
    return min_per_unit


def layer_floors(shapes: Mapping[str, tuple], min_per_unit: int) -> dict:
    """``{name: min(min_per_unit, N) * M}`` for weight matrices of shape (M, N)."""
    k = check_min_per_unit(min_per_unit)
    return {name: min(k, N) * M for name, (M, N) in shapes.items()}


def kept_budget(total: int, sparsity: float, floors: Mapping[str, int]) -> int:
    """Weights kept, ``total - round(sparsity * total)``; ValueError when the floors need more."""
    kept = total - min(total, int(math.floor(sparsity * total + 0.5)))
    need = sum(floors.values())
    if need > kept:
        msg = (f"sparsity {sparsity} keeps {kept} of {total} weights, but the layer-collapse "
               f"guard needs {need} (min_per_unit kept weights per output unit); lower "
               "min_per_unit or the sparsity")
        raise ValueError(msg)
    return kept


def global_keep_masks(scores: Mapping[str, torch.Tensor], sparsity: float, *,
                      min_per_unit: int = DEFAULT_MIN_PER_UNIT) -> dict:
    """Keep the highest scores over all layers together, with the layer-collapse guard.

    Parameters
    ----------
    scores : dict of {name: Tensor of shape (M, N)}
        Importance of each weight (higher = kept first); comparable across layers.
    sparsity : float in [0, 1)
        Fraction of all the weights together to zero (``round(sparsity * total)``).
    min_per_unit : int
        Each layer keeps at least ``min(min_per_unit, N) * M`` weights (its top scores); the
        remaining budget goes to the global ranking of the other layers.

    Returns
    -------
    dict of {name: bool Tensor of shape (M, N)}
        True where the weight is kept.
    """
    s = check_budget(sparsity)
    shapes = {n: tuple(v.shape) for n, v in scores.items()}
    floors = layer_floors(shapes, min_per_unit)
    total = sum(v.numel() for v in scores.values())
    budget = kept_budget(total, s, floors)
    flat = {n: v.detach().reshape(-1).to(torch.float64).cpu() for n, v in scores.items()}
    fixed: dict = {}
    while True:
        free = [n for n in flat if n not in fixed]
        left = budget - sum(fixed.values())
        counts = dict(fixed)
        if free and left > 0:
            joined = torch.cat([flat[n] for n in free])
            top = torch.argsort(joined, descending=True, stable=True)[:left]
            owner = torch.repeat_interleave(torch.arange(len(free)),
                                            torch.tensor([flat[n].numel() for n in free]))
            got = torch.bincount(owner[top], minlength=len(free))
            counts.update({n: int(got[i]) for i, n in enumerate(free)})
        else:
            counts.update({n: 0 for n in free})
        low = [n for n in free if counts[n] < floors[n]]
        if not low:
            break
        fixed.update({n: floors[n] for n in low})
    masks = {}
    for name, v in flat.items():
        keep = torch.zeros(v.numel(), dtype=torch.bool)
        keep[torch.argsort(v, descending=True, stable=True)[:counts[name]]] = True
        masks[name] = keep.reshape(shapes[name]).to(scores[name].device)
    return masks


def interpolated_counts(dense: Mapping[str, int], sparse: Mapping[str, int], target: int) -> dict:
    """Per-layer counts between two allocations (``dense >= sparse`` entrywise) adding to
    ``target``: each layer moves the same fraction of the way from ``dense`` to ``sparse``
    (largest remainders get the rounding)."""
    d_total, s_total = sum(dense.values()), sum(sparse.values())
    if d_total <= target or d_total == s_total:
        return dict(dense)
    t = (d_total - target) / (d_total - s_total)
    raw = {n: dense[n] - t * (dense[n] - min(sparse[n], dense[n])) for n in dense}
    counts = {n: int(math.floor(v)) for n, v in raw.items()}
    short = target - sum(counts.values())
    for n in sorted(raw, key=lambda n: counts[n] - raw[n])[:max(0, short)]:
        counts[n] += 1
    return counts


def keep_largest(weight: torch.Tensor, count: int) -> torch.Tensor:
    """``weight`` with all but its ``count`` largest |entries| zeroed."""
    if int((weight != 0).sum()) <= count:
        return weight
    keep = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    keep[torch.argsort(weight.abs().reshape(-1), descending=True, stable=True)[:count]] = True
    return weight.masked_fill(~keep.reshape(weight.shape), 0.0)
