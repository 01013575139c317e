"""The layout: imports run one way, downward, following the floor table below; no circles.

Every import of a project module in ``nettrim/`` and ``solvers/`` is read with ``ast`` (at module
level and inside functions, ``if TYPE_CHECKING`` blocks included) and must go to the same floor
or below. A name that two modules need lives below both under a public name: no module imports
another's ``_private`` name. ``import nettrim`` stays free of torch.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("solvers", "nettrim")

#: Module (or package, for everything under it) -> floor. A module may import its own floor and
#: the floors below; the longest matching entry decides.
FLOORS = {
    "solvers": 0,              # the numerical core: the program and its solvers, arrays only
    "nettrim.checks": 1,       # argument checks shared by the entry points
    "nettrim.inputs": 1,       # calibration batches: what a batch feeds to forward
    "nettrim.tables": 1,       # report rows as text tables, CSV, JSON
    "nettrim.resources": 1,    # what a solve costs: peak memory
    "nettrim.io": 1,           # files: checkpoints, .pt2 programs, data files, datasets
    "nettrim.results": 2,      # the shared vocabulary: results, errors, output discrepancy
    "nettrim.model": 3,        # what a model is and how it changes: graph, capture, surgery
    "nettrim.layer": 4,        # one layer's program (arrays in, weights out)
    "nettrim.training": 4,     # masked fine-tuning and the pruning schedules
    "nettrim.budget": 5,       # a global budget split over layers
    "nettrim.allocation": 5,   # the loss-aware split: per-layer ladders and the loss search
    "nettrim.structured": 5,   # group-l1 Net-Trim: whole units removed
    "nettrim.baselines": 5,    # the comparison methods and their driver
    "nettrim.executors": 1,    # where the solves run: in process or Ray tasks (layer/ sends them)
    "nettrim.folded": 5,       # a model layer's program, BatchNorm folded, and its write-back
    "nettrim.prune": 6,        # the model driver: parallel / cascade, write-back
    "nettrim.resume": 5,       # a driver's per-layer run state, to continue an interrupted run
    "nettrim.models": 7,       # the model zoo
    "nettrim.report": 7,       # per-layer reports of a model
    "nettrim.plots": 7,        # PNG plots of a report
    "nettrim.iterative": 7,    # iterative Net-Trim: rounds of nettrim.prune and retraining
    "nettrim.train_prune": 7,  # pruning during training: the whole loop
    "nettrim.cli": 8,          # the command line
    "nettrim": 9,              # the package: its public names, imported lazily by name
}
#: Names a module may import from the package ``nettrim`` itself (defined before any import).
ROOT_NAMES = {"__version__"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def floor_of(module: str) -> int:
    best = max((key for key in FLOORS if module == key or module.startswith(key + ".")),
               key=len, default=None)
    assert best is not None, f"{module} has no floor in FLOORS"
    return FLOORS[best]


def imports_of(module: str) -> list[tuple[str, str, int]]:
    """``(imported project module, the name taken or '', line)`` of every import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in MODULES
                             else (base, alias.name, node.lineno))
    return [(m, name, line) for m, name, line in found if m.split(".")[0] in PACKAGES]


EDGES = {module: imports_of(module) for module in sorted(MODULES)}


def test_every_module_has_a_floor():
    for module in MODULES:
        floor_of(module)


def test_imports_go_to_existing_modules():
    """Project code imports modules where they are (not the moved paths kept for users)."""
    for module, edges in EDGES.items():
        for target, _, line in edges:
            assert target in MODULES, f"{module}:{line} imports {target}, which is not a module"


def test_imports_run_downward():
    for module, edges in EDGES.items():
        for target, name, line in edges:
            if target == "nettrim" and name in ROOT_NAMES:
                continue
            assert floor_of(target) <= floor_of(module), (
                f"{module}:{line} (floor {floor_of(module)}) imports {target} "
                f"(floor {floor_of(target)}): imports must run downward")


def test_solvers_never_import_nettrim():
    for module, edges in EDGES.items():
        if module.split(".")[0] == "solvers":
            assert not [t for t, _, _ in edges if t.split(".")[0] == "nettrim"], module


def test_no_private_names_across_modules():
    """In ``nettrim/`` (``solvers/`` is kept by its own owner and checked by its own issue)."""
    for module, edges in EDGES.items():
        if module.split(".")[0] != "nettrim":
            continue
        for target, name, line in edges:
            if target != module and name.startswith("_") and name not in ROOT_NAMES:
                pytest.fail(f"{module}:{line} imports the private name {name} of {target}; a "
                            "name two modules need lives below both under a public name")


def test_no_import_circles():
    graph = {module: {t for t, _, _ in edges if t != module} for module, edges in EDGES.items()}
    state: dict = {}   # module -> "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_import_nettrim_does_not_import_torch():
    code = "import sys, nettrim; print('torch' in sys.modules, len(nettrim.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out[0] == "False" and int(out[1]) > 0


def test_public_names_and_moved_paths_resolve():
    import nettrim

    for name in nettrim.__all__:
        assert getattr(nettrim, name) is not None, name
    for old, new in nettrim._MOVED.items():
        assert f"nettrim.{new}" in MODULES, new
        assert importlib.import_module(f"nettrim.{old}") is \
            importlib.import_module(f"nettrim.{new}"), old
    assert callable(nettrim.prune) and callable(nettrim.capture) and callable(nettrim.finetune)


def test_modules_stay_readable():
    """About 600 lines at most per module of ``nettrim/`` (one idea each)."""
    for module, path in MODULES.items():
        if module.split(".")[0] == "nettrim":
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= 600, f"{module} has {lines} lines: split it by idea"


def test_every_package_is_installed():
    """setup.cfg's package search (``find:`` with its include patterns) finds every package
    of the tree, so an install carries them all."""
    from setuptools import find_packages

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["packages"].strip() == "find:"
    include = [p.strip() for p in config["options.packages.find"]["include"].split("\n")
               if p.strip()]
    found = set(find_packages(str(ROOT), include=include))
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert found == packages
