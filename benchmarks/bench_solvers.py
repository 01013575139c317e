"""Speed of the Net-Trim solvers, printed as ratios measured in this one run.

(a) ADMM vs the cvxpy reference (Clarabel) on a layer cvxpy solves in about a minute:
    time ratio and objective gap.
(b) ADMM on a 784 x 300 layer with 10,000 samples, float32: seconds per iteration divided by
    the seconds of the iteration's two GEMMs (X W3 and X^T B, measured here: the floor),
    iterations to the default tolerance, total seconds.

Data for (b): the first layer of LeNet-300-100 trained on MNIST (real activations) when the
MNIST files are found (``--data-root``, $NETTRIM_DATA, or ../shared/data), else random.

    python benchmarks/bench_solvers.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from solvers import NetTrimProblem, solve_admm, solve_cvxpy

REPO = Path(__file__).resolve().parents[1]


def synthetic_layer(P, N, M, *, seed=0, rel_eps=0.05, dtype=np.float64):
    """A ReLU layer on nonnegative, sparse inputs (image-like), epsilon = rel_eps ||Y||."""
    rng = np.random.default_rng(seed)
    X = (np.abs(rng.standard_normal((P, N))) * (rng.random((P, N)) < 0.3)).astype(dtype)
    W0 = (rng.standard_normal((M, N)) / np.sqrt(N)).astype(dtype)
    Y = np.maximum(X @ W0.T, 0)
    return NetTrimProblem(X, Y, rel_eps * float(np.linalg.norm(Y)))


def mnist_first_layer(samples, data_root):
    """(X, Y): MNIST images and LeNet-300-100's first-layer ReLU outputs, or None."""
    try:
        from nettrim.io.datasets import load_mnist
        from nettrim.models import pretrained
        x, _ = load_mnist(data_root, train=True, download=False)
        model = pretrained("lenet_300_100", data_root=data_root)
    except (ImportError, FileNotFoundError) as exc:
        print(f"  (real data unavailable: {exc}; using random data)")
        return None
    X = x[:samples].reshape(samples, -1).float()
    first = model[1]
    with torch.no_grad():
        Y = torch.relu(X @ first.weight.T + first.bias)
    return X, Y


def time_gemms(X, M, repeats):
    """Median seconds of the ADMM iteration's two GEMMs: X (P,N) @ (N,M) and X^T @ (P,M)."""
    P, N = X.shape
    A = torch.randn(N, M, dtype=X.dtype, device=X.device)
    B = torch.randn(P, M, dtype=X.dtype, device=X.device)
    times = []
    for i in range(repeats + 2):
        sync(X)
        t = time.perf_counter()
        X @ A
        X.T @ B
        sync(X)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def sync(t):
    if t.is_cuda:
        torch.cuda.synchronize()


def part_a(quick):
    P, N, M = (800, 100, 20) if quick else (2500, 250, 50)
    problem = synthetic_layer(P, N, M)
    print(f"(a) ADMM vs cvxpy/Clarabel, random ReLU layer P={P} N={N} M={M}, float64, eps=0.05||Y||")
    ref = solve_cvxpy(problem, force=True)
    ours = solve_admm(problem)
    gap = (ours.objective - ref.objective) / ref.objective
    print(f"    cvxpy  {ref.solve_time:8.2f} s  status {ref.status}  objective {ref.objective:.6g}")
    print(f"    admm   {ours.solve_time:8.2f} s  status {ours.status}  objective {ours.objective:.6g}"
          f"  iterations {ours.iterations}")
    print(f"    speed-up cvxpy/admm = {ref.solve_time / ours.solve_time:.1f}x   objective gap "
          f"{100 * gap:+.3f}%   admm residual/epsilon {ours.residual / problem.epsilon:.5f}")


def part_b(quick, device, data_root):
    P, N, M = (2000, 784, 300) if quick else (10000, 784, 300)
    real = mnist_first_layer(P, data_root)
    if real is not None:
        X, Y = real
        X = torch.cat([X, torch.ones(P, 1)], dim=1)   # bias column, left unpenalized
        penalty = torch.ones(M, N + 1)
        penalty[:, -1] = 0
        source = "MNIST, LeNet-300-100 layer 1 (+ bias column)"
    else:
        g = torch.Generator().manual_seed(0)
        X = torch.rand(P, N, generator=g) * (torch.rand(P, N, generator=g) < 0.2)
        Y = torch.relu(X @ (torch.randn(M, N, generator=g) / 28).T)
        source = "random"
        penalty = None
    X = X.to(device=device, dtype=torch.float32)
    Y = Y.to(device=device, dtype=torch.float32)
    problem = NetTrimProblem(X, Y, 0.05 * float(torch.linalg.vector_norm(Y)))
    print(f"(b) ADMM on {source}: P={P} N={X.shape[1]} M={M}, float32, {device}, "
          f"eps=0.05||Y||, threads={torch.get_num_threads()}")
    res = solve_admm(problem, penalty=None if penalty is None else penalty.to(device))
    floor = time_gemms(X, M, repeats=5 if quick else 10)
    per_iter = res.solve_time / res.iterations
    print(f"    status {res.status}  iterations {res.iterations}  total {res.solve_time:.2f} s  "
          f"sparsity {100 * res.sparsity:.1f}%  residual/epsilon {res.residual / problem.epsilon:.5f}")
    print(f"    per iteration {1e3 * per_iter:.1f} ms   two-GEMM floor {1e3 * floor:.1f} ms   "
          f"ratio {per_iter / floor:.2f}x  (set-up included in per-iteration time)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--device", default="cpu", help="torch device for part (b)")
    parser.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA", str(REPO.parent / "shared" / "data")),
                        help="directory with the MNIST files")
    parser.add_argument("--skip-cvxpy", action="store_true", help="run part (b) only")
    args = parser.parse_args(argv)
    if not args.skip_cvxpy:
        part_a(args.quick)
    part_b(args.quick, args.device, args.data_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
