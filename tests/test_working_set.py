"""solvers.working_set: the ReLU program's Lagrangian on per-neuron Gram matrices and a working
set of rows grown by constraint generation, checked against cvxpy and against the row ADMM,
with every answer certified on all rows."""

import math

import numpy as np
import pytest
import torch

from solvers import SETTLED, SUCCESS, NetTrimProblem, solve_cvxpy, solve_lagrangian
from solvers.working_set import (MIN_ROW_WORK, MIN_ROWS_PER_INPUT, iterates_on_working_set,
                                 use_working_set)
from test_solvers import assert_feasible


def activation_layer(P, N, M, *, seed, with_V=False, dtype=np.float64):
    """A ReLU layer on correlated nonnegative inputs (low rank plus noise through a ReLU, as
    real activations are) with a bias column, its program and an unpenalized-bias penalty;
    ``with_V``: a cascade layer (perturbed inputs, the original pre-activations as V)."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.standard_normal((P, 3)) @ rng.standard_normal((3, N))
                   + 0.5 * rng.standard_normal((P, N)), 0.0)
    X = np.concatenate([X, np.ones((P, 1))], 1)
    W0 = rng.standard_normal((M, N + 1)) / np.sqrt(N)
    Y = np.maximum(X @ W0.T, 0.0)
    V = None
    if with_V:
        X[:, :-1] += 0.1 * np.abs(rng.standard_normal((P, N)))
        V = (X @ W0.T).astype(dtype)
    penalty = np.ones((M, N + 1))
    penalty[:, -1] = 0.0
    return NetTrimProblem(X.astype(dtype), Y.astype(dtype), 1.0, V=V), penalty


@pytest.mark.parametrize("with_V", [False, True])
def test_working_set_solves_the_program_at_the_epsilon_it_reaches(with_V):
    """The Lagrangian on a working set solves the full program (every row's inequality) at
    the epsilon it reaches: feasible on all rows and cvxpy's objective there, although its
    iterations ran on part of the rows."""
    P, N, M = 1500, 8, 5
    problem, penalty = activation_layer(P, N, M, seed=3, with_V=with_V)
    k = 16
    res = solve_lagrangian(problem, nonzeros=k, penalty=penalty, rows="working-set")
    assert res.status in SUCCESS
    assert abs(int((res.W[:, :-1] != 0).sum()) - k) <= 2
    assert res.working_rows is not None and 0 < res.working_rows < P
    at_eps = NetTrimProblem(problem.X, problem.Y, res.epsilon, V=problem.V)
    assert_feasible(at_eps, res.W)
    ref = solve_cvxpy(at_eps, penalty=penalty)
    assert res.objective == pytest.approx(ref.objective, rel=1e-2)


def test_working_set_matches_the_row_admm():
    """Same program, same count: the working set and the row ADMM reach the same objective and
    residual within the solvers' tolerance."""
    problem, penalty = activation_layer(2000, 10, 6, seed=8)
    ws = solve_lagrangian(problem, nonzeros=24, penalty=penalty, rows="working-set")
    rows = solve_lagrangian(problem, nonzeros=24, penalty=penalty, rows="all")
    assert ws.status in SUCCESS and rows.status in SUCCESS
    assert rows.working_rows is None
    for res in (ws, rows):   # each is optimal for its own epsilon: compare through cvxpy
        at_eps = NetTrimProblem(problem.X, problem.Y, res.epsilon)
        assert res.objective == pytest.approx(solve_cvxpy(at_eps, penalty=penalty).objective,
                                              rel=1e-2)
    assert ws.epsilon == pytest.approx(rows.epsilon, rel=0.05)


def test_soft_loss_on_the_working_set():
    """loss="soft" on a working set minimizes the penalized Lagrangian over all rows: the
    rows outside the set have no excess, checked against cvxpy at the lam reached."""
    import cvxpy as cp

    from solvers.admm import data_scale

    problem, penalty = activation_layer(1500, 8, 5, seed=5, with_V=True)
    res = solve_lagrangian(problem, nonzeros=16, penalty=penalty, loss="soft",
                           rows="working-set")
    assert res.status in SUCCESS and res.working_rows < 1500
    X, Y, V = problem.X, problem.Y, problem.V
    lam = res.lam * data_scale(torch.as_tensor(X)) ** 2
    om = Y > 0

    def objective(W):
        Z = X @ W.T
        return lam * np.abs(W * penalty).sum() + 0.5 * np.sum((Z - Y)[om] ** 2) + 0.5 * np.sum(
            np.maximum(Z - V, 0)[~om] ** 2)

    W = cp.Variable(res.W.shape)
    Z = X @ W.T
    fit = cp.sum_squares(cp.multiply(om, Z - Y)) + cp.sum_squares(cp.multiply(~om, cp.pos(Z - V)))
    cp.Problem(cp.Minimize(lam * cp.sum(cp.abs(cp.multiply(penalty, W))) + 0.5 * fit)).solve(
        solver="CLARABEL")
    assert objective(res.W) <= objective(W.value) * (1 + 2e-3)


def test_float32_torch_and_settled_stop_are_certified_on_every_row():
    """float32 torch data on a working set with the settled stop: a success status means the
    weights meet every row's inequality; SETTLED is not a success."""
    problem, penalty = activation_layer(3000, 12, 8, seed=13, dtype=np.float32)
    t = NetTrimProblem(torch.from_numpy(problem.X), torch.from_numpy(problem.Y), 1.0)
    for k in (20, 45):
        res = solve_lagrangian(t, nonzeros=k, penalty=torch.from_numpy(penalty).float(),
                               settle_tol=2e-3, rows="working-set")
        assert isinstance(res.W, torch.Tensor) and res.W.dtype == torch.float32
        assert res.status in SUCCESS + (SETTLED,)
        if res.status in SUCCESS:
            at_eps = NetTrimProblem(t.X.double(), t.Y.double(), res.epsilon)
            assert_feasible(at_eps, res.W.double())


def test_auto_chooses_by_shape_and_bad_rows():
    """rows="auto" takes the working set where the rows are many next to the inputs, and only
    for a ReLU program."""
    assert use_working_set(MIN_ROWS_PER_INPUT * 10, 10, 100)
    assert not use_working_set(MIN_ROWS_PER_INPUT * 10 - 1, 10, 100)
    assert not use_working_set(10 ** 7, 4000, 4000)   # the per-neuron matrices are too big
    # many rows per input, but so little work per iteration (a depthwise convolution's
    # one-channel program) that the row ADMM is cheaper
    assert not use_working_set(MIN_ROWS_PER_INPUT * 10, 10, 1)
    assert use_working_set(MIN_ROWS_PER_INPUT * 10, 10, math.ceil(MIN_ROW_WORK / 10 ** 4))
    rows = math.ceil(MIN_ROW_WORK / (9 * 40))
    problem, penalty = activation_layer(rows, 8, 40, seed=1)
    assert use_working_set(rows, 9, 40)
    assert iterates_on_working_set(problem) and not iterates_on_working_set(problem, "all")
    assert not iterates_on_working_set(NetTrimProblem(problem.X, problem.Y, 1.0, relu=False))
    assert solve_lagrangian(problem, nonzeros=120, penalty=penalty).working_rows is not None
    small, penalty = activation_layer(100, 8, 3, seed=1)
    assert solve_lagrangian(small, nonzeros=9, penalty=penalty).working_rows is None
    with pytest.raises(ValueError, match="rows"):
        solve_lagrangian(small, nonzeros=9, rows="some")
    linear = NetTrimProblem(small.X, small.Y, 1.0, relu=False)
    with pytest.raises(ValueError, match="rows='working-set'"):
        solve_lagrangian(linear, nonzeros=9, rows="working-set")


def test_repeated_rows_enter_once_and_weigh_as_copies():
    """Rows that repeat (a convolution's blank patches) are one row of the working set with
    their count: distinct_rows finds them, and the program with repeats is still solved as
    cvxpy solves it with every copy (the residual counts each copy)."""
    from solvers.working_set import distinct_rows

    base, penalty = activation_layer(400, 8, 4, seed=21)
    copies = np.repeat(np.arange(400), np.arange(400) % 5 + 1)   # 1 to 5 copies of each row
    X, Y = base.X[copies], base.Y[copies]
    rows, counts = distinct_rows(torch.from_numpy(X), torch.from_numpy(Y),
                                 torch.zeros(len(X), 4, dtype=torch.float64))
    assert len(rows) == 400 and sorted(counts.tolist()) == sorted((np.arange(400) % 5 + 1).tolist())
    problem = NetTrimProblem(X, Y, 1.0)
    res = solve_lagrangian(problem, nonzeros=12, penalty=penalty, rows="working-set")
    assert res.status in SUCCESS and res.working_rows < 400
    at_eps = NetTrimProblem(X, Y, res.epsilon)
    assert_feasible(at_eps, res.W)
    assert res.objective == pytest.approx(solve_cvxpy(at_eps, penalty=penalty).objective,
                                          rel=1e-2)


def test_gram_pass_from_either_side_with_copies():
    """Each neuron's compressed rows reproduce the Gram matrix of its active rows (copies
    included), whether it is active on fewer or on more than half the distinct rows (the
    latter from the full Gram matrix less the inactive rows') and in float32."""
    from solvers.working_set import WorkingSetRows

    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 6))
    X = np.concatenate([X, X[:120], np.zeros((50, 6))])      # copies and a blank block
    Y = np.maximum(X @ rng.standard_normal((6, 4)) + np.array([-1.5, -0.2, 0.4, 2.0]), 0.0)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        Xt, Yt = torch.from_numpy(X).to(dtype), torch.from_numpy(Y).to(dtype)
        active = Yt > 0
        bound = torch.where(active, torch.tensor(math.inf, dtype=dtype), torch.zeros_like(Yt))
        rows = WorkingSetRows(Xt, Yt, active, bound)
        shares = active.double().mean(0)
        assert bool((shares < 0.5).any()) and bool((shares > 0.5).any())
        for m in range(Y.shape[1]):
            Xm = Xt[active[:, m]].double()
            G = Xm.T @ Xm
            RtR = rows.R[m].double().T @ rows.R[m].double()
            assert float((RtR - G).abs().max()) <= tol * float(G.abs().max())


def test_a_second_solve_of_the_program_reuses_its_rows():
    """The pipeline's reweighted rounds solve one program several times: the second solve
    reuses the first one's rows (no second Gram pass) with an empty working set, and gives
    what a fresh solve gives; a program whose data changed in place gets new rows."""
    import solvers.working_set as working_set
    from solvers.admm import _Ball

    problem, penalty = activation_layer(1500, 8, 5, seed=3)
    first = solve_lagrangian(problem, nonzeros=20, penalty=penalty, rows="working-set")
    ball = _Ball(problem, 1e-4)
    kept = working_set._LAST[problem][1]
    assert kept.working_rows == first.working_rows > 0
    second = solve_lagrangian(problem, nonzeros=16, penalty=penalty, W0=first.W,
                              rows="working-set")
    assert working_set._LAST[problem][1] is kept              # the same rows, reused
    copy = NetTrimProblem(problem.X, problem.Y, 0.0)          # another program: fresh rows
    fresh = solve_lagrangian(copy, nonzeros=16, penalty=penalty, W0=first.W,
                             rows="working-set")
    assert working_set._LAST[copy][1] is not kept
    assert second.status in SUCCESS and second.status == fresh.status
    np.testing.assert_array_equal(second.W, fresh.W)
    assert second.working_rows == fresh.working_rows
    at_eps = NetTrimProblem(problem.X, problem.Y, second.epsilon)
    assert_feasible(at_eps, second.W)
    again = working_set.working_rows_for(problem, ball.X, ball.Y, ball.active, ball.bound)
    assert again is kept and again.working_rows == 0
    problem.X[:10] *= 2.0                                      # the data changed in place
    ball = _Ball(problem, 1e-4)
    fresh = working_set.working_rows_for(problem, ball.X, ball.Y, ball.active, ball.bound)
    assert fresh is not kept and fresh.working_rows == 0
