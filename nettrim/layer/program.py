"""Which program's weights a ReLU layer keeps: ``program="auto" | "best"`` of prune_layer.

A ReLU layer at a target sparsity has several candidate weights, each judged by the error that
matters, the post-ReLU calibration error ``||relu(X W^T + b + S) - Y||_F / ||Y||_F``:

* ``"relu"``: the ReLU program (Net-Trim's own: hard inequalities off the active set), with
  its refit;
* ``"relu+soft"``: the ReLU program's support refit on the ReLU-aware least squares
  (:func:`solvers.refit_soft`: the active-set fit plus the squared excess of the inactive
  pre-activations over 0, an upper bound on the post-ReLU error);
* ``"linear-refit"``: the ReLU program's support refit by least squares on the
  pre-activations ``pre`` (the linear program's refit);
* ``"linear"``: the linear program on ``pre`` at the same sparsity (its own support);
* ``"linear+soft"``: the linear program's support refit on the ReLU-aware least squares.

The linear programs run on compressed rows where P is large (:mod:`solvers.gram`: their cost
per iteration does not grow with P); the ReLU program's inequalities are per row, so its
iterations cost ``P N M``. ``"auto"`` solves the ReLU program when its work ``P N M`` is at
most :data:`RELU_PROGRAM_MAX_WORK` and otherwise starts from the linear program (a note says
so); the ReLU-aware refit runs where its Hessians' work (``sum_m |Omega_m| k_m^2``) is at most
:data:`SOFT_REFIT_MAX_WORK`. ``"best"`` computes every candidate.

A linear candidate replaces the ReLU-aware ones (``relu``, ``relu+soft``, ``linear+soft``)
only when its error is lower by :data:`PROGRAM_MARGIN` (1%) and :data:`PROGRAM_TOL`.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable

import torch

from solvers import MAX_ITER, SUCCESS, NetTrimProblem, compress_problem
from solvers.problem import as_tensor, check_finite, safe_norm
from ..results import LayerPruneResult
from . import tasks
from .target_count import at_reached_epsilon

__all__ = ["LINEAR_SOLVE_MAX_WEIGHTS", "PROGRAMS", "PROGRAM_MARGIN", "PROGRAM_TOL",
           "RELU_PROGRAM_MAX_WORK", "SOFT_REFIT_MAX_WORK", "choose_program", "output_error",
           "warm_start"]

#: ``program=`` of :func:`prune_layer` / :func:`prune` (a ReLU layer at a target sparsity).
PROGRAMS = ("auto", "best", "relu")
#: A linear candidate replaces the ReLU-aware ones only with a post-activation error at least
#: this fraction lower (differences at rounding level, e.g. two exact fits, keep the ReLU one).
PROGRAM_MARGIN = 0.01
#: ... and (in relative-error units) this much lower: two exact fits are a tie.
PROGRAM_TOL = 1e-6
#: ``program="auto"``, ReLU program solved: the linear program is solved in full (after its
#: refit on the ReLU program's support won) only on layers of at most this many weights,
#: where it costs little next to the ReLU program. On small layers it wins: the benchmark
#: ResNet's stem (144 weights) 0.138 against 0.169 for the refit at 50%; every layer of
#: bench_archs has at most 36,864 weights. On LeNet-300-100's 784 -> 300 layer (235,200) at
#: 90% it lost (0.146 against 0.138 for the refit) and took 12 s more than the 19.5 s of the
#: rest.
LINEAR_SOLVE_MAX_WEIGHTS = 40_000
#: ``program="auto"``: the ReLU program is solved where ``P * N * M`` (one ADMM GEMM) is at
#: most this; above it the linear program on compressed rows is the start. LeNet-300-100's
#: layers (5,000 rows: 784 -> 300 is 1.2e9) stay below; a 512 -> 512 layer at 16,384 rows
#: (4.3e9) took 706 s by the ReLU program (745x SparseGPT), 864 ADMM iterations of two P x N x
#: M GEMMs and as many passes over the P x M pre-activations.
RELU_PROGRAM_MAX_WORK = 2.0e9
#: ``program="auto"``: the ReLU-aware refit runs where its Hessians, ``sum_m |Omega_m| k_m^2``
#: multiply-adds, are at most this. LeNet's 784 -> 300 layer at 90% (4e9) took 4-8 s with
#: its Newton steps on one thread and gained 9% (0.131 vs 0.144); a 512 -> 512 layer at 8,192
#: rows and 70% (5e10) took 43 s on a loaded machine for 0.8% on the linear program's support.
SOFT_REFIT_MAX_WORK = 2.0e10


def output_error(X, weight, b, offset, relu, Y) -> float:
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


def warm_start(W0: Any, b0: Any, bias: bool, M: int, N: int, X: Any) -> torch.Tensor:
    """W0 (with b0 as a last column when ``bias``) checked for shape and finiteness, on the
    device and in the dtype of ``X`` (a tensor, or anything with ``device`` and ``dtype``)."""
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


def _augmented(X: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1) \
        if bias else X


def _split(W: torch.Tensor, bias: bool):
    return (W[:, :-1].contiguous(), W[:, -1].contiguous()) if bias else (W, None)


def _support(result: LayerPruneResult, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weights, support) of a candidate with its bias as the last column (always kept)."""
    Wa = torch.cat([result.weight, result.bias[:, None]], 1) if bias else result.weight
    support = Wa != 0
    if bias:
        support[:, -1] = True
    return Wa, support


def _linear_refit(base: LayerPruneResult, Xa, pre, bias, executor=None) -> LayerPruneResult | None:
    """Least squares on ``pre`` on the support of ``base`` (compressed rows where many); on
    ``executor`` (a :class:`nettrim.executors.TaskRunner`) as :func:`tasks.refit` splits it."""
    Wa, support = _support(base, bias)
    linear = compress_problem(NetTrimProblem(Xa, pre, 0.0, relu=False))
    refitted = tasks.refit(executor, linear, support, W0=Wa)
    W = torch.as_tensor(refitted.W, device=Xa.device, dtype=Xa.dtype)
    if not bool(torch.isfinite(W).all()):
        return None
    result, eps_abs = at_reached_epsilon(lambda e: replace(linear, epsilon=e),
                                         replace(refitted, W=W), refitted.status)
    weight, b = _split(W, bias)
    report = dict(base.report, status=result.status, refit_status=refitted.status,
                  epsilon_abs=eps_abs, residual=result.residual, violation=0.0,
                  objective=float(weight.abs().sum()), nonzeros=int((weight != 0).sum()),
                  iterations=refitted.iterations)
    report["sparsity"] = 1.0 - report["nonzeros"] / report["total"]
    return LayerPruneResult(weight=weight, bias=b, report=report)


def _soft_work(Y: torch.Tensor, support: torch.Tensor) -> float:
    """Multiply-adds of :func:`solvers.refit_soft`'s Hessians: ``sum_m |Omega_m| k_m^2``."""
    active = (Y > 0).sum(0).to(torch.float64)
    k = support.sum(1).to(torch.float64)
    return float((active * k * k).sum())


def _soft_refit(base: LayerPruneResult, Xa, Y, offset, bias,
                executor=None) -> LayerPruneResult | None:
    """The ReLU-aware least squares on the support of ``base`` (bound 0 off the active set:
    the post-ReLU error's own, in cascade mode too); on ``executor``, one task."""
    Wa, support = _support(base, bias)
    problem = NetTrimProblem(Xa, Y, 0.0, S=offset)
    refitted = tasks.solve(executor, "refit_soft", problem, support=support, W0=Wa)
    W = torch.as_tensor(refitted.W, device=Xa.device, dtype=Xa.dtype)
    # a refit stopped at its step cap (MAX_ITER, reported as refit_status) is kept as a
    # candidate too: its steps only lowered the objective, and the candidate is judged by its
    # measured error
    if refitted.status not in SUCCESS + (MAX_ITER,) or not bool(torch.isfinite(W).all()):
        return None
    weight, b = _split(W, bias)
    # the square root of twice the objective bounds the post-ReLU error (parallel and cascade:
    # the bound is 0 here), as epsilon bounds it for the ReLU program
    report = dict(base.report, status=base.report["status"], refit_status=refitted.status,
                  epsilon_abs=refitted.residual, residual=refitted.residual,
                  violation=refitted.violation, objective=float(weight.abs().sum()),
                  nonzeros=int((weight != 0).sum()), iterations=refitted.iterations)
    report["sparsity"] = 1.0 - report["nonzeros"] / report["total"]
    return LayerPruneResult(weight=weight, bias=b, report=report)


def choose_program(solve: Callable[..., LayerPruneResult], X, Y, *, sparsity, bias, V, offset,
                   penalize_bias, solver, W0, b0, refit, reweight, solver_options, progress,
                   always, pre, executor=None) -> LayerPruneResult:
    """``program="auto" | "best"`` of ``solve`` (:func:`nettrim.layer.prune_layer`) for a
    ReLU layer at ``sparsity`` (module docstring); the lowest post-ReLU error wins.
    ``executor`` (a :class:`nettrim.executors.TaskRunner` or None) runs the candidates' solves
    and refits as tasks (:mod:`nettrim.layer.tasks`)."""
    common = dict(sparsity=sparsity, bias=bias, penalize_bias=penalize_bias, solver=solver,
                  W0=W0, b0=b0, refit=refit, reweight=reweight, solver_options=solver_options,
                  progress=progress, executor=executor)
    t0 = time.perf_counter()
    X = as_tensor(X, name="X")
    Y = as_tensor(Y, name="Y").to(X)
    P, N = X.shape
    M = Y.shape[1]
    if pre is None:
        Wb = warm_start(W0, b0, bias, M, N, X)
        pre = X @ Wb[:, :N].T + (Wb[:, -1] if bias else 0)
    else:
        pre = as_tensor(pre, name="pre").to(X)
        if tuple(pre.shape) != tuple(Y.shape):
            msg = f"pre must have the shape of Y {tuple(Y.shape)}, got {tuple(pre.shape)}"
            raise ValueError(msg)
    Xa = _augmented(X, bias)
    err = lambda r: output_error(X, r.weight, r.bias, offset, True, Y)  # noqa: E731
    candidates: dict[str, LayerPruneResult] = {}
    notes = []
    iterations = 0

    def add(name: str, result: LayerPruneResult | None) -> None:
        nonlocal iterations
        if result is not None:
            result.report["program"] = name
            iterations += result.report.get("iterations", 0)
            candidates[name] = result

    relu_first = always or P * Xa.shape[1] * M <= RELU_PROGRAM_MAX_WORK
    if relu_first:
        chosen = solve(X, Y, relu=True, V=V, offset=offset, program="relu", **common)
        if chosen.report["status"] not in SUCCESS:   # reported as it is (status and note)
            return chosen
        add("relu", chosen)
        add("linear-refit", _linear_refit(chosen, Xa, pre, bias, executor))
        base = "relu"
    else:
        notes.append(f"ReLU program not solved: P N M = {P}*{Xa.shape[1]}*{M} = "
                     f"{P * Xa.shape[1] * M:.3g} is above {RELU_PROGRAM_MAX_WORK:.3g} (its "
                     "iterations touch every row); the linear program on compressed rows "
                     "chose the support (program='best' or 'relu' solves it)")
        add("linear", solve(X, pre, relu=False, **common))
        base = "linear"
    errors = {name: err(r) for name, r in candidates.items()}
    # the full linear solve when its refit on the ReLU support is lower at all (the support
    # was chosen for the ReLU program: the linear program's own does better, e.g. 0.527 vs
    # a refit of 0.733 and 0.739 for the ReLU program on a 60-input layer at 90%)
    small = M * N <= LINEAR_SOLVE_MAX_WEIGHTS
    if "linear" not in candidates and (always or (
            small and errors.get("linear-refit", math.inf) + PROGRAM_TOL < errors["relu"])):
        add("linear", solve(X, pre, relu=False, **common))
        errors["linear"] = err(candidates["linear"])
    # the ReLU-aware refit on the supports chosen so far, where affordable (a refit: not with
    # refit=False)
    for name in dict.fromkeys((base, "linear")) if refit else ():
        if name not in candidates:
            continue
        _, support = _support(candidates[name], bias)
        work = _soft_work(Y, support)
        if always or work <= SOFT_REFIT_MAX_WORK:
            add(f"{name}+soft", _soft_refit(candidates[name], Xa, Y, offset, bias, executor))
            if f"{name}+soft" in candidates:
                errors[f"{name}+soft"] = err(candidates[f"{name}+soft"])
        else:
            notes.append(f"ReLU-aware refit skipped: its Hessians' work {work:.3g} is above "
                         f"{SOFT_REFIT_MAX_WORK:.3g}")
    relu_aware = [n for n in errors if n == "relu" or n.endswith("+soft")]
    linear_kind = [n for n in errors if n not in relu_aware]
    best_aware = min(relu_aware, key=errors.get) if relu_aware else None
    best_linear = min(linear_kind, key=errors.get) if linear_kind else None
    name = best_aware
    if best_linear is not None and (best_aware is None or errors[best_linear] + PROGRAM_TOL
                                    < (1.0 - PROGRAM_MARGIN) * errors[best_aware]):
        name = best_linear
    best = candidates[name]
    report = dict(best.report, program_errors=errors, relative_error=errors[name],
                  iterations=iterations, seconds=time.perf_counter() - t0)
    if name != "relu":
        # every candidate's epsilon_abs bounds its post-ReLU error (a linear residual on pre,
        # the ReLU being 1-Lipschitz; the ReLU-aware objective's root): relative to ||Y||_F
        y_norm = float(safe_norm(Y))
        report["epsilon"] = report["epsilon_abs"] / y_norm if y_norm > 0 else float("nan")
        what = {"linear": "linear program",
                "linear-refit": "linear program refit on the ReLU program's support",
                "relu+soft": "ReLU-aware refit on the ReLU program's support",
                "linear+soft": "ReLU-aware refit on the linear program's support"}[name]
        other = "relu" if "relu" in errors else best_aware
        note = f"{what} kept: post-ReLU calibration error {errors[name]:.4g}"
        if other is not None and other != name:
            note += f" vs {errors[other]:.4g} with the {other} candidate"
        notes.append(note)
        report["program_note"] = note
    if notes:
        report["note"] = "; ".join(n for n in [report.get("note")] + notes if n)
    return LayerPruneResult(weight=best.weight, bias=best.bias, report=report)
