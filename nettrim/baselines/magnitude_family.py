"""Magnitude-type layer methods: one score per weight, no update of the kept weights.

``random_prune`` (uniformly random), ``magnitude`` (smallest ``|W_ij|``, Han et al. 2015; or
N:M),
``wanda`` (smallest ``|W_ij| ||X_j||_2`` per output row, or N:M; Sun et al. 2023) and
``global_magnitude`` (one ``|W|`` threshold over all layers).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch

from ..checks import as_matrix, check_sparsity
from ..results import LayerPruneResult, layer_result
from .masks import check_nm, n_zeros, nm_mask, prepare, row_smallest_mask, smallest_mask

__all__ = ["global_magnitude", "magnitude", "random_prune", "wanda"]


def random_prune(W: Any, X: Any = None, *, sparsity: Any = None, bias: Any = None,
                 relu: bool = True, Y: Any = None, seed: int = 0) -> LayerPruneResult:
    """Zero ``round(sparsity * M * N)`` weights chosen uniformly at random (zeros first).

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
    X : ndarray or Tensor of shape (P, N), optional
        Only used for the reported error.
    sparsity : float in [0, 1)
    bias : Tensor of shape (M,), optional
        Kept unchanged.
    relu : bool, default True
        Whether the layer's output goes through a ReLU (for the reported error).
    Y : Tensor of shape (P, M), optional
        Target of the reported error (default: the unpruned output).
    seed : int, default 0
        Seed of the draw (a private generator; the global RNG is untouched).

    Returns
    -------
    LayerPruneResult
    """
    t0 = time.perf_counter()
    s = check_sparsity(sparsity)
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=False)
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(W.shape, generator=gen, dtype=torch.float64).to(W.device)
    scores[W == 0] = -1.0
    mask = smallest_mask(scores, n_zeros(W.numel(), s))
    return layer_result("random", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


def magnitude(W: Any, X: Any = None, *, sparsity: Any = None, bias: Any = None,
              relu: bool = True, Y: Any = None, nm: Any = None) -> LayerPruneResult:
    """Zero the ``round(sparsity * M * N)`` smallest ``|W_ij|`` of the layer (Han et al. 2015).

    Parameters are those of :func:`random_prune` (no seed), and ``nm=(n, m)`` (or ``"n:m"``):
    the ``n`` smallest of every ``m`` consecutive weights of a row instead (``sparsity`` may
    then be omitted). Data-free: ``X`` only serves the reported error.
    """
    t0 = time.perf_counter()
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=False)
    if nm is not None:
        n, m = check_nm(nm, sparsity, W.shape[1])
        mask = nm_mask(W.abs(), n, m)
        return layer_result("magnitude", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0,
                            {"nm": (n, m)})
    s = check_sparsity(sparsity)
    mask = smallest_mask(W.abs(), n_zeros(W.numel(), s))
    return layer_result("magnitude", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


def wanda(W: Any, X: Any, *, sparsity: Any = None, bias: Any = None, relu: bool = True,
          Y: Any = None, nm: Any = None) -> LayerPruneResult:
    """Wanda: zero the weights with the smallest ``|W_ij| * ||X_j||_2`` in each output row.

    Sun, Liu, Bair & Kolter 2023. Each row loses exactly ``round(sparsity * N)`` weights (or,
    with ``nm=(n, m)``, the ``n`` lowest scores of every ``m`` consecutive weights). No update.

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
    X : ndarray or Tensor of shape (P, N)
        Layer input (required): ``||X_j||_2`` is the norm of input feature ``j``.
    sparsity : float in [0, 1)
        May be omitted with ``nm``; otherwise it must equal ``n / m``.
    bias, relu, Y
        As in :func:`magnitude`.
    nm : (int, int) or str, optional
        Semi-structured pattern: ``n`` zeros in every ``m`` consecutive weights of a row
        (``(2, 4)`` or ``"2:4"``: 50%). N must be a multiple of m.

    Returns
    -------
    LayerPruneResult
    """
    t0 = time.perf_counter()
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=True)
    norms = torch.linalg.vector_norm(X.to(torch.float64), dim=0)
    scores = W.to(torch.float64).abs() * norms
    scores[W == 0] = -1.0
    if nm is not None:
        n, m = check_nm(nm, sparsity, W.shape[1])
        mask = nm_mask(scores, n, m)
    else:
        s = check_sparsity(sparsity)
        mask = row_smallest_mask(scores, n_zeros(W.shape[1], s))
    return layer_result("wanda", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


def global_magnitude(weights: Mapping[str, Any], *, sparsity: Any) -> dict:
    """Magnitude pruning with one threshold for all layers (Han et al. 2015, global variant).

    Parameters
    ----------
    weights : dict of {name: Tensor of shape (M, N)}
    sparsity : float in [0, 1)
        Fraction of all the weights together to zero: exactly
        ``round(sparsity * sum of sizes)``; the layers' own sparsities differ.

    Returns
    -------
    dict of {name: Tensor of shape (M, N)}
        The pruned weights (copies).
    """
    s = check_sparsity(sparsity)
    if not isinstance(weights, Mapping) or not weights:
        msg = "weights must be a non-empty dict {layer name: weight matrix}"
        raise ValueError(msg)
    mats = {name: as_matrix(w, f"weights[{name!r}]") for name, w in weights.items()}
    flat = torch.cat([w.abs().reshape(-1).to(torch.float64).cpu() for w in mats.values()])
    mask = smallest_mask(flat, n_zeros(flat.numel(), s))
    out, start = {}, 0
    for name, w in mats.items():
        part = mask[start:start + w.numel()].reshape(w.shape).to(w.device)
        out[name] = w.masked_fill(part, 0.0)
        start += w.numel()
    return out
