"""The structured criteria added beside L1 / APoZ / Taylor: the oracle (measured loss change of a
removed unit), information gain between a unit's activation and the label, mean activation.
Each is checked against its definition computed the slow, obvious way."""

import math

import pytest
import torch
from torch import nn

from nettrim.baselines import units as U
from nettrim.baselines import information_gain, prune_structured, unit_scores


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def data(n=150, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    return x, y


def oracle_by_hand(model, x, y, layer):
    """(L(without k) - L) / n with unit k's weights and bias zeroed in a copy (ReLU(0) = 0)."""
    loss = nn.functional.cross_entropy
    base = float(loss(model(x), y, reduction="sum").detach())
    out = []
    for k in range(model[layer].out_features):
        with torch.no_grad():
            w, b = model[layer].weight[k].clone(), model[layer].bias[k].clone()
            model[layer].weight[k] = 0
            model[layer].bias[k] = 0
            out.append((float(loss(model(x), y, reduction="sum").detach()) - base)
                       / x.shape[0])
            model[layer].weight[k] = w
            model[layer].bias[k] = b
    return torch.tensor(out, dtype=torch.float64)


def test_oracle_is_the_measured_loss_change(monkeypatch):
    model = tiny_mlp()
    x, y = data()
    scores = unit_scores(model, [(x[:100], y[:100]), (x[100:], y[100:])], "oracle")
    for layer in ("0", "2"):
        assert torch.allclose(scores[layer], oracle_by_hand(model, x, y, int(layer)),
                              atol=1e-5), layer
    # one unit per forward pass gives the same scores as several (copies of the batch)
    monkeypatch.setattr(U, "ORACLE_MAX_ENTRIES", 1)
    single = unit_scores(model, [(x, y)], "oracle")
    for layer in ("0", "2"):
        assert torch.allclose(single[layer], scores[layer], atol=1e-5)


class Skip(nn.Module):
    """A skip from before layer ``fc1``: its output cannot be stacked along the batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.skip = nn.Linear(12, 20), nn.Linear(20, 4), nn.Linear(12, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + self.skip(x)


@torch.no_grad()
def test_oracle_falls_back_to_one_unit_at_a_time_when_copies_do_not_fit():
    model = Skip()
    x, y = data()
    scores = unit_scores(model, [(x, y)], "oracle", layers=["fc1"])["fc1"]
    base = float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
    expected = []
    for k in range(20):
        def zero(_m, _i, out, k=k):
            out = out.clone()
            out[:, k] = 0
            return out
        h = model.fc1.register_forward_hook(zero)
        expected.append((float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
                         - base) / x.shape[0])
        h.remove()
    assert torch.allclose(scores, torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_oracle_removes_the_unit_that_lowers_the_loss_first():
    model = tiny_mlp()
    x, y = data()
    with torch.no_grad():   # unit 3 of layer 2 pushes every sample toward a wrong class
        model[2].bias[3] = 50.0
        model[4].weight[:, 3] = 0.0
        model[4].weight[(y[0] + 1) % 4, 3] = 1.0
    scores = unit_scores(model, [(x, y)], "oracle", layers=["2"])["2"]
    assert int(scores.argmin()) == 3 and scores[3] < 0
    result = prune_structured(model, [(x, y)], "oracle", {"2": 1 / 16})
    assert result.model[2].weight.shape == (15, 20)
    loss = nn.functional.cross_entropy
    assert float(loss(result.model(x), y).detach()) < float(loss(model(x), y).detach())


def test_information_gain_closed_forms():
    n = 400
    y = torch.arange(n) % 2
    # a unit equal to the label carries all of H(y) = log 2; a constant unit carries nothing
    a = torch.stack([y.double(), torch.ones(n, dtype=torch.float64),
                     torch.randn(n, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)], 1)
    ig = information_gain(a, y, bins=4)
    assert ig[0] == pytest.approx(math.log(2), abs=1e-12)
    assert ig[1] == 0
    assert 0 <= ig[2] < 0.05
    # four equal-frequency bins of a uniform ramp against a label that is the bin: I = log 4
    ramp = torch.arange(n, dtype=torch.float64)[:, None]
    assert information_gain(ramp, torch.arange(n) // 100, bins=4)[0] == pytest.approx(
        math.log(4), abs=1e-12)
    with pytest.raises(ValueError, match="bins must be an int >= 2"):
        information_gain(a, y, bins=1)
    with pytest.raises(ValueError, match=r"activation must be \(n, M\)"):
        information_gain(a, y[:-1])


def test_infogain_scores_and_labels_needed():
    model = tiny_mlp()
    x, y = data()
    with torch.no_grad():   # unit 5 of layer 0 reads the label's sign from the first input
        x[:, 0] = torch.where(y >= 2, 3.0, -3.0)
        model[0].weight[5] = 0
        model[0].weight[5, 0] = 1.0
        model[0].bias[5] = 0
    scores = unit_scores(model, [(x, y)], "infogain", layers=["0"])["0"]
    expected = information_gain(torch.relu(model[0](x)).detach().double(), y)
    assert torch.allclose(scores, expected)
    p = float((y >= 2).double().mean())   # unit 5 is the indicator of y >= 2: I = H(p)
    assert int(scores.argmax()) == 5
    assert scores[5] == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p), abs=1e-9)
    with pytest.raises(ValueError, match="'infogain' needs labelled batches"):
        unit_scores(model, x, "infogain")


def test_mean_activation_is_the_mean_post_relu_output():
    model = tiny_mlp()
    x, y = data()
    scores = unit_scores(model, x, "mean_activation")
    assert torch.allclose(scores["0"], torch.relu(model[0](x)).detach().double().mean(0))
    h = torch.relu(model[2](torch.relu(model[0](x))))
    assert torch.allclose(scores["2"], h.detach().double().mean(0))
    # the output layer has no ReLU: its mean magnitude
    assert torch.allclose(scores["4"], model(x).detach().abs().double().mean(0))


def test_conv_channels_averaged_over_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    x = torch.randn(30, 1, 8, 8)
    y = torch.randint(0, 5, (30,), generator=torch.Generator().manual_seed(2))
    mean = unit_scores(model, x, "mean_activation", layers=["0"])["0"]
    assert torch.allclose(mean, torch.relu(model[0](x)).detach().double().mean((0, 2, 3)))
    for criterion in ("oracle", "infogain", "mean_activation"):
        result = prune_structured(model, [(x, y)], criterion, 0.5)
        assert result.model[0].weight.shape == (3, 1, 3, 3)
        assert result.model(x).shape == (30, 5)
