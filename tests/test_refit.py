"""solvers.refit: the support-restricted least-squares refit against cvxpy, and reweighted l1."""

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import solvers
from solvers import INFEASIBLE, MAX_ITER, OPTIMAL, NetTrimProblem, solve_admm
from solvers.refit import refit, reweighted_penalty
from solvers.soft import refit_soft

# the module itself (``solvers.refit`` the attribute is the function, re-exported by solvers)
refit_module = importlib.import_module("solvers.refit")


# ---- instances and the cvxpy reference -------------------------------------------------------
def relu_layer(P, N, M, *, seed=0, relu=True, with_V=False, rel_eps=0.15):
    """A random layer, its Net-Trim program, and the support of the l1 solution (solve_admm).

    with_V: cascade-like, perturbed input X-hat, V = X-hat W0^T + noise (so the l1 solution
    does not make every inequality tight).
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    W0 = rng.standard_normal((M, N)) / np.sqrt(N)
    Z = X @ W0.T
    Y = np.maximum(Z, 0) if relu else Z
    V = None
    if with_V:
        X = X + 0.1 * rng.standard_normal((P, N))
        V = X @ W0.T + 0.05 * np.abs(rng.standard_normal((P, M)))
    problem = NetTrimProblem(X, Y, rel_eps * np.linalg.norm(Y), V=V, relu=relu)
    l1 = solve_admm(problem)
    assert l1.status == OPTIMAL
    support = l1.W != 0
    assert 0 < support.sum() < support.size  # a real support: something pruned, something kept
    return problem, support, l1.W


def reference(problem, support):
    """Optimal active-set residual of the refit QP (cvxpy, Clarabel, float64)."""
    import cvxpy as cp

    X = np.asarray(problem.X, dtype=np.float64)
    Y = np.asarray(problem.Y, dtype=np.float64)
    P, N, M = problem.shape
    S = np.asarray(support)
    W = cp.Variable((M, N))
    Z = X @ W.T
    active = (Y > 0) if problem.relu else np.ones_like(Y, dtype=bool)
    cons = [cp.multiply(W, (~S).astype(float)) == 0]
    if problem.relu:
        V = np.zeros_like(Y) if problem.V is None else np.asarray(problem.V, dtype=np.float64)
        cons.append(cp.multiply(Z - V, (~active).astype(float)) <= 0)
    objective = cp.sum_squares(cp.multiply(Z - Y, active.astype(float)))
    prob = cp.Problem(cp.Minimize(objective), cons)
    prob.solve(solver="CLARABEL")
    assert prob.status == "optimal"
    return float(np.sqrt(max(prob.value, 0.0))), W.value


def convert(problem, *, dtype, kind):
    cast = {"numpy": lambda a: None if a is None else np.asarray(a).astype(dtype),
            "torch": lambda a: None if a is None else torch.from_numpy(np.asarray(a).astype(dtype))}[kind]
    return NetTrimProblem(cast(problem.X), cast(problem.Y), problem.epsilon, V=cast(problem.V),
                          relu=problem.relu)


def as_np(W):
    return W.cpu().numpy().astype(np.float64) if isinstance(W, torch.Tensor) else np.asarray(W, np.float64)


CASES = [  # P, N, M, relu, with_V
    (200, 30, 6, True, False),
    (200, 30, 6, True, True),
    (60, 50, 4, True, False),     # fewer samples than inputs: the fit on S is not unique
    (150, 25, 5, False, False),   # linear layer: plain least squares on each support
]


@pytest.fixture(params=["exact", "admm"])
def path(request, monkeypatch):
    """Both ways the refit solves a ReLU layer: the exact least-distance solve (default on
    the CPU) and ADMM with its polish (on CUDA, and for what the exact solve leaves)."""
    if request.param == "admm":
        monkeypatch.setattr(refit_module, "EXACT_ROUNDS", 0)
    return request.param


@pytest.mark.parametrize("P,N,M,relu,with_V", CASES)
@pytest.mark.parametrize("dtype,kind", [("float64", "numpy"), ("float32", "numpy"),
                                        ("float64", "torch"), ("float32", "torch")])
def test_refit_matches_cvxpy(P, N, M, relu, with_V, dtype, kind, path):
    base, support, W_l1 = relu_layer(P, N, M, seed=P + N, relu=relu, with_V=with_V)
    problem = convert(base, dtype=dtype, kind=kind)
    S = support if kind == "numpy" else torch.from_numpy(support)
    W_start = W_l1.astype(dtype) if kind == "numpy" else torch.from_numpy(W_l1.astype(dtype))
    ref_value, _ = reference(problem, support)
    res = refit(problem, S, W0=W_start)
    assert res.status == OPTIMAL and res.solver == "refit"
    if relu and path == "exact":
        assert res.iterations == 0            # no ADMM iteration: every neuron solved exactly
    if kind == "torch":
        assert isinstance(res.W, torch.Tensor) and res.W.dtype == getattr(torch, dtype)
    else:
        assert isinstance(res.W, np.ndarray) and res.W.dtype == np.dtype(dtype)
    W = as_np(res.W)
    assert W.shape == (M, N)
    assert np.all(W[~support] == 0)                                  # support kept exactly
    true_res = base.residual(W)
    assert true_res == pytest.approx(ref_value, rel=1e-4, abs=1e-9)  # the optimum
    assert res.residual == pytest.approx(true_res, rel=1e-4, abs=1e-9)
    y_max = float(np.abs(base.Y).max())
    assert base.violation(W) <= 1e-3 * y_max                          # same inequalities
    assert res.violation <= 1e-3 * y_max
    assert true_res <= base.residual(W_l1) * (1 + 1e-9)              # never worse than l1
    assert res.objective == pytest.approx(np.abs(W).sum(), rel=1e-5)


def test_refit_undoes_l1_shrinkage():
    """On a ReLU layer the refit cuts the l1 residual substantially (what issue 5 is about)."""
    problem, support, W_l1 = relu_layer(300, 40, 8, seed=11, rel_eps=0.2)
    res = refit(problem, support, W0=W_l1)
    assert res.status == OPTIMAL
    assert res.residual < 0.7 * problem.residual(W_l1)
    # and the post-ReLU output error follows (guarantee: <= active-set residual when V = 0)
    out_err = np.linalg.norm(np.maximum(problem.X @ res.W.T, 0) - problem.Y)
    assert out_err <= res.residual * (1 + 1e-6) + 1e-3 * np.abs(problem.Y).max()


def test_public_names():
    assert solvers.refit is refit and solvers.reweighted_penalty is reweighted_penalty
    assert {"refit", "reweighted_penalty"} <= set(solvers.__all__)
    assert refit_module.refit is refit


def test_refit_without_start_and_linear_is_least_squares():
    problem, support, _ = relu_layer(150, 25, 5, seed=3, relu=False)
    res = refit(problem, support)
    assert res.status == OPTIMAL
    for m in range(5):  # each neuron: ordinary least squares on its support
        S = support[m]
        coef, *_ = np.linalg.lstsq(problem.X[:, S], problem.Y[:, m], rcond=None)
        assert np.allclose(res.W[m, S], coef, atol=1e-8)


def test_refit_chunked_equals_one_chunk(monkeypatch):
    problem, support, W_l1 = relu_layer(200, 30, 6, seed=4)
    whole = refit(problem, support, W0=W_l1)
    monkeypatch.setattr(refit_module, "FACTOR_BYTES", 1)   # one neuron per chunk
    chunked = refit(problem, support, W0=W_l1)
    assert whole.status == chunked.status == OPTIMAL
    assert chunked.residual == pytest.approx(whole.residual, rel=1e-6)
    assert np.array_equal(chunked.W != 0, whole.W != 0)


def test_chunks_split_where_supports_shrink():
    sizes = torch.tensor([100] * 40 + [70] * 40 + [10] * 5)
    chunks = refit_module._chunks(sizes, 2 ** 40)
    assert sorted(torch.cat(chunks).tolist()) == list(range(85))      # every neuron once
    for chunk in chunks:   # padding bounded once CHUNK_MIN neurons are in
        s = sizes[chunk]
        if len(chunk) > refit_module.CHUNK_MIN:
            assert int(s.max()) <= refit_module.CHUNK_SPREAD * int(s[refit_module.CHUNK_MIN:].min())
    assert len(chunks) >= 2


def test_blank_rows_of_a_bias_column_are_one_constraint():
    """Rows whose support inputs are all zero read ``b <= v`` through the ones column: the refit
    must stay optimal (cvxpy) and feasible on every such row, with the least bound binding."""
    rng = np.random.default_rng(7)
    P, N, M = 240, 12, 5
    X = rng.standard_normal((P, N))
    X[: P // 2, : N // 2] = 0.0                        # half the rows blank on half the inputs
    X = np.hstack([X, np.ones((P, 1))])                # a bias column
    W0 = rng.standard_normal((M, N + 1)) / np.sqrt(N)
    W0[:, -1] = 0.3
    Y = np.maximum(X @ W0.T, 0)
    V = -np.abs(rng.standard_normal((P, M))) * 0.05    # cascade-like bounds, distinct
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y), V=V, relu=True)
    support = np.zeros((M, N + 1), dtype=bool)
    support[:, : N // 2] = True                        # inputs that are zero on the blank rows
    support[:, -1] = True
    ref_value, _ = reference(problem, support)
    res = refit(problem, support)
    assert res.status == OPTIMAL
    W = as_np(res.W)
    assert problem.residual(W) == pytest.approx(ref_value, rel=1e-4)
    assert problem.violation(W) <= 1e-3 * float(np.abs(Y).max())


def degenerate_program():
    """Every inequality tight at the original weights, full support: ADMM needs hundreds of
    iterations and its polish cannot certify early."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 40))
    W0 = rng.standard_normal((8, 40)) / np.sqrt(40)
    Y = np.maximum(X @ W0.T, 0)
    Xh = X + 0.1 * rng.standard_normal(X.shape)
    return NetTrimProblem(Xh, Y, 1.0, V=Xh @ W0.T), np.ones((8, 40), dtype=bool), W0, Y


def test_exact_solve_of_a_degenerate_program():
    """The least-distance solve certifies what the ADMM polish cannot, with no ADMM iteration
    and feasible on every row. Reference: cvxpy neuron by neuron (Clarabel fails on the
    whole layer at once here)."""
    import cvxpy as cp

    problem, support, W0, Y = degenerate_program()
    res = refit(problem, support, W0=W0)
    assert res.status == OPTIMAL and res.iterations == 0
    assert problem.violation(res.W) <= 1e-6 * np.abs(Y).max()
    X, V = problem.X, problem.V
    for m in range(Y.shape[1]):
        om = Y[:, m] > 0
        w = cp.Variable(X.shape[1])
        qp = cp.Problem(cp.Minimize(cp.sum_squares(X[om] @ w - Y[om, m])),
                        [X[~om] @ w <= V[~om, m]])
        qp.solve(solver="CLARABEL")
        assert qp.status == "optimal"
        fit = np.linalg.norm(X[om] @ res.W[m] - Y[om, m])
        assert fit == pytest.approx(np.sqrt(qp.value), rel=1e-6)


def test_exact_solve_adds_the_rows_it_violates():
    """Started where no inequality is tight (R empty), the solve must find the binding rows
    by constraint generation: the unconstrained fit on the support violates some."""
    problem, support, _ = relu_layer(200, 30, 6, seed=3)
    ref_value, _ = reference(problem, support)
    res = refit(problem, support, W0=np.zeros(support.shape))
    assert res.status == OPTIMAL and res.iterations == 0
    assert problem.residual(res.W) == pytest.approx(ref_value, rel=1e-6)
    assert problem.violation(res.W) <= 1e-6 * np.abs(problem.Y).max()


def test_max_iter_status_and_never_worse_than_start(monkeypatch):
    monkeypatch.setattr(refit_module, "EXACT_ROUNDS", 0)   # ADMM only
    problem, support, W0, Y = degenerate_program()
    res = refit(problem, support, W0=W0, max_iter=3)
    assert res.status == MAX_ITER and res.iterations == 3
    # W0 is feasible and supported: the result may not fit worse, and stays feasible
    assert problem.residual(res.W) <= problem.residual(W0) * (1 + 1e-12)
    assert problem.violation(res.W) <= 1e-3 * np.abs(Y).max()


def test_start_at_the_optimum_is_kept():
    problem, support, _ = relu_layer(200, 30, 6, seed=5)
    _, W_opt = reference(problem, support)
    W_opt = np.where(support, W_opt, 0.0)
    res = refit(problem, support, W0=W_opt, max_iter=1)
    assert problem.residual(res.W) <= problem.residual(W_opt) * (1 + 1e-12)
    assert np.all(res.W[~support] == 0)


def test_empty_support_rows():
    problem, support, W_l1 = relu_layer(200, 30, 6, seed=6)
    support = support.copy()
    support[2] = False
    res = refit(problem, support, W0=np.where(support, W_l1, 0.0))
    assert res.status == OPTIMAL
    assert np.all(res.W[2] == 0)
    # with V < 0 somewhere off Omega, W = 0 is infeasible for that neuron: no solution exists
    V = np.zeros_like(problem.Y)
    V[problem.Y[:, 2] == 0, 2] = -1.0
    infeasible = NetTrimProblem(problem.X, problem.Y, problem.epsilon, V=V)
    assert refit(infeasible, support).status == INFEASIBLE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refit_on_cuda_returns_cuda_tensor():
    base, support, W_l1 = relu_layer(200, 30, 6, seed=8)
    problem = NetTrimProblem(torch.from_numpy(base.X).cuda(), torch.from_numpy(base.Y).cuda(),
                             base.epsilon)
    res = refit(problem, torch.from_numpy(support).cuda(), W0=torch.from_numpy(W_l1).cuda())
    assert res.W.is_cuda and res.status == OPTIMAL
    assert base.residual(res.W.cpu().numpy()) == pytest.approx(reference(base, support)[0], rel=1e-4)


# ---- validation ------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    problem, support, _ = relu_layer(100, 20, 4, seed=9)
    with pytest.raises(ValueError, match=r"support must have shape \(M, N\) = \(4, 20\), got \(4, 19\)"):
        refit(problem, support[:, :19])
    with pytest.raises(TypeError, match="support must be a boolean array.*float64"):
        refit(problem, support.astype(float))
    with pytest.raises(TypeError, match="support must be a boolean tensor.*torch.int64"):
        refit(problem, torch.from_numpy(support.astype(np.int64)))
    with pytest.raises(TypeError, match="support must be a numpy array or a torch tensor, got list"):
        refit(problem, support.tolist())
    with pytest.raises(TypeError, match="problem must be a NetTrimProblem"):
        refit((problem.X, problem.Y), support)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        refit(problem, support, max_iter=0)
    with pytest.raises(ValueError, match=r"W must have shape \(M, N\) = \(4, 20\)"):
        refit(problem, support, W0=np.zeros((20, 4)))


# ---- reweighted l1 ---------------------------------------------------------------------------
def test_reweighted_penalty_properties():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 7)) * (rng.random((5, 7)) < 0.5)
    pen = reweighted_penalty(W)
    assert isinstance(pen, np.ndarray) and pen.shape == W.shape and pen.dtype == W.dtype
    assert pen.mean() == pytest.approx(1.0) and np.all(pen > 0)
    delta = 1e-3 * np.abs(W).max()
    expected = 1.0 / (np.abs(W) + delta)
    assert np.allclose(pen, expected / expected.mean())
    # order-reversing in |W|: big weights cheap, zeros the most expensive
    order = np.argsort(np.abs(W).ravel())
    assert np.all(np.diff(pen.ravel()[order]) <= 1e-12)
    assert pen.max() / pen.min() == pytest.approx((np.abs(W).max() + delta) / delta)
    # torch in, torch out (dtype kept); explicit delta; all-zero W gives plain l1
    Wt = torch.from_numpy(W).float()
    pt = reweighted_penalty(Wt, delta=0.5)
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32
    ref = 1.0 / (np.abs(W) + 0.5)
    assert np.allclose(pt.numpy(), ref / ref.mean(), rtol=1e-5)
    assert np.all(reweighted_penalty(np.zeros((3, 4))) == 1.0)
    with pytest.raises(ValueError, match="delta must be positive"):
        reweighted_penalty(W, delta=0.0)
    with pytest.raises(ValueError, match="W must be finite"):
        reweighted_penalty(np.full((2, 2), np.nan))


def test_reweighting_sparsifies_at_the_same_epsilon():
    """Candes-Wakin-Boyd: a reweighted round gives fewer nonzeros within the same constraints."""
    problem, _, _ = relu_layer(300, 40, 8, seed=12, rel_eps=0.15)
    plain = solve_admm(problem)
    again = solve_admm(problem, penalty=reweighted_penalty(plain.W), W0=plain.W, rho=plain.rho)
    assert plain.status == again.status == OPTIMAL
    assert again.nonzeros < plain.nonzeros
    assert problem.is_feasible(again.W)


def test_batched_lu_is_valid_with_several_threads():
    # torch 2.13.0 CPU: batched LU with 2 threads returned invalid pivots (lu_solve then
    # raised); the refit's KKT solve factors through lu_factor_batched, which must not.
    from solvers.refit import lu_factor_batched
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        K = torch.randn(12, 195, 195, dtype=torch.float64, generator=g)
        LU, piv, info = lu_factor_batched(K)
        b = torch.randn(12, 195, 1, dtype=torch.float64, generator=g)
        x = torch.linalg.lu_solve(LU, piv, b)
        assert torch.get_num_threads() == 2   # restored
    finally:
        torch.set_num_threads(threads)
    assert bool((info == 0).all())
    assert bool(((piv >= 1) & (piv <= 195)).all())
    assert float((K @ x - b).abs().max()) < 1e-8


# ---- the exact solve, property-based ---------------------------------------------------------
def neuron_reference(X, y, v, support):
    """One neuron's refit QP by cvxpy (Clarabel): the optimal active-set residual, or None
    where Clarabel does not report optimal."""
    import cvxpy as cp

    om = y > 0
    if not support.any():   # nothing to fit with: w is empty (cvxpy cannot build that program)
        return float(np.linalg.norm(y[om])) if bool(np.all(v[~om] >= 0)) else None
    w = cp.Variable(int(support.sum()))
    Xs = X[:, support]
    cons = [Xs[~om] @ w <= v[~om]] if (~om).any() else []
    qp = cp.Problem(cp.Minimize(cp.sum_squares(Xs[om] @ w - y[om])), cons)
    try:
        qp.solve(solver="CLARABEL")
    except cp.error.SolverError:
        return None
    return float(np.sqrt(max(qp.value, 0.0))) if qp.status == "optimal" else None


@settings(max_examples=40, deadline=None, derandomize=True)
@given(P=st.integers(5, 60), N=st.integers(1, 12), M=st.integers(1, 4), seed=st.integers(0, 2 ** 31),
       with_V=st.booleans(), bias=st.booleans(), blank=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
# a neuron with one active row and seven inputs: its float32 Hessian was indefinite at rounding
# level and the proximal steps diverged (weights of 3e5 to 1.8e18 returned as OPTIMAL)
@example(P=5, N=8, M=4, seed=1, with_V=False, bias=False, blank=True, dtype="float32")
@example(P=7, N=6, M=4, seed=27493137, with_V=True, bias=True, blank=False, dtype="float32")
def test_exact_solve_is_feasible_and_optimal(P, N, M, seed, with_V, bias, blank, dtype):
    """Random ReLU layers (cascade bounds, a ones column, blank rows, fewer rows than inputs,
    both dtypes): whenever the refit says OPTIMAL its weights meet every inequality and fit as
    well as cvxpy's optimum, neuron by neuron."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    if blank:
        X[: P // 2, : (N + 1) // 2] = 0.0
    if bias:
        X = np.hstack([X, np.ones((P, 1))])
    W_true = rng.standard_normal((M, X.shape[1]))
    Y = np.maximum(X @ W_true.T + 0.3 * rng.standard_normal((P, M)), 0)
    V = X @ W_true.T + 0.2 * rng.standard_normal((P, M)) if with_V else None
    if V is not None:   # keep the program feasible: W_true meets every inequality
        V = np.maximum(V, X @ W_true.T)
    support = rng.random((M, X.shape[1])) < 0.7
    problem = NetTrimProblem(X.astype(dtype), Y.astype(dtype), 1.0,
                             V=None if V is None else V.astype(dtype))
    res = refit(problem, support)
    if res.status != OPTIMAL:
        return   # nothing claimed (an ADMM cap on a hard instance); a wrong OPTIMAL is the bug
    W = as_np(res.W)
    assert np.all(W[~support] == 0)
    Xd, Yd = problem.X.astype(np.float64), problem.Y.astype(np.float64)
    Vd = np.zeros_like(Yd) if V is None else problem.V.astype(np.float64)
    y_max = float(np.abs(Yd).max())
    # the tolerance (feas_tol max|Y|, 0 when Y = 0) plus the rounding of the data's dtype
    u = np.finfo(dtype).eps
    tol = 1e-3 * y_max * (1 + 1e-6) + 8 * (X.shape[1] + 1) * u * (
        np.linalg.norm(Xd) * np.linalg.norm(W) + np.linalg.norm(Yd) + np.linalg.norm(Vd))
    for m in range(M):
        z = Xd @ W[m]
        off = Yd[:, m] <= 0
        assert np.all(z[off] <= Vd[off, m] + tol)                         # feasible
        ref = neuron_reference(Xd, Yd[:, m], Vd[:, m], support[m])
        if ref is not None:
            fit = float(np.linalg.norm((z - Yd[:, m])[~off]))
            assert fit <= ref * (1 + 1e-4) + 1e-4 * y_max                 # optimal


def test_least_distance_refuses_a_nonconvex_hessian():
    """The proximal steps' divergence guard: an H with an eigenvalue of -0.6 delta (what
    rounding does to a rank-deficient Gram matrix) makes the steps grow 2.5x each; the solve
    reports no certificate (None: the neuron goes to ADMM) instead of returning them."""
    delta = 1e-8
    a = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    e = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    H = torch.outer(a, a) - 0.6 * delta * torch.outer(e, e)
    L = torch.linalg.cholesky(H + delta * torch.eye(3, dtype=torch.float64))
    g = a * 0.7 + 1e-9 * e          # a rounding-sized part off the range of H
    X = torch.zeros(4, 3, dtype=torch.float64)
    w = refit_module._least_distance(X, torch.arange(3), torch.zeros(0, dtype=torch.long),
                                     torch.zeros(4, dtype=torch.float64), L, g, delta,
                                     torch.zeros(3, dtype=torch.float64))
    assert w is None
    # the same with H positive semidefinite converges
    L = torch.linalg.cholesky(torch.outer(a, a) + delta * torch.eye(3, dtype=torch.float64))
    w = refit_module._least_distance(X, torch.arange(3), torch.zeros(0, dtype=torch.long),
                                     torch.zeros(4, dtype=torch.float64), L, a * 0.7, delta,
                                     torch.zeros(3, dtype=torch.float64))
    assert w is not None and float(a @ w) == pytest.approx(0.7, rel=1e-6)


def test_exact_solve_removes_its_regularization():
    """Two nearly collinear inputs (cond(X_S) ~ 1e3, float64): the optimum needs weights of
    +-1000; the factor's regularization delta alone left a fit of 0.012 where cvxpy reaches
    7e-10; its proximal steps remove the bias."""
    rng = np.random.default_rng(0)
    x1, u, x3 = rng.standard_normal((3, 40))
    X = np.stack([x1, x1 + 1e-3 * u, x3], 1)
    Y = np.maximum(u + 0.5 * x3, 0)[:, None]
    res = refit(NetTrimProblem(X, Y, 1.0), np.ones((1, 3), dtype=bool))
    assert res.status == OPTIMAL and res.iterations == 0
    om = Y[:, 0] > 0
    assert np.linalg.norm((X @ res.W[0] - Y[:, 0])[om]) < 1e-6
    assert res.W[0, 1] == pytest.approx(1000.0, rel=1e-6)


def test_exact_solve_does_not_depend_on_the_scale_of_y():
    """Outputs a billion times the inputs' scale: still solved exactly (no ADMM iteration;
    before the least-distance program was normalised, its test r[k] < -1e-12 failed there)
    and optimal."""
    problem, support, W_l1 = relu_layer(200, 30, 6, seed=12)
    big = NetTrimProblem(problem.X, problem.Y * 1e9, 1.0)
    ref_value, _ = reference(problem, support)   # Clarabel fails at the large scale itself
    res = refit(big, support, W0=W_l1 * 1e9)
    assert res.status == OPTIMAL and res.iterations == 0
    assert big.residual(res.W) == pytest.approx(1e9 * ref_value, rel=1e-6)


def test_a_row_blind_to_the_support_with_a_negative_bound_is_infeasible():
    """Off Omega, a row on which every input of the support is zero reads 0 <= V: V < 0 makes
    the neuron's refit infeasible, reported as INFEASIBLE (not OPTIMAL, not a solver error)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 4))
    X[:10, :2] = 0.0
    Y = np.maximum(X @ rng.standard_normal((2, 4)).T, 0)
    V = np.zeros_like(Y)
    V[np.nonzero(Y[:10, 0] <= 0)[0][0], 0] = -1.0
    support = np.zeros((2, 4), dtype=bool)
    support[:, :2] = True
    assert refit(NetTrimProblem(X, Y, 1.0, V=V), support).status == INFEASIBLE


# ---- the ReLU-aware (soft) refit ---------------------------------------------------------------
def soft_reference(X, y, v, support):
    """One neuron's soft refit by cvxpy: the optimal value of 1/2 ||(Xw - y)_Omega||^2 +
    1/2 ||max(0, Xw - v) off Omega||^2 on the support, or None where Clarabel fails."""
    import cvxpy as cp

    om = y > 0
    if not support.any():
        return 0.5 * float(np.sum(y[om] ** 2) + np.sum(np.maximum(-v[~om], 0) ** 2))
    w = cp.Variable(int(support.sum()))
    Xs = X[:, support]
    terms = []
    if om.any():
        terms.append(0.5 * cp.sum_squares(Xs[om] @ w - y[om]))
    if (~om).any():
        terms.append(0.5 * cp.sum_squares(cp.pos(Xs[~om] @ w - v[~om])))
    qp = cp.Problem(cp.Minimize(sum(terms)))
    try:
        qp.solve(solver="CLARABEL")
    except cp.error.SolverError:
        return None
    return float(qp.value) if qp.status == "optimal" else None


@settings(max_examples=30, deadline=None, derandomize=True)
@given(P=st.integers(5, 60), N=st.integers(1, 12), M=st.integers(1, 4), seed=st.integers(0, 2 ** 31),
       with_V=st.booleans(), bias=st.booleans(), blank=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), warm=st.booleans())
# fewer active rows than inputs: a small gradient far from the optimum (certified wrongly by a
# gradient test; the Newton decrement is the certificate now)
@example(P=19, N=12, M=4, seed=1588712282, with_V=False, bias=True, blank=True, dtype="float64",
         warm=False)
# a neuron with no active row whose objective reaches 0 only geometrically (certified by the
# absolute floor of the certificate at the layer's scale, not the iterate's)
@example(P=24, N=2, M=4, seed=1386650197, with_V=False, bias=True, blank=False, dtype="float32",
         warm=True)
def test_soft_refit_matches_cvxpy(P, N, M, seed, with_V, bias, blank, dtype, warm):
    """refit_soft against cvxpy, neuron by neuron (cascade bounds, a ones column, blank rows,
    fewer rows than inputs, both dtypes, with and without a start): when it says OPTIMAL its
    objective is cvxpy's optimum."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    if blank:
        X[: P // 2, : (N + 1) // 2] = 0.0
    if bias:
        X = np.hstack([X, np.ones((P, 1))])
    W_true = rng.standard_normal((M, X.shape[1]))
    Y = np.maximum(X @ W_true.T + 0.3 * rng.standard_normal((P, M)), 0)
    V = X @ W_true.T + 0.2 * rng.standard_normal((P, M)) if with_V else None
    support = rng.random((M, X.shape[1])) < 0.7
    problem = NetTrimProblem(X.astype(dtype), Y.astype(dtype), 1.0,
                             V=None if V is None else V.astype(dtype))
    res = refit_soft(problem, support, W0=W_true if warm else None)
    assert res.status == OPTIMAL
    W = as_np(res.W).astype(np.float64)
    assert np.all(W[~support] == 0)
    Xd, Yd = problem.X.astype(np.float64), problem.Y.astype(np.float64)
    Vd = np.zeros_like(Yd) if V is None else problem.V.astype(np.float64)
    total = 0.0
    for m in range(M):
        ref = soft_reference(Xd, Yd[:, m], Vd[:, m], support[m])
        z = Xd @ W[m]
        om = Yd[:, m] > 0
        ours = 0.5 * (np.sum((z[om] - Yd[om, m]) ** 2)
                      + np.sum(np.maximum(z[~om] - Vd[~om, m], 0) ** 2))
        total += ours
        if ref is not None:
            scale = 0.5 * float(np.sum(Yd[:, m] ** 2) + np.sum(Vd[:, m] ** 2)) + 1e-12
            u = 1e-10 if dtype == "float64" else 1e-5
            assert ours <= ref + 1e-6 * abs(ref) + u * scale
    assert res.residual == pytest.approx(np.sqrt(2 * total), rel=1e-4,
                                         abs=(1e-9 if dtype == "float64" else 1e-5)
                                         * (np.linalg.norm(Yd) + np.linalg.norm(Vd)))


def test_soft_refit_bounds_the_post_relu_error_and_beats_the_linear_refit():
    """On a parallel ReLU layer the soft objective bounds the post-ReLU error from above and
    is at most the linear refit's residual on the pre-activations (the same support)."""
    problem, support, W_l1 = relu_layer(400, 30, 8, seed=3)
    X, Y = problem.X, problem.Y
    rng = np.random.default_rng(3)
    pre = X @ (W_l1 + 0.01 * rng.standard_normal(W_l1.shape)).T
    pre = np.where(Y > 0, Y, np.minimum(pre, 0))   # a pre-activation: Y on Omega, <= 0 off it
    soft = refit_soft(problem, support)
    linear = refit(NetTrimProblem(X, pre, 0.0, relu=False), support)
    assert soft.status == OPTIMAL and linear.status == OPTIMAL
    post = np.linalg.norm(np.maximum(X @ soft.W.T, 0) - Y)
    assert post <= soft.residual * (1 + 1e-9)
    assert soft.residual <= linear.residual * (1 + 1e-9)
    # and its own post-ReLU error is no worse than the linear refit's
    assert post <= np.linalg.norm(np.maximum(X @ linear.W.T, 0) - Y) * (1 + 1e-9)


def test_soft_refit_on_a_linear_layer_is_the_least_squares_refit():
    problem, support, _ = relu_layer(100, 10, 3, seed=4, relu=False)
    a, b = refit_soft(problem, support), refit(problem, support)
    np.testing.assert_allclose(a.W, b.W)


def test_soft_refit_checks_its_options():
    problem, support, _ = relu_layer(50, 6, 2, seed=5)
    with pytest.raises(ValueError, match="max_iter"):
        refit_soft(problem, support, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        refit_soft(problem, support, tol=-1.0)
    with pytest.raises(TypeError, match="problem"):
        refit_soft("not a problem", support)


def test_soft_refit_stops_at_its_work_cap_with_a_lower_objective(monkeypatch):
    """Past SOFT_MAX_WORK the Newton steps stop (MAX_ITER): the weights reached are kept, with
    an objective below the start's (each step descends) that still bounds the error."""
    soft_module = importlib.import_module("solvers.soft")
    problem, support, W_l1 = relu_layer(400, 30, 8, seed=3)
    full = refit_soft(problem, support, W0=W_l1)
    assert full.status == OPTIMAL and full.iterations > 1
    monkeypatch.setattr(soft_module, "SOFT_MAX_WORK", 0.0)
    monkeypatch.setattr(soft_module, "SOFT_MIN_STEPS", 1)
    capped = refit_soft(problem, support, W0=W_l1)
    assert capped.status == MAX_ITER and capped.iterations == 1

    def objective(W):
        Z = problem.X @ np.asarray(W).T
        return np.sqrt(np.sum(np.where(problem.Y > 0, Z - problem.Y, np.maximum(Z, 0)) ** 2))
    assert objective(capped.W) == pytest.approx(capped.residual, rel=1e-6)
    assert full.residual <= capped.residual * (1 + 1e-9) < objective(W_l1 * support)
    post = np.linalg.norm(np.maximum(problem.X @ np.asarray(capped.W).T, 0) - problem.Y)
    assert post <= capped.residual * (1 + 1e-9)


@pytest.mark.parametrize("with_V", [False, True])
def test_soft_refit_penalty_gathered_or_dense_and_updated_products(monkeypatch, with_V):
    """The penalty from its rows gathered one neuron at a time (GATHER_COST 0, the memory cap
    at its least), from one GEMM over all rows (GATHER_COST inf), and with X W^T recomputed
    at every step instead of updated by the steps: the same refit, certified."""
    soft_module = importlib.import_module("solvers.soft")
    problem, support, W_l1 = relu_layer(400, 30, 8, seed=11, with_V=with_V)
    runs = {}
    for name, settings in (("dense", dict(GATHER_COST=math.inf)),
                           ("gathered", dict(GATHER_COST=0, SOFT_ROWS_BYTES=1)),
                           ("fresh", dict(GATHER_COST=math.inf, SOFT_FRESH=1))):
        with monkeypatch.context() as mp:
            for key, value in settings.items():
                mp.setattr(soft_module, key, value)
            runs[name] = refit_soft(problem, support, W0=W_l1)
    ref = runs["dense"]
    assert ref.status == OPTIMAL and ref.iterations > 2
    for name in ("gathered", "fresh"):
        assert runs[name].status == OPTIMAL
        assert runs[name].residual == pytest.approx(ref.residual, rel=1e-9)
        np.testing.assert_allclose(runs[name].W, ref.W, atol=1e-6 * np.abs(ref.W).max())


def test_exact_solve_with_few_rows_at_a_time(monkeypatch):
    """The exact solve's rows enter a few at a time, the most violated first (EXACT_ADD of
    them, then doubling): the same certified optimum as with every violated row at once, and
    the random layers of the property test above still pass."""
    rng = np.random.default_rng(3)
    X = np.hstack([np.maximum(rng.standard_normal((400, 10)), 0), np.ones((400, 1))])
    W_true = rng.standard_normal((5, 11))
    Y = np.maximum(X @ W_true.T + 0.3 * rng.standard_normal((400, 5)), 0)
    support = rng.random((5, 11)) < 0.5
    problem = NetTrimProblem(X, Y, 1.0)
    whole = refit(problem, support)
    monkeypatch.setattr(refit_module, "EXACT_ADD", 2)
    few = refit(problem, support)
    assert whole.status == OPTIMAL and few.status == OPTIMAL
    np.testing.assert_allclose(as_np(few.W), as_np(whole.W), rtol=1e-6, atol=1e-8)
    inner = test_exact_solve_is_feasible_and_optimal.hypothesis.inner_test
    for seed in range(5):
        inner(P=60, N=8, M=3, seed=seed, with_V=seed % 2 == 1, bias=seed % 3 > 0,
              blank=seed % 4 == 0, dtype="float64" if seed < 3 else "float32")
