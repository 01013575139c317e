"""Structured surgery (remove_units, compact) on models that are not nn.Sequential: residual
adds, concatenations, BatchNorm; the coupling comes from Torch-Pruning's DependencyGraph."""

import copy
import io

import pytest
import torch
from torch import nn

import nettrim


class ResBlockNet(nn.Module):
    """stem conv-BN-ReLU, one basic block (conv-BN-ReLU-conv-BN + skip, ReLU after the add),
    average pool, Linear."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        r = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.fc(torch.relu(h + r).mean((2, 3)))


class CatNet(nn.Module):
    """Two conv branches concatenated, a 1x1 conv, Flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)
        self.b = nn.Conv2d(1, 3, 3)
        self.c = nn.Conv2d(7, 5, 1)
        self.fc = nn.Linear(5 * 6 * 6, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.flatten(torch.relu(self.c(h)), 1))


class BNNet(nn.Module):
    """conv-BN-ReLU6, conv-BN-ReLU, pool, Linear (a forward, not a Sequential)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = nn.functional.relu6(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def _randomised(model):
    """Eval mode with non-trivial BatchNorm statistics (nonzero shifts)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


def _reloaded(model):
    """The model through torch.save / torch.load (a shrunk model has its own shapes)."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_compact_residual_block():
    torch.manual_seed(0)
    model = _randomised(ResBlockNet())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        model.conv2.weight[:, [1, 3]] = 0.0     # channels 1, 3 of conv1 feed nothing
        model.conv1.weight[:, 2] = 0.0          # residual channel 2: no consumer uses it...
        model.fc.weight[:, 2] = 0.0             # ...neither the next conv nor the classifier
        model.fc.weight[:, 4] = 0.0             # channel 4: the classifier alone is not enough
    masked = copy.deepcopy(model)
    out = nettrim.compact(model, x)
    small = out.model
    # keyed by one layer of each coupled group (for the residual stream: stem or conv2)
    assert out.removed.pop("conv1") == 2 and list(out.removed.values()) == [1]
    assert small.conv1.out_channels == 6 == small.bn1.num_features == small.conv2.in_channels
    # the residual group shrinks together: both branches of the add, its BatchNorms, consumers
    assert small.stem.out_channels == small.conv2.out_channels == small.bn0.num_features == 7
    assert small.bn2.num_features == small.conv1.in_channels == small.fc.in_features == 7
    assert out.params_after == nettrim.count_parameters(small) < out.params_before
    assert out.params_before - out.params_after == 2 * (9 * 8 + 9 * 8 + 2) + (9 + 2 * 9 * 6 + 4 + 3)
    assert torch.allclose(_outputs(small, x), _outputs(masked, x), atol=1e-5)
    assert out.max_abs_diff < 1e-5
    assert torch.allclose(_outputs(_reloaded(small), x), _outputs(masked, x), atol=1e-5)
    assert model.stem.out_channels == 8           # not in place by default


def test_remove_units_residual_block_shrinks_both_branches():
    torch.manual_seed(0)
    model = _randomised(ResBlockNet())
    x = torch.randn(4, 1, 8, 8)
    drop = [0, 5]
    with torch.no_grad():                        # the masked model: nothing uses channels 0, 5
        model.conv1.weight[:, drop] = 0.0
        model.fc.weight[:, drop] = 0.0
    masked = copy.deepcopy(model)
    keep = [1, 2, 3, 4, 6, 7]
    nettrim.remove_units(model, "conv2", keep, example_input=x)
    assert model.conv2.out_channels == model.stem.out_channels == 6
    assert model.bn0.num_features == model.bn2.num_features == 6
    assert model.conv1.in_channels == model.fc.in_features == 6
    assert torch.equal(model.fc.weight, masked.fc.weight[:, keep])
    assert nettrim.count_parameters(model) < nettrim.count_parameters(masked)
    assert torch.allclose(_outputs(model, x), _outputs(masked, x), atol=1e-5)
    with pytest.raises(ValueError, match="changes the model output"):
        nettrim.remove_units(model, "fc", [0, 1], example_input=x)
    with pytest.raises(ValueError, match="example_input"):
        nettrim.remove_units(model, "conv1", [0, 1])
    with pytest.raises(ValueError, match=r"keep: indices must be in \[0, 8\)"):
        nettrim.remove_units(model, "conv1", [8], example_input=x)


def test_compact_concatenation():
    torch.manual_seed(0)
    model = CatNet().eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        model.c.weight[:, [1, 4 + 2]] = 0.0    # channel 1 of branch a, channel 2 of branch b
        model.c.weight[3] = 0.0                # output channel 3 of c: no input, no bias
        model.c.bias[3] = 0.0
    masked = copy.deepcopy(model)
    out = nettrim.compact(model, x)
    small = out.model
    assert out.removed == {"a": 1, "b": 1, "c": 1}
    assert small.a.out_channels == 3 and small.b.out_channels == 2
    assert small.c.in_channels == 5 and small.c.out_channels == 4
    assert small.fc.in_features == 4 * 36
    kept = masked.c.weight[[0, 1, 2, 4]][:, [0, 2, 3, 4, 5]]
    assert torch.equal(small.c.weight, kept)
    assert out.params_after < out.params_before
    assert torch.allclose(_outputs(small, x), _outputs(masked, x), atol=1e-5)
    assert torch.allclose(_outputs(_reloaded(small), x), _outputs(masked, x), atol=1e-5)


def test_compact_batchnorm_shift_and_relu6():
    torch.manual_seed(0)
    model = _randomised(BNNet())
    x = torch.randn(3, 1, 9, 9)
    with torch.no_grad():
        model.conv2.weight[:, 0] = 0.0         # unused: goes with its BatchNorm entry
        model.conv1.weight[[2, 4]] = 0.0       # no input on 2 and 4, but BN1 shifts 4 ...
        model.conv1.bias[[2, 4]] = 0.0
        model.bn1.running_mean[2] = 0.0        # ... and maps 2 to exactly 0
        model.bn1.bias[2] = 0.0
    masked = copy.deepcopy(model)
    out = nettrim.compact(model, x)
    small = out.model
    assert out.removed == {"conv1": 2}           # channels 0 and 2; 4 is a constant, kept
    assert small.conv1.out_channels == small.bn1.num_features == small.conv2.in_channels == 4
    assert torch.allclose(small.bn1.running_mean, masked.bn1.running_mean[[1, 3, 4, 5]])
    assert torch.allclose(_outputs(small, x), _outputs(masked, x), atol=1e-5)
    assert out.params_after < out.params_before


def test_compact_sequential_passes_relu6():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU6(), nn.Linear(6, 4), nn.ReLU(),
                          nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[[1, 2]] = 0.0
        model[0].bias[[1, 2]] = 0.0
    x = torch.randn(7, 5)
    out = nettrim.compact(model, x)
    assert out.removed == {"0": 2} and out.model[2].in_features == 4
    assert torch.allclose(_outputs(out.model, x), _outputs(model, x), atol=1e-6)


def test_compact_leaves_layernorm_groups_alone():
    class LNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)

        def forward(self, v):
            return self.b(torch.relu(self.norm(self.a(v))))

    torch.manual_seed(0)
    model = LNNet().eval()
    with torch.no_grad():
        model.a.weight[1] = 0.0                # zero input: but LayerNorm mixes the channels
        model.a.bias[1] = 0.0
    x = torch.randn(5, 4)
    out = nettrim.compact(model, x)
    assert out.removed == {} and out.model.a.out_features == 6
    assert "norm" in out.notes["a"]
    assert out.max_abs_diff == 0.0


def test_compact_undoes_a_removal_the_graph_cannot_see():
    """The model input joins the residual add: the conv's zero row does not make the stream's
    channel zero; the removal breaks the add, is undone, and a note says why."""
    class InputSkip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 3, 1), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(torch.relu(x + self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = InputSkip().eval()
    with torch.no_grad():
        model.conv.weight[1] = 0.0
        model.conv.bias[1] = 0.0
    x = torch.randn(2, 3, 4, 4)
    out = nettrim.compact(model, x)
    assert out.removed == {} and out.model.conv.out_channels == 3
    assert "size of tensor" in out.notes["conv"]
    assert out.max_abs_diff == 0.0


def test_compact_depthwise_sequential_goes_through_the_graph():
    """A Sequential with a depthwise conv: the chain order cannot say that the depthwise conv
    passes channels through, the dependency graph can."""
    torch.manual_seed(0)
    model = _randomised(nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)))
    with torch.no_grad():
        model[6].weight[:, 1] = 0.0
    x = torch.randn(3, 1, 9, 9)
    out = nettrim.compact(model, x)
    small = out.model
    assert sum(out.removed.values()) == 1
    assert small[0].out_channels == small[3].out_channels == small[3].groups == 3
    assert small[1].num_features == small[4].num_features == small[6].in_channels == 3
    assert torch.allclose(_outputs(small, x), _outputs(model, x), atol=1e-5)
    assert out.params_after < out.params_before
