"""Hard-thresholding pursuit on a linear program's support (solvers/htp.py) and its place in
prune_layer's pipeline at a target sparsity."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nettrim
import solvers.htp as htp
from solvers import SUCCESS, NetTrimProblem, refit
from solvers.htp import hard_threshold_pursuit


def _start(problem, support):
    """Least squares on ``support`` (the refit), the pursuit's start."""
    return torch.as_tensor(refit(problem, support).W)


def _correlated(P, N, M, seed, rank=6, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, rank, generator=g) @ torch.randn(rank, N, generator=g) \
        + noise * torch.randn(P, N, generator=g)
    W = torch.randn(M, N, generator=g) / math.sqrt(N)
    return X, W


def test_pursuit_recovers_a_planted_support_from_a_wrong_one():
    g = torch.Generator().manual_seed(0)
    P, N, M, k = 200, 40, 6, 5
    X = torch.randn(P, N, generator=g, dtype=torch.float64)
    true = torch.zeros(M, N, dtype=torch.bool)
    for m in range(M):
        true[m, torch.randperm(N, generator=g)[:k]] = True
    W_true = torch.randn(M, N, generator=g, dtype=torch.float64).masked_fill(~true, 0.0)
    W_true += torch.sign(W_true) * true     # |w| >= 1 on the support
    problem = NetTrimProblem(X, X @ W_true.T, 0.0, relu=False)
    wrong = torch.zeros_like(true)
    for m in range(M):   # the same count, mostly the wrong inputs
        wrong[m, torch.randperm(N, generator=g)[:k]] = True
    start = _start(problem, wrong)
    assert problem.residual(start) > 1.0
    found = hard_threshold_pursuit(problem, start, rounds=30)
    assert torch.equal(found.W != 0, true)
    assert found.residual < 1e-6 * float(torch.linalg.vector_norm(problem.Y))
    assert problem.residual(found.W) < 1e-6 * float(torch.linalg.vector_norm(problem.Y))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), keep=st.floats(0.1, 0.6), M=st.integers(1, 5),
       float32=st.booleans())
def test_pursuit_keeps_the_count_and_the_uncounted_entries_and_never_raises_the_residual(
        seed, keep, M, float32):
    P, N = 60, 13
    X, W0 = _correlated(P, N, M, seed)
    X = torch.cat([X, torch.ones(P, 1)], 1)           # a bias column, not counted
    dtype = torch.float32 if float32 else torch.float64
    X = X.to(dtype)
    problem = NetTrimProblem(X, X[:, :N] @ W0.T.to(dtype) + 0.5, 0.0, relu=False)
    g = torch.Generator().manual_seed(seed + 1)
    support = torch.rand(M, N + 1, generator=g) < keep
    support[:, N] = torch.rand(M, generator=g) < 0.5   # a bias kept or not, as it was
    counted = torch.ones(M, N + 1, dtype=torch.bool)
    counted[:, N] = False
    start = _start(problem, support)
    found = hard_threshold_pursuit(problem, start, counted=counted)
    W = torch.as_tensor(found.W)
    assert W.dtype == dtype
    assert int((W[:, :N] != 0).sum()) == int((start[:, :N] != 0).sum())
    assert torch.equal(W[:, N] != 0, start[:, N] != 0)
    before, after = problem.residual(start), problem.residual(W)
    assert after <= before * (1 + 1e-6) + 1e-9
    assert found.residual == pytest.approx(after, rel=1e-4, abs=1e-6)
    # every neuron is least squares on its final support
    assert torch.allclose(W, _start(problem, W != 0).to(W), rtol=1e-3, atol=1e-4)


def test_pursuit_lowers_the_residual_of_a_magnitude_support_on_correlated_inputs():
    X, W0 = _correlated(400, 30, 8, seed=3)
    problem = NetTrimProblem(X, X @ W0.T, 0.0, relu=False)
    # magnitude's support at 70%: a correlated layer's weights are a poor guide
    keep = W0.abs() >= W0.abs().flatten().kthvalue(int(0.7 * W0.numel())).values
    start = _start(problem, keep)
    found = hard_threshold_pursuit(problem, start)
    assert found.kept >= 1 and found.moved > 0
    assert problem.residual(found.W) < 0.95 * problem.residual(start)


def test_pursuit_stops_at_its_work_cap_with_the_start():
    X, W0 = _correlated(100, 20, 4, seed=1)
    problem = NetTrimProblem(X, X @ W0.T, 0.0, relu=False)
    start = _start(problem, torch.rand(4, 20, generator=torch.Generator().manual_seed(2)) < 0.3)
    found = hard_threshold_pursuit(problem, start, max_work=1.0)
    assert (found.rounds, found.kept, found.stopped) == (0, 0, "work")
    assert torch.equal(torch.as_tensor(found.W), start)


def test_pursuit_refuses_a_program_with_inequalities():
    X, W0 = _correlated(50, 10, 3, seed=1)
    problem = NetTrimProblem(X, torch.relu(X @ W0.T), 0.0, relu=True)
    with pytest.raises(ValueError, match="relu=True"):
        hard_threshold_pursuit(problem, W0)
    with pytest.raises(ValueError, match="counted"):
        hard_threshold_pursuit(NetTrimProblem(X, X @ W0.T, 0.0, relu=False), W0,
                               counted=torch.ones(2, 2, dtype=torch.bool))


@pytest.mark.parametrize("rows", [300, 3000])   # rows, and compressed rows (P > 2 N)
def test_prune_layer_pursuit_lowers_a_linear_layers_error_at_the_same_count(rows, monkeypatch):
    X, W0 = _correlated(rows, 40, 24, seed=5, rank=8)
    b0 = 0.1 * torch.randn(24, generator=torch.Generator().manual_seed(6))
    Y = X @ W0.T + b0
    kwargs = dict(sparsity=0.7, relu=False, bias=True, W0=W0, b0=b0)
    pursued = nettrim.prune_layer(X, Y, **kwargs)
    monkeypatch.setattr(htp, "HTP_ROUNDS", 0)
    plain = nettrim.prune_layer(X, Y, **kwargs)
    rep, base = pursued.report, plain.report
    assert rep["pursuit"]["kept"] >= 1 and base["pursuit"]["rounds"] == 0
    assert rep["nonzeros"] == base["nonzeros"] == round(0.3 * 24 * 40)
    assert rep["relative_error"] < 0.99 * base["relative_error"]
    assert rep["status"] in SUCCESS
    # the report's residual and epsilon are the returned weights'
    W = torch.cat([pursued.weight, pursued.bias[:, None]], 1)
    problem = NetTrimProblem(torch.cat([X, torch.ones(rows, 1)], 1), Y, rep["epsilon_abs"],
                             relu=False)
    assert problem.residual(W) == pytest.approx(rep["residual"], rel=1e-4)
    assert problem.is_feasible(W)
    assert rep["pursuit"]["residual"] == pytest.approx(rep["residual"], rel=1e-3)


def test_prune_layer_pursuit_fits_the_target_less_the_offset():
    X, W0 = _correlated(300, 20, 6, seed=8)
    S = torch.randn(300, 6, generator=torch.Generator().manual_seed(9))
    Y = X @ W0.T + S
    out = nettrim.prune_layer(X, Y, sparsity=0.6, relu=False, offset=S, W0=W0)
    direct = nettrim.prune_layer(X, Y - S, sparsity=0.6, relu=False, W0=W0)
    assert out.report["pursuit"]["kept"] >= 1
    assert torch.allclose(out.weight, direct.weight, atol=1e-5)


def test_pursuit_runs_only_where_it_applies():
    X, W0 = _correlated(300, 20, 6, seed=8)
    Y = X @ W0.T
    assert "pursuit" not in nettrim.prune_layer(X, Y, epsilon=0.1, relu=False).report
    assert "pursuit" not in nettrim.prune_layer(X, Y, sparsity=0.6, relu=False,
                                                refit=False).report
    relu = nettrim.prune_layer(X, torch.relu(Y), sparsity=0.6, program="relu").report
    assert "pursuit" not in relu
