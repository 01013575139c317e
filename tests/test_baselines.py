"""nettrim.baselines: exact sparsity per grouping rule, SparseGPT against a brute-force OBS,
the criteria's defining properties, model-level pruning (unstructured, global, structured,
prune-then-retrain) and argument errors."""

import math

import pytest
import torch
from torch import nn

import nettrim
from nettrim import baselines as B
from nettrim.baselines import (BASELINES, global_magnitude, hptd, lobs, magnitude, obd,
                               prune_baseline, prune_structured, random_prune, sparsegpt,
                               unit_scores, wanda)

LAYER_METHODS = sorted(BASELINES)


def layer(P=120, N=24, M=10, *, seed=0, zeros=0.0, dtype=torch.float64):
    """A random layer input X (P, N), weight W (M, N) (a fraction `zeros` already zero), bias."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(P, N, generator=gen, dtype=dtype)
    X = X * torch.linspace(0.2, 3.0, N, dtype=dtype)  # columns of different norms
    W = torch.randn(M, N, generator=gen, dtype=dtype)
    if zeros:
        W[torch.rand(M, N, generator=gen) < zeros] = 0.0
    b = torch.randn(M, generator=gen, dtype=dtype)
    return X, W, b


def expected_zeros(count, s):
    return int(math.floor(s * count + 0.5))


# ---- exact sparsity ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", [m for m in LAYER_METHODS if m != "wanda"])
@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.8, 0.9, 0.95])
def test_layer_methods_hit_the_layer_count_exactly(method, s):
    X, W, b = layer(N=40, M=13)
    result = BASELINES[method](W, X, sparsity=s, bias=b)
    zeros = int((result.weight == 0).sum())
    assert zeros == expected_zeros(W.numel(), s)
    assert result.report["nonzeros"] == W.numel() - zeros
    assert result.report["sparsity"] == pytest.approx(zeros / W.numel())
    assert result.report["solver"] == method
    assert result.report["status"] == "OPTIMAL"
    assert torch.equal(result.bias, b)  # bias kept unchanged
    assert result.weight.shape == W.shape and result.weight.dtype == W.dtype


@pytest.mark.parametrize("s", [0.25, 0.5, 0.9])
def test_wanda_prunes_each_row_exactly_and_by_its_score(s):
    X, W, b = layer(N=40, M=13)
    result = wanda(W, X, sparsity=s, bias=b)
    pruned = result.weight == 0
    assert (pruned.sum(1) == expected_zeros(40, s)).all()
    score = W.abs() * X.norm(dim=0)
    for i in range(W.shape[0]):  # every pruned score <= every kept score, row by row
        assert score[i][pruned[i]].max() <= score[i][~pruned[i]].min()
    kept = ~pruned
    assert torch.equal(result.weight[kept], W[kept])  # no update


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [(2, 4), "1:4", (4, 8)])
def test_nm_pattern_is_exact_in_every_group(method, nm):
    X, W, b = layer(N=32, M=9)
    kwargs = {"blocksize": 16} if method == "sparsegpt" else {}
    result = BASELINES[method](W, X, nm=nm, bias=b, **kwargs)
    n, m = (int(v) for v in nm.split(":")) if isinstance(nm, str) else nm
    groups = (result.weight == 0).reshape(9, 32 // m, m).sum(2)
    assert (groups == n).all()
    assert result.report["sparsity"] == pytest.approx(n / m)


def test_global_magnitude_is_exact_overall_with_one_threshold():
    gen = torch.Generator().manual_seed(3)
    weights = {"a": torch.randn(7, 11, generator=gen), "b": 3 * torch.randn(5, 4, generator=gen),
               "c": 0.2 * torch.randn(9, 6, generator=gen)}
    out = global_magnitude(weights, sparsity=0.6)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in out.values())
    assert zeros == expected_zeros(total, 0.6)
    pruned = torch.cat([weights[k][out[k] == 0].abs() for k in weights])
    kept = torch.cat([weights[k][out[k] != 0].abs() for k in weights])
    assert pruned.max() <= kept.min()
    # the layers end at different sparsities (one threshold, not one fraction per layer)
    per_layer = {k: float((v == 0).float().mean()) for k, v in out.items()}
    assert per_layer["c"] > per_layer["a"] > per_layer["b"]


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_zeros_already_there_stay_zero(method):
    X, W, b = layer(N=32, M=10, zeros=0.2, seed=5)
    result = BASELINES[method](W, X, sparsity=0.5, bias=b)
    assert (result.weight[W == 0] == 0).all()
    if method == "wanda":
        assert ((result.weight == 0).sum(1) >= 16).all()
    else:
        assert int((result.weight == 0).sum()) == expected_zeros(W.numel(), 0.5)


# ---- criteria -----------------------------------------------------------------------------------
def test_magnitude_prunes_the_smallest_weights():
    X, W, b = layer()
    result = magnitude(W, X, sparsity=0.7, bias=b)
    pruned = result.weight == 0
    assert W[pruned].abs().max() <= W[~pruned].abs().min()
    assert torch.equal(result.weight[~pruned], W[~pruned])


def test_random_is_seeded_and_differs_between_seeds():
    X, W, b = layer()
    a = random_prune(W, X, sparsity=0.5, seed=1).weight
    assert torch.equal(a, random_prune(W, X, sparsity=0.5, seed=1).weight)
    assert not torch.equal(a == 0, random_prune(W, X, sparsity=0.5, seed=2).weight == 0)


def test_obd_linear_with_equal_column_norms_is_magnitude():
    X, W, b = layer(N=20)
    X = X / X.norm(dim=0)  # every column norm 1: H_jj equal, saliency ordered as |w|
    a = obd(W, X, sparsity=0.6, bias=b, relu=False).weight
    c = magnitude(W, X, sparsity=0.6, bias=b).weight
    assert torch.equal(a == 0, c == 0)


def test_obd_uses_the_relu_gate():
    # input 0 feeds only rows whose units are never active: its weights are pruned first
    X, W, b = layer(N=12, M=6)
    b = b.clone()
    b[:3] = -1e3  # rows 0..2 are never active: their Gauss-Newton diagonal is 0
    result = obd(W, X, sparsity=0.5, bias=b, relu=True)
    assert (result.weight[:3] == 0).all()


@pytest.mark.parametrize("s", [0.3, 0.8])  # both branches: OBS form and support solve
def test_lobs_kept_weights_are_the_obs_optimum(s):
    X, W, b = layer(N=30, M=8)
    damp = 0.01
    result = lobs(W, X, sparsity=s, bias=b, damp=damp)
    Wn = result.weight
    H = X.T @ X / X.shape[0]
    H = H + damp * H.diagonal().mean() * torch.eye(30, dtype=H.dtype)
    for i in range(8):
        S = Wn[i] != 0
        # optimality of min (w - w0)^T H (w - w0) over the support: H_S: (w - w0) = 0
        grad = H[S] @ (Wn[i] - W[i])
        assert grad.abs().max() < 1e-9
    # the selection is by w^2 / [H^-1]_jj
    sal = W ** 2 / torch.linalg.inv(H).diagonal()
    assert sal[Wn == 0].max() <= sal[Wn != 0].min()
    # better than magnitude on the layer's linear reconstruction
    err = lambda V: float((X @ (V - W).T).norm())  # noqa: E731
    assert err(Wn) < err(magnitude(W, X, sparsity=s).weight)


def test_obs_methods_beat_magnitude_on_correlated_inputs():
    gen = torch.Generator().manual_seed(7)
    Z = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    X = Z @ torch.randn(6, 30, generator=gen, dtype=torch.float64)  # strongly correlated
    X = X + 0.05 * torch.randn(300, 30, generator=gen, dtype=torch.float64)
    W = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    err = {m: BASELINES[m](W, X, sparsity=0.7, relu=False).report["relative_error"]
           for m in ("magnitude", "lobs", "sparsegpt")}
    assert err["lobs"] < 0.5 * err["magnitude"]
    assert err["sparsegpt"] < 0.75 * err["magnitude"]


# ---- SparseGPT against the brute-force OBS ------------------------------------------------------
def damped_h(X, damp):
    H = X.T @ X / X.shape[0]
    return H + damp * H.diagonal().mean() * torch.eye(X.shape[1], dtype=X.dtype)


def obs_reference(W, H, *, mask=None, sparsity=None, nm=None):
    """Sequential OBS, row by row, with the exact inverse Hessian of the columns still free.

    Column i is visited left to right; the free set is R = {i, ..., N-1}. A pruned w_i is
    removed with the OBS update w_R -= w_i / [H_R^-1]_ii * [H_R^-1]_{i,:} (which zeroes it);
    a kept w_i is frozen. The mask is given, or chosen as SparseGPT does with one block: the
    k least w^2 / [H_R^-1]_ii from the original weights, or per group of m columns (nm) from
    the current weights.
    """
    M, N = W.shape
    inv_R = [torch.linalg.inv(H[i:, i:]) for i in range(N)]
    d2 = torch.stack([inv_R[i][0, 0] for i in range(N)])  # [H_R^-1]_ii
    if mask is None and nm is None:
        scores = (W ** 2 / d2).flatten()
        k = int(math.floor(sparsity * M * N + 0.5))
        mask = torch.zeros(M * N, dtype=torch.bool)
        mask[torch.argsort(scores)[:k]] = True
        mask = mask.reshape(M, N)
    out = W.clone()
    chosen = torch.zeros(M, N, dtype=torch.bool) if mask is None else mask
    for r in range(M):
        w = W[r].clone()
        for i in range(N):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sc = w[i:i + m] ** 2 / d2[i:i + m]
                chosen[r, i + torch.argsort(sc)[:n]] = True
            if chosen[r, i]:
                Hinv = inv_R[i]
                w[i:] = w[i:] - w[i] / Hinv[0, 0] * Hinv[0, :]
                w[i] = 0.0
        out[r] = w
    return out, chosen


@pytest.mark.parametrize("s", [0.5, 0.8])
def test_sparsegpt_one_block_matches_brute_force_obs(s):
    X, W, _ = layer(P=80, N=16, M=5, seed=11)
    damp = 0.01
    ref, chosen = obs_reference(W, damped_h(X, damp), sparsity=s)
    got = sparsegpt(W, X, sparsity=s, blocksize=16, damp=damp).weight
    assert torch.equal(got == 0, chosen)
    assert (got - ref).abs().max() < 1e-6
    assert (got - ref).abs().max() < 1e-10  # in float64 it is exact up to round-off


@pytest.mark.parametrize("blocksize", [1, 3, 4, 16])
def test_sparsegpt_lazy_blocks_match_brute_force_obs_with_a_fixed_mask(blocksize):
    X, W, _ = layer(P=80, N=16, M=5, seed=12)
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(5, 16, generator=gen) < 0.6
    ref, _ = obs_reference(W, damped_h(X, 0.01), mask=mask)
    got = sparsegpt(W, X, mask=mask, blocksize=blocksize, damp=0.01).weight
    assert torch.equal(got == 0, mask)
    assert (got - ref).abs().max() < 1e-10


def test_sparsegpt_nm_matches_brute_force_obs():
    X, W, _ = layer(P=80, N=16, M=5, seed=13)
    ref, chosen = obs_reference(W, damped_h(X, 0.01), nm=(2, 4))
    got = sparsegpt(W, X, nm=(2, 4), blocksize=8, damp=0.01).weight
    assert torch.equal(got == 0, chosen)
    assert (got - ref).abs().max() < 1e-10


def test_sparsegpt_float32_input_stays_float32_and_close():
    X, W, b = layer(P=80, N=16, M=5, seed=14)
    a = sparsegpt(W, X, sparsity=0.5, bias=b).weight
    c = sparsegpt(W.float(), X.float(), sparsity=0.5, bias=b.float())
    assert c.weight.dtype == torch.float32 and c.bias.dtype == torch.float32
    assert (c.weight.double() - a).abs().max() < 1e-4


# ---- reports ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", LAYER_METHODS)
def test_report_keys_and_error_against_y(method):
    X, W, b = layer()
    Y = torch.relu(X @ W.T + b)
    result = BASELINES[method](W, X, sparsity=0.5, bias=b, Y=Y)
    keys = {"nonzeros", "total", "sparsity", "epsilon", "epsilon_abs", "relative_error",
            "status", "iterations", "seconds", "solver", "objective"}
    assert keys <= set(result.report)
    out = torch.relu(X @ result.weight.T + b)
    assert result.report["relative_error"] == pytest.approx(float((out - Y).norm() / Y.norm()))
    assert result.report["seconds"] >= 0
    # a different target changes the reported error
    other = BASELINES[method](W, X, sparsity=0.5, bias=b, Y=2 * Y).report["relative_error"]
    assert other != pytest.approx(result.report["relative_error"])


def test_numpy_inputs_are_accepted():
    X, W, b = layer()
    result = sparsegpt(W.numpy(), X.numpy(), sparsity=0.5)
    assert isinstance(result.weight, torch.Tensor)
    assert int((result.weight == 0).sum()) == expected_zeros(W.numel(), 0.5)


# ---- bad arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", LAYER_METHODS)
@pytest.mark.parametrize("bad, err, text", [
    (1.0, ValueError, r"sparsity must be in \[0, 1\)"),
    (-0.1, ValueError, r"sparsity must be in \[0, 1\)"),
    ("half", TypeError, "sparsity must be a number"),
    (None, TypeError, "sparsity is required"),
])
def test_bad_sparsity(method, bad, err, text):
    X, W, b = layer()
    with pytest.raises(err, match=text):
        BASELINES[method](W, X, sparsity=bad)


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_bad_shapes(method):
    X, W, b = layer()
    with pytest.raises(ValueError, match="W must be 2-D"):
        BASELINES[method](W[0], X, sparsity=0.5)
    with pytest.raises(ValueError, match=r"X must have shape \(P, N\) with N = 24"):
        BASELINES[method](W, X[:, :5], sparsity=0.5)
    with pytest.raises(ValueError, match=r"bias must have shape \(M,\) = \(10,\)"):
        BASELINES[method](W, X, sparsity=0.5, bias=b[:3])
    with pytest.raises(ValueError, match=r"Y must have shape \(P, M\)"):
        BASELINES[method](W, X, sparsity=0.5, Y=X)
    with pytest.raises(TypeError, match="W must be a numpy array or a torch tensor"):
        BASELINES[method](W.tolist(), X, sparsity=0.5)


@pytest.mark.parametrize("method", ["obd", "lobs", "sparsegpt", "wanda"])
def test_data_driven_methods_need_x(method):
    _, W, _ = layer()
    with pytest.raises(ValueError, match="X is required"):
        BASELINES[method](W, None, sparsity=0.5)


def test_bad_method_options():
    X, W, b = layer(N=24)
    with pytest.raises(ValueError, match=r"0 < n < m"):
        wanda(W, X, nm=(4, 2))
    with pytest.raises(ValueError, match="not a multiple of m=5"):
        sparsegpt(W, X, nm=(2, 5))
    with pytest.raises(ValueError, match="contradicts nm"):
        wanda(W, X, nm=(2, 4), sparsity=0.3)
    with pytest.raises(ValueError, match="nm must be a pair"):
        wanda(W, X, nm="2-4")
    with pytest.raises(ValueError, match="blocksize must be a positive int"):
        sparsegpt(W, X, sparsity=0.5, blocksize=0)
    with pytest.raises(ValueError, match="blocksize=6 must be a multiple of m=4"):
        sparsegpt(W, X, nm=(2, 4), blocksize=6)
    with pytest.raises(ValueError, match="damp must be a number >= 0"):
        lobs(W, X, sparsity=0.5, damp=-1)
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        sparsegpt(W, X, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at most one of nm and mask"):
        sparsegpt(W, X, nm=(2, 4), mask=torch.ones_like(W, dtype=torch.bool))
    with pytest.raises(TypeError, match="unexpected keyword"):
        magnitude(W, X, sparsity=0.5, damp=0.1)
    with pytest.raises(ValueError, match="not positive definite"):
        lobs(W, torch.zeros_like(X), sparsity=0.5, damp=0.0)


# ---- model level --------------------------------------------------------------------------------
def tiny_mlp(seed=0, sizes=(12, 20, 16, 4)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def calib(n=200, d=12, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_prune_baseline_prunes_every_layer_exactly(method):
    model = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = calib()
    result = prune_baseline(model, x, method, 0.6)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    linears = [m for m in result.model if isinstance(m, nn.Linear)]
    assert [r.name for r in result.report] == ["0", "2", "4"]
    for module, row in zip(linears, result.report):
        w = module.weight
        if method == "wanda":
            assert ((w == 0).sum(1) == expected_zeros(w.shape[1], 0.6)).all()
        else:
            assert int((w == 0).sum()) == expected_zeros(w.numel(), 0.6)
        assert row.nonzeros_after == int((w != 0).sum()) and row.solver == method
        assert 0 < row.relative_error < 1.5
    assert 0 < result.output_error < 2 and math.isfinite(result.output_error)
    assert result.options["method"] == method
    firsts = [ln.split()[0] for ln in result.table().splitlines() if ln.split()]
    assert [w for w in firsts if w in ("0", "2", "4")] == ["0", "2", "4"]


def test_sequential_sees_the_pruned_inputs():
    model = tiny_mlp()
    x = calib()
    seq = prune_baseline(model, x, "sparsegpt", 0.7, sequential=True)
    par = prune_baseline(model, x, "sparsegpt", 0.7, sequential=False)
    first = lambda r: r.model[0].weight  # noqa: E731
    assert torch.equal(first(seq), first(par))  # layer 1 sees the data either way
    assert not torch.equal(seq.model[2].weight, par.model[2].weight)
    # the sequential error report of layer 2 is against the original layer output
    assert seq.report[1].relative_error != pytest.approx(par.report[1].relative_error)


def test_prune_baseline_global_magnitude_and_options():
    model = tiny_mlp()
    x = calib()
    result = prune_baseline(model, x, "global_magnitude", 0.75)
    total = sum(r.total for r in result.report)
    zeros = sum(r.total - r.nonzeros_after for r in result.report)
    assert zeros == expected_zeros(total, 0.75)
    r = prune_baseline(model, x, "sparsegpt", None, method_options={"nm": (2, 4)})
    assert all(row.sparsity == pytest.approx(0.5) for row in r.report)
    r = prune_baseline(model, [(x[:100], None), (x[100:], None)], "wanda",
                       {"0": 0.5, "2": 0.25, "4": 0.0})
    assert [row.sparsity for row in r.report] == pytest.approx([0.5, 0.25, 0.0])
    r = prune_baseline(model, x, "magnitude", 0.5, layers=["2"], inplace=True)
    assert r.model is model and [row.name for row in r.report] == ["2"]
    assert int((model[0].weight == 0).sum()) == 0 and r.output_error > 0


def test_prune_baseline_bad_arguments():
    model = tiny_mlp()
    x = calib()
    with pytest.raises(ValueError, match="method must be one of"):
        prune_baseline(model, x, "nettrim", 0.5)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prune_baseline("model", x, "magnitude", 0.5)
    with pytest.raises(ValueError, match="sparsity names unknown layers"):
        prune_baseline(model, x, "magnitude", {"9": 0.5, "0": 0.5, "2": 0.5, "4": 0.5})
    with pytest.raises(ValueError, match="sparsity dict misses layers"):
        prune_baseline(model, x, "magnitude", {"0": 0.5})
    with pytest.raises(TypeError, match="one model-wide sparsity"):
        prune_baseline(model, x, "global_magnitude", {"0": 0.5})
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        prune_baseline(model, x, "lobs", 1.5)
    with pytest.raises(TypeError, match="re-iterable"):
        prune_baseline(model, iter([x]), "wanda", 0.5)


# ---- structured ---------------------------------------------------------------------------------
def test_structured_l1_removes_the_lowest_norm_units():
    model = tiny_mlp()
    x = calib()
    norms = model[0].weight.detach().abs().sum(1)
    result = prune_structured(model, x, "l1", 0.25)
    assert result.model[0].weight.shape == (15, 12)   # round(0.25 * 20) = 5 units gone
    assert result.model[2].weight.shape == (12, 15)   # round(0.25 * 16) = 4 units gone
    assert result.model[4].weight.shape == (4, 12)    # output layer: only its inputs shrink
    kept = torch.sort(norms, stable=True).indices[5:].sort().values
    assert torch.equal(result.model[0].weight, model[0].weight[kept])
    assert result.options["removed"] == {"0": 5, "2": 4}
    assert result.model(x).shape == (200, 4)
    assert [r.name for r in result.report] == ["0", "2"]
    assert result.report[0].sparsity == pytest.approx(0.25)


def test_structured_apoz_removes_dead_units_without_changing_the_output():
    model = tiny_mlp()
    with torch.no_grad():
        model[0].bias[[1, 7, 13]] = -1e4   # units that never fire: APoZ = 1
    x = calib()
    result = prune_structured(model, x, "apoz", 0.15)   # round(3.0) units of layer 0
    scores = unit_scores(model, x, "apoz", layers=["0"])["0"]
    assert torch.equal(torch.sort(scores).indices[:3].sort().values, torch.tensor([1, 7, 13]))
    assert result.model[0].weight.shape[0] == 17
    # dead units contribute nothing: layer 0 loses them with no change in the output
    only_first = prune_structured(model, x, "apoz", {"0": 0.15})
    assert (only_first.model(x) - model(x)).abs().max() < 1e-5
    assert only_first.output_error < 1e-6


def test_structured_taylor_ranks_disconnected_units_last():
    model = tiny_mlp()
    with torch.no_grad():
        model[2].weight[:, [0, 5]] = 0.0   # outputs of units 0 and 5 of layer 0 are unused
    x = calib()
    y = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(0))
    scores = unit_scores(model, [(x, y)], "taylor")
    assert scores["0"][[0, 5]].abs().max() == 0
    assert (scores["0"][[i for i in range(20) if i not in (0, 5)]] > 0).all()
    result = prune_structured(model, [(x, y)], "taylor", {"0": 0.1})
    assert result.model[0].weight.shape[0] == 18
    assert (result.model(x) - model(x)).abs().max() < 1e-5
    # without labels the model's own predictions serve as targets
    unlabeled = unit_scores(model, x, "taylor")
    assert unlabeled["0"][[0, 5]].abs().max() == 0


def test_structured_conv_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    x = torch.randn(30, 1, 8, 8)
    for criterion in ("l1", "apoz", "taylor"):
        result = prune_structured(model, x, criterion, 0.5)
        assert result.model[0].weight.shape == (3, 1, 3, 3)
        assert result.model[4].weight.shape == (5, 3 * 4 * 4)
        assert result.model(x).shape == (30, 5)


def test_structured_bad_arguments():
    model = tiny_mlp()
    x = calib()
    with pytest.raises(ValueError, match="criterion must be one of"):
        prune_structured(model, x, "l2", 0.5)
    with pytest.raises(ValueError, match="output layer"):
        prune_structured(model, x, "l1", 0.5, layers=["2", "4"])
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        prune_structured(model, x, "l1", 1.0)
    with pytest.raises(ValueError, match="unknown or unprunable"):
        prune_structured(model, x, "l1", {"4": 0.5})


# ---- prune, then retrain ------------------------------------------------------------------------
def test_hptd_global_keeps_its_zeros_through_fine_tuning():
    model = tiny_mlp()
    x = calib(400)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    result = hptd(model, (x, y), 0.8, epochs=2, rounds=2, scope="global", inputs=x)
    linears = [m for m in result.model if isinstance(m, nn.Linear)]
    total = sum(m.weight.numel() for m in linears)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    assert zeros == expected_zeros(total, 0.8)
    assert not any(hasattr(m, "weight_orig") for m in linears)
    assert len(result.options["losses"]) == 2 and len(result.options["losses"][0]) == 2
    assert result.options["method"] == "hptd:global"
    assert result.output_error > 0
    layerwise = hptd(model, (x, y), 0.5, epochs=1, scope="layer", inputs=x)
    for m in layerwise.model:
        if isinstance(m, nn.Linear):
            assert int((m.weight == 0).sum()) == expected_zeros(m.weight.numel(), 0.5)
    with pytest.raises(ValueError, match="scope must be"):
        hptd(model, (x, y), 0.5, scope="row")
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        hptd(model, (x, y), 0.5, rounds=0)


def test_registry_lists_the_methods():
    assert set(BASELINES) == {"random", "magnitude", "obd", "lobs", "sparsegpt", "wanda", "alps"}
    assert "global_magnitude" in B.METHODS
    assert B.STRUCTURED_CRITERIA == ("l1", "apoz", "taylor", "oracle", "infogain",
                                    "mean_activation")
    assert all(callable(f) for f in BASELINES.values())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_baseline_on_a_depthwise_conv_works_per_group(method):
    # each group of a grouped conv has its own inputs: the method runs per group, as Net-Trim's
    # program does (it raised a shape error on the unfolded all-channel input)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(16, 2, 6, 6)
    res = nettrim.prune_baseline(model, x, method, 0.5)
    dw = dict(res.model.named_modules())["2"].weight
    assert dw.shape == (8, 1, 3, 3)
    row = next(r for r in res.report if r.name == "2")
    assert abs(row.sparsity - 0.5) < 0.1 and 0.0 <= row.relative_error < 1.0
    assert int((dw == 0).sum()) == row.total - row.nonzeros_after
