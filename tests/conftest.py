"""Shared test settings.

Tests use tiny problems, where torch's intra-op threads only add synchronisation cost (and, on a
loaded 2-core machine, stall badly), so they run single-threaded.
"""

import importlib.util
import os
import pathlib

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("NETTRIM_DATA", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data"))


@pytest.fixture(scope="session")
def benchmark_module():
    """``load(name)``: the script ``benchmarks/<name>.py`` as a module (benchmarks/ is not a
    package)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
