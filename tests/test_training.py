"""Pruning during training: the schedules' arithmetic checked exactly against the papers'
formulas, the masks (zeros stay zero; DNS splices back only by its rule), the pruners in a
user's own loop, train_prune on a tiny model for every method, and resuming from a checkpoint."""

import math
import statistics

import pytest
import torch
from torch import nn

import nettrim
from nettrim.train_prune import METHODS, train_prune
from nettrim.training import (ConstantSparsity, DNSPruner, GradualPruner, HanPruner,
                              PolynomialDecay, SpliceMask, adjust_dropout, dns_probability,
                              dns_thresholds, han_threshold)
from nettrim.training.schedules import round_sparsity


def mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(10, 32), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def task(n=240, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0.5).long()
    return x, y


def train_loop(model, pruner, x, y, steps, *, lr=0.05, check=None):
    """A user's own loop: pruner.step() before each batch, SGD with momentum and weight decay
    (both would move a zero weight that no mask held)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    for t in range(steps):
        before = pruner.masks
        pruner.step()
        if check is not None:
            check(before, pruner)
        i = (t * 40) % x.shape[0]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 40]), y[i:i + 40]).backward()
        opt.step()


def effective(pruner, name):
    m = pruner.layers[name]
    return (m.weight_orig * m.weight_mask).detach()


# ---- the arithmetic -------------------------------------------------------------------------
def test_polynomial_decay_values_and_update_steps():
    s = PolynomialDecay(0.9, end_step=110, initial_sparsity=0.1, begin_step=10, frequency=25)
    assert s.sparsity(0) == pytest.approx(0.1, abs=1e-15)
    assert s.sparsity(10) == pytest.approx(0.1, abs=1e-15)
    assert s.sparsity(60) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3, abs=1e-15)
    assert s.sparsity(35) == pytest.approx(0.9 - 0.8 * 0.75 ** 3, abs=1e-15)
    assert s.sparsity(110) == 0.9 and s.sparsity(500) == 0.9
    due = [t for t in range(0, 200) if s(t)[0]]
    assert due == [10, 35, 60, 85, 110]
    quadratic = PolynomialDecay(0.5, end_step=4, power=2, frequency=1)
    assert [quadratic(t)[1] for t in range(5)] == pytest.approx(
        [0.5 - 0.5 * (1 - t / 4) ** 2 for t in range(5)])
    with pytest.raises(ValueError, match="end_step must be an int >= 11"):
        PolynomialDecay(0.9, end_step=10, begin_step=10)
    with pytest.raises(ValueError, match=r"final_sparsity must be a number in \[0, 1\)"):
        PolynomialDecay(1.0, end_step=10)
    with pytest.raises(ValueError, match="power must be a number > 0"):
        PolynomialDecay(0.5, end_step=10, power=0)


def test_constant_sparsity():
    s = ConstantSparsity(0.7, begin_step=5, end_step=30, frequency=10)
    assert [t for t in range(50) if s(t)[0]] == [5, 15, 25, 30]
    assert s(4) == (False, 0.0) and s(15) == (True, 0.7) and s(40) == (False, 0.7)
    assert [t for t in range(25) if ConstantSparsity(0.5, frequency=7)(t)[0]] == [0, 7, 14, 21]


def test_round_sparsity_keeps_the_same_fraction_each_round():
    s = [round_sparsity(0.99, r, 3) for r in range(4)]
    assert s[0] == 0 and s[3] == 0.99
    kept = [1 - v for v in s]
    assert kept[1] / kept[0] == pytest.approx(kept[2] / kept[1]) == pytest.approx(0.01 ** (1 / 3))


def test_han_threshold_is_quality_times_std():
    w = torch.tensor([[0.3, -1.2, 0.05], [2.0, -0.7, 0.4]], dtype=torch.float64)
    expected = 0.8 * statistics.stdev([0.3, -1.2, 0.05, 2.0, -0.7, 0.4])
    assert han_threshold(w, 0.8) == pytest.approx(expected, rel=1e-12)
    assert han_threshold(w, 0) == 0
    with pytest.raises(ValueError, match="quality must be a number >= 0"):
        han_threshold(w, -1)


def test_adjust_dropout_formula():
    assert adjust_dropout(0.5, 9, 100) == pytest.approx(0.5 * math.sqrt(0.09), abs=1e-15)
    assert adjust_dropout(0.5, 100, 100) == 0.5
    assert adjust_dropout(0.3, 0, 10) == 0
    assert nettrim.adjust_dropout is adjust_dropout
    with pytest.raises(ValueError, match="must not exceed connections_original"):
        adjust_dropout(0.5, 11, 10)
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\)"):
        adjust_dropout(1.5, 1, 10)
    with pytest.raises(ValueError, match="connections_original must be an int >= 1"):
        adjust_dropout(0.5, 0, 0)


def test_dns_probability_and_thresholds():
    assert dns_probability(0) == 1.0
    assert dns_probability(5000) == pytest.approx(1 / 1.5, abs=1e-15)
    assert dns_probability(5000, gamma=1e-4, power=2) == pytest.approx(1 / 2.25, abs=1e-15)
    assert dns_probability(10 ** 4, gamma=2e-4, power=0.5) == pytest.approx(3 ** -0.5)
    assert dns_thresholds(0.2, 0.1, 3.0) == pytest.approx((0.45, 0.55))
    assert dns_thresholds(0.2, 0.1, -4.0) == (0.0, 0.0)   # t = max(mu + c sigma, 0)
    with pytest.raises(ValueError, match="gamma must be a number >= 0"):
        dns_probability(1, gamma=-1)


# ---- the masks ------------------------------------------------------------------------------
def test_splice_mask_passes_the_gradient_to_cut_weights():
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    mask = torch.tensor([[1, 0, 1, 0, 1]] * 4, dtype=torch.bool)
    plain, splice = nn.Linear(5, 4), nn.Linear(5, 4)
    splice.load_state_dict(plain.state_dict())
    torch.nn.utils.prune.custom_from_mask(plain, "weight", mask)
    SpliceMask.apply(splice, "weight", mask=mask)
    assert torch.equal(plain(x), splice(x))
    plain(x).square().sum().backward()
    splice(x).square().sum().backward()
    # the gradient of the masked weight W * mask, on every entry
    w = (splice.weight_orig * mask).detach().requires_grad_()
    nn.functional.linear(x, w, splice.bias.detach()).square().sum().backward()
    assert torch.allclose(splice.weight_orig.grad, w.grad)
    assert (w.grad[~mask] != 0).all()
    assert torch.equal(plain.weight_orig.grad, w.grad * mask)


@pytest.mark.parametrize("kind", ["han", "gradual"])
def test_pruned_weights_stay_zero_and_never_come_back(kind):
    x, y = task()
    model = mlp()
    if kind == "han":
        pruner = HanPruner(model, 0.8, rounds=3, round_steps=10)
    else:
        pruner = GradualPruner(model, PolynomialDecay(0.8, end_step=25, frequency=5))

    def check(before, p):
        for name, mask in p.masks.items():
            assert not (mask & ~before[name]).any(), "a cut weight came back"
            assert (effective(p, name)[~mask] == 0).all()
            newly = before[name] & ~mask   # cut at this step: weight_orig zeroed too
            assert (p.layers[name].weight_orig[newly] == 0).all()
    train_loop(model, pruner, x, y, 40, check=check)
    for name, s in pruner.sparsity().items():
        n = pruner.layers[name].weight_orig.numel()
        assert s == pytest.approx(math.floor(0.8 * n + 0.5) / n)
    masks = pruner.masks
    for name, mask in masks.items():   # zeros held through the last batches too
        assert (effective(pruner, name)[~mask] == 0).all()
    out = pruner.remove()
    for name, mask in masks.items():   # folded: exact zeros, the rest as trained
        assert (dict(model.named_modules())[name].weight[~mask] == 0).all()
    assert out is model and not hasattr(model[0], "weight_orig")
    assert all(isinstance(m.weight, nn.Parameter) for m in (model[0], model[2], model[4]))


def test_dns_cut_weights_keep_learning_and_come_back_only_by_the_splice_rule():
    x, y = task()
    model = mlp()
    pruner = DNSPruner(model, crate=0.5, gamma=0.0)   # probability 1: every step updates
    bands = {}

    def check(before, p):
        for name, mask in p.masks.items():
            mu, sigma = p.moments[name]
            a, b = dns_thresholds(mu, sigma, 0.5)
            w = p.layers[name].weight_orig.detach().abs()
            spliced = mask & ~before[name]
            cut = ~mask & before[name]
            assert (w[spliced] > b).all() and (w[cut] <= a).all()
            # between the thresholds a weight keeps its state
            middle = (w > a) & (w <= b)
            assert torch.equal(mask[middle], before[name][middle])
            assert (effective(p, name)[~mask] == 0).all()
            bands.setdefault(name, 0)
            bands[name] += int(spliced.sum())
    first = {n: m.weight_orig.detach().clone() for n, m in pruner.layers.items()}
    pruner.step()
    cut0 = {n: ~m for n, m in pruner.masks.items()}
    train_loop(model, pruner, x, y, 60, lr=0.2, check=check)
    moved = [bool((pruner.layers[n].weight_orig.detach()[cut0[n]] != first[n][cut0[n]]).any())
             for n in pruner.layers]
    assert all(moved), "cut weights must keep receiving updates"
    assert sum(bands.values()) > 0, "some weights should have been spliced back"
    assert 0.2 < pruner.total_sparsity() < 0.9


def test_dns_splices_a_weight_that_grows_and_hits_its_target():
    model = mlp()
    pruner = DNSPruner(model, 0.75, gamma=0.0, iter_stop=3)
    pruner.step()
    name = "0"
    mask = pruner.masks[name]
    i = torch.nonzero(~mask)[0]
    t = pruner.layers[name].weight_orig.detach().abs().flatten().kthvalue(
        int(math.floor(0.75 * 320 + 0.5))).values
    with torch.no_grad():
        pruner.layers[name].weight_orig[tuple(i)] = 5 * float(t) + 1
    pruner.step()
    assert pruner.masks[name][tuple(i)]
    pruner.step()
    pruner.step()   # iteration 3 = iter_stop: the final cut to the exact count
    assert pruner.final_cut
    for n, s in pruner.sparsity().items():
        count = pruner.layers[n].weight_orig.numel()
        assert s == pytest.approx(math.floor(0.75 * count + 0.5) / count)


def test_han_lowers_dropout_and_learning_rate():
    model = mlp(dropout=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = HanPruner(model, 0.9, rounds=2, round_steps=5, optimizer=opt, lr_factor=0.1)
    pruner.step()
    kept = pruner.nonzeros()["0"]
    assert model[2].p == pytest.approx(0.5 * math.sqrt(kept / 320))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for _ in range(5):
        pruner.step()
    assert pruner.round == 2 and opt.param_groups[0]["lr"] == pytest.approx(0.01)   # once
    assert model[2].p == pytest.approx(0.5 * math.sqrt(32 / 320))
    # quality mode: the paper's rule itself
    model = mlp()
    q = HanPruner(model, quality=0.5, rounds=1)
    w0 = model[0].weight.detach().clone()
    q.step()
    threshold = 0.5 * float(w0.std())
    assert torch.equal(q.masks["0"], w0.abs() >= threshold)
    assert q.thresholds["0"] == pytest.approx(threshold)


def test_pruner_state_round_trip_and_bad_arguments():
    model = mlp()
    pruner = DNSPruner(model, 0.6, seed=3)
    for _ in range(4):
        pruner.step()
    state = pruner.state_dict()
    other = DNSPruner(mlp(), 0.6, seed=99)
    other.load_state_dict(state)
    assert other.iteration == 4 and other.moments == pruner.moments
    assert all(torch.equal(other.masks[n], m) for n, m in pruner.masks.items())
    assert float(torch.rand((), generator=other.generator)) == float(
        torch.rand((), generator=pruner.generator))
    with pytest.raises(ValueError, match="state is of a 'dns' pruner, not 'han'"):
        HanPruner(mlp(), 0.5).load_state_dict(state)
    fresh = mlp()
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        HanPruner(fresh)
    with pytest.raises(ValueError, match="sparsity dict misses layers"):
        DNSPruner(fresh, {"0": 0.5})
    assert not hasattr(fresh[0], "weight_orig"), "a rejected pruner leaves no masks"
    with pytest.raises(ValueError, match="unknown"):
        GradualPruner(fresh, {"9": PolynomialDecay(0.5, end_step=3)})
    with pytest.raises(TypeError, match="PolynomialDecay or ConstantSparsity"):
        GradualPruner(fresh, 0.5)
    assert not hasattr(fresh[0], "weight_orig")
    pruner.remove()
    with pytest.raises(RuntimeError, match="masks were removed"):
        pruner.step()


def test_dns_re_solves_its_threshold_every_refresh_iterations():
    every = DNSPruner(mlp(), 0.6, seed=3, refresh=1, gamma=0.0)   # gamma 0: every step updates
    held = DNSPruner(mlp(), 0.6, seed=3, refresh=1000, gamma=0.0)
    third = DNSPruner(mlp(), 0.6, seed=3, refresh=3, gamma=0.0)
    for _ in range(5):
        for pruner in (every, held, third):
            pruner.step()
    last = every.iteration - 1
    assert all(it == last for it, _ in every.solved.values())
    assert all(it == 0 for it, _ in held.solved.values())
    assert all(it == 3 for it, _ in third.solved.values())
    with pytest.raises(ValueError, match="refresh must be an int >= 1"):
        DNSPruner(mlp(), 0.6, refresh=0)


# ---- the whole loop -------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_train_prune_reaches_its_sparsity(method):
    x, y = task()
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"rounds": 2}
    if method == "nettrim":
        options.update(calibration_samples=120, prune_options={"max_samples": 120})
    result = train_prune(model, (x, y), method, sparsity={"0": 0.8, "2": 0.7, "4": 0.5},
                         epochs=2, batch_size=40, eval_data=(x, y),
                         options=options if method in ("han", "nettrim") else None)
    for k, v in model.state_dict().items():   # not in place
        assert torch.equal(v, before[k])
    counts = {"0": 320, "2": 512, "4": 48}
    for name, s in {"0": 0.8, "2": 0.7, "4": 0.5}.items():
        n = counts[name]
        assert result.sparsity[name] == pytest.approx(math.floor(s * n + 0.5) / n)
    assert len(result.history) == 2 and result.history[-1]["step"] == 12
    assert 0 <= result.history[-1]["accuracy"] <= 1
    total = sum(counts.values())
    nonzero = sum(round((1 - result.sparsity[n]) * counts[n]) for n in counts)
    assert result.compression == pytest.approx(total / nonzero)
    assert not any(hasattr(m, "weight_orig") for m in result.model.modules())
    if method == "nettrim":
        assert [r["round"] for r in result.rounds] == [1, 2]


def test_train_prune_resumes_after_an_interruption(tmp_path):
    x, y = task()
    path = tmp_path / "run.pt"
    kwargs = dict(sparsity=0.7, epochs=3, batch_size=40, eval_data=(x, y), checkpoint=path)
    straight = train_prune(mlp(), (x, y), "dns", **dict(kwargs, checkpoint=tmp_path / "a.pt"))

    def stop(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_prune(mlp(), (x, y), "dns", on_epoch=stop, **kwargs)
    assert path.is_file() and not list(tmp_path.glob(".*.part"))
    resumed = train_prune(mlp(), (x, y), "dns", **kwargs)
    assert resumed.resumed_from == 2
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    keep = ("epoch", "step", "loss", "accuracy", "sparsity", "compression")
    assert [{k: h[k] for k in keep} for h in straight.history] == \
        [{k: h[k] for k in keep} for h in resumed.history]
    with pytest.raises(ValueError, match="other options"):
        train_prune(mlp(), (x, y), "dns", **dict(kwargs, sparsity=0.5))
    fresh = train_prune(mlp(), (x, y), "dns", resume=False, **kwargs)
    assert fresh.resumed_from == 0


def test_train_prune_bad_arguments():
    x, y = task()
    with pytest.raises(ValueError, match="method must be one of"):
        train_prune(mlp(), (x, y), "obd")
    with pytest.raises(ValueError, match="rounds \\(4\\) must not exceed epochs \\(2\\)"):
        train_prune(mlp(), (x, y), "han", epochs=2, options={"rounds": 4})
    with pytest.raises(ValueError, match="2 rounds every 2 epoch\\(s\\) do not fit in 2 epochs"):
        train_prune(mlp(), (x, y), "nettrim", epochs=2, options={"rounds": 2, "round_epochs": 2})
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train_prune(mlp(), (x, y), "gradual", lr=0.0)
    with pytest.raises(ValueError, match="sparsity names unknown layers"):
        train_prune(mlp(), (x, y), "gradual", sparsity={"7": 0.5})
    with pytest.raises(TypeError, match="loader must be"):
        train_prune(mlp(), "data", "gradual")
