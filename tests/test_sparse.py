"""nettrim.sparsify (CSR kernels where measured faster), latency report, compressed checkpoint."""

import json

import pytest
import torch
from torch import nn

import nettrim
from nettrim.sparse import (SparseConv2d, SparseLinear, format_latency, latency_report,
                            load_sparse, save_sparse, sparsify)


def _pruned(p=0.95, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 5)).eval()
    with torch.no_grad():
        for m in (model[0], model[3], model[5]):
            m.weight[torch.rand_like(m.weight) < p] = 0
    return model, torch.randn(16, 2, 8, 8)


def test_sparse_modules_compute_the_same():
    model, x = _pruned()
    with torch.no_grad():
        conv = SparseConv2d(model[0])
        assert torch.allclose(conv(x), model[0](x), atol=1e-5)
        h = torch.randn(7, 384)
        assert torch.allclose(SparseLinear(model[3])(h), model[3](h), atol=1e-5)
        strided = nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2, bias=False)
        assert torch.allclose(SparseConv2d(strided)(x), strided(x), atol=1e-5)


def test_sparsify_converts_only_where_faster_and_says_so():
    model, x = _pruned()
    fast = sparsify(model, x, repeats=5)
    info = fast.nettrim_sparse
    assert set(info) == {"0", "3", "5"}
    for name, entry in info.items():
        module = fast.get_submodule(name)
        assert entry["converted"] == isinstance(module, (SparseLinear, SparseConv2d))
        assert entry["converted"] == (entry["sparse_ms"] < entry["dense_ms"])
        assert entry["sparsity"] > 0.8
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4)
    assert isinstance(model[3], nn.Linear)            # the original is untouched


def test_sparsify_without_example_times_linear_layers_only():
    model, _ = _pruned()
    info = sparsify(model, repeats=3).nettrim_sparse
    assert info["0"]["dense_ms"] is None and not info["0"]["converted"]   # conv: no input size
    assert info["3"]["dense_ms"] is not None and info["3"]["sparse_ms"] is not None


def test_sparsify_rejects_a_model_without_prunable_layers():
    with pytest.raises(ValueError, match="no prunable layers"):
        sparsify(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sparsify("model")


def test_latency_report_sections():
    model, x = _pruned()
    report = latency_report(model, x, batches=(1, 4), repeats=3)
    for key in ("batch_1", "batch_4"):
        entry = report[key]
        assert entry["dense"] > 0 and entry["sparse"] > 0 and entry["compacted"] > 0
        assert isinstance(entry["sparse_layers"], list)
    assert "batch 4" in format_latency(report)


def test_compressed_checkpoint_round_trip_and_size(tmp_path):
    model, x = _pruned(p=0.9)
    info = save_sparse(model, tmp_path / "m.safetensors")
    assert set(info["csr_tensors"]) == {"0.weight", "3.weight", "5.weight"}
    assert info["bytes"] < 0.4 * info["dense_bytes"]
    fresh = _pruned(p=0.0, seed=1)[0]
    state = load_sparse(tmp_path / "m.safetensors", fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value) and torch.equal(fresh.state_dict()[key], value)
    dense = nn.Sequential(nn.Linear(4, 4))               # nothing to gain: stays dense
    assert save_sparse(dense, tmp_path / "d.safetensors")["csr_tensors"] == []


def test_load_sparse_rejects_a_plain_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2, 2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a nettrim compressed checkpoint"):
        load_sparse(tmp_path / "plain.safetensors")
