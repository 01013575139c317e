"""Pruning during training on MNIST: the table of Han et al. 2015 and Guo et al. 2016 (DNS)
reproduced on LeNet-300-100 and LeNet-5 (Caffe's 20-50-500-10), with every schedule of
:func:`nettrim.train_prune`, on the CPU, with the time each used.

Published anchors (test error before -> after, compression = weights / nonzero weights):

=====================  =====================  ======================
method                 LeNet-300-100          LeNet-5
=====================  =====================  ======================
Han et al. 2015        12x, 1.64% -> 1.59%    12x, 0.80% -> 0.77%
DNS (Guo et al. 2016)  56x, 2.28% -> 1.99%    108x, 0.91% -> 0.91%
=====================  =====================  ======================

Each net is trained dense first, with the loop and solver the pruned runs use (Caffe's LeNet
solver: SGD, momentum 0.9, lr 0.01 with the ``inv`` policy, L2 5e-4, batch 64), and cached
outside the repository (``$NETTRIM_CACHE``, else ``~/.cache/nettrim/models``); its time is
reported apart from the budget. Then, from that dense net, every method runs under one
training budget (epochs per net, below) with the papers' per-layer targets:

* ``han``: Han et al.'s per-layer densities (LeNet-300-100 8/9/26%, LeNet-5 66/12/8/19%:
  12x), three prune / retrain rounds, the retraining rate a tenth of the training rate;
* ``gradual``: Zhu & Gupta's cubic to the DNS densities, masks fixed for the last quarter;
* ``dns``: DNS with the DNS paper's per-layer densities (1.8/1.8/5.5%: 56x; 14.2/3.1/0.7/4.3%:
  108x), gamma 1e-4, power 1, masks recomputed for three quarters of the steps;
* ``nettrim``: iterative Net-Trim (cascade, the fast target-sparsity pipeline) with the DNS
  paper's per-layer shape pushed further (``--nettrim-scale``: each layer keeps that fraction of
  DNS's weights), a third of the epochs of the others.

Compression counts the Linear / Conv weights (biases are kept whole by every method). Errors are
on the 10,000 MNIST test images after every epoch; "at dense + 0.1" is the highest compression
of an epoch whose error is within 0.1 point of the dense net's, "at published" the same at the
paper's pruned error. Seconds are wall clock and this process's CPU time (one torch thread),
Net-Trim's solves included.

    python benchmarks/bench_training.py [--nets lenet300 lenet5] [--methods ...]
        [--epochs300 E] [--epochs5 E] [--cache DIR] [--out benchmarks/results/bench_training]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import nettrim
from nettrim.io.datasets import load_mnist
from nettrim.models import DEFAULT_CACHE, CACHE_ENV, accuracy, lenet5, lenet_300_100

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_and_out, log, quiet_single_thread, save_results, write_json  # noqa: E402

#: Per net: the builder, dense epochs, the papers' per-layer densities (kept fractions) and
#: their pruned errors (%), and the dense errors they started from.
NETS = {
    "lenet300": dict(
        builder=lenet_300_100, dense_epochs=20, layers=("1", "3", "5"),
        han=(0.08, 0.09, 0.26), dns=(0.018, 0.018, 0.055),
        published={"han": (1.64, 1.59, 12), "dns": (2.28, 1.99, 56)}),
    "lenet5": dict(
        builder=lenet5, dense_epochs=12, layers=("0", "2", "5", "7"),
        han=(0.66, 0.12, 0.08, 0.19), dns=(0.142, 0.031, 0.007, 0.043),
        published={"han": (0.80, 0.77, 12), "dns": (0.91, 0.91, 108)}),
}
METHODS = ("han", "gradual", "dns", "nettrim")


def dense_model(net: str, x, y, xt, yt, seed: int = 0):
    """The dense net trained with train_prune's loop at sparsity 0, cached; (model, info)."""
    spec = NETS[net]
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    path = cache / f"bench_training-{net}-dense-e{spec['dense_epochs']}-seed{seed}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec["builder"]()
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), json.loads(meta.read_text())
    log(f"{net}: training the dense net ({spec['dense_epochs']} epochs, cached at {path})")
    result = nettrim.train_prune(model, (x, y), "gradual", 0.0, spec["dense_epochs"],
                                 seed=seed, inplace=True)
    info = {"epochs": spec["dense_epochs"], "seconds": result.seconds,
            "cpu_seconds": result.history[-1]["cpu_seconds"],
            "error": 100 * (1 - accuracy(model, xt, yt))}
    from nettrim.io.files import atomic_write
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    write_json(meta, info)
    return model.eval(), info


def targets(net: str, method: str, scale: float) -> dict:
    spec = NETS[net]
    density = spec["han"] if method == "han" else spec["dns"]
    if method == "nettrim":
        density = tuple(d * scale for d in density)
    return {name: 1.0 - d for name, d in zip(spec["layers"], density)}


def best_at(history, error_limit):
    """Highest compression of an epoch with test error <= error_limit (%), or None."""
    ok = [h["compression"] for h in history if 100 * (1 - h["accuracy"]) <= error_limit + 1e-9]
    return max(ok) if ok else None


def run_cell(net, method, args, data, dense, dense_err):
    x, y, xt, yt = data
    epochs = args.epochs300 if net == "lenet300" else args.epochs5
    options = {}
    if method == "nettrim":
        epochs = max(args.nettrim_rounds, round(epochs * args.nettrim_epochs_fraction))
        options = {"rounds": args.nettrim_rounds, "round_epochs": args.nettrim_round_epochs,
                   "calibration_samples": args.calibration,
                   "prune_options": {"max_samples": args.max_rows}}
    if method == "han":
        options = {"lr_factor": args.han_lr_factor}
    goal = targets(net, method, args.nettrim_scale)
    state = None if args.cache is None else Path(args.cache) / f"{net}-{method}.state.pt"
    log(f"{net} {method}: {epochs} epochs, target {goal}")
    wall, cpu = time.perf_counter(), time.process_time()
    result = nettrim.train_prune(dense, (x, y), method, goal, epochs, eval_data=(xt, yt),
                                 options=options, seed=args.seed, checkpoint=state,
                                 on_epoch=lambda h: log(
                                     f"  epoch {h['epoch']}: error {100 * (1 - h['accuracy']):.2f}%"
                                     f", {h['compression']:.1f}x, {h['seconds']:.0f} s"))
    history = result.history
    final_err = 100 * (1 - history[-1]["accuracy"])
    published = NETS[net]["published"]
    row = dict(net=net, method=method, epochs=epochs, steps=history[-1]["step"],
               target_compression=target_compression(dense, goal),
               compression=result.compression, error=final_err, dense_error=dense_err,
               delta=final_err - dense_err,
               at_dense_01=best_at(history, dense_err + 0.1),
               at_han=best_at(history, published["han"][1]),
               at_dns=best_at(history, published["dns"][1]),
               seconds=history[-1]["seconds"], cpu_seconds=history[-1]["cpu_seconds"],
               run_wall=time.perf_counter() - wall, run_cpu=time.process_time() - cpu,
               resumed_from=result.resumed_from, sparsity=result.sparsity,
               history=[{k: h[k] for k in ("epoch", "accuracy", "compression", "seconds",
                                           "cpu_seconds")} for h in history],
               rounds=[{k: r[k] for k in ("round", "seconds", "cpu_seconds", "output_error")}
                       for r in result.rounds])
    if state is not None:
        state.unlink(missing_ok=True)
    return row


def target_compression(model, goal):
    """Weights / kept weights of the per-layer targets ``goal`` ({layer: sparsity})."""
    modules = dict(model.named_modules())
    sizes = {name: modules[name].weight.numel() for name in goal}
    kept = sum(sizes[n] - math.floor(s * sizes[n] + 0.5) for n, s in goal.items())
    return sum(sizes.values()) / kept


def fmt(value, spec=".1f", suffix="x"):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--epochs300", type=int, default=24, help="training budget, LeNet-300-100")
    p.add_argument("--epochs5", type=int, default=18, help="training budget, LeNet-5")
    p.add_argument("--nettrim-epochs-fraction", type=float, default=1 / 3,
                   help="iterative Net-Trim's epochs as a fraction of the budget")
    p.add_argument("--nettrim-rounds", type=int, default=3)
    p.add_argument("--nettrim-round-epochs", type=int, default=1,
                   help="epochs between Net-Trim rounds (the last round's retraining runs on)")
    p.add_argument("--han-lr-factor", type=float, default=0.1,
                   help="Han's retraining rate as a fraction of the training rate")
    p.add_argument("--nettrim-scale", type=float, default=0.7,
                   help="Net-Trim keeps this fraction of DNS's weights in every layer")
    p.add_argument("--calibration", type=int, default=2000, help="Net-Trim calibration images")
    p.add_argument("--max-rows", type=int, default=20000, help="Net-Trim rows per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="directory of finished cells (JSON) and training states: a "
                                   "run resumes from it")
    add_data_and_out(p, "bench_training")
    args = p.parse_args(argv)
    quiet_single_thread()
    x, y = load_mnist(args.data_root, train=True)
    xt, yt = load_mnist(args.data_root, train=False)
    out = {"settings": dict(vars(args), threads=1, torch=torch.__version__), "dense": {},
           "rows": []}
    lines = []
    header = (f"{'net':<9} {'method':<8} {'epochs':>6} {'compr.':>7} {'error':>6} {'dense':>6} "
              f"{'delta':>6} {'@d+0.1':>7} {'@Han':>7} {'@DNS':>7} {'wall s':>7} {'CPU s':>7}")
    for net in args.nets:
        dense, info = dense_model(net, x, y, xt, yt, seed=args.seed)
        dense_err = 100 * (1 - accuracy(dense, xt, yt))
        out["dense"][net] = dict(info, error=dense_err)
        lines.append(f"{net}: dense {dense_err:.2f}% error ({info['epochs']} epochs, "
                     f"{info['cpu_seconds']:.0f} CPU s, not in the budget)")
        lines.append(header)
        print(*lines[-2:], sep="\n", flush=True)
        for method in args.methods:
            cell = None if args.cache is None else Path(args.cache) / f"{net}-{method}.json"
            if cell is not None and cell.is_file():
                row = json.loads(cell.read_text())
            else:
                row = run_cell(net, method, args, (x, y, xt, yt), dense, dense_err)
                if cell is not None:
                    write_json(cell, row)
            out["rows"].append(row)
            lines.append(
                f"{net:<9} {method:<8} {row['epochs']:>6} {row['compression']:>6.1f}x "
                f"{row['error']:>5.2f}% {row['dense_error']:>5.2f}% {row['delta']:>+6.2f} "
                f"{fmt(row['at_dense_01']):>7} {fmt(row['at_han']):>7} {fmt(row['at_dns']):>7} "
                f"{row['seconds']:>7.0f} {row['cpu_seconds']:>7.0f}")
            print(lines[-1], flush=True)
            save_results(args.out, out, lines)
        lines.extend(comparison(net, out["rows"], dense_err))
        print(*lines[-3:], sep="\n", flush=True)
    save_results(args.out, out, lines)
    return 0


def comparison(net, rows, dense_err):
    """Net-Trim against DNS at the same error, and the targets of the issue."""
    by = {r["method"]: r for r in rows if r["net"] == net}
    found = []
    if "nettrim" in by and "dns" in by:
        nt, dns = by["nettrim"], by["dns"]
        level = max(dns["error"], dense_err + 0.1)
        at = best_at(nt["history"], level)
        found.append(f"{net}: Net-Trim at DNS's error ({level:.2f}%): {fmt(at)} vs DNS "
                     f"{dns['compression']:.1f}x ({'' if at and at > dns['compression'] else 'not '}"
                     f"more); time {nt['seconds']:.0f} s vs {dns['seconds']:.0f} s wall, "
                     f"{nt['cpu_seconds']:.0f} vs {dns['cpu_seconds']:.0f} CPU s "
                     f"(ratio {nt['cpu_seconds'] / dns['cpu_seconds']:.2f})")
    for method, need in (("han", 12), ("dns", 50 if net == "lenet300" else 100)):
        if method in by:
            r = by[method]
            met = r["compression"] >= need * 0.995 and r["delta"] <= 0.1 + 1e-9
            found.append(f"{net}: {method} target {need}x within 0.1 point: "
                         f"{r['compression']:.1f}x at {r['delta']:+.2f} -> "
                         f"{'met' if met else 'missed'}")
    return found


if __name__ == "__main__":
    sys.exit(main())
