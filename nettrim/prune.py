"""Net-Trim on models: one layer from its activations, or a whole model (parallel / cascade).

``prune_layer`` works on captured activations (arrays); ``prune`` captures them from a model with
forward hooks, solves each layer's program (:mod:`solvers`), and writes the pruned weights into
a copy of the model.

Epsilons are *relative* here (a fraction of ``||Y||_F``); :mod:`solvers` takes absolute ones.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from solvers import (INFEASIBLE, MAX_ITER, OPTIMAL, OPTIMAL_INACCURATE, SETTLED, SUCCESS,
                     ADMMSettings, NetTrimProblem, NetTrimResult, solve_admm, solve_cvxpy,
                     solve_lagrangian)
from solvers.lagrangian import NNZ_SETTLE, SETTLE_TOL
from solvers.problem import as_tensor, check_finite, safe_norm
from solvers.refit import refit as refit_support
from solvers.refit import reweighted_penalty

from .budget import check_scope
from .capture import (RELU_PROGRAM, LayerData, _batches, _to, capture, capture_cascade,
                      group_blocks, prunable_layers)
from .graph import analyze, batchnorm_affine
from .report import format_prune_table
from .surgery import apply_masks, set_layer_weight

__all__ = ["prune_layer", "prune", "LayerPruneResult", "LayerReport", "PruneResult",
           "PruningWarning", "PruningError", "SOLVERS", "MODES"]

SOLVERS = ("admm", "cvxpy")
#: How a PruningWarning/PruningError says to raise the iteration cap (the CLI names its flag).
MAX_ITER_HINT = "raise max_iter through solver_options={'max_iter': ...}"
#: Report status of a layer left as it is (the note says why).
SKIPPED = "SKIPPED"
MODES = ("parallel", "cascade")
#: Sparsity mode: relative epsilons searched (log-bisection) within these bounds.
SPARSITY_EPS_RANGE = (1e-4, 1.0)
#: Sparsity mode: stop when the achieved sparsity is within this of the target.
SPARSITY_TOL = 0.005
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
#: Iteration cap of the pilot refit whose weights give a reweighting round its penalty (its
#: ADMM iterations: on the CPU a ReLU layer's refit is solved exactly, without a cap).
PILOT_MAX_ITER = 100
#: Sparsity mode: at most this many solves per layer.
SPARSITY_MAX_SOLVES = 14
#: ``program=`` of :func:`prune_layer` / :func:`prune` (a ReLU layer at a target sparsity):
#: "auto" compares the ReLU program with the linear one by the post-activation calibration
#: error, "best" always solves both, "relu" keeps the ReLU program (see :func:`prune_layer`).
PROGRAMS = ("auto", "best", "relu")
#: A linear candidate replaces the ReLU program only with a post-activation error at least
#: this fraction lower (differences at rounding level, e.g. two exact fits, keep the ReLU one).
PROGRAM_MARGIN = 0.01
#: ... and (in relative-error units) this much lower: two exact fits are a tie.
PROGRAM_TOL = 1e-6
#: ``program="auto"``: the linear program is solved in full (after its refit on the ReLU
#: program's support won) only on layers of at most this many weights, where it costs little
#: next to the ReLU program. On small layers it wins: the benchmark ResNet's stem (144
#: weights) 0.138 against 0.169 for the refit at 50%; every layer of bench_archs has at most
#: 36,864 weights, so its measured choices stand. On LeNet-300-100's 784 -> 300 layer (235,200) at
#: 90% it lost (0.146 against 0.138 for the refit) and took 12 s more than the 19.5 s of the
#: rest. ``program="best"`` always solves it.
LINEAR_SOLVE_MAX_WEIGHTS = 40_000
#: dtypes the solvers take; prune() solves other floating layers (float16, bfloat16) in float32.
_SOLVE_DTYPES = (torch.float32, torch.float64)


class PruningWarning(UserWarning):
    """A layer's solver did not report an optimal solution (status, residuals in the text)."""


class PruningError(RuntimeError):
    """Raised instead of :class:`PruningWarning` when ``strict=True``."""


# ---- one layer --------------------------------------------------------------------------------
@dataclass
class LayerPruneResult:
    """Result of :func:`prune_layer`.

    Attributes
    ----------
    weight : Tensor of shape (M, N)
    bias : Tensor of shape (M,) or None
    report : dict
        ``nonzeros``, ``total``, ``sparsity`` (weights only, bias excluded), ``epsilon``
        (relative to ||Y||_F), ``epsilon_abs``, ``relative_error`` (``||act(X W^T + b) - Y||_F
        / ||Y||_F``), ``status``, ``iterations``, ``seconds``, ``solver``, ``objective``, and in
        sparsity mode ``target_sparsity`` and ``solves``; for a ReLU layer at a target
        sparsity with ``program="auto" | "best"``, ``program`` (the candidate kept) and
        ``program_errors`` (the post-ReLU error of each candidate tried).
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    report: dict


def _as_tensor(a: Any, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        msg = f"{name} must be a numpy array or a torch tensor, got {type(a).__name__}"
        raise TypeError(msg)
    if a.ndim != 2:
        msg = f"{name} must be 2-D, got shape {tuple(a.shape)}"
        raise ValueError(msg)
    return a.detach() if a.dtype in (torch.float32, torch.float64) else a.detach().double()


def _check_solver_and_target(solver: str, epsilon: Any, sparsity: Any) -> None:
    if solver not in SOLVERS:
        msg = f"solver must be one of {SOLVERS}, got {solver!r}"
        raise ValueError(msg)
    if (epsilon is None) == (sparsity is None):
        msg = "give exactly one of epsilon (relative tolerance) and sparsity (target fraction)"
        raise ValueError(msg)


def _check_fraction(value: Any, name: str, *, upper_open: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a number, got {value!r}"
        raise TypeError(msg) from None
    ok = 0.0 <= v < 1.0 if upper_open else 0.0 <= v and math.isfinite(v)
    if not ok:
        msg = f"{name} must be in [0, 1), got {v}" if upper_open else f"{name} must be >= 0, got {v}"
        raise ValueError(msg)
    return v


def prune_layer(X: Any, Y: Any, *, epsilon: Optional[float] = None,
                sparsity: Optional[float] = None, relu: bool = True, bias: bool = False,
                V: Any = None, offset: Any = None, absolute: bool = False,
                penalize_bias: bool = False,
                solver: str = "admm", W0: Any = None, b0: Any = None, refit: bool = True,
                reweight: int = 1, solver_options: Optional[dict] = None,
                progress: bool = False, program: str = "auto",
                pre: Any = None) -> LayerPruneResult:
    """Prune one layer from its activations: the least-l1 weights whose outputs stay close.

    Solves ``min sum|W|  s.t.  ||(X W^T + b + S - Y) on Omega||_F <= epsilon,
    X W^T + b + S <= V off Omega`` (ReLU layer; a linear layer has one ball over all entries),
    with S a known offset (0 unless ``offset`` is given). Inputs that are zero on every row
    (MNIST's border pixels: 125 of 784 on 5,000 images) get zero weights and the program is
    solved on the others (exact, and as much cheaper); the report's ``dead_inputs`` and
    ``note`` say so.

    Parameters
    ----------
    X : ndarray or Tensor of shape (P, N)
        Layer input, one row per sample (for a conv layer: unfolded patches). float32 or
        float64 (integers are promoted to float64); float16 and bfloat16 are refused, as
        :class:`solvers.NetTrimProblem` refuses them: convert with ``.float()``.
    Y : ndarray or Tensor of shape (P, M)
        Target outputs: post-ReLU when ``relu=True``.
    epsilon : float
        Tolerance relative to ``||Y||_F`` (absolute with ``absolute=True``). Exactly one of
        ``epsilon`` and ``sparsity`` must be given.
    sparsity : float in [0, 1)
        Target fraction of zero weights instead of an epsilon: the epsilon reaching it is found
        by log-bisection with warm starts (within :data:`SPARSITY_TOL`); both are reported.
        ``sparsity=0`` means no pruning: ``W0`` (and ``b0``) come back unchanged, with a
        ``note`` in the report saying so (it needs ``W0``).
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
        residual under the same inequalities (undoes l1 shrinkage).
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
        to return. The ReLU program's hard inequality on every inactive entry can cost more
        than it gains where a neuron keeps few weights (measured on a ResNet stem, 9 inputs per
        channel, at 50%: post-ReLU error 0.248 against 0.138 for the linear program on the
        pre-activations). ``"auto"``: the ReLU program is solved, then the linear program is
        refit on its support (least squares on the pre-activations ``pre``, cheap); if that
        refit has the lower post-activation error ``||relu(X W^T + b + S) - Y||_F`` on the
        calibration rows, the linear program is also solved at the same sparsity (on layers of
        at most :data:`LINEAR_SOLVE_MAX_WEIGHTS` weights, where it is cheap), and the
        weights with the lowest of the (two or three) errors are returned (a linear one only
        if it is lower by :data:`PROGRAM_MARGIN`, 1%, and :data:`PROGRAM_TOL`). ``"best"``: the
        linear program is always solved as well. ``"relu"``: the ReLU program's weights. The
        report's ``program`` says which was kept (``"relu"``, ``"linear"``, ``"linear-refit"``:
        the linear refit on the ReLU program's support) and ``program_errors`` the error of
        each candidate tried; for a linear one, ``epsilon_abs`` is its residual on ``pre``,
        which bounds the post-ReLU error (``epsilon`` is relative to ``||Y||_F`` as usual).
        The returned error is never above the ReLU program's, nor (with ``"best"``, or when
        the linear program was solved) above the linear program's divided by
        ``1 - PROGRAM_MARGIN``. In epsilon mode both programs meet the same bound and the
        ReLU program needs fewer weights, so it is kept. The comparison measures the error
        after a ReLU; for a ReLU6 layer (its target clipped at 6) this overstates the linear candidates' error, so it
        keeps the ReLU program at least as often.
    pre : ndarray or Tensor of shape (P, M), optional
        Target of the linear alternative: the layer's pre-activations (offset excluded, so that
        the output is ``relu(pre + offset)``). Default ``X W0^T + b0`` (the original
        pre-activations in parallel mode; in cascade mode pass the original network's). With
        neither ``pre`` nor ``W0``, or when the ReLU program is not solved (its status is not
        a success), the ReLU program's result is returned.

    Returns
    -------
    LayerPruneResult
    """
    _check_solver_and_target(solver, epsilon, sparsity)
    if program not in PROGRAMS:
        msg = f"program must be one of {PROGRAMS}, got {program!r}"
        raise ValueError(msg)
    if relu and sparsity is not None and program != "relu" and (pre is not None or W0 is not None):
        target = _check_fraction(sparsity, "sparsity", upper_open=True)
        if target > 0.0:
            return _choose_program(
                X, Y, sparsity=target, bias=bias, V=V, offset=offset,
                penalize_bias=penalize_bias, solver=solver, W0=W0, b0=b0, refit=refit,
                reweight=reweight, solver_options=solver_options, progress=progress,
                always=program == "best", pre=pre)
    if not isinstance(reweight, int) or reweight < 0:
        msg = f"reweight must be a nonnegative integer (rounds), got {reweight!r}"
        raise ValueError(msg)
    X = as_tensor(X, name="X")
    Y = as_tensor(Y, name="Y").to(device=X.device, dtype=X.dtype)
    P, N = X.shape
    M = Y.shape[1]
    if Y.shape[0] != P:
        msg = f"X has shape {tuple(X.shape)} and Y has shape {tuple(Y.shape)}: the row counts differ"
        raise ValueError(msg)
    W_start = None if W0 is None else _warm_start(W0, b0, bias, M, N, X)
    target = None if sparsity is None else _check_fraction(sparsity, "sparsity", upper_open=True)
    dead = ~(X != 0).any(0)   # inputs zero on every row: no weight on them changes an output
    n_live = N - int(dead.sum())
    if 0 < n_live < N and target != 0.0:
        # solve on the live inputs only (exact: a weight on a dead input only adds to sum|W|);
        # the same number of weights is kept, as the target counts all M N of them
        sub_target = None if target is None else 1.0 - (1.0 - target) * N / n_live
        if sub_target is None or sub_target > 0.0:
            live = ~dead
            sub = prune_layer(
                X[:, live], Y, epsilon=epsilon, sparsity=sub_target, relu=relu, bias=bias, V=V,
                offset=offset, absolute=absolute, penalize_bias=penalize_bias, solver=solver,
                W0=None if W_start is None else W_start[:, :N][:, live], b0=b0, refit=refit,
                reweight=reweight, solver_options=solver_options, progress=progress,
                program=program, pre=pre)
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
    Xa = torch.cat([X, torch.ones(P, 1, dtype=X.dtype, device=X.device)], 1) if bias else X
    Na = Xa.shape[1]
    penalty = None
    if bias and not penalize_bias:
        penalty = torch.ones(M, Na, dtype=X.dtype, device=X.device)
        penalty[:, -1] = 0.0
    y_norm = float(safe_norm(Y))
    y_max = float(Y.abs().max()) if Y.numel() else 0.0
    opts = dict(solver_options or {})
    t0 = time.perf_counter()

    def problem_for(eps_abs: float) -> NetTrimProblem:
        return NetTrimProblem(Xa, Y, eps_abs, V=V, relu=relu, S=offset)

    def refit_on(problem: NetTrimProblem, result, max_iter=None, support=None):
        """(refit result, whether it may replace ``result``); support: W != 0 by default."""
        if support is None:
            support = torch.as_tensor(result.W) != 0
        if penalty is not None:  # unpenalized entries (the bias) are always refit
            support |= penalty.to(support.device) == 0
        kwargs = {} if max_iter is None else {"max_iter": max_iter}
        refitted = refit_support(problem, support, W0=result.W, **kwargs)
        return refitted, _refit_usable(refitted, result, y_max)

    def solve(eps_abs: float, W_init, rho=None):
        return _solve_l1(problem_for(eps_abs), solver, W_init, penalty, opts, reweight, rho,
                         progress, refit_on, l1_notes)

    l1_notes: list = []   # what the l1 solves have to say (a reweighting round that failed)

    report: dict = {}
    eps_given = None
    if sparsity is None:
        eps_given = float(epsilon) if absolute else \
            _check_fraction(epsilon, "epsilon", upper_open=False) * y_norm
    # sparsity mode, ADMM, refit (the defaults): the settled pipeline; otherwise the search
    pipeline = solver == "admm" and refit and target is not None and target != 0.0
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
        result, eps_value, iterations = _settled_pipeline(
            problem_for, keep, N, penalty, reweight, opts, progress, refit_on, report)
        if result.status not in SUCCESS:   # did not settle: the epsilon search instead
            report["note"] = (f"the Lagrangian ADMM stopped with {result.status} after "
                              f"{iterations} iterations; solved by the epsilon search instead")
            pipeline = False
        else:
            refit = False   # done inside the pipeline
            trimmed = report.get("trimmed", 0)
            if abs(_weight_sparsity(result.W, bias, N) - target) > SPARSITY_TOL:
                result, more = _trim_to(result, keep, N)
                trimmed += more
                refitted, usable = refit_on(problem_for(eps_value), result)
                iterations += refitted.iterations
                if usable:
                    result = _with_objective(refitted, penalty)
                result, eps_value = _at_reached_epsilon(problem_for, result, refitted.status)
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
                result, trimmed = _trim_to(result, keep, N)
            report.update(target_sparsity=target, solves=solves, trimmed=trimmed)
        iterations += spent
    if refit and result.status in SUCCESS:
        refitted, usable = refit_on(problem_for(eps_value), result)
        iterations += refitted.iterations
        report["refit_status"] = refitted.status
        if usable:  # the status stays the l1 program's: the refit W is feasible for it
            result = _with_objective(replace(refitted, status=result.status), penalty)
    if l1_notes:
        report["note"] = "; ".join([n for n in [report.get("note")] if n]
                                   + sorted(set(l1_notes)))
    W = torch.as_tensor(result.W, device=X.device, dtype=X.dtype)
    weight, b = (W[:, :N].contiguous(), W[:, N].contiguous()) if bias else (W, None)
    nonzeros = int((weight != 0).sum())
    report.update(
        nonzeros=nonzeros, total=M * N, sparsity=1.0 - nonzeros / (M * N),
        epsilon=eps_value / y_norm if y_norm > 0 else float("nan"), epsilon_abs=eps_value,
        relative_error=_output_error(X, weight, b, offset, relu, Y),
        status=result.status, iterations=iterations, seconds=time.perf_counter() - t0,
        solver=result.solver, objective=result.objective, residual=result.residual,
        violation=result.violation)
    return LayerPruneResult(weight=weight, bias=b, report=report)


def _output_error(X, weight, b, offset, relu, Y) -> float:
    """``||act(X W^T + b + offset) - Y||_F / ||Y||_F`` (act: ReLU or identity; 0 if Y = 0)."""
    y_norm = float(safe_norm(Y))
    if y_norm == 0:
        return 0.0
    out = X @ weight.T.to(X) + (0 if b is None else b.to(X))
    if offset is not None:
        out = out + as_tensor(offset, name="offset").to(out)
    if relu:
        out = torch.relu(out)
    return float(safe_norm(out - Y)) / y_norm


def _choose_program(X, Y, *, sparsity, bias, V, offset, penalize_bias, solver, W0, b0, refit,
                    reweight, solver_options, progress, always, pre) -> LayerPruneResult:
    """``program="auto" | "best"`` of :func:`prune_layer` for a ReLU layer at ``sparsity``:
    the ReLU program, the linear program refit on its support, and (when that refit wins, or
    ``always``) the linear program at the same sparsity; the lowest post-ReLU error wins."""
    common = dict(sparsity=sparsity, bias=bias, penalize_bias=penalize_bias, solver=solver,
                  W0=W0, b0=b0, refit=refit, reweight=reweight, solver_options=solver_options,
                  progress=progress)
    t0 = time.perf_counter()
    chosen = prune_layer(X, Y, relu=True, V=V, offset=offset, program="relu", **common)
    if chosen.report["status"] not in SUCCESS:   # reported as it is (status and note)
        return chosen
    X = as_tensor(X, name="X")
    Y = as_tensor(Y, name="Y").to(X)
    if pre is None:
        Wb = _warm_start(W0, b0, bias, Y.shape[1], X.shape[1], X)
        pre = X @ Wb[:, :X.shape[1]].T + (Wb[:, -1] if bias else 0)
    else:
        pre = as_tensor(pre, name="pre").to(X)
        if tuple(pre.shape) != tuple(Y.shape):
            msg = f"pre must have the shape of Y {tuple(Y.shape)}, got {tuple(pre.shape)}"
            raise ValueError(msg)
    err = lambda r: _output_error(X, r.weight, r.bias, offset, True, Y)  # noqa: E731
    errors = {"relu": err(chosen)}
    chosen.report["program"] = "relu"
    iterations = chosen.report["iterations"]
    candidates = [chosen]
    # the linear program refit on the ReLU program's support: least squares on pre
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1) \
        if bias else X
    Wa = torch.cat([chosen.weight, chosen.bias[:, None]], 1) if bias else chosen.weight
    support = Wa != 0
    if bias:
        support[:, -1] = True
    linear = NetTrimProblem(Xa, pre, 0.0, relu=False)
    refitted = refit_support(linear, support, W0=Wa)
    iterations += refitted.iterations
    W = torch.as_tensor(refitted.W, device=X.device, dtype=X.dtype)
    if bool(torch.isfinite(W).all()):
        result, eps_abs = _at_reached_epsilon(lambda e: NetTrimProblem(Xa, pre, e, relu=False),
                                              replace(refitted, W=W), refitted.status)
        weight, b = (W[:, :-1].contiguous(), W[:, -1].contiguous()) if bias else (W, None)
        report = dict(chosen.report, program="linear-refit", status=result.status,
                      refit_status=refitted.status, epsilon_abs=eps_abs,
                      residual=result.residual, violation=0.0,
                      objective=float(weight.abs().sum()),
                      nonzeros=int((weight != 0).sum()))
        report["sparsity"] = 1.0 - report["nonzeros"] / report["total"]
        candidates.append(LayerPruneResult(weight=weight, bias=b, report=report))
        errors["linear-refit"] = err(candidates[-1])
    better = lambda e: e + PROGRAM_TOL < (1.0 - PROGRAM_MARGIN) * errors["relu"]  # noqa: E731
    # the full linear solve when its refit on the ReLU support is lower at all (the support
    # was chosen for the ReLU program: the linear program's own does better, e.g. 0.527 vs
    # a refit of 0.733 and 0.739 for the ReLU program on a 60-input layer at 90%)
    small = Y.shape[1] * X.shape[1] <= LINEAR_SOLVE_MAX_WEIGHTS
    if always or (small and errors.get("linear-refit", math.inf) + PROGRAM_TOL < errors["relu"]):
        solved = prune_layer(X, pre, relu=False, **common)
        iterations += solved.report["iterations"]
        solved.report["program"] = "linear"
        candidates.append(solved)
        errors["linear"] = err(solved)
    best = min(candidates, key=lambda r: errors[r.report["program"]])
    if not better(errors[best.report["program"]]):
        best = chosen
    name = best.report["program"]
    report = dict(best.report, program_errors=errors, relative_error=errors[name],
                  iterations=iterations, seconds=time.perf_counter() - t0)
    if name != "relu":
        # the linear residual ||X W^T + b - pre||_F bounds the post-ReLU error (the ReLU is
        # 1-Lipschitz): as the ReLU program's epsilon, it is relative to ||Y||_F
        y_norm = float(safe_norm(Y))
        report["epsilon"] = report["epsilon_abs"] / y_norm if y_norm > 0 else float("nan")
    if name != "relu":
        what = "linear program" if name == "linear" else \
            "linear program refit on the ReLU program's support"
        note = (f"{what} kept: post-ReLU calibration error {errors[name]:.4g} vs "
                f"{errors['relu']:.4g} with the ReLU program")
        report["note"] = "; ".join(n for n in (report.get("note"), note) if n)
        report["program_note"] = note
    return LayerPruneResult(weight=best.weight, bias=best.bias, report=report)


def _warm_start(W0: Any, b0: Any, bias: bool, M: int, N: int, X: torch.Tensor) -> torch.Tensor:
    """W0 (with b0 as a last column when ``bias``) checked for shape and finiteness."""
    W = as_tensor(W0, name="W0").to(device=X.device, dtype=X.dtype)
    if tuple(W.shape) != (M, N):
        msg = f"W0 must have shape (M, N) = ({M}, {N}), got {tuple(W.shape)}"
        raise ValueError(msg)
    check_finite(W, "W0", what="weights")
    if not bias:
        return W
    b = torch.zeros(M, dtype=X.dtype, device=X.device)
    if b0 is not None:
        b = torch.as_tensor(b0).detach().to(device=X.device, dtype=X.dtype)
        if tuple(b.shape) != (M,):
            msg = f"b0 must have shape (M,) = ({M},), got {tuple(b.shape)}"
            raise ValueError(msg)
        check_finite(b, "b0", what="weights")
    return torch.cat([W, b[:, None]], 1)


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
    return _with_objective(result, penalty), residual


def _settled_pipeline(problem_for, keep, N, penalty, reweight, opts, progress, refit_on,
                      report):
    """The default pipeline at a target sparsity (ADMM with refit): l1 solves steered to a
    number of weights by :func:`solvers.solve_lagrangian`, each stopped once its support
    settles, reweighting, then the refit. Returns ``(result, epsilon, iterations)``.

    Round ``i`` of ``reweight`` keeps ``keep * r ** ((reweight - i) / reweight)`` weights,
    ``r = PILOT_RATIO[0] + PILOT_RATIO[1] * s`` at sparsity s (at least 1): the first, plain l1
    solve keeps r times the target and the last the target. A settled solve lands within
    ``NNZ_SETTLE`` (half a point) of its count, so the last one aims that much above the
    target, and its support is then brought to exactly ``keep`` weights in columns ``:N``
    (:func:`_trim_to`, else :func:`_fill_to`) before the final refit. Measured on
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
    (not a success): the caller falls back to the epsilon search.
    """
    kwargs = dict(opts)
    kwargs.setdefault("settle_tol", SETTLE_TOL)
    kwargs.setdefault("max_iter", SETTLE_MAX_ITER)
    bar = None
    if progress:
        bar = tqdm(desc="ADMM", unit="it", leave=False, disable=None)  # off in a log
        kwargs["callback"] = lambda it, r, s, rho_: bar.update(1)
    problem = problem_for(0.0)   # epsilon is what the solve reaches
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
            result = solve_lagrangian(problem, W0=W_init, penalty=pen, nonzeros=count,
                                      **kwargs)
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
    result, trimmed = _trim_to(result, keep, N)
    report["trimmed"] = trimmed
    support = _fill_to(problem, result.W, keep, N, penalty)
    report["filled"] = int(support[:, :N].sum()) - int((torch.as_tensor(result.W)[:, :N] != 0).sum())
    final, _ = refit_on(problem, result, support=support)
    iterations += final.iterations
    report["refit_status"] = final.status
    result, eps_abs = _at_reached_epsilon(problem_for, _with_objective(final, penalty),
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


def _at_reached_epsilon(problem_for, result, refit_status):
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


def _solve_l1(problem, solver, W_init, penalty, opts, reweight, rho, progress, refit_on,
              notes):
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
        run = lambda pen, W: solve_admm(problem, W0=W, penalty=pen, **kwargs)  # noqa: E731
    else:
        run = lambda pen, W: solve_cvxpy(problem, penalty=pen, **opts)  # noqa: E731
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


def _trim_to(result, keep, N):
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


def _with_objective(result, penalty):
    """Recompute a refit result's objective as (weighted) sum|W| of its W."""
    W = torch.as_tensor(result.W)
    pen = 1.0 if penalty is None else torch.as_tensor(penalty, device=W.device, dtype=W.dtype)
    return replace(result, objective=float((W.abs() * pen).sum()))


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


# ---- a whole model ----------------------------------------------------------------------------
@dataclass
class LayerReport:
    """One row of :attr:`PruneResult.report`."""

    name: str
    kind: str
    shape: tuple
    nonzeros_before: int
    nonzeros_after: int
    total: int
    sparsity: float
    epsilon: float
    epsilon_abs: float
    relative_error: float
    status: str
    iterations: int
    seconds: float
    solver: str
    note: str = ""
    #: The program solved: "relu" or "linear(<activation>)", with "+bn" (BatchNorm folded),
    #: "+offset" (residual add before the ReLU), "+groups=G"; "skipped".
    program: str = ""
    #: Calibration rows the program used (after ``max_samples``), of ``rows_seen``.
    rows: int = 0
    rows_seen: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class PruneResult:
    """Result of :func:`prune`: the pruned model and a per-layer report."""

    model: nn.Module
    report: list
    options: dict = field(default_factory=dict)
    output_error: float = float("nan")
    #: ``{name: reason}`` of the layers left as they are.
    skipped: dict = field(default_factory=dict)

    def table(self) -> str:
        """The per-layer report as an aligned text table (see :mod:`nettrim.report`)."""
        return format_prune_table(self.report, self.output_error)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"layers": [...], "options": {...}, "output_error": float}``."""
        return {"layers": [r.as_dict() for r in self.report], "options": dict(self.options),
                "output_error": self.output_error, "skipped": dict(self.skipped)}


def _per_layer(value, names, what):
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            msg = f"{what} names unknown layers {unknown}; prunable layers are {list(names)}"
            raise ValueError(msg)
        return dict(value)
    return {name: value for name in names}


def _reiterable(inputs):
    if isinstance(inputs, torch.Tensor):
        return True
    try:
        return iter(inputs) is not inputs
    except TypeError:
        return False


def prune(model: nn.Module, inputs: Union[torch.Tensor, Iterable], epsilon: Any = None, *,
          sparsity: Any = None, mode: str = "parallel", solver: str = "admm",
          layers: Any = None, ignore: Iterable[str] = (), activations: Optional[dict] = None,
          gamma: float = 1.1, kappa: float = 1.0, max_samples: Optional[int] = None,
          seed: int = 0, device: Any = None, inplace: bool = False, masks: bool = False,
          strict: bool = False, progress: bool = False, refit: bool = True, reweight: int = 1,
          solver_options: Optional[dict] = None, scope: str = "layer",
          structured: bool = False, min_per_unit: Optional[int] = None,
          allocation: str = "epsilon", fold_bn: bool = False,
          program: str = "auto") -> PruneResult:
    """Prune a model's Linear, Conv1d and Conv2d layers with Net-Trim.

    What follows each layer is read from the traced graph (:mod:`nettrim.graph`): a ReLU
    (directly, after an eval-mode BatchNorm, or after a residual add ``relu(bn(conv(x)) +
    skip)``) gives the ReLU-aware program, with the BatchNorm ``a * z + c`` folded into the
    weights and the skip term as a known per-sample offset (in cascade mode taken from the
    pruned network). Other activations (GELU, SiLU, LeakyReLU, Tanh, ReLU6) get the linear
    program on their pre-activations. Grouped and depthwise convolutions are solved one group
    at a time. Layers that cannot be pruned (``nn.MultiheadAttention``'s projections, layers
    the forward pass never calls) are left as they are, with status ``SKIPPED`` and the reason
    in the report (and in ``result.skipped``).

    Parameters
    ----------
    model : nn.Module
        A trained network; never modified unless ``inplace=True``.
    inputs : Tensor or iterable of batches
        Calibration data (a DataLoader works; ``(x, y)`` items use ``x``). Cascade mode passes
        over it once per layer, so it must be re-iterable (a tensor, list or DataLoader).
    epsilon : float or dict
        Relative tolerance (fraction of each layer's ``||Y||_F``), or ``{layer: epsilon}``.
        In cascade mode it sets the first layer; later layers get
        ``epsilon_l^2 = gamma ||(X-hat W_l^T - Y) on Omega||_F^2`` unless named in a dict.
    sparsity : float or dict
        Target sparsity per layer instead of ``epsilon`` (the epsilon is searched).
    mode : {"parallel", "cascade"}
        Parallel: every layer from the original network's activations (V = 0). Cascade: each
        layer from the already-pruned network's inputs X-hat and the original outputs Y, with
        ``V = X-hat W_l^T + b_l``, carrying the error forward (DESIGN.md section 2).
    solver : {"admm", "cvxpy"}
    layers, ignore : optional
        Which layers (names or module types) and which names to skip.
    activations : dict, optional
        ``{layer: "relu" | None | ...}`` (:data:`nettrim.graph.ACTIVATION_NAMES`) where the
        graph reading cannot see it (untraceable models, functional ReLUs).
    gamma : float >= 1
        Cascade slack: the original weights stay feasible.
    kappa : float in (0, 1]
        Cascade: the last linear layer's tolerance is ``kappa * gamma * ||X-hat W^T - Y||^2``
        (smaller: closer outputs, may be infeasible).
    max_samples : int, optional
        Rows kept per layer (seeded uniform subsample; for conv, patches; for a Linear on
        ``(batch, tokens, features)``, tokens). A layer with fewer rows than inputs raises a
        :class:`nettrim.capture.CalibrationWarning`.
    device : optional
        Where activations are captured and solved (default: the model's device).
    inplace : bool
        Write into ``model`` itself instead of a copy.
    masks : bool
        Hold the zeros with ``torch.nn.utils.prune`` masks (for masked fine-tuning); the default
        writes plain weights that load into a fresh model with ``strict=True``.
    strict : bool
        Raise :class:`PruningError` instead of warning on a non-optimal solver status.
    progress : bool
        tqdm bars per layer (and per ADMM solve).
    refit, reweight, solver_options
        Passed to :func:`prune_layer`.
    scope : {"layer", "global"}
        ``"layer"``: ``sparsity`` is each layer's target. ``"global"``: ``sparsity`` (one float)
        is the fraction of all the selected weights together; Net-Trim picks the split (one
        relative epsilon for all layers, searched to the global count in parallel mode; see
        :mod:`nettrim.budget`). The allocation is in ``result.options["allocation"]``.
    structured : bool
        Group-l1 Net-Trim: remove whole input units of each layer (the output units of the
        layer before) and return a physically smaller model (see :mod:`nettrim.structured`).
    min_per_unit : int, optional
        Layer-collapse guard of ``scope="global"``: every layer keeps at least this many
        weights per output unit on average (default
        :data:`nettrim.budget.DEFAULT_MIN_PER_UNIT`).
    allocation : {"epsilon", "marginal", "magnitude"}
        How ``scope="global"`` splits the budget (see :mod:`nettrim.budget`).
    fold_bn : bool, default False
        False: the architecture is unchanged (the layer's weights pruned, its BatchNorm kept
        with a shift that absorbs the refit bias), so the state dict loads into a fresh model
        with ``strict=True``. True: the folded form, the layer holding ``diag(a) W`` and the
        bias ``a b + c`` and its BatchNorm replaced by ``nn.Identity``.
    program : {"auto", "best", "relu"}, default "auto"
        ReLU layers at a target ``sparsity``: keep the ReLU program's weights or the linear
        program's (on the layer's pre-activations, BatchNorm folded, from the original
        network), whichever gives the lower post-activation error on the calibration rows
        (see :func:`prune_layer`). A layer that kept the linear program is reported with the
        program ``linear(relu)`` and a note with both errors. Per-layer programs only
        (``structured=False``, ``scope="layer"``).

    Returns
    -------
    PruneResult
        ``.model``, ``.report`` (one :class:`LayerReport` per layer), ``.table()``,
        ``.to_dict()``, ``.output_error`` (relative output discrepancy on ``inputs``).
    """
    if not isinstance(model, nn.Module):
        msg = f"model must be a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    _check_solver_and_target(solver, epsilon, sparsity)
    if not (isinstance(gamma, (int, float)) and gamma >= 1):
        msg = f"gamma must be a number >= 1 (cascade slack), got {gamma!r}"
        raise ValueError(msg)
    if not (isinstance(kappa, (int, float)) and 0 < kappa <= 1):
        msg = f"kappa must be in (0, 1], got {kappa!r}"
        raise ValueError(msg)
    scope = check_scope(scope)
    if not isinstance(structured, bool):
        msg = f"structured must be True or False, got {structured!r}"
        raise TypeError(msg)
    if min_per_unit is not None and scope != "global":
        msg = "min_per_unit is the guard of a global budget: it needs scope='global'"
        raise ValueError(msg)
    hooked = dict(mode=mode, solver=solver, layers=layers, ignore=ignore,
                  activations=activations, max_samples=max_samples, seed=seed, device=device,
                  inplace=inplace, strict=strict, progress=progress, refit=refit,
                  reweight=reweight, solver_options=solver_options)
    if not isinstance(fold_bn, bool):
        msg = f"fold_bn must be True or False, got {fold_bn!r}"
        raise TypeError(msg)
    if program not in PROGRAMS:
        msg = f"program must be one of {PROGRAMS}, got {program!r}"
        raise ValueError(msg)
    if program != "auto" and (structured or scope == "global"):
        msg = "program= is an option of the per-layer program (structured=False, scope='layer')"
        raise ValueError(msg)
    if fold_bn and (structured or scope == "global"):
        msg = "fold_bn=True is an option of the per-layer program (structured=False, scope='layer')"
        raise ValueError(msg)
    if structured:
        from .structured import prune_units
        return prune_units(model, inputs, epsilon, sparsity=sparsity, scope=scope, masks=masks,
                           **hooked)
    if scope == "global":
        from .budget import DEFAULT_MIN_PER_UNIT, prune_global
        if epsilon is not None:
            msg = "scope='global' takes a model-wide sparsity, not an epsilon"
            raise ValueError(msg)
        return prune_global(model, inputs, sparsity, allocation=allocation, masks=masks,
                            min_per_unit=DEFAULT_MIN_PER_UNIT if min_per_unit is None
                            else min_per_unit, **hooked)
    if mode == "cascade" and not _reiterable(inputs):
        msg = ("inputs must be re-iterable for cascade mode (a tensor, a list of batches or a "
               "DataLoader), got a one-shot iterator")
        raise TypeError(msg)
    selected = list(prunable_layers(model, layers, ignore))
    eps_of = None if epsilon is None else _per_layer(epsilon, selected, "epsilon")
    spars_of = None if sparsity is None else _per_layer(sparsity, selected, "sparsity")
    options = dict(epsilon=epsilon, sparsity=sparsity, mode=mode, solver=solver, gamma=gamma,
                   kappa=kappa, max_samples=max_samples, seed=seed, refit=refit,
                   reweight=reweight, solver_options=solver_options, layers=selected,
                   fold_bn=fold_bn, program=program)
    target = model if inplace else copy.deepcopy(model)
    plan = analyze(model)   # one reading of the graph (and one warning when it fails)
    cap = dict(activations=activations, max_samples=max_samples, seed=seed, device=device,
               plan=plan, fold=True)
    original = capture(model, inputs, layers=selected, **cap) if mode == "parallel" else None
    skipped = dict(plan.skipped) if original is None else dict(original.skipped)
    modules = dict(target.named_modules())

    rows = []
    folded: dict = {}
    names = selected
    log_lines = progress and not _is_terminal(sys.stderr)
    if progress:   # a layer bar with an ETA on a terminal; one line per layer in a log file
        names = tqdm(selected, desc=f"Net-Trim ({mode})", unit="layer", disable=None)
    first = True
    for index, name in enumerate(names):
        if mode == "parallel":
            data = original.pop(name, None)  # free each layer's records once used
        else:  # inputs from the pruned copy, outputs from the original, in one pass
            data = capture_cascade(model, target, inputs, name, **cap)
            if data is None:
                skipped[name] = "not called by the model's forward pass (used functionally?)"
        if data is None:
            continue
        module = modules[name]
        bn = modules[data.norm] if data.norm else None
        block = _LayerProgram(data, module, bn)
        eps_layer = None if eps_of is None else eps_of[name]
        explicit = spars_of is not None or isinstance(epsilon, Mapping) and name in epsilon
        cascade = mode == "cascade" and not first
        is_last = index == len(selected) - 1
        slack = gamma * (kappa if (is_last and block.relu is False) else 1.0)
        result = block.solve(
            sparsity=None if spars_of is None else spars_of[name], epsilon=eps_layer,
            cascade=cascade, cascade_slack=None if (not cascade or explicit) else slack,
            solver=solver, refit=refit, reweight=reweight, solver_options=solver_options,
            progress=progress, program=program)
        first = False
        rep = result.report
        if rep["status"] not in SUCCESS:
            msg = (f"layer {name!r}: solver status {rep['status']} after {rep['iterations']} "
                   f"iterations (residual {rep['residual']:.4g} vs epsilon {rep['epsilon_abs']:.4g}, "
                   f"violation {rep['violation']:.3g}); {MAX_ITER_HINT} or loosen epsilon (larger epsilon, "
                   "gamma or kappa)")
            if strict:
                raise PruningError(msg)
            warnings.warn(msg, PruningWarning, stacklevel=2)
        note = block.write_back(result)
        if fold_bn and bn is not None:
            folded[name] = (data.norm, result.weight, result.bias)
        notes = [n for n in (rep.get("note", ""), note, _rows_note(data)) if n]
        rows.append(LayerReport(
            name=name, kind=data.kind, shape=tuple(module.weight.shape),
            nonzeros_before=block.nonzeros_before, nonzeros_after=rep["nonzeros"],
            total=rep["total"], sparsity=rep["sparsity"], epsilon=rep["epsilon"],
            epsilon_abs=rep["epsilon_abs"], relative_error=rep["relative_error"],
            status=rep["status"], iterations=rep["iterations"], seconds=rep["seconds"],
            solver=rep["solver"], note="; ".join(notes), program=block.program,
            rows=data.X.shape[0], rows_seen=data.rows_seen))
        if log_lines:
            print(f"Net-Trim ({mode}) layer {index + 1}/{len(selected)} {name}: "
                  f"{100 * rep['sparsity']:.1f}% sparse, {rep['status']}, "
                  f"{rep['iterations']} iterations, {rep['seconds']:.1f} s", file=sys.stderr,
                  flush=True)
    for name, reason in skipped.items():
        params = list(modules[name].parameters(recurse=False)) if name in modules else []
        if not params:
            continue
        n, total = sum(int((p != 0).sum()) for p in params), sum(p.numel() for p in params)
        rows.append(LayerReport(
            name=name, kind=type(modules[name]).__name__.lower(), shape=tuple(params[0].shape),
            nonzeros_before=n, nonzeros_after=n, total=total, sparsity=1.0 - n / total,
            epsilon=float("nan"), epsilon_abs=float("nan"), relative_error=float("nan"),
            status=SKIPPED, iterations=0, seconds=0.0, solver="none",
            note=f"skipped: {reason}", program="skipped"))
    for name, (norm, weight, bias) in folded.items():
        _fold_into(target, name, norm, weight, bias)
    if masks:
        apply_masks(target, [r.name for r in rows if r.status != SKIPPED])
    out = PruneResult(model=target, report=rows, options=options, skipped=skipped)
    if _reiterable(inputs):  # a one-shot iterator was used up by the capture
        out.output_error = output_discrepancy(model, target, inputs, device=device)
    return out


def _rows_note(data: LayerData) -> str:
    N = data.X.shape[1] // data.groups
    if data.X.shape[0] >= N:
        return ""
    return f"{data.X.shape[0]} rows for {N} inputs (underdetermined, see CalibrationWarning)"


class _LayerProgram:
    """One layer's program in its solved form: the BatchNorm ``a * z + c`` folded into the
    weights (``diag(a) W``, bias ``a b + c``), the residual offset S, and one block per group of
    a grouped convolution. ``write_back`` maps the solution to the unchanged architecture."""

    def __init__(self, data: LayerData, module: nn.Module, bn: Optional[nn.Module]):
        self.data, self.module, self.bn = data, module, bn
        self.relu = data.activation in RELU_PROGRAM
        # half-precision records are solved in float32 (written back in the layer's dtype)
        conv = (lambda t: t) if data.X.dtype in _SOLVE_DTYPES else (lambda t: t.float())
        self.X, self.Y, self.pre = conv(data.X), conv(data.post), conv(data.pre)
        self.S = None if data.offset is None else conv(data.offset).to(self.X)
        # clones: the write-back overwrites the module's tensors
        W = module.weight.detach().flatten(1).to(self.X, copy=True)
        b = None if module.bias is None else module.bias.detach().to(self.X, copy=True)
        self.nonzeros_before = int((W != 0).sum())
        self.a = None
        if bn is not None:
            a, c = batchnorm_affine(bn)
            self.a, self.c = a.to(self.X), c.to(self.X)
            W = self.a[:, None] * W
            b = self.c + (0 if b is None else self.a * b)
        self.W0, self.b0 = W, b
        self.program = "+".join(p for p in (
            data.activation if self.relu else f"linear({data.activation})" if data.activation
            else "linear",
            "bn" if bn is not None else "", "offset" if self.S is not None else "",
            f"groups={data.groups}" if data.groups > 1 else "") if p)

    def solve(self, *, sparsity, epsilon, cascade, cascade_slack, **kwargs) -> LayerPruneResult:
        M, N = self.W0.shape
        parts = []
        for cols, out in group_blocks(self.data.groups, self.X.shape[1], M):
            X, Y = self.X[:, cols], self.Y[:, out]
            S = None if self.S is None else self.S[:, out]
            W0 = self.W0[out]
            b0 = None if self.b0 is None else self.b0[out]
            V = None
            pre_hat = X @ W0.T + (0 if b0 is None else b0) + (0 if S is None else S)
            if cascade and self.relu:
                V = pre_hat
            common = dict(relu=self.relu, bias=b0 is not None, W0=W0, b0=b0, V=V, offset=S,
                          pre=self.pre[:, out] if self.relu else None, **kwargs)
            if sparsity is not None:
                parts.append(prune_layer(X, Y, sparsity=sparsity, **common))
            elif cascade_slack is not None:
                D = pre_hat - Y
                if self.relu:
                    D = D.masked_fill(Y <= 0, 0.0)
                eps_abs = math.sqrt(cascade_slack) * float(torch.linalg.vector_norm(D))
                parts.append(prune_layer(X, Y, epsilon=eps_abs, absolute=True, **common))
            else:
                parts.append(prune_layer(X, Y, epsilon=epsilon, **common))
        linear = sum(p.report.get("program", "relu") != "relu" for p in parts)
        if linear:   # the linear program kept (every group, or some: said in the name)
            self.program = self.program.replace(
                self.data.activation, f"linear({self.data.activation})", 1) + (
                f"(linear in {linear})" if linear < len(parts) else "")
        if len(parts) == 1:
            return parts[0]
        for p in parts:   # one line for the groups instead of one per group
            own = p.report.pop("program_note", None)
            if own:
                p.report["note"] = "; ".join(n for n in p.report["note"].split("; ") if n != own)
        merged = _merge(parts, self.Y)
        if linear:
            note = (f"linear program kept in {linear} of {len(parts)} groups (lower post-ReLU "
                    "calibration error)")
            merged.report["note"] = "; ".join(n for n in (merged.report.get("note"), note) if n)
        return merged

    @torch.no_grad()
    def write_back(self, result: LayerPruneResult) -> str:
        """Write the solution into the module (and its BatchNorm); a note or ''."""
        if self.bn is None:
            set_layer_weight(self.module, result.weight, result.bias)
            return ""
        a = self.a
        dead = a == 0
        W = torch.where(dead[:, None], torch.zeros_like(result.weight),
                        result.weight / torch.where(dead, torch.ones_like(a), a)[:, None])
        set_layer_weight(self.module, W, None)
        # the folded bias b' = a b + c' gives the BatchNorm's new shift c' = b' - a b
        shift = result.bias - (0 if self.module.bias is None else
                               a * self.module.bias.detach().to(a))
        bn = self.bn
        mean = bn.running_mean.detach().to(a)
        if bn.bias is not None:      # c' = beta' - a mean
            bn.bias.copy_((shift + a * mean).to(bn.bias))
        else:                        # c' = -a mean'
            keep = torch.where(dead, mean, -shift / torch.where(dead, torch.ones_like(a), a))
            bn.running_mean.copy_(keep.to(bn.running_mean))
        return f"{int(dead.sum())} channel(s) with BatchNorm scale 0 are dead" if bool(dead.any()) \
            else ""


def _merge(parts: list, Y: torch.Tensor) -> LayerPruneResult:
    """One result from a grouped layer's blocks (weights stacked by output channel)."""
    reps = [p.report for p in parts]
    weight = torch.cat([p.weight for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    y_norm = float(safe_norm(Y))
    sq = lambda key: math.sqrt(sum(r[key] ** 2 for r in reps))  # noqa: E731
    errors, start = 0.0, 0   # each block's absolute error, from its relative one
    for r, p in zip(reps, parts):
        m = p.weight.shape[0]
        errors += (r["relative_error"] * float(safe_norm(Y[:, start:start + m]))) ** 2
        start += m
    errors = math.sqrt(errors)
    statuses = [r["status"] for r in reps]
    status = next((s for s in statuses if s not in SUCCESS), None) or \
        (OPTIMAL_INACCURATE if OPTIMAL_INACCURATE in statuses else OPTIMAL)
    nonzeros, total = sum(r["nonzeros"] for r in reps), sum(r["total"] for r in reps)
    notes = sorted({r["note"] for r in reps if r.get("note")})
    report = dict(
        nonzeros=nonzeros, total=total, sparsity=1.0 - nonzeros / total,
        epsilon_abs=sq("epsilon_abs"), relative_error=errors / y_norm if y_norm > 0 else 0.0,
        status=status, iterations=sum(r["iterations"] for r in reps),
        seconds=sum(r["seconds"] for r in reps), solver=reps[0]["solver"],
        objective=sum(r["objective"] for r in reps), residual=sq("residual"),
        violation=max(r["violation"] for r in reps), groups=len(parts))
    report["epsilon"] = report["epsilon_abs"] / y_norm if y_norm > 0 else float("nan")
    if notes:
        report["note"] = f"{len(parts)} groups: " + "; ".join(notes)
    return LayerPruneResult(weight=weight, bias=bias, report=report)


@torch.no_grad()
def _fold_into(model: nn.Module, name: str, norm: str, weight: torch.Tensor,
               bias: torch.Tensor) -> None:
    """The folded form: the layer holds ``diag(a) W`` and bias ``a b + c``; its BatchNorm
    becomes ``nn.Identity``."""
    layer = model.get_submodule(name)
    if layer.bias is None:   # a layer with a bias: rebuilt, the weight tensor kept
        new = copy.deepcopy(layer)
        new.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                            device=layer.weight.device))
        model.set_submodule(name, new)
        layer = new
    layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
    layer.bias.copy_(bias.to(layer.bias))
    model.set_submodule(norm, nn.Identity())


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every floating tensor of a model's output (a tensor, or tuples, lists, dicts and
    dataclass-like objects of them), in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() or out.is_complex() else []
    if isinstance(out, Mapping):
        return [t for k in out for t in output_tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    return []


@torch.no_grad()
def output_discrepancy(reference: nn.Module, other: nn.Module, inputs: Any, *,
                       device: Any = None) -> float:
    """``||f_other(x) - f_ref(x)||_F / ||f_ref(x)||_F`` over all batches of ``inputs`` and every
    tensor the models return (tuples and dicts of outputs are compared entry by entry).
    Batches are fed as :func:`nettrim.capture.model_inputs` says."""
    num = den = 0.0
    modes = (reference.training, other.training)
    reference.eval()
    other.eval()
    try:
        for args, kwargs in _batches(inputs):
            if device is not None:
                args, kwargs = _to(args, device), _to(kwargs, device)
            ref = output_tensors(reference(*args, **kwargs))
            got = output_tensors(other(*args, **kwargs))
            if len(ref) != len(got):
                msg = (f"the pruned model returns {len(got)} tensors where the original returns "
                       f"{len(ref)}")
                raise ValueError(msg)
            for r, g in zip(ref, got):
                num += float(torch.linalg.vector_norm(g - r)) ** 2
                den += float(torch.linalg.vector_norm(r)) ** 2
    finally:
        reference.train(modes[0])
        other.train(modes[1])
    return math.sqrt(num / den) if den > 0 else 0.0
