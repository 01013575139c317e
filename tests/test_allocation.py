"""The loss-aware global budget (allocation="loss"): ladders, the search, labels, the driver."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nettrim
from nettrim import budget
from nettrim.allocation import (CalibrationLoss, LayerLadder, anchor_weight, ladder_counts,
                                least_squares_on_support, search_levels)

FAST = dict(reweight=0, solver_options={"max_iter": 400})


@pytest.fixture(scope="module")
def classifier():
    """A 12-24-12-3 ReLU MLP trained briefly on three Gaussian blobs, with 240 labelled rows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        centers = torch.randn(3, 12)
        y = torch.randint(0, 3, (240,))
        x = centers[y] + 1.5 * torch.randn(240, 12)
        model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                              nn.Linear(12, 3))
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(150):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), x, y


def _kept(result):
    return sum(r.nonzeros_after for r in result.report if r.status != "SKIPPED")


def _ce(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


# ---- the ladder ----------------------------------------------------------------------------
def test_least_squares_on_support_matches_lstsq():
    torch.manual_seed(0)
    X = torch.randn(50, 9, dtype=torch.float64)
    T = torch.randn(50, 4, dtype=torch.float64)
    support = torch.rand(4, 9) < 0.5
    support[2] = False            # a neuron with no weights
    support[3] = True             # and one with all
    W, inv = least_squares_on_support(X.T @ X, X.T @ T, support, inverse_diagonal=True)
    for m in range(4):
        cols = support[m].nonzero().flatten()
        assert bool((W[m, ~support[m]] == 0).all())
        if len(cols) == 0:
            continue
        ref = torch.linalg.lstsq(X[:, cols], T[:, m:m + 1]).solution.flatten()
        assert torch.allclose(W[m, cols], ref, atol=1e-6)
        H = torch.linalg.inv(X[:, cols].T @ X[:, cols])
        assert torch.allclose(inv[m, cols], H.diagonal(), rtol=1e-4)


def test_ladder_counts_and_nested_supports():
    counts = ladder_counts(60, 12, 150, levels=8)
    assert counts[0] == 150 and counts[-1] == 12 and 60 in counts
    assert counts == sorted(set(counts), reverse=True)
    torch.manual_seed(1)
    X, W0 = torch.randn(80, 10), torch.randn(6, 10)
    b0 = torch.randn(6)
    T = X @ W0.T + b0
    anchor = W0 * (torch.rand(6, 10) < 0.5)
    ladder = LayerLadder("l", X, T, weight_columns=10, bias=True).build(anchor, [60, 40, 30, 20, 8])
    kept = [r.kept for r in ladder.rungs]
    assert kept == sorted(kept, reverse=True)
    assert set(kept) >= {60, 40, 20, 8} and int((anchor != 0).sum()) in kept
    for rung in ladder.rungs:
        assert int((rung.weight != 0).sum()) <= rung.kept and rung.bias.shape == (6,)
    # the full support refits the original weights exactly; fewer weights fit worse
    errors = [float((X @ r.weight.T + r.bias - T).norm()) for r in ladder.rungs]
    assert errors[0] < 1e-3 and errors == sorted(errors)
    dense = ladder.extend(len(ladder.rungs) - 1, 5)
    assert dense.kept == ladder.rungs[-1].kept + 5


def test_ladder_of_a_grouped_layer_keeps_groups_apart():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 4, 3, groups=2, bias=False)
    x = torch.randn(20, 4, 6, 6)
    data = nettrim.capture(nn.Sequential(conv, nn.ReLU()), x)["0"]
    W0 = conv.weight.detach().flatten(1)
    ladder = LayerLadder("0", data.X, data.pre, weight_columns=W0.shape[1], groups=2).build(
        W0, [36, 20, 10])
    assert [r.weight.shape for r in ladder.rungs] == [(4, 18)] * len(ladder.rungs)
    assert torch.allclose(ladder.rungs[0].weight, W0, atol=1e-4)   # the full support: exact


def test_anchor_is_net_trims_support_at_the_count(classifier):
    model, x, _ = classifier
    data = nettrim.capture(model, x)["0"]
    weight, status = anchor_weight(data.X, data.post, model[0].weight.detach(),
                                   model[0].bias.detach(), 100, relu=True)
    assert status in ("OPTIMAL", "OPTIMAL_INACCURATE", "SETTLED")
    assert abs(int((weight != 0).sum()) - 100) <= max(2, 0.005 * 288)


# ---- the search ----------------------------------------------------------------------------
def test_search_finds_the_best_additive_split():
    kept = {"a": [100, 60, 30, 10], "b": [50, 25, 12]}
    cost = {"a": [0.0, 0.1, 0.5, 2.0], "b": [0.0, 0.35, 0.6]}

    def loss_of(choice):
        return sum(cost[n][choice[n]] if choice.get(n) is not None else 0.0 for n in kept)

    choice, trace = search_levels(kept, 85, loss_of)
    best = min(((i, j) for i in range(4) for j in range(3) if kept["a"][i] + kept["b"][j] <= 85),
               key=lambda ij: cost["a"][ij[0]] + cost["b"][ij[1]])
    assert (choice["a"], choice["b"]) == best
    assert trace["loss"] == pytest.approx(cost["a"][best[0]] + cost["b"][best[1]])


def test_local_search_fixes_what_the_proxy_misses():
    """A loss that punishes pruning both layers together: the proxy splits, the search not."""
    kept = {"a": [10, 5, 1], "b": [10, 5, 1]}

    def loss_of(choice):
        ja, jb = (choice.get(n) or 0 for n in ("a", "b"))
        return ja + jb + (10.0 if ja and jb else 0.0) + (0.1 if ja == 2 or jb == 2 else 0.0)

    choice, trace = search_levels(kept, 11, loss_of)
    assert sorted([choice["a"], choice["b"]]) == [0, 2]
    assert trace["loss"] < trace["proxy_loss"] and trace["moves"] >= 1


# ---- the driver ----------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_loss_allocation_reaches_the_count(classifier, sparsity):
    model, x, y = classifier
    result = nettrim.prune(model, x, sparsity=sparsity, scope="global", targets=y, **FAST)
    total = sum(r.total for r in result.report)
    assert _kept(result) == total - round(sparsity * total)
    opts = result.options
    assert opts["allocation_rule"] == "loss" and opts["allocation_loss"] == "cross_entropy"
    assert opts["seconds_database"] > 0 and opts["seconds_search"] > 0
    assert opts["loss"]["evaluations"] >= 1 and opts["loss"]["loss"] <= opts["loss"]["proxy_loss"]
    assert opts["loss"]["final_loss"] == pytest.approx(_ce(result.model, x, y), rel=1e-4)
    modules = dict(result.model.named_modules())
    for row in result.report:   # what the model holds is what the report says
        assert int((modules[row.name].weight != 0).sum()) == row.nonzeros_after
        assert row.status in ("OPTIMAL", "OPTIMAL_INACCURATE")
        assert math.isfinite(row.relative_error)
    assert opts["loss"]["final_loss"] == min(opts["loss"]["ladder_loss"],
                                             opts["loss"]["resolved_loss"])
    assert int((model[0].weight != 0).sum()) == 288        # the original is untouched


def test_loss_allocation_respects_the_guard(classifier):
    model, x, y = classifier
    result = nettrim.prune(model, x, sparsity=0.6, scope="global", min_per_unit=6, targets=y,
                           **FAST)
    floors = budget.layer_floors({"0": (24, 12), "2": (12, 24), "4": (3, 12)}, 6)
    alloc = result.options["allocation"]
    assert all(alloc[n]["kept"] >= floors[n] for n in floors)
    assert set(result.options["floored"]) == {n for n in floors if alloc[n]["kept"] <= floors[n]}
    at_floors = 1 - sum(floors.values()) / 612      # a budget the floors use up exactly
    result = nettrim.prune(model, x, sparsity=at_floors, scope="global", min_per_unit=6,
                           targets=y, **FAST)
    assert {n: a["kept"] for n, a in result.options["allocation"].items()} == floors
    assert sorted(result.options["floored"]) == sorted(floors)


@pytest.mark.parametrize("sparsity", [0.6, 0.7])
def test_loss_allocation_no_worse_than_the_magnitude_split(classifier, sparsity):
    model, x, y = classifier
    ours = nettrim.prune(model, x, sparsity=sparsity, scope="global", targets=y, **FAST)
    theirs = nettrim.prune(model, x, sparsity=sparsity, scope="global",
                           allocation="magnitude", **FAST)
    assert _kept(ours) == _kept(theirs)
    assert _ce(ours.model, x, y) <= _ce(theirs.model, x, y) + 1e-6


def test_cascade_refits_on_the_pruned_inputs(classifier):
    model, x, y = classifier
    # the rungs themselves (without per_layer_prune, parallel mode does not re-solve)
    parallel = budget.prune_global(model, x, 0.7, targets=y, **FAST)
    assert parallel.options["loss"]["kept_solution"] == "ladder"
    cascade = nettrim.prune(model, x, sparsity=0.7, scope="global", targets=y, mode="cascade",
                            **FAST)
    assert cascade.options["allocation"] == parallel.options["allocation"]
    assert cascade.options["mode"] == "cascade" and cascade.options["seconds_final"] > 0
    assert all("pruned layers" in r.note for r in cascade.report)
    # the first layer sees the original inputs either way; the last one's error is the output's
    assert torch.allclose(cascade.model[0].weight, parallel.model[0].weight, atol=1e-5)
    assert cascade.report[-1].relative_error == pytest.approx(cascade.output_error, rel=1e-3)
    assert not torch.equal(cascade.model[4].weight, parallel.model[4].weight)


def test_labels_from_batches_and_without_labels(classifier):
    model, x, y = classifier
    pairs = [(x[i:i + 80], y[i:i + 80]) for i in range(0, 240, 80)]
    with_pairs = nettrim.prune(model, pairs, sparsity=0.7, scope="global", **FAST)
    assert with_pairs.options["allocation_loss"] == "cross_entropy"
    plain = nettrim.prune(model, x, sparsity=0.7, scope="global", **FAST)
    assert plain.options["allocation_loss"] == "output_discrepancy"
    assert "output discrepancy" in budget.format_allocation(plain.options)
    regression = nettrim.prune(model, x, sparsity=0.7, scope="global",
                               targets=model(x).detach(), **FAST)
    assert regression.options["allocation_loss"] == "mse"


def test_calibration_loss_values(classifier):
    model, x, y = classifier
    loss = CalibrationLoss(model, x, y)
    assert loss.kind == "cross_entropy" and loss.dense == pytest.approx(_ce(model, x, y), rel=1e-5)
    assert CalibrationLoss(model, x).dense == 0.0       # the dense model against itself


def test_targets_bad_input(classifier):
    model, x, y = classifier
    with pytest.raises(ValueError, match="targets must have one entry per input row"):
        nettrim.prune(model, x, sparsity=0.7, scope="global", targets=y[:10])
    with pytest.raises(ValueError, match="need scope='global'"):
        nettrim.prune(model, x, sparsity=0.7, targets=y)
    with pytest.raises(ValueError, match="allocation='loss'"):
        nettrim.prune(model, x, sparsity=0.7, scope="global", allocation="epsilon", targets=y)
    with pytest.raises(TypeError, match="tensor of inputs"):
        nettrim.prune(model, [x], sparsity=0.7, scope="global", targets=y)
    with pytest.raises(ValueError, match="mode='parallel'"):
        nettrim.prune(model, x, sparsity=0.7, scope="global", allocation="marginal",
                      mode="cascade")
    with pytest.raises(ValueError, match="levels must be"):
        budget.prune_global(model, x, 0.8, levels=1)
