"""benchmarks/bench_quality.py: the per-cell cache that lets a long run resume or be split
between processes (a small synthetic layer; no MNIST, no training)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("bench_quality")


@pytest.fixture(scope="module")
def layer(bench):
    X, W0, b0, _ = bench.synthetic_layer(120, 16, 6, seed=0)
    return X, torch.relu(X @ W0.T + b0), W0, b0, True


def _args(bench, tmp_path, *extra):
    return bench.parse_args(["--quick", "--cache", str(tmp_path), "--sparsities", "0.5",
                             "--synthetic", "120", "16", "6", *extra])


@pytest.mark.parametrize("method", ["magnitude", "nt-plain"])
def test_cell_round_trip(bench, layer, tmp_path, method):
    args = _args(bench, tmp_path)
    cell = bench.run_cell(method, *layer, 0.5, max_iter=args.max_iter)
    settings = bench.cell_settings(args, "synthetic", method, 0.5)
    path, missing = bench.cached_cell(tmp_path, settings)
    assert missing is None and not path.exists()
    bench.save_cell(path, settings, cell)
    _, loaded = bench.cached_cell(tmp_path, settings)
    assert torch.equal(loaded["weight"], cell["weight"])
    assert torch.equal(loaded["bias"], cell["bias"])
    assert {k: loaded[k] for k in bench.CELL_FIGURES} == {k: cell[k] for k in bench.CELL_FIGURES}
    # no temporary file is left beside it
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cell_with_other_settings_is_recomputed(bench, layer, tmp_path):
    args = _args(bench, tmp_path)
    cell = bench.run_cell("magnitude", *layer, 0.5)
    settings = bench.cell_settings(args, "synthetic", "magnitude", 0.5)
    path, _ = bench.cached_cell(tmp_path, settings)
    bench.save_cell(path, settings, cell)
    other = bench.cell_settings(_args(bench, tmp_path, "--samples", "999"), "synthetic",
                                "magnitude", 0.5)
    assert bench.cached_cell(tmp_path, other)[1] is None


def test_unreadable_cell_is_ignored(bench, tmp_path, capsys):
    settings = bench.cell_settings(_args(bench, tmp_path), "synthetic", "magnitude", 0.5)
    path, _ = bench.cached_cell(tmp_path, settings)
    path.write_bytes(b"not a safetensors file")
    assert bench.cached_cell(tmp_path, settings)[1] is None
    assert "ignoring unreadable" in capsys.readouterr().err


def test_synthetic_heldout_draws_share_the_distribution(bench):
    X, W0, b0, X_held = bench.synthetic_layer(400, 16, 6, seed=0, heldout=300)
    X_again, W0_again, _, _ = bench.synthetic_layer(400, 16, 6, seed=0)
    assert torch.equal(X, X_again) and torch.equal(W0, W0_again)   # held-out draws change nothing
    assert X_held.shape == (300, 16) and not torch.equal(X_held[:10], X[:10])
    # same input distribution: the column means agree within sampling error
    assert torch.allclose(X.mean(0), X_held.mean(0), atol=0.15)


def test_per_layer_uses_the_cache(bench, layer, tmp_path, monkeypatch):
    args = _args(bench, tmp_path, "--methods", "magnitude", "wanda")
    X, Y, W0, b0, relu = layer
    heldout = {"synthetic": (X[:40] * 1.1, Y[:40])}
    first = bench.per_layer(args, {"synthetic": layer}, heldout)
    assert len(list(tmp_path.iterdir())) == 2

    def fail(*a, **k):
        raise AssertionError("a cached cell was solved again")

    monkeypatch.setattr(bench, "run_cell", fail)
    second = bench.per_layer(args, {"synthetic": layer}, heldout)
    for method in ("magnitude", "wanda"):
        a, b = first["synthetic"][0.5][method], second["synthetic"][0.5][method]
        assert a["error"] == b["error"] and torch.equal(a["weight"], b["weight"])
        # the held-out error is recomputed from the cached weights
        expected = bench.relative_error(X[:40] * 1.1, a["weight"], a["bias"], Y[:40], relu)
        assert b["heldout_error"] == pytest.approx(expected) and expected != a["error"]


def test_committed_quality_guard_holds(benchmark_module, capsys):
    # the committed bench_quality run against the run before the settled pipeline (issue 11):
    # no default cell worse by more than 2% relative
    guard = benchmark_module("quality_guard")
    assert guard.main([]) == 0
    assert "cells worse by more than 2%: 0" in capsys.readouterr().out
