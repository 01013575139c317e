"""Global sparsity budgets: Net-Trim's allocations against the baselines' global rules.

Two MLPs, trained here (Adam, seeded): LeNet-300-100 on MNIST and a narrow 784-64-32-10 MLP on
Fashion-MNIST. Each is pruned to 90 / 95 / 98% of all its weights together
(``scope="global"``) by

* ``nettrim`` : ``nettrim.prune(..., sparsity=s, scope="global", targets=labels)``, the default
  ``allocation="loss"`` (the per-layer counts of least calibration cross-entropy over ladders
  of per-layer solutions), parallel mode;
* ``nettrim-cascade`` : the same with ``mode="cascade"`` (each layer refit on its support from
  the pruned layers' outputs);
* ``nettrim-epsilon`` : ``allocation="epsilon"``, one relative epsilon for all layers searched to
  the global count (the default before the loss allocation);
* ``nettrim-marginal`` : the same search, then the split equalizing the marginal error per
  weight removed over the solutions computed (``allocation="marginal"``);
* ``nettrim-magsplit`` : the per-layer counts of global magnitude, each reached by Net-Trim's
  per-layer pipeline (``allocation="magnitude"``);
* ``magnitude`` / ``wanda`` / ``sparsegpt`` : :func:`nettrim.baselines.prune_baseline` with
  ``scope="global"`` (one ranking of |W|, |W| ||X_j||, the OBS saliency; SparseGPT then updates
  the kept weights, layer after layer on the pruned inputs);
* ``magnitude-uniform`` : the same sparsity in every layer (what ``scope="layer"`` means), for
  context;
* ``nettrim-layer`` / ``nettrim-layer-cascade`` : Net-Trim per layer at the same sparsity
  (``scope="layer"``), parallel / cascade: the time reference of the two global runs above
  (the ratios are printed, measured in the same run).

All with the default layer-collapse guard (4 kept weights per output unit). Reported: test
accuracy without fine-tuning, the global sparsity reached, per-layer allocation, seconds (and
for the loss allocation its database and search seconds). Single-threaded torch; the settings
(calibration size, solver options) are in the output.

    python benchmarks/bench_global.py [--models lenet narrow] [--samples 1000]
                                      [--max-iter N] [--out benchmarks/results/bench_global]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import nettrim
from nettrim.io.datasets import load_mnist
from nettrim.models import accuracy, mlp, train_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_and_out, log, quiet_single_thread, save_results  # noqa: E402

MODELS = {   # max_iter: the ADMM cap per solve (the narrow MLP's epsilon searches need more)
    "lenet": dict(dataset="mnist", sizes=[784, 300, 100, 10], epochs=3, max_iter=1500),
    "narrow": dict(dataset="fashion-mnist", sizes=[784, 64, 32, 10], epochs=5, max_iter=5000),
}
SPARSITIES = (0.9, 0.95, 0.98)
METHODS = ("nettrim", "nettrim-cascade", "nettrim-epsilon", "nettrim-marginal",
           "nettrim-magsplit", "magnitude", "wanda", "sparsegpt", "magnitude-uniform",
           "nettrim-layer", "nettrim-layer-cascade")
#: time ratios printed: global run / per-layer run of the same mode, same sparsity, same run
RATIOS = {"nettrim": "nettrim-layer", "nettrim-cascade": "nettrim-layer-cascade"}


def trained(name: str, root: str, seed: int = 0):
    spec = MODELS[name]
    x, y = load_mnist(root, train=True, dataset=spec["dataset"])
    xt, yt = load_mnist(root, train=False, dataset=spec["dataset"])
    torch.manual_seed(seed)
    model = mlp(spec["sizes"])
    train_classifier(model, x, y, epochs=spec["epochs"], seed=seed)
    return model.eval(), x, y, xt, yt


def run_method(method, model, calib, labels, s, args, max_iter):
    nt = dict(reweight=args.reweight, refit=True, solver_options={"max_iter": max_iter})
    if method in ("nettrim", "nettrim-cascade"):
        return nettrim.prune(model, calib, sparsity=s, scope="global", targets=labels,
                             mode="cascade" if method == "nettrim-cascade" else "parallel", **nt)
    if method in ("nettrim-epsilon", "nettrim-marginal", "nettrim-magsplit"):
        allocation = {"nettrim-epsilon": "epsilon", "nettrim-marginal": "marginal",
                      "nettrim-magsplit": "magnitude"}[method]
        return nettrim.prune(model, calib, sparsity=s, scope="global", allocation=allocation,
                             **nt)
    if method in ("nettrim-layer", "nettrim-layer-cascade"):
        return nettrim.prune(model, calib, sparsity=s, **nt,
                             mode="cascade" if method == "nettrim-layer-cascade" else "parallel")
    if method == "magnitude-uniform":
        return nettrim.prune_baseline(model, calib, "magnitude", s)
    return nettrim.prune_baseline(model, calib, method, s, scope="global")


def table(rows, name, methods, sparsities):
    """The summary of one model: a row per target, a column per method."""
    cell = {(r["sparsity"], r["method"]): r for r in rows if r["model"] == name}
    width = 26
    lines = [f"{'target':>7} " + " ".join(f"{m:>{width}}" for m in methods)]
    for s in sparsities:
        parts = []
        for m in methods:
            r = cell.get((s, m))
            if r is None:
                parts.append(f"{'not run':>{width}}")
            elif "error" in r:
                parts.append(f"{'failed: ' + r['error'][:17]:>{width}}")
            else:
                parts.append(f"{r['accuracy']:>8.2%} ({r['reached']:.2%};{r['seconds']:>6.1f}s)"
                             .rjust(width))
        lines.append(f"{s:>7.0%} " + " ".join(parts))
    for s in sparsities:
        for glob, ref in RATIOS.items():
            a, b = cell.get((s, glob)), cell.get((s, ref))
            if a and b and "seconds" in a and "seconds" in b:
                extra = a.get("loss_seconds")
                lines.append(f"{s:>7.0%} {glob}: {a['seconds']:.1f} s = {a['seconds'] / b['seconds']:.2f}x "
                             f"the {ref} run ({b['seconds']:.1f} s)" + (
                                 f"; database {extra[0]:.1f} s, search {extra[1]:.1f} s, "
                                 f"final {extra[2]:.1f} s" if extra else ""))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--samples", type=int, default=1000, help="calibration images")
    p.add_argument("--max-iter", type=int, default=None,
                   help="ADMM cap per solve (default: per model, 1500 / 5000)")
    p.add_argument("--reweight", type=int, default=0, help="Net-Trim reweighting rounds")
    p.add_argument("--combine", nargs="+", metavar="PREFIX", default=None,
                   help="no run: the tables of earlier runs' PREFIX.json files together (each "
                        "model's rows, time ratios included, from one run)")
    add_data_and_out(p, "bench_global")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args)
    quiet_single_thread()
    out = {"settings": dict(vars(args), threads=1, min_per_unit=4,
                            note="test accuracy without fine-tuning; calibration = a seeded "
                                 "random subset of the training images (their labels feed "
                                 "the loss allocation)"),
           "rows": []}
    header = _header(args)
    summary: list = []
    kept_lines: list = []

    def write():
        save_results(args.out, out, header + summary + [""] + kept_lines)

    for name in args.models:
        model, x, y, xt, yt = trained(name, args.data_root)
        max_iter = args.max_iter or MODELS[name]["max_iter"]
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(x.shape[0], generator=g)[:args.samples]
        calib, labels = x[pick], y[pick]
        dense = accuracy(model, xt, yt)
        out["rows"].append(dict(model=name, method="dense", sparsity=0.0, accuracy=dense))
        kept_lines.append(f"{name}: kept weights per layer")
        for s in args.sparsities:
            for method in args.methods:
                t0 = time.perf_counter()
                try:
                    result = run_method(method, model, calib, labels, s, args, max_iter)
                except nettrim.PruningError as err:   # recorded, not hidden
                    out["rows"].append(dict(model=name, method=method, sparsity=s,
                                            error=str(err)))
                    log(f"{name} {s:.0%} {method}: failed: {err}")
                    continue
                seconds = time.perf_counter() - t0
                kept = {r.name: r.nonzeros_after for r in result.report}
                total = sum(r.total for r in result.report)
                reached = 1 - sum(kept.values()) / total
                acc = accuracy(result.model, xt, yt)
                opts = result.options
                row = dict(model=name, method=method, sparsity=s, reached=reached, accuracy=acc,
                           seconds=seconds, kept=kept, epsilon=opts.get("epsilon_common"),
                           floored=opts.get("floored"))
                if "seconds_database" in opts:
                    row["loss_seconds"] = [opts["seconds_database"], opts["seconds_search"],
                                           opts["seconds_final"]]
                    row["loss"] = {k: v for k, v in opts["loss"].items()
                                   if k not in ("proxy", "slack_filled")}
                out["rows"].append(row)
                kept_lines.append(f"  {s:>4.0%} {method:<22} {list(kept.values())}"
                                  + (f" floored {row['floored']}" if row["floored"] else ""))
                log(f"{name} {s:.0%} {method}: {acc:.2%} ({reached:.2%}; {seconds:.1f} s) "
                    f"{list(kept.values())}")
                summary[:] = _summaries(out["rows"], args)
                write()
    summary[:] = _summaries(out["rows"], args)
    write()
    print("\n".join(header + summary + [""] + kept_lines))
    return 0


def _header(args):
    return ["Global sparsity budgets: test accuracy without fine-tuning (reached global "
            "sparsity; seconds)",
            f"Net-Trim: reweight={args.reweight}, refit=True, {args.samples} calibration "
            "images, one thread; ADMM cap " + (str(args.max_iter) if args.max_iter else
                                               ", ".join(f"{m['max_iter']} ({n})"
                                                         for n, m in MODELS.items())),
            "default layer-collapse guard: 4 kept weights per output unit", ""]


def _kept_lines(rows, models):
    lines = []
    for name in models:
        lines.append(f"{name}: kept weights per layer")
        lines += [f"  {r['sparsity']:>4.0%} {r['method']:<22} {list(r['kept'].values())}"
                  + (f" floored {r['floored']}" if r.get("floored") else "")
                  for r in rows if r["model"] == name and "kept" in r]
    return lines


def combine(args) -> int:
    """The tables of several runs' JSON files (``--combine PREFIX ...``) in one pair of files."""
    import json

    runs = [json.loads(Path(prefix + ".json").read_text()) for prefix in args.combine]
    settings = runs[0]["settings"]
    for key in ("samples", "max_iter", "reweight"):
        if any(r["settings"][key] != settings[key] for r in runs):
            msg = f"--combine: the runs differ in {key}; combine runs of the same settings"
            raise SystemExit(msg)
    rows = [row for r in runs for row in r["rows"]]
    models = [m for m in MODELS if any(row["model"] == m for row in rows)]
    sparsities = sorted({row["sparsity"] for row in rows if row["method"] != "dense"})
    methods = [m for m in METHODS if any(row["method"] == m for row in rows)]
    for key, value in (("samples", settings["samples"]), ("max_iter", settings["max_iter"]),
                       ("reweight", settings["reweight"])):
        setattr(args, key, value)
    args.models, args.methods, args.sparsities = models, methods, sparsities
    out = {"settings": dict(settings, models=models, sparsities=sparsities, methods=methods,
                            combined_from=[dict(r["settings"]) for r in runs]),
           "rows": rows}
    lines = _header(args) + _summaries(rows, args) + [""] + _kept_lines(rows, models)
    save_results(args.out, out, lines)
    print("\n".join(lines))
    return 0


def _summaries(rows, args):
    lines = []
    for name in args.models:
        dense = [r["accuracy"] for r in rows if r["model"] == name and r["method"] == "dense"]
        if not dense:
            continue
        lines.append(f"{name} ({MODELS[name]['dataset']}, {MODELS[name]['sizes']}): dense test "
                     f"accuracy {dense[0]:.2%}")
        lines += table(rows, name, args.methods, args.sparsities)
        lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
