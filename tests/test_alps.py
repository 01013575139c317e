"""nettrim.baselines.alps: the exact count and N:M pattern, the refit's optimality on its
support, error against magnitude and SparseGPT on correlated layers, determinism, options."""

import math

import pytest
import torch

import nettrim
from nettrim.baselines import BASELINES, alps, magnitude, prune_baseline, sparsegpt, wanda


def correlated_layer(seed, P=400, N=48, M=16, rank=8):
    """Inputs that lie near a low-dimensional subspace (the regime where the second-order
    methods beat magnitude), post-ReLU like a hidden layer's."""
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(P, rank, generator=gen, dtype=torch.float64)
    X = torch.relu(Z @ torch.randn(rank, N, generator=gen, dtype=torch.float64)
                   + 0.1 * torch.randn(P, N, generator=gen, dtype=torch.float64))
    W = torch.randn(M, N, generator=gen, dtype=torch.float64) / math.sqrt(N)
    b = 0.1 * torch.randn(M, generator=gen, dtype=torch.float64)
    return X, W, b


@pytest.mark.parametrize("s", [0.3, 0.5, 0.7, 0.9])
def test_alps_keeps_exactly_the_count(s):
    X, W, b = correlated_layer(0)
    result = alps(W, X, sparsity=s, bias=b)
    assert int((result.weight == 0).sum()) == math.floor(s * W.numel() + 0.5)
    assert torch.equal(result.bias, b)
    assert result.report["solver"] == "alps" and result.report["status"] == "OPTIMAL"
    assert result.report["iterations"] >= 1


@pytest.mark.parametrize("nm", [(2, 4), "1:4", "4:8"])
def test_alps_nm_pattern_in_every_group(nm):
    X, W, b = correlated_layer(1)
    result = alps(W, X, nm=nm, bias=b)
    n, m = (int(v) for v in nm.split(":")) if isinstance(nm, str) else nm
    groups = (result.weight == 0).reshape(W.shape[0], W.shape[1] // m, m).sum(2)
    assert (groups == n).all()
    assert result.report["nm"] == (n, m)


def test_alps_refit_is_the_least_squares_optimum_on_its_support():
    """The CG refit minimises tr((W - W0) H (W - W0)^T) on the final support: each row's kept
    weights solve H_SS w_S = (H w0)_S (H the damped Gram matrix)."""
    X, W, b = correlated_layer(2)
    result = alps(W, X, sparsity=0.6, relu=False)
    H = X.T @ X
    H = H + 0.01 * H.diagonal().mean() * torch.eye(X.shape[1], dtype=H.dtype)
    for i in range(W.shape[0]):
        S = result.weight[i] != 0
        exact = torch.linalg.solve(H[S][:, S], (H @ W[i])[S])
        assert torch.allclose(result.weight[i][S], exact, rtol=1e-5, atol=1e-8)
    assert result.report["reconstruction"] <= result.report["reconstruction_before_refit"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("s", [0.5, 0.7, 0.9])
def test_alps_beats_magnitude_and_matches_sparsegpt_on_correlated_layers(seed, s):
    X, W, b = correlated_layer(seed)
    err = {f.__name__: f(W, X, sparsity=s, bias=b, relu=False).report["relative_error"]
           for f in (magnitude, sparsegpt, alps)}
    assert err["alps"] < err["magnitude"]
    # SparseGPT's OBS sweep is one greedy pass; ALPS optimizes the support: at or below it
    assert err["alps"] <= err["sparsegpt"] * (1 + 1e-9)


def test_alps_nm_error_below_wanda_and_sparsegpt():
    X, W, b = correlated_layer(3)
    err = {f.__name__: f(W, X, nm="2:4", bias=b, relu=False).report["relative_error"]
           for f in (magnitude, wanda, sparsegpt, alps)}
    assert err["alps"] < err["magnitude"] and err["alps"] < err["wanda"]
    assert err["alps"] <= err["sparsegpt"] * (1 + 1e-9)


def test_alps_is_deterministic_and_keeps_dtype():
    X, W, b = correlated_layer(4)
    first = alps(W.float(), X.float(), sparsity=0.8, bias=b.float())
    second = alps(W.float(), X.float(), sparsity=0.8, bias=b.float())
    assert torch.equal(first.weight, second.weight)
    assert first.weight.dtype == torch.float32


def test_alps_rho_schedule_settles_the_support():
    """The schedule raises rho until the support stops moving: the run ends before the cap
    with a larger rho than it started with."""
    X, W, b = correlated_layer(5)
    result = alps(W, X, sparsity=0.7)
    assert result.report["iterations"] < 300
    assert result.report["rho"] > 0.1


def test_alps_zero_inputs_and_zero_weights():
    X, W, b = correlated_layer(6)
    W = W.clone()
    W[:, :10] = 0.0                       # already zero: stay zero, counted as removed
    result = alps(W, X, sparsity=0.5)
    assert (result.weight[:, :10] == 0).all()
    assert int((result.weight == 0).sum()) == W.numel() // 2
    blank = alps(W, torch.zeros_like(X), sparsity=0.5)   # X = 0: any support fits exactly
    assert torch.isfinite(blank.weight).all()


def test_alps_bad_options():
    X, W, b = correlated_layer(7)
    with pytest.raises(ValueError, match="rho must be a positive number"):
        alps(W, X, sparsity=0.5, rho=0.0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 0"):
        alps(W, X, sparsity=0.5, max_iter=-1)
    with pytest.raises(ValueError, match="contradicts nm"):
        alps(W, X, sparsity=0.3, nm=(2, 4))
    with pytest.raises(ValueError, match="X is required"):
        alps(W, None, sparsity=0.5)
    with pytest.raises(TypeError, match="sparsity is required"):
        alps(W, X)


def test_alps_in_the_registry_and_prune_baseline():
    assert BASELINES["alps"] is alps and nettrim.BASELINES["alps"] is alps
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 4))
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(1))
    result = prune_baseline(model, x, "alps", 0.5)
    for name in ("0", "2"):
        weight = dict(result.model.named_modules())[name].weight
        assert int((weight == 0).sum()) == weight.numel() // 2
    nm = prune_baseline(model, x, "alps", None, method_options={"nm": "2:4"})
    groups = (nm.model[0].weight == 0).reshape(20, 3, 4).sum(2)
    assert (groups == 2).all()
