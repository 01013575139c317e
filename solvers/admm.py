"""ADMM for the Net-Trim program, all M neurons at once (Fast Convex Pruning, Algorithm 1).

Symbols (see :mod:`solvers.problem`): ``X (P, N)``, ``Y (P, M)``, ``V (P, M)``, ``epsilon``.
Internally the weight is kept transposed, ``W3 (N, M)``, so that ``X W3`` is ``(P, M)``.

Splitting::

    minimize  ||W2||_1 + indicator_C(W1)    subject to  W1 = X W3,  W2 = W3

with ``C = {Z : ||(Z - Y) on Omega||_F <= epsilon,  Z <= V off Omega}``. Scaled-form ADMM with
penalty ``rho`` and scaled duals ``U1 (P, M)``, ``U2 (N, M)``::

    W1 = Proj_C(X W3 - U1)                              # ball on Omega, min(., V) off it
    W2 = S_{1/rho}(W3 - U2)                             # soft threshold
    W3 = (X^T X + I)^{-1} (X^T (W1 + U1) + W2 + U2)     # one Cholesky per layer
    U1 = U1 + W1 - X W3 ;   U2 = U2 + W2 - W3

The W3 system does not depend on rho, so rho adapts freely (residual balancing) with no
refactorization. When P < N the system is solved through the matrix-inversion lemma,
``(X^T X + I)^{-1} R = R - X^T (I + X X^T)^{-1} X R``, factoring the P x P matrix instead, and
``X W3`` then comes for free as ``(I + X X^T)^{-1} X R``.

Residuals (Boyd et al. 2011, section 3.3, with x = (W1, W2), z = W3)::

    primal  r = || (W1 - X W3, W2 - W3) ||_F
    dual    s = rho || (X (W3 - W3_prev), W3 - W3_prev) ||_F

Stop when ``r <= eps_pri`` and ``s <= eps_dual`` AND the returned sparse copy W2 is feasible
for the original program within ``feas_tol`` (residual <= epsilon (1 + feas_tol), violation <=
feas_tol max|Y|; the residual bound has an absolute floor of feas_tol^2 ||Y||_F so that
epsilon = 0 is reachable in floating point); hitting ``max_iter`` first returns ``MAX_ITER``.

Data scaling: X, Y, V and epsilon are divided by ``s = 0.3 sqrt(max diag(X^T X))`` (the
authors' rule), which leaves W unchanged and keeps ``X^T X + I`` well conditioned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .problem import NetTrimProblem, as_tensor, check_finite, safe_norm
from .result import NetTrimResult
from .status import INFEASIBLE, MAX_ITER, OPTIMAL, SOLVER_ERROR

__all__ = ["solve_admm", "soft_threshold", "project_ball", "project_constraints",
           "ADMMSettings", "data_scale", "checked_settings", "Callback", "l1_result"]

#: Residual balancing: rho is rescaled by sqrt(r'/s') (normalized primal over dual residual)
#: when that factor leaves [1/RHO_ADAPT, RHO_ADAPT].
RHO_ADAPT = 5.0
TINY = 1e-30
#: Initial rho times the mean magnitude of the reference weights (see solve_admm).
RHO_START = 1.0
#: Over-relaxation parameter (1 = plain ADMM; 1.5-1.8 usually converges faster).
RELAX = 1.7
#: The authors' data-scaling factor: divide the data by SCALE_FACTOR * max column norm of X.
SCALE_FACTOR = 0.3
#: Residual balancing keeps rho within [rho_0 / RHO_RANGE, rho_0 * RHO_RANGE] of its start:
#: unbounded, it collapsed to 1e-54 on a layer with an unpenalized bias and a warm start, and
#: the iterate diverged (issue 14).
RHO_RANGE = 1e6


@dataclass(frozen=True)
class ADMMSettings:
    """Options of :func:`solve_admm` (documented there)."""

    rho: float = 1.0
    eps_abs: float = 1e-5
    eps_rel: float = 1e-3
    feas_tol: float = 1e-3
    max_iter: int = 5000
    adapt_every: int = 5
    check_every: int = 1

    def __post_init__(self) -> None:
        for name in ("rho", "eps_rel", "feas_tol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                msg = f"{name} must be a positive finite number, got {value!r}"
                raise ValueError(msg)
        if not (isinstance(self.eps_abs, (int, float)) and self.eps_abs >= 0):
            msg = f"eps_abs must be >= 0, got {self.eps_abs!r}"
            raise ValueError(msg)
        for name in ("max_iter", "adapt_every", "check_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                msg = f"{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)


#: ``callback(iteration, primal_residual, dual_residual, rho)`` of the ADMM solvers.
Callback = Optional[Callable[[int, float, float, float], None]]


def checked_settings(problem: Any, **options: Any) -> ADMMSettings:
    """The ADMM options of a solve, checked (:class:`ADMMSettings`), after checking that
    ``problem`` is a :class:`NetTrimProblem`."""
    if not isinstance(problem, NetTrimProblem):
        msg = f"problem must be a NetTrimProblem, got {type(problem).__name__}"
        raise TypeError(msg)
    return ADMMSettings(**options)


# ---- closed forms ---------------------------------------------------------------------------
def soft_threshold(V: torch.Tensor, threshold: Any) -> torch.Tensor:
    """Proximal operator of ``threshold * |.|``: ``sign(V) max(|V| - threshold, 0)``.

    ``threshold`` is a scalar or a tensor broadcastable to V (weighted l1). Entries with
    ``|V| <= threshold`` come out as exact zeros.
    """
    if isinstance(threshold, torch.Tensor):
        return V - torch.maximum(torch.minimum(V, threshold), -threshold)
    return V - V.clamp(-threshold, threshold)


def project_ball(Z: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of Z onto the Frobenius ball ``||. - center||_F <= radius``."""
    D = Z - center
    norm = float(torch.linalg.vector_norm(D))
    if norm <= radius:
        return Z.clone()
    return center + D * (radius / norm)


def project_constraints(Z: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
                        bound: torch.Tensor, radius: float) -> torch.Tensor:
    """Projection onto C: the ball of ``radius`` around Y on ``active``, ``min(Z, bound)`` off it.

    ``bound`` must be +inf on the active set (then ``min(Z, bound)`` leaves Z there); since the
    ball part is ``Y + c (Z - Y) = Z - (1 - c)(Z - Y)``, the projection is
    ``min(Z, bound) - (1 - c) D`` with ``D = (Z - Y)`` on active, 0 off it,
    ``c = min(1, radius / ||D||)``.
    """
    D = (Z - Y).masked_fill_(~active, 0.0)
    return _project_with(Z, D, bound, radius)


def _project_with(Z: torch.Tensor, D: torch.Tensor, bound: Optional[torch.Tensor],
                  radius: float) -> torch.Tensor:
    norm = float(torch.linalg.vector_norm(D))
    shrink = 0.0 if norm <= radius else 1.0 - radius / norm
    W1 = Z.clone() if bound is None else torch.minimum(Z, bound)
    if shrink:
        W1.sub_(D, alpha=shrink)
    return W1


def data_scale(X: torch.Tensor) -> float:
    """The authors' scaling ``0.3 sqrt(max diag(X^T X))`` (1 for an all-zero X), computed in
    float64 without overflow or underflow (:func:`solvers.problem.safe_norm`)."""
    s = SCALE_FACTOR * float(safe_norm(X, dim=0).max())
    return s if s > 0 else 1.0


# ---- the solver -----------------------------------------------------------------------------
class _Factor:
    """Solves ``(X^T X + I) W = R`` for matrix right-hand sides; one factorization."""

    def __init__(self, X: torch.Tensor):
        P, N = X.shape
        self.X = X
        self.lemma = P < N
        if self.lemma:  # factor I + X X^T (P x P)
            K = X @ X.T
        else:           # factor X^T X + I (N x N)
            K = X.T @ X
        K.diagonal().add_(1.0)
        # the explicit inverse, from the Cholesky factor once: every solve is then one GEMM
        # (the matrix is I + a Gram matrix of the scaled data, so its condition number is
        # modest); two triangular solves with matrix right-hand sides run at a fraction of
        # GEMM speed on CPUs (measured: 14 ms vs 8 ms for N = 785, M = 300, float32)
        self.K_inv = torch.cholesky_inverse(torch.linalg.cholesky(K))

    def step(self, W1: torch.Tensor, W2: torch.Tensor, W3: torch.Tensor, XW: torch.Tensor,
             U1: torch.Tensor, U2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The W3 step with over-relaxation (Boyd et al. 3.4.3)::

            W1 <- a W1 + (1 - a) X W3 (in place),   W2h = a W2 + (1 - a) W3
            W3 = (X^T X + I)^{-1} (X^T (W1 + U1) + W2h + U2)

        Returns ``(W3, X W3, W2h)``."""
        W1.mul_(RELAX).add_(XW, alpha=1.0 - RELAX)
        W2h = W2.mul(RELAX).add_(W3, alpha=1.0 - RELAX)
        R = self.X.T @ (W1 + U1)
        R.add_(W2h).add_(U2)
        W3_new, XW_new = self.solve(R)
        if XW_new is None:
            XW_new = self.X @ W3_new
        return W3_new, XW_new, W2h

    def solve(self, R: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(W, X W)`` when the lemma gives ``X W`` for free, else ``(W, None)``."""
        if self.lemma:
            S = self.K_inv @ (self.X @ R)   # (I + X X^T)^{-1} X R  = X W
            return R - self.X.T @ S, S
        return self.K_inv @ R, None


def _norm(*ts: torch.Tensor) -> float:
    return math.sqrt(sum(float(torch.linalg.vector_norm(t)) ** 2 for t in ts))


def scaled_data(problem: NetTrimProblem, X: torch.Tensor, Y: torch.Tensor, V) -> tuple:
    """The program's data divided by :func:`data_scale`: ``(X, Y, s, active, bound)``.

    ``bound`` is the upper limit on ``X W^T`` entrywise (inf on the active set, V/s or 0 off
    it) for a ReLU layer, None for a linear one.
    """
    s = data_scale(X)
    _check_scaled_range(Y, "Y", s)
    if V is not None:
        _check_scaled_range(V, "V", s)
    X = X / s
    Y = Y / s
    active = problem.active_mask()
    bound = None
    if problem.relu:
        bound = torch.full_like(Y, math.inf).masked_fill_(~active, 0.0)
        if V is not None:
            bound = torch.where(active, bound, V / s)
    return X, Y, s, active, bound


def _check_scaled_range(A: torch.Tensor, name: str, s: float) -> None:
    """Refuse data that the scaling by ``s`` (from X) would push out of the dtype's accurate
    range: its largest entry over ``s`` must stay between ``tiny / eps`` and ``max * eps``."""
    info = torch.finfo(A.dtype)
    ratio = float(A.abs().max()) / s
    if ratio and not info.tiny / info.eps <= ratio <= info.max * info.eps:
        msg = (f"{name} is {ratio:.3g} times the scale of X (0.3 x its largest column norm): "
               f"outside what {A.dtype} resolves; rescale {name} and epsilon, or pass float64 "
               "data")
        raise ValueError(msg)


def _check_warm_start(problem: NetTrimProblem, W0: Any, X: torch.Tensor) -> torch.Tensor:
    """W0 as the solver's ``(N, M)`` iterate; ValueError naming W0 when it has the wrong shape,
    NaN/Inf entries, or a size whose products with the (scaled) X overflow."""
    W = problem._weight(W0, name="W0")
    check_finite(W, "W0", what="warm starts")
    if not bool(torch.isfinite(X @ W.T).all()):
        msg = f"W0 is too large for the data: X W0^T overflows {W.dtype}"
        raise ValueError(msg)
    return W.T.contiguous()


def _zero_result(problem: NetTrimProblem, ball: "_Ball", rho: float,
                 t0: float) -> Optional[NetTrimResult]:
    """The answer W = 0 when it is feasible (then it is optimal: the objective is >= 0 and
    vanishes there); None otherwise. A compressed linear program whose epsilon is below its
    floor gets W = 0 and INFEASIBLE: no W meets it."""
    P, N, M = problem.shape
    W = torch.zeros(N, M, device=ball.X.device, dtype=ball.X.dtype)
    ok, res, viol = ball.feasible(W)
    below = problem.below_floor
    if not (ok or below):
        return None
    W = W.T.contiguous()
    return NetTrimResult(
        W=W.cpu().numpy() if problem.is_numpy else W, status=INFEASIBLE if below else OPTIMAL,
        iterations=0, objective=0.0, residual=res * ball.s, violation=viol * ball.s,
        epsilon=problem.epsilon, primal_residual=0.0, dual_residual=0.0,
        solve_time=time.perf_counter() - t0, solver="admm", rho=rho)


def _converged(settings: ADMMSettings, sqrt_dim: float, r_norm: float, s_norm: float,
               pri_scale: float, dual_scale: float) -> bool:
    """The primal/dual residual test (Boyd et al. 2011, 3.3.1) with absolute and relative
    tolerances: ``r <= sqrt(dim) eps_abs + eps_rel pri_scale``, likewise s with dual_scale."""
    return (r_norm <= sqrt_dim * settings.eps_abs + settings.eps_rel * pri_scale
            and s_norm <= sqrt_dim * settings.eps_abs + settings.eps_rel * dual_scale)


def _balance(rho: float, rho_0: float, r_rel: float, s_rel: float, U1: torch.Tensor,
             U2: torch.Tensor) -> float:
    """Residual balancing on the normalized residuals (as OSQP does): ``rho *= sqrt(r'/s')``
    with ``r' = r / (primal scale)``, ``s' = s / (dual scale)`` when that factor leaves
    ``[1/RHO_ADAPT, RHO_ADAPT]``, cut so that rho stays within RHO_RANGE of its start
    ``rho_0``; the scaled duals are rescaled in place (no refactorization is needed).
    Returns the new rho."""
    if not (r_rel > 0 and s_rel > 0):
        return rho
    ratio = math.sqrt(r_rel / s_rel)
    if not math.isfinite(ratio) or 1.0 / RHO_ADAPT <= ratio <= RHO_ADAPT:
        return rho
    target = min(max(rho * ratio, rho_0 / RHO_RANGE), rho_0 * RHO_RANGE)
    ratio = target / rho
    U1.div_(ratio)
    U2.div_(ratio)
    return target


def solve_admm(problem: NetTrimProblem, *, W0: Any = None, penalty: Any = None,
               rho: Optional[float] = None, eps_abs: float = ADMMSettings.eps_abs,
               eps_rel: float = ADMMSettings.eps_rel, feas_tol: float = ADMMSettings.feas_tol,
               max_iter: int = ADMMSettings.max_iter, callback: Callback = None) -> NetTrimResult:
    """Solve the Net-Trim program by ADMM (see the module docstring for the recursion).

    Parameters
    ----------
    problem : NetTrimProblem
        The program. numpy data runs on the CPU through torch and returns numpy; torch data
        runs on its device (CPU or CUDA) and returns a tensor there, in the same dtype.
    W0 : ndarray or Tensor of shape (M, N), optional
        Warm start (e.g. the original weights, or a neighbouring epsilon's solution).
    penalty : ndarray or Tensor of shape (M, N), optional
        Nonnegative weights of a weighted l1 objective ``sum penalty * |W|``; 0 leaves an entry
        unpenalized (a bias column). Default: all ones.
    rho : float, optional
        Initial ADMM penalty (default 1.0 on the scaled data); adapted by residual balancing,
        so it rarely needs setting. Pass a previous result's ``rho`` with its ``W`` as ``W0``
        to warm-start a related solve.
    eps_abs, eps_rel : float
        Absolute and relative tolerances of the primal/dual residual test.
    feas_tol : float
        The returned W must also satisfy residual <= epsilon (1 + feas_tol) and violation <=
        feas_tol max|Y| before the solver reports OPTIMAL.
    max_iter : int
        Iteration cap; reaching it returns status ``MAX_ITER`` with the last iterate.
    callback : callable, optional
        Called after every iteration as ``callback(iteration, primal_residual, dual_residual,
        rho)`` (progress bars, logging).

    Returns
    -------
    NetTrimResult
        ``status`` is ``OPTIMAL``, ``MAX_ITER``, or ``SOLVER_ERROR`` when the last iterate is
        not finite; ``W`` has exact zeros. A problem that W = 0 satisfies returns it at once
        (iterations 0).

    Raises
    ------
    ValueError
        W0 or penalty of the wrong shape or not finite; Y or V out of the dtype's range once
        scaled by X's scale (see :func:`scaled_data`).
    """
    settings = checked_settings(problem, rho=1.0 if rho is None else rho, eps_abs=eps_abs,
                                eps_rel=eps_rel, feas_tol=feas_tol, max_iter=max_iter)
    t0 = time.perf_counter()
    X, Y, V = problem.program_tensors()
    P, N, M = problem.shape
    dev, dt = X.device, X.dtype

    # ---- scaling and constant data --------------------------------------------------------
    ball = _Ball(problem, settings.feas_tol)
    X = ball.X
    W3_start = None if W0 is None else _check_warm_start(problem, W0, X)
    thr_weight = None
    if penalty is not None:
        thr_weight = as_tensor(penalty, name="penalty").to(device=dev, dtype=dt)
        if tuple(thr_weight.shape) != (M, N):
            msg = f"penalty must have shape (M, N) = ({M}, {N}), got {tuple(thr_weight.shape)}"
            raise ValueError(msg)
        if bool((thr_weight < 0).any()) or not bool(torch.isfinite(thr_weight).all()):
            msg = "penalty must be finite and nonnegative"
            raise ValueError(msg)
        thr_weight = thr_weight.T.contiguous()
    zero = _zero_result(problem, ball, settings.rho, t0)
    if zero is not None:
        return zero
    factor = _Factor(X)

    # ---- initial point --------------------------------------------------------------------
    W3 = W3_start if W3_start is not None else torch.zeros(N, M, device=dev, dtype=dt)
    if rho is None:
        # scale-aware start: the l1 duals are O(1), the weights O(mean|W|), so rho ~ 1/mean|W|,
        # with W the warm start or the ridge solution (X^T X + I)^{-1} X^T Y.
        W_ref = W3 if W0 is not None else factor.solve(X.T @ ball.Y)[0]
        w_mean = float(W_ref.abs().mean())
        rho_k = RHO_START / w_mean if 0 < w_mean < math.inf else 1.0
    else:
        rho_k = settings.rho

    # W2 = S_{1/rho}(W3 - U2): the soft threshold (weighted by the penalty)
    def prox(V: torch.Tensor, rho_: float) -> torch.Tensor:
        return soft_threshold(V, (1.0 / rho_) if thr_weight is None else thr_weight / rho_)

    W2, status, it, r_norm, s_norm, rho_k = _iterate(ball, factor, W3, rho_k, settings, prox,
                                                     callback)
    return l1_result(problem, ball, W2, thr_weight, status=status, iterations=it,
                     residuals=(r_norm, s_norm), t0=t0, solver="admm", rho=rho_k)


def l1_result(problem: NetTrimProblem, ball: "_Ball", W2: torch.Tensor,
              weight: Optional[torch.Tensor], *, status: str, iterations: int,
              residuals: tuple[float, float], t0: float, solver: str, rho: float,
              lam: float = math.nan, reached: bool = False,
              working_rows: Optional[int] = None) -> NetTrimResult:
    """The result of an l1 ADMM from its sparse iterate ``W2 (N, M)`` (scaled data): residual
    and violation measured, SOLVER_ERROR in place of a success with anything non-finite,
    ``objective = sum weight |W|``; ``reached``: epsilon is the residual reached (the
    Lagrangian), else the problem's; ``working_rows`` as in :class:`NetTrimResult`."""
    res, viol = _feasibility(ball.X @ W2, ball.Y, ball.active, ball.bound, problem.relu,
                             ball.floor)
    s = ball.s
    if status != MAX_ITER and not (math.isfinite(res * s) and math.isfinite(viol * s)
                                  and bool(torch.isfinite(W2).all())):
        status = SOLVER_ERROR   # never OPTIMAL with a non-finite answer or residual
    W = W2.T.contiguous()
    objective = float((W.abs() if weight is None else W.abs() * weight.T).sum())
    if problem.is_numpy:
        W = W.cpu().numpy()
    return NetTrimResult(
        W=W, status=status, iterations=iterations, objective=objective, residual=res * s,
        violation=viol * s, epsilon=res * s if reached else problem.epsilon,
        primal_residual=residuals[0] * s, dual_residual=residuals[1] * s,
        solve_time=time.perf_counter() - t0, solver=solver, rho=rho, lam=lam,
        working_rows=working_rows)


class _Ball:
    """A program's scaled data (:func:`scaled_data`) and the tolerances of its ball ADMM.

    ``eps`` is the ball's radius on the data, ``floor`` a compressed linear program's squared
    floor (:mod:`solvers.gram`; 0 otherwise), both scaled; the returned W must meet
    ``residual <= res_tol``: epsilon (1 + feas_tol), with an absolute floor of
    ``feas_tol^2 ||Y||_F`` so that epsilon = 0 (exact fit) is reachable in floating point,
    and ``violation <= viol_tol = feas_tol max|Y|``."""

    def __init__(self, problem: NetTrimProblem, feas_tol: float):
        X, Y, V = problem.program_tensors()
        self.X, self.Y, self.s, self.active, self.bound = scaled_data(problem, X, Y, V)
        self.relu = problem.relu
        self.eps = problem.radius / self.s
        self.floor = problem.floor_sq / self.s ** 2
        self.res_tol = (problem.epsilon / self.s) * (1 + feas_tol) + feas_tol ** 2 * math.sqrt(
            float(torch.linalg.vector_norm(self.Y)) ** 2 + self.floor)
        self.viol_tol = feas_tol * float(self.Y.abs().max())

    def feasible(self, W3: torch.Tensor) -> tuple[bool, float, float]:
        """Whether ``W3 (N, M)`` meets the program within the tolerances; its residual and
        violation."""
        res, viol = _feasibility(self.X @ W3, self.Y, self.active, self.bound, self.relu,
                                 self.floor)
        return res <= self.res_tol and viol <= self.viol_tol, res, viol


def _iterate(ball: _Ball, factor: _Factor, W3: torch.Tensor, rho_k: float,
             settings: ADMMSettings, prox: Callable[[torch.Tensor, float], torch.Tensor],
             callback: Callback = None) -> tuple:
    """The ball ADMM's iterations (module docstring) from ``W3 (N, M)`` and penalty ``rho_k``,
    with the W2 step ``prox(W3 - U2, rho)`` (the soft threshold of the l1 objective, or the
    group soft threshold of :mod:`solvers.group`). Returns ``(W2, status, iterations,
    r_norm, s_norm, rho)``; status OPTIMAL when the residual test passed and W2 is feasible,
    else MAX_ITER."""
    X, Y, active, bound = ball.X, ball.Y, ball.active, ball.bound
    P, N = X.shape
    M = Y.shape[1]
    XW = X @ W3
    U1 = torch.zeros_like(Y)
    U2 = torch.zeros_like(W3)
    W2 = W3.clone()
    rho_0 = rho_k
    sqrt_dim = math.sqrt(P * M + N * M)
    status, it = MAX_ITER, 0
    r_norm = s_norm = math.inf
    for it in range(1, settings.max_iter + 1):
        # W1 = Proj_C(X W3 - U1)
        Z = XW - U1
        D = Z - Y
        if ball.relu:
            D.masked_fill_(~active, 0.0)
        W1 = _project_with(Z, D, bound, ball.eps)
        del Z, D
        W2 = prox(W3 - U2, rho_k)
        W3_new, XW_new, W2h = factor.step(W1, W2, W3, XW, U1, U2)
        # dual updates U1 += W1 - X W3 ; U2 += W2 - W3  (the primal residuals)
        r1 = W1.sub_(XW_new)
        U1.add_(r1)
        r2 = W2h - W3_new
        U2.add_(r2)
        # residuals and stopping
        r_norm = _norm(r1, r2)
        s_norm = rho_k * _norm(XW_new - XW, W3_new - W3)
        W3, XW = W3_new, XW_new
        if callback is not None:
            callback(it, r_norm, s_norm, rho_k)
        # r1 + X W3 restores W1 in place (r1 is W1's storage)
        pri_scale = max(_norm(r1.add_(XW), W2), _norm(XW, W3))
        dual_scale = rho_k * _norm(U1, U2)
        if _converged(settings, sqrt_dim, r_norm, s_norm, pri_scale, dual_scale) \
                and it % settings.check_every == 0:
            W2 = prox(W3 - U2, rho_k)   # the iterate we would return
            if ball.feasible(W2)[0]:
                status = OPTIMAL
                break
        if it % settings.adapt_every == 0:
            rho_k = _balance(rho_k, rho_0, r_norm / max(pri_scale, TINY),
                             s_norm / max(dual_scale, TINY), U1, U2)
    if status == MAX_ITER:
        W2 = prox(W3 - U2, rho_k)
    return W2, status, it, r_norm, s_norm, rho_k


def _feasibility(XW: torch.Tensor, Y: torch.Tensor, active: torch.Tensor,
                 bound: Optional[torch.Tensor], relu: bool, floor: float = 0.0
                 ) -> tuple[float, float]:
    """Active-set residual and largest violation of pre-activations XW (scaled units); a
    linear program on compressed rows adds its squared ``floor`` (scaled) to the residual."""
    D = XW - Y
    if not relu:
        return math.sqrt(float(torch.linalg.vector_norm(D)) ** 2 + floor), 0.0
    res = float(torch.linalg.vector_norm(D.masked_fill_(~active, 0.0)))
    viol = float((XW - bound).max())   # bound is +inf on the active set
    return res, max(0.0, viol)
