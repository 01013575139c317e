"""Every command and snippet of README.md runs as written.

Blocks fenced as ```python test and ```sh test are run, in the order they appear, in one
temporary directory (files written by one block are there for the next): the Python blocks
as one script (a notebook's namespace), each shell block with ``bash -e``, both with
``$NETTRIM_DATA`` pointing at the shared datasets and one torch thread. The two quickstart
commands (indented, not fenced: they install) are checked against ``.ci/run`` and run in
small form: the demo on a few thousand images through its own sample options, the test
command as this very suite. Fenced blocks without ``test`` (installation, output shown) are
not run; the demo output shown must have the columns and lines the demo prints now.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DATA = os.environ.get("NETTRIM_DATA", str(REPO.parent / "shared" / "data"))
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    """The README's fenced blocks whose info string is ``kind`` (e.g. ``python test``)."""
    return [body for info, body in FENCE.findall(README.read_text(encoding="utf-8"))
            if info.strip() == kind]


def environment(tmp_path: pathlib.Path) -> dict:
    env = dict(os.environ, NETTRIM_DATA=DATA, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


needs_data = pytest.mark.skipif(not (pathlib.Path(DATA) / "mnist").is_dir(),
                                reason=f"MNIST not found under {DATA} (set NETTRIM_DATA)")


def test_readme_is_for_users():
    text = README.read_text(encoding="utf-8")
    assert not re.search(r"\bissue[s]? \d+|\bsession \d+|before -> now", text)
    assert blocks("python test") and blocks("sh test")


def test_quickstart_commands_are_what_ci_runs():
    text = README.read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    # what CI installs (its pip line's requirements) and runs, as README gives it
    installs = re.search(r"pip install [^\n]*?(torch==\S+ -e \S+)\n", ci).group(1)
    test_cmd = f"pip install {installs} && python -m pytest -q"
    demo_cmd = "pip install torch==2.13.0 -e . && NETTRIM_DATA=../shared/data nettrim demo"
    assert f"    {test_cmd}\n" in text and f"    {demo_cmd}\n" in text
    assert "\npython -m pytest -q\n" in ci and "torch==2.13.0" in installs


@needs_data
def test_demo_output_shown_is_what_the_demo_prints(tmp_path):
    shown = next(b for b in blocks("text") if "LeNet-300-100 trained" in b)
    proc = subprocess.run(
        [sys.executable, "-m", "nettrim.cli", "demo", "-q", "--epochs", "1", "--train-samples",
         "3000", "--samples", "1000", "--test-samples", "1000"],
        cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    header = next(line for line in printed if line.startswith("layer"))
    assert header.split() == next(ln for ln in shown.splitlines()
                                  if ln.startswith("layer")).split()
    for start in ("total", "test accuracy", "epsilon:", "OPTIMAL_INACCURATE is"):
        assert any(ln.startswith(start) for ln in printed) == \
            any(ln.startswith(start) for ln in shown.splitlines()), start
    assert [ln.split()[1] for ln in printed if ln[:1].isdigit()] == \
        [ln.split()[1] for ln in shown.splitlines() if ln[:1].isdigit()]   # the shapes


@needs_data
def test_python_snippets_run(tmp_path):
    script = "\n\n".join(blocks("python test"))
    (tmp_path / "readme_snippets.py").write_text(script, encoding="utf-8")
    proc = subprocess.run([sys.executable, "readme_snippets.py"], cwd=tmp_path,
                          env=environment(tmp_path), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and (tmp_path / "pruned.safetensors").is_file()


@needs_data
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_shell_snippets_run(tmp_path):
    env = environment(tmp_path)
    for body in blocks("sh test"):
        proc = subprocess.run(["bash", "-e", "-c", body], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (body, proc.stdout[-2000:], proc.stderr[-3000:])
    assert (tmp_path / "lenet_pruned.pt").is_file()
    assert (tmp_path / "lenet_pruned.report.json").is_file()
