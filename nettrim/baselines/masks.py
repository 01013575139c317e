"""What the layer methods share: their argument checks and how a mask is chosen from scores.

The number of zeros asked for is ``round(sparsity * count)`` in each group (:func:`n_zeros`);
weights that are already zero count towards it (every criterion ranks them first) and stay
zero, so a group with more zeros than asked ends sparser than asked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..checks import as_matrix, check_sparsity

__all__ = ["check_damp", "check_nm", "n_zeros", "nm_mask", "prepare", "row_smallest_mask",
           "smallest_mask"]


def check_damp(damp: Any) -> float:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0:
        msg = f"damp must be a number >= 0 (relative Hessian damping), got {damp!r}"
        raise ValueError(msg)
    return float(damp)


def check_nm(nm: Any, sparsity: Any, N: int) -> tuple:
    """Validate ``nm=(n, m)`` (n zeros in every m consecutive weights of a row)."""
    if isinstance(nm, str):
        parts = nm.split(":")
        try:
            nm = tuple(int(p) for p in parts)
        except ValueError:
            nm = parts
    if not (isinstance(nm, (tuple, list)) and len(nm) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in nm)):
        msg = f"nm must be a pair (n, m) of ints or a string 'n:m', got {nm!r}"
        raise ValueError(msg)
    n, m = int(nm[0]), int(nm[1])
    if not 0 < n < m:
        msg = f"nm=(n, m) must have 0 < n < m (n zeros in every m weights), got {(n, m)}"
        raise ValueError(msg)
    if N % m:
        msg = f"nm=({n}, {m}): the input size N={N} is not a multiple of m={m}"
        raise ValueError(msg)
    if sparsity is not None and abs(check_sparsity(sparsity) - n / m) > 1e-12:
        msg = f"sparsity={sparsity} contradicts nm=({n}, {m}) (sparsity n/m = {n / m}); give one"
        raise ValueError(msg)
    return n, m


def prepare(W: Any, X: Any, bias: Any, Y: Any, *, need_x: bool):
    """Validate the common arguments; return tensors (X, bias, Y possibly None)."""
    W = as_matrix(W, "W")
    M, N = W.shape
    if X is None:
        if need_x:
            msg = f"X is required (the layer input of shape (P, {N})) for this data-driven method"
            raise ValueError(msg)
    else:
        X = as_matrix(X, "X").to(device=W.device)
        if X.shape[1] != N:
            msg = f"X must have shape (P, N) with N = {N} (W's columns), got {tuple(X.shape)}"
            raise ValueError(msg)
    if bias is not None:
        bias = torch.as_tensor(bias).detach().to(device=W.device)
        if tuple(bias.shape) != (M,):
            msg = f"bias must have shape (M,) = ({M},), got {tuple(bias.shape)}"
            raise ValueError(msg)
    if Y is not None:
        if X is None:
            msg = "Y (the target for the reported error) needs X"
            raise ValueError(msg)
        Y = as_matrix(Y, "Y").to(device=W.device)
        if tuple(Y.shape) != (X.shape[0], M):
            msg = f"Y must have shape (P, M) = ({X.shape[0]}, {M}), got {tuple(Y.shape)}"
            raise ValueError(msg)
    return W, X, bias, Y


def n_zeros(count: int, sparsity: float) -> int:
    """``round(sparsity * count)`` with halves rounded up (no banker's rounding)."""
    return min(count, int(math.floor(sparsity * count + 0.5)))


def smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of ``scores`` (ties: lowest flat index)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.argsort(flat, stable=True)[:k]] = True
    return mask.reshape(scores.shape)


def row_smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of each row of ``scores``."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, True)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask of the ``n`` smallest of every ``m`` consecutive entries of each row."""
    M, N = scores.shape
    groups = scores.reshape(M, N // m, m)
    idx = torch.argsort(groups, dim=2, stable=True)[:, :, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask.reshape(M, N)
