"""Issue 12: the networks people have (BatchNorm, residual blocks, grouped and depthwise convs,
attention, sequences, other activations, tuple/dict inputs and outputs)."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solvers import OPTIMAL, NetTrimProblem, solve_admm, solve_cvxpy


# ---- the program with a known offset S ---------------------------------------------------------
def offset_problem(P=60, N=12, M=5, seed=0, rel_eps=0.1, cascade=False):
    """relu(X W0^T + S) with a per-sample offset S, as a residual block's output."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    W0 = rng.standard_normal((M, N)) / np.sqrt(N)
    S = 0.8 * rng.standard_normal((P, M))
    Y = np.maximum(X @ W0.T + S, 0)
    if cascade:
        X = X + 0.1 * rng.standard_normal((P, N))
        V = X @ W0.T + S
        eps = math.sqrt(1.1) * np.linalg.norm((V - Y)[Y > 0])
        return NetTrimProblem(X, Y, eps, V=V, S=S), W0
    return NetTrimProblem(X, Y, rel_eps * np.linalg.norm(Y), S=S), W0


def test_offset_program_matches_a_cvxpy_program_written_out():
    cp = pytest.importorskip("cvxpy")
    problem, _ = offset_problem()
    X, Y, S = problem.X, problem.Y, problem.S
    on = Y > 0
    W = cp.Variable((Y.shape[1], X.shape[1]))
    Z = X @ W.T + S
    prog = cp.Problem(cp.Minimize(cp.sum(cp.abs(W))),
                      [cp.norm(cp.multiply(on, Z - Y), "fro") <= problem.epsilon,
                       cp.multiply(~on, Z) <= 0])
    prog.solve(solver="CLARABEL")
    ref = solve_cvxpy(problem)
    assert ref.status == OPTIMAL
    assert ref.objective == pytest.approx(prog.value, rel=1e-4)
    assert problem.is_feasible(ref.W)
    # without the offset the same data is another program, here an infeasible one
    plain = solve_cvxpy(NetTrimProblem(X, Y, problem.epsilon))
    assert plain.status != OPTIMAL


@pytest.mark.parametrize("cascade", [False, True])
def test_admm_with_offset_matches_cvxpy(cascade):
    pytest.importorskip("cvxpy")
    problem, W0 = offset_problem(seed=3, cascade=cascade)
    if cascade:   # the original weights are feasible for the cascade program
        assert problem.is_feasible(W0)
    ref = solve_cvxpy(problem)
    res = solve_admm(problem)
    assert res.status == OPTIMAL
    assert problem.is_feasible(res.W)
    assert res.objective <= ref.objective * 1.02
    # the guarantee on the block's output: ||relu(X W^T + S) - Y|| <= epsilon (parallel)
    if not cascade:
        out = np.maximum(problem.X @ np.asarray(res.W).T + problem.S, 0)
        assert np.linalg.norm(out - problem.Y) <= problem.epsilon * (1 + 1e-3)


def test_offset_shape_is_checked():
    problem, _ = offset_problem()
    with pytest.raises(ValueError, match="S has shape"):
        NetTrimProblem(problem.X, problem.Y, 1.0, S=problem.S[:, :2])


# ---- tiny instances of the networks people have ------------------------------------------------
import nettrim  # noqa: E402
from nettrim.capture import CalibrationWarning  # noqa: E402
from nettrim.graph import GraphWarning, analyze  # noqa: E402


class Block(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + skip)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.down is None else self.down(x)
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8)
        self.layer2 = Block(8, 12, 2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_vgg_bn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12),
                         nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(48, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 4))


class InvertedResidual(nn.Module):
    """MobileNet-V2's block: 1x1 expand, 3x3 depthwise, 1x1 project (ReLU6, linear bottleneck)."""

    def __init__(self, c, expand=2):
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


def tiny_mobilenet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                         InvertedResidual(8), nn.Conv2d(8, 16, 3, padding=1, groups=4),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


class TinyTransformer(nn.Module):
    def __init__(self, activation="relu"):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation=activation,
                                              batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.embed(x)).mean(1))


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16),
                                          nn.Linear(16, 3))

    def forward(self, x):
        h = F.relu(self.a(x))
        if h.sum() > 0:           # data-dependent: torch.fx cannot trace this
            h = F.relu(self.b(h))
        return self.d(F.relu(self.c(h)))


def randomize_bn(model, seed=0):
    """Random eval statistics, so that BatchNorm is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


def counts(model):
    patterns = analyze(model, warn=False).patterns
    return (sum(p.activation == "relu" for p in patterns.values()),
            sum(p.offset is not None for p in patterns.values()),
            sum(p.norm is not None for p in patterns.values()))


def test_detection_counts():
    assert counts(TinyResNet()) == (6, 3, 6)       # all convs ReLU-aware; conv2s and down: offset
    assert counts(tiny_vgg_bn()) == (3, 0, 2)
    relu, offset, norm = counts(tiny_mobilenet())
    assert (relu, offset) == (1, 0) and norm == 4  # and three ReLU6 (solved as clipped ReLUs)
    acts = nettrim.detect_activations(tiny_mobilenet())
    assert acts["0"] == "relu6" and acts["4"] == "relu"
    assert nettrim.detect_activations(TinyTransformer())["enc.linear1"] == "relu"
    assert nettrim.detect_activations(TinyTransformer("gelu"))["enc.linear1"] == "gelu"
    skipped = analyze(TinyTransformer(), warn=False).skipped
    assert list(skipped) == ["enc.self_attn"] and "in_proj_weight" in skipped["enc.self_attn"]


def test_untraceable_model_warns_once_naming_the_linear_layers():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = nettrim.prune(ControlFlow(), torch.randn(200, 8), epsilon=0.05)
    graph = [w for w in caught if issubclass(w.category, GraphWarning)]
    assert len(graph) == 1
    assert "'a'" in str(graph[0].message) and "activations=" in str(graph[0].message)
    assert [r.status for r in result.report] == ["OPTIMAL"] * 4
    declared = nettrim.capture(ControlFlow(), torch.randn(50, 8),
                               activations={"a": "relu", "b": "relu", "c": "relu"})
    assert [declared[n].activation for n in "abcd"] == ["relu", "relu", "relu", None]


def test_resnet_block_prunes_relu_aware_with_strict_load_and_bound():
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    x = torch.randn(48, 3, 8, 8)
    result = nettrim.prune(model, x, epsilon=0.05, max_samples=1500)
    programs = {r.name: r.program for r in result.report}
    assert programs["stem"] == "relu+bn" and programs["layer1.conv2"] == "relu+bn+offset"
    assert programs["fc"] == "linear"
    assert all(r.status == "OPTIMAL" for r in result.report)
    fresh = TinyResNet()
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    # every layer's block output (BN, offset and ReLU included) within its epsilon, measured
    # on the original network's records: the pruned BN-conv pair reproduces the folded solution
    original = nettrim.capture(model, x, fold=True, max_samples=1500)
    for row in result.report:
        d = original[row.name]
        conv = dict(result.model.named_modules())[row.name]
        z = d.X @ conv.weight.detach().flatten(1).T
        if conv.bias is not None:
            z = z + conv.bias.detach()
        if d.norm:
            bn = dict(result.model.named_modules())[d.norm]
            z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        out = torch.relu(z + (0 if d.offset is None else d.offset)) if d.activation == "relu" else z
        err = float(torch.linalg.vector_norm(out.detach() - d.post))
        assert err <= 1.01 * row.epsilon_abs + 1e-6, (row.name, err, row.epsilon_abs)
    assert result.output_error < 0.2
    folded = nettrim.prune(model, x, epsilon=0.05, max_samples=1500, fold_bn=True)
    assert isinstance(folded.model.bn, nn.Identity) and folded.model.stem.bias is not None
    assert folded.output_error == pytest.approx(result.output_error, rel=1e-3, abs=1e-5)


def test_resnet_cascade_uses_the_pruned_offset():
    torch.manual_seed(1)
    model = randomize_bn(TinyResNet())
    x = torch.randn(32, 3, 8, 8)
    result = nettrim.prune(model, x, epsilon=0.05, mode="cascade", max_samples=800,
                           solver_options={"max_iter": 20000})
    assert all(r.status in ("OPTIMAL", "OPTIMAL_INACCURATE") for r in result.report)
    assert {r.name: r.program for r in result.report}["layer2.down.0"] == "relu+bn+offset"
    TinyResNet().load_state_dict(result.model.state_dict(), strict=True)
    assert result.output_error < 0.1


def test_vgg_bn_and_mobilenet_prune_in_both_modes():
    torch.manual_seed(2)
    x = torch.randn(64, 3, 8, 8)
    for make, goals in ((tiny_vgg_bn, (dict(epsilon=0.05), dict(sparsity=0.5))),
                        (tiny_mobilenet, (dict(sparsity=0.5), dict(sparsity=0.5)))):
        model = randomize_bn(make())
        for mode, goal in zip(("parallel", "cascade"), goals):
            # program="relu": the detected programs, whatever their errors (the choice between
            # the ReLU and the linear program is tested in test_program_choice_*)
            result = nettrim.prune(model, x, mode=mode, max_samples=600, program="relu", **goal)
            make().load_state_dict(result.model.state_dict(), strict=True)
            assert all(r.status in ("OPTIMAL", "OPTIMAL_INACCURATE") for r in result.report)
            assert np.isfinite(result.output_error) and result.output_error < 0.5
            progs = {r.name: r.program for r in result.report}
            if make is tiny_vgg_bn:
                assert [progs[n] for n in ("0", "4", "9", "12")] == \
                    ["relu+bn", "relu+bn", "relu", "linear"]
            else:
                assert progs["3.conv.3"] == "relu6+bn+groups=16"
                assert progs["3.conv.6"] == "linear+bn"
                assert progs["4"] == "relu+groups=4"
                w = result.model[4].weight
                assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_relu6_uses_the_relu_program_with_its_bound():
    torch.manual_seed(8)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU6(),
                                       nn.Flatten(), nn.Linear(6 * 16, 2)))
    x = 4 * torch.randn(40, 3, 6, 6)
    data = nettrim.capture(model, x, fold=True)["0"]
    assert data.post.max() == 6.0 and (data.pre > 6).any()       # some entries saturate
    result = nettrim.prune(model, x, epsilon=0.1)
    row = result.report[0]
    assert row.program == "relu6+bn" and row.status == "OPTIMAL"
    with torch.no_grad():
        err = float(torch.linalg.vector_norm(result.model[:3](x) - model[:3](x)))
    assert err <= 1.01 * row.epsilon_abs
    assert nettrim.detect_activations(model)["0"] == "relu6"
    assert nettrim.capture(model, x)["0"].activation == "relu6"   # as prune reads it (issue 21)
    assert nettrim.capture(model, x, fold=False)["0"].activation is None   # BN between: linear


def test_depthwise_conv_groups_are_blocks():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(),
                          nn.Conv2d(4, 8, 1)).eval()
    x = torch.randn(30, 4, 6, 6)
    result = nettrim.prune(model, x, epsilon=0.1)
    assert result.report[0].status == "OPTIMAL"
    data = nettrim.capture(model, x)["0"]
    assert data.groups == 4 and data.X.shape[1] == 36
    # the pruned layer's output is within the layer's epsilon (the groups' balls add up)
    with torch.no_grad():
        err = float(torch.linalg.vector_norm(torch.relu(result.model[0](x)) - torch.relu(model[0](x))))
    assert err <= 1.01 * result.report[0].epsilon_abs


def test_transformer_encoder_and_sequences():
    torch.manual_seed(4)
    model = TinyTransformer().eval()
    x = torch.randn(20, 7, 6)
    data = nettrim.capture(model, x)
    assert data["enc.linear1"].activation == "relu"
    assert data["embed"].X.shape == (140, 6)          # every token is a row
    assert "enc.self_attn" in data.skipped
    # out_proj, applied functionally by the attention, is recorded at the attention's call
    proj = data["enc.self_attn.out_proj"]
    assert proj.X.shape == (140, 16)
    W, b = model.enc.self_attn.out_proj.weight, model.enc.self_attn.out_proj.bias
    assert torch.allclose(proj.X @ W.detach().T + b.detach(), proj.pre, atol=1e-5)
    capped = nettrim.capture(model, x, max_samples=50)
    assert capped["embed"].X.shape == (50, 6) and capped["embed"].rows_seen == 140
    for mode in ("parallel", "cascade"):
        result = nettrim.prune(model, x, epsilon=0.05, mode=mode)
        rows = {r.name: r for r in result.report}
        assert rows["enc.self_attn.out_proj"].status == "OPTIMAL"
        assert rows["enc.self_attn.out_proj"].nonzeros_after < 256
        assert rows["enc.self_attn"].status == "SKIPPED"
        assert rows["enc.linear1"].program == "relu"
        assert "not pruned" in result.table() and "in_proj_weight" in result.table()
        assert np.isfinite(result.output_error)


def test_other_activations_conv1d_and_skipped_layers():
    torch.manual_seed(5)

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 6)
            self.conv = nn.Conv1d(6, 8, 3, padding=1)
            self.lstm = nn.LSTM(8, 8, batch_first=True)
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
            self.c, self.d = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, ids):
            h = F.gelu(self.conv(self.emb(ids).transpose(1, 2))).transpose(1, 2)
            h, _ = self.lstm(h)
            h = F.silu(self.a(h))
            h = torch.tanh(self.b(h))
            h = F.leaky_relu(self.c(h))
            return self.d(h.mean(1))

    model = Mixed().eval()
    ids = torch.randint(0, 20, (40, 9))
    acts = nettrim.detect_activations(model)
    assert (acts["conv"], acts["a"], acts["b"], acts["c"]) == ("gelu", "silu", "tanh", "leaky_relu")
    result = nettrim.prune(model, ids, epsilon=0.05)
    rows = {r.name: r for r in result.report}
    assert rows["conv"].program == "linear(gelu)" and rows["conv"].status == "OPTIMAL"
    assert rows["conv"].shape == (8, 6, 3)
    assert rows["a"].program == "linear(silu)"
    for name in ("emb", "lstm"):
        assert name in result.skipped
    # linear program on pre-activations: each pre-activation within its epsilon
    data = nettrim.capture(model, ids)
    pruned = nettrim.capture(result.model, ids)
    for name in ("conv", "a", "b", "c"):
        err = float(torch.linalg.vector_norm(pruned[name].pre - data[name].pre))
        assert err <= 1.01 * rows[name].epsilon_abs + 1e-6, (name, err, rows[name].epsilon_abs)


def test_tuple_outputs_dict_inputs_and_repeated_calls():
    torch.manual_seed(6)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 12)
            self.shared = nn.Linear(12, 12)
            self.h1, self.h2 = nn.Linear(12, 2), nn.Linear(12, 3)

        def forward(self, x, mask=None):
            h = F.relu(self.body(x if mask is None else x * mask))
            h = self.shared(F.relu(self.shared(h)))   # called twice
            return self.h1(h), {"aux": self.h2(h)}

    model = TwoHeads().eval()
    x, mask = torch.randn(60, 5), (torch.rand(60, 5) > 0.2).float()
    data = nettrim.capture(model, [((x, mask), None)])
    assert data["shared"].calls == 2 and data["shared"].X.shape == (120, 12)
    assert data["shared"].activation is None
    by_dict = nettrim.capture(model, {"x": x, "mask": mask})
    assert torch.equal(by_dict["body"].X, data["body"].X)
    result = nettrim.prune(model, [((x, mask),)], epsilon=0.05)
    assert np.isfinite(result.output_error) and result.output_error > 0
    cascade = nettrim.prune(model, [{"x": x, "mask": mask}], epsilon=0.05, mode="cascade")
    assert np.isfinite(cascade.output_error)


def test_few_rows_warn_with_the_ratio_and_the_rows_needed():
    model = nn.Sequential(nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 2))
    with pytest.warns(CalibrationWarning, match=r"'0' has 16 calibration rows for 64 inputs "
                                                r"per neuron \(ratio 0\.25\)"):
        nettrim.capture(model, torch.randn(16, 64))
    result = None
    with pytest.warns(CalibrationWarning, match="O\\(s log\\(N/s\\)\\)"):
        result = nettrim.prune(model, torch.randn(16, 64), epsilon=0.05)
    assert "underdetermined" in result.report[0].note
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        nettrim.capture(model, torch.randn(100, 64))


TOKEN_ARCH = '''
import torch
from torch import nn


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids))).mean(1))


def model():
    return TokenModel()
'''


def test_cli_feeds_token_ids_caps_rows_and_lists_skipped_layers(tmp_path, capsys, monkeypatch):
    import json
    import sys

    from nettrim.cli import main

    (tmp_path / "tokarch.py").write_text(TOKEN_ARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tokarch", None)
    import tokarch

    torch.manual_seed(7)
    model = tokarch.model().eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    np.savez(tmp_path / "ids.npz", x=np.random.default_rng(0).integers(0, 20, size=(40, 6)))
    out = tmp_path / "out.pt"
    code = main(["prune", str(tmp_path / "sd.pt"), "--data", str(tmp_path / "ids.npz"),
                 "--out", str(out), "--arch", "tokarch:model", "--max-rows", "100",
                 "--epsilon", "0.05", "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    doc = json.loads((tmp_path / "out.report.json").read_text())
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["emb"]["status"] == "SKIPPED" and "lookup table" in rows["emb"]["note"]
    assert rows["fc1"]["program"] == "relu"
    assert rows["fc1"]["rows"] == 100 and rows["fc1"]["rows_seen"] == 240   # tokens, capped
    assert "not pruned:" in printed and "emb: skipped" in printed
    tokarch.model().load_state_dict(torch.load(out), strict=True)


def test_cascade_offset_comes_from_the_pruned_network():
    import copy

    from nettrim.capture import capture_cascade
    from nettrim.graph import batchnorm_affine

    torch.manual_seed(10)
    model = randomize_bn(TinyResNet())
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.layer2.down[0].weight.zero_()     # the skip branch of layer2 is now BN(0) = c
    x = torch.randn(6, 3, 8, 8)
    data = capture_cascade(model, pruned, x, "layer2.conv2", fold=True)
    _, c = batchnorm_affine(pruned.layer2.down[1])
    assert torch.allclose(data.offset, c.expand_as(data.offset), atol=1e-6)
    reference = nettrim.capture(model, x, layers=["layer2.conv2"], fold=True)["layer2.conv2"]
    assert torch.allclose(data.post, reference.post, atol=1e-6)     # the original's target
    assert not torch.allclose(data.offset, reference.offset)
