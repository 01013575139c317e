"""benchmarks/bench_archs.py --quick: trains tiny models, prunes them, writes JSON + table; a
method that fails on a model is recorded in its cell, not raised."""

from __future__ import annotations

import json
import os
import pathlib

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("bench_archs")


def test_bench_archs_quick(bench, tmp_path):
    data = pathlib.Path(os.environ["NETTRIM_DATA"])   # set by conftest
    if not (data / "fashion-mnist").is_dir():
        pytest.fail(f"Fashion-MNIST not found under {data}; set NETTRIM_DATA")
    out = tmp_path / "archs.json"
    payload = bench.main(["--quick", "--data-root", str(data), "--cache", str(tmp_path / "c"),
                          "--models", "mobilenet", "resnet", "--methods", "magnitude",
                          "--train-images", "256", "--test", "200", "--threads", "1",
                          "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(payload))
    assert [(c["model"], c["method"], c["sparsity"]) for c in saved["cells"]] == \
        [("mobilenet", "magnitude", 0.5), ("resnet", "magnitude", 0.5)]
    for cell in saved["cells"]:
        r = cell["result"]
        assert ("error" in r) != ("accuracy" in r)
        if "accuracy" in r:
            assert 0.0 <= r["accuracy"] <= 1.0
            assert r["sparsity"] == pytest.approx(0.5, abs=0.01)
    resnet = saved["cells"][1]["result"]
    assert "accuracy" in resnet and resnet["pruned_layers"] + resnet["skipped_layers"] >= 10
    text = out.with_suffix(".txt").read_text()
    assert f"on commit {saved['commit']}" in text and "magnitude" in text
    assert set(saved["models"]) == {"mobilenet", "resnet"}
    assert all(m["train_images"] == 256 for m in saved["models"].values())
    assert (tmp_path / "c").is_dir() and len(list((tmp_path / "c").glob("*.pt"))) == 2
