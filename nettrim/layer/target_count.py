"""The default pipeline at a target sparsity: the target count of weights.

:func:`settled_pipeline` steers l1 solves to a number of weights
(:func:`solvers.solve_lagrangian`), each stopped once its support settles, with reweighting
rounds between them, then brings the support to exactly the count (:func:`trim_to`, else the
optimality test of the zero weights) and refits it. The small helpers on solver results here
(:func:`trim_to`, :func:`with_objective`, :func:`at_reached_epsilon`) serve the epsilon search
of :mod:`nettrim.layer.pipeline` as well.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from solvers import INFEASIBLE, MAX_ITER, OPTIMAL_INACCURATE, SETTLED, SUCCESS, ADMMSettings
from solvers.lagrangian import NNZ_SETTLE, SETTLE_TOL
from solvers.refit import reweighted_penalty
from solvers.working_set import iterates_on_working_set

from . import tasks

__all__ = ["PILOT_MAX_ITER", "PILOT_RATIO", "SETTLE_MAX_ITER", "SETTLE_MAX_ITER_WORKING",
           "at_reached_epsilon",
           "settled_pipeline", "trim_to", "with_objective"]

#: Default pipeline, sparsity mode: the first (plain l1) solve keeps r times the target's
#: weights, ``r = PILOT_RATIO[0] + PILOT_RATIO[1] * s`` at sparsity s; its refit is the pilot whose
#: penalty picks the target's weights among them. The epsilon search's reweighting had its
#: pilot at 1.7x on LeNet-300-100's 784 -> 300 layer at 90% (the plain l1 at that epsilon was
#: 83% sparse); at 50% a 1.7x pilot (85% of the weights kept) overfit (held-out error 0.0227 vs
#: 0.0157 of the search) where 1.25x gave 0.0150 (and 0.0154 vs 0.0172 on the 300 -> 100 layer).
#: On the exact target count, 1.3x at 50%: synthetic 256 -> 128 layer 0.1334 (1.25x: 0.1373,
#: 1.35x: 0.1322), 784 -> 300 0.0066 (1.25x: 0.0065) in 117 CPU-s (1.4x: over 8 CPU-min).
PILOT_RATIO = (0.8, 1.0)
#: Default pipeline: iteration cap of each settled l1 solve; one that has not settled by then
#: (a count that keeps jumping over its target, seen on layers of a few dozen weights) hands
#: the layer to the epsilon search with solve_admm, noted in the report.
SETTLE_MAX_ITER = 1000
#: The cap where the ReLU program iterates on a working set (:mod:`solvers.working_set`): its
#: iterations cost 1.1-20x less than on all rows and more of them are needed (measured on
#: bench_rows' residual CNN conv1 at 90%: 721 and 1,196 iterations, 2-3 s, where the row ADMM
#: settles in 400, 25 s; capped at 1,000, the layer went to the epsilon search: 5+ minutes).
SETTLE_MAX_ITER_WORKING = 3000
#: Iteration cap of the pilot refit whose weights give a reweighting round its penalty (its
#: ADMM iterations: on the CPU a ReLU layer's refit is solved exactly, without a cap).
PILOT_MAX_ITER = 100


def settled_pipeline(problem_for, keep, N, penalty, reweight, opts, progress, refit_on,
                     report, executor=None):
    """The default pipeline at a target sparsity (ADMM with refit): l1 solves steered to a
    number of weights by :func:`solvers.solve_lagrangian`, each stopped once its support
    settles, reweighting, then the refit. Returns ``(result, epsilon, iterations)``.

    Round ``i`` of ``reweight`` keeps ``keep * r ** ((reweight - i) / reweight)`` weights,
    ``r = PILOT_RATIO[0] + PILOT_RATIO[1] * s`` at sparsity s (at least 1): the first, plain l1
    solve keeps r times the target and the last the target. A settled solve lands within
    ``NNZ_SETTLE`` (half a point) of its count, so the last one aims that much above the
    target, and its support is then brought to exactly ``keep`` weights in columns ``:N``
    (:func:`trim_to`, else :func:`_fill_to`) before the final refit. Measured on
    LeNet-300-100's first layer at 80%: landing half a point sparser (as before) cost 4% of
    output error; steering the count to the target exactly took 450 iterations instead of
    80; filling from below by the optimality test gave 0.0627, aiming above and trimming
    0.0610. Between rounds the support is refit (at most :data:`PILOT_MAX_ITER` iterations)
    and the next penalty is ``1 / (|W| + delta)`` of those weights, as in the
    epsilon search's reweighting. The final refit fixes the values. Every solution of the
    Lagrangian solves the program at the epsilon it reaches; the weights returned are the
    refit's, so epsilon is their residual, and the status is OPTIMAL_INACCURATE when they meet
    the inequalities (the l1 solves stopped early on a settled support; the refit converged)
    or the refit's status when they do not. A solve that does not settle returns its status
    (not a success): the caller falls back to the epsilon search. ``executor``: a
    :class:`nettrim.executors.TaskRunner` that runs each solve as a task (None: here).
    """
    kwargs = dict(opts)
    kwargs.setdefault("settle_tol", SETTLE_TOL)
    problem = problem_for(0.0)   # epsilon is what the solve reaches
    working = iterates_on_working_set(problem, kwargs.get("rows", "auto"))
    kwargs.setdefault("max_iter", SETTLE_MAX_ITER_WORKING if working else SETTLE_MAX_ITER)
    bar = None
    if progress:
        bar = tqdm(desc="ADMM", unit="it", leave=False, disable=None)  # off in a log
        kwargs["callback"] = lambda it, r, s, rho_: bar.update(1)
    _, n_cols, M = problem.shape
    penalized = n_cols * M if penalty is None else int((penalty > 0).sum())
    ratio = max(1.0, PILOT_RATIO[0] + PILOT_RATIO[1] * (1.0 - keep / max(penalized, 1)))
    counts = [min(penalized, round(keep * ratio ** ((reweight - i) / max(reweight, 1))))
              for i in range(reweight + 1)]
    # the last round settles within NNZ_SETTLE of its count: aim that far above the target,
    # so that it lands at or above it and is trimmed (or filled) to it
    counts[-1] = min(penalized, keep + round(NNZ_SETTLE * penalized))
    iterations = 0
    pen, W_init = penalty, None
    try:
        for i, count in enumerate(counts):
            result = tasks.lagrangian(executor, problem, W0=W_init, penalty=pen,
                                      nonzeros=count, **kwargs)
            iterations += result.iterations
            if result.status not in SUCCESS + (SETTLED,):
                reach = _reachable(problem, penalty)
                if not (_short_of(result, count, penalty) and count > reach):
                    return result, result.epsilon, iterations
                # the count is out of reach from below: a neuron with fewer binding rows
                # (active rows; every row of a linear layer) than inputs keeps at most about
                # that many weights at the l1 optimum, and lam only creeps toward 0 (the
                # epsilon search after it took up to 65,000 iterations and still missed the
                # target). Its support is filled to the target by the optimality test and
                # refit, as a settled one is.
                report["note"] = (
                    f"the l1 program reached {_penalized_nonzeros(result.W, penalty)} of "
                    f"{count} weights in {result.iterations} iterations: the calibration rows "
                    f"bind about {reach} (fewer active rows than inputs); the rest chosen by "
                    "the optimality test")
                break
            if i == reweight:
                break
            pilot, _ = refit_on(problem, result, PILOT_MAX_ITER)
            iterations += pilot.iterations
            W_init = pilot.W if bool(torch.isfinite(torch.as_tensor(pilot.W)).all()) \
                else result.W
            pen = torch.as_tensor(reweighted_penalty(W_init))
            if penalty is not None:
                pen = pen * penalty   # unpenalized entries (the bias) stay unpenalized
    finally:
        if bar is not None:
            bar.close()
    # the settled count is within NNZ_SETTLE of the target: land on it exactly
    result, trimmed = trim_to(result, keep, N)
    report["trimmed"] = trimmed
    support = _fill_to(problem, result.W, keep, N, penalty)
    report["filled"] = int(support[:, :N].sum()) - int((torch.as_tensor(result.W)[:, :N] != 0).sum())
    final, _ = refit_on(problem, result, support=support)
    iterations += final.iterations
    report["refit_status"] = final.status
    result, eps_abs = at_reached_epsilon(problem_for, with_objective(final, penalty),
                                         final.status)
    return result, eps_abs, iterations


def _penalized_nonzeros(W, penalty) -> int:
    """Nonzero weights of ``W`` that the l1 term counts (the penalty's nonzero entries)."""
    nonzero = torch.as_tensor(W) != 0
    if penalty is not None:
        nonzero &= torch.as_tensor(penalty, device=nonzero.device) > 0
    return int(nonzero.sum())


def _reachable(problem, penalty) -> int:
    """About how many penalized weights the l1 program can keep: per neuron, its penalized
    inputs, at most the rows that bind it (the active rows of a ReLU layer, every row of a
    linear one; a vertex solution has no more nonzeros than binding rows)."""
    active = problem.active_mask()
    _, n_cols, M = problem.shape
    rows = active.sum(0)                                          # (M,)
    inputs = torch.full_like(rows, n_cols) if penalty is None else \
        (torch.as_tensor(penalty, device=rows.device) > 0).sum(1)
    return int(torch.minimum(rows, inputs).sum())


def _short_of(result, count, penalty) -> bool:
    """Whether a Lagrangian solve stopped at its iteration cap below its count (with finite
    weights): the count was out of reach from below, not overshot."""
    return (result.status == MAX_ITER and bool(torch.isfinite(torch.as_tensor(result.W)).all())
            and _penalized_nonzeros(result.W, penalty) < count)


def at_reached_epsilon(problem_for, result, refit_status):
    """``result`` as a solution of the program at the epsilon its weights reach (their own
    residual): OPTIMAL_INACCURATE when they also meet the inequalities (``feas_tol``) and are
    finite, else the refit's status (INFEASIBLE where the refit claimed success). Returns
    ``(result, epsilon)``."""
    eps = problem_for(0.0).residual(result.W)
    feasible = math.isfinite(eps) and \
        problem_for(eps).is_feasible(result.W, rtol=ADMMSettings.feas_tol)
    status = OPTIMAL_INACCURATE if feasible else (
        refit_status if refit_status not in SUCCESS else INFEASIBLE)
    return replace(result, status=status, epsilon=eps, residual=eps), eps


def trim_to(result, keep, N):
    """Zero the smallest-magnitude weights (columns ``:N``; never the bias column after them)
    until at most ``keep`` are nonzero. Returns ``(result, number zeroed)``."""
    W = torch.as_tensor(result.W).clone()
    weights = W[:, :N]
    extra = int((weights != 0).sum()) - keep
    if extra <= 0:
        return result, 0
    magnitude = weights.abs().flatten().masked_fill((weights == 0).flatten(), math.inf)
    drop = torch.topk(magnitude, extra, largest=False).indices
    flat = weights.flatten().clone()   # a one-row W flattens to a view of itself
    flat[drop] = 0.0
    weights.copy_(flat.reshape(weights.shape))
    return replace(result, W=W, objective=float(weights.abs().sum())), extra


def _fill_to(problem, W, keep, N, penalty):
    """Support of W (columns ``:N`` and the unpenalized ones) grown to ``keep`` weights in
    columns ``:N``: the zeros that enter first as the l1 weight lam falls, those of largest
    ``|X^T (X W^T - Y) on Omega| / penalty``, the optimality test of a zero weight (the
    inequalities' multipliers left out). Returns the (M, columns) bool support."""
    W = torch.as_tensor(W)
    support = W != 0
    if penalty is not None:
        support |= torch.as_tensor(penalty, device=W.device) == 0
    missing = keep - int(support[:, :N].sum())
    if missing <= 0:
        return support
    X, Y, _ = problem.program_tensors()   # the target less a residual offset
    R = (X @ W.T.to(X.dtype) - Y).masked_fill_(~problem.active_mask(), 0.0)
    score = (X.T @ R).T.abs()
    if penalty is not None:
        score = score / torch.as_tensor(penalty, device=W.device, dtype=score.dtype).clamp(
            min=torch.finfo(score.dtype).tiny)
    score[:, N:] = -math.inf
    score.masked_fill_(support, -math.inf)
    missing = min(missing, int(torch.isfinite(score).sum()))
    support.view(-1)[torch.topk(score.flatten(), missing).indices] = True
    return support


def with_objective(result, penalty):
    """Recompute a refit result's objective as (weighted) sum|W| of its W."""
    W = torch.as_tensor(result.W)
    pen = 1.0 if penalty is None else torch.as_tensor(penalty, device=W.device, dtype=W.dtype)
    return replace(result, objective=float((W.abs() * pen).sum()))
