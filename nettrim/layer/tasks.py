"""One layer's solves as tasks of an executor (:mod:`nettrim.executors`).

The pipeline of :func:`nettrim.layer.prune_layer` calls :func:`solve` for its l1 programs and
:func:`refit` for its refits; with no executor both call :mod:`solvers` here, as before. With
one (a :class:`nettrim.executors.TaskRunner`):

* **the refit splits into blocks of neurons** (:data:`NEURONS_PER_BLOCK`), one task each. It is
  M independent QPs, one per neuron (each sees only its column of Y, V, S and its own support),
  so a block is the layer's problem restricted to its columns and the blocks' weights, stacked,
  are the layer's refit. Exact up to the solver's tolerance: a block's feasibility tolerance is
  ``feas_tol`` times *its* ``max|Y|`` (tighter than the layer's), and its neurons are batched
  with fewer others (rounding). The blocks do not depend on the number of workers, so every
  executor (in process, Ray with 1 or 64 workers) returns the same weights.
* **each l1 solve is one task**, not split: the ball ADMM (epsilon mode) has one Frobenius ball
  over all the layer's neurons, and the Lagrangian of the default pipeline steers one ``lam``
  for the layer to the layer's count of weights; both couple the neurons. At a *fixed* ``lam``
  the Lagrangian is separable by neurons, but the pipeline steers it. An executor with
  ``lagrangian_blocks=True`` splits the count-steered solves too (:func:`lagrangian`): each
  block of neurons steers its own ``lam`` to its share of the layer's count (in proportion to
  its penalized weights). Not exact: a count per block instead of per layer (the layer still
  lands on its count exactly, after the trim or fill that follows); the price is measured in
  ``benchmarks/bench_cluster.py``. It is what lets a layer's l1 work spread over more workers
  than one.

The layer's arrays (X, Y, V, S) go to the executor once per problem (``ray.put``: read
zero-copy by every task on a node); each task gets its slice of columns, its support and warm
start, and sends back its weights.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from solvers import (INFEASIBLE, MAX_ITER, OPTIMAL, OPTIMAL_INACCURATE, SETTLED, SOLVER_ERROR,
                     NetTrimProblem, NetTrimResult, solve_admm, solve_cvxpy, solve_lagrangian)
from solvers import refit as refit_problem
from solvers import refit_soft

__all__ = ["NEURONS_PER_BLOCK", "SOLVES", "lagrangian", "neuron_blocks", "refit", "solve"]

#: Neurons per refit task. Fixed (not derived from the number of workers) so that the results
#: do not depend on the cluster. 32: LeNet-300-100's 784 -> 300 layer gives 10 tasks per refit
#: (the largest about 1 s at 5,000 rows), so two workers share them evenly.
NEURONS_PER_BLOCK = 32
#: The l1 solvers a task can run, by name.
SOLVES = {"admm": solve_admm, "cvxpy": solve_cvxpy, "lagrangian": solve_lagrangian,
          "refit_soft": refit_soft}
#: Status of merged blocks, most severe first (a block's status stands for the layer's).
_SEVERITY = (MAX_ITER, SOLVER_ERROR, INFEASIBLE, SETTLED, OPTIMAL_INACCURATE)


def neuron_blocks(M: int, size: int = NEURONS_PER_BLOCK) -> list[tuple[int, int]]:
    """``[(start, stop)]``: M neurons in ``ceil(M / size)`` contiguous blocks of near-equal
    size (at most ``size`` each)."""
    count = max(1, math.ceil(M / size))
    edges = [round(i * M / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def solve(runner: Any, name: str, problem: NetTrimProblem, **kwargs) -> NetTrimResult:
    """``SOLVES[name](problem, **kwargs)``, in process (``runner`` None) or as one task
    (``callback``, a progress hook, stays behind: the task board counts the task)."""
    if runner is None:
        return SOLVES[name](problem, **kwargs)
    kwargs.pop("callback", None)
    item = (name, None, problem.epsilon, problem.relu, problem.floor_sq, kwargs)
    return runner.run(_solve_task, [item], kind=name, **_shared(problem))[0]


def refit(runner: Any, problem: NetTrimProblem, support: Any, *, W0: Any = None,
          **kwargs) -> NetTrimResult:
    """:func:`solvers.refit`, in process (``runner`` None) or in neuron blocks, one task each
    (see the module docstring); the blocks' results merged into the layer's."""
    if runner is None:
        return refit_problem(problem, support, W0=W0, **kwargs)
    if problem.floor_sq:   # compressed rows: the floor is the layer's, not a block's
        item = ("refit", None, problem.epsilon, problem.relu, problem.floor_sq,
                dict(kwargs, support=support, W0=W0))
        return runner.run(_solve_task, [item], kind="refit", **_shared(problem))[0]
    M = problem.shape[2]
    blocks = neuron_blocks(M)
    items = [("refit", (a, b), problem.epsilon, problem.relu, 0.0,
              dict(kwargs, support=_rows(support, a, b), W0=_rows(W0, a, b)))
             for a, b in blocks]
    parts = runner.run(_solve_task, items, kind="refit", **_shared(problem))
    return _merge(problem, parts)


def lagrangian(runner: Any, problem: NetTrimProblem, *, nonzeros: int, penalty: Any = None,
               W0: Any = None, **kwargs) -> NetTrimResult:
    """:func:`solvers.solve_lagrangian` steered to ``nonzeros``: in process, as one task, or
    (the runner's executor has ``lagrangian_blocks=True``) in blocks of neurons, each steered
    to its share of the count (see the module docstring)."""
    split = runner is not None and getattr(runner.executor, "lagrangian_blocks", False)
    M, N = problem.shape[2], problem.shape[1]
    if not split or M <= NEURONS_PER_BLOCK or problem.floor_sq:   # (a floor is the layer's)
        return solve(runner, "lagrangian", problem, nonzeros=nonzeros, penalty=penalty, W0=W0,
                     **kwargs)
    kwargs.pop("callback", None)
    blocks = neuron_blocks(M)
    weights = [(b - a) * N if penalty is None else int((torch.as_tensor(penalty)[a:b] > 0).sum())
               for a, b in blocks]
    shares = _shares(nonzeros, weights)

    items = [("lagrangian", (a, b), problem.epsilon, problem.relu, problem.floor_sq,
              dict(kwargs, nonzeros=share, penalty=_rows(penalty, a, b), W0=_rows(W0, a, b)))
             for (a, b), share in zip(blocks, shares)]
    parts = runner.run(_solve_task, items, kind="lagrangian", **_shared(problem))
    return _merge(problem, parts, epsilon=math.sqrt(sum(p.epsilon ** 2 for p in parts)))


def _shares(total: int, weights: list) -> list:
    """``total`` split in proportion to ``weights`` (largest remainders round up), each at most
    its weight."""
    whole = sum(weights)
    raw = [total * w / whole if whole else 0.0 for w in weights]
    shares = [min(w, math.floor(r)) for w, r in zip(weights, raw)]
    order = sorted(range(len(raw)), key=lambda i: shares[i] - raw[i])
    for i in order[:max(0, total - sum(shares))]:
        shares[i] = min(weights[i], shares[i] + 1)
    return shares


def _rows(A: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of an (M, N) array, copied: a tensor view pickles its whole storage."""
    return None if A is None else (A[a:b].clone() if isinstance(A, torch.Tensor)
                                   else np.array(A[a:b]))


# ---- what runs in a task --------------------------------------------------------------------
def _shared(problem: NetTrimProblem) -> dict:
    """The problem's arrays as one payload (numpy, zero-copy from CPU tensors), keyed by the
    arrays' identity so that the same layer's data is sent once."""
    arrays = (problem.X, problem.Y, problem.V, problem.S)
    if any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in arrays):
        msg = ("executor= runs the solves on the workers' CPUs: capture and solve on the CPU "
               "(device='cpu'), or leave executor=None to solve on the GPU in process")
        raise ValueError(msg)
    payload = dict(torch=not problem.is_numpy, **{
        k: None if a is None else (a.detach().numpy() if isinstance(a, torch.Tensor) else a)
        for k, a in zip("XYVS", arrays)})
    return dict(shared=payload, key=tuple(id(a) for a in arrays), keep=arrays)


def _solve_task(payload: dict, item: tuple) -> NetTrimResult:
    """One task: ``(solver name, (start, stop) columns or None, epsilon, relu, floor_sq,
    keyword arguments)`` on the shared arrays."""
    name, cols, epsilon, relu, floor_sq, kwargs = item
    arrays = {}
    with warnings.catch_warnings():   # the object store's arrays are read-only; never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for k in "XYVS":
            a = payload[k]
            if a is not None and k != "X" and cols is not None:
                a = a[:, cols[0]:cols[1]]
            if a is not None and payload["torch"]:
                a = torch.from_numpy(a if isinstance(a, np.ndarray) else np.asarray(a))
            arrays[k] = a
    problem = NetTrimProblem(arrays["X"], arrays["Y"], epsilon, V=arrays["V"], relu=relu,
                             S=arrays["S"], floor_sq=floor_sq)
    if name == "refit":
        kwargs = dict(kwargs)
        return refit_problem(problem, kwargs.pop("support"), **kwargs)
    return SOLVES[name](problem, **kwargs)


def _merge(problem: NetTrimProblem, parts: list, epsilon: Any = None) -> NetTrimResult:
    """The layer's result from its blocks' (stacked by neuron, in order); residuals add in
    squares, the most severe status stands (``_SEVERITY``)."""
    W = np.concatenate([p.W for p in parts]) if problem.is_numpy else \
        torch.cat([torch.as_tensor(p.W) for p in parts])
    statuses = [p.status for p in parts]
    status = next((s for s in _SEVERITY if s in statuses), OPTIMAL)
    root_sq = lambda key: math.sqrt(sum(getattr(p, key) ** 2 for p in parts))  # noqa: E731
    rhos = [p.rho for p in parts if not math.isnan(p.rho)]
    return NetTrimResult(
        W=W, status=status, iterations=max(p.iterations for p in parts),
        objective=sum(p.objective for p in parts), residual=root_sq("residual"),
        violation=max(p.violation for p in parts),
        epsilon=problem.epsilon if epsilon is None else epsilon,
        primal_residual=root_sq("primal_residual"), dual_residual=root_sq("dual_residual"),
        solve_time=sum(p.solve_time for p in parts), solver=parts[0].solver,
        rho=float(np.median(rhos)) if rhos else math.nan,
        lam=float(np.median([p.lam for p in parts])))
