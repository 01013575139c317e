"""The tutorial notebooks: committed without outputs, identical to what the generator writes,
and they execute end to end (nbclient) on the quick settings (NETTRIM_QUICK=1)."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
DATA = os.environ.get("NETTRIM_DATA", "/work/shared/data")


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks",
                                                  NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
NAMES = sorted(GENERATOR.NOTEBOOKS)


def test_every_notebook_is_committed():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_generator_and_has_no_outputs(name):
    committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(committed)
    generated = GENERATOR.build(name)
    assert [(c.id, c.source) for c in committed.cells] == \
        [(c.id, c.source) for c in generated.cells], (
            f"{name} is stale: run python notebooks/make_notebooks.py")
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow   # ~20-50 s per notebook on 2 shared cores (kernel start, MNIST, pruning)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_in_quick_mode(name, monkeypatch, tmp_path):
    monkeypatch.setenv("NETTRIM_QUICK", "1")
    monkeypatch.setenv("NETTRIM_DATA", DATA)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()   # raises CellExecutionError (with the traceback) if a cell fails
    first = "".join(out.get("text", "") for out in nb.cells[1].outputs)
    assert "quick mode: True" in first
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
