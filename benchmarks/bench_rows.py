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

    python benchmarks/bench_rows.py [--out PREFIX]
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
    add_data_and_out(p, "bench_rows")
    args = p.parse_args(argv)
    quiet_single_thread()
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


if __name__ == "__main__":
    main()
