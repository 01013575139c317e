"""Structured (group-l1) Net-Trim: the solver against cvxpy, the driver on tiny models."""

import numpy as np
import pytest
import torch
from torch import nn

import nettrim
from solvers import OPTIMAL, NetTrimProblem
from solvers.group import group_norms, group_soft_threshold, solve_group_admm, solve_group_cvxpy


def test_group_soft_threshold_closed_form():
    V = torch.tensor([[3.0, 4.0], [0.3, 0.4], [1.0, 0.0], [5.0, 5.0]])
    groups = torch.tensor([0, 1, 1, -1])
    out = group_soft_threshold(V, groups, 1.0)
    assert torch.allclose(out[0], V[0] * (1 - 1 / 5))             # ||.|| = 5
    norm1 = float(torch.linalg.vector_norm(V[1:3]))               # sqrt(0.25 + 1) > 1
    assert torch.allclose(out[1:3], V[1:3] * (1 - 1 / norm1))
    assert torch.equal(out[3], V[3])                              # unpenalized row
    assert torch.count_nonzero(group_soft_threshold(V, groups, 10.0)[:3]) == 0  # exact zeros
    assert torch.allclose(group_norms(V, groups, 2), torch.tensor([5.0, norm1]))


@pytest.mark.parametrize("relu, blocks", [(True, 1), (False, 1), (True, 3)])
def test_group_admm_matches_cvxpy_objective(relu, blocks):
    rng = np.random.default_rng(3)
    P, G, M = 50, 6, 4
    N = G * blocks
    X = rng.normal(size=(P, N))
    W0 = rng.normal(size=(M, N)) * np.repeat(rng.random(G) < 0.5, blocks)
    Y = X @ W0.T
    Y = np.maximum(Y, 0) if relu else Y
    eps = 0.2 * np.linalg.norm(Y)
    problem = NetTrimProblem(X, Y, eps, relu=relu)
    groups = np.repeat(np.arange(G), blocks)
    ours = solve_group_admm(problem, groups)
    ref = solve_group_cvxpy(problem, groups)
    assert ours.status == OPTIMAL and ref.status == OPTIMAL
    assert ours.objective == pytest.approx(ref.objective, rel=2e-3)
    assert ours.residual <= eps * (1 + 2e-3)
    assert ours.violation <= 1e-3 * np.abs(Y).max()
    norms = group_norms(torch.as_tensor(ours.W).T, torch.as_tensor(groups), G)
    assert int((norms == 0).sum()) >= 1        # whole groups vanish, not single weights


def test_group_admm_bad_groups():
    problem = NetTrimProblem(np.ones((5, 3)), np.ones((5, 2)), 0.1)
    with pytest.raises(ValueError, match="groups must be an integer array of shape"):
        solve_group_admm(problem, np.arange(4))
    with pytest.raises(ValueError, match="groups must be"):
        solve_group_admm(problem, np.zeros(3))


def _redundant_mlp():
    """A 10-24-12-3 MLP whose hidden units 0-7 (layer 1) and 0-3 (layer 3) never fire: the
    group-l1 optimum zeroes the columns they feed, whatever epsilon."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    with torch.no_grad():
        model[1].bias.fill_(0.5)
        model[1].bias[:8] = -100.0
        model[3].bias[:4] = -100.0
    return model.eval(), torch.randn(150, 10)


FAST = dict(solver_options={"max_iter": 1000})


def test_structured_removes_the_redundant_units():
    model, x = _redundant_mlp()
    result = nettrim.prune(model, x, epsilon=0.02, structured=True, **FAST)
    small = result.model
    removed = result.options["removed"]
    assert set(range(8)) <= set(removed["1"]) and set(range(4)) <= set(removed["3"])
    assert small[1].out_features == 24 - len(removed["1"]) == small[3].in_features
    assert small[1].bias.shape[0] == small[1].out_features
    assert small[3].out_features == 12 - len(removed["3"]) == small[5].in_features
    with torch.no_grad():
        err = float(torch.linalg.vector_norm(small(x) - model(x)) / torch.linalg.vector_norm(model(x)))
    assert err < 0.05 and err == pytest.approx(result.output_error, rel=1e-4)
    for row in result.report:
        assert row.relative_error <= 0.02 * 1.01
    cost = result.options["cost"]
    assert cost["after"]["parameters"] < cost["before"]["parameters"]
    assert cost["after"]["parameters"] == nettrim.count_parameters(small)
    assert cost["after"]["macs"] < cost["before"]["macs"]
    assert set(cost["after"]["latency_ms"]) == {"batch_1", "batch_256"}
    assert model[1].out_features == 24       # the original is untouched


def test_structured_sparsity_mode_hits_the_unit_count():
    model, x = _redundant_mlp()
    result = nettrim.prune(model, x, sparsity=0.5, structured=True, **FAST)
    assert result.options["removed_count"] == {"1": 12, "3": 6}
    assert result.model[1].out_features == 12 and result.model[3].out_features == 6
    for row in result.report:  # a successful status means the weights meet the program
        if row.status in ("OPTIMAL", "OPTIMAL_INACCURATE"):
            assert row.relative_error <= row.epsilon * (1 + 2e-3)
    from nettrim.structured import _Solver
    layer = _Solver(nettrim.capture(model, x)["3"], model[3], torch.arange(24), "admm", None)
    W0 = torch.cat([model[3].weight.detach(), model[3].bias.detach()[:, None]], 1)
    assert layer.feasible(W0, 1e-4) and not layer.feasible(torch.zeros_like(W0), 0.5)


def test_structured_slices_batchnorm_and_flatten():
    torch.manual_seed(1)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6),
                        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    with torch.no_grad():
        cnn[3].bias[:2] = -100.0        # channels 0, 1 never fire after the BatchNorm
        cnn[3].running_mean.uniform_(-0.1, 0.1)
    cnn.eval()
    x = torch.randn(40, 1, 8, 8)
    result = nettrim.prune(cnn, x, epsilon=0.01, structured=True, layers=["6"], **FAST)
    assert {0, 1} <= set(result.options["removed"]["2"])
    small = result.model
    kept = 6 - len(result.options["removed"]["2"])
    assert small[2].out_channels == kept == small[3].num_features
    assert small[6].in_features == kept * 16
    with torch.no_grad():
        assert torch.allclose(small(x), cnn(x), atol=0.05 * float(cnn(x).abs().max()))


def test_structured_bad_input():
    model, x = _redundant_mlp()
    with pytest.raises(ValueError, match=r"layer '1' cannot be removed: it takes the model's input"):
        nettrim.prune(model, x, epsilon=0.1, structured=True, layers=["1"])
    with pytest.raises(TypeError, match="nn.Sequential"):
        class Wrap(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

            def forward(self, v):
                return self.b(torch.relu(self.a(v)))
        nettrim.prune(Wrap(), torch.randn(5, 4), epsilon=0.1, structured=True)
    odd = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"layer '2' cannot be removed: cannot follow unit removal through '1'"):
        nettrim.prune(odd, torch.randn(5, 4), epsilon=0.1, structured=True, layers=["2"])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        nettrim.prune(model, x, sparsity=1.0, structured=True)
    with pytest.raises(ValueError, match="scope='global' is not supported"):
        nettrim.prune(model, x, sparsity=0.5, structured=True, scope="global")
    with pytest.raises(ValueError, match="parallel"):
        nettrim.prune(model, x, epsilon=0.1, structured=True, mode="cascade")
