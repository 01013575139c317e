"""nettrim.finetune: masked fine-tuning keeps zeros zero, returns plain weights and losses."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from nettrim.baselines import magnitude
from nettrim.data import data_loader
from nettrim.finetune import FinetuneResult, finetune


def model_and_data(seed=0, n=512):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16),
                          nn.ReLU(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 10, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return model, x, y


def pruned(model, s=0.7):
    """Zero the smallest weights of every Linear (magnitude) in place."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(magnitude(m.weight, sparsity=s).weight)
    return model


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_zeros_stay_zero_and_the_rest_trains():
    model, x, y = model_and_data()
    pruned(model)
    before = [m.weight.detach().clone() for m in linears(model)]
    bias_before = [m.bias.detach().clone() for m in linears(model)]
    result = finetune(model, (x, y), epochs=3, lr=1e-2, weight_decay=1e-3)
    assert isinstance(result, FinetuneResult) and result.model is model
    for m, w0, b0 in zip(linears(model), before, bias_before):
        assert torch.equal(m.weight == 0, w0 == 0)          # exactly the same zeros
        assert not torch.equal(m.weight, w0)                # the kept weights moved
        assert not torch.equal(m.bias, b0)                  # biases train too
        assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask")
        assert isinstance(m.weight, nn.Parameter)
    assert len(result.losses) == 3 and all(v > 0 for v in result.losses)
    assert result.losses[-1] < result.losses[0]


def test_sgd_is_one_plain_gradient_step_on_the_kept_weights():
    model, x, y = model_and_data()
    pruned(model)
    reference = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(reference(x), y)
    grads = torch.autograd.grad(loss, [m.weight for m in linears(reference)])
    finetune(model, (x, y), epochs=1, lr=0.1, batch_size=x.shape[0], optimizer="sgd")
    for m, r, g in zip(linears(model), linears(reference), grads):
        kept = r.weight != 0
        expected = torch.where(kept, r.weight - 0.1 * g, torch.zeros_like(g))
        torch.testing.assert_close(m.weight, expected)


def test_saves_as_plain_weights():
    model, x, y = model_and_data()
    pruned(model)
    finetune(model, (x, y), epochs=1)
    fresh, _, _ = model_and_data(seed=5)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh(x), model(x))


def test_tensors_and_dataloader_give_the_same_result():
    m1, x, y = model_and_data()
    m2, _, _ = model_and_data()
    pruned(m1)
    pruned(m2)
    r1 = finetune(m1, (x, y), epochs=2, batch_size=64, seed=3)
    r2 = finetune(m2, data_loader(x, y, batch_size=64, shuffle=True, seed=3), epochs=2, seed=3)
    assert r1.losses == pytest.approx(r2.losses)
    for a, b in zip(linears(m1), linears(m2)):
        assert torch.allclose(a.weight, b.weight)
    # a list of batches works too, and the global RNG is left alone
    state = torch.random.get_rng_state()
    r3 = finetune(m1, [(x[:256], y[:256]), (x[256:], y[256:])], epochs=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert len(r3.losses) == 1


def test_existing_masks_are_used_and_folded():
    model, x, y = model_and_data()
    first = linears(model)[0]
    mask = torch.rand(first.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    torch_prune.custom_from_mask(first, "weight", mask)   # zeros held by a mask, weight_orig dense
    assert (first.weight_orig[~mask] != 0).all()
    finetune(model, (x, y), epochs=1)
    assert not hasattr(first, "weight_orig")
    assert torch.equal(first.weight == 0, ~mask)


def test_only_named_layers_are_held():
    model, x, y = model_and_data()
    pruned(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    held, free = dict(model.named_modules())[names[0]], dict(model.named_modules())[names[1]]
    zeros_free = free.weight == 0
    finetune(model, (x, y), epochs=1, lr=1e-2, layers=[names[0]])
    assert int((held.weight == 0).sum()) > 0
    assert int((free.weight == 0).sum()) < int(zeros_free.sum())  # not held: zeros revived


def test_train_mode_restored_and_masks_removed_after_an_error():
    model, x, y = model_and_data()
    pruned(model)
    model.eval()

    def broken(out, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        finetune(model, (x, y), loss_fn=broken)
    assert not model.training
    assert not any(hasattr(m, "weight_orig") for m in linears(model))


def test_custom_loss():
    model, x, y = model_and_data()
    pruned(model)
    calls = []

    def loss_fn(out, target):
        calls.append(out.shape[0])
        return nn.functional.cross_entropy(out, target)

    finetune(model, (x, y), epochs=1, batch_size=128, loss_fn=loss_fn)
    assert sum(calls) == x.shape[0]


@pytest.mark.parametrize("kwargs, err, text", [
    ({"epochs": 0}, ValueError, "epochs must be a positive int"),
    ({"epochs": 1.5}, ValueError, "epochs must be a positive int"),
    ({"lr": 0.0}, ValueError, "lr must be a positive number"),
    ({"lr": "fast"}, ValueError, "lr must be a positive number"),
    ({"weight_decay": -1}, ValueError, "weight_decay must be a number >= 0"),
    ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
    ({"layers": ["nope"]}, ValueError, "layers names unknown modules"),
    ({"layers": ["2"]}, ValueError, "must name Linear or Conv2d"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer must be one of"),
])
def test_bad_arguments(kwargs, err, text):
    model, x, y = model_and_data()
    with pytest.raises(err, match=text):
        finetune(model, (x, y), **kwargs)


def test_bad_loaders():
    model, x, y = model_and_data()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        finetune("model", (x, y))
    with pytest.raises(TypeError, match="loader must be a DataLoader"):
        finetune(model, x)
    with pytest.raises(ValueError, match="y of shape"):
        finetune(model, (x, y[:10]))
    with pytest.raises(TypeError, match=r"yield \(x, y\) batches"):
        finetune(model, data_loader(x, batch_size=64))
    assert not any(hasattr(m, "weight_orig") for m in linears(model))
