"""Global sparsity budgets (scope="global"): allocation, guard, baselines' global rules."""

import pytest
import torch
from torch import nn

import nettrim
from nettrim import budget
from nettrim.baselines import prune_baseline

SHAPES = {"0": (40, 30), "2": (16, 40), "4": (3, 16)}
FAST = dict(reweight=0, refit=False, solver_options={"max_iter": 300})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    x = torch.randn(80, 30)
    return model, x


def _kept(result):
    return sum(r.nonzeros_after for r in result.report)


def test_keep_masks_exact_count_and_guard():
    torch.manual_seed(1)
    big = torch.randn(10, 40).abs() * 10      # large weights: a plain global ranking starves `small`
    small = torch.randn(5, 8).abs() * 0.01
    masks = budget.global_keep_masks({"big": big, "small": small}, 0.8, min_per_unit=0)
    assert int(masks["small"].sum()) == 0          # without the guard the layer collapses
    assert sum(int(m.sum()) for m in masks.values()) == 440 - round(0.8 * 440)
    masks = budget.global_keep_masks({"big": big, "small": small}, 0.8, min_per_unit=2)
    assert int(masks["small"].sum()) == 2 * 5      # held at its floor
    assert sum(int(m.sum()) for m in masks.values()) == 88
    kept_big = big[masks["big"]]
    assert float(kept_big.min()) >= float(big[~masks["big"]].max())


def test_keep_masks_rejects_impossible_budget_and_bad_values():
    w = {"a": torch.ones(10, 10)}
    with pytest.raises(ValueError, match="layer-collapse guard needs 50"):
        budget.global_keep_masks(w, 0.9, min_per_unit=5)
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            budget.global_keep_masks(w, bad)
    with pytest.raises(TypeError, match="dict"):
        budget.global_keep_masks(w, {"a": 0.5})
    with pytest.raises(ValueError, match="min_per_unit"):
        budget.global_keep_masks(w, 0.5, min_per_unit=-1)


def test_interpolated_counts_hit_target():
    counts = budget.interpolated_counts({"a": 100, "b": 50}, {"a": 40, "b": 30}, 101)
    assert sum(counts.values()) == 101
    assert 40 <= counts["a"] <= 100 and 30 <= counts["b"] <= 50


@pytest.mark.parametrize("allocation", ["epsilon", "marginal"])
def test_prune_global_reaches_budget_and_reports_allocation(tiny, allocation):
    model, x = tiny
    result = nettrim.prune(model, x, sparsity=0.75, scope="global", allocation=allocation, **FAST)
    total = sum(r.total for r in result.report)
    reached = 1 - _kept(result) / total
    assert abs(reached - 0.75) <= budget.GLOBAL_TOL
    assert result.options["global_sparsity"] == pytest.approx(reached)
    alloc = result.options["allocation"]
    assert set(alloc) == {"0", "2", "4"}
    assert sum(a["kept"] for a in alloc.values()) == _kept(result)
    floors = budget.layer_floors(SHAPES, 4)
    assert all(alloc[n]["kept"] >= floors[n] for n in alloc)
    # the weights in the model are the reported ones, and the original is untouched
    modules = dict(result.model.named_modules())
    assert all(int((modules[n].weight != 0).sum()) == a["kept"] for n, a in alloc.items())
    assert int((model[0].weight != 0).sum()) == 40 * 30
    assert result.options["search"] and result.options["epsilon_common"] > 0
    assert result.options["allocation_rule"] == allocation


def test_prune_global_guard_floors_a_layer(tiny):
    model, x = tiny
    result = nettrim.prune(model, x, sparsity=0.8, scope="global", min_per_unit=6,
                           allocation="epsilon", **FAST)
    alloc = result.options["allocation"]
    floors = budget.layer_floors(SHAPES, 6)
    assert all(alloc[n]["kept"] >= floors[n] for n in alloc)
    assert result.options["floored"]
    assert abs(result.options["global_sparsity"] - 0.8) <= budget.GLOBAL_TOL


def test_prune_global_bad_input(tiny):
    model, x = tiny
    for bad in (1.0, -0.2):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            nettrim.prune(model, x, sparsity=bad, scope="global")
    with pytest.raises(TypeError, match="dict"):
        nettrim.prune(model, x, sparsity={"0": 0.5}, scope="global")
    with pytest.raises(ValueError, match="scope must be one of"):
        nettrim.prune(model, x, sparsity=0.5, scope="model")
    with pytest.raises(ValueError, match="not an epsilon"):
        nettrim.prune(model, x, epsilon=0.1, scope="global")
    with pytest.raises(ValueError, match="mode='parallel'"):
        nettrim.prune(model, x, sparsity=0.5, scope="global", mode="cascade",
                      allocation="epsilon")
    with pytest.raises(ValueError, match="needs scope='global'"):
        nettrim.prune(model, x, sparsity=0.5, min_per_unit=2)
    with pytest.raises(ValueError, match="guard needs"):
        nettrim.prune(model, x, sparsity=0.95, scope="global", min_per_unit=8)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_baseline_global_rules(tiny, method):
    model, x = tiny
    result = prune_baseline(model, x, method, 0.8, scope="global")
    total = sum(r.total for r in result.report)
    assert _kept(result) == total - round(0.8 * total)
    sparsities = {r.name: r.sparsity for r in result.report}
    assert len(set(round(s, 6) for s in sparsities.values())) > 1   # not uniform
    assert result.options["scope"] == "global"


def test_baseline_global_magnitude_matches_without_guard(tiny):
    model, x = tiny
    ours = prune_baseline(model, x, "magnitude", 0.7, scope="global", min_per_unit=0)
    ref = prune_baseline(model, x, "global_magnitude", 0.7)
    for a, b in zip(ours.report, ref.report):
        assert a.nonzeros_after == b.nonzeros_after


def test_baseline_global_bad_input(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match="global.*only"):
        prune_baseline(model, x, "obd", 0.5, scope="global")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_baseline(model, x, "wanda", 1.0, scope="global")
    with pytest.raises(ValueError, match="scope must be one of"):
        prune_baseline(model, x, "wanda", 0.5, scope="all")


def test_marginal_split_prefers_the_cheaper_layer():
    class Fake:
        def __init__(self, name, pts):
            self.name = name
            self.solved = {eps: type("R", (), {"report": {"nonzeros": k, "relative_error": e}})()
                           for eps, k, e in pts}
    a = Fake("a", [(0.1, 100, 0.0), (0.2, 50, 0.1), (0.4, 10, 0.5)])   # cheap to halve
    b = Fake("b", [(0.1, 100, 0.0), (0.2, 50, 0.6)])                   # expensive
    eps, counts = budget.marginal_split([a, b], 150, {"a": 0, "b": 0})
    assert counts == {"a": 50, "b": 100} and eps == {"a": 0.2, "b": 0.1}
    eps, counts = budget.marginal_split([a, b], 120, {"a": 0, "b": 0})
    assert counts == {"a": 20, "b": 100}     # a's last move is partial (trimmed to the budget)
    assert eps["a"] == 0.2
