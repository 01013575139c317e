"""N:M sparsity for Net-Trim (nettrim.layer.nm): the pattern in every group, the exact refit on
the chosen support, the error against SparseGPT's 2:4, the model driver and argument errors."""

import math

import pytest
import torch

import nettrim
from nettrim.baselines import sparsegpt, wanda
from nettrim.layer.nm import nm_pattern
from test_alps import correlated_layer


def layer(seed, P=500, N=32, M=12):
    """Correlated post-ReLU inputs (test_alps's layer) of a smaller size."""
    return correlated_layer(seed, P=P, N=N, M=M, rank=6)


def zeros_per_group(weight, m):
    return (weight == 0).reshape(weight.shape[0], weight.shape[1] // m, m).sum(2)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_every_group_has_the_pattern(relu, pattern):
    X, W, b = layer(0)
    Y = X @ W.T + b
    result = nettrim.prune_layer(X, torch.relu(Y) if relu else Y, sparsity=pattern, relu=relu,
                                 bias=True, W0=W, b0=b)
    n, m = (int(v) for v in pattern.split(":"))
    assert (zeros_per_group(result.weight, m) == n).all()
    assert result.report["nm"] == (n, m)
    assert result.report["sparsity"] == pytest.approx(n / m)
    assert result.report["status"] in ("OPTIMAL", "OPTIMAL_INACCURATE")
    assert result.bias is not None and result.bias.shape == (12,)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("relu", [True, False])
def test_error_no_worse_than_sparsegpt_2_4(seed, relu):
    X, W, b = layer(seed)
    Y = X @ W.T + b
    Y = torch.relu(Y) if relu else Y
    ours = nettrim.prune_layer(X, Y, sparsity="2:4", relu=relu, bias=True, W0=W, b0=b)
    theirs = sparsegpt(W, X, nm="2:4", bias=b, relu=relu, Y=Y)
    assert ours.report["relative_error"] <= theirs.report["relative_error"]
    assert ours.report["relative_error"] < wanda(W, X, nm="2:4", bias=b, relu=relu,
                                                 Y=Y).report["relative_error"]


def test_linear_refit_is_the_least_squares_fit_on_the_support():
    X, W, b = layer(3)
    Y = X @ W.T + b
    result = nettrim.prune_layer(X, Y, sparsity="2:4", relu=False, bias=True, W0=W, b0=b)
    ones = torch.ones(X.shape[0], 1, dtype=X.dtype)
    for i in range(W.shape[0]):
        S = result.weight[i] != 0
        A = torch.cat([X[:, S], ones], 1)
        exact = torch.linalg.lstsq(A, Y[:, i:i + 1]).solution.flatten()
        assert torch.allclose(result.weight[i][S], exact[:-1], atol=1e-6)
        assert result.bias[i] == pytest.approx(float(exact[-1]), abs=1e-6)


def test_relu_layer_reports_the_program_it_kept():
    X, W, b = layer(4)
    Y = torch.relu(X @ W.T + b)
    auto = nettrim.prune_layer(X, Y, sparsity="2:4", bias=True, W0=W, b0=b)
    relu_only = nettrim.prune_layer(X, Y, sparsity="2:4", bias=True, W0=W, b0=b, program="relu")
    assert auto.report["program"] in ("relu", "linear-refit")
    assert set(auto.report["program_errors"]) == {"relu", "linear-refit"}
    assert relu_only.report["program"] == "relu"
    assert auto.report["relative_error"] <= relu_only.report["relative_error"] * (1 + 1e-9)
    # the ReLU program's refit keeps its inequalities (parallel: X W^T + b <= 0 off Omega)
    out = X @ relu_only.weight.T + relu_only.bias
    assert float(out[Y <= 0].max()) <= 1e-3 * float(Y.max())


def test_prune_model_cascade_and_parallel():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    for mode in ("parallel", "cascade"):
        result = nettrim.prune(model, x, sparsity="2:4", mode=mode)
        for name in ("0", "2"):
            weight = dict(result.model.named_modules())[name].weight
            assert (zeros_per_group(weight, 4) == 2).all()
        assert [r.sparsity for r in result.report] == [0.5, 0.5]
        assert result.options["sparsity"] == "2:4"
    mixed = nettrim.prune(model, x, sparsity={"0": "2:4", "2": 0.25})
    assert (zeros_per_group(mixed.model[0].weight, 4) == 2).all()


def test_bad_patterns_are_clear_errors():
    with pytest.raises(ValueError, match="N:M string like '2:4'"):
        nm_pattern("2-4")
    with pytest.raises(ValueError, match="0 < n < m"):
        nm_pattern("4:4")
    assert nm_pattern(0.5) is None and nm_pattern("1:8") == (1, 8)
    X, W, b = layer(5, N=30)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        nettrim.prune_layer(X, X @ W.T, sparsity="2:4", relu=False, W0=W)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    x = torch.randn(100, 16)
    with pytest.raises(ValueError, match="layer '2'.*groups of 16"):   # before solving anything
        nettrim.prune(model, x, sparsity="2:16")
    with pytest.raises(ValueError, match="per-layer pattern"):
        nettrim.prune(model, x, sparsity="2:4", scope="global")
    with pytest.raises(ValueError, match="per-layer pattern"):
        nettrim.prune(model, x, sparsity="2:4", structured=True)
