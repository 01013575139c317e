"""Structured Net-Trim (group-l1, whole units removed) against the shipped structured criteria.

Models, trained here (Adam, seeded): LeNet-300-100 on MNIST and a plain CNN on MNIST
(``Conv(1,16,5) ReLU MaxPool2 Conv(16,32,5) ReLU MaxPool2 Flatten Linear(512,128) ReLU
Linear(128,10)``). At each fraction f, structured Net-Trim
(``nettrim.prune(..., sparsity=f, structured=True)``: f of every prunable layer's input units
removed, the layer before shrunk) is compared with :func:`nettrim.baselines.prune_structured`
(L1 norm, APoZ, first-order Taylor, the oracle, information gain, mean activation) removing
exactly the same number of units from the same layers, so the parameter counts match. Reported:
test accuracy without fine-tuning, parameters, MACs per sample and median CPU latency (one
thread) at batch 1 and 256, seconds. ``--no-nettrim`` runs only the criteria, each removing
``round(f * M)`` units of every layer but the last (what their costs are measured with).

    python benchmarks/bench_structured.py [--models lenet cnn] [--fractions 0.5 0.75 0.9]
                                          [--criteria ...] [--no-nettrim]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import nettrim
from nettrim.io.datasets import load_mnist
from nettrim.models import accuracy, lenet_300_100, train_classifier
from nettrim.structured import model_cost

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_and_out, quiet_single_thread, save_results  # noqa: E402


def plain_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 128), nn.ReLU(),
                         nn.Linear(128, 10))


MODELS = {"lenet": (lenet_300_100, 3), "cnn": (plain_cnn, 2)}
CRITERIA = nettrim.baselines.STRUCTURED_CRITERIA


def trained(name: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """MODELS[name] trained on (x, y) with Adam, seed 0, in eval mode."""
    factory, epochs = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    train_classifier(model, x, y, epochs=epochs, seed=0)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--samples", type=int, default=1000, help="calibration images")
    p.add_argument("--max-rows", type=int, default=8000,
                   help="rows kept per layer (conv layers: image patches)")
    p.add_argument("--max-iter", type=int, default=1500, help="group-l1 ADMM cap per solve")
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    p.add_argument("--no-nettrim", action="store_true",
                   help="only the criteria, round(f * M) units of every layer but the last")
    add_data_and_out(p, "bench_structured")
    args = p.parse_args(argv)
    quiet_single_thread()
    x, y = load_mnist(args.data_root, train=True)
    xt, yt = load_mnist(args.data_root, train=False)
    g = torch.Generator().manual_seed(0)
    calib_idx = torch.randperm(x.shape[0], generator=g)[:args.samples]
    calib, calib_y = x[calib_idx], y[calib_idx]
    out = {"settings": dict(vars(args), threads=1,
                            note="no fine-tuning; latency = median of 50 forward passes, "
                                 "torch CPU, one thread; taylor scored with the labels"),
           "rows": []}
    lines = []

    def record(name, f, method, model, seconds, units):
        cost = model_cost(model, xt[:256], repeats=50)
        row = dict(model=name, fraction=f, method=method, accuracy=accuracy(model, xt, yt),
                   parameters=cost["parameters"], macs=cost["macs"],
                   latency_b1_ms=cost["latency_ms"]["batch_1"],
                   latency_b256_ms=cost["latency_ms"]["batch_256"], seconds=seconds,
                   units=units)
        out["rows"].append(row)
        lines.append(f"{f:>6.2f} {method:<10} {row['accuracy']:>8.2%} {row['parameters']:>9} "
                     f"{row['macs']:>9} {row['latency_b1_ms']:>8.3f} {row['latency_b256_ms']:>9.3f}"
                     f" {seconds:>8.1f}  {units}")
        print(lines[-1], flush=True)
        save_results(args.out, out, lines)

    for name in args.models:
        model = trained(name, x, y)
        lines.append(f"{name}: units kept per layer; no fine-tuning")
        lines.append(f"{'frac':>6} {'method':<10} {'test acc':>8} {'params':>9} {'MACs':>9} "
                     f"{'b1 ms':>8} {'b256 ms':>9} {'seconds':>8}  units per pruned layer")
        print(*lines[-2:], sep="\n", flush=True)
        widths = {n: m.weight.shape[0] for n, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Conv2d))}
        record(name, 0.0, "dense", model, 0.0, widths)
        for f in args.fractions:
            if args.no_nettrim:
                removed = {n: int(f * w + 0.5) for n, w in list(widths.items())[:-1]}
                units = {n: w - removed.get(n, 0) for n, w in widths.items()}
            else:
                t0 = time.perf_counter()
                res = nettrim.prune(model, calib, sparsity=f, structured=True,
                                    max_samples=args.max_rows,
                                    solver_options={"max_iter": args.max_iter})
                seconds = time.perf_counter() - t0
                removed = res.options["removed_count"]
                units = {n: m.weight.shape[0] for n, m in res.model.named_modules()
                         if isinstance(m, (nn.Linear, nn.Conv2d))}
                record(name, f, "nettrim", res.model, seconds, units)
            fraction = {n: k / widths[n] for n, k in removed.items()}
            for crit in args.criteria:
                t0 = time.perf_counter()
                base = nettrim.prune_structured(model, [(calib, calib_y)], crit, fraction,
                                                layers=list(fraction))
                units_b = {n: m.weight.shape[0] for n, m in base.model.named_modules()
                           if isinstance(m, (nn.Linear, nn.Conv2d))}
                assert units_b == units, (units_b, units)   # matched unit (parameter) counts
                record(name, f, crit, base.model, time.perf_counter() - t0, units_b)
    save_results(args.out, out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
