"""Issue 21, the API half: the compressed checkpoint (5, 16). Each test failed on the code
before its fix. The hypothesis round trips of ``save_sparse`` / ``load_sparse`` are at the
end."""

from __future__ import annotations

import copy
import json
import pathlib
import tempfile
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nettrim.io.files import CheckpointError
from nettrim.model import sparse as sparse_module
from nettrim.model.sparse import SparseConv2d, SparseLinear, load_sparse, save_sparse, sparsify
from test_sparse import _pruned as pruned_cnn   # a pruned CNN and an input

FUZZ = dict(deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the solvers' and calibration warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def rows_of(result):
    return {r.name: r for r in result.report}


# ---- helpers -------------------------------------------------------------------------------
def tied_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model[2].weight = model[0].weight
    return model.eval()


# ---- 5: save_sparse of a sparsified model; dtypes; -0.0; odd keys; int32 indices -------------
def converted(model):
    """``model`` with its layers 0 and 3 on CSR kernels (as sparsify converts them)."""
    fast = copy.deepcopy(model)
    fast[0], fast[3] = SparseConv2d(model[0]), SparseLinear(model[3])
    return fast


def test_save_sparse_of_a_sparsified_model_keeps_every_layer(tmp_path):
    model, x = pruned_cnn()
    for fast in (converted(model), sparsify(model, x, repeats=3)):
        info = save_sparse(fast, tmp_path / "m.safetensors")
        assert set(info["csr_tensors"]) == {"0.weight", "3.weight", "5.weight"}
        fresh = pruned_cnn(p=0.0, seed=1)[0]
        load_sparse(tmp_path / "m.safetensors", fresh)
        for key, value in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
        # and the sparsified model's own state loads back into it
        again = copy.deepcopy(fast)
        again.load_state_dict(fresh.state_dict(), strict=True)
        with torch.no_grad():
            assert torch.allclose(again(x), model(x), atol=1e-5)


def test_sparsified_model_moves_to_float64_and_deep_copies():
    model, x = pruned_cnn()
    fast = copy.deepcopy(converted(model)).to(torch.float64)
    with torch.no_grad():
        out = fast(x.double())
        ref = copy.deepcopy(model).double()(x.double())
    assert out.dtype == torch.float64 and torch.allclose(out, ref, atol=1e-10)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor (so that -0.0 differs from 0.0 and NaN equals itself)."""
    views = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}
    return t.view(views[t.dtype]) if t.dtype in views else t


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def test_round_trip_keeps_negative_zero_and_odd_keys(tmp_path):
    w = torch.zeros(8, 8)
    w[0, 1], w[2, 3], w[5, 5] = -0.0, 1.5, float("nan")
    state = {"a": w, "a.values": torch.tensor([1.0, -0.0, 2.0]), "a.crow": torch.ones(3, 2),
             "a.col#1": torch.zeros(8, 8, dtype=torch.float16)}
    info = save_sparse(state, tmp_path / "k.safetensors")
    assert "a" in info["csr_tensors"]
    back = load_sparse(tmp_path / "k.safetensors")
    assert list(back) == list(state)
    for key in state:
        assert same_bits(back[key], state[key]), key


def test_save_sparse_of_a_model_with_tied_weights(tmp_path):
    model = tied_mlp()   # two state-dict keys share one tensor: safetensors refuses those
    save_sparse(model, tmp_path / "t.safetensors")
    fresh = tied_mlp()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_sparse(tmp_path / "t.safetensors", fresh)
    assert fresh[2].weight is fresh[0].weight
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_csr_indices_that_do_not_fit_int32_are_refused_before_writing(tmp_path, monkeypatch):
    # a tensor with more than 2**31 - 1 entries cannot be built here: the limit is lowered
    monkeypatch.setattr(sparse_module, "INDEX_MAX", 5)
    w = torch.zeros(4, 40)
    w[:, :3] = 1.0    # 12 entries > 5
    with pytest.raises(ValueError, match="'big'.*int32"):
        save_sparse({"small": torch.ones(2), "big": w}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []       # nothing written, no temporary file


# ---- 16: load_sparse checks its metadata ----------------------------------------------------
def write_raw(path, tensors, metadata):
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=metadata)
    return path


def meta(spec, fmt="nettrim-csr-1"):
    """Metadata of one tensor ``w`` (format 1 names its arrays ``w.crow`` / ``w.col`` /
    ``w.values``; format 2 names them in ``spec``)."""
    return {"format": fmt, "tensors": json.dumps({"w": spec})}


ARRAYS = {"w.crow": torch.tensor([0, 1, 2], dtype=torch.int32),
          "w.col": torch.tensor([1, 0], dtype=torch.int32), "w.values": torch.tensor([3.0, 4.0])}


@pytest.mark.parametrize("case, match", [
    ("no tensors", "no 'tensors' entry"),
    ("no shape", "shape"),
    ("coo", "layout 'coo'"),
    ("missing array", "not in the file"),
    ("unnamed array", "not in the file"),
    ("bad crow", "crow"),
    ("column out of range", "column index"),
    ("not json", "not JSON"),
])
def test_load_sparse_refuses_bad_metadata_with_one_clear_error(tmp_path, case, match):
    path = tmp_path / "bad.safetensors"
    csr = {"layout": "csr", "shape": [2, 2]}
    if case == "no tensors":
        write_raw(path, ARRAYS, {"format": "nettrim-csr-1"})
    elif case == "no shape":
        write_raw(path, ARRAYS, meta({"layout": "csr"}))
    elif case == "coo":
        write_raw(path, ARRAYS, meta(dict(csr, layout="coo")))
    elif case == "missing array":
        write_raw(path, {k: v for k, v in ARRAYS.items() if k != "w.col"}, meta(csr))
    elif case == "unnamed array":   # format 2 without the names of the arrays
        write_raw(path, ARRAYS, meta(csr, fmt="nettrim-csr-2"))
    elif case == "bad crow":
        write_raw(path, dict(ARRAYS, **{"w.crow": torch.tensor([0, 2, 1], dtype=torch.int32)}),
                  meta(csr))
    elif case == "column out of range":
        write_raw(path, ARRAYS, meta(dict(csr, shape=[2, 1])))
    else:
        write_raw(path, ARRAYS, {"format": "nettrim-csr-1", "tensors": "{w: csr"})
    with pytest.raises(CheckpointError, match=match):
        load_sparse(path)


def test_load_sparse_of_a_directory_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_sparse(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_sparse(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_sparse(tmp_path / "junk.safetensors")


def test_load_sparse_reads_the_earlier_format(tmp_path):
    path = write_raw(tmp_path / "v1.safetensors", dict(ARRAYS, b=torch.ones(2)), {
        "format": "nettrim-csr-1",
        "tensors": json.dumps({"w": {"layout": "csr", "shape": [2, 2]}, "b": {"layout": "dense"}})})
    state = load_sparse(path)
    assert torch.equal(state["w"], torch.tensor([[0.0, 3.0], [4.0, 0.0]]))
    assert torch.equal(state["b"], torch.ones(2))


# ---- the hypothesis round trips of save_sparse / load_sparse ---------------------------------
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int8, torch.uint8, torch.bool]
KEY_PARTS = st.sampled_from(["a", "b", "0", "layer.weight", "w"])
SUFFIXES = st.sampled_from(["", "", ".values", ".crow", ".col", "#1", ".values#1"])


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    values = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    if dtype.is_floating_point:
        t = values.to(dtype)
        specials = draw(st.lists(st.sampled_from([-0.0, float("nan"), float("inf"),
                                                  -float("inf")]), max_size=3))
        flat = t.view(-1)
        for i, v in enumerate(specials):
            if flat.numel():
                flat[(7 * i) % flat.numel()] = v
        return t
    if dtype == torch.bool:
        return values != 0
    return (values * 50).to(dtype)


@settings(max_examples=80, **FUZZ)
@given(st.dictionaries(st.builds(lambda a, b: a + b, KEY_PARTS, SUFFIXES), tensors(),
                       min_size=1, max_size=6))
def test_fuzz_state_dict_round_trip_is_exact(state):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "s.safetensors"
        info = save_sparse(state, path)
        back = load_sparse(path)
        assert sorted(p.name for p in pathlib.Path(tmp).iterdir()) == ["s.safetensors"]
    assert list(back) == list(state)
    for key, value in state.items():
        assert same_bits(back[key], value), key
    assert set(info["csr_tensors"]) <= set(state)


@st.composite
def sparse_models(draw):
    """A small pruned CNN / MLP, some of its layers converted to CSR modules, and an input."""
    seed = draw(st.integers(0, 2 ** 31 - 1))
    torch.manual_seed(seed)
    conv = draw(st.booleans())
    width = draw(st.integers(1, 12))
    bias = draw(st.booleans())
    if conv:
        model = nn.Sequential(nn.Conv2d(2, width, 3, padding=draw(st.integers(0, 1)), bias=bias),
                              nn.ReLU(), nn.Flatten(), nn.LazyLinear(3, bias=bias))
        x = torch.randn(4, 2, 5, 5)
    else:
        model = nn.Sequential(nn.Linear(5, width, bias=bias), nn.ReLU(),
                              nn.Linear(width, 3, bias=bias))
        x = torch.randn(4, 5)
    model(x)   # materializes the lazy layer
    p = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight[torch.rand_like(m.weight) < p] = 0.0
                m.weight[m.weight == 0] *= -1 if draw(st.booleans()) else 1   # some -0.0
    fast = copy.deepcopy(model)
    for i, m in enumerate(model):
        if isinstance(m, (nn.Linear, nn.Conv2d)) and draw(st.booleans()):
            fast[i] = SparseLinear(m) if isinstance(m, nn.Linear) else SparseConv2d(m)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return model.to(dtype).eval(), fast.to(dtype).eval(), x.to(dtype)


@settings(max_examples=40, **FUZZ)
@given(sparse_models())
def test_fuzz_sparse_model_round_trip(case):
    model, fast, x = case
    with tempfile.TemporaryDirectory() as tmp:
        for source in (model, fast):
            path = pathlib.Path(tmp) / "m.safetensors"
            save_sparse(source, path)
            fresh = copy.deepcopy(model)
            with torch.no_grad():
                for p in fresh.parameters():
                    p.fill_(7.0)
            load_sparse(path, fresh)
            for key, value in model.state_dict().items():
                assert same_bits(fresh.state_dict()[key], value), key
            with torch.no_grad():
                assert torch.allclose(fast(x), model(x), atol=1e-5)
