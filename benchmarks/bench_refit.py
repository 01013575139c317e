"""Debiasing refit and reweighted l1 on trained LeNet-300-100 layers (issue 5), one run.

For the two hidden ReLU layers of LeNet-300-100 (trained on MNIST, ``nettrim.models.pretrained``)
with 5,000 MNIST training images as calibration data (X = the layer input plus a ones column for
the bias, Y = the layer's post-ReLU output, V = 0, bias column unpenalized), and relative
epsilons that give roughly 80 / 90 / 95 % sparsity, it prints per variant:

    l1            solve_admm (plain Net-Trim)
    l1+refit      the same, then solvers.refit.refit on its support
    rw1..3+refit  1, 2, 3 rounds of reweighted l1 (penalty reweighted_penalty(W) of the
                  previous round's l1 weights, warm started from them), then refit
    rw1..3p+refit the same, but each round's penalty comes from the previous round's
                  solution refit on its support (its l1 shrinkage undone): what
                  nettrim.prune_layer(reweight=k) does

with the sparsity of the weights (bias excluded), the relative post-ReLU error
``||relu(X W^T) - Y||_F / ||Y||_F``, the cumulative seconds of the variant's solves, and for
comparison at exactly that sparsity the errors of magnitude pruning (magn@sp) and SparseGPT
(sgpt@sp, from nettrim.baselines, which keep the original bias).

    python benchmarks/bench_refit.py [--layers 1 3] [--eps 0.15 0.28 0.4] [--rounds 3]
                                     [--pilot l1 refit] [--samples 5000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from solvers import NetTrimProblem, solve_admm
from solvers.refit import refit, reweighted_penalty


def layer_data(model, index, x):
    """(X with a ones column, Y post-ReLU, original W with the bias as last column)."""
    h = x
    with torch.no_grad():
        for module in list(model)[:index]:
            h = module(h)
        lin = model[index]
        X = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
        W = torch.cat([lin.weight, lin.bias[:, None]], 1)
        Y = torch.relu(X @ W.T)
    return X, Y, W


def measure(X, Y, W):
    """(sparsity of the weights without the bias column, relative post-ReLU error)."""
    sparsity = 1.0 - float((W[:, :-1] != 0).double().mean())
    err = float(torch.linalg.vector_norm(torch.relu(X @ W.T) - Y) / torch.linalg.vector_norm(Y))
    return sparsity, err


def run_level(X, Y, W_orig, rel_eps, rounds, pilots=("l1", "refit")):
    """Rows (variant, sparsity, error, seconds, statuses) for one epsilon."""
    penalty = torch.ones_like(W_orig)
    penalty[:, -1] = 0.0                      # bias: unpenalized
    free = penalty == 0
    problem = NetTrimProblem(X, Y, rel_eps * float(torch.linalg.vector_norm(Y)))
    rows = []
    t = time.perf_counter()
    l1 = solve_admm(problem, penalty=penalty, W0=W_orig)
    seconds = time.perf_counter() - t
    rows.append(("l1", *measure(X, Y, l1.W), seconds, l1.status))
    t = time.perf_counter()
    rf = refit(problem, (l1.W != 0) | free, W0=l1.W)
    rows.append(("l1+refit", *measure(X, Y, rf.W), seconds + time.perf_counter() - t,
                 f"{l1.status}/{rf.status}"))
    first_refit, refit_seconds = rf, time.perf_counter() - t
    for pilot in pilots:
        # the refit of round r is both that round's answer and, with pilot "refit", the
        # source of round r + 1's penalty; its time counts only where it is used that way
        current, fitted, spent = l1, first_refit, seconds
        if pilot == "refit":
            spent += refit_seconds
        for r in range(1, rounds + 1):
            t = time.perf_counter()
            pen = reweighted_penalty(fitted.W if pilot == "refit" else current.W) * penalty
            current = solve_admm(problem, penalty=pen, W0=current.W, rho=current.rho)
            spent += time.perf_counter() - t
            t = time.perf_counter()
            fitted = refit(problem, (current.W != 0) | free, W0=current.W)
            step = time.perf_counter() - t
            name = f"rw{r}{'p' if pilot == 'refit' else ''}+refit"
            rows.append((name, *measure(X, Y, fitted.W), spent + step,
                         f"{current.status}/{fitted.status}"))
            if pilot == "refit":
                spent += step
    return rows


def baselines_at(X, Y, W_orig, sparsity):
    """Relative post-ReLU errors of magnitude pruning and SparseGPT at ``sparsity``."""
    from nettrim.baselines import magnitude, sparsegpt
    errors = []
    for method in (magnitude, sparsegpt):
        res = method(W_orig[:, :-1], X[:, :-1], sparsity=sparsity, bias=W_orig[:, -1],
                     relu=True, Y=Y)
        errors.append(measure(X, Y, torch.cat([res.weight, res.bias[:, None]], 1))[1])
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA", "/work/shared/data"),
                        help="directory with mnist/ (default $NETTRIM_DATA or /work/shared/data)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3],
                        help="indices of the Linear layers in the Sequential (default 1 3)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.15, 0.28, 0.4],
                        help="relative epsilons (default 0.15 0.28 0.4: about 80/90/95%%)")
    parser.add_argument("--rounds", type=int, default=3, help="reweighting rounds (default 3)")
    parser.add_argument("--pilot", nargs="+", choices=["l1", "refit"], default=["l1", "refit"],
                        help="where the reweighting penalty comes from: the previous l1 weights, "
                             "or their refit (default both)")
    parser.add_argument("--samples", type=int, default=5000, help="calibration images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from nettrim.io.datasets import load_mnist
    from nettrim.models import pretrained
    model = pretrained("lenet_300_100", data_root=args.data_root).eval()
    x, _ = load_mnist(args.data_root, train=True)
    x = x[:args.samples]
    head = (f"{'layer':>10}{'eps':>7}  {'variant':<12}{'sparsity':>9}{'rel.err':>9}{'sec':>8}"
            f"{'magn@sp':>9}{'sgpt@sp':>9}  status")
    print(head)
    print("-" * len(head))
    for index in args.layers:
        X, Y, W = layer_data(model, index, x)
        name = f"{index}:{W.shape[1] - 1}->{W.shape[0]}"
        for eps in args.eps:
            for variant, sp, err, sec, status in run_level(X, Y, W, eps, args.rounds,
                                                           args.pilot):
                magn, sgpt = baselines_at(X, Y, W, sp)
                print(f"{name:>10}{eps:>7.3f}  {variant:<12}{100 * sp:>8.1f}%{err:>9.4f}"
                      f"{sec:>8.1f}{magn:>9.4f}{sgpt:>9.4f}  {status}", flush=True)
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
