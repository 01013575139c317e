"""The ReLU program on a working set of rows against the row ADMM, on convolutions' patches.

A convolution's program has one row per output position and image, and few inputs per row:
the row ADMM's iterations touch every row, the working set (:mod:`solvers.working_set`) only the
per-neuron Gram matrices and the rows whose inequalities bind. Layers (MNIST calibration images,
one torch thread):

* ``lenet5 conv1``: LeNet-5's trained first convolution (5x5, 20 channels, 25 inputs and a
  bias) on 300 images: 172,800 rows;
* ``rescnn conv1``: the first convolution of bench_wide's residual CNN (3x3, 32 channels, its
  BatchNorm folded in) on 128 images: 100,352 rows, 73% of them copies (blank patches).

For each layer and sparsity, in one run: (a) the count-steered Lagrangian as the pruning
pipeline runs it (``settle_tol``, 1,000 iterations at most): seconds, iterations, status, rows
of the working set; (b) ``nettrim.prune_layer`` end to end: seconds, the program kept and its
post-ReLU error. The working set is switched off for the row ADMM's runs by raising
``solvers.working_set.MIN_ROWS_PER_INPUT``.

``--sweep`` measures where the working set starts to pay (the rule of
:func:`solvers.working_set.use_working_set`): the count-steered Lagrangian at 70% with
``rows="all"`` and ``rows="working-set"`` on the two layers' rows subsampled to 3,000 -
100,000, and on synthetic ReLU layers (correlated inputs) shaped like a MobileNet's pointwise
and depthwise convolutions; seconds, iterations and the cost of one iteration.

    python benchmarks/bench_rows.py [--sweep] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_and_out, log, quiet_single_thread, save_results  # noqa: E402

import nettrim  # noqa: E402
import solvers.working_set as working_set  # noqa: E402
from solvers import NetTrimProblem, solve_lagrangian  # noqa: E402

SPARSITIES = (0.7, 0.9)
MODES = ("rows", "working set")


def conv_layer(name, data_root):
    """(X with a ones column, Y, W0, b0) of a trained first convolution on MNIST patches."""
    from nettrim.io.datasets import load_mnist

    x, _ = load_mnist(data_root, train=True)
    if name == "lenet5 conv1":
        from nettrim.models import pretrained

        conv = next(m for m in pretrained("lenet5", data_root=data_root).modules()
                    if isinstance(m, torch.nn.Conv2d))
        W0 = conv.weight.detach().reshape(conv.out_channels, -1)
        b0 = conv.bias.detach()
        images = 300
    else:
        from bench_wide import trained_model

        model = trained_model(data_root, 1, 12000)
        conv, bn = model[0], model[1]
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        W0 = conv.weight.detach().reshape(conv.out_channels, -1) * scale[:, None]
        b0 = (bn.bias - bn.running_mean * scale).detach()
        images = 128
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:images]
    cols = torch.nn.functional.unfold(x[pick].float().reshape(-1, 1, 28, 28), conv.kernel_size,
                                      padding=conv.padding, stride=conv.stride)
    X = cols.transpose(1, 2).reshape(-1, W0.shape[1])
    return X, torch.relu(X @ W0.T + b0), W0, b0


def with_mode(mode, call):
    """``call()`` with the working set on ("working set") or off ("rows")."""
    saved = working_set.MIN_ROWS_PER_INPUT
    working_set.MIN_ROWS_PER_INPUT = saved if mode == "working set" else 10 ** 15
    try:
        t0 = time.perf_counter()
        out = call()
        return out, time.perf_counter() - t0
    finally:
        working_set.MIN_ROWS_PER_INPUT = saved


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="+", default=["lenet5 conv1", "rescnn conv1"])
    p.add_argument("--sweep", action="store_true",
                   help="where the working set pays: rows per input and work per iteration")
    add_data_and_out(p, "bench_rows")
    args = p.parse_args(argv)
    quiet_single_thread()
    if args.sweep:
        return sweep(args)
    from nettrim.layer.target_count import SETTLE_MAX_ITER, SETTLE_TOL

    cells, lines = [], [f"bench_rows: torch {torch.__version__}, 1 thread; the ReLU program on "
                        "all rows vs on a working set (solvers.working_set)", ""]
    for name in args.layers:
        X, Y, W0, b0 = conv_layer(name, args.data_root)
        P, N = X.shape
        M = Y.shape[1]
        Xa = torch.cat([X, torch.ones(P, 1)], 1)
        penalty = torch.ones(M, N + 1)
        penalty[:, -1] = 0.0
        problem = NetTrimProblem(Xa, Y, 0.0)
        lines.append(f"{name}: {P} rows, {N} inputs and a bias, {M} neurons")
        for sparsity in SPARSITIES:
            keep = round((1 - sparsity) * N * M)
            row = dict(layer=name, rows=P, inputs=N, neurons=M, sparsity=sparsity)
            for mode in MODES:
                log(f"{name} {sparsity} {mode}")
                res, sec = with_mode(mode, lambda: solve_lagrangian(
                    problem, nonzeros=keep, penalty=penalty, settle_tol=SETTLE_TOL,
                    max_iter=SETTLE_MAX_ITER))
                pruned, sec_prune = with_mode(mode, lambda: nettrim.prune_layer(
                    X, Y, sparsity=sparsity, bias=True, W0=W0, b0=b0))
                rep = pruned.report
                row[mode] = dict(lagrangian_seconds=sec, iterations=res.iterations,
                                 status=res.status, working_rows=res.working_rows,
                                 prune_seconds=sec_prune, program=rep.get("program"),
                                 error=rep["relative_error"], prune_status=rep["status"])
            a, b = row["rows"], row["working set"]
            lines += [
                f"  {sparsity:.0%}: Lagrangian {a['lagrangian_seconds']:.1f} s ({a['iterations']} "
                f"it., {a['status']}) vs {b['lagrangian_seconds']:.1f} s ({b['iterations']} it., "
                f"{b['status']}, {b['working_rows']} rows in the set): "
                f"{a['lagrangian_seconds'] / b['lagrangian_seconds']:.1f}x faster",
                f"        prune_layer {a['prune_seconds']:.1f} s, error {a['error']:.4f} "
                f"({a['program']}) vs {b['prune_seconds']:.1f} s, error {b['error']:.4f} "
                f"({b['program']}): {a['prune_seconds'] / b['prune_seconds']:.1f}x faster, "
                f"error {b['error'] / a['error']:.3f}x"]
            cells.append(row)
        lines.append("")
    print("\n".join(lines))
    save_results(args.out, dict(cells=cells), lines)


#: (inputs, neurons, rows) of the synthetic layers of the sweep: pointwise and depthwise shapes.
SYNTHETIC = ((16, 32, 3000), (64, 96, 3000), (64, 96, 10000), (64, 96, 30000), (9, 1, 3000),
             (9, 1, 30000))


def synthetic_layer(N, M, P, gen):
    """A ReLU layer on correlated nonnegative inputs (rank 8 plus noise, through a ReLU)."""
    X = torch.relu(torch.randn(P, 8, generator=gen) @ torch.randn(8, N, generator=gen)
                   + 0.3 * torch.randn(P, N, generator=gen))
    W = torch.randn(M, N, generator=gen) / N ** 0.5
    return X, torch.relu(X @ W.T + 0.1 * torch.randn(M, generator=gen))


def sweep(args):
    """The Lagrangian on all rows and on the working set across shapes (module docstring)."""
    from nettrim.layer.target_count import SETTLE_MAX_ITER, SETTLE_TOL

    gen = torch.Generator().manual_seed(0)
    layers = []
    for name in args.layers:
        X, Y, _, _ = conv_layer(name, args.data_root)
        for P in (3000, 10000, 30000, 100000):
            pick = torch.randperm(X.shape[0], generator=gen)[:P]
            layers.append((name, X[pick], Y[pick]))
    layers += [("synthetic", *synthetic_layer(N, M, P, gen)) for N, M, P in SYNTHETIC]
    cells = []
    lines = [f"bench_rows --sweep: torch {torch.__version__}, 1 thread; the count-steered "
             "Lagrangian at 70% on all rows vs on the working set", "",
             f"{'layer':14s} {'P':>6s} {'N':>4s} {'M':>3s} {'P/N':>6s} {'P N M':>8s} "
             f"{'all rows':>17s} {'working set':>17s} {'|S|':>5s} {'per it.':>7s} {'total':>6s}"]
    for name, X, Y in layers:
        P, N = X.shape
        M = Y.shape[1]
        problem = NetTrimProblem(torch.cat([X, torch.ones(P, 1)], 1), Y, 0.0)
        penalty = torch.ones(M, N + 1)
        penalty[:, -1] = 0.0
        keep = round(0.3 * N * M)
        row = dict(layer=name, rows=P, inputs=N + 1, neurons=M)
        for rows in ("all", "working-set"):
            log(f"{name} P={P} N={N} M={M} {rows}")
            t0 = time.perf_counter()
            res = solve_lagrangian(problem, nonzeros=keep, penalty=penalty, settle_tol=SETTLE_TOL,
                                   max_iter=SETTLE_MAX_ITER, rows=rows)
            row[rows] = dict(seconds=time.perf_counter() - t0, iterations=res.iterations,
                             status=res.status, working_rows=res.working_rows)
        a, b = row["all"], row["working-set"]
        row["per_iteration"] = (a["seconds"] / a["iterations"]) / (b["seconds"] / b["iterations"])
        row["total"] = a["seconds"] / b["seconds"]
        cells.append(row)
        lines.append(f"{name:14s} {P:6d} {N + 1:4d} {M:3d} {P / (N + 1):6.0f} "
                     f"{P * (N + 1) * M:8.1e} {a['seconds']:6.2f} s {a['iterations']:5d} it. "
                     f"{b['seconds']:6.2f} s {b['iterations']:5d} it. {b['working_rows']:5d} "
                     f"{row['per_iteration']:6.2f}x {row['total']:5.2f}x")
    lines += ["", "per it.: seconds per iteration on all rows / on the working set (above 1: "
              "the working set's iterations are cheaper); total: the same for the whole solve "
              "(the iteration counts differ)."]
    print("\n".join(lines))
    save_results(args.out, dict(cells=cells), lines)


if __name__ == "__main__":
    main()
