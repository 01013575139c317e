"""prune_layer at many rows: the linear programs on compressed rows give the row-domain
answers, and program="auto" starts from the linear program where the ReLU program's work is
too large."""

import importlib

import pytest
import torch

import nettrim
from solvers import SUCCESS

layer_data = importlib.import_module("nettrim.layer.data")
program = importlib.import_module("nettrim.layer.program")


def correlated_layer(P, N, M, *, seed=0, relu=False):
    """Low-rank plus noise inputs (as real activations), a dense layer with a bias."""
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(P, 8, generator=g) @ torch.randn(8, N, generator=g)
                   + 0.3 * torch.randn(P, N, generator=g))
    W0 = torch.randn(M, N, generator=g) / N ** 0.5
    b0 = 0.1 * torch.randn(M, generator=g)
    pre = X @ W0.T + b0
    return X, (torch.relu(pre) if relu else pre), pre, W0, b0


@pytest.mark.parametrize("mode", [dict(sparsity=0.7), dict(epsilon=0.3)])
def test_compressed_linear_layer_matches_the_row_domain(monkeypatch, mode):
    """A linear layer with 40x more rows than inputs is solved on N + 1 compressed rows; the
    weights, error and status agree with the row-domain solve within solver tolerance."""
    X, Y, _, W0, b0 = correlated_layer(1200, 30, 12, seed=1)
    kw = dict(relu=False, bias=True, W0=W0, b0=b0, **mode)
    fast = nettrim.prune_layer(X, Y, **kw)
    monkeypatch.setattr(layer_data, "COMPRESS_RATIO", 10 ** 9)
    slow = nettrim.prune_layer(X, Y, **kw)
    assert fast.report["compressed_rows"] == 31 and "compressed_rows" not in slow.report
    assert fast.report["status"] in SUCCESS and slow.report["status"] in SUCCESS
    assert fast.report["sparsity"] == pytest.approx(slow.report["sparsity"], abs=0.01)
    assert fast.report["relative_error"] == pytest.approx(slow.report["relative_error"],
                                                          rel=0.02)
    # the reported residual is the full one, over all rows
    out = X @ fast.weight.T + fast.bias
    assert fast.report["residual"] == pytest.approx(float((out - Y).norm()), rel=1e-5)
    if "epsilon" in mode:
        assert float((out - Y).norm()) <= 0.3 * float(Y.norm()) * (1 + 1e-3)


def test_compressed_linear_layer_with_an_offset():
    """A residual offset S (output X W^T + b + S) carries over: the compressed program fits
    Y - S."""
    X, Y, _, W0, b0 = correlated_layer(800, 20, 6, seed=2)
    S = 0.5 * torch.randn(800, 6, generator=torch.Generator().manual_seed(3))
    res = nettrim.prune_layer(X, Y + S, offset=S, relu=False, bias=True, W0=W0, b0=b0,
                              sparsity=0.5)
    assert res.report["compressed_rows"] == 21
    out = X @ res.weight.T + res.bias + S
    assert res.report["relative_error"] == pytest.approx(
        float((out - Y - S).norm() / (Y + S).norm()), rel=1e-6)
    assert res.report["residual"] == pytest.approx(float((out - Y - S).norm()), rel=1e-5)


def test_auto_starts_from_the_linear_program_where_the_relu_program_is_too_large(monkeypatch):
    """Above RELU_PROGRAM_MAX_WORK, "auto" does not solve the ReLU program: the linear program
    (compressed rows) chooses the support, the ReLU-aware refit is tried on it, the note says
    so; "best" still solves the ReLU program."""
    X, Y, pre, W0, b0 = correlated_layer(2000, 24, 8, seed=4, relu=True)
    kw = dict(sparsity=0.7, bias=True, W0=W0, b0=b0)
    monkeypatch.setattr(program, "RELU_PROGRAM_MAX_WORK", 0)
    auto = nettrim.prune_layer(X, Y, **kw)
    errors = auto.report["program_errors"]
    assert set(errors) == {"linear", "linear+soft"}
    assert auto.report["program"] in errors and "ReLU program not solved" in auto.report["note"]
    assert auto.report["relative_error"] == pytest.approx(min(errors.values()))
    assert int((auto.weight != 0).sum()) == round(0.3 * 8 * 24)
    # the kept candidate's epsilon bounds its post-ReLU error
    e = float((torch.relu(X @ auto.weight.T + auto.bias) - Y).norm() / Y.norm())
    assert e == pytest.approx(auto.report["relative_error"], rel=1e-6)
    assert e <= auto.report["epsilon"] * (1 + 1e-6)
    best = nettrim.prune_layer(X, Y, program="best", **kw)
    assert "relu" in best.report["program_errors"]
    assert best.report["relative_error"] <= auto.report["relative_error"] * (1 + 1e-9)


def test_soft_refit_skipped_above_its_work_cap(monkeypatch):
    X, Y, pre, W0, b0 = correlated_layer(600, 20, 6, seed=5, relu=True)
    monkeypatch.setattr(program, "SOFT_REFIT_MAX_WORK", 0)
    res = nettrim.prune_layer(X, Y, sparsity=0.6, bias=True, W0=W0, b0=b0)
    assert not any(name.endswith("+soft") for name in res.report["program_errors"])
    assert "ReLU-aware refit skipped" in res.report["note"]


def test_a_linear_layer_from_its_statistics_alone():
    """prune_layer on GramStats (no rows) gives the rows' answer: same weights' error and
    sparsity; bias and offset carried by the statistics; a ReLU layer is refused."""
    from solvers import GramStats

    X, Y, _, W0, b0 = correlated_layer(900, 25, 7, seed=6)
    S = 0.3 * torch.randn(900, 7, generator=torch.Generator().manual_seed(7))
    kw = dict(relu=False, bias=True, W0=W0, b0=b0, sparsity=0.6)
    rows = nettrim.prune_layer(X, Y + S, offset=S, **kw)
    stats = GramStats.from_rows(X, Y + S, ones=True, offset=S)
    alone = nettrim.prune_layer(stats, None, **kw)
    assert torch.equal(alone.weight != 0, rows.weight != 0)
    assert alone.report["relative_error"] == pytest.approx(rows.report["relative_error"],
                                                           rel=1e-6)
    assert alone.report["compressed_rows"] == 26
    with pytest.raises(ValueError, match="ones column"):
        nettrim.prune_layer(stats, None, **dict(kw, bias=False))
    with pytest.raises(ValueError, match="GramStats"):
        nettrim.prune_layer(stats, None, **dict(kw, relu=True))


_MEMORY_CELL = """
import gc, json, sys, torch, nettrim
P = int(sys.argv[1])
torch.set_num_threads(1)
def vm(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024
g = torch.Generator().manual_seed(8)
warm = torch.randn(2048, 256, generator=g)   # imports and first-use allocations before the clock
nettrim.prune_layer(warm, warm[:, :64], sparsity=0.7, relu=False, bias=True)
del warm
X = torch.randn(P, 256, generator=g)
W = torch.randn(64, 256, generator=g)
Y = X @ W.T + 0.1 * torch.randn(P, 64, generator=g)
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = vm("VmRSS")
res = nettrim.prune_layer(X, Y, sparsity=0.7, relu=False, bias=True, W0=W)
print(json.dumps(dict(extra=vm("VmHWM") - start, rows=res.report["compressed_rows"],
                      sampled=res.report["peak_memory_mb"])))
"""


def test_linear_layer_memory_does_not_grow_with_the_rows():
    """The peak memory of a linear layer's prune_layer above its inputs is the same at 16,384
    and 131,072 rows (one chunk, G and the compressed rows; X is 16 and 128 MB), measured
    exactly by the process's peak resident memory (Linux: VmHWM, reset before each call), each
    in a fresh process after one small call (in a process that ran other tests first, freed
    memory it reused hid the 16,384-row call's peak: 0 MB, against 15 MB at 131,072); the
    report's sampled peak_memory_mb is at most that."""
    import json
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    # glibc's mmap threshold fixed: a freed large block leaves the resident set at once, as
    # with its default until a large free raises the threshold (then the peak moved by 12 MB
    # from run to run of the same cell)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    extra = {}
    for P in (16384, 131072):
        out = subprocess.run([sys.executable, "-c", _MEMORY_CELL, str(P)], capture_output=True,
                             text=True, check=True, env=env)
        cell = json.loads(out.stdout.strip().splitlines()[-1])
        extra[P] = cell["extra"]
        assert cell["rows"] == 257
        assert 0 <= cell["sampled"] <= extra[P] + 1
    assert extra[131072] <= extra[16384] + 8, extra
    assert extra[131072] < 128 / 4, extra


# ---- capture and prune on statistics ------------------------------------------------------------
def _mixed_model():
    """Linear layers of every kind the statistics cover (a tanh after, a BatchNorm folded in,
    the last one), and a ReLU layer, which keeps its rows."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(12, 24), torch.nn.Tanh(), torch.nn.Linear(24, 16, bias=False),
        torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 10), torch.nn.ReLU(),
        torch.nn.Linear(10, 4)).eval()
    with torch.no_grad():
        model[3].running_mean.normal_()
        model[3].running_var.uniform_(0.5, 2.0)
    return model


def test_capture_keeps_statistics_of_linear_program_layers_only():
    model, x = _mixed_model(), torch.randn(900, 12)
    rows = nettrim.capture(model, x)
    stats = nettrim.capture(model, torch.split(x, 100), statistics=True)   # ten batches
    for name in ("0", "2", "6"):
        d, r = stats[name], rows[name]
        assert d.X is None and d.pre is None and d.stats.rows == 900 == d.rows
        # the statistics of the rows capture keeps: X^T X and X^T pre, a ones column last
        # where the layer or its folded BatchNorm has a bias (layer 2: the BatchNorm's)
        X = torch.cat([r.X, torch.ones(900, 1)], 1).double()
        assert torch.allclose(d.stats.G, X.T @ X, rtol=1e-9, atol=1e-8)
        assert torch.allclose(d.stats.C, X.T @ r.pre.double(), rtol=1e-9, atol=1e-8)
        assert "statistics of 900 rows" in nettrim.model.capture.subsample_note(d)
    assert stats["4"].X is not None and torch.equal(stats["4"].X, rows["4"].X)   # ReLU: rows


@pytest.mark.parametrize("mode", ["parallel", "cascade"])
@pytest.mark.parametrize("target", [dict(sparsity=0.6), dict(epsilon=0.1)])
def test_prune_on_statistics_equals_prune_on_rows(mode, target):
    model, x = _mixed_model(), torch.randn(900, 12)
    a = nettrim.prune(model, x, mode=mode, **target)
    b = nettrim.prune(model, x, mode=mode, statistics=True, **target)
    for ra, rb in zip(a.report, b.report):
        assert ra.status == rb.status and ra.nonzeros_after == rb.nonzeros_after
        assert rb.relative_error == pytest.approx(ra.relative_error, rel=1e-4, abs=1e-6)
        assert ("statistics of all rows" in rb.note) == (rb.name != "4") and rb.rows == 900
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    assert b.options["statistics"] is True


def test_prune_statistics_option_is_checked():
    model, x = _mixed_model(), torch.randn(50, 12)
    with pytest.raises(TypeError, match="statistics must be True or False"):
        nettrim.prune(model, x, sparsity=0.5, statistics="yes")
    with pytest.raises(ValueError, match="statistics=True is an option of the per-layer"):
        nettrim.prune(model, x, sparsity=0.5, statistics=True, scope="global")


def test_statistics_report_non_finite_rows_by_layer():
    model, x = _mixed_model(), torch.randn(50, 12)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="layer '0': .*NaN/Inf entries in the recorded input"):
        nettrim.capture(model, x, statistics=True)
