"""The ``nettrim`` command line on temporary checkpoints of every format.

A tiny MLP factory lives in a module written to a temporary directory (on ``sys.path`` for the
in-process calls, on ``PYTHONPATH`` for the subprocesses). Subprocesses (``python -m nettrim.cli``)
check what only a separate process shows (exit status, one-line stderr without traceback,
Ctrl-C); everything else calls ``main([...])`` in-process.
"""

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
from torch import nn

import nettrim
from nettrim.cli import build_parser, main, report_path_for

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = os.environ.get("NETTRIM_DATA", "/work/shared/data")

FACTORY = '''
import torch
from torch import nn


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def wide():
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 3))


def no_layers():
    return nn.Sequential(nn.Flatten(), nn.ReLU())


def not_a_model():
    return 42


def big():
    return nn.Sequential(nn.Linear(6, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(),
                         nn.Linear(300, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 3))
'''

LAYERS = ("1", "3", "5")


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Factory module, a trained-looking tiny MLP in every format, calibration data."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tinyarch.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: one thread is fastest, also on a busy machine
    try:
        import tinyarch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tinyarch.mlp().eval()
            x = torch.randn(160, 2, 3)
        y = model(x).argmax(1)
        torch.save(model.state_dict(), root / "sd.pt")
        np.savez(root / "calib.npz", x=x.numpy(), y=y.numpy())
        torch.save({"x": x, "y": y}, root / "calib.pt")
        np.savez(root / "unlabelled.npz", x=x.numpy())
        np.savez(root / "wrong_shape.npz", x=np.random.default_rng(0).normal(size=(10, 5)))
        yield {"root": root, "model": model, "x": x, "y": y, "factory": tinyarch}
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(root))
        sys.modules.pop("tinyarch", None)


def run_cli(*args, cwd, timeout=120):
    """``python -m nettrim.cli ARGS`` with the repo and the factory module importable."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(cwd), environ.get("PYTHONPATH", "")])
    environ["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "nettrim.cli", *map(str, args)], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=timeout)


def load_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def check_report_matches(report_file, state):
    """The report's per-layer counts are those of the saved weights."""
    doc = json.loads(pathlib.Path(report_file).read_text())
    assert [row["name"] for row in doc["layers"]] == list(LAYERS)
    for row in doc["layers"]:
        weight = state[f"{row['name']}.weight"]
        nonzeros = int((weight != 0).sum())
        assert row["nonzeros_after"] == nonzeros
        assert row["total"] == weight.numel()
        assert row["sparsity"] == pytest.approx(1 - nonzeros / weight.numel())
    return doc


def one_error_line(stderr: str) -> str:
    """The one line besides -q's progress lines (one per finished layer)."""
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith("Net-Trim (")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nettrim: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---- subprocess: what needs a real process ------------------------------------------------------
def test_prune_state_dict_subprocess(env):
    root = env["root"]
    before = sha256(root / "sd.pt")
    proc = run_cli("prune", "sd.pt", "--data", "calib.npz", "--out", "sub/pruned.pt",
                   "--arch", "tinyarch:mlp", "--epsilon", "0.1", "-q", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # -q
    assert sha256(root / "sd.pt") == before
    state = load_state(root / "sub/pruned.pt")
    fresh = env["factory"].mlp()
    fresh.load_state_dict(state, strict=True)
    doc = check_report_matches(root / "sub/pruned.report.json", state)
    assert doc["input"]["sha256"] == before
    assert doc["options"]["epsilon"] == 0.1 and doc["options"]["mode"] == "parallel"
    assert sum(row["nonzeros_after"] for row in doc["layers"]) < \
        sum(row["nonzeros_before"] for row in doc["layers"])
    # no temporary files left next to the output
    assert sorted(p.name for p in (root / "sub").iterdir()) == ["pruned.pt", "pruned.report.json"]


def test_user_error_subprocess_one_line_exit_2(env):
    root = env["root"]
    bad = root / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    before = sha256(bad)
    proc = run_cli("prune", bad.name, "--data", "calib.npz", "--out", "never.pt",
                   "--arch", "tinyarch:mlp", cwd=root)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "corrupt.pt" in line and "corrupt" in line
    assert sha256(bad) == before
    assert not (root / "never.pt").exists()


def test_ctrl_c_subprocess_leaves_no_partial_file(env, tmp_path):
    root = env["root"]
    # enough work to be interrupted in the middle: 300 x 300 layers, 3000 samples, a sparsity
    # search (several ADMM solves per layer)
    torch.save(env["factory"].big().state_dict(), tmp_path / "big.pt")
    np.savez(tmp_path / "big.npz", x=torch.randn(3000, 6).numpy())
    before = sha256(tmp_path / "big.pt")
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(root)])
    environ["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "nettrim.cli", "prune", str(tmp_path / "big.pt"), "--data",
           str(tmp_path / "big.npz"), "--out", str(tmp_path / "out.pt"), "--arch", "tinyarch:big",
           "--sparsity", "0.9"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # wait for the progress bar: pruning has started
        deadline = time.monotonic() + 60
        seen = ""
        while "Net-Trim" not in seen and time.monotonic() < deadline:
            seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        assert "Net-Trim" in seen, seen
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("nettrim: interrupted")
    assert "Traceback" not in err
    # no output and no temporary file; the run state (finished layers), when a layer finished
    # before the signal, is a whole file that an interrupted run leaves for --resume
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n != "out.pt.resume"] == ["big.npz", "big.pt"], names
    if "out.pt.resume" in names:
        assert "--resume" in err
        torch.load(tmp_path / "out.pt.resume", weights_only=True)
    assert sha256(tmp_path / "big.pt") == before


# ---- in-process: formats ------------------------------------------------------------------------
def prune_args(root, src, out, *extra):
    return ["prune", str(root / src), "--data", str(root / "calib.npz"), "--out", str(out),
            "--threads", "1", "-q", *extra]


def test_safetensors_in_and_out(env, tmp_path):
    from safetensors.torch import load_file, save_file

    root = env["root"]
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in env["model"].state_dict().items()}, src)
    before = sha256(src)
    out = tmp_path / "pruned.safetensors"
    assert main(prune_args(root, src, out, "--arch", "tinyarch:mlp", "--sparsity", "0.5")) == 0
    assert sha256(src) == before
    state = load_file(out)
    env["factory"].mlp().load_state_dict(state, strict=True)
    doc = check_report_matches(report_path_for(out), state)
    assert doc["output"]["format"] == "safetensors"
    for row in doc["layers"]:
        assert row["sparsity"] >= 0.3  # a 0.5 target lands near 0.5


def test_plain_program_flags(env, tmp_path):
    """--reweight 0 --no-refit runs the papers' plain l1 program, as the library does."""
    root = env["root"]
    out = tmp_path / "plain.pt"
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--reweight", "0",
                           "--no-refit")) == 0
    doc = json.loads(report_path_for(out).read_text())
    assert doc["options"]["prune"]["refit"] is False
    assert doc["options"]["prune"]["reweight"] == 0
    x = torch.from_numpy(np.load(root / "calib.npz")["x"])
    expected = nettrim.prune(env["model"], x, 0.05, refit=False, reweight=0).model.state_dict()
    state = torch.load(out, weights_only=True)
    for name, value in expected.items():
        assert torch.allclose(state[name], value, atol=1e-6), name
    default = tmp_path / "default.pt"
    assert main(prune_args(root, "sd.pt", default, "--arch", "tinyarch:mlp")) == 0
    doc = json.loads(report_path_for(default).read_text())
    assert doc["options"]["prune"]["refit"] is True and doc["options"]["prune"]["reweight"] == 1


def test_program_flag_is_passed_to_the_library(env, tmp_path):
    """--program relu keeps the ReLU program's weights at a --sparsity, as the library does."""
    root = env["root"]
    out = tmp_path / "relu.pt"
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--sparsity", "0.5",
                           "--program", "relu")) == 0
    doc = json.loads(report_path_for(out).read_text())
    assert doc["options"]["prune"]["program"] == "relu"
    assert all(not row["program"].startswith("linear(") for row in doc["layers"])
    x = torch.from_numpy(np.load(root / "calib.npz")["x"])
    expected = nettrim.prune(env["model"], x, sparsity=0.5, program="relu").model.state_dict()
    state = torch.load(out, weights_only=True)
    for name, value in expected.items():
        assert torch.allclose(state[name], value, atol=1e-6), name
    assert main(prune_args(root, "sd.pt", tmp_path / "bad.pt", "--arch", "tinyarch:mlp",
                           "--program", "linear")) == 2


def test_export_program_roundtrip(env, tmp_path):
    root = env["root"]
    x = env["x"]
    program = torch.export.export(env["model"], (x[:4],),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))
    src = tmp_path / "model.pt2"
    torch.export.save(program, src)
    before = sha256(src)
    out = tmp_path / "pruned.pt2"
    assert main(prune_args(root, src, out, "--epsilon", "0.1")) == 0  # no --arch: graph rebuilt
    assert sha256(src) == before
    loaded = torch.export.load(str(out))
    pruned = loaded.module()
    y = pruned(x[:7])  # the batch dimension stayed dynamic
    assert y.shape == (7, 3)
    doc = check_report_matches(report_path_for(out), loaded.state_dict)
    assert any("rebuilt" in note for note in doc["notes"])
    assert any("re-exported" in note for note in doc["notes"])
    with torch.no_grad():
        ref = env["model"](x)
        err = float(torch.linalg.vector_norm(pruned(x) - ref) / torch.linalg.vector_norm(ref))
    assert err == pytest.approx(doc["output_error"], rel=1e-4)


def test_pickled_module_needs_trust(env, tmp_path, capsys):
    root = env["root"]
    src = tmp_path / "whole.pt"
    torch.save(env["model"], src)
    before = sha256(src)
    out = tmp_path / "pruned.pt"
    assert main(prune_args(root, src, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--trust-pickle" in line and "run code" in line
    assert not out.exists()
    assert main(prune_args(root, src, out, "--trust-pickle")) == 0
    assert sha256(src) == before
    pruned = torch.load(out, weights_only=False)
    assert isinstance(pruned, nn.Sequential)
    check_report_matches(report_path_for(out), pruned.state_dict())


def test_torch_prune_leftovers_are_folded(env, tmp_path):
    from torch.nn.utils import prune as torch_prune

    root = env["root"]
    model = env["factory"].mlp()
    model.load_state_dict(env["model"].state_dict())
    torch_prune.l1_unstructured(model[1], "weight", amount=0.25)
    src = tmp_path / "masked.pt"
    torch.save(model.state_dict(), src)
    assert "1.weight_mask" in load_state(src)
    out = tmp_path / "out.pt"
    assert main(prune_args(root, src, out, "--arch", "tinyarch:mlp", "--format", "state_dict")) == 0
    state = load_state(out)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    env["factory"].mlp().load_state_dict(state, strict=True)
    doc = check_report_matches(report_path_for(out), state)
    first = doc["layers"][0]
    assert first["nonzeros_before"] == 96 - 24  # the mask's zeros were folded in
    assert any("folded" in note for note in doc["notes"])


def test_pt_and_idx_data_and_format_conversion(env, tmp_path):
    import gzip
    import struct

    root = env["root"]
    # an MNIST-style idx directory whose images (n, 2, 3) fit the tiny MLP after flattening
    images = np.random.default_rng(1).integers(0, 256, size=(50, 2, 3), dtype=np.uint8)
    labels = np.random.default_rng(2).integers(0, 3, size=50, dtype=np.uint8)
    idx = tmp_path / "idx"
    idx.mkdir()
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4B3I", 0, 0, 8, 3, 50, 2, 3) + images.tobytes())
    with gzip.open(idx / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4BI", 0, 0, 8, 1, 50) + labels.tobytes())
    # idx images have a channel axis added (n, 1, 2, 3); Flatten makes them 6 features
    out = tmp_path / "from_idx.safetensors"
    args = ["prune", str(root / "sd.pt"), "--data", str(idx), "--out", str(out), "--arch",
            "tinyarch:mlp", "--format", "safetensors", "--threads", "1", "-q"]
    assert main(args) == 0
    doc = json.loads(report_path_for(out).read_text())
    assert doc["data"]["samples"] == 50 and doc["data"]["sample_shape"] == [1, 2, 3]
    assert doc["output"]["format"] == "safetensors"
    out2 = tmp_path / "from_pt.pt"
    args = ["prune", str(root / "sd.pt"), "--data", str(root / "calib.pt"), "--out", str(out2),
            "--arch", "tinyarch:mlp", "--samples", "40", "--mode", "cascade", "--threads", "1",
            "-q"]
    assert main(args) == 0
    doc = check_report_matches(report_path_for(out2), load_state(out2))
    assert doc["data"]["samples"] == 40 and doc["data"]["available"] == 160
    assert doc["options"]["mode"] == "cascade" and "accuracy_pruned" in doc


def test_layers_ignore_plot_and_report_path(env, tmp_path, capsys):
    root = env["root"]
    out = tmp_path / "p.pt"
    rep = tmp_path / "elsewhere" / "r.json"
    plots = tmp_path / "plots"
    args = prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--layers", "1", "3",
                      "--ignore", "3", "--report", str(rep), "--plot", str(plots))
    assert main(args) == 0
    doc = json.loads(rep.read_text())
    assert [row["name"] for row in doc["layers"]] == ["1"]
    state = load_state(out)
    assert torch.equal(state["3.weight"], env["model"].state_dict()["3.weight"])  # untouched
    assert torch.equal(state["5.weight"], env["model"].state_dict()["5.weight"])
    for name in ("sparsity.png", "relative_error.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- in-process: report and evaluate ------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned(env):
    root = env["root"]
    out = root / "pruned_for_report.pt"
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--sparsity", "0.6")) == 0
    return out


def test_report_formats(env, pruned, capsys, tmp_path):
    root = env["root"]
    state = load_state(pruned)
    assert main(["report", str(pruned), "--arch", "tinyarch:mlp", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for row in doc["layers"]:
        weight = state[f"{row['name']}.weight"]
        assert row["nonzeros"] == int((weight != 0).sum())
        assert row["sparsity"] == pytest.approx(1 - row["nonzeros"] / weight.numel())
        assert "relative_error" not in row
    assert main(["report", str(pruned), "--arch", "tinyarch:mlp", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",")[:3] == ["name", "kind", "shape"]
    assert lines[1].split(",")[2] == "16x6" and len(lines) == 4
    # with data: the original is found through the report beside the checkpoint
    assert main(["report", str(pruned), "--arch", "tinyarch:mlp", "--data",
                 str(root / "unlabelled.npz"), "--format", "json", "--plot",
                 str(tmp_path / "plots")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["original"].endswith("sd.pt")
    assert all(0 < row["relative_error"] < 1 for row in doc["layers"])
    prune_doc = json.loads(report_path_for(pruned).read_text())
    assert doc["output_error"] == pytest.approx(prune_doc["output_error"], rel=1e-5)
    assert (tmp_path / "plots" / "relative_error.png").is_file()
    assert main(["report", str(pruned), "--arch", "tinyarch:mlp"]) == 0
    table = capsys.readouterr().out
    assert "16x6" in table and "total" in table


def test_evaluate(env, pruned, capsys):
    root = env["root"]
    args = ["evaluate", str(root / "sd.pt"), str(pruned), "--data", str(root / "calib.npz"),
            "--arch", "tinyarch:mlp", "--format", "json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    original, pruned_row = doc["models"]
    assert original["accuracy"] == 1.0  # the labels are the original's predictions
    assert 0 <= pruned_row["accuracy"] <= 1
    x, model = env["x"], env["model"]
    fresh = env["factory"].mlp()
    fresh.load_state_dict(load_state(pruned))
    with torch.no_grad():
        expected = float(torch.linalg.vector_norm(fresh(x) - model(x)) /
                         torch.linalg.vector_norm(model(x)))
        acc = float((fresh(x).argmax(1) == env["y"]).float().mean())
    assert pruned_row["output_error"] == pytest.approx(expected, rel=1e-5)
    assert pruned_row["accuracy"] == pytest.approx(acc)
    assert pruned_row["nonzeros"] < original["nonzeros"]


# ---- in-process: user errors (exit 2, one line, input untouched) -------------------------------
BAD_CASES = {
    "missing checkpoint": (["prune", "{root}/nope.pt", "--data", "{root}/calib.npz", "--out",
                            "{tmp}/o.pt", "--arch", "tinyarch:mlp"], "does not exist"),
    "missing data": (["prune", "{root}/sd.pt", "--data", "{root}/nope.npz", "--out", "{tmp}/o.pt",
                      "--arch", "tinyarch:mlp"], "nope.npz does not exist"),
    "no arch": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out", "{tmp}/o.pt"],
                "pass --arch"),
    "arch module missing": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                             "{tmp}/o.pt", "--arch", "no_such_module_xyz:mlp"], "cannot import"),
    "arch attribute missing": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                                "{tmp}/o.pt", "--arch", "tinyarch:nothing"], "no attribute"),
    "arch malformed": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                        "{tmp}/o.pt", "--arch", "tinyarch.mlp"], "module:callable"),
    "arch not a module": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                           "{tmp}/o.pt", "--arch", "tinyarch:not_a_model"],
                          "not a torch.nn.Module"),
    "wrong architecture": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                            "{tmp}/o.pt", "--arch", "tinyarch:wide"], "does not fit --arch"),
    "shape mismatch": (["prune", "{root}/sd.pt", "--data", "{root}/wrong_shape.npz", "--out",
                        "{tmp}/o.pt", "--arch", "tinyarch:mlp"], "does not fit the model"),
    "no prunable layers": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                            "{tmp}/o.pt", "--arch", "tinyarch:mlp", "--ignore", "1", "3", "5"],
                           "no prunable layers"),
    "unknown layer": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                       "{tmp}/o.pt", "--arch", "tinyarch:mlp", "--layers", "7"], "'7'"),
    "out is input": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                      "{root}/sd.pt", "--arch", "tinyarch:mlp"], "--overwrite"),
    "bad sparsity": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                      "{tmp}/o.pt", "--arch", "tinyarch:mlp", "--sparsity", "1.5"], "[0, 1)"),
    "bad reweight": (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                      "{tmp}/o.pt", "--arch", "tinyarch:mlp", "--reweight", "-1"], ">= 0"),
    "evaluate unlabelled shape": (["evaluate", "{root}/sd.pt", "{root}/sd.pt", "--data",
                                   "{root}/wrong_shape.npz", "--arch", "tinyarch:mlp"],
                                  "does not fit the model"),
    "report data without reference or labels": (
        ["report", "{root}/sd.pt", "--arch", "tinyarch:mlp", "--data", "{root}/unlabelled.npz"],
        "no labels"),
}

if not torch.cuda.is_available():
    BAD_CASES["no cuda"] = (["prune", "{root}/sd.pt", "--data", "{root}/calib.npz", "--out",
                             "{tmp}/o.pt", "--arch", "tinyarch:mlp", "--device", "cuda"],
                            "no CUDA device")


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_user_errors(env, tmp_path, capsys, case):
    root = env["root"]
    argv, expected = BAD_CASES[case]
    argv = [a.format(root=root, tmp=tmp_path) for a in argv] + ["--threads", "1"]
    hashes = {p: sha256(p) for p in root.iterdir() if p.is_file()}
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line
    assert {p: sha256(p) for p in hashes} == hashes
    assert list(tmp_path.iterdir()) == []


def test_empty_and_truncated_files(env, tmp_path, capsys):
    root = env["root"]
    cases = {"empty.pt": b"", "cut.pt": (root / "sd.pt").read_bytes()[:200],
             "zeros.safetensors": b"\x00" * 64, "text.pt2": b"not a program"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        before = sha256(path)
        assert main(["report", str(path), "--arch", "tinyarch:mlp"]) == 2, name
        assert str(path) in one_error_line(capsys.readouterr().err)
        assert sha256(path) == before


def test_overwrite_replaces_input_atomically(env, tmp_path):
    root = env["root"]
    src = tmp_path / "copy.pt"
    src.write_bytes((root / "sd.pt").read_bytes())
    assert main(prune_args(root, src, src, "--arch", "tinyarch:mlp", "--overwrite",
                           "--report", str(tmp_path / "r.json"))) == 0
    state = load_state(src)
    check_report_matches(tmp_path / "r.json", state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt", "r.json"]


def test_solver_failure_exits_1_naming_layer(env, tmp_path, capsys):
    root = env["root"]
    out = tmp_path / "o.pt"
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--max-iter", "2")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "layer '1'" in line and "MAX_ITER" in line
    assert "--max-iter" in line and "solver_options" not in line   # the CLI's spelling
    assert not out.exists()
    # --lenient: a warning line, and the output is written
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--max-iter", "2",
                           "--lenient")) == 0
    err = capsys.readouterr().err
    assert "nettrim: warning: layer '1'" in err and "--max-iter N" in err
    assert out.exists()


def test_interrupt_during_write_leaves_nothing(env, tmp_path, capsys, monkeypatch):
    root = env["root"]
    out = tmp_path / "o.pt"
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        pathlib.Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_save)
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp")) == 130
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err
    assert err.strip().startswith("nettrim: interrupted") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cnn_program_and_help(env, tmp_path, capsys):
    model = env["factory"].cnn().eval()
    x = torch.randn(30, 1, 6, 6)
    np.savez(tmp_path / "img.npz", x=x.numpy())
    program = torch.export.export(model, (x[:5],))  # static batch of 5
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    src = tmp_path / "cnn.pt2"
    torch.export.save(program, src)
    out = tmp_path / "cnn_pruned.pt2"
    args = ["prune", str(src), "--data", str(tmp_path / "img.npz"), "--out", str(out),
            "--arch", "tinyarch:cnn", "--threads", "1", "-q"]
    assert main(args) == 0
    loaded = torch.export.load(str(out))
    assert loaded.module()(x[:5]).shape == (5, 3)
    doc = json.loads(report_path_for(out).read_text())
    assert [r["name"] for r in doc["layers"]] == ["0", "4"] and doc["layers"][0]["kind"] == "conv2d"
    # without --arch the conv / pool / flatten / linear chain is rebuilt from the graph
    out2 = tmp_path / "cnn_rebuilt.pt2"
    assert main(args[:5] + [str(out2)] + args[8:]) == 0
    rebuilt = torch.export.load(str(out2)).module()
    doc2 = json.loads(report_path_for(out2).read_text())
    assert [r["name"] for r in doc2["layers"]] == ["0", "4"]
    with torch.no_grad():
        ref = model(x[:5])
        err = float(torch.linalg.vector_norm(rebuilt(x[:5]) - ref) / torch.linalg.vector_norm(ref))
    assert 0 < err < 0.5
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["prune", "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--arch", "--epsilon", "--sparsity", "--mode", "--solver", "--layers", "--ignore",
                 "--samples", "--device", "--seed", "--report", "--trust-pickle", "--plot"):
        assert flag in help_text


# ---- the demo, tiny ------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_tiny(tmp_path, capsys):
    if not (pathlib.Path(DATA) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST not found under {DATA}; set NETTRIM_DATA")
    code = main(["demo", "--data-root", DATA, "--epochs", "1", "--train-samples", "3000",
                 "--samples", "300", "--test-samples", "2000", "--out", str(tmp_path), "-q",
                 "--threads", "1"])
    assert code == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.startswith("test accuracy"))
    before, after = (float(part.split()[-1].rstrip("%")) / 100 for part in line.split(","))
    assert before > 0.7 and after > before - 0.1
    doc = json.loads((tmp_path / "pruned.report.json").read_text())
    assert doc["test_accuracy_before"] == pytest.approx(before, abs=5e-5)
    from nettrim.models import lenet_300_100
    model = lenet_300_100()
    model.load_state_dict(load_state(tmp_path / "pruned.pt"), strict=True)
    zeros = sum(int((model[i].weight == 0).sum()) for i in (1, 3, 5))
    assert zeros == sum(r["total"] - r["nonzeros_after"] for r in doc["layers"]) > 0
