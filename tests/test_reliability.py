"""Issue 14: bad input gets one clear error, no OPTIMAL labels a wrong answer, no signal leaves a
file. One test (or more) per numbered item of the issue; the property-based fuzz is in
tests/test_fuzz.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nettrim
from solvers import OPTIMAL, SUCCESS, NetTrimProblem, solve_admm, solve_cvxpy
from solvers.admm import RHO_RANGE


def relu_layer(P=40, N=10, M=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, N))
    Y = np.maximum(X @ rng.standard_normal((M, N)).T, 0)
    return X, Y


def residual64(X, Y, W, relu=True):
    """Active-set residual and largest violation (V = 0), independently in float64 numpy."""
    X, Y, W = (np.asarray(a, dtype=np.float64) for a in (X, Y, W))
    Z = X @ W.T
    if not relu:
        return float(np.linalg.norm(Z - Y)), 0.0
    active = Y > 0
    off = Z[~active]
    return float(np.linalg.norm((Z - Y)[active])), max(0.0, float(off.max())) if off.size else 0.0


# ---- 3, 4: data scaled near 1e20 (float32 column norms overflow) or 1e-30 (squares underflow) ---
@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_extreme_data_scale_is_solved_or_refused(scale):
    X, Y = relu_layer()
    eps = 0.1 * np.linalg.norm(Y)
    Xs, Ys = (X * scale).astype(np.float32), (Y * scale).astype(np.float32)
    result = solve_admm(NetTrimProblem(Xs, Ys, eps * scale))
    assert result.status == OPTIMAL
    assert np.isfinite(result.residual) and np.isfinite(result.W).all()
    assert result.nonzeros > 0  # W = 0 has residual ||Y on Omega|| > epsilon here
    res, viol = residual64(Xs, Ys, result.W)
    assert res <= eps * scale * 1.002
    assert viol <= 1e-3 * float(np.abs(Ys).max())
    assert result.residual == pytest.approx(res, rel=1e-3)
    # the same weights as on unit-scale data (W does not change when X and Y scale together)
    reference = solve_admm(NetTrimProblem(X.astype(np.float32), Y.astype(np.float32), eps))
    assert result.nonzeros == pytest.approx(reference.nonzeros, abs=2)


def test_prune_layer_tiny_scale_reports_the_true_error():
    X, Y = relu_layer()
    out = nettrim.prune_layer((X * 1e-30).astype(np.float32), (Y * 1e-30).astype(np.float32),
                              epsilon=0.1)
    assert out.report["status"] in SUCCESS   # the default pipeline: OPTIMAL_INACCURATE
    assert 0.0 < out.report["relative_error"] <= 0.1 * 1.002
    assert out.report["nonzeros"] > 0


def test_y_out_of_range_relative_to_x_is_refused():
    X, Y = relu_layer()
    problem = NetTrimProblem((X * 1e-20).astype(np.float32), (Y * 1e20).astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="Y is .* times the scale of X"):
        solve_admm(problem)


# ---- 5, 9: NaN / Inf / wrong-shape warm starts --------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_warm_start_is_a_value_error_naming_W0(bad):
    X, Y = relu_layer()
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y))
    W0 = np.ones((5, 10))
    W0[2, 3] = bad
    with pytest.raises(ValueError, match="W0"):
        solve_admm(problem, W0=W0)
    with pytest.raises(ValueError, match="W0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, W0=W0)


def test_wrong_warm_start_shapes_name_the_argument():
    X, Y = relu_layer()
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y))
    with pytest.raises(ValueError, match="W0 must have shape"):
        solve_admm(problem, W0=np.ones((10, 5)))
    W0 = np.ones((5, 10))
    with pytest.raises(ValueError, match="b0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, bias=True, W0=W0, b0=np.ones(4))
    with pytest.raises(ValueError, match="b0"):
        nettrim.prune_layer(X, Y, epsilon=0.1, bias=True, W0=W0, b0=np.full(5, np.nan))


# ---- 8: a feasible zero solution returns at once; rho stays in range -----------------------------
def test_zero_solution_feasible_returns_at_once():
    X, Y = relu_layer()
    for eps in (np.linalg.norm(Y), 2 * np.linalg.norm(Y)):
        result = solve_admm(NetTrimProblem(X, Y, eps), W0=np.ones((5, 10)))
        assert result.status == OPTIMAL and result.iterations == 0
        assert result.nonzeros == 0
        assert result.residual == pytest.approx(np.linalg.norm(Y))
    out = nettrim.prune_layer(X, Y, epsilon=2.0, bias=True)
    assert out.report["status"] == OPTIMAL and out.report["nonzeros"] == 0


def test_rho_stays_within_range_with_one_sample_and_an_unpenalized_bias():
    """One sample, a free bias and a warm start: the bias alone fits, the l1 duals vanish and
    residual balancing drove rho to 1e-31 (iterations in the thousands)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 16).double()
    x = torch.randn(1, 6, dtype=torch.float64)
    W0, b0 = lin.weight.detach(), lin.bias.detach()
    Y = torch.relu(x @ W0.T + b0)
    Xa = torch.cat([x, torch.ones(1, 1, dtype=torch.float64)], 1)
    penalty = torch.ones(16, 7, dtype=torch.float64)
    penalty[:, -1] = 0
    problem = NetTrimProblem(Xa, Y, 0.05 * float(torch.linalg.vector_norm(Y)))
    rhos = []
    result = solve_admm(problem, W0=torch.cat([W0, b0[:, None]], 1), penalty=penalty,
                        callback=lambda it, r, s, rho: rhos.append(rho))
    assert result.status == OPTIMAL and problem.is_feasible(result.W)
    assert rhos[0] / RHO_RANGE <= min(rhos) and max(rhos) <= rhos[0] * RHO_RANGE
    assert result.iterations < 1000


# ---- 6: sparsity 0 means no pruning --------------------------------------------------------------
def test_sparsity_zero_keeps_the_weights_and_says_so():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(100, 6)
    result = nettrim.prune(model, x, sparsity=0.0)
    for name in ("0", "2"):
        assert torch.equal(result.model.get_submodule(name).weight,
                           model.get_submodule(name).weight)
        assert torch.equal(result.model.get_submodule(name).bias, model.get_submodule(name).bias)
    for row in result.report:
        assert row.status == OPTIMAL and row.nonzeros_after == row.nonzeros_before
        assert "no pruning" in row.note
        assert row.relative_error < 1e-6
    X, Y = relu_layer()
    with pytest.raises(ValueError, match="sparsity=0 .* W0"):
        nettrim.prune_layer(X, Y, sparsity=0)


# ---- 18: float16 / bfloat16: refused by the layer API, solved in float32 by prune() -------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_data_is_refused_like_the_problem(dtype):
    X, Y = relu_layer()
    Xh, Yh = torch.from_numpy(X).to(dtype), torch.from_numpy(Y).to(dtype)
    with pytest.raises(TypeError, match="X must be float32 or float64"):
        NetTrimProblem(Xh, Yh, 1.0)
    with pytest.raises(TypeError, match="X must be float32 or float64"):
        nettrim.prune_layer(Xh, Yh, epsilon=0.1)


def test_prune_solves_a_half_precision_model_in_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3)).to(torch.bfloat16)
    result = nettrim.prune(model, torch.randn(100, 6, dtype=torch.bfloat16), 0.1)
    assert result.model[0].weight.dtype == torch.bfloat16
    assert all(row.status in SUCCESS for row in result.report)
    assert result.report[0].nonzeros_after < result.report[0].nonzeros_before


# ---- 1: the cvxpy reference returns a support (the ADMM's), not an interior point -----------------
@pytest.mark.parametrize("relu, seed", [(True, 0), (False, 1), (True, 3)])
def test_cvxpy_support_matches_the_admm_support(relu, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((60, 20))
    Z = X @ (rng.standard_normal((6, 20)) / np.sqrt(20)).T
    Y = np.maximum(Z, 0) if relu else Z
    problem = NetTrimProblem(X, Y, 0.1 * np.linalg.norm(Y), relu=relu)
    reference = solve_cvxpy(problem)
    admm = solve_admm(problem, eps_abs=1e-9, eps_rel=1e-7, max_iter=50000)
    assert reference.status == OPTIMAL and admm.status == OPTIMAL
    assert 0 < reference.nonzeros < 0.9 * X.shape[1] * Y.shape[1]
    np.testing.assert_array_equal(reference.W != 0, admm.W != 0)
    assert problem.is_feasible(reference.W)
    assert reference.objective == pytest.approx(admm.objective, rel=1e-6)


def test_prune_layer_with_cvxpy_prunes():
    X, Y = relu_layer(P=60, N=20, M=6)
    ref = nettrim.prune_layer(X, Y, epsilon=0.1, solver="cvxpy")
    admm = nettrim.prune_layer(X, Y, epsilon=0.1, solver="admm")
    assert ref.report["status"] == OPTIMAL
    assert ref.report["nonzeros"] < 0.9 * ref.report["total"]
    assert ref.report["relative_error"] <= 0.1 * 1.002
    assert abs(ref.report["nonzeros"] - admm.report["nonzeros"]) <= 0.1 * admm.report["nonzeros"]


# ---- the command line ----------------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from nettrim.cli import main, report_path_for  # noqa: E402
from test_cli import REPO, env, one_error_line, prune_args, run_cli, sha256  # noqa: E402,F401


def cli_env(*paths):
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths)])
    environ["OMP_NUM_THREADS"] = "1"
    return environ


def test_idx_directory_without_the_split_is_an_error_naming_the_file(env, tmp_path, capsys):
    import gzip
    import struct

    images = np.zeros((5, 2, 3), dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4B3I", 0, 0, 8, 3, 5, 2, 3) + images.tobytes())
    out = tmp_path / "out" / "p.pt"
    assert main(["prune", str(env["root"] / "sd.pt"), "--data", str(tmp_path), "--out", str(out),
                 "--arch", "tinyarch:mlp", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train-images-idx3-ubyte" in line and "--split test" in line
    assert not out.parent.exists()


def test_non_finite_data_and_weights_are_refused(env, tmp_path, capsys):
    root = env["root"]
    x = env["x"].numpy().copy()
    x[3, 0, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=env["y"].numpy())
    for argv in (["report", str(root / "sd.pt"), "--arch", "tinyarch:mlp", "--data",
                  str(tmp_path / "nan.npz")],
                 ["evaluate", str(root / "sd.pt"), str(root / "sd.pt"), "--arch", "tinyarch:mlp",
                  "--data", str(tmp_path / "nan.npz")]):
        assert main(argv) == 2
        assert "NaN or Inf" in one_error_line(capsys.readouterr().err)
    state = {k: v.clone() for k, v in env["model"].state_dict().items()}
    state["3.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    assert main(["evaluate", str(root / "sd.pt"), str(tmp_path / "inf.pt"), "--arch",
                 "tinyarch:mlp", "--data", str(root / "calib.npz")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'3.weight'" in line and "NaN/Inf" in line


def test_directory_or_random_bytes_as_checkpoint(env, tmp_path, capsys):
    root = env["root"]
    (tmp_path / "adir").mkdir()
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    before = sha256(noise)
    for source in ("adir", "noise.pt"):
        for argv in (prune_args(root, tmp_path / source, tmp_path / "o.pt", "--arch",
                                "tinyarch:mlp"),
                     ["report", str(tmp_path / source), "--arch", "tinyarch:mlp"]):
            assert main(argv) == 2
            line = one_error_line(capsys.readouterr().err)
            assert source in line and "trust-pickle" not in line and "weights_only" not in line
    assert sha256(noise) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "noise.pt"]


def test_unwritable_out_is_refused_before_any_work(env, tmp_path, capsys, monkeypatch):
    def no_pruning(*args, **kwargs):
        raise AssertionError("pruning started although the output cannot be written")

    monkeypatch.setattr(sys.modules["nettrim.prune"], "prune", no_pruning)
    root = env["root"]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [("--out", prune_args(root, "sd.pt", blocker / "p.pt", "--arch", "tinyarch:mlp")),
             ("--report", prune_args(root, "sd.pt", tmp_path / "p.pt", "--arch", "tinyarch:mlp",
                                     "--report", str(blocker / "sub" / "r.json"))),
             ("--plot", prune_args(root, "sd.pt", tmp_path / "p.pt", "--arch", "tinyarch:mlp",
                                   "--plot", str(blocker))),
             ("--out", prune_args(root, "sd.pt", tmp_path, "--arch", "tinyarch:mlp"))]
    for flag, argv in cases:
        assert main(argv) == 2, flag
        assert one_error_line(capsys.readouterr().err).startswith(f"nettrim: error: {flag} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_sparsity_zero_on_the_command_line_keeps_the_model(env, tmp_path):
    root = env["root"]
    out = tmp_path / "p.pt"
    assert main(prune_args(root, "sd.pt", out, "--arch", "tinyarch:mlp", "--sparsity", "0")) == 0
    state = torch.load(out, weights_only=True)
    for name, value in env["model"].state_dict().items():
        assert torch.equal(state[name], value), name
    doc = json.loads(report_path_for(out).read_text())
    assert sum("no pruning" in note for note in doc["notes"]) == 3


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom nettrim.cli import main\n"
            "codes = [main(['--version']), main(['prune', '--help'])]\n"
            "print(codes, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "current directory is on the import path" in " ".join(proc.stdout.split())
    assert proc.stdout.strip().splitlines()[-1] == "[0, 0] False"


def test_arch_module_in_the_working_directory_through_a_script(env, tmp_path):
    """The installed ``nettrim`` script has its own folder, not the working directory, first
    on sys.path; a launcher elsewhere stands in for it."""
    root = env["root"]
    launcher = tmp_path / "bin" / "nettrim"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom nettrim.cli import main\nsys.exit(main())\n")
    proc = subprocess.run([sys.executable, str(launcher), "prune", "sd.pt", "--data", "calib.npz",
                           "--out", str(tmp_path / "p.pt"), "--arch", "tinyarch:mlp", "-q"],
                          cwd=root, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.pt").is_file()


def _wait_for_torch_loading(proc, timeout=30.0):
    """Poll /proc until the child has mapped torch's C library (it is importing torch)."""
    deadline = time.monotonic() + timeout
    maps = pathlib.Path(f"/proc/{proc.pid}/maps")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "torch" in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.005)


@pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_ctrl_c_while_torch_imports_is_one_line(env, tmp_path):
    root = env["root"]
    proc = subprocess.Popen([sys.executable, "-m", "nettrim.cli", "prune", "sd.pt", "--data",
                             "calib.npz", "--out", str(tmp_path / "p.pt"), "--arch",
                             "tinyarch:mlp"], cwd=root, env=cli_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_torch_loading(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nettrim: interrupted"), err
    assert list(tmp_path.iterdir()) == []


# A stand-in for the nettrim script whose writer receives SIGTERM in the middle of the output:
# the first half is on disk, the signal arrives, the writer would go on for seconds.
SIGTERM_LAUNCHER = '''
import os, signal, sys, time
import torch
from nettrim.cli import main

def interrupted(real):
    def write(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a file")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        real(obj, f, *args, **kwargs)
    return write

torch.save = interrupted(torch.save)
torch.export.save = interrupted(torch.export.save)
sys.exit(main())
'''


@pytest.mark.parametrize("out_name", ["p.pt", "p.pt2"])
def test_sigterm_while_writing_leaves_no_file(env, tmp_path, out_name):
    root = env["root"]
    launcher = tmp_path / "launch.py"
    launcher.write_text(SIGTERM_LAUNCHER)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = sha256(root / "sd.pt")
    proc = subprocess.run([sys.executable, str(launcher), "prune", "sd.pt", "--data", "calib.npz",
                           "--out", str(out_dir / out_name), "--arch", "tinyarch:mlp", "-q"],
                          cwd=root, env=cli_env(root), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nettrim: terminated"), proc.stderr
    assert list(out_dir.iterdir()) == []
    assert sha256(root / "sd.pt") == before


# ---- 17: the README states prune_layer's signature as it is --------------------------------------
def test_readme_prune_layer_defaults_match_the_signature():
    import inspect

    text = (REPO / "README.md").read_text()
    calls = re.findall(r"prune_layer\(X, Y,[^)]*\)", text)
    assert calls, "README shows no prune_layer(X, Y, ...) call"
    params = inspect.signature(nettrim.prune_layer).parameters
    for call in calls:
        for name, value in re.findall(r"(\w+)=(True|False)", call):
            assert repr(params[name].default) == value, (call, name)


def test_export_from_one_calibration_sample_keeps_the_batch_dynamic(env, tmp_path):
    """Found by the fuzz: an example input of one row fixed the exported batch size to 1."""
    out = tmp_path / "p.pt2"
    assert main(prune_args(env["root"], "sd.pt", out, "--arch", "tinyarch:mlp",
                           "--samples", "1")) == 0
    program = torch.export.load(str(out)).module()
    assert program(env["x"][:5]).shape == (5, 3)


def test_target_sparsity_with_no_solution_warns_instead_of_aborting():
    # a sparsity target whose epsilon search finds no solved point (an all-zero input row
    # off the active set asked to stay below -1: infeasible at every epsilon) is reported with
    # its status and a note instead of raising
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 12, generator=g)
    X[0] = 0.0
    W0 = torch.randn(8, 12, generator=g)
    Y = torch.relu(X @ W0.T)
    V = torch.full_like(Y, -1.0)
    res = nettrim.prune_layer(X, Y, V=V, sparsity=0.5, relu=True, W0=W0,
                              solver_options={"max_iter": 50})
    assert res.report["status"] not in SUCCESS
    assert "gave a solution" in res.report["note"]
