"""Property-based fuzz (hypothesis) of the solver, prune_layer and the command line (issue 14).

Bounded, derandomized example counts keep the file fast and its outcome the same on every run.

Properties:
- solver and prune_layer, on random small shapes, both dtypes, data scales from 1e-30 to 1e30,
  edge epsilons (0, tiny, ||Y||, above), occasional NaN/Inf data and warm starts: only
  ValueError / TypeError escape; an OPTIMAL answer is feasible when checked independently in
  float64; a problem that W = 0 satisfies is solved.
- the command line, on random combinations of options, checkpoints and data files (good, missing,
  corrupt, non-finite, of the wrong shape): the exit status is 0, 1 or 2 (130 and 143 are the
  signals' statuses, tested in test_reliability.py), stderr has no traceback, inputs are
  byte-identical afterwards and no temporary file is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nettrim
from solvers import OPTIMAL, SUCCESS, NetTrimProblem, solve_admm
from test_cli import env  # noqa: F401 - the tiny MLP in every format, calibration data

FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
#: ADMM iteration cap in the fuzz: MAX_ITER is an allowed outcome, a wrong OPTIMAL is not.
MAX_ITER = 400
#: Feasibility tolerance of solve_admm (feas_tol), relative.
FEAS = 1e-3


# ---- solver and prune_layer ----------------------------------------------------------------------
@st.composite
def layers(draw):
    """A random small layer: (X, Y, V or None, relu, W_true) as numpy in the drawn dtype."""
    P, N, M = draw(st.integers(1, 12)), draw(st.integers(1, 8)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = 10.0 ** draw(st.sampled_from([-30, -12, -3, 0, 3, 12, 30]))
    relu = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    X = rng.standard_normal((P, N))
    W = rng.standard_normal((M, N))
    Z = X @ W.T
    Y = np.maximum(Z, 0) if relu else Z
    V = None
    if relu and draw(st.booleans()):  # cascade-like bound: the true pre-activation plus noise
        V = Z + 0.1 * rng.standard_normal(Z.shape)
    cast = lambda a: None if a is None else (a * scale).astype(dtype)  # noqa: E731
    X, Y, V = cast(X), cast(Y), cast(V)
    corrupt = draw(st.sampled_from(["none"] * 6 + ["nan X", "inf Y"]))
    if corrupt == "nan X":
        X[rng.integers(P), rng.integers(N)] = np.nan
    elif corrupt == "inf Y":
        Y[rng.integers(P), rng.integers(M)] = np.inf
    return X, Y, V, relu, W.astype(dtype)


def check64(X, Y, V, relu, W, epsilon):
    """(residual, violation, rounding allowance) of W, in float64 from the stored values."""
    # rounding of the solver's own float32/float64 arithmetic on the scaled data
    u = np.finfo(np.asarray(X).dtype).eps
    X, Y, W = (np.asarray(a, dtype=np.float64) for a in (X, Y, W))
    Z = X @ W.T
    slack = 8 * (X.shape[1] + 1) * u * (np.linalg.norm(X) * np.linalg.norm(W) + np.linalg.norm(Y))
    if not relu:
        return float(np.linalg.norm(Z - Y)), 0.0, slack
    active = Y > 0
    off = (Z if V is None else Z - np.asarray(V, dtype=np.float64))[~active]
    return (float(np.linalg.norm((Z - Y)[active])), max(0.0, float(off.max())) if off.size else 0.0,
            slack)


def assert_feasible64(X, Y, V, relu, W, epsilon):
    res, viol, slack = check64(X, Y, V, relu, W, epsilon)
    Y64 = np.asarray(Y, dtype=np.float64)
    assert res <= epsilon * (1 + FEAS) + FEAS ** 2 * np.linalg.norm(Y64) + slack, (res, epsilon)
    assert viol <= FEAS * np.abs(Y64).max() + slack, viol


def zero_is_feasible(Y, V, relu, epsilon):
    Y = np.asarray(Y, dtype=np.float64)
    active = Y > 0 if relu else np.ones_like(Y, dtype=bool)
    ok_ineq = V is None or bool((np.asarray(V, dtype=np.float64)[~active] >= 0).all())
    return np.linalg.norm(Y[active]) <= epsilon and ok_ineq


EPSILONS = st.sampled_from([0.0, 1e-9, 0.1, 1.0, 2.0])   # relative to ||Y||_F


@settings(max_examples=100, **FUZZ)
@given(layer=layers(), rel_eps=EPSILONS,
       warm=st.sampled_from(["none", "none", "true", "nan", "inf", "shape"]))
def test_fuzz_solver(layer, rel_eps, warm):
    X, Y, V, relu, W_true = layer
    y_norm = float(np.linalg.norm(np.asarray(Y, dtype=np.float64))) if np.isfinite(Y).all() else 1.0
    epsilon = rel_eps * y_norm
    W0 = {"none": None, "true": W_true, "nan": np.full_like(W_true, np.nan),
          "inf": np.full_like(W_true, np.inf), "shape": np.vstack([W_true, W_true[:1]])}[warm]
    try:
        problem = NetTrimProblem(X, Y, epsilon, V=V, relu=relu)
        result = solve_admm(problem, W0=W0, max_iter=MAX_ITER)
    except (ValueError, TypeError):
        assert not (np.isfinite(X).all() and np.isfinite(Y).all() and warm in ("none", "true")
                    and np.isfinite(epsilon)) or _out_of_range(X, Y, V)
        return
    assert warm in ("none", "true")  # bad warm starts are refused
    if result.status == OPTIMAL:
        assert np.isfinite(result.W).all() and np.isfinite(result.residual)
        assert_feasible64(X, Y, V, relu, result.W, epsilon)
    if zero_is_feasible(Y, V, relu, epsilon):
        assert result.status == OPTIMAL


def _out_of_range(X, Y, V) -> bool:
    """Whether solve_admm may refuse finite data: Y or V out of range once scaled by X's scale."""
    from solvers.admm import data_scale
    s = data_scale(torch.from_numpy(np.ascontiguousarray(X)))
    info = np.finfo(X.dtype)
    for A in (Y, V):
        if A is not None:
            ratio = float(np.abs(A).max()) / s
            if ratio and not info.tiny / info.eps <= ratio <= info.max * info.eps:
                return True
    return False


@settings(max_examples=40, **FUZZ)
@given(layer=layers(), rel_eps=EPSILONS, bias=st.booleans(), warm=st.booleans())
def test_fuzz_prune_layer(layer, rel_eps, bias, warm):
    X, Y, V, relu, W_true = layer
    P, M = Y.shape
    b0 = np.zeros(M, dtype=X.dtype) if bias else None
    try:
        out = nettrim.prune_layer(X, Y, epsilon=rel_eps, relu=relu, V=V, bias=bias,
                                  W0=W_true if warm else None, b0=b0 if warm else None,
                                  solver_options={"max_iter": MAX_ITER})
    except (ValueError, TypeError):
        # the bias is a ones column of X, which sets X's scale
        Xs = np.concatenate([X, np.ones((P, 1), dtype=X.dtype)], 1) if bias else X
        assert not (np.isfinite(X).all() and np.isfinite(Y).all()) or _out_of_range(Xs, Y, V)
        return
    rep = out.report
    assert out.weight.shape == (M, X.shape[1])
    if rep["status"] in SUCCESS:   # OPTIMAL, or OPTIMAL_INACCURATE from the default pipeline
        W = out.weight.numpy()
        Xa = X
        if bias:
            Xa = np.concatenate([X, np.ones((P, 1), dtype=X.dtype)], 1)
            W = np.concatenate([W, out.bias.numpy()[:, None]], 1)
        assert np.isfinite(W).all() and np.isfinite(rep["relative_error"])
        assert_feasible64(Xa, Y, V, relu, W, rep["epsilon_abs"])
    if zero_is_feasible(Y, V, relu, rel_eps * float(np.linalg.norm(np.asarray(Y, np.float64)))):
        assert rep["status"] == OPTIMAL


# ---- the command line ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_inputs(env):  # noqa: F811 - the imported fixture
    """Good and bad checkpoints and data files beside env's tiny MLP; a scratch folder."""
    root = env["root"]
    x = env["x"].numpy()[:40]
    y = env["y"].numpy()[:40]
    rng = np.random.default_rng(0)
    np.savez(root / "small.npz", x=x, y=y)
    bad = x.copy()
    bad[1, 0, 0] = np.nan
    np.savez(root / "nan.npz", x=bad)
    np.savez(root / "huge.npz", x=np.full((8, 2, 3), 1e300))   # inf in float32
    np.savez(root / "no_x.npz", z=x)
    np.savez(root / "bad_labels.npz", x=x, y=y[:5])
    (root / "noise.bin").write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    (root / "empty.pt").write_bytes(b"")
    (root / "cut.pt").write_bytes((root / "sd.pt").read_bytes()[:300])
    (root / "folder").mkdir(exist_ok=True)
    state = {k: v.clone() for k, v in env["model"].state_dict().items()}
    state["1.weight"][0, 0] = float("nan")
    torch.save(state, root / "nan_weights.pt")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-out-", dir=root.parent))
    yield root, scratch
    shutil.rmtree(scratch, ignore_errors=True)


# (good values, bad values) of each part of a command line
CHECKPOINTS = (["sd.pt"], ["nan_weights.pt", "missing.pt", "folder", "noise.bin", "empty.pt",
                           "cut.pt", "small.npz"])
DATA = (["small.npz", "calib.pt", "unlabelled.npz"],
        ["wrong_shape.npz", "nan.npz", "huge.npz", "no_x.npz", "bad_labels.npz", "noise.bin",
         "folder", "missing.npz"])
ARCHS = (["tinyarch:mlp"], ["tinyarch:wide", "tinyarch:nothing", "nomodule_xyz:f", "tinyarch.mlp",
                            "tinyarch:not_a_model"])
OUTS = (["p.pt", "sub/p.safetensors", "p.pt2"], ["blocker/p.pt", "INPUT", "."])
SELECT = {"--layers": (["1", "3"], ["7"]), "--ignore": (["5"], ["1 3 5"])}
SAMPLES = {"--samples": (["7", "1"], ["0", "-2", "many"]), "--seed": (["3"], ["x"])}
OPTIONS = {
    "prune": {"--epsilon": (["0.05", "0", "0.3", "2"], ["-1", "nan", "inf", "abc"]),
              "--sparsity": (["0.5", "0", "0.999"], ["1", "-0.1", "x"]),
              "--mode": (["cascade", "parallel"], ["serial"]),
              "--solver": (["admm", "cvxpy"], ["gurobi"]), "--max-iter": (["60", "1"], ["0"]),
              "--format": (["state_dict", "safetensors"], ["onnx"]),
              "--gamma": (["1.1"], ["0.5", "nan"]), "--reweight": (["0", "2"], ["-1"]),
              "--no-refit": ([""], []), "--lenient": ([""], []), **SELECT, **SAMPLES},
    "report": {"--split": (["train", "test"], ["both"]),
               "--format": (["json", "csv", "table"], ["xml"]), **SELECT, **SAMPLES},
    "evaluate": {"--split": (["train", "test"], ["both"]), "--format": (["json", "csv"], ["xml"]),
                 **SAMPLES},
}
JUNK = ["--bogus", "--", "-x", "+", ""]
#: What one example breaks (None: nothing, a valid command line).
BREAKS = [None, None, None, "checkpoint", "data", "arch", "out", "option", "junk"]


@st.composite
def command_lines(draw, root, scratch):
    """``(argv, valid)``: a valid command line, or one with exactly one bad part."""
    broken = draw(st.sampled_from(BREAKS))

    def pick(part, name):
        good, bad = part
        return draw(st.sampled_from(bad if broken == name and bad else good))

    command = draw(st.sampled_from(["prune", "prune", "report", "evaluate"]))
    checkpoint = str(root / pick(CHECKPOINTS, "checkpoint"))
    argv = [command, checkpoint]
    if command == "evaluate":
        argv.append(str(root / pick(CHECKPOINTS, "checkpoint")))
    if command != "report" or draw(st.booleans()):
        argv += ["--data", str(root / pick(DATA, "data"))]
    if command == "prune":
        out = pick(OUTS, "out")
        argv += ["--out", checkpoint if out == "INPUT" else str(scratch / out)]
    argv += ["--arch", pick(ARCHS, "arch")]
    options = OPTIONS[command]
    flags = draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True))
    if "--epsilon" in flags and "--sparsity" in flags:  # exclusive: that is a usage error
        flags.remove("--sparsity")
    for flag in flags:
        value = pick(options[flag], "option")
        argv += [flag] + value.split()
    if broken == "junk":
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(JUNK)))
    argv += ["-q", "--threads", "1"] if command == "prune" else ["--threads", "1"]
    # report on unlabelled data needs an original to compare with: a usage error here
    valid = broken is None and not (command == "report" and "unlabelled.npz" in " ".join(argv))
    return argv, valid


def _hashes(folder: pathlib.Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_fuzz_command_line(cli_inputs):
    from nettrim.cli import main

    root, scratch = cli_inputs
    (scratch / "blocker").write_text("a file where a folder is expected")
    inputs = _hashes(root)

    @settings(max_examples=50, **FUZZ)
    @given(case=command_lines(root, scratch))
    def run(case):
        argv, valid = case
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        assert code in ((0, 1) if valid else (0, 1, 2)), (argv, code, err.getvalue())
        assert "Traceback" not in err.getvalue(), (argv, err.getvalue())
        if code == 2:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            assert lines and lines[-1].startswith("nettrim: error: "), (argv, err.getvalue())
        assert _hashes(root) == inputs, argv
        leftovers = [p.name for p in scratch.rglob("*") if ".part" in p.name]
        assert not leftovers, (argv, leftovers)
        for path in scratch.iterdir():  # a clean output folder for the next example
            if path.name != "blocker":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    run()
