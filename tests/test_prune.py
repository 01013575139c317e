"""nettrim.capture / prune / surgery on tiny models (an MLP and a small CNN)."""

import copy
import dataclasses
import functools
import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nettrim
from nettrim.capture import capture_cascade, layer_matrix
from nettrim.layer import PROGRAM_MARGIN, SPARSITY_TOL
from solvers import MAX_ITER, OPTIMAL, SUCCESS
from solvers.refit import refit as refit_fn


def mlp(seed=0, sizes=(12, 24, 16, 4), normalize=False):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    if normalize:  # spectral norm <= 1 per layer: the setting of the paper's error bounds
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    m.weight /= torch.linalg.matrix_norm(m.weight, 2)
    return model


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3))


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ---- capture -----------------------------------------------------------------------------------
def test_capture_records_and_removes_hooks():
    model = mlp()
    x = torch.randn(300, 12)
    data = nettrim.capture(model, x)
    assert no_hooks(model)
    assert list(data) == ["0", "2", "4"]
    assert [d.activation for d in data.values()] == ["relu", "relu", None]
    d0 = data["0"]
    assert torch.equal(d0.X, x)
    assert torch.allclose(d0.pre, model[0](x), atol=1e-6)
    assert torch.allclose(d0.post, torch.relu(d0.pre))
    assert torch.allclose(data["2"].X, d0.post, atol=1e-6)


def test_hooks_removed_when_forward_fails():
    model = mlp()
    with pytest.raises(RuntimeError):
        nettrim.capture(model, torch.randn(10, 5))  # wrong width: the forward pass raises
    assert no_hooks(model)


def test_capture_streams_batches_like_one_tensor():
    model = mlp()
    x = torch.randn(250, 12)
    whole = nettrim.capture(model, x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(250)),
                                         batch_size=64)
    streamed = nettrim.capture(model, loader)
    for name in whole:
        assert torch.allclose(whole[name].X, streamed[name].X)
        assert torch.allclose(whole[name].post, streamed[name].post, atol=1e-6)


@pytest.mark.parametrize("conv", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 0)),
    dict(kernel_size=3, dilation=2, padding="same", bias=False),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
])
def test_conv_unfold_round_trip(conv):
    torch.manual_seed(1)
    layer = nn.Conv2d(3, 5, **conv)
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.randn(4, 3, 9, 8)
    data = nettrim.capture(model, x)["0"]
    W = layer_matrix(layer)
    out = data.X @ W.T + (0 if layer.bias is None else layer.bias)
    assert (out - data.pre).abs().max() < 1e-5
    expected = layer(x).permute(0, 2, 3, 1).reshape(-1, 5)
    assert (data.pre - expected).abs().max() < 1e-5
    assert data.weight_shape == tuple(layer.weight.shape) and data.kind == "conv2d"


def test_max_samples_is_seeded_and_bounded():
    model = cnn()
    x = torch.randn(20, 1, 8, 8)
    a = nettrim.capture(model, x, max_samples=100, seed=3)
    b = nettrim.capture(model, list(x.split(7)), max_samples=100, seed=3)
    c = nettrim.capture(model, x, max_samples=100, seed=4)
    assert a["0"].X.shape == (100, 9) and a["0"].rows_seen == 20 * 64
    assert a["6"].X.shape == (20, 24) and a["6"].rows_seen == 20  # fewer rows than the cap
    assert not torch.equal(a["0"].X, c["0"].X)
    # the same seed keeps the same rows even when the batches are cut differently
    assert torch.equal(a["0"].X, b["0"].X)


def test_activation_detection_and_override():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x):
            h = F.relu(self.a(x))
            h = self.b(h)
            return self.c(h.relu() + 0 * h)  # b's output is also used linearly

    model = Functional()
    assert nettrim.detect_activations(model) == {"a": "relu", "b": None, "c": None}
    data = nettrim.capture(model, torch.randn(8, 4), activations={"c": None})
    assert data["a"].activation == "relu" and data["b"].activation is None
    with pytest.raises(ValueError, match="activations"):
        nettrim.capture(model, torch.randn(8, 4), activations={"a": "sigmoid"})


def test_capture_rejects_bad_input():
    model = mlp()
    with pytest.raises(TypeError, match="inputs"):
        nettrim.capture(model, "data.npz")
    with pytest.raises(ValueError, match="NaN/Inf"):
        nettrim.capture(model, torch.full((4, 12), float("nan")))
    with pytest.raises(ValueError, match="max_samples"):
        nettrim.capture(model, torch.randn(4, 12), max_samples=0)
    with pytest.raises(ValueError, match="not a module"):
        nettrim.capture(model, torch.randn(4, 12), layers=["fc9"])
    with pytest.raises(TypeError, match="ConvTranspose2d"):
        nettrim.prunable_layers(nn.Sequential(nn.ConvTranspose2d(2, 2, 3)), layers=["0"])
    with pytest.raises(ValueError, match="no prunable layers"):
        nettrim.prunable_layers(nn.Sequential(nn.Embedding(5, 2)))


def test_cascade_capture_pairs_rows_under_shuffling():
    model = mlp()
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned[0].weight[:, :6] = 0
    x = torch.randn(200, 12)
    loader = torch.utils.data.DataLoader(x, batch_size=32, shuffle=True)
    data = capture_cascade(model, pruned, loader, "2")
    # outputs from the original, inputs from the pruned copy, row by row the same samples
    originals = torch.relu(model[0](x)) @ model[2].weight.T + model[2].bias
    hats = torch.relu(pruned[0](x))
    for row_hat, row_pre in zip(data.X[:20], data.pre[:20]):
        i = int(torch.argmin((hats - row_hat).abs().sum(1)))
        assert torch.allclose(originals[i], row_pre, atol=1e-5)


# ---- prune_layer -------------------------------------------------------------------------------
def planted_layer(P=400, N=30, M=8, seed=0, density=1.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, N, generator=g, dtype=torch.float64)
    W = torch.randn(M, N, generator=g, dtype=torch.float64)
    W *= torch.rand(M, N, generator=g, dtype=torch.float64) < density
    b = 0.1 * torch.randn(M, generator=g, dtype=torch.float64)
    return X, W, b, torch.relu(X @ W.T + b)


def test_prune_layer_reports_and_meets_epsilon():
    X, W, b, Y = planted_layer()
    res = nettrim.prune_layer(X, Y, epsilon=0.1, bias=True, W0=W, b0=b)
    r = res.report
    assert res.weight.shape == W.shape and res.bias.shape == b.shape
    # with the default refit the l1 solve may stop once its support settles (OPTIMAL_INACCURATE);
    # either success status means the returned weights meet the program
    assert r["status"] in SUCCESS
    assert r["relative_error"] <= 0.1 * (1 + 1e-3) + 1e-6
    assert r["nonzeros"] == int((res.weight != 0).sum()) and r["total"] == W.numel()
    assert 0 < r["sparsity"] < 1
    assert math.isclose(r["epsilon_abs"], 0.1 * float(torch.linalg.vector_norm(Y)))
    absolute = nettrim.prune_layer(X.numpy(), Y.numpy(), epsilon=r["epsilon_abs"], absolute=True,
                                   bias=True)
    assert absolute.report["sparsity"] == pytest.approx(r["sparsity"], abs=0.02)


def test_bias_is_not_penalized_by_default():
    X, W, b, Y = planted_layer(seed=2)
    b = b + 3.0
    Y = torch.relu(X @ W.T + b)
    # the l1 program itself (a refit re-solves the bias freely in both cases)
    plain = dict(refit=False, reweight=0)
    free = nettrim.prune_layer(X, Y, epsilon=0.3, bias=True, **plain)
    taxed = nettrim.prune_layer(X, Y, epsilon=0.3, bias=True, penalize_bias=True, **plain)
    assert free.bias.abs().sum() > taxed.bias.abs().sum()


@pytest.mark.parametrize("target", [0.5, 0.7, 0.85])
def test_sparsity_mode_lands_on_target(target):
    X, W, b, Y = planted_layer(P=300, N=40, M=10, seed=1, density=0.5)
    res = nettrim.prune_layer(X, Y, sparsity=target, bias=True, W0=W, b0=b)
    assert abs(res.report["sparsity"] - target) <= 0.01
    assert res.report["target_sparsity"] == target and res.report["solves"] >= 1


def test_prune_layer_bad_arguments():
    X, W, b, Y = planted_layer(P=50, N=5, M=3)
    with pytest.raises(ValueError, match="exactly one"):
        nettrim.prune_layer(X, Y)
    with pytest.raises(ValueError, match="exactly one"):
        nettrim.prune_layer(X, Y, epsilon=0.1, sparsity=0.5)
    with pytest.raises(ValueError, match="row counts"):
        nettrim.prune_layer(X, Y[:10], epsilon=0.1)
    with pytest.raises(ValueError, match="sparsity"):
        nettrim.prune_layer(X, Y, sparsity=1.0)
    with pytest.raises(ValueError, match="solver"):
        nettrim.prune_layer(X, Y, epsilon=0.1, solver="sgd")
    with pytest.raises(ValueError, match="W0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, W0=W[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        nettrim.prune_layer(X * float("nan"), Y, epsilon=0.1)
    with pytest.raises(ValueError, match="negative"):
        nettrim.prune_layer(X, Y - 1, epsilon=0.1)


# ---- prune: bounds, copies, write-back ---------------------------------------------------------
def layer_chain(model):
    return [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_parallel_bound_on_final_outputs():
    """Parallel: e_L <= sum_l eps_l * prod_{k>l} ||W-hat_k||_2 (sum of the epsilons when the
    pruned layers are non-expansive), checked on the network's final outputs."""
    model = mlp(normalize=True)
    x = torch.randn(400, 12)
    res = nettrim.prune(model, x, epsilon=0.05, mode="parallel")
    pruned = layer_chain(res.model)
    eps = [r.epsilon_abs for r in res.report]
    bound = 0.0
    for layer, e in enumerate(eps):
        gain = math.prod(float(torch.linalg.matrix_norm(m.weight, 2)) for m in pruned[layer + 1:])
        bound += e * gain
    err = float(torch.linalg.vector_norm(res.model(x) - model(x)))
    assert err <= bound * (1 + 1e-3) + 1e-6
    assert all(r.status in SUCCESS for r in res.report)


def test_cascade_bound_on_final_outputs():
    """Cascade: ||Y-hat_L - Y_L||_F <= eps_1 sqrt(prod_{l>=2} gamma_l) for a network whose
    original layers are non-expansive (spectral norm <= 1), as in the paper's theorem."""
    model = mlp(normalize=True, seed=3)
    x = torch.randn(400, 12)
    gamma = 1.2
    res = nettrim.prune(model, x, epsilon=0.05, mode="cascade", gamma=gamma, kappa=0.8)
    err = float(torch.linalg.vector_norm(res.model(x) - model(x)))
    eps1 = res.report[0].epsilon_abs
    bound = eps1 * math.sqrt(gamma ** (len(res.report) - 1))
    assert err <= bound * (1 + 1e-3)
    # later layers' epsilons come from gamma, not from the user's 0.05
    assert res.options["gamma"] == gamma and res.report[1].epsilon != pytest.approx(0.05)


def test_input_model_unchanged_and_state_dict_loads_strictly():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nettrim.prune(model, torch.randn(300, 12), epsilon=0.2, mode="cascade")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.model is not model
    fresh = mlp(seed=9)
    fresh.load_state_dict(res.model.state_dict(), strict=True)
    for a, b in zip(layer_chain(fresh), layer_chain(res.model)):
        assert torch.equal(a.weight, b.weight)
    assert sum(r.nonzeros_after for r in res.report) < sum(r.nonzeros_before for r in res.report)
    for r, m in zip(res.report, layer_chain(res.model)):
        assert r.nonzeros_after == int((m.weight != 0).sum())
        assert r.sparsity == pytest.approx(1 - r.nonzeros_after / r.total)


def test_inplace_and_masks():
    model = mlp()
    x = torch.randn(300, 12)
    res = nettrim.prune(model, x, epsilon=0.2, inplace=True, masks=True)
    assert res.model is model
    lin = model[0]
    assert hasattr(lin, "weight_mask") and torch.equal(lin.weight_mask, (lin.weight != 0).float())
    # the mask holds zeros through an optimiser step
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).pow(2).sum().backward()
    opt.step()
    assert torch.equal(lin.weight == 0, lin.weight_mask == 0)
    nettrim.remove_masks(model)
    mlp(seed=5).load_state_dict(model.state_dict(), strict=True)


def test_cnn_parallel_prune_keeps_shapes_and_dtype():
    model = cnn().double()
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    res = nettrim.prune(model, x, epsilon=0.1, max_samples=600)
    for a, b in zip(layer_chain(model), layer_chain(res.model)):
        assert a.weight.shape == b.weight.shape and b.weight.dtype == torch.float64
    assert res.report[0].kind == "conv2d" and res.report[-1].kind == "linear"
    assert 0 < res.output_error < 1
    assert "layer" in res.table() and res.to_dict()["layers"][0]["name"] == "0"


def test_sparsity_mode_in_prune_with_dict():
    model = mlp()
    x = torch.randn(300, 12)
    targets = {"0": 0.6, "2": 0.8, "4": 0.5}
    res = nettrim.prune(model, x, sparsity=targets)
    for r in res.report:
        assert abs(r.sparsity - targets[r.name]) <= 0.01


def test_prune_warns_on_max_iter_and_strict_raises():
    model = mlp()
    x = torch.randn(200, 12)
    with pytest.warns(nettrim.PruningWarning, match="layer '0'"):
        nettrim.prune(model, x, epsilon=0.05, solver_options={"max_iter": 3})
    with pytest.raises(nettrim.PruningError, match="layer '0'"):
        nettrim.prune(model, x, epsilon=0.05, solver_options={"max_iter": 3}, strict=True)


def test_prune_bad_arguments():
    model = mlp()
    x = torch.randn(50, 12)
    with pytest.raises(ValueError, match="mode"):
        nettrim.prune(model, x, epsilon=0.1, mode="serial")
    with pytest.raises(ValueError, match="kappa"):
        nettrim.prune(model, x, epsilon=0.1, kappa=0)
    with pytest.raises(ValueError, match="gamma"):
        nettrim.prune(model, x, epsilon=0.1, gamma=0.5)
    with pytest.raises(TypeError, match="re-iterable"):
        nettrim.prune(model, iter([x]), epsilon=0.1, mode="cascade")
    with pytest.raises(ValueError, match="unknown layers"):
        nettrim.prune(model, x, epsilon={"fc1": 0.1})
    with pytest.raises(TypeError, match="nn.Module"):
        nettrim.prune(lambda t: t, x, epsilon=0.1)
    with pytest.raises(ValueError, match="ignore"):
        nettrim.prune(model, x, epsilon=0.1, ignore=["nope"])


# ---- surgery -----------------------------------------------------------------------------------
def test_compaction_keeps_outputs_and_shrinks_pruned_cnn():
    model = cnn(seed=4)
    with torch.no_grad():  # a dead conv channel, a channel nobody reads, a dead neuron
        model[0].weight[1] = 0
        model[0].bias[1] = 0
        model[3].weight[:, 2] = 0
        model[6].weight[3] = 0
        model[6].bias[3] = 0
    x = torch.randn(16, 1, 8, 8)
    out = nettrim.compact(model, x)
    assert out.removed == {"0": 2, "6": 1}
    assert out.params_after < out.params_before == nettrim.count_parameters(model)
    assert out.max_abs_diff < 1e-5
    assert (out.model(x) - model(x)).abs().max() < 1e-5
    assert out.latency_before_ms > 0 and out.latency_after_ms > 0
    assert "parameters" in out.summary()


def test_compaction_after_netrim_on_mlp():
    model = mlp(sizes=(12, 40, 16, 4), seed=6)
    x = torch.randn(300, 12)
    res = nettrim.prune(model, x, sparsity={"0": 0.5, "2": 0.97, "4": 0.3})
    out = nettrim.compact(res.model, x)
    assert (out.model(x) - res.model(x)).abs().max() < 1e-5
    if out.removed:
        assert out.params_after < out.params_before


def test_remove_units_and_masks_helpers():
    model = mlp()
    with pytest.raises(ValueError, match="last layer"):
        nettrim.remove_units(model, "4", [0, 1])
    with pytest.raises(ValueError, match="keep"):
        nettrim.remove_units(model, "0", [99])
    nettrim.remove_units(model, "0", [0, 2, 5])
    assert model[0].out_features == 3 and model[2].in_features == 3
    with pytest.raises(TypeError, match="does not run on example_input"):
        nettrim.compact(nn.Module(), torch.zeros(1))
    sd = {"w_orig": torch.ones(2), "w_mask": torch.tensor([1.0, 0.0]), "b": torch.ones(1)}
    assert torch.equal(nettrim.fold_pruning_state_dict(sd)["w"], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="_mask"):
        nettrim.fold_pruning_state_dict({"w_orig": torch.ones(2)})
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="shape"):
        nettrim.set_layer_weight(lin, torch.zeros(3, 3))


def test_refit_and_reweight_flags():
    X, W, b, Y = planted_layer(P=300, N=30, M=6, seed=4, density=0.4)
    plain = nettrim.prune_layer(X, Y, epsilon=0.2, bias=True, refit=False, reweight=0)
    fitted = nettrim.prune_layer(X, Y, epsilon=0.2, bias=True, refit=True, reweight=0)
    # the default pipeline picks its support by its own (early-stopped) l1 solve, so the
    # supports may differ; the refit weights meet epsilon with a lower error
    assert fitted.report["relative_error"] <= plain.report["relative_error"] + 1e-9
    assert fitted.report["relative_error"] <= 0.2 * (1 + 1e-3)
    assert fitted.report["refit_status"] == OPTIMAL
    sparser = nettrim.prune_layer(X, Y, epsilon=0.2, bias=True, refit=False, reweight=2)
    assert sparser.report["nonzeros"] <= plain.report["nonzeros"]
    assert sparser.report["relative_error"] <= 0.2 * (1 + 1e-3) + 1e-6
    with pytest.raises(ValueError, match="reweight"):
        nettrim.prune_layer(X, Y, epsilon=0.2, reweight=-1)


def test_sparsity_mode_trims_when_the_support_jumps():
    """When a block of weights vanishes at once, the search returns the nearest denser solution
    and trims it by magnitude to the target, saying how many weights it trimmed."""
    X, W, b, Y = planted_layer(P=300, N=40, M=10, seed=1, density=0.5)
    res = nettrim.prune_layer(X, Y, sparsity=0.7, bias=True, W0=W, b0=b, reweight=0, refit=False,
                              program="relu")
    # on this layer the support jumps from 66% to 71% between two close epsilons (measured)
    assert res.report["trimmed"] > 0
    assert res.report["sparsity"] == pytest.approx(0.7, abs=1e-9)
    assert abs(res.report["sparsity"] - 0.7) <= SPARSITY_TOL


def test_capped_refit_is_kept_when_feasible_and_better(monkeypatch):
    """A refit stopped by its iteration cap replaces the l1 weights only when it keeps the
    inequalities and does not raise the residual; the layer's status stays the l1 program's and
    ``refit_status`` says the refit was capped."""
    prune_module = importlib.import_module("nettrim.layer.pipeline")
    X, W, b, Y = planted_layer(P=300, N=30, M=6, seed=4, density=0.4)
    plain = nettrim.prune_layer(X, Y, epsilon=0.2, bias=True, refit=False, reweight=0)
    # ADMM only (the exact solve, the CPU default, has no cap to hit)
    monkeypatch.setattr(importlib.import_module("solvers.refit"), "EXACT_ROUNDS", 0)
    monkeypatch.setattr(prune_module, "refit_support", functools.partial(refit_fn, max_iter=3))
    capped = nettrim.prune_layer(X, Y, epsilon=0.2, bias=True, refit=True, reweight=0)
    assert capped.report["refit_status"] == MAX_ITER
    assert capped.report["status"] == OPTIMAL
    assert not bool(((capped.weight != 0) & (plain.weight == 0)).any())  # inside the support
    # the capped refit was used, not discarded: it fits clearly better than the l1 weights
    # (measured here: residual 22.3 -> 11.5 after 3 iterations)
    assert capped.report["residual"] < 0.9 * plain.report["residual"]
    assert capped.report["relative_error"] < plain.report["relative_error"]
    assert capped.report["violation"] <= 1e-3 * float(Y.abs().max()) * (1 + 1e-6)
    # the rule itself: a capped refit that raises the residual or breaks the inequalities is not
    # used
    l1 = SimpleResult(residual=1.0)
    replace = dataclasses.replace
    ok = replace(l1, status=MAX_ITER, residual=0.5, violation=0.0)
    assert prune_module._refit_usable(ok, l1, y_max=1.0)
    assert not prune_module._refit_usable(replace(ok, residual=1.5), l1, y_max=1.0)
    assert not prune_module._refit_usable(replace(ok, violation=0.1), l1, y_max=1.0)
    assert not prune_module._refit_usable(replace(ok, status="SOLVER_ERROR"), l1, y_max=1.0)
    assert prune_module._refit_usable(replace(ok, status=OPTIMAL, residual=9.0), l1, y_max=1.0)


@dataclasses.dataclass(frozen=True)
class SimpleResult:
    """The fields of a NetTrimResult that ``_refit_usable`` reads."""

    residual: float
    status: str = OPTIMAL
    violation: float = 0.0


def test_reweighting_takes_its_penalty_from_the_refit_weights(monkeypatch):
    """Each reweighting round's penalty is built from the previous solution refit on its support
    (not from the shrunk l1 weights)."""
    prune_module = importlib.import_module("nettrim.layer.pipeline")
    X, W, b, Y = planted_layer(P=300, N=30, M=6, seed=4, density=0.4)
    seen, refits = [], []
    real_penalty, real_refit = prune_module.reweighted_penalty, prune_module.refit_support

    def spy_penalty(Wp, *a, **k):
        seen.append(torch.as_tensor(Wp).clone())
        return real_penalty(Wp, *a, **k)

    def spy_refit(*a, **k):
        out = real_refit(*a, **k)
        refits.append(torch.as_tensor(out.W).clone())
        return out

    monkeypatch.setattr(prune_module, "reweighted_penalty", spy_penalty)
    monkeypatch.setattr(prune_module, "refit_support", spy_refit)
    res = nettrim.prune_layer(X, Y, epsilon=0.2, bias=True, refit=True, reweight=2)
    assert len(seen) == 2 and len(refits) == 3   # two pilots, one final refit
    for pilot, fitted in zip(seen, refits):
        assert torch.equal(pilot, fitted)
    assert res.report["refit_status"] == OPTIMAL


@pytest.mark.parametrize("relu", [True, False])
def test_settled_pipeline_reports_an_epsilon_its_weights_meet(relu):
    """The default pipeline at a target sparsity (trimmed to the count or not) reports the
    epsilon of the program its weights solve: the output error is within it, and a success
    status means the inequalities hold."""
    X, W, b, Y = planted_layer(P=500, N=60, M=16, seed=3, density=0.5)
    if not relu:
        Y = X @ W.T + b
    for target in (0.5, 0.8, 0.9):
        r = nettrim.prune_layer(X, Y, sparsity=target, relu=relu, bias=True, W0=W, b0=b).report
        assert r["status"] in SUCCESS
        assert r["relative_error"] <= r["epsilon"] * (1 + 1e-3) + 1e-9


@pytest.mark.parametrize("sparsity", [0.6, 0.85])
def test_target_sparsity_lands_on_the_exact_count(sparsity):
    # the settled pipeline trims (or fills) its last support to exactly round((1-s) M N) weights
    g = torch.Generator().manual_seed(3)
    X = torch.rand(400, 40, generator=g)
    W0 = torch.randn(12, 40, generator=g)
    b0 = torch.randn(12, generator=g) * 0.1
    Y = torch.relu(X @ W0.T + b0)
    res = nettrim.prune_layer(X, Y, sparsity=sparsity, relu=True, bias=True, W0=W0, b0=b0)
    assert int((res.weight != 0).sum()) == round((1 - sparsity) * 12 * 40)
    from solvers import SUCCESS
    assert res.report["status"] in SUCCESS


def test_fill_adds_the_zero_weights_with_the_largest_optimality_violation():
    P = importlib.import_module("nettrim.layer.target_count")
    from solvers import NetTrimProblem
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g)
    Wt = torch.tensor([[3.0, 0.0, 0.0, 0.5, 0.0, 0.0]])
    Y = X @ Wt.T
    problem = NetTrimProblem(X, Y, 0.0, relu=False)
    W = torch.tensor([[2.9, 0.0, 0.0, 0.0, 0.0, 0.0]])
    support = P._fill_to(problem, W, 2, 6, None)
    # the residual is 0.5 x_3 (+ 0.1 x_0): weight 3 is the one the optimality test picks
    assert support.tolist() == [[True, False, False, True, False, False]]
    assert P._fill_to(problem, W, 1, 6, None).tolist() == [[True] + [False] * 5]


@pytest.mark.parametrize("mode", ["sparsity", "epsilon"])
def test_inputs_zero_on_every_row_get_no_weight_and_the_rest_is_solved_alone(mode):
    # a dead input (zero on every calibration row, e.g. an MNIST border pixel) changes no
    # output: the program is solved on the other inputs, with the same count of weights kept
    g = torch.Generator().manual_seed(5)
    X = torch.rand(300, 20, generator=g, dtype=torch.float64)
    X[:, [3, 11]] = 0.0
    W0 = torch.randn(6, 20, generator=g, dtype=torch.float64)
    b0 = torch.randn(6, generator=g, dtype=torch.float64) * 0.1
    Y = torch.relu(X @ W0.T + b0)
    target = dict(sparsity=0.7) if mode == "sparsity" else dict(epsilon=0.05)
    res = nettrim.prune_layer(X, Y, relu=True, bias=True, W0=W0, b0=b0, program="relu", **target)
    assert res.weight.shape == (6, 20)
    assert not bool(res.weight[:, [3, 11]].any())
    assert res.report["dead_inputs"] == 2 and "zero on every calibration row" in res.report["note"]
    assert res.report["total"] == 120
    live = [i for i in range(20) if i not in (3, 11)]
    if mode == "sparsity":
        assert res.report["nonzeros"] == round(0.3 * 120)        # the count of the whole layer
        assert res.report["target_sparsity"] == 0.7
        alone = nettrim.prune_layer(X[:, live], Y, relu=True, bias=True, W0=W0[:, live], b0=b0,
                                    sparsity=1 - 0.3 * 20 / 18, program="relu")
    else:
        alone = nettrim.prune_layer(X[:, live], Y, relu=True, bias=True, W0=W0[:, live], b0=b0,
                                    epsilon=0.05)
    assert torch.equal(res.weight[:, live], alone.weight)
    assert res.report["relative_error"] == pytest.approx(alone.report["relative_error"])

def _relu_layer(P, N, M, shift, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, N, generator=g, dtype=torch.float64)
    W0 = torch.randn(M, N, generator=g, dtype=torch.float64) / math.sqrt(N)
    b0 = shift + 0.1 * torch.randn(M, generator=g, dtype=torch.float64)
    return X, torch.relu(X @ W0.T + b0), W0, b0


def _post_relu_error(r, X, Y):
    return float((torch.relu(X @ r.weight.T + r.bias) - Y).norm() / Y.norm())


@pytest.mark.parametrize("program", ["auto", "best"])
def test_program_choice_keeps_the_linear_program_where_it_fits_better(program):
    # 9 inputs per neuron, half the neurons' rows active: at 50% the hard inequality on every
    # inactive row costs the ReLU program more than the linear program loses off the active set
    X, Y, W0, b0 = _relu_layer(P=1000, N=9, M=8, shift=0.0, seed=0)
    kw = dict(sparsity=0.5, relu=True, bias=True, W0=W0, b0=b0)
    chosen = nettrim.prune_layer(X, Y, program=program, **kw)
    relu_only = nettrim.prune_layer(X, Y, program="relu", **kw)
    linear = nettrim.prune_layer(X, X @ W0.T + b0, **dict(kw, relu=False))
    rep = chosen.report
    # the linear program's support, least squares or its ReLU-aware refit
    assert rep["program"] in ("linear", "linear+soft") and "linear program" in rep["note"]
    errors = rep["program_errors"]
    assert set(errors) == {"relu", "linear-refit", "linear", "relu+soft", "linear+soft"}
    # the oracle: the kept weights' post-ReLU error is the lowest, and below both programs'
    e = _post_relu_error(chosen, X, Y)
    assert e == pytest.approx(rep["relative_error"]) == pytest.approx(min(errors.values()))
    assert e <= _post_relu_error(relu_only, X, Y)
    assert e <= _post_relu_error(linear, X, Y) / (1 - PROGRAM_MARGIN)
    assert e < 0.9 * errors["relu"]
    assert int((chosen.weight != 0).sum()) == round(0.5 * 8 * 9)
    assert rep["status"] in SUCCESS and e <= rep["epsilon"] * (1 + 1e-6)


def test_program_choice_keeps_the_relu_program_where_it_fits_better():
    # few active rows (negative biases): the linear program spends its weights on the
    # inactive pre-activations, the ReLU program only bounds them
    X, Y, W0, b0 = _relu_layer(P=600, N=40, M=10, shift=-2.0, seed=0)
    kw = dict(sparsity=0.5, relu=True, bias=True, W0=W0, b0=b0)
    auto = nettrim.prune_layer(X, Y, **kw)
    relu_only = nettrim.prune_layer(X, Y, program="relu", **kw)
    # the ReLU program's support, with its own refit or the ReLU-aware one (lower here)
    assert auto.report["program"] == "relu+soft"
    errors = auto.report["program_errors"]
    assert set(errors) == {"relu", "linear-refit", "relu+soft"}  # the linear refit lost: no solve
    assert torch.equal(auto.weight != 0, relu_only.weight != 0)
    assert _post_relu_error(auto, X, Y) == pytest.approx(errors["relu+soft"])
    assert errors["relu+soft"] < errors["relu"]
    best = nettrim.prune_layer(X, Y, program="best", **kw)
    linear = nettrim.prune_layer(X, X @ W0.T + b0, **dict(kw, relu=False))
    e = _post_relu_error(best, X, Y)
    assert best.report["program"] in ("relu", "relu+soft")
    assert e <= _post_relu_error(linear, X, Y) / (1 - PROGRAM_MARGIN)
    assert e <= _post_relu_error(relu_only, X, Y) * (1 + 1e-9)
    assert e < 0.5 * _post_relu_error(linear, X, Y)


def test_program_choice_options():
    X, Y, W0, b0 = _relu_layer(P=300, N=9, M=4, shift=0.0, seed=1)
    with pytest.raises(ValueError, match="program must be one of"):
        nettrim.prune_layer(X, Y, sparsity=0.5, W0=W0, b0=b0, bias=True, program="linear")
    # epsilon mode, or no pre-activations to fit: the ReLU program, no comparison
    for kw in (dict(epsilon=0.2, W0=W0, b0=b0, bias=True), dict(sparsity=0.5, bias=True)):
        assert "program_errors" not in nettrim.prune_layer(X, Y, **kw).report
    # pre given explicitly: the same as the default X W0^T + b0
    a = nettrim.prune_layer(X, Y, sparsity=0.5, bias=True, W0=W0, b0=b0)
    b = nettrim.prune_layer(X, Y, sparsity=0.5, bias=True, W0=W0, b0=b0, pre=X @ W0.T + b0)
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="pre must have the shape of Y"):
        nettrim.prune_layer(X, Y, sparsity=0.5, bias=True, W0=W0, b0=b0, pre=X[:, :3])


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_prune_reports_a_layer_that_kept_the_linear_program(mode):
    # a stem: one input channel, 3x3 kernels (9 inputs per channel), BatchNorm, ReLU
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_(0, 0.2)
    x = torch.randn(40, 1, 6, 6)
    result = nettrim.prune(model, x, sparsity=0.5, mode=mode)
    row = result.report[0]
    assert row.program == "linear(relu)+bn" and "linear program" in row.note
    kept = nettrim.prune(model, x, sparsity=0.5, mode=mode, program="relu")
    assert kept.report[0].program == "relu+bn"
    assert row.relative_error < kept.report[0].relative_error
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    assert float((result.model[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="program must be one of"):
        nettrim.prune(model, x, sparsity=0.5, program="linear")


@pytest.mark.parametrize("relu", [False, True])
def test_underdetermined_layer_reaches_the_target_without_the_epsilon_search(relu):
    # fewer rows (active rows) than inputs: the l1 program keeps at most about one weight per
    # binding row, so 50% is out of its reach. The settled pipeline used to hand the layer to
    # the epsilon search (75,000-83,000 ADMM iterations, 33-46 s here) which still stopped at
    # 76-82% sparsity; the support is now filled to the target and refit
    P, N, M = (40, 200, 3) if not relu else (80, 120, 8)
    g = torch.Generator().manual_seed(0)
    X = torch.relu(torch.randn(P, N, generator=g, dtype=torch.float64))
    W0 = torch.randn(M, N, generator=g, dtype=torch.float64) / math.sqrt(N)
    b0 = (-0.3 if relu else 0.0) + 0.1 * torch.randn(M, generator=g, dtype=torch.float64)
    Z = X @ W0.T + b0 + 0.3 * torch.randn(P, M, generator=g, dtype=torch.float64)
    Y = torch.relu(Z) if relu else Z
    res = nettrim.prune_layer(X, Y, sparsity=0.5, relu=relu, bias=True, W0=W0, b0=b0,
                              program="relu")
    rep = res.report
    assert int((res.weight != 0).sum()) == round(0.5 * M * N)
    assert rep["status"] in SUCCESS and rep["iterations"] < 3000
    assert "the calibration rows bind" in rep["note"] and "epsilon search" not in rep["note"]
    # as many weights as rows or more per neuron: the refit fits the rows (up to the
    # inequalities' tolerance, feas_tol)
    assert rep["relative_error"] < 1e-5


def test_grouped_conv_reports_its_program_choice_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x = torch.randn(40, 4, 6, 6)
    row = nettrim.prune(model, x, sparsity=0.5, layers=["0"]).report[0]
    relu_row = nettrim.prune(model, x, sparsity=0.5, layers=["0"], program="relu").report[0]
    assert row.program == "linear(relu)+bn+groups=4" and relu_row.program == "relu+bn+groups=4"
    assert row.note == "linear program kept in 4 of 4 groups (lower post-ReLU calibration error)"
    assert row.relative_error < relu_row.relative_error


def test_capped_search_reports_its_status_instead_of_an_empty_layer():
    # every solve dense enough for the target hit the iteration cap, only W = 0 (epsilon at
    # ||Y||) solved: that used to come back as an all-zero layer with status OPTIMAL
    g = torch.Generator().manual_seed(2)
    X = torch.randn(300, 40, generator=g, dtype=torch.float64)
    W0 = torch.randn(10, 40, generator=g, dtype=torch.float64)
    Y = torch.relu(X @ W0.T)
    res = nettrim.prune_layer(X, Y, sparsity=0.5, refit=False, reweight=0, W0=W0,
                              solver_options={"max_iter": 5})
    assert res.report["status"] == "MAX_ITER"
    assert "gave a solution for sparsity 0.5" in res.report["note"]
    assert res.report["nonzeros"] > 0
