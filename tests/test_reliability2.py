"""Issue 21 (reliability, round two), the command line and files half: one test (or more) per
item. Item numbers are the issue's: 1 pickles in a .pt2, 2 code named by a report file, 3 outputs
that would replace an input, 6 disk full, 11 cvxpy's iteration cap, 12 Ctrl-C while the heavy
modules import, 13 a model torch.export cannot trace, 14 an unwritable ``report --plot``,
15 absurd ``--threads``, 19 a signal after the outputs are complete.

CLI tests run ``main([...])`` in-process unless only a real process shows the behaviour (exit
status with a traceback, signals, the working directory on the import path, resource limits).
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pytest
import torch

from nettrim.cli import main, report_path_for
from nettrim.io.checkpoint import load_checkpoint
from nettrim.io.files import CheckpointError
from test_cli import REPO, env, one_error_line, prune_args, sha256  # noqa: F401

RELARCH = '''
import torch
from torch import nn
from tinyarch import mlp


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        y = self.net(x)
        if y.sum() > 0:
            return y
        return -y


def branchy():
    return Branchy()
'''


def cli_env(*paths) -> dict:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths)])
    environ["OMP_NUM_THREADS"] = "1"
    return environ


def run_cli(args, *, cwd, paths=(), timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "nettrim.cli", *map(str, args)], cwd=cwd,
                          env=cli_env(*paths), capture_output=True, text=True, timeout=timeout,
                          **kwargs)


STATE_WARNING = "nettrim: warning: resume: could not write the run state"


def without_state_warning(stderr: str) -> str:
    """stderr without the warning that the run state (OUT.resume) did not fit: on a full disk
    or under a file size limit the run goes on without it and says so."""
    assert STATE_WARNING in stderr, stderr
    return "\n".join(ln for ln in stderr.splitlines() if not ln.startswith(STATE_WARNING))


def stderr_lines(text: str) -> list:
    """stderr's lines but -q's progress lines (one per finished layer)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("Net-Trim (")]


def no_pruning(*args, **kwargs):
    raise AssertionError("pruning started although the command should have stopped before")


def export_mlp(env, path) -> pathlib.Path:
    program = torch.export.export(env["factory"].mlp().eval(), (env["x"][:2],),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(path))
    return pathlib.Path(path)


# ---- 1: a .pt2 whose pickled parts would run code ----------------------------------------------
class _Eval:
    """Pickles as a call of ``eval(source)``: what a malicious file can hold."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def craft_program(src, dst, part: str, mark=None) -> pathlib.Path:
    """A copy of the program ``src`` whose ``part`` is a pickle: with ``mark``, one that touches
    that file and then returns what torch expects there (the load goes on as if nothing
    happened); without, a plain ``nn.Parameter`` (data only). ``part="expression"``: the
    graph's symbolic shapes, which torch parses with sympy's ``eval``, touch ``mark``."""
    def payload(value: str):
        if mark is None:
            return _saved(eval(value))
        return _saved(_Eval(f"(__import__('pathlib').Path({str(mark)!r}).touch(), {value})[1]"))

    def touching(expression: str) -> str:   # a shape expression that also runs code
        return f"(__import__('pathlib').Path({str(mark)!r}).touch(), {expression})[1]"

    def walk(item):
        if isinstance(item, dict):
            return {k: touching(v) if k == "expr_str" else walk(v) for k, v in item.items()}
        return [walk(v) for v in item] if isinstance(item, list) else item

    inputs = "((__import__('torch').zeros(2, 2, 3),), {})"
    weight = "__import__('torch').nn.Parameter(__import__('torch').zeros(16, 6))"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        config_name = next(n for n in zin.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(zin.read(config_name))
        weight_file = config["config"]["1.weight"]["path_name"]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if part == "sample_inputs" and "/data/sample_inputs/" in info.filename:
                data = payload(inputs)
            elif part == "weights" and info.filename == config_name:
                config["config"]["1.weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif part == "weights" and info.filename.endswith(f"/data/weights/{weight_file}"):
                data = payload(weight)
            elif part == "expression" and info.filename.endswith("/models/model.json"):
                assert b"expr_str" in data
                data = json.dumps(walk(json.loads(data))).encode()
            zout.writestr(info, data)
    return pathlib.Path(dst)


@pytest.fixture(scope="module")
def program(env, tmp_path_factory):
    return export_mlp(env, tmp_path_factory.mktemp("program") / "mlp.pt2")


@pytest.mark.parametrize("part, suffix", [("sample_inputs", ".pt2"), ("sample_inputs", ".pt"),
                                          ("sample_inputs", ".safetensors"), ("weights", ".pt2"),
                                          ("expression", ".pt2")])
def test_pickles_in_a_program_are_refused_on_every_loading_path(env, program, tmp_path, capsys,
                                                                part, suffix):
    root = env["root"]
    mark = tmp_path / "MARK"
    evil = craft_program(program, tmp_path / f"evil{suffix}", part, mark)
    data = str(root / "calib.npz")
    runs = {
        "prune": prune_args(root, evil, tmp_path / "out" / "p.pt2"),
        "report": ["report", str(evil)],
        "evaluate (pruned)": ["evaluate", str(program), str(evil), "--data", data],
        "evaluate (original)": ["evaluate", str(evil), str(program), "--data", data],
        "report --original": ["report", str(program), "--data", data, "--original", str(evil)],
    }
    for what, argv in runs.items():
        assert main(argv) == 2, what
        line = one_error_line(capsys.readouterr().err)
        assert evil.name in line and "--trust-pickle" in line, (what, line)
        assert not mark.exists(), f"{what} ran the file's code"
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_checkpoint(evil)
    assert not mark.exists()
    assert not (tmp_path / "out").exists()


def test_pickled_program_is_one_line_in_a_real_process(env, program, tmp_path):
    """torch logs the fallback to ``weights_only=False`` with a 59-line traceback."""
    mark = tmp_path / "MARK"
    evil = craft_program(program, tmp_path / "evil.pt2", "sample_inputs", mark)
    proc = run_cli(["report", evil], cwd=tmp_path, paths=[env["root"]])
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "data/sample_inputs" in line and "--trust-pickle" in line
    assert not mark.exists()


def test_trust_pickle_loads_the_program_and_plain_pickled_tensors_need_no_trust(
        env, program, tmp_path, capsys):
    mark = tmp_path / "MARK"
    evil = craft_program(program, tmp_path / "evil.pt2", "sample_inputs", mark)
    loaded = load_checkpoint(evil, trust_pickle=True)   # the user's explicit consent
    assert mark.exists() and loaded.format == "export"
    assert any("trust" in note for note in loaded.notes)
    mark.unlink()
    assert main(["report", str(evil), "--trust-pickle"]) == 0
    assert mark.exists()
    capsys.readouterr()
    # a weight pickled by torch itself (use_pickle) holding a plain Parameter is data
    plain = craft_program(program, tmp_path / "plain.pt2", "weights")
    model = load_checkpoint(plain).model
    assert torch.equal(model[1].weight, torch.zeros(16, 6))


# ---- 2: a report file beside the checkpoint names code to import --------------------------------
def test_arch_named_by_a_report_file_needs_consent(env, program, tmp_path):
    root = env["root"]
    (tmp_path / "helpers.py").write_text(
        "import pathlib\npathlib.Path('IMPORTED').touch()\nfrom tinyarch import mlp as build\n")
    shutil.copy(program, tmp_path / "model.pt2")
    report = report_path_for(tmp_path / "model.pt2")

    def record(original):
        report.write_text(json.dumps({"input": {"path": str(original), "arch": "helpers:build"}}))

    args = ["report", "model.pt2", "--data", root / "calib.npz"]
    record(root / "sd.pt")     # a state_dict: it needs the architecture the report names
    proc = run_cli(args, cwd=tmp_path, paths=[root])
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert not (tmp_path / "IMPORTED").exists()
    assert "helpers:build" in line and report.name in line and "pass --arch" in line, line
    assert not line.startswith("nettrim: error: --arch"), line
    # consent: the user names it
    proc = run_cli([*args, "--arch", "helpers:build"], cwd=tmp_path, paths=[root])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "IMPORTED").exists()
    (tmp_path / "IMPORTED").unlink()
    # an original that needs no architecture is compared without importing anything
    record(program)
    proc = run_cli([*args, "--format", "json"], cwd=tmp_path, paths=[root])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output_error"] == pytest.approx(0.0, abs=1e-6)
    assert not (tmp_path / "IMPORTED").exists()


# ---- 3: an output path that is an input ----------------------------------------------------------
def write_idx(directory: pathlib.Path, x: torch.Tensor, y: torch.Tensor) -> pathlib.Path:
    directory.mkdir()
    images = (x.clamp(-1, 1) * 100 + 128).to(torch.uint8).numpy()
    with gzip.open(directory / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4B3I", 0, 0, 8, 3, *images.shape) + images.tobytes())
    with gzip.open(directory / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4BI", 0, 0, 8, 1, len(y)) + y.numpy().astype(np.uint8).tobytes())
    return directory


def test_outputs_never_replace_an_input(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules["nettrim.prune"], "prune", no_pruning)
    root = env["root"]
    data = tmp_path / "sx.npz"
    shutil.copy(root / "calib.npz", data)
    ckpt = tmp_path / "m.pt"
    shutil.copy(root / "sd.pt", ckpt)
    (tmp_path / "soft.npz").symlink_to(data)
    os.link(data, tmp_path / "hard.npz")
    (tmp_path / "soft.pt").symlink_to(ckpt)
    idx = write_idx(tmp_path / "idx", env["x"], env["y"])
    plots = tmp_path / "plots"
    plots.mkdir()
    os.link(ckpt, plots / "sparsity.png")
    before = {p: sha256(p) for p in (data, ckpt, *idx.iterdir())}
    listing = sorted(p.name for p in tmp_path.rglob("*"))

    def prune(out, *extra, src=ckpt, calib=data):
        return ["prune", str(src), "--data", str(calib), "--out", str(out), "--arch",
                "tinyarch:mlp", "-q", *extra]

    cases = [
        ("--out", prune(data)),
        ("--report", prune(tmp_path / "p.pt", "--report", str(data))),
        ("--out", prune(tmp_path / "soft.npz")),
        ("--report", prune(tmp_path / "p.pt", "--report", str(tmp_path / "hard.npz"))),
        ("--report", prune(tmp_path / "p.pt", "--report", str(tmp_path / "soft.pt"))),
        ("--out", prune(idx / "train-labels-idx1-ubyte.gz", calib=idx)),
        ("--plot", prune(tmp_path / "p.pt", "--plot", str(idx), calib=idx)),
        ("--plot", prune(tmp_path / "p.pt", "--plot", str(plots))),
        ("--plot", ["report", str(ckpt), "--arch", "tinyarch:mlp", "--data", str(idx),
                    "--split", "train", "--plot", str(idx)]),
        ("--plot", ["report", str(ckpt), "--arch", "tinyarch:mlp", "--data", str(data),
                    "--original", str(tmp_path / "soft.pt"), "--plot", str(plots)]),
    ]
    for flag, argv in cases:
        assert main(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"nettrim: error: {flag} "), (argv, line)
        assert "input" in line, line
    assert {p: sha256(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


# ---- 6: disk full: one line, exit 1, all outputs or none -----------------------------------------
def test_report_that_cannot_be_written_leaves_no_checkpoint(env, tmp_path, capsys, monkeypatch):
    real = pathlib.Path.write_text

    def full_disk(self, *args, **kwargs):
        if ".report.json" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    out_dir = tmp_path / "out"
    argv = prune_args(env["root"], "sd.pt", out_dir / "p.pt", "--arch", "tinyarch:mlp",
                      "--sparsity", "0.5", "--plot", str(out_dir / "plots"))
    assert main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "p.report.json" in line and "No space left on device" in line, line
    # no output; the run state (every layer finished) is kept for a rerun with --resume
    assert "p.pt.resume: run the same command with --resume" in line, line
    assert sorted(p.name for p in out_dir.rglob("*")) == ["p.pt.resume"]
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 1   # the layers come from the state; the report fails again
    assert "p.report.json" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
@pytest.mark.parametrize("out_name", ["p.pt", "p.pt2"])
def test_file_size_limit_is_one_line_exit_1_and_no_file(env, tmp_path, out_name):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    root = env["root"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_cli(["prune", "sd.pt", "--data", "calib.npz", "--out", out_dir / out_name,
                    "--arch", "tinyarch:mlp", "--sparsity", "0.5", "-q"], cwd=root,
                   paths=[root], preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(without_state_warning(proc.stderr))
    assert out_name in line and "nothing was written" in line, line
    assert list(out_dir.iterdir()) == []


FULL_TMPFS = """
mount -t tmpfs -o size=64k tmpfs "$1" || exit 99
head -c 60k /dev/zero > "$1/filler"
shift
"$@" --out "$OUT/o/p.pt"
echo "rc=$?"
echo "files:" $(cd "$OUT" && find . | sort)
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a tmpfs")
def test_full_tmpfs_leaves_neither_checkpoint_nor_report(env, tmp_path):
    """A 64 KiB tmpfs with 4 KiB free, mounted in a private mount namespace: the checkpoint
    (2.4 KB) fits, its report does not."""
    root = env["root"]
    mount = tmp_path / "small"
    mount.mkdir()
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", FULL_TMPFS, "sh",
               str(mount), sys.executable, "-m", "nettrim.cli", "prune", "sd.pt", "--data",
               "calib.npz", "--arch", "tinyarch:mlp", "--sparsity", "0.5", "-q"]
    proc = subprocess.run(command, cwd=root, env=dict(cli_env(root), OUT=str(mount)),
                          capture_output=True, text=True, timeout=180)
    if proc.returncode == 99 or "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    assert "rc=1" in proc.stdout, (proc.stdout, proc.stderr)
    # the run state does not fit either: a warning, and the run goes on without it
    line = one_error_line(without_state_warning(proc.stderr))
    assert "p.report.json" in line and "No space left on device" in line, line
    assert "files: . ./filler\n" in proc.stdout, proc.stdout   # no output, no directory


# ---- 11: cvxpy's iteration cap -------------------------------------------------------------------
def test_max_iter_reaches_the_cvxpy_solver(env, tmp_path, capsys):
    argv = prune_args(env["root"], "sd.pt", tmp_path / "p.pt", "--arch", "tinyarch:mlp",
                      "--solver", "cvxpy", "--max-iter", "2")
    assert main(argv) == 1
    lines = stderr_lines(capsys.readouterr().err)   # cvxpy warns, as it stops at its cap
    assert lines[-1].startswith("nettrim: error: pruning failed: layer '1'"), lines
    assert all(line.startswith("nettrim: warning: ") for line in lines[:-1]), lines
    assert "MAX_ITER" in lines[-1] and "--max-iter" in lines[-1], lines
    assert not (tmp_path / "p.pt").exists()
    assert main([*argv, "--lenient", "--report", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {row["status"] for row in doc["layers"]} == {"MAX_ITER"}
    assert doc["options"]["max_iter"] == 2


# ---- 12: Ctrl-C while numpy and torch import -----------------------------------------------------
def _wait_for_mapping(proc, needle: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    maps = pathlib.Path(f"/proc/{proc.pid}/maps")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if needle in maps.read_text():
                return True
        except OSError:
            pass
        time.sleep(0.001)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("delay", [0.0, 0.005, 0.01, 0.02, 0.05])
def test_ctrl_c_while_numpy_initialises_is_exit_130(env, tmp_path, delay):
    """numpy's extension module half-initialised by an interrupt re-raised it as ImportError
    'cannot load module more than once per process' or RecursionError (22 of 24 runs at these
    delays before the fix), and sometimes swallowed it (exit 0)."""
    root = env["root"]
    proc = subprocess.Popen([sys.executable, "-m", "nettrim.cli", "report", "sd.pt", "--arch",
                             "tinyarch:mlp"], cwd=root, env=cli_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_mapping(proc, "_multiarray_umath")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = stderr_lines(err)
    assert len(lines) == 1 and lines[0].startswith("nettrim: interrupted"), err
    assert out == ""


# ---- 13: --format export on a model torch.export cannot trace ------------------------------------
def test_unexportable_model_is_refused_before_any_work(env, tmp_path, capsys, monkeypatch):
    (tmp_path / "relarch.py").write_text(RELARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys.modules["nettrim.prune"], "prune", no_pruning)
    model = __import__("relarch").branchy()
    torch.save(model.state_dict(), tmp_path / "b.pt")
    for out, extra in (("p.pt2", []), ("p.pt", ["--format", "export"])):
        argv = prune_args(env["root"], tmp_path / "b.pt", tmp_path / "out" / out, "--arch",
                          "relarch:branchy", *extra)
        assert main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "torch.export" in line and "--format" in line, line
    assert not (tmp_path / "out").exists()
    sys.modules.pop("relarch", None)


# ---- 14: report --plot that cannot be written ----------------------------------------------------
def test_report_plot_that_cannot_be_written_is_refused(env, tmp_path, capsys, monkeypatch):
    root = env["root"]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):  # as root, chmod does not stop writes
        if dir is not None and pathlib.Path(dir) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    for plot in (blocker / "plots", blocker, locked / "plots"):
        argv = ["report", str(root / "sd.pt"), "--arch", "tinyarch:mlp", "--plot", str(plot)]
        assert main(argv) == 2, plot
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith("nettrim: error: --plot "), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked"]
    assert list(locked.iterdir()) == []


# ---- 15: --threads far beyond the machine --------------------------------------------------------
def test_threads_are_bounded_by_the_cpus(env, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count()
    assert main(["report", str(env["root"] / "sd.pt"), "--arch", "tinyarch:mlp", "--threads",
                 "100000"]) == 0
    assert calls and max(calls) <= available, calls
    err = capsys.readouterr().err
    assert "--threads 100000" in err and f"using {available}" in err, err


# ---- 19: a signal once every output is in place -------------------------------------------------
LATE_SIGNAL = '''
import os, signal, sys, time
import nettrim.cli.commands as commands
from nettrim.cli import main

SIG = getattr(signal, sys.argv.pop(1))
WHEN = sys.argv.pop(1)
real_say, real_replace = commands.say, os.replace
OUT = os.path.abspath(sys.argv[sys.argv.index("--out") + 1])


def say(*args, **kwargs):          # the outputs are written; the table is printed next
    if WHEN == "after":
        os.kill(os.getpid(), SIG)
        time.sleep(2)
    return real_say(*args, **kwargs)


def replace(src, dst, *args, **kwargs):   # the first output is being renamed into place
    if WHEN == "during" and os.path.abspath(dst) == OUT:
        os.kill(os.getpid(), SIG)
        time.sleep(0.5)
    return real_replace(src, dst, *args, **kwargs)


commands.say = say
os.replace = replace
sys.exit(main())
'''


@pytest.mark.parametrize("sig, when", [("SIGINT", "after"), ("SIGTERM", "after"),
                                       ("SIGINT", "during")])
def test_signal_once_the_outputs_are_written_completes_the_run(env, tmp_path, sig, when):
    root = env["root"]
    launcher = tmp_path / "launch.py"
    launcher.write_text(LATE_SIGNAL)
    out = tmp_path / "out" / "p.pt"
    proc = subprocess.run([sys.executable, str(launcher), sig, when, "prune", "sd.pt", "--data",
                           "calib.npz", "--out", str(out), "--arch", "tinyarch:mlp",
                           "--sparsity", "0.5", "--plot", str(tmp_path / "out" / "plots"), "-q"],
                          cwd=root, env=cli_env(root), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = stderr_lines(proc.stderr)
    assert len(lines) == 1 and "completed" in lines[0], proc.stderr
    doc = json.loads(report_path_for(out).read_text())
    assert doc["output"]["sha256"] == sha256(out)
    env["factory"].mlp().load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.pt", "p.report.json",
                                                                    "plots"]
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert "sparsity.png" in plots and not [name for name in plots if name.startswith(".")]
