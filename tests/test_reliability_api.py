"""Issue 21, the API half: tied weights (4), the compressed checkpoint (5, 16), structured mode
on empty data and grouped convolutions (17), bfloat16 on every path (18), capture and prune
reading one graph (20), and weights in modules the toolkit does not know (21). Each test failed
on the code before its fix. The hypothesis round trips of ``save_sparse`` / ``load_sparse`` are
at the end."""

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

import nettrim
from nettrim import UnknownWeightsWarning
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


# ---- 4: tied weights -------------------------------------------------------------------------
def tied_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model[2].weight = model[0].weight
    return model.eval()


@pytest.mark.parametrize("inplace", [False, True])
def test_tied_weight_is_pruned_once_and_reported_honestly(inplace):
    model = tied_mlp()
    original = copy.deepcopy(model)
    x = torch.randn(300, 8)
    result = quiet(nettrim.prune, model, x, sparsity=0.5, inplace=inplace)
    pruned, rows = result.model, rows_of(result)
    assert pruned[2].weight is pruned[0].weight                     # still one tensor
    assert rows["2"].status == "SKIPPED" and "'0'" in rows["2"].note and "tied" in rows["2"].note
    assert "'0'" in result.skipped["2"]
    # "before" is the original count, even in place; the tied tensor is counted once (in '0')
    assert rows["0"].nonzeros_before == 64 and rows["0"].total == 64
    assert (rows["2"].nonzeros_before, rows["2"].total) == (0, 0)    # nothing of its own
    assert rows["0"].nonzeros_after == int((pruned[0].weight != 0).sum())
    # the report of '0' is the error of the weights the model holds (b did not overwrite them)
    with torch.no_grad():
        Y = original[:2](x)
        got = pruned[:2](x)
    actual = float(torch.linalg.vector_norm(got - Y) / torch.linalg.vector_norm(Y))
    assert actual == pytest.approx(rows["0"].relative_error, rel=1e-3, abs=1e-5)


def test_tied_weight_under_masks_stays_one_tensor_while_fine_tuning():
    model = tied_mlp()
    x = torch.randn(200, 8)
    pruned = quiet(nettrim.prune, model, x, sparsity=0.5, masks=True).model
    assert pruned[0].weight_orig is pruned[2].weight_orig
    assert torch.equal(pruned[0].weight_mask, pruned[2].weight_mask)
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned(x).square().sum().backward()
    optimizer.step()
    assert torch.equal(pruned[0].weight, pruned[2].weight)          # the same masked weight
    assert int((pruned[0].weight != 0).sum()) == int(pruned[0].weight_mask.sum())


class TinyLM(nn.Module):
    """A language model whose output layer is tied to its embedding (as GPT-2's lm_head)."""

    def __init__(self, vocab=20, dim=8):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, 16)
        self.down = nn.Linear(16, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        h = self.wte(ids)
        return self.lm_head(h + self.down(torch.relu(self.up(h))))


@pytest.mark.parametrize("how", ["layer", "global", "baseline", "global baseline"])
def test_layer_tied_to_an_embedding_is_skipped_and_the_embedding_kept(how):
    torch.manual_seed(1)
    model = TinyLM().eval()
    embedding = model.wte.weight.detach().clone()
    ids = torch.randint(0, 20, (40, 6))
    if how == "layer":
        result = quiet(nettrim.prune, model, ids, sparsity=0.5)
    elif how == "global":
        result = quiet(nettrim.prune, model, ids, sparsity=0.5, scope="global")
    else:
        result = quiet(nettrim.prune_baseline, model, ids, "magnitude", 0.5,
                       scope="global" if how == "global baseline" else "layer")
    rows = rows_of(result)
    assert torch.equal(result.model.wte.weight, embedding)
    assert result.model.lm_head.weight is result.model.wte.weight
    assert rows["lm_head"].status == "SKIPPED" and "'wte'" in rows["lm_head"].note
    assert "Embedding" in result.skipped["lm_head"]
    assert rows["up"].status != "SKIPPED" and rows["up"].nonzeros_after < rows["up"].total
    # every tensor counted once: the embedding in its own row, lm_head has nothing of its own
    assert rows["wte"].total == 160 and rows["lm_head"].total == 0
    assert "lm_head" in result.table() and "'wte'" in result.table()


def test_naming_a_tied_layer_is_a_clear_error_and_structured_refuses_ties():
    model = tied_mlp()
    with pytest.raises(TypeError, match="layer '2'.*tied to '0'"):
        nettrim.prune(model, torch.randn(50, 8), sparsity=0.5, layers=["2"])
    with pytest.raises(ValueError, match="tied weights"):
        nettrim.prune(model, torch.randn(50, 8), epsilon=0.1, structured=True)


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


# ---- 17: structured mode on empty data and grouped convolutions ------------------------------
def mlp():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("options", [dict(epsilon=0.1, structured=True),
                                     dict(sparsity=0.3, structured=True), dict(epsilon=0.1),
                                     dict(sparsity=0.5, scope="global")])
def test_calibration_data_without_rows_is_a_clear_error(options):
    with pytest.raises(ValueError, match="inputs hold no rows"):
        nettrim.prune(mlp(), torch.zeros(0, 6), **options)


def test_depthwise_convolution_is_refused_clearly_by_structured_mode():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3, groups=3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = torch.randn(20, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'2' is a grouped convolution \(groups=3\)") as err:
        nettrim.prune(model, x, epsilon=0.1, structured=True)
    assert "groups must be" not in str(err.value)
    with pytest.raises(ValueError, match="grouped convolution"):
        nettrim.prune(model, x, epsilon=0.1, structured=True, layers=["2"])


def test_structured_mode_skips_the_layers_beside_a_grouped_convolution_with_a_note():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 2)).eval()
    x = torch.randn(30, 3, 6, 6)
    result = quiet(nettrim.prune, model, x, epsilon=0.05, structured=True)
    rows = rows_of(result)
    assert rows["6"].status != "SKIPPED" and rows["9"].status != "SKIPPED"
    for name in ("2", "4"):
        assert rows[name].status == "SKIPPED" and "grouped convolution" in rows[name].note
        assert "grouped convolution" in result.skipped[name]
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()


# ---- 18: bfloat16 on every path -------------------------------------------------------------
@pytest.mark.parametrize("options", [dict(sparsity=0.5), dict(sparsity=0.5, scope="global"),
                                     dict(sparsity=0.25, structured=True)])
def test_bfloat16_model_is_solved_in_float32_on_every_path(options):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 3)).to(torch.bfloat16).eval()
    x = torch.randn(200, 6, dtype=torch.bfloat16)
    result = quiet(nettrim.prune, model, x, **options)
    solved = [r for r in result.report if r.status != "SKIPPED"]
    assert solved
    for row in solved:
        layer = result.model.get_submodule(row.name)
        assert layer.weight.dtype == torch.bfloat16
        assert "solved in float32 from bfloat16" in row.note
        assert row.nonzeros_after == int((layer.weight != 0).sum())
    if "structured" not in options:
        kept = sum(r.nonzeros_after for r in solved)
        assert 1 - kept / sum(r.total for r in solved) == pytest.approx(0.5, abs=0.05)
    else:
        assert result.model[2].weight.shape[1] < 16      # units removed
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()


# ---- 20: capture reads the graph as prune does ----------------------------------------------
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.relu(self.bn2(self.c2(h)) + h)
        return self.fc(h.flatten(1))


def test_capture_reports_what_prune_solves():
    torch.manual_seed(6)
    model = Block()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(12, 3, 6, 6)
    data = quiet(nettrim.capture, model, x)   # (fc has too few rows: a CalibrationWarning)
    detected = nettrim.detect_activations(model)
    assert {n: d.activation for n, d in data.items()} == detected == \
        {"c1": "relu", "c2": "relu", "fc": None}
    assert (data["c1"].norm, data["c2"].norm) == ("bn1", "bn2")
    assert data["c1"].offset is None and data["c2"].offset is not None
    with torch.no_grad():   # the recorded target is the block's own output, in rows
        h = torch.relu(model.bn1(model.c1(x)))
        out2 = torch.relu(model.bn2(model.c2(h)) + h)
    assert torch.allclose(data["c1"].post, h.movedim(1, -1).reshape(-1, 4), atol=1e-5)
    assert torch.allclose(data["c2"].post, out2.movedim(1, -1).reshape(-1, 4), atol=1e-5)
    programs = {r.name: r.program for r in quiet(nettrim.prune, model, x, epsilon=0.1).report}
    assert programs["c1"] == "relu+bn" and programs["c2"] == "relu+bn+offset"
    # the layer's own output stays available, as a linear record
    assert quiet(nettrim.capture, model, x, fold=False)["c1"].activation is None


# ---- 21: weights in modules the toolkit does not know ----------------------------------------
MIXED_ARCH = '''
import torch
from torch import nn


class Conv1D(nn.Module):
    """transformers' Conv1D: a Linear with its weight stored (in, out)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(0.3 * torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = Conv1D(6, 24)          # 144 weights nettrim does not know
        self.norm = nn.LayerNorm(24)       # 1-D parameters: not weights of that kind
        self.head = nn.Linear(24, 2)       # 48 prunable weights

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.proj(x))))


def build():
    return Mixed()
'''
MIXED: dict = {}
exec(compile(MIXED_ARCH, "mixedarch", "exec"), MIXED)   # noqa: S102 - the test's own source


@pytest.mark.parametrize("how", ["prune", "global", "baseline"])
def test_weights_in_unknown_modules_are_named_with_their_share(how):
    torch.manual_seed(7)
    model = MIXED["build"]().eval()
    x = torch.randn(100, 6)
    with pytest.warns(UnknownWeightsWarning) as caught:
        if how == "baseline":
            result = quiet_except(UnknownWeightsWarning, nettrim.prune_baseline, model, x,
                                  "magnitude", 0.5)
        else:
            result = quiet_except(UnknownWeightsWarning, nettrim.prune, model, x, sparsity=0.5,
                                  scope="global" if how == "global" else "layer")
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "proj (Conv1D, 144)" in text and "75.0%" in text
    rows = rows_of(result)
    assert rows["proj"].status == "SKIPPED" and "Conv1D" in rows["proj"].note
    assert "does not know" in result.skipped["proj"]
    assert rows["proj"].nonzeros_before == rows["proj"].nonzeros_after == rows["proj"].total == 144
    assert "norm" not in rows                        # LayerNorm: no weight matrix
    assert "proj" in result.table().split("not pruned:")[1]


def quiet_except(keep, fn, *args, **kwargs):
    """``fn`` with every warning but ``keep`` silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", keep)
        return fn(*args, **kwargs)


def test_command_line_names_the_unknown_modules(tmp_path, monkeypatch, capsys):
    import numpy as np

    from nettrim.cli import main
    (tmp_path / "mixedarch.py").write_text(MIXED_ARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import mixedarch
    torch.manual_seed(8)
    torch.save(mixedarch.build().state_dict(), tmp_path / "m.pt")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(80, 6)))
    code = main(["prune", "m.pt", "--arch", "mixedarch:build", "--data", "calib.npz",
                 "--out", "out.pt", "--sparsity", "0.5", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    warning = [line for line in err.splitlines() if "does not know" in line]
    assert len(warning) == 1 and "proj (Conv1D, 144)" in warning[0] and "75.0%" in warning[0]
    doc = json.loads((tmp_path / "out.report.json").read_text())
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["proj"]["status"] == "SKIPPED" and "Conv1D" in rows["proj"]["note"]
    assert any("proj" in note and "does not know" in note for note in doc["notes"])


def test_transformers_gpt2_is_not_pruned_silently():
    """The real case: GPT-2's Conv1D blocks and its lm_head tied to the token embedding (run
    only where ``transformers`` is installed, a test extra)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50,
                                     n_positions=16)
    torch.manual_seed(9)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    wte = model.transformer.wte.weight.detach().clone()
    ids = torch.randint(0, 50, (8, 12))
    with pytest.warns(UnknownWeightsWarning, match=r"Conv1D.*stay dense|stay dense.*Conv1D"):
        with pytest.raises(ValueError, match="no prunable layers") as err:
            quiet_except(UnknownWeightsWarning, nettrim.prune, model, ids, sparsity=0.5)
    assert "lm_head" in str(err.value) and "transformer.wte" in str(err.value)
    assert torch.equal(model.transformer.wte.weight, wte)


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
