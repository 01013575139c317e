"""Global budgets on odd models: every allocation reaches its target within the documented
tolerance, over the layers it prunes, and keeps the layer-collapse floors (issue 21, items 7-9)."""

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nettrim
from nettrim import budget
from nettrim.baselines import prune_baseline
from nettrim.cli import main, report_path_for

FAST = dict(reweight=0, refit=False, solver_options={"max_iter": 300})
ALLOCATIONS = ("loss", "epsilon", "marginal", "magnitude")


class Odd(nn.Module):
    """A ReLU MLP with, optionally, a layer run twice per forward pass and one never run."""

    def __init__(self, widths, shared=False, uncalled=False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.shared = nn.Linear(widths[1], widths[1]) if shared else None
        self.never = nn.Linear(3, 5) if uncalled else None

    def forward(self, x):
        for i, layer in enumerate(self.layers[:-1]):
            x = torch.relu(layer(x))
            if i == 0 and self.shared is not None:
                x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.layers[-1](x)


def _pruned(result):
    return [r for r in result.report if r.status != "SKIPPED"]


def _check(model, result, target, min_per_unit):
    rows = _pruned(result)
    total = sum(r.total for r in rows)
    kept = sum(r.nonzeros_after for r in rows)
    assert budget.within_tolerance(1 - kept / total, target, total), (kept, total, target)
    assert result.options["global_sparsity"] == pytest.approx(1 - kept / total)
    floors = budget.layer_floors({r.name: r.shape for r in rows}, min_per_unit)
    assert all(r.nonzeros_after >= floors[r.name] for r in rows), (
        {r.name: r.nonzeros_after for r in rows}, floors)
    modules = dict(result.model.named_modules())
    for r in rows:    # the model holds what the report says
        assert int((modules[r.name].weight != 0).sum()) == r.nonzeros_after
    if getattr(model, "never", None) is not None:
        assert "never" in result.skipped
        skipped = [r for r in result.report if r.name == "never"]
        assert skipped and skipped[0].status == "SKIPPED"
        assert torch.equal(modules["never"].weight, model.never.weight)


# ---- item 7: the marginal split reaches its target -------------------------------------------
@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 4))
    return model, torch.randn(200, 20)


@pytest.mark.parametrize("target", [0.3, 0.6, 0.7])
def test_marginal_split_reaches_the_target(chain, target):
    model, x = chain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nettrim.PruningWarning)
        result = nettrim.prune(model, x, sparsity=target, scope="global", allocation="marginal")
    _check(model, result, target, budget.DEFAULT_MIN_PER_UNIT)


def test_marginal_split_moves_past_tied_counts():
    class Fake:
        def __init__(self, name, pts):
            self.name = name
            self.solved = {eps: type("R", (), {"report": {"nonzeros": k, "relative_error": e}})()
                           for eps, k, e in pts}
    a = Fake("a", [(0.1, 100, 0.0), (0.2, 100, 0.05), (0.3, 60, 0.1), (0.4, 20, 0.6)])
    b = Fake("b", [(0.1, 50, 0.0), (0.2, 50, 0.01)])      # no sparser solution at all
    eps, counts = budget.marginal_split([a, b], 90, {"a": 10, "b": 10})
    assert sum(counts.values()) == 90 and counts["a"] >= 10 and counts["b"] >= 10
    eps, counts = budget.marginal_split([a, b], 40, {"a": 10, "b": 10})   # past every solution
    assert sum(counts.values()) == 40 and counts["a"] >= 10 and counts["b"] >= 10


# ---- item 8: a layer the forward pass never calls --------------------------------------------
@pytest.fixture(scope="module")
def with_uncalled():
    torch.manual_seed(0)
    return Odd([20, 16, 4], uncalled=True), torch.randn(200, 20)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_uncalled_layer_is_skipped_and_the_target_reached(with_uncalled, allocation):
    model, x = with_uncalled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nettrim.PruningWarning)
        result = nettrim.prune(model, x, sparsity=0.5, scope="global", allocation=allocation,
                               **FAST)
    _check(model, result, 0.5, budget.DEFAULT_MIN_PER_UNIT)
    assert set(result.options["allocation"]) == {"layers.0", "layers.1"}


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "wanda"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_baselines_skip_an_uncalled_layer(with_uncalled, method, scope):
    model, x = with_uncalled
    result = prune_baseline(model, x, method, 0.5, scope=scope)
    rows = _pruned(result)
    assert [r.name for r in rows] == ["layers.0", "layers.1"]
    total = sum(r.total for r in rows)
    if scope == "global":
        assert sum(r.nonzeros_after for r in rows) == total - round(0.5 * total)
    assert "never" in result.skipped
    assert [r.status for r in result.report if r.name == "never"] == ["SKIPPED"]


FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.never = nn.Linear(16, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def build():
    return Net()
'''


@pytest.fixture(scope="module")
def odd_cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd_cli")
    (root / "archodd.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        import archodd
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = archodd.build().eval()
            x = torch.randn(60, 12)
        torch.save(model.state_dict(), root / "sd.pt")
        np.savez(root / "calib.npz", x=x.numpy(), y=model(x).argmax(1).numpy())
        np.savez(root / "unlabelled.npz", x=x.numpy())
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("archodd", None)


def _odd_prune(root, out, data, *extra):
    return main(["prune", str(root / "sd.pt"), "--arch", "archodd:build", "--data",
                 str(root / data), "--out", str(out), "--threads", "1", "--max-iter", "300",
                 "--reweight", "0", "--lenient", "-q", *extra])


@pytest.mark.parametrize("data, loss", [("calib.npz", "cross_entropy"),
                                        ("unlabelled.npz", "output_discrepancy")])
def test_cli_global_with_an_uncalled_layer(odd_cli, tmp_path, capsys, data, loss):
    out = tmp_path / "g.pt"
    code = _odd_prune(odd_cli, out, data, "--sparsity", "0.6", "--global")
    assert code == 0, capsys.readouterr().err
    doc = json.loads(report_path_for(out).read_text())
    options = doc["options"]["prune"]
    assert set(options["allocation"]) == {"a", "b"}
    assert budget.within_tolerance(options["global_sparsity"], 0.6, 12 * 16 + 16 * 3)
    assert options["allocation_loss"] == loss     # the data's labels, when it has them
    assert [r["status"] for r in doc["layers"] if r["name"] == "never"] == ["SKIPPED"]


def test_cli_allocation_flag(odd_cli, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert _odd_prune(odd_cli, out, "calib.npz", "--sparsity", "0.6", "--global",
                      "--allocation", "magnitude") == 0
    doc = json.loads(report_path_for(out).read_text())
    assert doc["options"]["prune"]["allocation_rule"] == "magnitude"
    assert _odd_prune(odd_cli, tmp_path / "x.pt", "calib.npz", "--sparsity", "0.6",
                      "--allocation", "loss") == 2
    assert "add --global" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


# ---- item 9: sparsity 0, and a budget exactly at the floors ---------------------------------
@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_global_sparsity_zero_prunes_nothing(chain, allocation):
    model, x = chain
    result = nettrim.prune(model, x, sparsity=0.0, scope="global", allocation=allocation)
    for name, module in result.model.named_modules():
        if isinstance(module, nn.Linear):
            assert torch.equal(module.weight, dict(model.named_modules())[name].weight)
    assert all(r.iterations == 0 for r in result.report)    # nothing was solved
    assert result.options["global_sparsity"] == 0.0


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_budget_exactly_at_the_floors(chain, allocation):
    model, x = chain
    floors = budget.layer_floors({"0": (16, 20), "2": (8, 16), "4": (4, 8)}, 4)
    target = 1 - sum(floors.values()) / 480                  # 0.7667
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nettrim.PruningWarning)
        result = nettrim.prune(model, x, sparsity=target, scope="global", allocation=allocation,
                               **FAST)
    _check(model, result, target, 4)
    if allocation in ("epsilon", "marginal"):   # the others may take the per-layer
        # pipeline's solutions, within its sparsity tolerance
        assert {n: a["kept"] for n, a in result.options["allocation"].items()} == floors


# ---- hypothesis: odd models -----------------------------------------------------------------
@st.composite
def odd_models(draw):
    depth = draw(st.integers(2, 3))
    widths = [draw(st.integers(2, 8))] + [draw(st.integers(1, 8)) for _ in range(depth)]
    return dict(widths=widths, shared=draw(st.booleans()), uncalled=draw(st.booleans()),
                min_per_unit=draw(st.sampled_from([0, 1, 2, 4])),
                where=draw(st.sampled_from(["zero", "floors", "between"])),
                between=draw(st.floats(0.05, 0.95)),
                allocation=draw(st.sampled_from(ALLOCATIONS)), seed=draw(st.integers(0, 3)))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=odd_models())
def test_global_budgets_on_odd_models(case):
    torch.manual_seed(case["seed"])
    model = Odd(case["widths"], shared=case["shared"], uncalled=case["uncalled"]).eval()
    x = torch.randn(40, case["widths"][0])
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n != "never"}
    total = sum(M * N for M, N in shapes.values())
    low = 1 - sum(budget.layer_floors(shapes, case["min_per_unit"]).values()) / total
    target = {"zero": 0.0, "floors": low, "between": case["between"] * low}[case["where"]]
    target = min(target, 0.999)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nettrim.prune(model, x, sparsity=target, scope="global",
                               allocation=case["allocation"], min_per_unit=case["min_per_unit"],
                               **FAST)
    _check(model, result, target, case["min_per_unit"])
