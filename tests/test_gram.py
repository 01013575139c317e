"""solvers.gram: the linear programs on compressed rows are the same programs (same solutions,
statuses and residuals) as on all rows, at an iteration cost that does not grow with P."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import (INFEASIBLE, OPTIMAL, SUCCESS, GramStats, NetTrimProblem, compress,
                     compress_problem, refit, solve_admm, solve_cvxpy, solve_lagrangian)


def linear_layer(P, N, M, *, seed=0, bias=False, cond=None, dtype=np.float64):
    """Correlated inputs (low rank plus noise), a linear target with noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, 6)) @ rng.standard_normal((6, N)) + 0.5 * rng.standard_normal((P, N))
    if cond is not None:   # stretch the spectrum of X to condition number ~cond
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        X = (U * np.geomspace(1.0, 1.0 / cond, len(s))) @ Vt * math.sqrt(P)
    if bias:
        X = np.hstack([X, np.ones((P, 1))])
    W0 = rng.standard_normal((M, X.shape[1])) / math.sqrt(N)
    Y = X @ W0.T + 0.2 * rng.standard_normal((P, M))
    return X.astype(dtype), Y.astype(dtype), W0


# ---- the statistics and the identity ---------------------------------------------------------
def test_stats_match_the_rows_and_stream_in_chunks():
    X, Y, _ = linear_layer(1000, 12, 4, seed=1)
    one = GramStats.from_rows(X, Y, chunk_rows=10_000)
    chunked = GramStats.from_rows(X, Y, chunk_rows=97)
    parts = GramStats.from_rows(X[:400], Y[:400]).merge(GramStats.from_rows(X[400:], Y[400:]))
    for stats in (one, chunked, parts):
        assert stats.rows == 1000 and stats.shape == (1000, 12, 4)
        np.testing.assert_allclose(stats.G.numpy(), X.T @ X, rtol=1e-12)
        np.testing.assert_allclose(stats.C.numpy(), X.T @ Y, rtol=1e-12)
        np.testing.assert_allclose(stats.tt.numpy(), (Y ** 2).sum(0), rtol=1e-12)


def test_stats_with_an_implicit_ones_column_an_offset_and_a_column_subset():
    X, Y, _ = linear_layer(500, 7, 3, seed=2)
    S = np.random.default_rng(3).standard_normal(Y.shape)
    Xa = np.hstack([X, np.ones((500, 1))])
    stats = GramStats.from_rows(X, Y, ones=True, offset=S, chunk_rows=64)
    assert stats.ones and stats.shape == (500, 8, 3)
    np.testing.assert_allclose(stats.G.numpy(), Xa.T @ Xa, rtol=1e-12)
    np.testing.assert_allclose(stats.C.numpy(), Xa.T @ (Y - S), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(stats.tt.numpy(), ((Y - S) ** 2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(stats.yy.numpy(), (Y ** 2).sum(0), rtol=1e-12)
    sub = stats.restrict(np.array([True, False, True, False, False, False, True, True]))
    cols = [0, 2, 6, 7]
    np.testing.assert_allclose(sub.G.numpy(), Xa[:, cols].T @ Xa[:, cols], rtol=1e-12)
    assert sub.ones and not stats.restrict([0, 1]).ones


def test_compress_leaves_dead_inputs_out_of_the_factor():
    """Inputs zero on every row get zero columns in R (Cholesky on the rest, no eigh)."""
    X, Y, _ = linear_layer(300, 6, 2, seed=4)
    X[:, [1, 4]] = 0.0
    reduced = compress(GramStats.from_rows(X, Y), 1.0)
    assert reduced.shape[0] == 4 and bool((reduced.X[:, [1, 4]] == 0).all())
    W = np.random.default_rng(5).standard_normal((2, 6))
    assert reduced.residual(W) ** 2 == pytest.approx(np.linalg.norm(X @ W.T - Y) ** 2, rel=1e-9)
    empty = compress(GramStats.from_rows(np.zeros((10, 3)), Y[:10]), 1.0)
    assert empty.residual(np.ones((2, 3))) == pytest.approx(np.linalg.norm(Y[:10]), rel=1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(P=st.integers(1, 80), N=st.integers(1, 10), M=st.integers(1, 4), seed=st.integers(0, 2 ** 31),
       bias=st.booleans(), duplicate=st.booleans())
def test_compressed_residual_is_the_full_residual(P, N, M, seed, bias, duplicate):
    """||X W^T - Y||^2 = ||R W^T - Q||^2 + floor for every W: fewer rows than inputs, a
    duplicated column and a bias (singular G, the eigh path) included."""
    X, Y, _ = linear_layer(P, N, M, seed=seed, bias=bias)
    if duplicate:
        X = np.hstack([X, X[:, :1]])
    rng = np.random.default_rng(seed + 1)
    reduced = compress(GramStats.from_rows(X, Y), 1.0)
    assert reduced.shape[0] <= X.shape[1] and reduced.shape[1] == X.shape[1]
    assert not reduced.relu and reduced.floor_sq >= 0
    scale = np.linalg.norm(Y) ** 2 + 1e-300
    for _ in range(3):
        W = rng.standard_normal((M, X.shape[1]))
        full = np.linalg.norm(X @ W.T - Y) ** 2
        scale_w = scale + np.linalg.norm(X @ W.T) ** 2
        assert reduced.residual(W) ** 2 == pytest.approx(full, abs=1e-9 * scale_w)


def test_compress_problem_keeps_relu_and_short_problems():
    X, Y, _ = linear_layer(50, 8, 3)
    relu = NetTrimProblem(X, np.maximum(Y, 0), 1.0)
    short = NetTrimProblem(X[:6], Y[:6], 1.0, relu=False)
    assert compress_problem(relu) is relu and compress_problem(short) is short
    long = compress_problem(NetTrimProblem(X, Y, 1.0, relu=False))
    assert long.shape == (8, 8, 3) and isinstance(long.X, np.ndarray)


def test_floor_sq_is_validated():
    X, Y, _ = linear_layer(20, 4, 2)
    with pytest.raises(ValueError, match="floor_sq"):
        NetTrimProblem(X, np.maximum(Y, 0), 1.0, floor_sq=1.0)   # ReLU: no compressed rows
    with pytest.raises(ValueError, match="floor_sq"):
        NetTrimProblem(X, Y, 1.0, relu=False, floor_sq=-1.0)
    with pytest.raises(TypeError, match="floor_sq"):
        NetTrimProblem(X, Y, 1.0, relu=False, floor_sq="a")


# ---- the solvers on compressed rows -----------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_admm_on_compressed_rows_solves_the_same_program(bias):
    """Ball ADMM: the compressed program's solution is feasible for the original program and
    its objective matches the row-domain solve's (and cvxpy's) within tolerance."""
    X, Y, _ = linear_layer(3000, 20, 6, seed=3, bias=bias)
    eps = 0.3 * np.linalg.norm(Y)
    full = NetTrimProblem(X, Y, eps, relu=False)
    small = compress_problem(full)
    assert small.shape[0] == X.shape[1] and small.floor_sq > 0
    a, b = solve_admm(full), solve_admm(small)
    ref = solve_cvxpy(small)
    assert a.status == b.status == OPTIMAL and ref.status in SUCCESS
    assert full.is_feasible(b.W)                                   # the original program
    assert b.residual == pytest.approx(full.residual(b.W), rel=1e-9)   # full residual reported
    assert b.objective == pytest.approx(a.objective, rel=2e-3)
    assert b.objective == pytest.approx(ref.objective, rel=2e-3)
    assert ref.residual == pytest.approx(full.residual(ref.W), rel=1e-6)
    assert full.is_feasible(ref.W, rtol=1e-5)


def test_lagrangian_and_refit_on_compressed_rows():
    """The count mode and the support refit give the row-domain answers: the same count, the
    same least-squares weights on a support, residuals of the original program."""
    X, Y, _ = linear_layer(4000, 30, 8, seed=4)
    full = NetTrimProblem(X, Y, 0.0, relu=False)
    small = compress_problem(full)
    keep = 60
    a = solve_lagrangian(full, nonzeros=keep)
    b = solve_lagrangian(small, nonzeros=keep)
    assert a.status == b.status == OPTIMAL
    assert abs(b.nonzeros - a.nonzeros) <= 1
    assert b.epsilon == pytest.approx(full.residual(b.W), rel=1e-9)
    assert b.epsilon == pytest.approx(a.epsilon, rel=1e-3)
    support = a.W != 0
    ra, rb = refit(full, support), refit(small, support)
    assert ra.status == rb.status == OPTIMAL
    np.testing.assert_allclose(rb.W, ra.W, rtol=1e-6, atol=1e-9)
    assert rb.residual == pytest.approx(ra.residual, rel=1e-9)


def test_epsilon_below_the_floor_is_infeasible():
    """No W fits Y's part outside the range of X: an epsilon below it is INFEASIBLE for every
    solver (the compressed ball of radius 0 alone would be met)."""
    X, Y, _ = linear_layer(500, 5, 2, seed=5)
    small = compress_problem(NetTrimProblem(X, Y, 1.0, relu=False))
    eps = 0.5 * math.sqrt(small.floor_sq)
    tight = NetTrimProblem(small.X, small.Y, eps, relu=False, floor_sq=small.floor_sq)
    assert tight.below_floor and tight.radius == 0.0
    for result in (solve_admm(tight), solve_cvxpy(tight)):
        assert result.status == INFEASIBLE
        assert result.residual == pytest.approx(NetTrimProblem(X, Y, eps, relu=False).residual(
            np.zeros((2, 5))), rel=1e-9)


def test_float32_and_ill_conditioned_inputs():
    """float32 rows with cond(X) ~ 1e4 (cond(G) ~ 1e8): the statistics are float64, so the
    compressed program's objective still matches the float64 row-domain reference."""
    X, Y, _ = linear_layer(2000, 16, 4, seed=6, cond=1e4, dtype=np.float32)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    floor = np.linalg.norm(Y64 - X64 @ np.linalg.lstsq(X64, Y64, rcond=None)[0]) ** 2
    eps = math.sqrt(floor + 0.2 * (np.linalg.norm(Y64) ** 2 - floor))   # between floor and W = 0
    small = compress_problem(NetTrimProblem(X, Y, eps, relu=False))
    assert small.X.dtype == np.float32
    ref = solve_cvxpy(NetTrimProblem(X64, Y64, eps, relu=False))
    ours = solve_admm(small)
    assert ours.status == OPTIMAL and ref.status in SUCCESS
    full64 = NetTrimProblem(X64, Y64, eps, relu=False)
    assert full64.is_feasible(ours.W.astype(np.float64))
    assert ours.objective == pytest.approx(ref.objective, rel=5e-3)


def test_compressed_torch_problem_stays_on_its_device_and_dtype():
    X, Y, _ = linear_layer(300, 10, 3, seed=7, dtype=np.float32)
    small = compress_problem(NetTrimProblem(torch.from_numpy(X), torch.from_numpy(Y), 1.0,
                                            relu=False))
    assert isinstance(small.X, torch.Tensor) and small.X.dtype == torch.float32
    result = solve_admm(small)
    assert isinstance(result.W, torch.Tensor) and result.W.shape == (3, 10)
