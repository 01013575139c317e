"""Issue 14: bad input gets one clear error, no OPTIMAL labels a wrong answer, no signal leaves a
file. One test (or more) per numbered item of the issue; the property-based fuzz is in
tests/test_fuzz.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nettrim
from solvers import OPTIMAL, NetTrimProblem, solve_admm, solve_cvxpy
from solvers.admm import RHO_RANGE


def relu_layer(P=40, N=10, M=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    Y = np.maximum(X @ rng.standard_normal((M, N)).T, 0)
    return X, Y


def residual64(X, Y, W, relu=True):
    """Active-set residual and largest violation (V = 0), independently in float64 numpy."""
    X, Y, W = (np.asarray(a, dtype=np.float64) for a in (X, Y, W))
    Z = X @ W.T
    if not relu:
        return float(np.linalg.norm(Z - Y)), 0.0
    active = Y > 0
    off = Z[~active]
    return float(np.linalg.norm((Z - Y)[active])), max(0.0, float(off.max())) if off.size else 0.0


# ---- 3, 4: data scaled near 1e20 (float32 column norms overflow) or 1e-30 (squares underflow) ---
@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_extreme_data_scale_is_solved_or_refused(scale):
    X, Y = relu_layer()
    eps = 0.1 * np.linalg.norm(Y)
    Xs, Ys = (X * scale).astype(np.float32), (Y * scale).astype(np.float32)
    result = solve_admm(NetTrimProblem(Xs, Ys, eps * scale))
    assert result.status == OPTIMAL
    assert np.isfinite(result.residual) and np.isfinite(result.W).all()
    assert result.nonzeros > 0  # W = 0 has residual ||Y on Omega|| > epsilon here
    res, viol = residual64(Xs, Ys, result.W)
    assert res <= eps * scale * 1.002
    assert viol <= 1e-3 * float(np.abs(Ys).max())
    assert result.residual == pytest.approx(res, rel=1e-3)
    # the same weights as on unit-scale data (W does not change when X and Y scale together)
    reference = solve_admm(NetTrimProblem(X.astype(np.float32), Y.astype(np.float32), eps))
    assert result.nonzeros == pytest.approx(reference.nonzeros, abs=2)


def test_prune_layer_tiny_scale_reports_the_true_error():
    X, Y = relu_layer()
    out = nettrim.prune_layer((X * 1e-30).astype(np.float32), (Y * 1e-30).astype(np.float32),
                              epsilon=0.1)
    assert out.report["status"] == OPTIMAL
    assert 0.0 < out.report["relative_error"] <= 0.1 * 1.002
    assert out.report["nonzeros"] > 0


def test_y_out_of_range_relative_to_x_is_refused():
    X, Y = relu_layer()
    problem = NetTrimProblem((X * 1e-20).astype(np.float32), (Y * 1e20).astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="Y is .* times the scale of X"):
        solve_admm(problem)


# ---- 5, 9: NaN / Inf / wrong-shape warm starts --------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_warm_start_is_a_value_error_naming_W0(bad):
    X, Y = relu_layer()
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y))
    W0 = np.ones((5, 10))
    W0[2, 3] = bad
    with pytest.raises(ValueError, match="W0"):
        solve_admm(problem, W0=W0)
    with pytest.raises(ValueError, match="W0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, W0=W0)


def test_wrong_warm_start_shapes_name_the_argument():
    X, Y = relu_layer()
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y))
    with pytest.raises(ValueError, match="W0 must have shape"):
        solve_admm(problem, W0=np.ones((10, 5)))
    W0 = np.ones((5, 10))
    with pytest.raises(ValueError, match="b0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, bias=True, W0=W0, b0=np.ones(4))
    with pytest.raises(ValueError, match="b0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, bias=True, W0=W0, b0=np.full(5, np.nan))


# ---- 8: a feasible zero solution returns at once; rho stays in range -----------------------------
def test_zero_solution_feasible_returns_at_once():
    X, Y = relu_layer()
    for eps in (np.linalg.norm(Y), 2 * np.linalg.norm(Y)):
        result = solve_admm(NetTrimProblem(X, Y, eps), W0=np.ones((5, 10)))
        assert result.status == OPTIMAL and result.iterations == 0
        assert result.nonzeros == 0
        assert result.residual == pytest.approx(np.linalg.norm(Y))
    out = nettrim.prune_layer(X, Y, epsilon=2.0, bias=True)
    assert out.report["status"] == OPTIMAL and out.report["nonzeros"] == 0


def test_rho_stays_within_range_with_one_sample_and_an_unpenalized_bias():
    """One sample, a free bias and a warm start: the bias alone fits, the l1 duals vanish and
    residual balancing drove rho to 1e-31 (iterations in the thousands)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 16).double()
    x = torch.randn(1, 6, dtype=torch.float64)
    W0, b0 = lin.weight.detach(), lin.bias.detach()
    Y = torch.relu(x @ W0.T + b0)
    Xa = torch.cat([x, torch.ones(1, 1, dtype=torch.float64)], 1)
    penalty = torch.ones(16, 7, dtype=torch.float64)
    penalty[:, -1] = 0
    problem = NetTrimProblem(Xa, Y, 0.05 * float(torch.linalg.vector_norm(Y)))
    rhos = []
    result = solve_admm(problem, W0=torch.cat([W0, b0[:, None]], 1), penalty=penalty,
                        callback=lambda it, r, s, rho: rhos.append(rho))
    assert result.status == OPTIMAL and problem.is_feasible(result.W)
    assert rhos[0] / RHO_RANGE <= min(rhos) and max(rhos) <= rhos[0] * RHO_RANGE
    assert result.iterations < 1000


# ---- 6: sparsity 0 means no pruning --------------------------------------------------------------
def test_sparsity_zero_keeps_the_weights_and_says_so():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(100, 6)
    result = nettrim.prune(model, x, sparsity=0.0)
    for name in ("0", "2"):
        assert torch.equal(result.model.get_submodule(name).weight,
                           model.get_submodule(name).weight)
        assert torch.equal(result.model.get_submodule(name).bias, model.get_submodule(name).bias)
    for row in result.report:
        assert row.status == OPTIMAL and row.nonzeros_after == row.nonzeros_before
        assert "no pruning" in row.note
        assert row.relative_error < 1e-6
    X, Y = relu_layer()
    with pytest.raises(ValueError, match="sparsity=0 .* W0"):
        nettrim.prune_layer(X, Y, sparsity=0)


# ---- 18: float16 / bfloat16: refused by the layer API, solved in float32 by prune() -------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_data_is_refused_like_the_problem(dtype):
    X, Y = relu_layer()
    Xh, Yh = torch.from_numpy(X).to(dtype), torch.from_numpy(Y).to(dtype)
    with pytest.raises(TypeError, match="X must be float32 or float64"):
        NetTrimProblem(Xh, Yh, 1.0)
    with pytest.raises(TypeError, match="X must be float32 or float64"):
        nettrim.prune_layer(Xh, Yh, epsilon=0.1)


def test_prune_solves_a_half_precision_model_in_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3)).to(torch.bfloat16)
    result = nettrim.prune(model, torch.randn(100, 6, dtype=torch.bfloat16), 0.1)
    assert result.model[0].weight.dtype == torch.bfloat16
    assert all(row.status == OPTIMAL for row in result.report)
    assert result.report[0].nonzeros_after < result.report[0].nonzeros_before


# ---- 1: the cvxpy reference returns a support (the ADMM's), not an interior point -----------------
@pytest.mark.parametrize("relu, seed", [(True, 0), (False, 1), (True, 3)])
def test_cvxpy_support_matches_the_admm_support(relu, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((60, 20))
    Z = X @ (rng.standard_normal((6, 20)) / np.sqrt(20)).T
    Y = np.maximum(Z, 0) if relu else Z
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y), relu=relu)
    reference = solve_cvxpy(problem)
    admm = solve_admm(problem, eps_abs=1e-9, eps_rel=1e-7, max_iter=50000)
    assert reference.status == OPTIMAL and admm.status == OPTIMAL
    assert 0 < reference.nonzeros < 0.9 * X.shape[1] * Y.shape[1]
    np.testing.assert_array_equal(reference.W != 0, admm.W != 0)
    assert problem.is_feasible(reference.W)
    assert reference.objective == pytest.approx(admm.objective, rel=1e-6)


def test_prune_layer_with_cvxpy_prunes():
    X, Y = relu_layer(P=60, N=20, M=6)
    ref = nettrim.prune_layer(X, Y, epsilon=0.1, solver="cvxpy")
    admm = nettrim.prune_layer(X, Y, epsilon=0.1, solver="admm")
    assert ref.report["status"] == OPTIMAL
    assert ref.report["nonzeros"] < 0.9 * ref.report["total"]
    assert ref.report["relative_error"] <= 0.1 * 1.002
    assert abs(ref.report["nonzeros"] - admm.report["nonzeros"]) <= 0.1 * admm.report["nonzeros"]
