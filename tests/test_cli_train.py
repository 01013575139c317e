"""``nettrim train-prune``: outputs and report, usage errors, and resuming after Ctrl-C in a real
process (the resumed run ends where an uninterrupted one does, bit for bit)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nettrim.cli import main
from nettrim.train_prune import train_prune

REPO = pathlib.Path(__file__).resolve().parents[1]

FACTORY = '''
from torch import nn


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def big():
    return nn.Sequential(nn.Linear(8, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                         nn.Linear(200, 3))
'''


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_train")
    (root / "trainarch.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    try:
        import trainarch
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(400, 8, generator=gen)
        y = ((x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0.5).long())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.save(trainarch.mlp().state_dict(), root / "mlp.pt")
            torch.save(trainarch.big().state_dict(), root / "big.pt")
        np.savez(root / "train.npz", x=x.numpy(), y=y.numpy())
        np.savez(root / "test.npz", x=x[:100].numpy(), y=y[:100].numpy())
        np.savez(root / "unlabelled.npz", x=x.numpy())
        xb = torch.randn(3000, 8, generator=gen)
        np.savez(root / "big.npz", x=xb.numpy(), y=(xb[:, 0] > 0).long().numpy())
        yield {"root": root, "factory": trainarch}
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("trainarch", None)


def run_cli(*args, cwd, path):
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(path), environ.get("PYTHONPATH", "")])
    environ["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "nettrim.cli", *map(str, args)], cwd=cwd,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("method", ["gradual", "han"])
def test_train_prune_writes_model_report_and_plot(env, tmp_path, method, capsys):
    root = env["root"]
    before = sha256(root / "mlp.pt")
    out = tmp_path / "pruned.pt"
    code = main(["train-prune", str(root / "mlp.pt"), "--arch", "trainarch:mlp", "--data",
                 str(root / "train.npz"), "--eval-data", str(root / "test.npz"), "--out",
                 str(out), "--method", method, "--sparsity", "1=0.8", "3=0.7", "5=0.5",
                 "--epochs", "3", "--batch-size", "50", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch 3/3" in printed and "wrote" in printed
    assert sha256(root / "mlp.pt") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pruned.pt", "pruned.report.json", "pruned.training.png"]
    state = torch.load(out, weights_only=True)
    model = env["factory"].mlp()
    model.load_state_dict(state, strict=True)
    for name, s, n in (("1", 0.8, 192), ("3", 0.7, 288), ("5", 0.5, 36)):
        assert int((state[f"{name}.weight"] == 0).sum()) == int(s * n + 0.5)
    doc = json.loads((tmp_path / "pruned.report.json").read_text())
    assert doc["input"]["sha256"] == before and doc["output"]["sha256"] == sha256(out)
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    assert all(0 <= h["accuracy"] <= 1 for h in doc["history"])
    assert doc["sparsity"] == pytest.approx({"1": 154 / 192, "3": 202 / 288, "5": 0.5},
                                            abs=1e-3)
    assert doc["options"]["train_prune"]["method"] == method
    assert (tmp_path / "pruned.training.png").read_bytes()[:4] == b"\x89PNG"


def test_train_prune_usage_errors(env, tmp_path, capsys):
    root = env["root"]
    base = ["train-prune", str(root / "mlp.pt"), "--arch", "trainarch:mlp", "--out",
            str(tmp_path / "o.pt"), "-q", "--threads", "1"]
    assert main(base + ["--data", str(root / "unlabelled.npz")]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert main(base + ["--data", str(root / "train.npz"), "--sparsity", "1=2"]) == 2
    assert "expected a fraction in [0, 1)" in capsys.readouterr().err
    assert main(base + ["--data", str(root / "train.npz"), "--sparsity", "9=0.5"]) == 2
    assert "unknown layers ['9']" in capsys.readouterr().err
    assert main(base + ["--data", str(root / "train.npz"), "--method", "han", "--epochs",
                        "2", "--rounds", "3"]) == 2
    assert "rounds (3) must not exceed epochs (2)" in capsys.readouterr().err
    assert main(["train-prune", str(root / "mlp.pt"), "--arch", "trainarch:mlp", "--data",
                 str(root / "train.npz"), "--out", str(root / "mlp.pt")]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_then_the_same_command_resumes(env, tmp_path):
    root = env["root"]
    args = ["train-prune", root / "big.pt", "--arch", "trainarch:big", "--data",
            root / "big.npz", "--method", "dns", "--sparsity", "0.9", "--epochs", "4",
            "--batch-size", "32"]
    proc = run_cli(*args, "--out", tmp_path / "resumed.pt", cwd=tmp_path, path=root)
    try:
        seen = ""
        deadline = time.monotonic() + 300
        while "epoch 1/4" not in seen and time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 4096).decode(errors="replace")
            if not chunk:
                break
            seen += chunk
        assert "epoch 1/4" in seen, seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again to resume" in err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "resumed.train-state.pt" in names and "resumed.pt" not in names
    assert not [n for n in names if n.endswith(".part")]
    again = run_cli(*args, "--out", tmp_path / "resumed.pt", cwd=tmp_path, path=root)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "resuming from" in out
    doc = json.loads((tmp_path / "resumed.report.json").read_text())
    assert doc["resumed_from_epoch"] >= 1
    assert not (tmp_path / "resumed.train-state.pt").exists()
    # the same run without an interruption, in this process
    model = env["factory"].big()
    model.load_state_dict(torch.load(root / "big.pt", weights_only=True))
    data = np.load(root / "big.npz")
    straight = train_prune(model, (torch.from_numpy(data["x"]), torch.from_numpy(data["y"])),
                           "dns", 0.9, 4, batch_size=32)
    a = straight.model.state_dict()
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
