"""The Optimal Brain family: second-order saliencies from the layer's Hessian ``X^T X / P``.

``obd`` (smallest ``w^2 H_jj / 2``, H the ReLU-gated Gauss-Newton diagonal; LeCun et al. 1990),
``lobs`` (smallest ``w^2 / [H^-1]_jj``, then the exact OBS update of the kept weights; Dong et
al. 2017) and ``sparsegpt`` (the OBS column sweep with the Cholesky factor of ``H^-1`` and lazy
batch updates, unstructured or N:M; Frantar & Alistarh 2023).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..checks import check_sparsity
from ..results import LayerPruneResult, layer_result, pre_activation
from .masks import check_damp, check_nm, n_zeros, nm_mask, prepare, smallest_mask

__all__ = ["DEFAULT_BLOCKSIZE", "DEFAULT_DAMP", "lobs", "obd", "obs_saliency", "sparsegpt"]

#: Relative damping of the Hessians of the OBS-type methods: ``lambda = damp * mean(diag(H))``.
DEFAULT_DAMP = 0.01
#: SparseGPT: columns per lazy batch update.
DEFAULT_BLOCKSIZE = 128
#: Rows per forward pass when a model is scored on a tensor of inputs.


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
    W, X : ndarray or Tensor of shapes (M, N) and (P, N)
        The weight and the layer input (required).
    sparsity : float in [0, 1)
    bias : Tensor of shape (M,), optional
        Kept unchanged; part of the pre-activation that gates the ReLU.
    relu : bool, default True
    Y : Tensor of shape (P, M), optional
        Target of the reported error.

    Returns
    -------
    LayerPruneResult
        The pruned weights (the kept ones unchanged).
    """
    t0 = time.perf_counter()
    s = check_sparsity(sparsity)
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=True)
    Xd = X.to(torch.float64)
    if relu:
        active = (pre_activation(Xd, W.to(torch.float64), bias) > 0).to(torch.float64)
        hdiag = active.T @ (Xd * Xd)                      # (M, N): H^(i)_jj
    else:
        hdiag = (Xd * Xd).sum(0).expand(W.shape[0], -1)   # same diagonal for every row
    saliency = 0.5 * W.to(torch.float64) ** 2 * hdiag
    saliency[W == 0] = -1.0
    mask = smallest_mask(saliency, n_zeros(W.numel(), s))
    return layer_result("obd", W, W.masked_fill(mask, 0.0), X, bias, Y, relu, t0)


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
    W, X, sparsity
        As in :func:`obd`.
    bias, relu, Y
        As in :func:`magnitude`.
    damp : float, default 0.01
        ``H += damp * mean(diag(H)) * I``.

    Returns
    -------
    LayerPruneResult
    """
    t0 = time.perf_counter()
    s = check_sparsity(sparsity)
    damp = check_damp(damp)
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=True)
    H = _damped_hessian(X, damp)
    Hinv = _inverse_spd(H, "lobs")
    W64 = W.to(torch.float64)
    saliency = W64 ** 2 / torch.diagonal(Hinv)
    saliency[W == 0] = -1.0
    # weights already zero stay zero (the OBS update would otherwise move them)
    mask = smallest_mask(saliency, n_zeros(W.numel(), s)) | (W == 0)
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
    return layer_result("lobs", W, W_new, X, bias, Y, relu, t0)


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
    W, X
        As in :func:`obd`.
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
    W, X, bias, Y = prepare(W, X, bias, Y, need_x=True)
    M, N = W.shape
    damp = check_damp(damp)
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
            check_sparsity(sparsity)
    elif nm is not None:
        n, m = check_nm(nm, sparsity, N)
        if blocksize % m:
            msg = f"blocksize={blocksize} must be a multiple of m={m} for nm=({n}, {m})"
            raise ValueError(msg)
    else:
        s = check_sparsity(sparsity)
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
            k_b = n_zeros(M * i2, s) - n_zeros(M * i1, s)
            scores = W1 ** 2 / d_all[i1:i2] ** 2
            scores[zero[:, i1:i2]] = -1.0
            mask1 = smallest_mask(scores, k_b) | zero[:, i1:i2]
        for i in range(count):
            if m and i % m == 0:
                scores = W1[:, i:i + m] ** 2 / torch.diagonal(U1)[i:i + m] ** 2
                held = zero[:, i1 + i:i1 + i + m]
                scores[held] = -1.0
                mask1[:, i:i + m] = nm_mask(scores, n, m) | held
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
    return layer_result("sparsegpt", W, Wd, X, bias, Y, relu, t0, extra)


def obs_saliency(W: torch.Tensor, X: torch.Tensor, damp: float) -> torch.Tensor:
    """``w_ij^2 / [H^-1]_jj`` with ``H = X^T X / P + lambda I`` (OBS / SparseGPT's score)."""
    d = torch.diagonal(_inverse_spd(_damped_hessian(X, damp), "sparsegpt"))
    return W.to(torch.float64) ** 2 / d.to(W.device)
