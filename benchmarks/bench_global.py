"""Global sparsity budgets: Net-Trim's own allocation against the baselines' global rules.

Two MLPs, trained here (Adam, seeded): LeNet-300-100 on MNIST and a narrow 784-64-32-10 MLP on
Fashion-MNIST. Each is pruned to 90 / 95 / 98% of all its weights together
(``scope="global"``) by

* ``nettrim`` : ``nettrim.prune(..., sparsity=s, scope="global")``: one relative epsilon for
  all layers, searched to the global count (parallel mode);
* ``nettrim-marginal`` : the same search, then the split equalizing the marginal error per
  weight removed over the solutions computed (``allocation="marginal"``);
* ``nettrim-magsplit`` : the per-layer counts of global magnitude, each reached by Net-Trim's
  per-layer sparsity search (``allocation="magnitude"``): the cheaper split, measured to choose;
* ``magnitude`` / ``wanda`` / ``sparsegpt`` : :func:`nettrim.baselines.prune_baseline` with
  ``scope="global"`` (one ranking of |W|, |W| ||X_j||, the OBS saliency; SparseGPT then updates
  the kept weights, layer after layer on the pruned inputs);
* ``magnitude-uniform`` : the same sparsity in every layer (what ``scope="layer"`` means), for
  context.

All with the default layer-collapse guard (4 kept weights per output unit). Reported: test
accuracy without fine-tuning, the global sparsity reached, per-layer allocation, seconds.
Single-threaded torch; the settings (calibration size, solver options) are in the output.

    python benchmarks/bench_global.py [--models lenet narrow] [--samples 1000]
                                      [--max-iter 1500] [--out benchmarks/results/bench_global]
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
from common import add_data_and_out, quiet_single_thread, save_results  # noqa: E402

MODELS = {
    "lenet": dict(dataset="mnist", sizes=[784, 300, 100, 10], epochs=3),
    "narrow": dict(dataset="fashion-mnist", sizes=[784, 64, 32, 10], epochs=5),
}
SPARSITIES = (0.9, 0.95, 0.98)
METHODS = ("nettrim", "nettrim-marginal", "nettrim-magsplit", "magnitude", "wanda", "sparsegpt", "magnitude-uniform")


def trained(name: str, root: str, seed: int = 0):
    spec = MODELS[name]
    x, y = load_mnist(root, train=True, dataset=spec["dataset"])
    xt, yt = load_mnist(root, train=False, dataset=spec["dataset"])
    torch.manual_seed(seed)
    model = mlp(spec["sizes"])
    train_classifier(model, x, y, epochs=spec["epochs"], seed=seed)
    return model.eval(), x, xt, yt


def run_method(method, model, calib, s, args):
    nt = dict(reweight=args.reweight, refit=True, solver_options={"max_iter": args.max_iter})
    if method == "nettrim":
        return nettrim.prune(model, calib, sparsity=s, scope="global", **nt)
    if method == "nettrim-marginal":
        return nettrim.prune(model, calib, sparsity=s, scope="global", allocation="marginal",
                             **nt)
    if method == "nettrim-magsplit":
        return nettrim.prune(model, calib, sparsity=s, scope="global", allocation="magnitude",
                             **nt)
    if method == "magnitude-uniform":
        return nettrim.prune_baseline(model, calib, "magnitude", s)
    return nettrim.prune_baseline(model, calib, method, s, scope="global")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--samples", type=int, default=1000, help="calibration images")
    p.add_argument("--max-iter", type=int, default=1500, help="ADMM cap per solve")
    p.add_argument("--reweight", type=int, default=0, help="Net-Trim reweighting rounds")
    add_data_and_out(p, "bench_global")
    args = p.parse_args(argv)
    quiet_single_thread()
    out = {"settings": dict(vars(args), threads=1, min_per_unit=4,
                            note="test accuracy without fine-tuning; calibration = a seeded "
                                 "random subset of the training images"),
           "rows": []}
    lines = []

    for name in args.models:
        model, x, xt, yt = trained(name, args.data_root)
        g = torch.Generator().manual_seed(0)
        calib = x[torch.randperm(x.shape[0], generator=g)[:args.samples]]
        dense = accuracy(model, xt, yt)
        out["rows"].append(dict(model=name, method="dense", sparsity=0.0, accuracy=dense))
        lines.append(f"{name} ({MODELS[name]['dataset']}, {MODELS[name]['sizes']}): dense test "
                     f"accuracy {dense:.2%}")
        lines.append(f"{'target':>7} {'method':<18} {'reached':>8} {'test acc':>9} {'seconds':>8}"
                     "  allocation (kept per layer)")
        print(lines[-2], lines[-1], sep="\n", flush=True)
        for s in args.sparsities:
            for method in args.methods:
                t0 = time.perf_counter()
                try:
                    result = run_method(method, model, calib, s, args)
                except nettrim.PruningError as err:   # recorded, not hidden
                    out["rows"].append(dict(model=name, method=method, sparsity=s,
                                            error=str(err)))
                    lines.append(f"{s:>7.0%} {method:<18} failed: {err}")
                    print(lines[-1], flush=True)
                    continue
                seconds = time.perf_counter() - t0
                kept = {r.name: r.nonzeros_after for r in result.report}
                total = sum(r.total for r in result.report)
                reached = 1 - sum(kept.values()) / total
                acc = accuracy(result.model, xt, yt)
                row = dict(model=name, method=method, sparsity=s, reached=reached, accuracy=acc,
                           seconds=seconds, kept=kept,
                           epsilon=result.options.get("epsilon_common"),
                           floored=result.options.get("floored"))
                out["rows"].append(row)
                lines.append(f"{s:>7.0%} {method:<18} {reached:>8.2%} {acc:>9.2%} {seconds:>8.1f}"
                             f"  {list(kept.values())}")
                print(lines[-1], flush=True)
                save_results(args.out, out, lines)
    save_results(args.out, out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
