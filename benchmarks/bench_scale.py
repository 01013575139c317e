"""Net-Trim at the size of real layers: time, peak memory and error against the number of
calibration rows P, beside SparseGPT, Wanda and magnitude, measured in one run.

Layers (sparsity 0.7, a bias, one torch thread):

* ``512 linear``, ``512 relu``: 512 -> 512 on correlated inputs (low rank plus noise, through
  a ReLU, as real activations are);
* ``768->3072``, ``3072->768``: a transformer MLP's two layers (their GELU is not a ReLU, so
  each is solved as a linear layer on its pre-activations);
* ``2304->256 conv``: a ResNet 3x3 convolution with 256 input channels, as unfolded patches,
  followed by a ReLU;
* ``lenet fc1``: LeNet-300-100's trained 784 -> 300 ReLU layer on MNIST rows.

Rows P from 4,096 to 131,072 where the memory allows (``--rows``). Every (layer, P, method)
cell runs in its own process, so that its peak memory above its inputs is the process's peak
resident memory (``VmHWM``, reset once the data is built). The error is the relative output
error ``||act(X W^T + b) - act(X W0^T + b0)||_F / ||act(X W0^T + b0)||_F``, on the calibration
rows and on 4,096 held-out rows of the same distribution.

    python benchmarks/bench_scale.py [--quick] [--layers ...] [--rows ...] [--out PREFIX]

writes ``PREFIX.json``, ``PREFIX.txt`` and ``PREFIX.png`` (log-log time against P, one line per
method and layer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_and_out, log, quiet_single_thread, save_results, write_json  # noqa: E402,E501

SPARSITY = 0.7
HELD_OUT = 4096
METHODS = ("nettrim", "sparsegpt", "wanda", "magnitude")
#: layer -> (inputs N, outputs M, ReLU after it, rows to run by default)
LAYERS = {
    "512 linear": (512, 512, False, (4096, 16384, 65536, 131072)),
    "512 relu": (512, 512, True, (4096, 16384, 65536, 131072)),
    "768->3072": (768, 3072, False, (16384, 131072)),
    "3072->768": (3072, 768, False, (16384, 131072)),
    "2304->256 conv": (2304, 256, True, (4096, 16384, 65536)),
    "lenet fc1": (784, 300, True, (4096, 16384, 55000)),   # 60,000 images, 4,096 held out
}
QUICK = {"512 linear": (2048, 8192), "512 relu": (2048, 8192)}


def synthetic(N, M, relu, P, seed):
    """(X, W0, b0, act): correlated nonnegative inputs (rank 64 plus noise through a ReLU),
    a dense layer; the same draws for every method (seeded)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(64, N, generator=g) / 8.0
    W0 = torch.randn(M, N, generator=g) / math.sqrt(N)
    b0 = 0.1 * torch.randn(M, generator=g)

    def rows(count, seed_rows):
        gr = torch.Generator().manual_seed(seed_rows)
        return torch.relu(torch.randn(count, 64, generator=gr) @ mixing
                          + 0.3 * torch.randn(count, N, generator=gr))
    return rows(P, seed + 1), rows(HELD_OUT, seed + 2), W0, b0


def lenet_fc1(P, data_root):
    """MNIST rows (P of the training images, 4,096 held out after them) and the trained
    LeNet-300-100's first layer."""
    from nettrim.io.datasets import load_mnist
    from nettrim.models import pretrained

    model = pretrained("lenet_300_100", data_root=data_root)
    x, _ = load_mnist(data_root, train=True)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x = x.reshape(x.shape[0], -1)[perm]
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    if P + HELD_OUT > x.shape[0]:
        raise SystemExit(f"lenet fc1: at most {x.shape[0] - HELD_OUT} rows, asked {P}")
    return x[:P].float(), x[P:P + HELD_OUT].float(), layer.weight.detach(), layer.bias.detach()


def peak_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def run_cell(layer, P, method, data_root):
    """One (layer, P, method) cell in this process: a dict of the measures."""
    import nettrim
    from nettrim import baselines

    quiet_single_thread()
    nettrim.prune_layer, baselines.sparsegpt   # imported before the clock starts
    N, M, relu, _ = LAYERS[layer]
    if layer == "lenet fc1":
        X, X_held, W0, b0 = lenet_fc1(P, data_root)
    else:
        X, X_held, W0, b0 = synthetic(N, M, relu, P, seed=17)
    act = torch.relu if relu else (lambda z: z)
    Y = act(X @ W0.T + b0)
    Y_held = act(X_held @ W0.T + b0)
    resettable = peak_reset()
    start = vm_mb("VmRSS")
    t0 = time.perf_counter()
    if method == "nettrim":
        res = nettrim.prune_layer(X, Y, sparsity=SPARSITY, relu=relu, bias=True, W0=W0, b0=b0)
    else:
        fn = getattr(baselines, method)
        res = fn(W0, X, sparsity=SPARSITY, bias=b0, relu=relu, Y=Y)
    seconds = time.perf_counter() - t0
    peak = vm_mb("VmHWM") - start if resettable else float("nan")
    W, b = res.weight, res.bias if res.bias is not None else b0

    def error(Xs, Ys):
        return float(torch.linalg.vector_norm(act(Xs @ W.T.to(Xs) + b.to(Xs)) - Ys)
                     / torch.linalg.vector_norm(Ys))
    rep = res.report
    return dict(layer=layer, P=P, method=method, seconds=seconds, peak_mb=peak,
                error=error(X, Y), heldout=error(X_held, Y_held),
                sparsity=1.0 - int((W != 0).sum()) / W.numel(),
                status=rep.get("status"), program=rep.get("program"),
                iterations=rep.get("iterations"), compressed_rows=rep.get("compressed_rows"),
                note=rep.get("note"))


def cell_in_subprocess(layer, P, method, data_root, cache=None):
    """One cell in its own process; with ``cache`` (a folder) a finished cell is kept there and
    read back by a later run instead of rerun."""
    path = None
    if cache:
        path = Path(cache) / f"{layer.replace(' ', '_').replace('>', '')}-{P}-{method}.json"
        if path.exists():
            return json.loads(path.read_text())
    cmd = [sys.executable, __file__, "--cell", layer, str(P), method, "--data-root", data_root]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log(proc.stderr[-2000:])
        return dict(layer=layer, P=P, method=method, failed=proc.stderr.strip().splitlines()[-1:])
    cell = json.loads(proc.stdout.strip().splitlines()[-1])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cell)
    return cell


def table(cells, layers, methods):
    lines = []
    by = {(c["layer"], c["P"], c["method"]): c for c in cells}
    for layer in layers:
        rows = sorted({c["P"] for c in cells if c["layer"] == layer})
        if not rows:
            continue
        N, M, relu, _ = LAYERS[layer]
        lines.append(f"\n{layer} ({N} -> {M}, {'ReLU' if relu else 'linear'}, sparsity "
                     f"{SPARSITY:.0%}): seconds / peak MB above the inputs / error (held out)")
        head = f"{'P':>8}" + "".join(f"{m:>34}" for m in methods) + \
            f"{'nt/sgpt time':>14}{'nt/sgpt err':>13}"
        lines.append(head)
        for P in rows:
            line = f"{P:>8}"
            for m in methods:
                c = by.get((layer, P, m))
                if c is None or "failed" in c:
                    line += f"{'failed' if c else '-':>34}"
                    continue
                line += f"{c['seconds']:>9.2f} {c['peak_mb']:>6.0f} {c['error']:.4f} " \
                        f"({c['heldout']:.4f})".rjust(34)
            nt, sg = by.get((layer, P, "nettrim")), by.get((layer, P, "sparsegpt"))
            if nt and sg and "failed" not in nt and "failed" not in sg:
                line += f"{nt['seconds'] / sg['seconds']:>13.1f}x" \
                        f"{nt['heldout'] / sg['heldout']:>12.3f}x"
            lines.append(line)
        for P in rows:
            c = by.get((layer, P, "nettrim"))
            if c and "failed" not in c:
                lines.append(f"    nettrim P={P}: {c['status']}, program {c['program']}, "
                             f"{c['iterations']} iterations, compressed rows "
                             f"{c['compressed_rows']}, sparsity {c['sparsity']:.3f}")
    return lines


def targets(cells):
    """The issue's targets, each met or missed, from this run's cells."""
    by = {(c["layer"], c["P"], c["method"]): c for c in cells if "failed" not in c}
    out = []

    def ratio(layer, P, key="seconds"):
        nt, sg = by.get((layer, P, "nettrim")), by.get((layer, P, "sparsegpt"))
        return None if nt is None or sg is None else nt[key] / sg[key]

    def say(what, value, limit, unit="x"):
        if value is None:
            out.append(f"  {what}: not run")
        else:
            out.append(f"  {what}: {value:.2f}{unit} (target <= {limit}{unit}: "
                       f"{'met' if value <= limit else 'missed'})")
    say("512 linear, P=16384: time / SparseGPT", ratio("512 linear", 16384), 10)
    say("768->3072, P=131072: time / SparseGPT", ratio("768->3072", 131072), 10)
    a, b = by.get(("768->3072", 131072, "nettrim")), by.get(("768->3072", 16384, "nettrim"))
    say("768->3072: time at P=131072 / time at P=16384",
        None if a is None or b is None else a["seconds"] / b["seconds"], 1.5)
    say("512 relu, P=16384: time / SparseGPT", ratio("512 relu", 16384), 50)
    say("512 relu, P=16384: held-out error / SparseGPT's", ratio("512 relu", 16384, "heldout"),
        0.8)
    a, b = by.get(("512 relu", 16384, "nettrim")), by.get(("512 relu", 4096, "nettrim"))
    say("512 relu: time at P=16384 / time at P=4096",
        None if a is None or b is None else a["seconds"] / b["seconds"], 2)
    if a is not None and b is not None:
        out.append(f"  512 relu: held-out error at P=16384 {a['heldout']:.4f} vs P=4096 "
                   f"{b['heldout']:.4f} ({'not worse: met' if a['heldout'] <= b['heldout'] else 'worse: missed'})")
    within = [(k, ratio(*k[:2])) for k in by if k[2] == "nettrim" and ratio(*k[:2])]
    five = [k for k, r in within
            if r <= 5 and by[k]["heldout"] <= by[(k[0], k[1], "sparsegpt")]["heldout"]]
    out.append(f"  moonshot, within 5x of SparseGPT's time at equal or lower error: "
               f"{len(five)} of {len(within)} cells")
    return out


def plot(cells, layers, methods, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = dict(zip(methods, ("-", "--", ":", "-.")))
    for i, layer in enumerate(layers):
        for m in methods:
            pts = sorted((c["P"], c["seconds"]) for c in cells
                         if c["layer"] == layer and c["method"] == m and "failed" not in c)
            if pts:
                ax.plot(*zip(*pts), styles[m], marker="o", color=f"C{i}",
                        label=f"{layer}: {m}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("calibration rows P")
    ax.set_ylabel("seconds (one thread)")
    ax.set_title(f"Time against rows at {SPARSITY:.0%} sparsity")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two small layers at 2,048 and 8,192 rows")
    p.add_argument("--layers", nargs="+", choices=list(LAYERS), default=None)
    p.add_argument("--rows", nargs="+", type=int, default=None, help="P values (all layers)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--cache", default=None, help="keep finished cells in this folder")
    p.add_argument("--cell", nargs=3, metavar=("LAYER", "P", "METHOD"), help=argparse.SUPPRESS)
    add_data_and_out(p, "bench_scale")
    args = p.parse_args(argv)
    if args.cell:
        layer, P, method = args.cell
        print(json.dumps(run_cell(layer, int(P), method, args.data_root)))
        return 0
    layers = args.layers or (list(QUICK) if args.quick else list(LAYERS))
    t_start = time.perf_counter()
    cells = []
    for layer in layers:
        rows = args.rows or (QUICK[layer] if args.quick else LAYERS[layer][3])
        for P in rows:
            for m in args.methods:
                log(f"{layer} P={P} {m}")
                cells.append(cell_in_subprocess(layer, P, m, args.data_root, args.cache))
    lines = [f"bench_scale: torch {torch.__version__}, 1 thread, sparsity {SPARSITY}, "
             f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"]
    lines += table(cells, layers, args.methods)
    lines += ["", "targets (ratios to SparseGPT in this run):"] + targets(cells)
    lines.append(f"total {time.perf_counter() - t_start:.0f} s")
    print("\n".join(lines))
    save_results(args.out, {"cells": cells, "sparsity": SPARSITY}, lines)
    plot(cells, layers, args.methods, args.out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
