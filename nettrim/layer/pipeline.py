"""Net-Trim on one layer from its activations: :func:`prune_layer` and its pipeline.

``prune_layer`` checks its arguments, solves on the inputs that are not zero on every row,
chooses between the ReLU program and the linear one (``program=``), reaches a target sparsity
by the settled pipeline (:mod:`nettrim.layer.target_count`) or by a search on epsilon with
reweighted l1 solves, refits the support and reports.

Epsilons are *relative* here (a fraction of ``||Y||_F``); :mod:`solvers` takes absolute ones.
"""

from __future__ import annotations

import contextvars
import functools
import math
import time
from dataclasses import replace
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from solvers import (INFEASIBLE, MAX_ITER, OPTIMAL, SUCCESS, ADMMSettings, GramStats,
                     NetTrimProblem, NetTrimResult)
from solvers.htp import hard_threshold_pursuit
from solvers.refit import refit as refit_support
from solvers.refit import reweighted_penalty

from ..checks import check_fraction
from ..executors import TaskRunner
from ..resources import PeakMemory
from ..results import LayerPruneResult
from . import tasks
from .data import COMPRESS_RATIO, layer_data
from .nm import nm_pattern, prune_layer_nm
from .program import PROGRAMS, choose_program, warm_start
from .target_count import (PILOT_MAX_ITER, at_reached_epsilon, settled_pipeline, trim_to,
                           with_objective)

__all__ = ["COMPRESS_RATIO", "SOLVERS", "SPARSITY_EPS_RANGE", "SPARSITY_MAX_SOLVES",
           "SPARSITY_TOL", "check_solver_and_target", "prune_layer"]

SOLVERS = ("admm", "cvxpy")
#: Sparsity mode: relative epsilons searched (log-bisection) within these bounds.
SPARSITY_EPS_RANGE = (1e-4, 1.0)
#: Sparsity mode: stop when the achieved sparsity is within this of the target.
SPARSITY_TOL = 0.005
#: Sparsity mode: at most this many solves per layer.
SPARSITY_MAX_SOLVES = 14


def check_solver_and_target(solver: str, epsilon: Any, sparsity: Any) -> None:
    """``solver`` is one of :data:`SOLVERS` and exactly one of epsilon and sparsity is given."""
    if solver not in SOLVERS:
        msg = f"solver must be one of {SOLVERS}, got {solver!r}"
        raise ValueError(msg)
    if (epsilon is None) == (sparsity is None):
        msg = "give exactly one of epsilon (relative tolerance) and sparsity (target fraction)"
        raise ValueError(msg)


def prune_layer(X: Any, Y: Any, *, epsilon: Optional[float] = None,
                sparsity: Any = None, relu: bool = True, bias: bool = False,
                V: Any = None, offset: Any = None, absolute: bool = False,
                penalize_bias: bool = False,
                solver: str = "admm", W0: Any = None, b0: Any = None, refit: bool = True,
                reweight: int = 1, solver_options: Optional[dict] = None,
                progress: bool = False, program: str = "auto",
                pre: Any = None, executor: Any = None) -> LayerPruneResult:
    """Prune one layer from its activations: the least-l1 weights whose outputs stay close.

    Solves ``min sum|W|  s.t.  ||(X W^T + b + S - Y) on Omega||_F <= epsilon,
    X W^T + b + S <= V off Omega`` (ReLU layer; a linear layer has one ball over all entries),
    with S a known offset (0 unless ``offset`` is given). Inputs that are zero on every row
    (MNIST's border pixels: 125 of 784 on 5,000 images) get zero weights and the program is
    solved on the others (exact, and as much cheaper); the report's ``dead_inputs`` and
    ``note`` say so.

    Parameters
    ----------
    X : ndarray or Tensor of shape (P, N), or solvers.GramStats
        Layer input, one row per sample (for a conv layer: unfolded patches). float32 or
        float64 (integers are promoted to float64); float16 and bfloat16 are refused, as
        :class:`solvers.NetTrimProblem` refuses them: convert with ``.float()``. A linear
        layer may be given by the statistics of its rows instead (:class:`solvers.GramStats`
        of ``X`` and ``Y - offset``, with a ones column last when ``bias=True``; then ``Y``
        is None): its program needs nothing else (:mod:`solvers.gram`). A linear layer given
        by rows with more than :data:`COMPRESS_RATIO` times as many rows as inputs is solved
        on compressed rows the same way (the report's ``compressed_rows``): the same program,
        its iterations costing ``O(N^2 M)`` whatever P is, its extra memory ``O(N^2 + N M)``
        and one chunk of rows.
    Y : ndarray or Tensor of shape (P, M)
        Target outputs: post-ReLU when ``relu=True``.
    epsilon : float
        Tolerance relative to ``||Y||_F`` (absolute with ``absolute=True``). Exactly one of
        ``epsilon`` and ``sparsity`` must be given.
    sparsity : float in [0, 1) or str "n:m"
        Target fraction of zero weights instead of an epsilon: the epsilon reaching it is found
        by log-bisection with warm starts (within :data:`SPARSITY_TOL`); both are reported.
        ``sparsity=0`` means no pruning: ``W0`` (and ``b0``) come back unchanged, with a
        ``note`` in the report saying so (it needs ``W0``). ``"n:m"`` (e.g. ``"2:4"``): n
        zeros in every m consecutive weights of each row (:mod:`nettrim.layer.nm`).
    relu : bool, default True
        False for a layer with no activation.
    bias : bool, default False
        Fit a bias too (a ones column appended to X); it is not penalized unless
        ``penalize_bias=True``.
    V : ndarray or Tensor of shape (P, M), optional
        Inequality bound off the active set (cascade: ``X-hat W0^T + b0 + S``); default 0.
    offset : ndarray or Tensor of shape (P, M), optional
        Known term added before the activation, per row (a residual block's skip: the output
        is ``relu(X W^T + b + offset)``); see :class:`solvers.NetTrimProblem` ``S``.
    solver : {"admm", "cvxpy"}
    W0, b0 : optional
        Warm start (the original weights): shapes (M, N) and (M,), finite.
    refit : bool, default True
        After the l1 solve fixes the support, re-solve on it for the least active-set
        residual under the same inequalities (undoes l1 shrinkage). A program without
        inequalities (a linear layer, the linear candidate of a ReLU layer) at a target
        ``sparsity`` then improves its support at the same count by hard-thresholding pursuit
        (:mod:`solvers.htp`: swaps that lower the residual, each refit; the report's
        ``pursuit`` says how many rounds ran and what they gained).
    reweight : int, default 1
        Rounds of reweighted l1 before the refit: after each l1 solve, its support is refit
        and the program is solved again at the same epsilon with the penalty
        ``1 / (|W| + delta)`` of those refit weights (:func:`solvers.refit.reweighted_penalty`).
        The refit undoes the l1 shrinkage, so the penalty ranks the kept weights by the size
        they need rather than by their shrunk size (measured: lower error at the same
        sparsity than a penalty from the l1 weights themselves). In sparsity mode the whole
        chain runs at every epsilon the search tries.
    solver_options : dict, optional
        Keyword arguments for :func:`solvers.solve_admm` / :func:`solvers.solve_cvxpy`.
    progress : bool
        Show a tqdm bar of ADMM iterations.
    program : {"auto", "best", "relu"}, default "auto"
        For a ReLU layer at a target ``sparsity`` (ignored otherwise): which program's weights
        to return, judged by the post-ReLU calibration error ``||relu(X W^T + b + S) - Y||_F``
        (:mod:`nettrim.layer.program` lists the candidates). The ReLU program's hard
        inequality on every inactive entry can cost more than it gains (measured on a ResNet
        stem, 9 inputs per channel, at 50%: post-ReLU error 0.248 against 0.138 for the
        linear program on the pre-activations), and the ReLU-aware refit on its support,
        which charges an inactive pre-activation only for rising above 0, often beats both
        (LeNet-300-100's 784 -> 300 layer at 90%: 0.131 against 0.144 for the ReLU program
        and 0.139 for the linear refit). ``"auto"``: the ReLU program where its work
        ``P N M`` is at most :data:`RELU_PROGRAM_MAX_WORK` (else the linear program on
        compressed rows chooses the support), the least-squares refit on ``pre`` and the
        ReLU-aware refit (where its work is at most :data:`SOFT_REFIT_MAX_WORK`) on that
        support, and on small layers the linear program; a linear candidate is kept only
        when lower than the ReLU-aware ones by :data:`PROGRAM_MARGIN`. ``"best"``: every
        candidate. ``"relu"``: the ReLU program. The report's ``program`` says which was kept
        (``"relu"``, ``"relu+soft"``, ``"linear-refit"``, ``"linear"``, ``"linear+soft"``),
        ``program_errors`` the error of each candidate tried and ``note`` why a candidate was
        skipped; ``epsilon_abs`` is the kept candidate's bound on its post-ReLU error (the
        ReLU program's epsilon, a linear residual on ``pre``, or the root of twice the
        ReLU-aware objective; ``epsilon`` is relative to ``||Y||_F`` as usual). In epsilon
        mode the ReLU program is kept. For a ReLU6 layer (its target clipped at 6) the
        comparison overstates the other candidates' errors, so it keeps the ReLU program at
        least as often.
    pre : ndarray or Tensor of shape (P, M), optional
        Target of the linear alternative: the layer's pre-activations (offset excluded, so that
        the output is ``relu(pre + offset)``). Default ``X W0^T + b0`` (the original
        pre-activations in parallel mode; in cascade mode pass the original network's). With
        neither ``pre`` nor ``W0``, or when the ReLU program is not solved (its status is not
        a success), the ReLU program's result is returned.
    executor : None, "ray" or an object with ``map(fn, items)``, optional
        Where the solves run (:mod:`nettrim.executors`): each l1 solve one task, each refit
        in blocks of neurons (:mod:`nettrim.layer.tasks` says what is exact); None: here.
        ``progress`` is then the executor's task count, not a bar per ADMM solve.

    Returns
    -------
    LayerPruneResult
    """
    if executor is not None and not isinstance(executor, TaskRunner):
        arguments = {k: v for k, v in locals().items() if k != "executor"}   # the call's own
        with TaskRunner.open(executor) as runner:
            return prune_layer(**arguments, executor=runner)
    progress = progress and executor is None   # the executor's task board counts its work
    check_solver_and_target(solver, epsilon, sparsity)
    if isinstance(X, GramStats) and relu:
        msg = ("X is a GramStats, the statistics of a linear layer's rows: pass relu=False (a "
               "ReLU program's inequalities need the rows)")
        raise ValueError(msg)
    if program not in PROGRAMS:
        msg = f"program must be one of {PROGRAMS}, got {program!r}"
        raise ValueError(msg)
    pattern = nm_pattern(sparsity)
    if pattern is not None:   # N:M: its own support rule, then the exact refit
        return prune_layer_nm(
            X, Y, pattern, solve=prune_layer, relu=relu, bias=bias, V=V, offset=offset, W0=W0,
            b0=b0, pre=pre, program=program,
            options=dict(penalize_bias=penalize_bias, solver=solver, refit=refit,
                         reweight=reweight, solver_options=solver_options, progress=progress))
    if relu and sparsity is not None and program != "relu" and (pre is not None or W0 is not None):
        target = check_fraction(sparsity, "sparsity", upper_open=True)
        if target > 0.0:
            return choose_program(
                prune_layer, X, Y, sparsity=target, bias=bias, V=V, offset=offset,
                penalize_bias=penalize_bias, solver=solver, W0=W0, b0=b0, refit=refit,
                reweight=reweight, solver_options=solver_options, progress=progress,
                always=program == "best", pre=pre, executor=executor)
    if not isinstance(reweight, int) or reweight < 0:
        msg = f"reweight must be a nonnegative integer (rounds), got {reweight!r}"
        raise ValueError(msg)
    data = layer_data(X, Y, relu=relu, bias=bias, V=V, offset=offset)
    return _prune(data, epsilon=epsilon, sparsity=sparsity, bias=bias, absolute=absolute,
                  penalize_bias=penalize_bias, solver=solver, W0=W0, b0=b0, refit=refit,
                  reweight=reweight, solver_options=solver_options, progress=progress,
                  program=program, pre=pre, executor=executor)


def _measured(run):
    """``prune_layer`` with the report's ``peak_memory_mb`` (:class:`nettrim.resources.
    PeakMemory`: above the memory in use at the call, the inputs not counted), measured by the
    outermost call only."""
    @functools.wraps(run)
    def wrapper(X, Y, **kwargs):
        if _MEASURING.get():
            return run(X, Y, **kwargs)
        token = _MEASURING.set(True)
        try:
            device = getattr(X, "device", None)
            with PeakMemory(device) as peak:
                result = run(X, Y, **kwargs)
        finally:
            _MEASURING.reset(token)
        result.report["peak_memory_mb"] = peak.megabytes
        return result
    return wrapper


_MEASURING: contextvars.ContextVar = contextvars.ContextVar("nettrim_peak", default=False)
prune_layer = _measured(prune_layer)


def _prune(data, *, epsilon, sparsity, bias, absolute, penalize_bias, solver, W0, b0, refit,
           reweight, solver_options, progress, program, pre, executor) -> LayerPruneResult:
    """:func:`prune_layer` on checked options and its data (:mod:`nettrim.layer.data`);
    ``executor``: a :class:`nettrim.executors.TaskRunner` or None."""
    P, N, M = data.shape
    W_start = None if W0 is None else warm_start(W0, b0, bias, M, N, data)
    target = None if sparsity is None else check_fraction(sparsity, "sparsity", upper_open=True)
    dead = data.dead_inputs()   # inputs zero on every row: no weight on them changes an output
    n_live = N - int(dead.sum())
    if 0 < n_live < N and target != 0.0:
        # solve on the live inputs only (exact: a weight on a dead input only adds to sum|W|);
        # the same number of weights is kept, as the target counts all M N of them
        sub_target = None if target is None else 1.0 - (1.0 - target) * N / n_live
        if sub_target is None or sub_target > 0.0:
            live = ~dead
            sub = _prune(
                data.restrict(live), epsilon=epsilon, sparsity=sub_target, bias=bias,
                absolute=absolute, penalize_bias=penalize_bias, solver=solver,
                W0=None if W_start is None else W_start[:, :N][:, live], b0=b0, refit=refit,
                reweight=reweight, solver_options=solver_options, progress=progress,
                program=program, pre=pre, executor=executor)
            weight = torch.zeros(M, N, dtype=sub.weight.dtype, device=sub.weight.device)
            weight[:, live] = sub.weight
            report = dict(sub.report)
            nonzeros = int((weight != 0).sum())
            note = (f"{N - n_live} of {N} inputs are zero on every calibration row: their "
                    "weights are 0 and the program was solved on the others")
            report.update(nonzeros=nonzeros, total=M * N, sparsity=1.0 - nonzeros / (M * N),
                          dead_inputs=N - n_live,
                          note="; ".join(n for n in (report.get("note"), note) if n))
            if target is not None:
                report["target_sparsity"] = target
            return LayerPruneResult(weight=weight, bias=sub.bias, report=report)
    Na = N + bool(bias)
    penalty = None
    if bias and not penalize_bias:
        penalty = torch.ones(M, Na, dtype=data.dtype, device=data.device)
        penalty[:, -1] = 0.0
    y_norm = data.y_norm()
    y_max = data.y_max()
    opts = dict(solver_options or {})
    t0 = time.perf_counter()
    # the program at epsilon 0; a linear program with many rows on compressed rows
    # (solvers.gram: the same program, its iterations O(N^2 M) whatever P is)
    base, report_rows = data.problem(bias)

    def problem_for(eps_abs: float) -> NetTrimProblem:
        return replace(base, epsilon=eps_abs)

    def refit_on(problem: NetTrimProblem, result, max_iter=None, support=None):
        """(refit result, whether it may replace ``result``); support: W != 0 by default."""
        if support is None:
            support = torch.as_tensor(result.W) != 0
        if penalty is not None:  # unpenalized entries (the bias) are always refit
            support |= penalty.to(support.device) == 0
        kwargs = {} if max_iter is None else {"max_iter": max_iter}
        refitted = _refit(executor, problem, support, W0=result.W, **kwargs)
        return refitted, _refit_usable(refitted, result, y_max)

    def solve(eps_abs: float, W_init, rho=None):
        return _solve_l1(problem_for(eps_abs), solver, W_init, penalty, opts, reweight, rho,
                         progress, refit_on, l1_notes, executor)

    l1_notes: list = []   # what the l1 solves have to say (a reweighting round that failed)

    report: dict = dict(report_rows)
    eps_given = None
    if sparsity is None:
        eps_given = float(epsilon) if absolute else \
            check_fraction(epsilon, "epsilon", upper_open=False) * y_norm
    # sparsity mode, ADMM, refit (the defaults): the settled pipeline; otherwise the search
    pipeline = solver == "admm" and refit and target is not None and target != 0.0
    pursue = refit and target is not None and target != 0.0 and not data.relu
    keep = None if target is None else round((1.0 - target) * M * N)   # weights to keep
    if target == 0.0:
        # no pruning: the original weights, measured against the program they satisfy
        if W_start is None:
            msg = ("sparsity=0 keeps the layer as it is, which needs its weights: pass W0 "
                   "(and b0 with bias=True)")
            raise ValueError(msg)
        result, eps_value = _unpruned(problem_for, W_start, penalty)
        iterations, refit = 0, False
        report.update(target_sparsity=0.0, solves=0, trimmed=0,
                      note="sparsity 0: weights kept as they are (no pruning)")
    elif pipeline:   # see _settled_pipeline
        result, eps_value, iterations = settled_pipeline(
            problem_for, keep, N, penalty, reweight, opts, progress, refit_on, report,
            executor)
        if result.status not in SUCCESS:   # did not settle: the epsilon search instead
            report["note"] = (f"the Lagrangian ADMM stopped with {result.status} after "
                              f"{iterations} iterations; solved by the epsilon search instead")
            pipeline = False
        else:
            refit = False   # done inside the pipeline
            trimmed = report.get("trimmed", 0)
            if abs(_weight_sparsity(result.W, bias, N) - target) > SPARSITY_TOL:
                result, more = trim_to(result, keep, N)
                trimmed += more
                refitted, usable = refit_on(problem_for(eps_value), result)
                iterations += refitted.iterations
                if usable:
                    result = with_objective(refitted, penalty)
                result, eps_value = at_reached_epsilon(problem_for, result, refitted.status)
            report.update(target_sparsity=target, solves=1 + reweight, trimmed=trimmed)
    if target != 0.0 and not pipeline:
        spent = iterations if report.get("note") else 0
        if target is None:
            eps_value = eps_given
            result, iterations = solve(eps_value, W_start)
        else:
            result, eps_value, iterations, solves = _search_sparsity(
                solve, target, y_norm, W_start, bias, N)
            if result.status not in SUCCESS:
                report["note"] = "; ".join(n for n in (report.get("note"), (
                    f"no epsilon in {SPARSITY_EPS_RANGE} (relative) gave a solution for "
                    f"sparsity {target} in {solves} solves; the last status was "
                    f"{result.status}")) if n)
            trimmed = 0
            if abs(_weight_sparsity(result.W, bias, N) - target) > SPARSITY_TOL:
                result, trimmed = trim_to(result, keep, N)
            report.update(target_sparsity=target, solves=solves, trimmed=trimmed)
        iterations += spent
    if refit and result.status in SUCCESS:
        refitted, usable = refit_on(problem_for(eps_value), result)
        iterations += refitted.iterations
        report["refit_status"] = refitted.status
        if usable:  # the status stays the l1 program's: the refit W is feasible for it
            result = with_objective(replace(refitted, status=result.status), penalty)
    if pursue and result.status in SUCCESS:
        result, eps_value = _pursue(problem_for, result, eps_value, N, penalty, report,
                                    reached=pipeline)
    if l1_notes:
        report["note"] = "; ".join([n for n in [report.get("note")] if n]
                                   + sorted(set(l1_notes)))
    W = torch.as_tensor(result.W, device=data.device, dtype=data.dtype)
    weight, b = (W[:, :N].contiguous(), W[:, N].contiguous()) if bias else (W, None)
    nonzeros = int((weight != 0).sum())
    report.update(
        nonzeros=nonzeros, total=M * N, sparsity=1.0 - nonzeros / (M * N),
        epsilon=eps_value / y_norm if y_norm > 0 else float("nan"), epsilon_abs=eps_value,
        relative_error=data.output_error(weight, b),
        status=result.status, iterations=iterations, seconds=time.perf_counter() - t0,
        solver=result.solver, objective=result.objective, residual=result.residual,
        violation=result.violation)
    return LayerPruneResult(weight=weight, bias=b, report=report)


def _pursue(problem_for, result, eps_value, N, penalty, report, *,
            reached: bool) -> tuple[NetTrimResult, float]:
    """A linear program's refit weights at their count, support improved by hard-thresholding
    pursuit (:mod:`solvers.htp`; the bias column stays as it is). Each kept round lowered the
    residual, so the weights stay feasible at ``eps_value``; where the epsilon is the one the
    weights reach (``reached``: the settled pipeline's), it is their new residual. Returns
    ``(result, epsilon)`` and puts the pursuit's figures in ``report["pursuit"]``."""
    problem = problem_for(eps_value)
    W = torch.as_tensor(result.W)
    counted = torch.zeros(W.shape, dtype=torch.bool, device=W.device)
    counted[:, :N] = True
    found = hard_threshold_pursuit(problem, W, counted=counted)
    report["pursuit"] = dict(rounds=found.rounds, kept=found.kept, moved=found.moved,
                             residual_before=found.residual_before,
                             residual=found.residual, stopped=found.stopped)
    if not found.kept:
        return result, eps_value
    result = with_objective(replace(result, W=found.W), penalty)
    if reached:
        return at_reached_epsilon(problem_for, result, result.status)
    return replace(result, residual=problem.residual(found.W)), eps_value


def _unpruned(problem_for, W: torch.Tensor, penalty) -> tuple[NetTrimResult, float]:
    """The weights ``W`` as a solution of the program at the epsilon they meet (their own
    residual): OPTIMAL when they also meet its inequalities."""
    probe = problem_for(0.0)
    residual, violation = probe.residual(W), probe.violation(W)
    problem = problem_for(residual)
    result = NetTrimResult(
        W=W, status=OPTIMAL if problem.is_feasible(W) else INFEASIBLE, iterations=0,
        objective=0.0, residual=residual, violation=violation, epsilon=residual,
        primal_residual=float("nan"), dual_residual=float("nan"), solve_time=0.0,
        solver="none")
    return with_objective(result, penalty), residual


def _refit(executor, problem, support, **kwargs):
    """:func:`solvers.refit.refit` here (``executor`` None), or in neuron blocks as tasks
    (:func:`tasks.refit`)."""
    if executor is None:
        return refit_support(problem, support, **kwargs)
    return tasks.refit(executor, problem, support, **kwargs)


def _solve_l1(problem, solver, W_init, penalty, opts, reweight, rho, progress, refit_on,
              notes, executor=None):
    """One (weighted) l1 solve plus ``reweight`` reweighting rounds: (result, total iterations).

    Each round takes its penalty from the previous solution refit on its support
    (``refit_on(problem, result, max_iter) -> (refit, usable)``), at most
    :data:`PILOT_MAX_ITER` refit iterations: only the magnitudes of the pilot matter, so a
    capped refit serves as long as it is finite. A round that does not solve ends the
    reweighting with the previous round's solution, and a line in ``notes`` (a list).
    """
    bar = None
    if solver == "admm":
        kwargs = dict(opts)
        if progress:
            bar = tqdm(desc="ADMM", unit="it", leave=False, disable=None)  # off in a log
            kwargs["callback"] = lambda it, r, s, rho_: bar.update(1)
        if rho is not None and "rho" not in kwargs:
            kwargs["rho"] = rho
        def run(pen, W):
            return tasks.solve(executor, "admm", problem, W0=W, penalty=pen, **kwargs)
    else:
        def run(pen, W):
            return tasks.solve(executor, "cvxpy", problem, penalty=pen, **opts)
    try:
        result = run(penalty, W_init)
        iterations = result.iterations
        for _ in range(reweight):
            if result.status not in SUCCESS:
                break
            pilot, usable = refit_on(problem, result, PILOT_MAX_ITER)
            iterations += pilot.iterations
            usable = usable or (pilot.status == MAX_ITER
                                and bool(torch.isfinite(torch.as_tensor(pilot.W)).all()))
            pen = torch.as_tensor(reweighted_penalty(pilot.W if usable else result.W))
            if penalty is not None:
                pen = pen * penalty  # unpenalized entries (the bias) stay unpenalized
            weighted = run(pen, result.W)
            iterations += weighted.iterations
            if weighted.status not in SUCCESS:   # a failed refinement: keep the solved round
                notes.append(f"a reweighted l1 round stopped with {weighted.status} after "
                             f"{weighted.iterations} iterations; the round before it is kept")
                break
            result = weighted
    finally:
        if bar is not None:
            bar.close()
    return result, iterations


def _refit_usable(refitted, result, y_max: float) -> bool:
    """Whether a refit may replace the l1 solution ``result``: it converged, or it stopped at
    its iteration cap with the inequalities met (solve_admm's tolerance, ``feas_tol max|Y|``)
    and an active-set residual no larger than the l1 solution's (so still within epsilon).
    The refit keeps every row of its start that it could not improve, so a capped refit is
    usually a better feasible point that was not yet certified optimal."""
    if refitted.status in SUCCESS:
        return True
    return (refitted.status == MAX_ITER
            and refitted.violation <= ADMMSettings.feas_tol * y_max * (1 + 1e-6)
            and refitted.residual <= result.residual)


def _search_sparsity(solve, target, y_norm, W_start, bias, N):
    """Log-bisection on the relative epsilon for ``target`` sparsity, warm-starting each solve."""
    # false position on log(epsilon), safeguarded: the sparsity rises from about 0 at the lower
    # end to 1 at the upper end (epsilon = ||Y||_F admits W = 0); each step interpolates inside
    # the bracket, kept away from its ends so that the bracket always shrinks.
    lo, hi = (math.log(e) for e in SPARSITY_EPS_RANGE)
    s_lo, s_hi = 0.0, 1.0
    nearest = below = None   # (key, result, eps_abs)
    unsolved = None          # (result, eps_abs) of the last solve that did not succeed
    iterations = 0
    W_warm, rho = W_start, None
    solves = 0
    result = None
    for solves in range(1, SPARSITY_MAX_SOLVES + 1):
        t = (target - s_lo) / (s_hi - s_lo) if s_hi > s_lo else 0.5
        mid = lo + min(max(t, 0.2), 0.8) * (hi - lo)
        eps_abs = math.exp(mid) * y_norm
        result, its = solve(eps_abs, W_warm, rho)
        iterations += its
        ok = result.status in SUCCESS
        s = _weight_sparsity(result.W, bias, N) if ok else -1.0
        if ok:
            dist = abs(s - target)
            if nearest is None or dist < nearest[0]:
                nearest = (dist, result, eps_abs)
            if s <= target and (below is None or s > below[0]):
                below = (s, result, eps_abs)
            W_warm, rho = result.W, (result.rho if math.isfinite(result.rho) else None)
            if dist <= SPARSITY_TOL:
                return result, eps_abs, iterations, solves
        if not ok:
            unsolved = (result, eps_abs)
        if s < target:  # an unsolved (infeasible, capped) point counts as too dense
            lo, s_lo = mid, max(s, s_lo)
        else:
            hi, s_hi = mid, s
    if nearest is None:   # the caller reports the last (unsolved) point with a note
        return result, eps_abs, iterations, solves
    if below is None and unsolved is not None:
        # only sparser solutions, the denser epsilons unsolved (e.g. at an iteration cap): the
        # sparser ones miss the target and no trim can add weights back (an all-zero layer
        # came back OPTIMAL at 93% asked), so the unsolved point is returned with its status
        return unsolved[0], unsolved[1], iterations, solves
    # the support jumped over the target (a group of weights vanishes at once): return the
    # closest denser solution, which the caller trims by magnitude
    chosen = below if below is not None else nearest
    return chosen[1], chosen[2], iterations, solves


def _weight_sparsity(W, bias, N):
    W = torch.as_tensor(W)
    W = W[:, :N] if bias else W
    return 1.0 - int((W != 0).sum()) / W.numel()
