"""solvers.lagrangian: the program at a target count through its Lagrangian, checked against
cvxpy by objective at the epsilon it reaches."""

import numpy as np
import pytest
import torch

from solvers import (OPTIMAL, SETTLED, SUCCESS, NetTrimProblem, solve_cvxpy, solve_lagrangian)
from test_solvers import assert_feasible, random_layer

CASES = [  # P, N, M, relu, with_V
    (300, 25, 6, True, False),
    (300, 25, 6, False, False),
    (300, 25, 6, True, True),
]


@pytest.mark.parametrize("P,N,M,relu,with_V", CASES)
def test_count_mode_solves_the_program_at_the_epsilon_it_reaches(P, N, M, relu, with_V):
    """A solution of the Lagrangian solves the program whose epsilon is its residual: checked
    against cvxpy at that epsilon by objective (ReLU, linear, cascade bound V)."""
    problem, _ = random_layer(P, N, M, seed=N + M, relu=relu, with_V=with_V)
    penalty = None
    if with_V:   # a cascade layer has a bias (unpenalized), which absorbs a bound V below 0
        X = np.concatenate([problem.X, np.ones((P, 1))], 1)
        problem = NetTrimProblem(X, problem.Y, problem.epsilon, V=problem.V)
        penalty = np.ones((M, N + 1))
        penalty[:, -1] = 0.0
    k = 60   # of 150 weights
    res = solve_lagrangian(problem, nonzeros=k, penalty=penalty)
    assert res.status == OPTIMAL and res.solver == "admm-lagrangian"
    weights = res.W if penalty is None else res.W[:, :-1]
    assert abs(int((weights != 0).sum()) - k) <= 2
    assert res.epsilon == pytest.approx(res.residual)
    at_eps = NetTrimProblem(problem.X, problem.Y, res.epsilon, V=problem.V, relu=relu)
    assert_feasible(at_eps, res.W)
    ref = solve_cvxpy(at_eps, penalty=penalty)
    assert res.objective == pytest.approx(ref.objective, rel=1e-2)
    assert np.isfinite(res.lam) and res.lam > 0


def test_settled_stop_is_honest():
    """With settle_tol a success status still means feasible weights; SETTLED (a support for a
    refit) is not a success."""
    assert SETTLED not in SUCCESS
    problem, _ = random_layer(400, 30, 8, seed=5, sparse_x=True)
    for k in (60, 120):
        res = solve_lagrangian(problem, nonzeros=k, settle_tol=2e-3)
        assert res.status in SUCCESS + (SETTLED,)
        if res.status in SUCCESS:
            assert_feasible(NetTrimProblem(problem.X, problem.Y, res.epsilon), res.W)
        full = solve_lagrangian(problem, nonzeros=k)
        assert res.iterations <= full.iterations


def test_unreachable_count_settles_on_the_densest():
    """Inputs that are always zero keep their weights at zero for every lam: a count above the
    reachable weights ends settled instead of running to the cap."""
    problem, _ = random_layer(300, 20, 5, seed=7)
    X = problem.X.copy()
    X[:, :8] = 0.0
    problem = NetTrimProblem(X, problem.Y, 1.0, relu=True)
    res = solve_lagrangian(problem, nonzeros=100, settle_tol=2e-3, max_iter=2000)
    assert res.status != "MAX_ITER"
    assert res.nonzeros <= 12 * 5


def test_unreachable_count_under_the_inequalities_stops():
    """A cascade bound below 0 with no bias: the inequalities alone need more weights than
    asked, and the solve says so (MAX_ITER) instead of running on."""
    problem, _ = random_layer(300, 25, 6, seed=31, with_V=True)
    res = solve_lagrangian(problem, nonzeros=10, max_iter=3000)
    assert res.status == "MAX_ITER" and res.iterations < 3000


def test_torch_in_torch_out_and_penalty():
    problem, _ = random_layer(200, 15, 4, seed=2)
    t = NetTrimProblem(torch.from_numpy(problem.X), torch.from_numpy(problem.Y),
                       problem.epsilon)
    penalty = torch.ones(4, 15, dtype=torch.float64)
    penalty[:, 0] = 0.0   # an unpenalized column
    res = solve_lagrangian(t, penalty=penalty, nonzeros=30)
    assert isinstance(res.W, torch.Tensor) and res.W.dtype == torch.float64
    assert res.status == OPTIMAL
    ref = solve_cvxpy(NetTrimProblem(t.X, t.Y, res.epsilon), penalty=penalty)
    assert res.objective == pytest.approx(ref.objective, rel=1e-2)


def test_bad_arguments():
    problem, _ = random_layer(50, 6, 2, seed=1)
    with pytest.raises(ValueError, match="nonzeros"):
        solve_lagrangian(problem, nonzeros=13)
    with pytest.raises(ValueError, match="nonzeros"):
        solve_lagrangian(problem, nonzeros=True)
    with pytest.raises(ValueError, match="settle_tol"):
        solve_lagrangian(problem, nonzeros=4, settle_tol=-1)
    with pytest.raises(ValueError, match="lam"):
        solve_lagrangian(problem, nonzeros=4, lam=0.0)
    with pytest.raises(ValueError, match="penalty"):
        solve_lagrangian(problem, nonzeros=4, penalty=np.ones((3, 6)))
    with pytest.raises(TypeError, match="NetTrimProblem"):
        solve_lagrangian("not a problem", nonzeros=4)


@pytest.mark.parametrize("with_V", [False, True])
def test_soft_loss_solves_the_penalized_lagrangian(with_V):
    """loss="soft": the solution minimizes lam sum|W| + 1/2 ||(XW^T - Y) on Omega||^2 +
    1/2 ||max(0, XW^T - V) off Omega||^2 at the lam it ends with (checked against cvxpy by
    objective; lam is on the data scaled by solvers.admm.data_scale)."""
    import cvxpy as cp

    from solvers.admm import data_scale

    problem, _ = random_layer(200, 15, 4, seed=11, with_V=with_V)
    res = solve_lagrangian(problem, nonzeros=25, loss="soft")
    assert res.status in SUCCESS
    X, Y = problem.X, problem.Y
    V = np.zeros_like(Y) if problem.V is None else problem.V
    lam = res.lam * data_scale(torch.as_tensor(X)) ** 2   # the unscaled weight
    om = Y > 0

    def objective(W):
        Z = X @ W.T
        return lam * np.abs(W).sum() + 0.5 * np.sum((Z - Y)[om] ** 2) + 0.5 * np.sum(
            np.maximum(Z - V, 0)[~om] ** 2)

    W = cp.Variable(res.W.shape)
    Z = X @ W.T
    fit = cp.sum_squares(cp.multiply(om, Z - Y)) + cp.sum_squares(cp.multiply(~om, cp.pos(Z - V)))
    cp.Problem(cp.Minimize(lam * cp.sum(cp.abs(W)) + 0.5 * fit)).solve(solver="CLARABEL")
    assert objective(res.W) <= objective(W.value) * (1 + 2e-3)
    with pytest.raises(ValueError, match="loss"):
        solve_lagrangian(problem, nonzeros=25, loss="tight")
