"""Speed of the default pipeline (target sparsity, reweighting, refit), as ratios from one run.

(1) One layer: ``nettrim.prune_layer(X, Y, sparsity=0.9, relu=True, bias=True, W0=, b0=)`` on
    fc1 (784 -> 300) of the trained LeNet-300-100, 5,000 MNIST calibration images, against
    ``nettrim.baselines.sparsegpt`` on the same layer: time ratio (target <= 100x) and the
    ratio of the relative post-ReLU errors, on the calibration rows and on 5,000 held-out
    images (target <= 0.5x).
(2) One network: ``nettrim.prune(lenet_300_100, 5,000 images, sparsity=0.9, mode="cascade")``
    against one training epoch of the same architecture on the 60,000 training images (Adam,
    batch 128): pruning time in epochs (target <= 10).
(3) The demo: ``nettrim demo`` with its default options, as a user runs it (a subprocess),
    alone and while another CPU-bound process runs (target <= 120 s each).
(4) The ADMM iteration against its two GEMMs (``bench_solvers.py`` part (b): 10,000 rows,
    float32, epsilon 0.05 ||Y||).

Every time in a line is measured in this run, on this machine, with the threads given
(default 1, the CLI's default).

    python benchmarks/bench_speed.py [--quick] [--skip-demo] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import nettrim
from nettrim import baselines
from nettrim.io.datasets import load_mnist
from nettrim.models import lenet_300_100, pretrained, train_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_solvers  # noqa: E402  (the iteration-vs-GEMM measurement lives there)
from common import REPO, log, write_json  # noqa: E402

TARGETS = {"layer_time_x_sparsegpt": 100.0, "layer_error_x_sparsegpt": 0.5,
           "network_epochs": 10.0, "demo_seconds": 120.0, "iteration_x_gemms": 1.5}


def rel_error(X, W, b, Y, relu):
    out = X @ W.T + b
    out = torch.relu(out) if relu else out
    return float(torch.linalg.vector_norm(out - Y) / torch.linalg.vector_norm(Y))


def one_layer(model, calib, held, sparsity):
    data = nettrim.capture(model, calib, layers=["1"])["1"]
    data_held = nettrim.capture(model, held, layers=["1"])["1"]
    layer = model[1]
    W0, b0 = layer.weight.detach(), layer.bias.detach()
    X, Y = data.X, data.post
    times = []
    for _ in range(2):   # the better of two runs: SparseGPT is short enough to be noisy
        t0 = time.perf_counter()
        sg = baselines.sparsegpt(W0, X, sparsity=sparsity, bias=b0, relu=True, Y=Y)
        times.append(time.perf_counter() - t0)
    t_sg = min(times)
    t0 = time.perf_counter()
    nt = nettrim.prune_layer(X, Y, sparsity=sparsity, relu=True, bias=True, W0=W0, b0=b0)
    t_nt = time.perf_counter() - t0
    sg_b = sg.bias if sg.bias is not None else b0
    out = dict(rows=X.shape[0], shape=list(W0.shape), sparsegpt_seconds=t_sg,
               nettrim_seconds=t_nt, nettrim_sparsity=nt.report["sparsity"],
               nettrim_status=nt.report["status"], nettrim_iterations=nt.report["iterations"],
               nettrim_solves=nt.report.get("solves"))
    for tag, (x, y) in {"calibration": (X, Y), "heldout": (data_held.X, data_held.post)}.items():
        out[f"sparsegpt_error_{tag}"] = rel_error(x, sg.weight, sg_b, y, True)
        out[f"nettrim_error_{tag}"] = rel_error(x, nt.weight, nt.bias, y, True)
    out["time_x_sparsegpt"] = t_nt / t_sg
    out["error_x_sparsegpt"] = out["nettrim_error_calibration"] / out["sparsegpt_error_calibration"]
    out["heldout_error_x_sparsegpt"] = (out["nettrim_error_heldout"]
                                        / out["sparsegpt_error_heldout"])
    return out


def one_network(model, calib, x_train, y_train, sparsity):
    fresh = lenet_300_100()
    t0 = time.perf_counter()
    train_classifier(fresh, x_train, y_train, epochs=1, seed=0)
    t_epoch = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = nettrim.prune(model, calib, sparsity=sparsity, mode="cascade")
    t_prune = time.perf_counter() - t0
    return dict(epoch_seconds=t_epoch, prune_seconds=t_prune, epochs=t_prune / t_epoch,
                layers=[dict(name=r.name, sparsity=r.sparsity, status=r.status,
                             iterations=r.iterations, seconds=r.seconds) for r in res.report],
                output_error=res.output_error)


def demo(data_root, busy):
    """Wall seconds of ``nettrim demo`` (default options) in a subprocess."""
    env = dict(os.environ, NETTRIM_DATA=str(data_root), PYTHONPATH=str(REPO))
    hog = None
    if busy:   # another CPU-bound process for the whole run
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "nettrim.cli", "demo", "-q"], env=env,
                             capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - t0
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    last = [line for line in run.stdout.splitlines() if line.startswith("test accuracy")]
    return dict(seconds=seconds, returncode=run.returncode, busy=busy,
                accuracy=last[-1] if last else run.stderr.strip().splitlines()[-1:])


def iteration(data_root, quick):
    P, N, M = (2000, 784, 300) if quick else (10000, 784, 300)   # bench_solvers' sizes
    X, Y = bench_solvers.mnist_first_layer(P, data_root)
    from solvers import NetTrimProblem, solve_admm
    X, Y = X.float(), Y.float()
    problem = NetTrimProblem(X, Y, 0.05 * float(torch.linalg.vector_norm(Y)))
    res = solve_admm(problem)
    floor = bench_solvers.time_gemms(X, M, repeats=10)
    per_iter = res.solve_time / res.iterations
    return dict(rows=P, iterations=res.iterations, seconds=res.solve_time,
                per_iteration_ms=1e3 * per_iter, gemm_floor_ms=1e3 * floor,
                ratio=per_iter / floor)


def verdict(value, target):
    return "met" if value <= target else "MISSED"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA",
                                                         str(REPO.parent / "shared" / "data")))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help="1,000 images, 2,000 rows in (4), no demo")
    p.add_argument("--skip-demo", action="store_true", help="skip part (3)")
    p.add_argument("--skip-network", action="store_true", help="skip part (2)")
    p.add_argument("--out", default=None, help="also write the figures as JSON (atomically)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = 1000 if args.quick else 5000
    sparsity = 0.9
    start = time.perf_counter()
    model = pretrained("lenet_300_100", data_root=args.data_root)
    x_train, y_train = load_mnist(args.data_root, train=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x_train.shape[0], generator=g)
    calib, held = x_train[perm[:samples]], x_train[perm[samples:2 * samples]]
    results = {"threads": args.threads, "samples": samples, "torch": torch.__version__}

    log("(1) one layer ...")
    r1 = results["layer"] = one_layer(model, calib, held, sparsity)
    log("(4) iteration vs GEMMs ...")
    r4 = results["iteration"] = iteration(args.data_root, args.quick)
    r2 = None
    if not args.skip_network:
        log("(2) one network ...")
        r2 = results["network"] = one_network(model, calib, x_train, y_train, sparsity)
    r3 = []
    if not (args.skip_demo or args.quick):
        for busy in (False, True):
            log(f"(3) demo{' with another CPU-bound process' if busy else ''} ...")
            r3.append(demo(args.data_root, busy))
        results["demo"] = r3

    print(f"bench_speed: torch {torch.__version__}, {args.threads} thread(s), {samples} "
          f"calibration images, target sparsity {sparsity}" + (" [--quick]" if args.quick else ""))
    print(f"(1) one layer, fc1 784->300, P={r1['rows']}:")
    print(f"    SparseGPT {r1['sparsegpt_seconds']:.3f} s   Net-Trim {r1['nettrim_seconds']:.1f} s "
          f"({r1['nettrim_solves']} l1 solves, {r1['nettrim_iterations']} iterations, "
          f"{100 * r1['nettrim_sparsity']:.2f}% sparse, {r1['nettrim_status']})")
    print(f"    time ratio {r1['time_x_sparsegpt']:.0f}x  (target <= "
          f"{TARGETS['layer_time_x_sparsegpt']:.0f}x: "
          f"{verdict(r1['time_x_sparsegpt'], TARGETS['layer_time_x_sparsegpt'])})")
    print(f"    error: Net-Trim {r1['nettrim_error_calibration']:.4f} vs SparseGPT "
          f"{r1['sparsegpt_error_calibration']:.4f} = {r1['error_x_sparsegpt']:.3f}x; held out "
          f"{r1['nettrim_error_heldout']:.4f} vs {r1['sparsegpt_error_heldout']:.4f} = "
          f"{r1['heldout_error_x_sparsegpt']:.3f}x  (target <= 0.5x: "
          f"{verdict(r1['error_x_sparsegpt'], TARGETS['layer_error_x_sparsegpt'])})")
    if r2 is not None:
        print(f"(2) one network, cascade, LeNet-300-100: pruning {r2['prune_seconds']:.1f} s, one "
              f"training epoch {r2['epoch_seconds']:.1f} s -> {r2['epochs']:.1f} epochs "
              f"(target <= 10: {verdict(r2['epochs'], TARGETS['network_epochs'])})")
        for layer in r2["layers"]:
            print(f"    layer {layer['name']}: {100 * layer['sparsity']:.1f}% {layer['status']} "
                  f"{layer['iterations']} iterations {layer['seconds']:.1f} s")
    for d in r3:
        print(f"(3) nettrim demo{' + a CPU-bound process' if d['busy'] else ' alone'}: "
              f"{d['seconds']:.0f} s, exit {d['returncode']}, {d['accuracy']}  (target <= 120 s: "
              f"{verdict(d['seconds'], TARGETS['demo_seconds'])})")
    print(f"(4) ADMM iteration, P={r4['rows']} N=784 M=300 float32: {r4['per_iteration_ms']:.1f} ms vs "
          f"two GEMMs {r4['gemm_floor_ms']:.1f} ms = {r4['ratio']:.2f}x  (target <= 1.5x: "
          f"{verdict(r4['ratio'], TARGETS['iteration_x_gemms'])}), {r4['iterations']} iterations")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
