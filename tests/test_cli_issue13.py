"""CLI of issue 13: ``nettrim prune --sparsity S --global`` and ``nettrim report --latency``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from nettrim.cli import main, report_path_for

FACTORY = '''
from torch import nn


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                         nn.Linear(12, 3))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli13")
    (root / "arch13.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        import arch13
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = arch13.mlp().eval()
            x = torch.randn(80, 12)
        torch.save(model.state_dict(), root / "sd.pt")
        np.savez(root / "calib.npz", x=x.numpy(), y=model(x).argmax(1).numpy())
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("arch13", None)


def prune_args(root, out, *extra):
    return ["prune", str(root / "sd.pt"), "--data", str(root / "calib.npz"), "--out", str(out),
            "--arch", "arch13:mlp", "--threads", "1", "-q", "--max-iter", "300",
            "--reweight", "0", "--no-refit", "--lenient", *extra]


def test_prune_global_flag(env, tmp_path, capsys):
    out = tmp_path / "g.pt"
    args = [a for a in prune_args(env, out, "--sparsity", "0.7", "--global", "--min-per-unit", "2")
            if a != "-q"]
    assert main(args) == 0
    assert "global budget: " in capsys.readouterr().out
    doc = json.loads(report_path_for(out).read_text())
    state = torch.load(out, weights_only=True)
    kept = sum(int((state[f"{r['name']}.weight"] != 0).sum()) for r in doc["layers"])
    total = sum(r["total"] for r in doc["layers"])
    assert abs(1 - kept / total - 0.7) <= 0.005
    opts = doc["options"]["prune"]
    assert opts["scope"] == "global" and opts["min_per_unit"] == 2
    assert sum(a["kept"] for a in opts["allocation"].values()) == kept


@pytest.mark.parametrize("extra, expected", [
    (["--global"], "need --sparsity"),
    (["--sparsity", "0.5", "--min-per-unit", "2"], "add --global"),
    (["--sparsity", "0.99", "--global"], "guard needs"),
])
def test_prune_global_flag_errors(env, tmp_path, capsys, extra, expected):
    assert main(prune_args(env, tmp_path / "o.pt", *extra)) != 0
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_report_latency(env, tmp_path, capsys):
    args = ["report", str(env / "sd.pt"), "--arch", "arch13:mlp", "--data", str(env / "calib.npz"),
            "--latency", "--threads", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "CPU latency (ms)" in text and "batch 256" in text
    assert main(args + ["--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("batch_1", "batch_256"):
        assert {"dense", "compacted", "sparse", "sparse_layers"} <= set(doc["latency"][key])


def test_report_latency_needs_data(env, capsys):
    assert main(["report", str(env / "sd.pt"), "--arch", "arch13:mlp", "--latency"]) != 0
    assert "--latency needs --data" in capsys.readouterr().err


def test_prune_latency_section_in_report_json(env, tmp_path):
    out = tmp_path / "l.pt"
    assert main(prune_args(env, out, "--sparsity", "0.5", "--latency")) == 0
    doc = json.loads(report_path_for(out).read_text())
    assert doc["latency"]["batch_1"]["dense"] > 0
