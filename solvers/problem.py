"""The Net-Trim program for one layer, validated once at construction.

Symbols (samples are rows, PyTorch's convention)::

    X      (P, N)   layer input, one row per sample (a ones column carries a bias)
    Y      (P, M)   target outputs; for a ReLU layer Y = relu(X W0^T) >= 0
    V      (P, M)   upper bound on the pre-activation where Y == 0 (0 in parallel Net-Trim)
    S      (P, M)   known additive offset before the activation (a residual add; 0 if absent)
    W      (M, N)   the weight, as in ``nn.Linear`` (out_features x in_features)
    Omega           active set {(p, m): Y[p, m] > 0} (every entry for a linear layer)
    epsilon         absolute tolerance (>= 0) on the active-set residual

Program (ReLU layer)::

    minimize    sum |W|
    subject to  || (X W^T + S - Y) on Omega ||_F <= epsilon
                (X W^T + S)[p, m] <= V[p, m]      (p, m) not in Omega

Linear layer (``relu=False``): one Frobenius ball ``|| X W^T + S - Y ||_F <= epsilon`` over all
entries and no inequalities. A linear program may also be given on compressed rows
(:mod:`solvers.gram`): then ``floor_sq`` is the squared residual that no weight removes, the
program reads ``|| X W^T + S - Y ||_F^2 + floor_sq <= epsilon^2`` and every residual reported
is that full one.

The offset leaves the program's form unchanged: it is the plain program with the ball's center
``Y - S`` and the bound ``V - S`` (:meth:`NetTrimProblem.program_tensors`, what the solvers
read), while Omega stays ``Y > 0`` (Y is the output after the activation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["NetTrimProblem", "as_tensor", "check_finite", "safe_norm", "ACTIVE_THRESHOLD"]

#: An output entry is active (in Omega) when it is strictly above this value.
ACTIVE_THRESHOLD = 0.0

_FLOATS = (torch.float32, torch.float64)
#: float64 magnitudes whose squares (and sums of up to 1e12 squares) stay normal in float64.
_SAFE_SQUARE = (1e-140, 1e140)


def as_tensor(a: Any, *, name: str) -> torch.Tensor:
    """Return ``a`` as a 2-D floating torch tensor without copying numpy data."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    else:
        msg = f"{name} must be a numpy array or a torch tensor, got {type(a).__name__}"
        raise TypeError(msg)
    if t.ndim != 2:
        msg = f"{name} must be 2-D, got shape {tuple(t.shape)}"
        raise ValueError(msg)
    if t.dtype not in _FLOATS:
        if t.dtype.is_floating_point or t.dtype.is_complex:
            msg = f"{name} must be float32 or float64, got {t.dtype} (convert it, e.g. .float())"
            raise TypeError(msg)
        t = t.to(torch.float64)  # integer or boolean data: promote exactly
    return t


def _like_outputs(value: Any, name: str, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """A per-entry companion of Y (the bound V, the offset S) checked for shape, device and
    finiteness, in X's dtype."""
    t = as_tensor(value, name=name)
    if t.shape != Y.shape:
        msg = f"{name} has shape {tuple(t.shape)} but Y has shape {tuple(Y.shape)}; they must match"
        raise ValueError(msg)
    if t.device != X.device:
        msg = f"{name} is on {t.device} but X is on {X.device}; put both on one device"
        raise ValueError(msg)
    t = t.to(X.dtype)
    check_finite(t, name)
    return t


def check_finite(t: torch.Tensor, name: str, what: str = "activations") -> None:
    """Raise ValueError naming ``name`` when ``t`` has NaN or Inf entries."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(bad.sum()) - n_nan
        msg = (f"{name} contains {n_nan} NaN and {n_inf} Inf entries (of {t.numel()}); "
               f"Net-Trim needs finite {what}")
        raise ValueError(msg)


def safe_norm(t: torch.Tensor, dim: Any = None) -> torch.Tensor:
    """Euclidean norm (over ``dim``, default all entries) in float64, free of overflow and
    underflow for any finite ``t``: float32 squares always fit float64; float64 data whose
    squares leave float64's range is divided by its largest magnitude first."""
    n = torch.linalg.vector_norm(t, dim=dim, dtype=torch.float64)
    if t.dtype == torch.float64 and t.numel():
        m = float(t.abs().max())
        if m > 0 and not _SAFE_SQUARE[0] <= m <= _SAFE_SQUARE[1]:
            n = torch.linalg.vector_norm(t / m, dim=dim) * m
    return n


def _nonnegative(value: Any, name: str, what: str) -> float:
    """``value`` as a finite float >= 0; TypeError / ValueError naming ``name`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a real number, got {value!r}"
        raise TypeError(msg) from None
    if not math.isfinite(number) or number < 0:
        msg = f"{name} must be finite and >= 0 ({what}), got {number}"
        raise ValueError(msg)
    return number


@dataclass(frozen=True)
class NetTrimProblem:
    """One layer's Net-Trim program (see the module docstring for the symbols).

    Parameters
    ----------
    X : ndarray or Tensor of shape (P, N)
        Layer input, one row per sample.
    Y : ndarray or Tensor of shape (P, M)
        Target outputs (post-activation for a ReLU layer, so ``Y >= 0``).
    epsilon : float
        Absolute tolerance on the active-set residual, ``>= 0``.
    V : ndarray or Tensor of shape (P, M), optional
        Upper bound on the pre-activation off the active set; ``None`` means 0. Only for
        ``relu=True``.
    relu : bool, default True
        ``False`` for a linear layer (one Frobenius ball, no inequalities).
    S : ndarray or Tensor of shape (P, M), optional
        Known offset added to ``X W^T`` before the activation (a residual block's skip term,
        recorded per sample): the output is ``relu(X W^T + S)``. ``None`` means 0.
    floor_sq : float, default 0
        Linear programs only: a squared residual added to every W's (the part of the target
        outside the range of X when X and Y are compressed rows, :func:`solvers.gram.compress`).
        The ball's radius on the data is then :attr:`radius`.

    Notes
    -----
    numpy and torch input are both accepted (torch on any device). Y and V are converted to
    X's array kind, device and dtype (float32 or float64); integer input is promoted to
    float64. Arrays are not copied when they already match.
    """

    X: Any
    Y: Any
    epsilon: float
    V: Any = None
    relu: bool = True
    S: Any = None
    floor_sq: float = 0.0

    def __post_init__(self) -> None:
        X = as_tensor(self.X, name="X")
        Y = as_tensor(self.Y, name="Y")
        if Y.device != X.device:
            msg = f"Y is on {Y.device} but X is on {X.device}; put both on one device"
            raise ValueError(msg)
        if X.shape[0] != Y.shape[0]:
            msg = (f"X has shape {tuple(X.shape)} and Y has shape {tuple(Y.shape)}: "
                   "they must have the same number of rows (samples)")
            raise ValueError(msg)
        if X.shape[0] == 0 or X.shape[1] == 0 or Y.shape[1] == 0:
            msg = f"empty problem: X has shape {tuple(X.shape)}, Y has shape {tuple(Y.shape)}"
            raise ValueError(msg)
        Y = Y.to(X.dtype)
        check_finite(X, "X")
        check_finite(Y, "Y")
        epsilon = _nonnegative(self.epsilon, "epsilon", "an absolute tolerance")
        floor_sq = _nonnegative(self.floor_sq, "floor_sq", "a squared residual")
        if floor_sq and self.relu:
            msg = ("floor_sq was given with relu=True: only a linear program's rows can be "
                   "compressed (the inequalities are per row); set relu=False")
            raise ValueError(msg)
        V = None
        if self.V is not None:
            if not self.relu:
                msg = ("V was given with relu=False: a linear layer has no inequality "
                       "constraints, so V has no meaning; drop V or set relu=True")
                raise ValueError(msg)
            V = _like_outputs(self.V, "V", X, Y)
        S = None if self.S is None else _like_outputs(self.S, "S", X, Y)
        if self.relu:
            n_neg = int((Y < 0).sum())
            if n_neg:
                msg = (f"Y has {n_neg} negative entries (min {float(Y.min()):.3g}) but relu=True: "
                       "a ReLU layer's outputs are >= 0; pass post-activation outputs, "
                       "or relu=False for a linear layer")
                raise ValueError(msg)
        numpy_in = isinstance(self.X, np.ndarray)
        object.__setattr__(self, "X", X.numpy() if numpy_in else X)
        object.__setattr__(self, "Y", Y.numpy() if numpy_in else Y)
        object.__setattr__(self, "V", None if V is None else (V.numpy() if numpy_in else V))
        object.__setattr__(self, "S", None if S is None else (S.numpy() if numpy_in else S))
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "relu", bool(self.relu))
        object.__setattr__(self, "floor_sq", floor_sq)

    # ---- shape and kind -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(P, N, M)``: samples, inputs, outputs."""
        return (self.X.shape[0], self.X.shape[1], self.Y.shape[1])

    @property
    def is_numpy(self) -> bool:
        return isinstance(self.X, np.ndarray)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(X, Y, V)`` as torch tensors (zero-copy views of numpy data)."""
        t = (lambda a: torch.from_numpy(a)) if self.is_numpy else (lambda a: a)
        return t(self.X), t(self.Y), None if self.V is None else t(self.V)

    def program_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(X, Y - S, V - S)``: the program in the form without offset (ball center and
        bound), what the solvers read. The bound is None when both V and S are absent (0)."""
        X, Y, V = self.tensors()
        if self.S is None:
            return X, Y, V
        S = torch.from_numpy(self.S) if self.is_numpy else self.S
        bound = None
        if self.relu:
            bound = -S if V is None else V - S
        return X, Y - S, bound

    @property
    def radius(self) -> float:
        """Radius of the ball on the data: ``sqrt(epsilon^2 - floor_sq)`` (epsilon without a
        floor); 0 where epsilon is below the floor (then no W is feasible:
        :attr:`below_floor`)."""
        if not self.floor_sq:
            return self.epsilon
        return math.sqrt(max(self.epsilon ** 2 - self.floor_sq, 0.0))

    @property
    def below_floor(self) -> bool:
        """Whether epsilon is below the residual every W leaves (the program is infeasible)."""
        return self.epsilon ** 2 < self.floor_sq * (1.0 - 1e-12)

    def full_residual(self, residual: float) -> float:
        """A residual on the data as the program's: ``sqrt(residual^2 + floor_sq)``."""
        return math.sqrt(residual * residual + self.floor_sq) if self.floor_sq else residual

    def target_norm(self) -> float:
        """``||Y - S||_F`` of the program (the floor's part included)."""
        _, Y, _ = self.program_tensors()
        return self.full_residual(float(safe_norm(Y)))

    def active_mask(self) -> torch.Tensor:
        """Boolean tensor of shape (P, M): True on Omega."""
        _, Y, _ = self.tensors()
        if not self.relu:
            return torch.ones_like(Y, dtype=torch.bool)
        return Y > ACTIVE_THRESHOLD

    def _weight(self, W: Any, name: str = "W") -> torch.Tensor:
        X, _, _ = self.tensors()
        W = as_tensor(W, name=name).to(device=X.device, dtype=X.dtype)
        M, N = self.shape[2], self.shape[1]
        if tuple(W.shape) != (M, N):
            msg = f"{name} must have shape (M, N) = ({M}, {N}), got {tuple(W.shape)}"
            raise ValueError(msg)
        return W

    # ---- measuring a candidate W ----------------------------------------------------------
    def residual(self, W: Any) -> float:
        """Active-set residual ``|| (X W^T + S - Y) on Omega ||_F`` (all entries if linear)."""
        X, Y, _ = self.program_tensors()
        D = X @ self._weight(W).T - Y
        if self.relu:
            D = D.masked_fill(~self.active_mask(), 0.0)
        return self.full_residual(float(safe_norm(D)))

    def violation(self, W: Any) -> float:
        """Largest inequality violation ``max(0, max_{not Omega} (X W^T + S - V))`` (0 if
        linear)."""
        if not self.relu:
            return 0.0
        X, _, V = self.program_tensors()
        Z = X @ self._weight(W).T
        if V is not None:
            Z = Z - V
        Z = Z.masked_fill(self.active_mask(), -math.inf)
        return max(0.0, float(Z.max()))

    def is_feasible(self, W: Any, *, rtol: float = 1e-3) -> bool:
        """Feasible within ``rtol``: violation <= rtol max|Y| and residual <= epsilon (1 + rtol)
        + rtol^2 ||Y||_F (the last term lets epsilon = 0 be met in floating point)."""
        _, Y, _ = self.tensors()
        res_tol = self.epsilon * (1 + rtol) + rtol ** 2 * self.full_residual(float(safe_norm(Y)))
        return (self.residual(W) <= res_tol
                and self.violation(W) <= rtol * float(Y.abs().max()))
