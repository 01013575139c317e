"""Issue 12: the networks people have (BatchNorm, residual blocks, grouped and depthwise convs,
attention, sequences, other activations, tuple/dict inputs and outputs)."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solvers import OPTIMAL, NetTrimProblem, solve_admm, solve_cvxpy


# ---- the program with a known offset S ---------------------------------------------------------
def offset_problem(P=60, N=12, M=5, seed=0, rel_eps=0.1, cascade=False):
    """relu(X W0^T + S) with a per-sample offset S, as a residual block's output."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    W0 = rng.standard_normal((M, N)) / np.sqrt(N)
    S = 0.8 * rng.standard_normal((P, M))
    Y = np.maximum(X @ W0.T + S, 0)
    if cascade:
        X = X + 0.1 * rng.standard_normal((P, N))
        V = X @ W0.T + S
        eps = math.sqrt(1.1) * np.linalg.norm((V - Y)[Y > 0])
        return NetTrimProblem(X, Y, eps, V=V, S=S), W0
    return NetTrimProblem(X, Y, rel_eps * np.linalg.norm(Y), S=S), W0


def test_offset_program_matches_a_cvxpy_program_written_out():
    cp = pytest.importorskip("cvxpy")
    problem, _ = offset_problem()
    X, Y, S = problem.X, problem.Y, problem.S
    on = Y > 0
    W = cp.Variable((Y.shape[1], X.shape[1]))
    Z = X @ W.T + S
    prog = cp.Problem(cp.Minimize(cp.sum(cp.abs(W))),
                      [cp.norm(cp.multiply(on, Z - Y), "fro") <= problem.epsilon,
                       cp.multiply(~on, Z) <= 0])
    prog.solve(solver="CLARABEL")
    ref = solve_cvxpy(problem)
    assert ref.status == OPTIMAL
    assert ref.objective == pytest.approx(prog.value, rel=1e-4)
    assert problem.is_feasible(ref.W)
    # without the offset the same data is another program, here an infeasible one
    plain = solve_cvxpy(NetTrimProblem(X, Y, problem.epsilon))
    assert plain.status != OPTIMAL


@pytest.mark.parametrize("cascade", [False, True])
def test_admm_with_offset_matches_cvxpy(cascade):
    pytest.importorskip("cvxpy")
    problem, W0 = offset_problem(seed=3, cascade=cascade)
    if cascade:   # the original weights are feasible for the cascade program
        assert problem.is_feasible(W0)
    ref = solve_cvxpy(problem)
    res = solve_admm(problem)
    assert res.status == OPTIMAL
    assert problem.is_feasible(res.W)
    assert res.objective <= ref.objective * 1.02
    # the guarantee on the block's output: ||relu(X W^T + S) - Y|| <= epsilon (parallel)
    if not cascade:
        out = np.maximum(problem.X @ np.asarray(res.W).T + problem.S, 0)
        assert np.linalg.norm(out - problem.Y) <= problem.epsilon * (1 + 1e-3)


def test_offset_shape_is_checked():
    problem, _ = offset_problem()
    with pytest.raises(ValueError, match="S has shape"):
        NetTrimProblem(problem.X, problem.Y, 1.0, S=problem.S[:, :2])
