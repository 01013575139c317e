"""Write the tutorial notebooks (without outputs) from the cell sources below.

Run ``python notebooks/make_notebooks.py`` after editing a cell; the ``.ipynb`` files are
generated, never edited by hand. Every notebook reads ``NETTRIM_QUICK=1`` in its first cell to
switch to small settings (the test suite executes them that way with nbclient) and
``NETTRIM_DATA`` for the datasets. The notebooks call ``nettrim`` and ``paper_repro``; they
never copy their code.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

#: First code cell of every notebook: quick switch, repository root on sys.path, data root.
SETUP = '''\
import os, pathlib, sys

QUICK = os.environ.get("NETTRIM_QUICK") == "1"   # small settings (used by the test suite)
DATA = os.environ.get("NETTRIM_DATA")             # None: nettrim's default data directory
ROOT = pathlib.Path.cwd().resolve()
while not (ROOT / "paper_repro").is_dir() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT))                     # paper_repro lives in the repository
print("quick mode:", QUICK, "| repository:", ROOT)'''

MODEL = '''\
import torch
from nettrim.io.datasets import load_mnist
from nettrim.models import accuracy, lenet_300_100, pretrained, train_classifier

x_train, y_train = load_mnist(DATA, train=True)
x_test, y_test = load_mnist(DATA, train=False)
if QUICK:   # a briefly trained LeNet-300-100 (seconds)
    torch.manual_seed(0)
    model = train_classifier(lenet_300_100(), x_train[:2000], y_train[:2000], epochs=1).eval()
    x_test, y_test = x_test[:1000], y_test[:1000]
else:       # the reference LeNet-300-100 (trained once, then cached)
    model = pretrained("lenet_300_100", data_root=DATA)
print(f"test accuracy {accuracy(model, x_test, y_test):.4f}")'''

QUICKSTART = [
    new_markdown_cell(
        "# Net-Trim quickstart\n\n"
        "Prune a trained LeNet-300-100 with Net-Trim in five lines: every layer is replaced by "
        "the sparsest (least l1) weights whose outputs on calibration data stay within a "
        "relative tolerance `epsilon` of the original ones (Aghasi et al., NIPS 2017)."),
    new_code_cell(SETUP),
    new_markdown_cell("A trained model and the MNIST data:"),
    new_code_cell(MODEL),
    new_markdown_cell(
        "## The five lines\n\n"
        "`mode=\"cascade\"` prunes layer by layer, each layer seeing the already-pruned "
        "network's inputs; `epsilon` is relative to each layer's output norm. (Quick mode adds "
        "an iteration cap so the test suite runs fast; the full version needs no options.)"),
    new_code_cell('''\
import nettrim

calibration = x_train[:200] if QUICK else x_train[:2000]
options = {"max_iter": 100} if QUICK else None   # quick: cap ADMM (a warning says so)
result = nettrim.prune(model, calibration, epsilon=0.05, mode="cascade", solver_options=options)
print(result.table())
print(f"test accuracy {accuracy(model, x_test, y_test):.4f} -> {accuracy(result.model, x_test, y_test):.4f}")'''),
    new_markdown_cell(
        "`result.model` is a pruned copy (the original is untouched) with plain weights holding "
        "exact zeros; `result.report` has one `LayerReport` per layer."),
    new_code_cell('''\
assert nettrim.count_nonzeros(result.model) < nettrim.count_nonzeros(model)
[(r.name, r.nonzeros_before, r.nonzeros_after, round(r.relative_error, 4)) for r in result.report]'''),
]

LAYER_API = [
    new_markdown_cell(
        "# One layer: captured activations, cvxpy vs ADMM\n\n"
        "`nettrim.capture` records each layer's input `X` (P x N) and output `Y` (P x M) with "
        "forward hooks. `nettrim.prune_layer(X, Y, epsilon=...)` solves that layer's convex "
        "program:\n\n"
        "minimize sum|W| subject to ||(X W^T + b - Y) on the active set||_F <= epsilon ||Y||_F "
        "and X W^T + b <= 0 where Y = 0.\n\n"
        "`solver=\"cvxpy\"` solves it with a generic conic solver (Clarabel): the reference; "
        "`solver=\"admm\"` is the fast ADMM of the SIAM paper. Two solvers are compared by "
        "objective value and feasibility (the l1 solution need not be unique)."),
    new_code_cell(SETUP),
    new_code_cell(MODEL),
    new_markdown_cell(
        "Capture the hidden layer 300 -> 100 (module `\"3\"`) on calibration images:"),
    new_code_cell('''\
import nettrim

captured = nettrim.capture(model, x_train[:200] if QUICK else x_train[:1000], layers=["3"])
layer = captured["3"]
print(layer.kind, layer.activation, "X", tuple(layer.X.shape), "Y", tuple(layer.post.shape))'''),
    new_markdown_cell(
        "cvxpy on all 100 neurons would be slow; take the first 10 output neurons (the program is "
        "separable across neurons, so this is the same problem restricted to them)."),
    new_code_cell('''\
import time

X = layer.X.double()
Y = layer.post[:, :10].double()
rows = {}
for solver in ("cvxpy", "admm"):
    t0 = time.perf_counter()
    # the plain program (no reweighting, no refit), so both solvers solve the same problem
    res = nettrim.prune_layer(X, Y, epsilon=0.05, bias=True, solver=solver, refit=False, reweight=0)
    rows[solver] = res.report
    print(f"{solver:>6}: objective {res.report['objective']:.4f}  nonzeros {res.report['nonzeros']}"
          f"/{res.report['total']}  relative error {res.report['relative_error']:.4f}  "
          f"status {res.report['status']}  {time.perf_counter() - t0:.2f} s")'''),
    new_markdown_cell(
        "Both meet the tolerance (relative error <= 0.05, up to the solvers' accuracy) and reach "
        "nearly the same l1 objective:"),
    new_code_cell('''\
gap = abs(rows["admm"]["objective"] - rows["cvxpy"]["objective"]) / rows["cvxpy"]["objective"]
print(f"relative objective gap {gap:.2e}")
assert rows["admm"]["relative_error"] <= 0.05 * 1.01 and rows["cvxpy"]["relative_error"] <= 0.05 * 1.01
assert gap < 0.05'''),
    new_markdown_cell(
        "The solver layer underneath works on plain arrays: `solvers.NetTrimProblem(X, Y, "
        "epsilon_absolute)` with `solvers.solve_admm` / `solvers.solve_cvxpy` (see "
        "`paper_repro/sample_complexity.py` for a use without any model)."),
]

CLI = [
    new_markdown_cell(
        "# The command line on a checkpoint\n\n"
        "`nettrim prune` reads a checkpoint and calibration data and writes the pruned model; "
        "`nettrim report` lists per-layer nonzeros; `nettrim evaluate` compares the pruned "
        "model with the original on test data. In a shell: `nettrim prune model.pt --arch "
        "nettrim.models:lenet_300_100 --data calib.npz --out pruned.pt --epsilon 0.05`. Here "
        "each command goes through `nettrim.cli.main(argv)`, the function behind the console "
        "script, so the notebook does not pay a fresh interpreter start per command; the "
        "`nettrim_cli` helper prints the shell line it stands for."),
    new_code_cell(SETUP),
    new_code_cell(MODEL),
    new_markdown_cell("Save the model's `state_dict` and a calibration set (`.npz` with array `x`):"),
    new_code_cell('''\
import tempfile
import numpy as np
from nettrim.cli import main as cli_main

work = pathlib.Path(tempfile.mkdtemp(prefix="nettrim-cli-"))
torch.save(model.state_dict(), work / "model.pt")
np.savez(work / "calib.npz", x=x_train[:200 if QUICK else 2000].numpy())
np.savez(work / "test.npz", x=x_test.numpy(), y=y_test.numpy())
ARCH = "nettrim.models:lenet_300_100"

def nettrim_cli(*args):
    """Run `nettrim ARGS` in the working directory; fail loudly on a nonzero exit status."""
    argv = [str(a) for a in args]
    print("$ nettrim", " ".join(argv))
    previous = os.getcwd()
    os.chdir(work)
    try:
        status = cli_main(argv)
    finally:
        os.chdir(previous)
    assert status == 0, status
print(sorted(p.name for p in work.iterdir()))'''),
    new_code_cell('''\
# quick mode: cap the ADMM iterations and accept a capped layer (--lenient) instead of failing
limits = ["--max-iter", 100, "--lenient"] if QUICK else []
nettrim_cli("prune", "model.pt", "--arch", ARCH, "--data", "calib.npz", "--out", "pruned.pt",
            "--epsilon", 0.05, "--mode", "cascade", "--report", "report.json", "--quiet", *limits)'''),
    new_code_cell('nettrim_cli("report", "pruned.pt", "--arch", ARCH)'),
    new_code_cell('nettrim_cli("evaluate", "model.pt", "pruned.pt", "--arch", ARCH, "--data", "test.npz")'),
    new_markdown_cell("The JSON report written by `--report`:"),
    new_code_cell('''\
import json
report = json.loads((work / "report.json").read_text())
print(json.dumps(report, indent=1)[:1500])'''),
]

TOUR = [
    new_markdown_cell(
        "# Tour of the paper reproductions\n\n"
        "`paper_repro/` has one script per experiment of the Net-Trim papers; each writes "
        "`paper_repro/results/<name>.json` and PNG figures (see `paper_repro/README.md`). This "
        "notebook loads the committed results of the full runs and plots them; in quick mode it "
        "also re-runs one script's `--quick` version into a temporary directory."),
    new_code_cell(SETUP),
    new_code_cell('''\
import json
import matplotlib.pyplot as plt
from paper_repro import EXPERIMENTS
from paper_repro.common import RESULTS_DIR

results = {}
for name in EXPERIMENTS:
    path = RESULTS_DIR / f"{name}.json"
    if path.is_file():
        results[name] = json.loads(path.read_text())
    print(f"{name:>20}: {'loaded' if name in results else 'missing'}")'''),
    new_markdown_cell("## Nested spirals (Fig. S.1, Tables S.1/S.2)"),
    new_code_cell('''\
if "spirals" in results:
    r = results["spirals"]; m = r["main"]
    p = r["paper_values"]["table_s1"]
    print("paper:", p["nonzeros_before"], "->", p["nonzeros_after"], f"discrepancy {p['discrepancy']}")
    print("ours, paper's epsilon:", m["nonzeros_before"], "->", m["nonzeros_after"], f"discrepancy {m['discrepancy']:.3f}")
    for method, row in r.get("at_paper_counts", {}).items():
        if "error" in row:
            print(f"ours, paper's counts ({method}): {row['error']}")
        else:
            print(f"ours, paper's counts ({method}):", row["nonzeros_after"], f"discrepancy {row['discrepancy']:.3f}")
    if "at_paper_discrepancy" in r:
        row = r["at_paper_discrepancy"]
        print(f"ours, paper's discrepancy (eps_1 = {row['epsilon']:.2g}):", row["nonzeros_after"],
              f"discrepancy {row['discrepancy']:.3f}")
    for row in r["widths_table"]:
        print(f"2-{row['width']}-{row['width']}-2: {row['nonzeros_after']} discrepancy {row['discrepancy']:.4f}")'''),
    new_markdown_cell("## Cascade vs parallel (Fig. S.2)"),
    new_code_cell('''\
if "cascade_vs_parallel" in results:
    r = results["cascade_vs_parallel"]
    fig, axes = plt.subplots(1, len(r["widths"]), figsize=(4 * len(r["widths"]), 3.2), squeeze=False)
    for ax, entry in zip(axes[0], r["widths"]):
        for mode in ("parallel", "cascade"):
            c = entry["curves"][mode]
            ax.plot(c["discrepancy"], [100 * s for s in c["sparsity"]], "o-", label=mode)
        ax.set_title(f"h = {entry['width']}"); ax.set_xlabel("discrepancy"); ax.set_ylabel("removed (%)")
        ax.legend()
    plt.show()'''),
    new_markdown_cell(
        "## MNIST FC 784-300-1000-100-10 at the authors' protocol\n\n"
        "Accuracy against compression for the papers' plain l1 program, our default pipeline "
        "(reweighted l1 + refit), magnitude pruning and SparseGPT, all at the plain program's "
        "per-layer counts; \"little loss\" = at most 1 point below the unpruned network. "
        "Stars: after the authors' fine-tuning (plain SGD, 15,000 steps of batch 100)."),
    new_code_cell('''\
if "methods" in results.get("mnist_fc", {}):   # the authors'-protocol run (issue 15)
    r = results["mnist_fc"]
    labels = {"plain": "nettrim", "default": "default", "magnitude": "magnitude", "sparsegpt": "sparsegpt"}
    sweep = sorted(r["sweep"], key=lambda row: row["compression"])
    x = [row["compression"] for row in sweep]
    for method in r["methods"]:
        line, = plt.plot(x, [100 * row[labels[method] + "_accuracy"] for row in sweep], "o-", label=method)
        for e in r["finetuned"]:
            if e["method"] == method:
                plt.plot([e["compression"]], [100 * e["accuracy"][-1]], "*", ms=11, color=line.get_color())
    plt.axhline(100 * r["accuracy_before"] - 100 * r["config"]["little_loss"], color="gray", ls=":")
    plt.xscale("log"); plt.xlabel("compression"); plt.ylabel("test accuracy (%)"); plt.legend()
    plt.title(f"{r['calibration_rows']} calibration rows"); plt.show()
    print(f"unpruned {100 * r['accuracy_before']:.2f}%")
    for method, v in r["little_loss"].items():
        print(f"{method:>10}: largest compression within 1 point: {v['compression']}, "
              f"holds at >= 10x: {v['holds_at_10x']}")
    for e in r["finetuned"]:
        print(f"fine-tuned {e['method']} at {e['compression']:.1f}x:",
              ", ".join(f"{s} steps {100 * a:.2f}%" for s, a in zip(e["steps"], e["accuracy"])))'''),
    new_code_cell('''\
if "fashion_fc" in results:   # Fashion-MNIST stands in for CIFAR-10 (mnist_fc's protocol, see README)
    r = results["fashion_fc"]
    names = {"plain": "nettrim"}
    print(f"fashion_fc: unpruned {100 * r['accuracy_before']:.2f}%")
    for row in r["sweep"]:
        accs = "  ".join(f"{m} {100 * row[names.get(m, m) + '_accuracy']:.2f}%"
                         for m in r.get("methods", ["plain", "magnitude"])
                         if row.get(names.get(m, m) + "_accuracy") is not None)
        print(f"  eps {row['epsilon']}: removed {100 * row['sparsity']:.1f}% ({row['compression']:.1f}x)  {accs}")
    for e in r.get("finetuned", []):
        print(f"  fine-tuned {e['method']} at {e['compression']:.1f}x:",
              ", ".join(f"{s} steps {100 * a:.2f}%" for s, a in zip(e["steps"], e["accuracy"])))'''),
    new_markdown_cell("## LeNet-style CNN"),
    new_code_cell('''\
if "mnist_cnn" in results:
    r = results["mnist_cnn"]
    for key in ("fc_only", "all_layers", "paper_count", "paper_count_magnitude"):
        if key not in r:
            continue
        e = r[key]
        print(f"{key}: {e['nonzeros_before']} -> {e['nonzeros_after']}, accuracy "
              f"{100 * r['accuracy_before']:.2f}% -> {100 * e['accuracy']:.2f}% -> FT {100 * e['accuracy_finetuned']:.2f}%")
        if "epsilon_search" in e:   # the paper's count: each FC layer's epsilon searched
            print("   (epsilon, nonzeros) tried:", e["epsilon_search"])
    print("paper (FC only):", r["paper_values"])'''),
    new_markdown_cell("## Sample complexity (NIPS Theorem 3): the phase transition"),
    new_code_cell('''\
from paper_repro import sample_complexity

if QUICK:   # regenerate the quick version into a temporary directory
    import tempfile
    out = pathlib.Path(tempfile.mkdtemp(prefix="nettrim-tour-"))
    sample_complexity.main(["--quick", "--out-dir", str(out)])
    results["sample_complexity"] = json.loads((out / "sample_complexity.json").read_text())
r = results.get("sample_complexity")
if r is not None:
    import numpy as np
    rate = np.array(r["recovery_rate"])
    plt.imshow(rate.T, origin="lower", aspect="auto", cmap="gray", vmin=0, vmax=1)
    plt.xticks(range(len(r["sparsities"])), r["sparsities"]); plt.yticks(range(len(r["samples"])), r["samples"])
    plt.xlabel("s"); plt.ylabel("P"); plt.title(f"recovery rate; fitted c = {r['fitted_c']:.2f}")
    plt.colorbar(); plt.show()'''),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_layer_api_cvxpy_vs_admm.ipynb": LAYER_API,
    "03_cli_on_a_checkpoint.ipynb": CLI,
    "04_results_tour.ipynb": TOUR,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (a key of :data:`NOTEBOOKS`), without outputs."""
    nb = new_notebook(cells=NOTEBOOKS[name])
    for index, cell in enumerate(nb.cells):   # stable ids: a rerun rewrites the same files
        cell.id = hashlib.sha256(f"{name}:{index}".encode()).hexdigest()[:8]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write_all(directory: pathlib.Path = HERE) -> list[pathlib.Path]:
    """Write every notebook into ``directory`` atomically; returns the paths."""
    paths = []
    for name in NOTEBOOKS:
        nb = build(name)
        nbformat.validate(nb)
        path = directory / name
        handle, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            nbformat.write(nb, out)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_all():
        print("wrote", written)
