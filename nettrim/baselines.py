"""Comparison pruning methods, with the calling convention of :func:`nettrim.prune_layer`.

Every *layer* method has the signature::

    method(W, X, *, sparsity, bias=None, relu=True, Y=None, <method options>) -> LayerPruneResult

with ``W`` of shape (M, N) (a conv weight flattened to ``(out, in * kh * kw)``), ``X`` of shape
(P, N) the layer input (unfolded patches for a conv layer; ignored by the data-free methods),
``bias`` of shape (M,) kept unchanged, and ``Y`` of shape (P, M) the target used for the reported
``relative_error`` (default: the unpruned layer's own output ``act(X W^T + b)``). The returned
report has the keys of :func:`nettrim.prune_layer`'s (``nonzeros``, ``total``, ``sparsity``,
``relative_error``, ``seconds``, ``solver`` = the method's name, ``status`` = ``"OPTIMAL"``, ...).

=====================  =============================================  ====================
name                   criterion (what is zeroed)                     grouping of the count
=====================  =============================================  ====================
``random``             uniformly random weights                       per layer
``magnitude``          smallest ``|W_ij|`` (Han et al. 2015)          per layer
``global_magnitude``   smallest ``|W_ij|`` over all layers            whole model
``obd``                smallest ``w^2 H_jj / 2``, H the (ReLU-gated)  per layer
                       Gauss-Newton diagonal (LeCun et al. 1990)
``lobs``               smallest ``w^2 / [H^-1]_jj``, H = X^T X / P,   per layer
                       then the exact OBS update of the kept weights
                       (Dong et al. 2017)
``sparsegpt``          OBS column sweep with the Cholesky factor of   per block of columns,
                       ``H^-1`` and lazy batch updates (Frantar &     or n of every m
                       Alistarh 2023); unstructured or N:M            (``nm=(n, m)``)
``wanda``              smallest ``|W_ij| ||X_j||_2`` (Sun et al.      per output row,
                       2023)                                          or N:M
=====================  =============================================  ====================

The number of zeros asked for is ``round(sparsity * count)`` in each group; weights that are
already zero count towards it (every criterion ranks them first) and stay zero, so a group with
more zeros than asked ends sparser than asked.

Model level: :func:`prune_baseline` captures the layers' inputs with :func:`nettrim.capture`,
runs a layer method on each layer (``sequential=True``: each layer sees the inputs produced by
the already-pruned layers before it, as SparseGPT does) and writes the weights back.
:func:`prune_structured` removes whole neurons / channels ranked by ``l1`` norm, ``apoz``
(average percentage of zeros, Hu et al. 2016) or first-order ``taylor`` (Molchanov et al. 2017)
through :func:`nettrim.surgery.remove_units`. :func:`hptd` is Han et al.'s prune-then-retrain:
magnitude pruning (global or per layer) followed by masked fine-tuning (:func:`nettrim.finetune`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from solvers.status import OPTIMAL

from .budget import DEFAULT_MIN_PER_UNIT, check_budget, check_scope, global_keep_masks
from .prune import LayerPruneResult, LayerReport, PruneResult, _as_tensor, output_discrepancy

__all__ = [
    "BASELINES", "METHODS", "STRUCTURED_CRITERIA",
    "random_prune", "magnitude", "obd", "lobs", "sparsegpt", "wanda",
    "global_magnitude", "prune_baseline", "prune_structured", "unit_scores", "hptd",
]

#: Relative damping of the Hessians of the OBS-type methods: ``lambda = damp * mean(diag(H))``.
DEFAULT_DAMP = 0.01
#: SparseGPT: columns per lazy batch update.
DEFAULT_BLOCKSIZE = 128
#: Rows per forward pass when a model is scored on a tensor of inputs.
_BATCH_ROWS = 512


# ---- validation and reports -------------------------------------------------------------------
def _check_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    if sparsity is None:
        msg = f"{name} is required: a fraction of weights to zero in [0, 1)"
        raise TypeError(msg)
    if isinstance(sparsity, bool):
        msg = f"{name} must be a number in [0, 1), got {sparsity!r}"
        raise TypeError(msg)
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        msg = f"{name} must be a number in [0, 1), got {sparsity!r}"
        raise TypeError(msg) from None
    if not 0.0 <= value < 1.0:
        msg = f"{name} must be in [0, 1), got {value}"
        raise ValueError(msg)
    return value


def _check_damp(damp: Any) -> float:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0:
        msg = f"damp must be a number >= 0 (relative Hessian damping), got {damp!r}"
        raise ValueError(msg)
    return float(damp)


def _check_nm(nm: Any, sparsity: Any, N: int) -> tuple:
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
    if sparsity is not None and abs(_check_sparsity(sparsity) - n / m) > 1e-12:
        msg = f"sparsity={sparsity} contradicts nm=({n}, {m}) (sparsity n/m = {n / m}); give one"
        raise ValueError(msg)
    return n, m


def _prepare(W: Any, X: Any, bias: Any, Y: Any, *, need_x: bool):
    """Validate the common arguments; return tensors (X, bias, Y possibly None)."""
    W = _as_tensor(W, "W")
    M, N = W.shape
    if X is None:
        if need_x:
            msg = f"X is required (the layer input of shape (P, {N})) for this data-driven method"
            raise ValueError(msg)
    else:
        X = _as_tensor(X, "X").to(device=W.device)
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
        Y = _as_tensor(Y, "Y").to(device=W.device)
        if tuple(Y.shape) != (X.shape[0], M):
            msg = f"Y must have shape (P, M) = ({X.shape[0]}, {M}), got {tuple(Y.shape)}"
            raise ValueError(msg)
    return W, X, bias, Y


def _n_zeros(count: int, sparsity: float) -> int:
    """``round(sparsity * count)`` with halves rounded up (no banker's rounding)."""
    return min(count, int(math.floor(sparsity * count + 0.5)))


def _smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of ``scores`` (ties: lowest flat index)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.argsort(flat, stable=True)[:k]] = True
    return mask.reshape(scores.shape)


def _row_smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of each row of ``scores``."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, True)
    return mask


def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask of the ``n`` smallest of every ``m`` consecutive entries of each row."""
    M, N = scores.shape
    groups = scores.reshape(M, N // m, m)
    idx = torch.argsort(groups, dim=2, stable=True)[:, :, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask.reshape(M, N)


def _pre_activation(X: torch.Tensor, W: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    out = X @ W.to(X.dtype).T
    return out if bias is None else out + bias.to(X.dtype)


def _finish(name: str, W: torch.Tensor, W_new: torch.Tensor, X, bias, Y, relu: bool, t0: float,
            extra: Optional[dict] = None) -> LayerPruneResult:
    """Package a pruned weight as a :class:`LayerPruneResult` with prune_layer's report keys."""
    W_new = W_new.to(dtype=W.dtype, device=W.device).contiguous()
    M, N = W.shape
    nonzeros = int((W_new != 0).sum())
    rel = float("nan")
    if X is not None:
        target = Y
        if target is None:
            target = _pre_activation(X, W, bias)
            target = torch.relu(target) if relu else target
        out = _pre_activation(X, W_new, bias)
        out = torch.relu(out) if relu else out
        y_norm = float(torch.linalg.vector_norm(target))
        diff = float(torch.linalg.vector_norm(out - target.to(out.dtype)))
        rel = diff / y_norm if y_norm > 0 else diff
    report = dict(
        nonzeros=nonzeros, total=M * N, sparsity=1.0 - nonzeros / (M * N) if M * N else 0.0,
        epsilon=float("nan"), epsilon_abs=float("nan"), relative_error=rel, status=OPTIMAL,
        iterations=0, seconds=time.perf_counter() - t0, solver=name,
        objective=float(W_new.abs().sum()), residual=float("nan"), violation=0.0)
    if extra:
        report.update(extra)
    b = None if bias is None else bias.to(dtype=W.dtype).clone()
    return LayerPruneResult(weight=W_new, bias=b, report=report)


def _damped_hessian(X: torch.Tensor, damp: float) -> torch.Tensor:
    """``H = X^T X / P + lambda I`` in float64, ``lambda = damp * mean(diag(X^T X / P))``.

    An all-zero input column has ``H_jj = lambda``: its weights are ranked first by the OBS
    saliencies (they do not affect the output) and H stays positive definite.
    """
    X64 = X.to(torch.float64)
    H = X64.T @ X64 / max(1, X64.shape[0])
    lam = damp * float(torch.diagonal(H).mean())
    if not lam > 0:
        lam = 1.0 if damp > 0 else 0.0
    H.diagonal().add_(lam)
    return H


def _inverse_spd(H: torch.Tensor, what: str) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        msg = (f"{what}: the Hessian X^T X / P is not positive definite (singular inputs); "
               "use damp > 0")
        raise ValueError(msg)
    return torch.cholesky_inverse(L)


# ---- data-free layer methods ------------------------------------------------------------------
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
    s = _check_sparsity(sparsity)
    W, X, bias, Y = _prepare(W, X, bias, Y, need_x=False)
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(W.shape, generator=gen, dtype=torch.float64).to(W.device)
    scores[W == 0] = -1.0
    mask = _smallest_mask(scores, _n_zeros(W.numel(), s))
    return _finish("random", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


def magnitude(W: Any, X: Any = None, *, sparsity: Any = None, bias: Any = None,
              relu: bool = True, Y: Any = None) -> LayerPruneResult:
    """Zero the ``round(sparsity * M * N)`` smallest ``|W_ij|`` of the layer (Han et al. 2015).

    Parameters are those of :func:`random_prune` (no seed). Data-free: ``X`` only serves the
    reported error.
    """
    t0 = time.perf_counter()
    s = _check_sparsity(sparsity)
    W, X, bias, Y = _prepare(W, X, bias, Y, need_x=False)
    mask = _smallest_mask(W.abs(), _n_zeros(W.numel(), s))
    return _finish("magnitude", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


# ---- data-driven layer methods ----------------------------------------------------------------
def obd(W: Any, X: Any, *, sparsity: Any = None, bias: Any = None, relu: bool = True,
        Y: Any = None) -> LayerPruneResult:
    """Optimal Brain Damage with the diagonal of the layer's Gauss-Newton Hessian.

    The loss is the layer's output error ``1/2 sum_p ||act(x_p W^T + b) - y_p||^2``; its
    Gauss-Newton Hessian for row ``i`` has diagonal
    ``H^(i)_jj = sum_p 1[z_pi > 0] x_pj^2`` (``z = X W^T + b``; no gate for a linear layer), and
    the saliency of ``w_ij`` is ``s_ij = w_ij^2 H^(i)_jj / 2`` (LeCun, Denker & Solla 1990).
    The ``round(sparsity * M * N)`` least salient weights of the layer are zeroed; OBD updates
    no other weight.

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
    X : ndarray or Tensor of shape (P, N)
        Layer input (required).
    sparsity : float in [0, 1)
    bias : Tensor of shape (M,), optional
        Kept unchanged; part of the pre-activation that gates the ReLU.
    relu : bool, default True
    Y : Tensor of shape (P, M), optional
        Target of the reported error.

    Returns
    -------
    LayerPruneResult
    """
    t0 = time.perf_counter()
    s = _check_sparsity(sparsity)
    W, X, bias, Y = _prepare(W, X, bias, Y, need_x=True)
    Xd = X.to(torch.float64)
    if relu:
        active = (_pre_activation(Xd, W.to(torch.float64), bias) > 0).to(torch.float64)
        hdiag = active.T @ (Xd * Xd)                      # (M, N): H^(i)_jj
    else:
        hdiag = (Xd * Xd).sum(0).expand(W.shape[0], -1)   # same diagonal for every row
    saliency = 0.5 * W.to(torch.float64) ** 2 * hdiag
    saliency[W == 0] = -1.0
    mask = _smallest_mask(saliency, _n_zeros(W.numel(), s))
    return _finish("obd", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


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
    W, X, bias, Y = _prepare(W, X, bias, Y, need_x=True)
    norms = torch.linalg.vector_norm(X.to(torch.float64), dim=0)
    scores = W.to(torch.float64).abs() * norms
    scores[W == 0] = -1.0
    if nm is not None:
        n, m = _check_nm(nm, sparsity, W.shape[1])
        mask = _nm_mask(scores, n, m)
    else:
        s = _check_sparsity(sparsity)
        mask = _row_smallest_mask(scores, _n_zeros(W.shape[1], s))
    return _finish("wanda", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


def lobs(W: Any, X: Any, *, sparsity: Any = None, bias: Any = None, relu: bool = True,
         Y: Any = None, damp: float = DEFAULT_DAMP) -> LayerPruneResult:
    """Layer-wise Optimal Brain Surgeon (Dong, Chen & Pan 2017).

    The layer-wise error ``||X (W - W0)^T||_F^2 / (2P)`` (on the pre-activation) has the same
    Hessian ``H = X^T X / P`` (damped) for every output row. The saliency of ``w_ij`` is
    ``L_ij = w_ij^2 / (2 [H^-1]_jj)``; the ``round(sparsity * M * N)`` least salient weights of
    the layer are removed, and each row's kept weights get the exact OBS update for removing
    its set ``Q`` at once, ``delta = -H^-1[:, Q] ([H^-1]_QQ)^-1 w_Q`` (equivalently: the kept
    weights solve the least-squares reconstruction of ``X w0`` on their support). The bias is
    kept; removed weights stay exactly zero.

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
    X : ndarray or Tensor of shape (P, N)
        Layer input (required).
    sparsity : float in [0, 1)
    bias, relu, Y
        As in :func:`magnitude`.
    damp : float, default 0.01
        ``H += damp * mean(diag(H)) * I``.

    Returns
    -------
    LayerPruneResult
    """
    t0 = time.perf_counter()
    s = _check_sparsity(sparsity)
    damp = _check_damp(damp)
    W, X, bias, Y = _prepare(W, X, bias, Y, need_x=True)
    H = _damped_hessian(X, damp)
    Hinv = _inverse_spd(H, "lobs")
    W64 = W.to(torch.float64)
    saliency = W64 ** 2 / torch.diagonal(Hinv)
    saliency[W == 0] = -1.0
    # weights already zero stay zero (the OBS update would otherwise move them)
    mask = _smallest_mask(saliency, _n_zeros(W.numel(), s)) | (W == 0)
    W_new = W64.clone()
    for i in range(W.shape[0]):
        Q = torch.nonzero(mask[i]).flatten()
        if Q.numel() == 0:
            continue
        S = torch.nonzero(~mask[i]).flatten()
        w = W64[i]
        row = torch.zeros_like(w)
        if S.numel() == 0:
            W_new[i] = row
            continue
        if S.numel() <= Q.numel():
            # kept weights minimise ||X (w' - w)||^2 on their support: H_SS w'_S = H_S: w
            row[S] = torch.linalg.solve(H[S][:, S], H[S] @ w)
        else:
            # OBS form: w' = w - H^-1[:, Q] ([H^-1]_QQ)^-1 w_Q
            row = w - Hinv[:, Q] @ torch.linalg.solve(Hinv[Q][:, Q], w[Q])
            row[Q] = 0.0
        W_new[i] = row
    return _finish("lobs", W, W_new, X, bias, Y, relu, t0)


def sparsegpt(W: Any, X: Any, *, sparsity: Any = None, bias: Any = None, relu: bool = True,
              Y: Any = None, nm: Any = None, blocksize: int = DEFAULT_BLOCKSIZE,
              damp: float = DEFAULT_DAMP, mask: Any = None) -> LayerPruneResult:
    """SparseGPT: OBS column sweep with the Cholesky factor of the inverse Hessian.

    Frantar & Alistarh 2023. With ``H = X^T X / P + lambda I`` and ``U`` the upper Cholesky
    factor of ``H^-1`` (``H^-1 = U^T U``), columns are visited left to right; at column ``i``
    the pruned entries ``w_i`` of each row are zeroed and the error ``e = w_i / U_ii`` is
    spread over the columns not yet visited, ``W[:, i:] -= e U[i, i:]``. Row ``i`` of ``U`` is
    ``[H_R^-1]_{i, :} / sqrt([H_R^-1]_ii)`` for the remaining columns ``R = {i, ..., N-1}``, so
    this is the exact OBS update restricted to the columns still free. Updates to later blocks
    are applied lazily, once per block of ``blocksize`` columns (the result is the same).

    Mask selection: at the start of each block, the ``k_b`` entries of the block with the least
    ``w^2 / U_ii^2`` (``k_b`` chosen so the layer total is ``round(sparsity * M * N)``); with
    ``nm=(n, m)``, at every m-th column the ``n`` least of the next ``m`` in each row, from the
    updated weights; or a given ``mask``.

    Parameters
    ----------
    W : ndarray or Tensor of shape (M, N)
    X : ndarray or Tensor of shape (P, N)
        Layer input (required).
    sparsity : float in [0, 1)
        May be omitted with ``nm`` or ``mask``.
    bias, relu, Y
        As in :func:`magnitude`; the bias is kept.
    nm : (int, int) or str, optional
        ``n`` zeros in every ``m`` consecutive weights of a row (``blocksize`` must be a
        multiple of ``m``).
    blocksize : int, default 128
        Columns per lazy batch update.
    damp : float, default 0.01
        ``lambda = damp * mean(diag(X^T X / P))``.
    mask : bool array of shape (M, N), optional
        Fixed pruning mask (True = zero); the OBS updates are applied as usual.

    Returns
    -------
    LayerPruneResult
        Computed in float64, returned in W's dtype.
    """
    t0 = time.perf_counter()
    W, X, bias, Y = _prepare(W, X, bias, Y, need_x=True)
    M, N = W.shape
    damp = _check_damp(damp)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        msg = f"blocksize must be a positive int, got {blocksize!r}"
        raise ValueError(msg)
    given = [name for name, v in (("nm", nm), ("mask", mask)) if v is not None]
    if len(given) > 1:
        msg = "give at most one of nm and mask"
        raise ValueError(msg)
    fixed = None
    n = m = 0
    s = 0.0
    if mask is not None:
        fixed = torch.as_tensor(mask, device=W.device)
        if fixed.dtype != torch.bool or tuple(fixed.shape) != (M, N):
            msg = f"mask must be a boolean array of shape (M, N) = ({M}, {N}), got " \
                  f"{fixed.dtype} of shape {tuple(fixed.shape)}"
            raise ValueError(msg)
        if sparsity is not None:
            _check_sparsity(sparsity)
    elif nm is not None:
        n, m = _check_nm(nm, sparsity, N)
        if blocksize % m:
            msg = f"blocksize={blocksize} must be a multiple of m={m} for nm=({n}, {m})"
            raise ValueError(msg)
    else:
        s = _check_sparsity(sparsity)
    H = _damped_hessian(X, damp)
    U = torch.linalg.cholesky(_inverse_spd(H, "sparsegpt"), upper=True)
    Wd = W.to(torch.float64).clone()
    d_all = torch.diagonal(U)
    zero = W == 0  # weights already zero are pruned first and stay zero
    for i1 in range(0, N, blocksize):
        i2 = min(i1 + blocksize, N)
        count = i2 - i1
        W1 = Wd[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        if fixed is not None:
            mask1 = fixed[:, i1:i2] | zero[:, i1:i2]
        elif m:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            k_b = _n_zeros(M * i2, s) - _n_zeros(M * i1, s)
            scores = W1 ** 2 / d_all[i1:i2] ** 2
            scores[zero[:, i1:i2]] = -1.0
            mask1 = _smallest_mask(scores, k_b) | zero[:, i1:i2]
        for i in range(count):
            if m and i % m == 0:
                scores = W1[:, i:i + m] ** 2 / torch.diagonal(U1)[i:i + m] ** 2
                held = zero[:, i1 + i:i1 + i + m]
                scores[held] = -1.0
                mask1[:, i:i + m] = _nm_mask(scores, n, m) | held
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0.0)
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q  # exact zeros where pruned (and the kept value unchanged)
            Err1[:, i] = err
        Wd[:, i1:i2] = W1
        Wd[:, i2:] -= Err1 @ U[i1:i2, i2:]
    extra = {"blocksize": blocksize, "damp": damp}
    if m:
        extra["nm"] = (n, m)
    return _finish("sparsegpt", W, Wd, X, bias, Y, relu, t0, extra)


#: Layer methods by name: ``method(W, X, *, sparsity, bias=None, relu=True, Y=None, **opts)``.
BASELINES: dict = {
    "random": random_prune,
    "magnitude": magnitude,
    "obd": obd,
    "lobs": lobs,
    "sparsegpt": sparsegpt,
    "wanda": wanda,
}
#: Every name :func:`prune_baseline` accepts (the layer methods and the model-wide one).
METHODS = tuple(BASELINES) + ("global_magnitude",)


# ---- model level ------------------------------------------------------------------------------
def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        msg = f"model must be a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)


def _selected_layers(model: nn.Module, layers: Any, ignore: Iterable[str]) -> list:
    from .capture import prunable_layers
    found = prunable_layers(model, layers, ignore)
    items = found.items() if isinstance(found, Mapping) else found
    return [(name, module) for name, module in items]


def _layer_matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1)


def _write(module: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    from .surgery import set_layer_weight
    set_layer_weight(module, weight, bias)


def _per_group(fn, name, W, X, groups, bias, Y, relu, **kw) -> LayerPruneResult:
    """A layer method applied to each group of a grouped convolution (its own input columns
    and output channels, as Net-Trim solves it), merged into one result."""
    from .capture import group_blocks
    t0 = time.perf_counter()
    W_new = torch.zeros_like(W)
    b_new = None if bias is None else bias.clone()
    sq = 0.0   # squared output error, summed over the groups
    for cols, rows in group_blocks(groups, X.shape[1], W.shape[0]):
        part = fn(W[rows], X[:, cols], bias=None if bias is None else bias[rows], relu=relu,
                  Y=Y[:, rows], **kw)
        W_new[rows] = part.weight.to(W.dtype)
        if part.bias is not None:
            b_new[rows] = part.bias.to(b_new.dtype)
        out = _pre_activation(X[:, cols], W_new[rows], None if b_new is None else b_new[rows])
        out = torch.relu(out) if relu else out
        sq += float(torch.linalg.vector_norm(out - Y[:, rows].to(out.dtype))) ** 2
    result = _finish(name, W, W_new, None, b_new, None, relu, t0)
    y_norm = float(torch.linalg.vector_norm(Y))
    result.report["relative_error"] = math.sqrt(sq) / y_norm if y_norm > 0 else math.sqrt(sq)
    return result


def _report_row(name: str, data: Any, module: nn.Module, W_orig: torch.Tensor,
                rep: dict) -> LayerReport:
    return LayerReport(
        name=name, kind=getattr(data, "kind", "linear" if isinstance(module, nn.Linear) else "conv2d"),
        shape=tuple(module.weight.shape), nonzeros_before=int((W_orig != 0).sum()),
        nonzeros_after=rep["nonzeros"], total=rep["total"], sparsity=rep["sparsity"],
        epsilon=rep["epsilon"], epsilon_abs=rep["epsilon_abs"],
        relative_error=rep["relative_error"], status=rep["status"],
        iterations=rep["iterations"], seconds=rep["seconds"], solver=rep["solver"])


def _reiterable(inputs: Any) -> bool:
    if isinstance(inputs, torch.Tensor):
        return True
    try:
        return iter(inputs) is not inputs
    except TypeError:
        return False


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
    s = _check_sparsity(sparsity)
    if not isinstance(weights, Mapping) or not weights:
        msg = "weights must be a non-empty dict {layer name: weight matrix}"
        raise ValueError(msg)
    mats = {name: _as_tensor(w, f"weights[{name!r}]") for name, w in weights.items()}
    flat = torch.cat([w.abs().reshape(-1).to(torch.float64).cpu() for w in mats.values()])
    mask = _smallest_mask(flat, _n_zeros(flat.numel(), s))
    out, start = {}, 0
    for name, w in mats.items():
        part = mask[start:start + w.numel()].reshape(w.shape).to(w.device)
        out[name] = w.masked_fill(part, 0.0)
        start += w.numel()
    return out


def prune_baseline(model: nn.Module, inputs: Any, method: Union[str, Callable], sparsity: Any, *,
                   layers: Any = None, ignore: Iterable[str] = (),
                   activations: Optional[dict] = None, max_samples: Optional[int] = None,
                   seed: int = 0, sequential: bool = True, inplace: bool = False,
                   device: Any = None, method_options: Optional[dict] = None,
                   scope: str = "layer", min_per_unit: Optional[int] = None) -> PruneResult:
    """Prune a model's Linear / Conv2d layers with a comparison method.

    Parameters
    ----------
    model : nn.Module
        Never modified unless ``inplace=True``.
    inputs : Tensor or iterable of batches
        Calibration data (``(x, y)`` batches use ``x``); must be re-iterable with
        ``sequential=True`` (a tensor, list or DataLoader).
    method : str or callable
        A name of :data:`BASELINES`, ``"global_magnitude"`` (one threshold for all the selected
        layers), or a layer function with the :data:`BASELINES` signature.
    sparsity : float in [0, 1) or dict of {layer: float}
        Per-layer target (global magnitude: the model-wide fraction, a float).
    layers, ignore, activations, max_samples, seed, device
        As in :func:`nettrim.prune` / :func:`nettrim.capture`.
    sequential : bool, default True
        Each layer sees the inputs produced by the already-pruned layers before it (as
        SparseGPT); False: every layer sees the original network's inputs.
    inplace : bool, default False
    method_options : dict, optional
        Keyword options of the layer method (``seed``, ``damp``, ``blocksize``, ``nm``, ...).
    scope : {"layer", "global"}
        ``"global"``: ``sparsity`` (a float) is the fraction of all the selected weights
        together, and the mask comes from one ranking over all layers of the method's usual
        score (:func:`nettrim.budget.global_keep_masks`): ``|W|`` for magnitude,
        ``|W_ij| ||X_j||_2`` for Wanda, the OBS saliency ``w^2 / [H^-1]_jj`` (H the damped
        ``X^T X / P``) for SparseGPT, which then applies its weight updates under that mask.
        Only these three methods have a global rule.
    min_per_unit : int, optional
        Layer-collapse guard of ``scope="global"`` (default
        :data:`nettrim.budget.DEFAULT_MIN_PER_UNIT` kept weights per output unit).

    Returns
    -------
    PruneResult
        ``.report`` has one :class:`LayerReport` per layer (``solver`` = the method name,
        ``relative_error`` against the original network's layer output).
    """
    from .capture import capture, capture_cascade
    _check_model(model)
    is_global = method == "global_magnitude"
    if callable(method):
        fn, name_of_method = method, getattr(method, "__name__", "custom")
    elif is_global:
        fn, name_of_method = magnitude, "global_magnitude"
    elif isinstance(method, str) and method in BASELINES:
        fn, name_of_method = BASELINES[method], method
    else:
        msg = f"method must be one of {METHODS} or a layer function, got {method!r}"
        raise ValueError(msg)
    if not isinstance(sequential, bool):
        msg = f"sequential must be True or False, got {sequential!r}"
        raise TypeError(msg)
    opts = dict(method_options or {})
    selected = _selected_layers(model, layers, ignore)
    names = [name for name, _ in selected]
    if check_scope(scope) == "global" and name_of_method not in GLOBAL_SCORES:
        msg = (f"scope='global' has a rule for {sorted(GLOBAL_SCORES)} only, got method "
               f"{name_of_method!r}")
        raise ValueError(msg)
    if min_per_unit is not None and scope != "global":
        msg = "min_per_unit is the guard of a global budget: it needs scope='global'"
        raise ValueError(msg)
    keep_masks = None
    if scope == "global":
        check_budget(sparsity)
        spars_of = {n: None for n in names}
    elif is_global:
        if isinstance(sparsity, Mapping):
            msg = "global_magnitude takes one model-wide sparsity (a float), not a dict"
            raise TypeError(msg)
        _check_sparsity(sparsity)
        spars_of = {}
    elif isinstance(sparsity, Mapping):
        unknown = sorted(set(sparsity) - set(names))
        if unknown:
            msg = f"sparsity names unknown layers {unknown}; prunable layers are {names}"
            raise ValueError(msg)
        missing = [n for n in names if n not in sparsity]
        if missing:
            msg = f"sparsity dict misses layers {missing} (name every selected layer)"
            raise ValueError(msg)
        spars_of = {n: _check_sparsity(sparsity[n], f"sparsity[{n!r}]") for n in names}
    else:
        s = None if (sparsity is None and ("nm" in opts or "mask" in opts)) \
            else _check_sparsity(sparsity)
        spars_of = {n: s for n in names}
    if sequential and not _reiterable(inputs):
        msg = ("inputs must be re-iterable with sequential=True (a tensor, a list of batches or "
               "a DataLoader), got a one-shot iterator")
        raise TypeError(msg)
    cap = dict(activations=activations, max_samples=max_samples, seed=seed, device=device)
    original = capture(model, inputs, layers=names, **cap)
    reference = copy.deepcopy(model) if inplace else model
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    if scope == "global":
        scores = {n: GLOBAL_SCORES[name_of_method](_layer_matrix(modules[n]), original[n].X,
                                                   opts.get("damp", DEFAULT_DAMP))
                  for n in names}
        keep_masks = global_keep_masks(
            scores, sparsity,
            min_per_unit=DEFAULT_MIN_PER_UNIT if min_per_unit is None else min_per_unit)
    globally = None
    if is_global:
        globally = global_magnitude({n: _layer_matrix(modules[n]) for n in names},
                                    sparsity=sparsity)
    rows = []
    for index, name in enumerate(names):
        data = original[name]
        module = modules[name]
        W_orig = _layer_matrix(module).clone()
        b_orig = None if module.bias is None else module.bias.detach().clone()
        if sequential and index > 0:
            # inputs from the pruned layers before, targets from the original model (same rows)
            data = capture_cascade(reference, target, inputs, name, **cap)
        X, relu = data.X, data.activation == "relu"
        Xw = X.to(W_orig.dtype) if X.dtype != W_orig.dtype else X
        Yw = data.post.to(Xw.dtype)
        bw = None if b_orig is None else b_orig.to(Xw.device)
        if keep_masks is not None and name_of_method == "sparsegpt":
            result = fn(W_orig.to(Xw.device), Xw, bias=bw, relu=relu, Y=Yw,
                        **dict(opts, mask=~keep_masks[name].to(Xw.device)))
        elif keep_masks is not None:
            result = _finish(name_of_method, W_orig.to(Xw.device),
                             W_orig.to(Xw.device).masked_fill(~keep_masks[name].to(Xw.device), 0.0),
                             Xw, bw, Yw, relu, time.perf_counter())
        elif is_global:
            t0 = time.perf_counter()
            result = _finish("global_magnitude", W_orig.to(Xw.device), globally[name].to(Xw.device),
                             Xw, bw, Yw, relu, t0)
        elif getattr(data, "groups", 1) > 1:
            result = _per_group(fn, name_of_method, W_orig.to(Xw.device), Xw, data.groups,
                                bw, Yw, relu, sparsity=spars_of[name], **opts)
        else:
            result = fn(W_orig.to(Xw.device), Xw, sparsity=spars_of[name], bias=bw, relu=relu,
                        Y=Yw, **opts)
        weight = result.weight.to(device=module.weight.device, dtype=module.weight.dtype)
        bias = None if result.bias is None else result.bias.to(module.weight.device)
        _write(module, weight, bias)
        rows.append(_report_row(name, data, module, W_orig, result.report))
    options = dict(method=name_of_method, sparsity=sparsity, sequential=sequential,
                   max_samples=max_samples, seed=seed, layers=names, method_options=opts,
                   scope=scope)
    out = PruneResult(model=target, report=rows, options=options)
    if _reiterable(inputs):
        out.output_error = output_discrepancy(reference, target, inputs, device=device)
    return out


def _obs_saliency(W: torch.Tensor, X: torch.Tensor, damp: float) -> torch.Tensor:
    """``w_ij^2 / [H^-1]_jj`` with ``H = X^T X / P + lambda I`` (OBS / SparseGPT's score)."""
    d = torch.diagonal(_inverse_spd(_damped_hessian(X, damp), "sparsegpt"))
    return W.to(torch.float64) ** 2 / d.to(W.device)


#: Scores of the global rules (scope="global"), ``score(W (M, N), X (P, N), damp) -> (M, N)``;
#: higher is kept first.
GLOBAL_SCORES: dict = {
    "magnitude": lambda W, X, damp: W.abs(),
    "wanda": lambda W, X, damp: W.to(torch.float64).abs()
    * torch.linalg.vector_norm(X.to(torch.float64), dim=0).to(W.device),
    "sparsegpt": _obs_saliency,
}


# ---- structured: whole neurons / channels -----------------------------------------------------
#: Unit criteria: the units with the LOWEST score are removed.
STRUCTURED_CRITERIA = ("l1", "apoz", "taylor")


def _batches(inputs: Any) -> Iterable:
    if isinstance(inputs, torch.Tensor):
        return [inputs[i:i + _BATCH_ROWS] for i in range(0, inputs.shape[0], _BATCH_ROWS)]
    return inputs


def _split(batch: Any):
    if isinstance(batch, (tuple, list)):
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        return x, y
    return batch, None


@contextlib.contextmanager
def _output_hooks(modules: Mapping[str, nn.Module], store: dict):
    """Keep each named module's output tensor (with its graph) in ``store[name]``."""
    handles = []

    def make(name):
        def hook(_module, _inputs, output):
            output.retain_grad()
            store[name] = output
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _taylor_scores(model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module],
                   device: Any) -> dict:
    """First-order Taylor criterion of Molchanov et al. 2017, per output unit.

    ``Theta_k = mean over samples of |mean over positions of a_k * dL/da_k|``, with ``a`` the
    post-ReLU activation; for a ReLU, ``a dL/da = z dL/dz`` entrywise (both vanish where
    ``z <= 0``), so the layer's own output ``z`` is hooked. The loss is the summed
    cross-entropy against the batch labels, or against the model's own predictions when the
    batches carry no labels.
    """
    sums = {name: None for name in modules}
    count = 0
    store: dict = {}
    was_training = model.training
    model.eval()
    try:
        with _output_hooks(modules, store):
            for batch in _batches(inputs):
                x, y = _split(batch)
                if device is not None:
                    x = x.to(device)
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    out = model(x)
                    labels = out.detach().argmax(1) if y is None else y.to(out.device)
                    loss = nn.functional.cross_entropy(out, labels, reduction="sum")
                    loss.backward()
                for name in modules:
                    z = store[name]
                    prod = (z * z.grad).detach()
                    per_sample = prod.flatten(2).mean(2) if prod.ndim > 2 else prod
                    contrib = per_sample.abs().sum(0).to(torch.float64).cpu()
                    sums[name] = contrib if sums[name] is None else sums[name] + contrib
                count += x.shape[0]
                store.clear()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        msg = "inputs gave no batches"
        raise ValueError(msg)
    return {name: v / count for name, v in sums.items()}


def unit_scores(model: nn.Module, inputs: Any, criterion: str, *, layers: Any = None,
                ignore: Iterable[str] = (), activations: Optional[dict] = None,
                max_samples: Optional[int] = None, seed: int = 0, device: Any = None) -> dict:
    """Importance of every output unit (neuron / channel) of the selected layers.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor or iterable of batches
        Calibration data (not needed by ``"l1"``); ``"taylor"`` uses ``(x, y)`` labels when
        the batches have them.
    criterion : {"l1", "apoz", "taylor"}
        ``l1``: ``sum_j |W_kj|`` of the unit's (flattened) weights (Li et al. 2017).
        ``apoz``: the negated average percentage of zeros of the unit's post-activation over
        samples (and positions) (Hu et al. 2016). ``taylor``: first-order Taylor estimate of
        the loss change (Molchanov et al. 2017).
    layers, ignore, activations, max_samples, seed, device
        As in :func:`nettrim.capture`.

    Returns
    -------
    dict of {layer name: Tensor of shape (M,)}
        Higher = more important (the lowest are removed first).
    """
    _check_model(model)
    if criterion not in STRUCTURED_CRITERIA:
        msg = f"criterion must be one of {STRUCTURED_CRITERIA}, got {criterion!r}"
        raise ValueError(msg)
    selected = dict(_selected_layers(model, layers, ignore))
    if criterion == "l1":
        return {n: _layer_matrix(m).abs().sum(1).to(torch.float64).cpu() for n, m in selected.items()}
    if criterion == "apoz":
        from .capture import capture
        data = capture(model, inputs, layers=list(selected), activations=activations,
                       max_samples=max_samples, seed=seed, device=device)
        return {n: -(data[n].post <= 0).to(torch.float64).mean(0).cpu() for n in selected}
    return _taylor_scores(model, inputs, selected, device)


def prune_structured(model: nn.Module, inputs: Any, criterion: str, fraction: Any, *,
                     layers: Any = None, ignore: Iterable[str] = (),
                     activations: Optional[dict] = None, max_samples: Optional[int] = None,
                     seed: int = 0, device: Any = None, inplace: bool = False) -> PruneResult:
    """Remove whole neurons / channels with the lowest criterion scores, shrinking the model.

    In each selected layer the ``round(fraction * M)`` lowest-scoring output units (see
    :func:`unit_scores`) are removed with :func:`nettrim.surgery.remove_units`, together with
    the matching inputs of the next layer. Scores are computed once on the original model.
    The default selection is every prunable layer except the last (whose units are the
    model's outputs).

    Parameters
    ----------
    model : nn.Module
        A flat ``nn.Sequential``-like model (what ``remove_units`` supports).
    inputs : Tensor or iterable of batches
    criterion : {"l1", "apoz", "taylor"}
    fraction : float in [0, 1) or dict of {layer: float}
        Fraction of each layer's units to remove (at least one unit always stays).
    layers, ignore, activations, max_samples, seed, device, inplace
        As in :func:`prune_baseline`.

    Returns
    -------
    PruneResult
        ``.report`` rows: ``shape`` the new weight shape, ``nonzeros_before`` / ``total`` of
        the original layer, ``nonzeros_after`` of the shrunk one, ``sparsity`` the fraction
        of the layer's original weights gone; ``options["removed"]`` = units removed per layer.
    """
    from .surgery import remove_units
    _check_model(model)
    if criterion not in STRUCTURED_CRITERIA:
        msg = f"criterion must be one of {STRUCTURED_CRITERIA}, got {criterion!r}"
        raise ValueError(msg)
    every = [name for name, _ in _selected_layers(model, None, ())]
    if layers is None:
        names = [n for n in every[:-1] if n not in set(ignore)]
    else:
        names = [name for name, _ in _selected_layers(model, layers, ignore)]
        if every and every[-1] in names:
            msg = (f"layer {every[-1]!r} is the model's output layer: its units cannot be "
                   "removed; leave it out of layers")
            raise ValueError(msg)
    if isinstance(fraction, Mapping):
        unknown = sorted(set(fraction) - set(names))
        if unknown:
            msg = f"fraction names unknown or unprunable layers {unknown}; allowed: {names}"
            raise ValueError(msg)
        frac_of = {n: _check_sparsity(fraction.get(n, 0.0), f"fraction[{n!r}]") for n in names}
    else:
        f = _check_sparsity(fraction, "fraction")
        frac_of = {n: f for n in names}
    t0 = time.perf_counter()
    scores = unit_scores(model, inputs, criterion, layers=names, activations=activations,
                         max_samples=max_samples, seed=seed, device=device) if names else {}
    t_scores = time.perf_counter() - t0
    reference = copy.deepcopy(model) if inplace else model
    target = model if inplace else copy.deepcopy(model)
    before = {n: _layer_matrix(m).clone() for n, m in target.named_modules() if n in names}
    removed = {}
    for name in names:
        M = scores[name].numel()
        k = _n_zeros(M, frac_of[name])
        if k >= M:
            k = M - 1
        drop = _smallest_mask(scores[name], k)
        keep = torch.nonzero(~drop).flatten()
        if k > 0:
            remove_units(target, name, keep)
        removed[name] = k
    modules = dict(target.named_modules())
    rows = []
    for name in names:
        module = modules[name]
        W_old = before[name]
        W_new = _layer_matrix(module)
        nz_after = int((W_new != 0).sum())
        rows.append(LayerReport(
            name=name, kind="linear" if isinstance(module, nn.Linear) else "conv2d",
            shape=tuple(module.weight.shape), nonzeros_before=int((W_old != 0).sum()),
            nonzeros_after=nz_after, total=W_old.numel(),
            sparsity=1.0 - W_new.numel() / W_old.numel(), epsilon=float("nan"),
            epsilon_abs=float("nan"), relative_error=float("nan"), status=OPTIMAL,
            iterations=0, seconds=t_scores / max(1, len(names)), solver=f"structured:{criterion}"))
    options = dict(method=f"structured:{criterion}", fraction=fraction, layers=names,
                   removed=removed, max_samples=max_samples, seed=seed)
    out = PruneResult(model=target, report=rows, options=options)
    if _reiterable(inputs):
        out.output_error = output_discrepancy(reference, target, inputs, device=device)
    return out


# ---- prune, then retrain ----------------------------------------------------------------------
def hptd(model: nn.Module, loader: Any, sparsity: Any, *, epochs: int = 1, lr: float = 1e-3,
         rounds: int = 1, scope: str = "global", inputs: Any = None,
         layers: Any = None, ignore: Iterable[str] = (), batch_size: int = 128, seed: int = 0,
         inplace: bool = False, progress: bool = False) -> PruneResult:
    """Han et al.'s prune-then-retrain ("HPTD"): magnitude pruning and masked fine-tuning.

    ``rounds`` times: prune to ``1 - (1 - sparsity)^(r / rounds)`` by magnitude (zeros stay
    zero: they are the smallest), then fine-tune ``epochs`` epochs with the zeros held
    (:func:`nettrim.finetune`).

    Parameters
    ----------
    model : nn.Module
        Never modified unless ``inplace=True``.
    loader : DataLoader or (x, y) tensors
        Training data for the fine-tuning.
    sparsity : float in [0, 1)
    epochs : int, default 1
        Fine-tuning epochs per round.
    lr : float, default 1e-3
        Adam learning rate of the fine-tuning.
    rounds : int, default 1
        Prune / retrain rounds (iterative pruning).
    scope : {"global", "layer"}
        One magnitude threshold for the whole model, or the same sparsity in every layer.
    inputs : Tensor or iterable, optional
        Data for the per-layer error report (default: the loader's inputs).
    layers, ignore
        Which layers to prune.
    batch_size, seed, progress
        Passed to :func:`nettrim.finetune`.

    Returns
    -------
    PruneResult
        The final (fine-tuned) model; the report rows are those of the last pruning step
        (errors before its fine-tuning); ``options["losses"]`` lists each round's per-epoch
        training losses; ``output_error`` is measured after the fine-tuning.
    """
    from .finetune import finetune, _as_loader
    _check_model(model)
    s = _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        msg = f"scope must be 'global' or 'layer', got {scope!r}"
        raise ValueError(msg)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        msg = f"rounds must be a positive int, got {rounds!r}"
        raise ValueError(msg)
    data = _as_loader(loader, batch_size=batch_size, seed=seed)
    if inputs is None:
        inputs = data
    method = "global_magnitude" if scope == "global" else "magnitude"
    current = model if inplace else copy.deepcopy(model)
    losses = []
    result = None
    for r in range(1, rounds + 1):
        s_r = s if r == rounds else 1.0 - (1.0 - s) ** (r / rounds)
        result = prune_baseline(current, inputs, method, s_r, layers=layers, ignore=ignore,
                                sequential=False, inplace=True, seed=seed)
        fit = finetune(current, data, epochs=epochs, lr=lr, seed=seed + r, progress=progress)
        losses.append(list(fit.losses))
    result.options.update(method=f"hptd:{scope}", sparsity=s, rounds=rounds, epochs=epochs,
                          lr=lr, losses=losses)
    result.output_error = output_discrepancy(model, current, inputs)
    return result


