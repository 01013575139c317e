"""solvers/: the program, the closed forms, ADMM against the cvxpy reference, the guarantees."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import (MAX_ITER, OPTIMAL, SOLVER_ERROR, SUCCESS, NetTrimProblem, project_ball,
                     project_constraints, soft_threshold, solve_admm, solve_cvxpy)


def random_layer(P, N, M, *, seed=0, relu=True, rel_eps=0.1, with_V=False, sparse_x=False):
    """A random layer Y = act(X W0^T) and its program with epsilon = rel_eps ||Y||."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    if sparse_x:
        X = np.abs(X) * (rng.random((P, N)) < 0.3)
    W0 = rng.standard_normal((M, N)) / np.sqrt(N)
    Z = X @ W0.T
    Y = np.maximum(Z, 0) if relu else Z
    if with_V:  # cascade: perturbed input X-hat, original targets, V = X-hat W0^T, gamma = 1.1
        X = X + 0.1 * rng.standard_normal((P, N))
        V = X @ W0.T
        eps = np.sqrt(1.1) * np.linalg.norm((V - Y)[Y > 0])
        return NetTrimProblem(X, Y, eps, V=V, relu=relu), W0
    return NetTrimProblem(X, Y, rel_eps * np.linalg.norm(Y), relu=relu), W0


def convert(problem, *, dtype, kind):
    cast = {"numpy": lambda a: None if a is None else a.astype(dtype),
            "torch": lambda a: None if a is None else torch.from_numpy(a.astype(dtype))}[kind]
    return NetTrimProblem(cast(problem.X), cast(problem.Y), problem.epsilon, V=cast(problem.V),
                          relu=problem.relu)


def assert_feasible(problem, W, rtol=1e-3):
    res, viol = problem.residual(W), problem.violation(W)
    assert res <= problem.epsilon * (1 + rtol), (res, problem.epsilon)
    assert viol <= rtol * float(np.abs(np.asarray(problem.tensors()[1])).max()), viol


# ---- closed forms ----------------------------------------------------------------------------
def test_soft_threshold_matches_formula_and_gives_exact_zeros():
    v = torch.linspace(-3, 3, 61, dtype=torch.float64)
    out = soft_threshold(v, 1.0)
    expected = torch.sign(v) * torch.clamp(v.abs() - 1.0, min=0)
    assert torch.allclose(out, expected)
    assert bool((out[v.abs() <= 1.0] == 0).all())
    thr = torch.rand(61, dtype=torch.float64)
    assert torch.allclose(soft_threshold(v, thr), torch.sign(v) * torch.clamp(v.abs() - thr, min=0))


def test_soft_threshold_is_the_prox_of_l1():
    rng = np.random.default_rng(1)
    v = rng.standard_normal(200)
    t = 0.7
    x = soft_threshold(torch.from_numpy(v), t).numpy()
    # prox optimality: x minimizes t|x| + (x - v)^2 / 2 coordinatewise; compare with a grid
    grid = np.linspace(-4, 4, 80001)
    best = grid[np.argmin(t * np.abs(grid)[None, :] + 0.5 * (grid[None, :] - v[:, None]) ** 2, axis=1)]
    assert np.max(np.abs(best - x)) < 2e-4


def test_project_ball_inside_and_outside():
    c = torch.zeros(3, 4, dtype=torch.float64)
    z_in = torch.full((3, 4), 0.1, dtype=torch.float64)
    assert torch.equal(project_ball(z_in, c, 1.0), z_in)
    z_out = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    p = project_ball(z_out, c + 1.0, 2.0)
    assert abs(float(torch.linalg.vector_norm(p - 1.0)) - 2.0) < 1e-12
    # same direction from the center
    d1, d2 = (p - 1.0).flatten(), (z_out - 1.0).flatten()
    assert float(d1 @ d2) == pytest.approx(float(d1.norm() * d2.norm()))


def test_project_constraints_is_the_projection():
    """Compare with cvxpy's projection onto C (ball on Omega, halfspaces off it)."""
    import cvxpy as cp
    rng = np.random.default_rng(2)
    Y = np.maximum(rng.standard_normal((6, 5)), 0)
    V = rng.standard_normal((6, 5))
    active = Y > 0
    Z = rng.standard_normal((6, 5)) * 3
    radius = 0.5
    W = cp.Variable(Z.shape)
    cons = [cp.norm(cp.multiply(active, W - Y), "fro") <= radius,
            cp.multiply(~active, W) <= np.where(active, 0, V)]
    cp.Problem(cp.Minimize(cp.sum_squares(W - Z)), cons).solve(solver="CLARABEL")
    bound = torch.from_numpy(np.where(active, np.inf, V))
    got = project_constraints(torch.from_numpy(Z), torch.from_numpy(Y), torch.from_numpy(active),
                              bound, radius).numpy()
    assert np.allclose(got, W.value, atol=1e-6)


# ---- ADMM vs the cvxpy reference --------------------------------------------------------------
CASES = [
    # P, N, M, relu, with_V, rel_eps
    (200, 30, 6, True, False, 0.1),
    (120, 40, 5, True, True, 0.05),
    (60, 80, 4, True, False, 0.05),    # P < N: matrix-inversion-lemma path
    (150, 25, 5, False, False, 0.1),   # linear layer
    (50, 70, 3, False, False, 0.05),   # linear, P < N
]


@pytest.mark.parametrize("P,N,M,relu,with_V,rel_eps", CASES)
@pytest.mark.parametrize("dtype,kind", [("float64", "numpy"), ("float32", "numpy"),
                                        ("float64", "torch"), ("float32", "torch")])
def test_admm_matches_cvxpy(P, N, M, relu, with_V, rel_eps, dtype, kind):
    base, _ = random_layer(P, N, M, seed=P + N, relu=relu, rel_eps=rel_eps, with_V=with_V)
    ref = solve_cvxpy(base)
    assert ref.status == OPTIMAL
    problem = convert(base, dtype=dtype, kind=kind)
    res = solve_admm(problem)
    assert res.status == OPTIMAL
    if kind == "torch":
        assert isinstance(res.W, torch.Tensor) and res.W.dtype == getattr(torch, dtype)
    else:
        assert isinstance(res.W, np.ndarray) and res.W.dtype == np.dtype(dtype)
    assert res.W.shape == (M, N)
    assert res.objective <= ref.objective * 1.01, (res.objective, ref.objective)
    assert res.objective >= ref.objective * 0.99  # cannot beat the optimum by more than slack
    W64 = np.asarray(res.W, dtype=np.float64)
    assert_feasible(base, W64)
    assert res.residual == pytest.approx(base.residual(W64), rel=1e-3, abs=1e-6)


def test_guarantee_relu_output_within_epsilon():
    """If W is feasible with V = 0 then ||relu(X W^T) - Y||_F <= epsilon (DESIGN.md 2)."""
    for seed in range(3):
        problem, _ = random_layer(300, 40, 8, seed=seed, rel_eps=0.08, sparse_x=True)
        res = solve_admm(problem)
        assert res.status == OPTIMAL
        err = np.linalg.norm(np.maximum(problem.X @ res.W.T, 0) - problem.Y)
        assert err <= problem.epsilon * (1 + 1e-3)
        assert res.sparsity > 0.05  # it did prune something


def test_large_epsilon_gives_zero_weights():
    problem, _ = random_layer(100, 20, 4, rel_eps=1.0)
    for solve in (solve_admm, solve_cvxpy):
        res = solve(problem)
        assert res.status == OPTIMAL
        assert np.abs(res.W).max() < 1e-6
    assert solve_admm(problem).nonzeros == 0  # ADMM gives exact zeros


def test_epsilon_zero_recovers_planted_support():
    rng = np.random.default_rng(5)
    P, N, M, s = 200, 40, 3, 4
    W0 = np.zeros((M, N))
    for m in range(M):
        W0[m, rng.choice(N, s, replace=False)] = rng.choice([-1, 1], s) * (1 + rng.random(s))
    X = rng.standard_normal((P, N))
    Y = np.maximum(X @ W0.T, 0)
    problem = NetTrimProblem(X, Y, 0.0)
    ref = solve_cvxpy(problem)
    assert np.allclose(ref.W, W0, atol=1e-5)
    res = solve_admm(problem, eps_rel=1e-5)
    assert res.status == OPTIMAL
    support = np.abs(res.W) > 1e-3 * np.abs(res.W).max()
    assert np.array_equal(support, W0 != 0)
    assert np.allclose(res.W, W0, atol=1e-2)


def test_max_iter_status_is_reported():
    problem, _ = random_layer(100, 20, 4)
    res = solve_admm(problem, max_iter=2)
    assert res.status == MAX_ITER and res.iterations == 2


def test_warm_start_and_callback():
    problem, _ = random_layer(200, 30, 6, rel_eps=0.1)
    cold = solve_admm(problem)
    seen = []
    warm = solve_admm(problem, W0=cold.W, rho=cold.rho,
                      callback=lambda it, r, s, rho: seen.append((it, r, s, rho)))
    assert warm.status == OPTIMAL
    # the warm start is used: one iteration from the solution stays near it, from zero it does not
    near = solve_admm(problem, W0=cold.W, rho=cold.rho, max_iter=1)
    far = solve_admm(problem, max_iter=1)
    gap = lambda r: np.linalg.norm(r.W - cold.W) / np.linalg.norm(cold.W)  # noqa: E731
    assert gap(near) < 0.2 < gap(far)
    assert [it for it, *_ in seen] == list(range(1, warm.iterations + 1))
    assert warm.objective == pytest.approx(cold.objective, rel=1e-2)


def test_weighted_penalty_leaves_unpenalized_column_free():
    """A zero penalty column (a bias) is not shrunk; the program is checked against cvxpy."""
    rng = np.random.default_rng(3)
    X = np.hstack([rng.standard_normal((150, 20)), np.ones((150, 1))])
    W0 = rng.standard_normal((5, 21)) / 4
    W0[:, -1] = 2.0
    Y = np.maximum(X @ W0.T, 0)
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y))
    penalty = np.ones((5, 21))
    penalty[:, -1] = 0.0
    ref = solve_cvxpy(problem, penalty=penalty)
    res = solve_admm(problem, penalty=penalty)
    assert res.status == OPTIMAL
    assert res.objective <= ref.objective * 1.01
    assert_feasible(problem, res.W)
    assert np.all(np.abs(res.W[:, -1]) > 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_admm_on_cuda_returns_cuda_tensor():
    base, _ = random_layer(200, 30, 6)
    problem = NetTrimProblem(torch.from_numpy(base.X).cuda(), torch.from_numpy(base.Y).cuda(),
                             base.epsilon)
    res = solve_admm(problem)
    assert res.W.is_cuda and res.status == OPTIMAL
    assert_feasible(base, res.W.cpu().numpy())


# ---- validation ----------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    X = np.ones((10, 3))
    Y = np.ones((10, 2))
    with pytest.raises(ValueError, match=r"X has shape \(10, 3\) and Y has shape \(9, 2\)"):
        NetTrimProblem(X, np.ones((9, 2)), 1.0)
    with pytest.raises(ValueError, match="X must be 2-D"):
        NetTrimProblem(np.ones(10), Y, 1.0)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    Xn[1, 1] = np.inf
    with pytest.raises(ValueError, match="X contains 1 NaN and 1 Inf"):
        NetTrimProblem(Xn, Y, 1.0)
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        NetTrimProblem(X, Y, -1.0)
    with pytest.raises(ValueError, match="V was given with relu=False"):
        NetTrimProblem(X, Y, 1.0, V=np.zeros((10, 2)), relu=False)
    with pytest.raises(ValueError, match=r"V has shape \(10, 3\) but Y has shape \(10, 2\)"):
        NetTrimProblem(X, Y, 1.0, V=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="Y has 2 negative entries"):
        NetTrimProblem(X, -np.eye(10, 2), 1.0)
    NetTrimProblem(X, -np.eye(10, 2), 1.0, relu=False)  # fine for a linear layer
    with pytest.raises(TypeError, match="float32 or float64"):
        NetTrimProblem(X.astype(np.float16), Y, 1.0)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        NetTrimProblem([[1.0]], Y, 1.0)
    problem = NetTrimProblem(X, Y, 1.0)
    with pytest.raises(ValueError, match=r"W must have shape \(M, N\) = \(2, 3\)"):
        problem.residual(np.ones((3, 2)))
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        solve_admm(problem, max_iter=0)
    with pytest.raises(ValueError, match="penalty must have shape"):
        solve_admm(problem, penalty=np.ones((3, 3)))


def test_cvxpy_refuses_huge_problems():
    problem = NetTrimProblem(np.ones((5000, 500)), np.ones((5000, 100)), 1.0)
    with pytest.raises(ValueError, match="force=True"):
        solve_cvxpy(problem)


def test_problem_is_frozen_and_measures():
    problem, W0 = random_layer(50, 10, 3, rel_eps=0.0)
    assert problem.shape == (50, 10, 3)
    assert problem.residual(W0) < 1e-10 and problem.violation(W0) == 0.0
    assert problem.is_feasible(W0)
    assert problem.violation(np.zeros((3, 10))) == 0.0
    with pytest.raises(Exception):
        problem.epsilon = 3.0


# ---- cvxpy statuses at extreme scales ---------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True)
@given(y_exp=st.integers(-15, 15), x_exp=st.integers(-6, 6), relu=st.booleans(),
       seed=st.integers(0, 2 ** 31))
def test_cvxpy_statuses_hold_at_every_scale(y_exp, x_exp, relu, seed):
    """A program feasible by construction (the planted weights meet it) scaled by 10^k in its
    outputs and 10^j in its inputs: solve_cvxpy reports a success, its W meets the program
    (residual within epsilon, inequalities), and its objective is the unscaled one's times
    10^(k-j). Unscaled, Y ~ 1e-10 came back OPTIMAL at 5-20x epsilon and Y ~ 1e10 INFEASIBLE."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((30, 6))
    W0 = rng.standard_normal((3, 6))
    Z = X @ W0.T
    Y = np.maximum(Z, 0) if relu else Z
    base = solve_cvxpy(NetTrimProblem(X, Y, 0.3 * np.linalg.norm(Y), relu=relu))
    assert base.status in SUCCESS
    xs, ys = 10.0 ** x_exp, 10.0 ** y_exp
    problem = NetTrimProblem(X * xs, Y * ys, 0.3 * np.linalg.norm(Y) * ys, relu=relu)
    assert problem.is_feasible(W0 * ys / xs)     # feasible by construction
    result = solve_cvxpy(problem)
    assert result.status in SUCCESS
    assert problem.is_feasible(result.W)
    assert result.residual <= problem.epsilon * (1 + 1e-3)
    assert result.objective == pytest.approx(base.objective * ys / xs, rel=1e-3)


def test_cvxpy_success_is_checked_against_the_program(monkeypatch):
    """A backend point that misses the program is never reported as a success."""
    import solvers.reference as reference

    X = np.random.default_rng(0).standard_normal((20, 4))
    Y = np.maximum(X @ np.ones((2, 4)).T, 0)
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y))
    real = reference._solve_program

    def off(cp, X, Y, active, V, epsilon, relu, weights, fixed_zero, options):
        W, status, its = real(cp, X, Y, active, V, epsilon, relu, weights, fixed_zero, options)
        return (None if W is None else W * 0.5), status, its   # a wrong point labelled optimal

    monkeypatch.setattr(reference, "_solve_program", off)
    assert solve_cvxpy(problem).status == SOLVER_ERROR
