"""Net-Trim on an accelerator: a large ReLU layer, and how much of the device's GEMM rate the
ADMM reaches. One command, measured in one run:

(a) the device's float32 GEMM throughput on the iteration's two products (``X @ W`` of shape
    P x N x M and ``X^T @ R``), in TFLOP/s;
(b) one fixed-epsilon ADMM solve of the layer (``solvers.solve_admm``): iterations, seconds,
    and its useful rate ``iterations * 4 P N M / seconds`` as a fraction of (a);
(c) the default pipeline at a target sparsity (``nettrim.prune_layer(..., sparsity=0.9,
    bias=True, W0=, b0=)``: search, reweighting, refit): seconds, achieved sparsity, relative
    post-ReLU error, beside SparseGPT's error and time on the same layer.

The layer: N = M = 4096, P = 50,000 rows of nonnegative correlated inputs, a random dense
ReLU layer (a stand-in for a transformer MLP block). Without a GPU (or with ``--size small``)
it runs at a reduced size on the CPU: N = M = 512, P = 5,000.

    python benchmarks/bench_gpu.py [--device cuda|cpu] [--size full|small] [--out r.json]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import nettrim
from nettrim import baselines
from solvers import NetTrimProblem, solve_admm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

SIZES = {"full": (50_000, 4096, 4096), "small": (5_000, 512, 512)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def layer(P, N, M, device, seed=0):
    """(X, W0, b0, Y): a dense ReLU layer on nonnegative inputs correlated through a mixing."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    latent = torch.randn(P, N // 8, generator=g)
    mixing = torch.randn(N // 8, N, generator=g) / math.sqrt(N / 8)
    X = torch.relu(latent @ mixing + 0.3 * torch.randn(P, N, generator=g))
    W0 = torch.randn(M, N, generator=g) / math.sqrt(N)
    b0 = 0.1 * torch.randn(M, generator=g)
    X, W0, b0 = X.to(device), W0.to(device), b0.to(device)
    Y = torch.relu(X @ W0.T + b0)
    return X, W0, b0, Y


def gemm_rate(X, M, repeats=10):
    """FLOP/s of the iteration's two products on this device (median of ``repeats``)."""
    P, N = X.shape
    A = torch.randn(N, M, device=X.device, dtype=X.dtype)
    B = torch.randn(P, M, device=X.device, dtype=X.dtype)
    times = []
    for i in range(repeats + 2):
        sync(X.device)
        t = time.perf_counter()
        X @ A
        X.T @ B
        sync(X.device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 4.0 * P * N * M / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=SIZES, default=None,
                   help="full (4096x4096, 50,000 rows) or small (512x512, 5,000 rows); default "
                        "full on a GPU, small on the CPU")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="also write the figures as JSON (atomically)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.size or ("full" if device.type == "cuda" else "small")
    P, N, M = SIZES[size]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"bench_gpu: {name}, torch {torch.__version__}; layer {N}->{M} ReLU, P={P}, float32"
          + ("" if size == "full" else " (reduced size)"))
    X, W0, b0, Y = layer(P, N, M, device)
    rate = gemm_rate(X, M)
    print(f"(a) GEMM throughput (X W and X^T R, float32): {rate / 1e12:.2f} TFLOP/s")

    problem = NetTrimProblem(X, Y, 0.05 * float(torch.linalg.vector_norm(Y)))
    sync(device)
    res = solve_admm(problem)
    sync(device)
    useful = res.iterations * 4.0 * P * N * M / res.solve_time
    print(f"(b) ADMM, epsilon 0.05||Y||: {res.status}, {res.iterations} iterations, "
          f"{res.solve_time:.2f} s, {1e3 * res.solve_time / res.iterations:.1f} ms/iteration; "
          f"{useful / 1e12:.2f} TFLOP/s = {useful / rate:.0%} of the GEMM rate")

    sync(device)
    t0 = time.perf_counter()
    nt = nettrim.prune_layer(X, Y, sparsity=args.sparsity, relu=True, bias=True, W0=W0, b0=b0)
    sync(device)
    t_nt = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    sg = baselines.sparsegpt(W0, X, sparsity=args.sparsity, bias=b0, relu=True, Y=Y)
    sync(device)
    t_sg = time.perf_counter() - t0

    def err(W, b):
        out = torch.relu(X @ W.T.to(X) + b.to(X))
        return float(torch.linalg.vector_norm(out - Y) / torch.linalg.vector_norm(Y))

    e_nt = err(nt.weight, nt.bias)
    e_sg = err(sg.weight, sg.bias if sg.bias is not None else b0)
    print(f"(c) prune_layer(sparsity={args.sparsity}): {t_nt:.1f} s, "
          f"{100 * nt.report['sparsity']:.2f}% sparse, {nt.report['status']}, "
          f"{nt.report['iterations']} iterations; error {e_nt:.4f}")
    print(f"    SparseGPT: {t_sg:.2f} s, error {e_sg:.4f}; time ratio {t_nt / t_sg:.0f}x, "
          f"error ratio {e_nt / e_sg:.3f}x")
    if args.out:
        payload = dict(device=name, size=size, P=P, N=N, M=M, gemm_tflops=rate / 1e12,
                       admm=dict(status=res.status, iterations=res.iterations,
                                 seconds=res.solve_time, fraction_of_gemm=useful / rate),
                       prune_layer=dict(seconds=t_nt, sparsity=nt.report["sparsity"],
                                        status=nt.report["status"], error=e_nt),
                       sparsegpt=dict(seconds=t_sg, error=e_sg))
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
