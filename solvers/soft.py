"""The ReLU-aware refit on a fixed support (:func:`refit_soft`): the inequalities of
:func:`solvers.refit.refit` made a penalty.

Per neuron (symbols of :mod:`solvers.problem`; ``x_p`` the support's inputs of row p)::

    f(w) = 1/2 sum_{p in Omega} (x_p^T w - y_p)^2  +  1/2 sum_{p off Omega} max(0, x_p^T w - v_p)^2

a convex piecewise quadratic, minimised by Newton's method on the pieces. What a step costs:
the rows of Omega enter through their Gram matrix ``H = X_OS^T X_OS`` and ``g = X_OS^T y_O``
(float64, built once); the penalty through the rows over their bound: gathered where they are
few (float64, ``|J_m| k_m`` per neuron), else one float64 GEMM ``X^T max(0, X W^T - V)``.
What else touches every row is one GEMM ``X D^T`` per step (the step's pre-activations,
which also update ``X W^T``) and a few elementwise passes that find the rows over their
bound; the line search runs on the rows over their bound at either end of the step. The
earlier solve took the whole gradient from all rows, recomputed ``X W^T`` every step and ran
~15 elementwise passes over the (P, m) residual, several in float64 (profiled on
``benchmarks/bench_wide.py``'s first two layers: those passes were 62 s of its 105 s of
refits). On that model's conv 32 -> 64 layer (100,352 rows x 289 inputs, 64 neurons, the same
32 steps, one thread) a refit took 26 s instead of 46 s.

Tried and left out: the penalty on a set R of rows grown by constraint generation (the
rows over their bound and the nearest, one GEMM per round), Newton on R alone. Its iterations
cost ``|R| k`` instead of ``P N``, but where the active rows leave a direction nearly flat
(that conv layer: curvature ~1e-11 of the diagonal along the step) ``f_R`` is flat along it
too, and its steps ran off (|step| ~200, weights to 1e3-1e15) before the rows outside R
could stop them; bounding the steps by each row's distance to its bound (Cauchy-Schwarz on
the support's row norms) made every round a single step.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import torch

from .admm import TINY, checked_settings, scaled_data
from .problem import NetTrimProblem
from .refit import FACTOR_BYTES, _Chunk, _chunks, _support_tensor, refit
from .result import NetTrimResult
from .status import MAX_ITER, OPTIMAL, SOLVER_ERROR

__all__ = ["refit_soft", "SOFT_MAX_ITER", "SOFT_MAX_WORK", "SOFT_TOL"]

#: Newton steps at most and the relative tolerance of the certificate.
SOFT_MAX_ITER = 200
SOFT_TOL = 1e-6
#: The ridge added to each Newton system, relative to its largest diagonal entry: the data
#: dtype's epsilon (float32: 1.2e-7), at least this. The products of X are exact in float64,
#: but X itself is rounded to its dtype, which moves the Gram matrix's eigenvalues by about
#: eps of its norm: a direction of lower curvature is noise. On the conv 32 -> 64 layer of
#: ``benchmarks/bench_wide.py`` (an input channel constant up to rounding, beside the bias
#: column) a ridge of 1e-12 let the steps follow such a direction, doubling the weights at
#: every step up to 1e12 while the objective stayed flat. (The earlier solve built H from
#: float32 products, whose rounding acted as such a ridge.)
SOFT_RIDGE = 1e-12
#: The Newton steps of a chunk of ``m`` neurons stop (``MAX_ITER``) once ``steps * P * N * m``
#: passes this, and at :data:`SOFT_MIN_STEPS` at the least. LeNet's first layer certified in 5
#: steps, inside it; a conv layer of 100,352 rows x 289 inputs took the full 200 steps without
#: a certificate. Every step lowers the objective, so the iterate where it stops is still a
#: refit (its objective bounds its post-ReLU error).
SOFT_MAX_WORK = 3e10
SOFT_MIN_STEPS = 10
#: A row off Omega within this fraction of max(|Y|, |V|) below its bound counts as binding.
SOFT_KINK = 1e-9
#: Newton steps between fresh products ``X W^T`` (between them: updated by the steps).
SOFT_FRESH = 8
#: Memory of one group's gathered rows (float64 ``(neurons, rows, k)``): the rows over their
#: bound are gathered in groups of neurons that fit.
SOFT_ROWS_BYTES = 256 * 2 ** 20
#: A gathered entry of X costs about this many multiply-adds of a GEMM: the penalty's rows are
#: gathered where ``|J| k GATHER_COST`` is below ``P N m``, else it takes a float64 GEMM over
#: all rows. Measured (one thread, X of 100,352 x 289 float32): a random gather 40 ns per
#: entry, the float64 GEMM 0.22 ns per multiply-add.
GATHER_COST = 200


def refit_soft(problem: NetTrimProblem, support: Any, *, W0: Any = None,
               max_iter: int = SOFT_MAX_ITER, tol: float = SOFT_TOL) -> NetTrimResult:
    """The ReLU-aware least squares on a fixed support: the inequalities made a penalty.

    Solves, for every neuron at once::

        minimize    1/2 || (X W^T - Y) on Omega ||_F^2  +  1/2 || max(0, X W^T - V) off Omega ||_F^2
        subject to  W = 0 off support

    (V = 0 when None). For a parallel ReLU layer (V = 0) the objective is an upper bound on
    the squared post-ReLU error ``||relu(X W^T) - Y||_F^2`` (the ReLU is 1-Lipschitz and
    fixes Y on Omega), tight where the signs of the outputs are right, and it is never above
    the linear refit's ``||X W^T - pre||_F^2`` when ``pre <= 0`` off Omega: where
    :func:`solvers.refit.refit` makes the ReLU's zeros hard constraints, which cost active-set
    accuracy, this charges a pre-activation only for crossing its bound, and by how far. A
    linear layer (no inequalities) gets :func:`solvers.refit.refit`'s least squares.

    Each neuron's problem is a convex piecewise quadratic, solved by Newton's method on the
    pieces (finite termination, as for a QP's active set; the module docstring says what a
    step costs): with ``J`` the rows over their bound at the iterate, the step solves
    ``(H + B_J^T B_J) d = -grad`` (``B = X_S`` off Omega; plus the data dtype's epsilon of
    the largest diagonal entry, :data:`SOFT_RIDGE` at least), then the full step or an exact line search (:func:`_line_search`; a
    backtracking search zigzagged across the kinks: a LeNet neuron was not certified in 50 steps). A neuron is
    certified (OPTIMAL) when its Newton decrement ``-grad . d`` (twice the decrease its
    quadratic model predicts; float64) is within ``tol`` of its objective, plus ``(tol s)^2``
    for an objective near 0 (``s`` the largest of ``||r||``, ``||X w||`` on Omega, ``||y||``
    and ``sqrt(P) max(|Y|, |V|)``). A small
    gradient alone does not certify: where the problem is flat along some direction (fewer
    active rows than inputs) it can be small far from the optimum.

    Parameters
    ----------
    problem : NetTrimProblem
    support : bool array or tensor of shape (M, N)
    W0 : array or tensor of shape (M, N), optional
        Starting point (weights off the support are dropped); default: W = 0 on the support.
    max_iter : int
        Newton steps at most (fewer where their GEMMs would pass :data:`SOFT_MAX_WORK`
        multiply-adds); a neuron not certified by then gives ``MAX_ITER``, with the weights
        reached (each step lowers the objective).
    tol : float
        Relative tolerance of the certificate (the Newton decrement over the objective).

    Returns
    -------
    NetTrimResult
        ``solver="refit-soft"``; ``residual`` the square root of twice the objective (the bound on the post-ReLU error of a parallel layer), ``violation`` the largest
        excess over V off Omega (penalized, not forbidden), ``iterations`` the Newton steps.

    Notes
    -----
    Cost: the Hessians on the active rows (``|Omega_m| k_m^2`` per neuron, float64) once; per
    Newton step one GEMM ``X D^T`` over all rows (P N M), ``|J_m| k_m`` per neuron for the
    rows over their bound and ``k_m^2`` per row entering or leaving J. Measured on a
    256 -> 256 ReLU layer (4,096 correlated rows, 70%, on the linear program's support): 3.3
    Newton steps on average, 7 at most.
    """
    checked_settings(problem)
    if not problem.relu:
        return refit(problem, support, W0=W0)
    if not (isinstance(max_iter, int) and max_iter >= 1):
        msg = f"max_iter must be an integer >= 1, got {max_iter!r}"
        raise ValueError(msg)
    if not (isinstance(tol, (int, float)) and tol > 0):
        msg = f"tol must be a positive number, got {tol!r}"
        raise ValueError(msg)
    t0 = time.perf_counter()
    X, Y, V = problem.program_tensors()
    P, N, M = problem.shape
    dev, dt = X.device, X.dtype
    S = _support_tensor(support, M, N, dev)
    W_start = None if W0 is None else problem._weight(W0).masked_fill(~S, 0.0)
    X, Y, s, active, bound = scaled_data(problem, X, Y, V)
    zero = torch.zeros(N, dtype=torch.bool, device=dev)
    W = torch.zeros(M, N, dtype=dt, device=dev)
    status, iterations = OPTIMAL, 0
    sizes = S.sum(1)
    nonempty = torch.nonzero(sizes > 0).flatten()
    X64_T = functools.cache(lambda: X.T.to(torch.float64))   # made once, for every chunk
    for cols in _chunks(sizes[nonempty].cpu(), FACTOR_BYTES):
        cols = nonempty[cols.to(dev)]
        ch = _Chunk(X, None, Y, active, bound, S, cols, W_start, 0.0, zero,
                    start_zero=W_start is None, reach=False)
        steps = max(SOFT_MIN_STEPS, int(SOFT_MAX_WORK / max(P * N * len(cols), 1)))
        done, its = _soft(ch, min(max_iter, steps), tol, X64_T)
        W[cols] = ch.dense(ch.C)
        iterations = max(iterations, its)
        if not done:
            status = MAX_ITER
    XW = X @ W.T
    D = (XW - Y).masked_fill_(~active, 0.0)
    over = (XW - bound).clamp_(min=0.0)            # 0 on Omega (bound = +inf there)
    objective_sq = float(torch.linalg.vector_norm(D, dtype=torch.float64)) ** 2 + float(
        torch.linalg.vector_norm(over, dtype=torch.float64)) ** 2
    if not (math.isfinite(objective_sq) and bool(torch.isfinite(W).all())):
        status = SOLVER_ERROR
    W_out = W.cpu().numpy() if problem.is_numpy else W
    return NetTrimResult(
        W=W_out, status=status, iterations=iterations, objective=float(W.abs().sum()),
        residual=math.sqrt(objective_sq) * s, violation=float(over.max()) * s if M else 0.0,
        epsilon=problem.epsilon, primal_residual=float("nan"), dual_residual=float("nan"),
        solve_time=time.perf_counter() - t0, solver="refit-soft")


def _soft(ch: _Chunk, max_iter: int, tol: float, X64_T) -> tuple[bool, int]:
    """Newton's method on the pieces for the neurons of ``ch`` (:func:`refit_soft`); updates
    ``ch.C``. Certified neurons leave the working set. ``X64_T()``: X^T in float64 (made on
    first use, for the penalty of many rows). Returns (all certified, steps)."""
    X = ch.X
    P = X.shape[0]
    m, k = ch.C.shape
    dev = X.device
    f64 = torch.float64
    ridge_rel = max(SOFT_RIDGE, torch.finfo(X.dtype).eps)
    # H and g of the active rows, in float64 (exact products of the data): the active part of
    # the objective, its gradient and its curvature
    ch.build_hessians(torch.arange(m, device=dev))
    y_sq = torch.linalg.vector_norm(ch.Y.masked_fill(~ch.active, 0.0), dim=0, dtype=f64) ** 2
    finite = ch.bound.masked_fill(~torch.isfinite(ch.bound), 0.0)
    y_scale = max(float(ch.Y.abs().max()), float(finite.abs().max()), TINY)
    kink = SOFT_KINK * y_scale
    # a column's norm at that scale: the certificate's absolute floor (an objective that can
    # reach 0 falls geometrically and is certified once below (tol * col_scale)^2)
    col_scale = y_scale * math.sqrt(P)
    eye = torch.eye(k, dtype=f64, device=dev)
    # H + B_J^T B_J of each neuron, updated by the rows that enter or leave J (few, after the
    # first step); the identity on the padding
    K_all = ch.H + torch.diag_embed((~ch.valid).to(f64))
    J_all = torch.zeros(P, m, dtype=torch.bool, device=dev)
    C = ch.C.clone()
    live = torch.arange(m, device=dev)                 # neurons not yet certified
    its = 0
    XW = None
    for its in range(1, max_iter + 1):
        idx, valid = ch.idx[live], ch.valid[live]
        bound = ch.bound[:, live]
        w, H, g = C[live], ch.H[live], ch.g[live]
        if XW is None or its % SOFT_FRESH == 0:   # else updated by the steps (rounding drifts)
            XW = X @ ch.dense(w, live).T               # (P, m') data dtype
        gap = XW - bound                               # -inf on Omega
        # rows at or over their bound (within SOFT_KINK of the scale of Y and the bound): J of
        # the Newton systems (an exact line search stops on such a kink, and leaving the row
        # out there gave the same flat direction again); those over it make the penalty
        # (:func:`_penalty`)
        J = gap > -kink
        Hw = torch.bmm(H, w[..., None])[..., 0]
        wHw = (w * Hw).sum(1)
        pen, grad_pen = _penalty(X, gap, idx, valid, bound, w, X64_T)
        f = 0.5 * wHw - (g * w).sum(1) + 0.5 * y_sq[live] + 0.5 * pen
        grad = (Hw - g + grad_pen).masked_fill_(~valid, 0.0)
        # Newton systems: H + B_J^T B_J on the support, plus a ridge of ridge_rel of the
        # largest diagonal entry (raised where Cholesky still fails): where the system is
        # singular (fewer binding rows than inputs) the gradient lies in its range and the
        # step is the least-norm one
        changed = J ^ J_all[:, live]
        sizes = valid.sum(1).tolist()
        for i in torch.nonzero(changed.any(0)).flatten().tolist():
            j = int(live[i])
            rows = torch.nonzero(changed[:, i]).flatten()
            n = sizes[i]
            # many rows (the first step's: all of J) from the support's rows of X^T, few
            # entry by entry from X. Measured on bench_wide's conv (100,352 x 289, k = 29):
            # 60,000 rows 21 ms vs 81 ms, 1,000 rows 9.9 ms vs 0.7 ms
            if len(rows) * 16 > P:
                B = ch.Xt[idx[i, :n]][:, rows].T.to(f64)
            else:
                B = X[rows[:, None], idx[i, :n][None, :]].to(f64)
            sign = torch.where(J[rows, i], 1.0, -1.0).to(f64)   # enter +, leave -
            K_all[j, :n, :n] += (B.T * sign) @ B
        J_all[:, live] = J
        del J, changed
        K = K_all[live]
        ridge = ridge_rel * K.diagonal(dim1=1, dim2=2).amax(1).clamp(min=TINY)
        L, info = torch.linalg.cholesky_ex(K + ridge[:, None, None] * eye)
        for _ in range(6):
            if not bool((info > 0).any()):
                break
            ridge = torch.where(info > 0, ridge * 1e3, ridge)
            L, info = torch.linalg.cholesky_ex(K + ridge[:, None, None] * eye)
        ok = info == 0
        d = torch.zeros_like(grad)
        Lk = L[ok]   # two triangular solves: 5x faster than cholesky_solve here (one RHS)
        half = torch.linalg.solve_triangular(Lk, grad[ok][..., None], upper=False)
        d[ok] = -torch.linalg.solve_triangular(Lk.transpose(1, 2), half, upper=True)[..., 0]
        d.masked_fill_(~valid, 0.0)
        # certificate: the Newton decrement -grad.d (twice the decrease the step predicts)
        # within tol of the objective, plus (tol * size)^2 where the objective is ~0 (an exact
        # fit); size: the largest of ||residual||, ||X w|| on Omega, ||y|| and col_scale
        slope = (grad * d).sum(1)                       # = -decrement, < 0 for descent
        size = torch.sqrt(torch.stack([2 * f, wHw, y_sq[live]]).amax(0).clamp(min=0.0))
        done = ok & (-slope <= tol * f + (tol * size.clamp(min=col_scale)) ** 2)
        if bool(done.all()):
            live = live[:0]
            break
        keep = ~done
        if not bool(keep.all()):
            live, d, slope, f, Hw = live[keep], d[keep], slope[keep], f[keep], Hw[keep]
            XW, gap, bound = XW[:, keep], gap[:, keep], bound[:, keep]
            idx, valid, w, H, g = idx[keep], valid[keep], w[keep], H[keep], g[keep]
        # the full Newton step where it decreases f enough (Armijo; it may cross many kinks
        # at once), else the exact line search on [0, 1] (phi(t) = f(w + t d) is a convex
        # piecewise quadratic: :func:`_line_search`); measured on LeNet's 784 -> 300 layer,
        # exact searches alone stop on one kink per step and a neuron took over 50 steps.
        # Both on the rows over their bound somewhere on the segment (at one of its ends: the
        # pre-activation is linear in t), in float64
        XD = X @ ch.dense(d, live).T
        a0 = (d * (Hw - g)).sum(1)             # the active part along d:
        a1 = (d * torch.bmm(H, d[..., None])[..., 0]).sum(1)   # q'(t) = a0 + a1 t
        A, D, v = _segment_values((gap > 0) | (gap + XD > 0), XW, XD, bound)
        del gap
        pen0 = (A - v).clamp(min=0.0).pow(2).sum(0)
        f1 = f + a0 + 0.5 * a1 + 0.5 * ((A + D - v).clamp(min=0.0).pow(2).sum(0) - pen0)
        full = f1 <= f + 1e-4 * slope
        t = torch.ones_like(slope)
        if not bool(full.all()):
            t = torch.where(full, t, _line_search(A, D, v, slope, (a0, a1)).clamp(max=1.0))
        if not bool((t > 0).any()):   # stuck at rounding level: no step decreases f
            break
        C[live] = w + t[:, None] * d
        XW.add_(XD.mul_(t.to(XD.dtype)))
    ch.C = C
    return len(live) == 0, its


def _padded_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The True rows of each column of ``mask (P, m)``: ``R (m, c)`` row indices, padded with
    row 0, and ``rv (m, c)`` True on the real entries (c the most of any column, 1 at least)."""
    pairs = torch.nonzero(mask.T)                  # (n, 2): (column, row), by column
    counts = mask.sum(0)
    c = max(1, int(counts.max())) if len(counts) else 1
    pos = torch.arange(len(pairs), device=mask.device) - (torch.cumsum(counts, 0) - counts)[
        pairs[:, 0]]
    R = torch.zeros(mask.shape[1], c, dtype=torch.long, device=mask.device)
    rv = torch.zeros(mask.shape[1], c, dtype=torch.bool, device=mask.device)
    R[pairs[:, 0], pos] = pairs[:, 1]
    rv[pairs[:, 0], pos] = True
    return R, rv


def _row_groups(R: torch.Tensor, k: int) -> list[slice]:
    """Slices of the columns of ``R (m, c)`` whose gathered rows (``(m, c, k)`` float64) fit
    :data:`SOFT_ROWS_BYTES`."""
    step = max(1, SOFT_ROWS_BYTES // (8 * R.shape[1] * max(1, k)))
    return [slice(a, a + step) for a in range(0, R.shape[0], step)]


def _gather(X, R, rv, idx, valid, bound, cols):
    """Neurons ``cols``'s rows ``R`` on their supports, ``(m, c, k)`` float64 (0 on the
    padding), and their bounds ``(m, c)`` (+inf on the padding)."""
    B = X[R[cols, :, None], idx[cols, None, :]].to(torch.float64)
    B.masked_fill_(~(rv[cols, :, None] & valid[cols, None, :]), 0.0)
    at = torch.arange(bound.shape[1], device=X.device)[cols, None]
    v = bound[R[cols], at].to(torch.float64).masked_fill_(~rv[cols], math.inf)
    return B, v


def _penalty(X, gap, idx, valid, bound, w, X64_T):
    """The penalty ``||max(0, X_S w - v)||^2`` per neuron and its half-gradient ``X_S^T max(0,
    X_S w - v)``, in float64, from ``gap = X W^T - V (P, m)`` (the data's dtype). Where the
    rows over their bound are few (their gathered support inputs, ``|J| k`` per neuron, cost
    less than a pass over all of X), from those rows, recomputed in float64; else from the
    gap by one float64 GEMM over all rows (``X64_T()``: X^T in float64)."""
    mask = gap > 0
    k = idx.shape[1]
    P, N = X.shape
    if int(mask.sum()) * k * GATHER_COST > P * N * len(w):
        over = gap.clamp(min=0.0).to(torch.float64)
        pen = (over * over).sum(0)
        full = X64_T() @ over                        # (N, m)
        return pen, torch.gather(full.T, 1, idx).masked_fill_(~valid, 0.0)
    R, rv = _padded_rows(mask)
    pen = torch.zeros(len(w), dtype=torch.float64, device=X.device)
    grad = torch.zeros_like(w)
    for cols in _row_groups(R, k):
        B, v = _gather(X, R, rv, idx, valid, bound, cols)
        over = (torch.bmm(B, w[cols, :, None])[..., 0] - v).clamp_(min=0.0)
        pen[cols] = (over * over).sum(1)
        grad[cols] = torch.bmm(B.transpose(1, 2), over[..., None])[..., 0]
    return pen, grad


def _segment_values(mask, XW, XD, bound):
    """On the rows ``mask (P, m)``: ``XW``, ``XD`` and the bounds, each ``(c, m)`` float64
    (padding: 0, 0 and +inf)."""
    R, rv = _padded_rows(mask)
    at = torch.arange(mask.shape[1], device=mask.device)[:, None]
    A = XW[R, at].to(torch.float64).masked_fill_(~rv, 0.0)
    D = XD[R, at].to(torch.float64).masked_fill_(~rv, 0.0)
    v = bound[R, at].to(torch.float64).masked_fill_(~rv, math.inf)
    return A.T, D.T, v.T


def _line_search(A: torch.Tensor, D: torch.Tensor, bound: torch.Tensor, slope: torch.Tensor,
                 quad: tuple) -> torch.Tensor:
    """Per column, the exact step ``t >= 0`` minimizing ``phi(t) = q(t) + 1/2 ||max(0, A + t D -
    bound)||^2`` (rows of ``A``, ``D``, ``bound`` (c, m): the penalty rows; ``q`` the quadratic
    part, ``q'(t) = quad[0] + quad[1] t``); 0 where the direction does not descend
    (``slope = phi'(0) >= 0``).

    ``phi'`` is nondecreasing and piecewise linear, ``c0 + c1 t`` between the times at which
    a row crosses its bound. The crossings are sorted per column, the coefficients of each
    segment are running sums over them, and the root is found on the first segment whose end
    has ``phi' >= 0``: exact, in one sort of the (c, m) crossing times. (A regula falsi on
    ``phi'`` crawled where a kink's row has a large slope: ``phi'`` jumped from -0.004 to 1e5
    across it.)"""
    gap = A - bound                                     # -inf on padding: never crosses
    on = gap > 0
    c0 = quad[0] + (D * gap).masked_fill_(~on, 0.0).sum(0)
    c1 = quad[1] + (D * D).masked_fill_(~on, 0.0).sum(0)
    # crossings at tau = -gap / D > 0: entering where D > 0 (gap < 0), leaving where D < 0
    # (gap > 0); each adds or removes (D gap, D^2)
    tau = -gap / D
    event = (D != 0) & (tau > 0) & torch.isfinite(tau)
    tau = tau.masked_fill_(~event, math.inf)
    sign = torch.where(D > 0, 1.0, -1.0).to(D.dtype)
    tau, order = torch.sort(tau, dim=0)
    d0 = torch.gather((sign * D * gap).masked_fill_(~event, 0.0), 0, order)
    d1 = torch.gather((sign * D * D).masked_fill_(~event, 0.0), 0, order)
    # segment k runs from tau[k-1] (0 for k = 0) to tau[k] (inf after the last event)
    c0s = torch.cat([c0[None], c0[None] + d0.cumsum(0)])          # (c + 1, m)
    c1s = torch.cat([c1[None], c1[None] + d1.cumsum(0)])
    ends = torch.cat([tau, torch.full_like(tau[:1], math.inf)])   # (c + 1, m)
    at_end = torch.where(torch.isfinite(ends), c0s + c1s * ends, torch.full_like(ends, math.inf))
    first = torch.argmax((at_end >= 0).to(torch.int8), dim=0)     # first segment with a root
    c0k = torch.gather(c0s, 0, first[None])[0]
    c1k = torch.gather(c1s, 0, first[None])[0]
    start = torch.where(first > 0, torch.gather(ends, 0, (first - 1).clamp(min=0)[None])[0],
                        torch.zeros_like(c0k))
    t = torch.where(c1k > 0, -c0k / c1k.clamp(min=TINY), start)
    t = torch.maximum(t, start)
    descend = slope < 0
    return torch.where(descend & torch.isfinite(t), t, torch.zeros_like(t))
