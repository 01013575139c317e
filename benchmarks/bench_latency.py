"""Does unstructured sparsity make a model faster or smaller? Measured, CPU, one thread.

LeNet-300-100 (MNIST, trained here, 3 epochs) and the plain CNN of bench_structured.py
(2 epochs) are pruned per layer by magnitude to each sparsity (the latency of a sparse layer
depends on its sparsity and shape, not on which method chose the zeros; Net-Trim's own models
are timed in bench_structured.py). For each: median CPU latency (ms) at batch 1 and 256 of the
model as stored (dense kernels), compacted (:func:`nettrim.compact`: dead units
removed) and :func:`nettrim.sparsify` (CSR kernels where measured faster at that batch), and
the checkpoint size, plain safetensors vs :func:`nettrim.save_sparse` (CSR arrays).

    python benchmarks/bench_latency.py [--sparsities 0 0.5 0.8 0.9 0.95 0.98 0.99]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nettrim  # noqa: E402
from bench_structured import MODELS, trained  # noqa: E402
from common import add_data_and_out, save_results, write_text  # noqa: E402
from nettrim.io.datasets import load_mnist  # noqa: E402
from nettrim.model.sparse import latency_report, save_sparse  # noqa: E402
from nettrim.models import accuracy  # noqa: E402



def shrunk(name: str, units: dict) -> torch.nn.Module:
    """The architecture of ``name`` with the given output units per layer (random weights:
    latency depends on the shapes only)."""
    from torch import nn

    from nettrim.models import mlp
    if name == "lenet":
        return mlp([784, units["1"], units["3"], 10]).eval()
    return nn.Sequential(nn.Conv2d(1, units["0"], 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(units["0"], units["3"], 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(units["3"] * 16, units["7"]), nn.ReLU(),
                         nn.Linear(units["7"], 10)).eval()


def structured_latency(results: str, repeats: int, out_path: str) -> None:
    """Re-time the shapes bench_structured.py produced, dense original vs shrunk, in one run
    (that run timed them while other benchmarks shared the CPU)."""
    from nettrim.model.surgery import measure_latency
    rows = [r for r in json.loads(Path(results).read_text())["rows"] if r["method"] == "nettrim"
            or r["method"] == "dense"]
    lines = ["structured Net-Trim shapes (bench_structured.py), median CPU ms, one thread",
             f"{'model':<6} {'frac':>5} {'params':>8} | {'b1 ms':>7} {'x dense':>7} | "
             f"{'b256 ms':>8} {'x dense':>7}"]
    base = {}
    for r in rows:
        model = shrunk(r["model"], r["units"])
        x = torch.zeros(256, 1, 28, 28).normal_()
        t1 = measure_latency(model, x[:1], repeats=repeats)
        t256 = measure_latency(model, x, repeats=repeats)
        if r["method"] == "dense":
            base[r["model"]] = (t1, t256)
        b1, b256 = base[r["model"]]
        lines.append(f"{r['model']:<6} {r['fraction']:>5.2f} {r['parameters']:>8} | {t1:>7.3f} "
                     f"{b1 / t1:>6.2f}x | {t256:>8.3f} {b256 / t256:>6.2f}x")
        print(lines[-1], flush=True)
    write_text(out_path, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sparsities", nargs="+", type=float,
                   default=[0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    p.add_argument("--repeats", type=int, default=50)
    add_data_and_out(p, "bench_latency")
    p.add_argument("--structured", metavar="BENCH_STRUCTURED.json",
                   help="only re-time the shapes of bench_structured.py's Net-Trim rows")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.structured:
        structured_latency(args.structured, args.repeats, args.out + "_structured.txt")
        return 0
    x, y = load_mnist(args.data_root, train=True)
    xt, yt = load_mnist(args.data_root, train=False)
    out = {"settings": dict(vars(args), threads=1, torch=torch.__version__), "rows": []}
    lines = []
    for name in args.models:
        model = trained(name, x, y)
        lines += [f"{name}: median CPU ms (one thread); sparse = CSR kernels where faster",
                  f"{'sparsity':>8} {'acc':>7} | {'b1 dense':>8} {'compact':>8} {'sparse':>8} | "
                  f"{'b256 dense':>10} {'compact':>8} {'sparse':>8} | {'dense KB':>8} "
                  f"{'CSR KB':>7}  sparse layers (b1 / b256)"]
        print(*lines[-2:], sep="\n", flush=True)
        for s in args.sparsities:
            pruned = model if s == 0 else nettrim.prune_baseline(model, xt[:256], "magnitude",
                                                                 s).model
            report = latency_report(pruned, xt[:8], repeats=args.repeats)
            with tempfile.TemporaryDirectory() as tmp:
                save_file({k: v.contiguous() for k, v in pruned.state_dict().items()},
                          f"{tmp}/dense.safetensors")
                dense_bytes = Path(f"{tmp}/dense.safetensors").stat().st_size
                csr_bytes = save_sparse(pruned, f"{tmp}/csr.safetensors")["bytes"]
            b1, b256 = report["batch_1"], report["batch_256"]
            acc = accuracy(pruned, xt, yt)
            row = dict(model=name, sparsity=s, accuracy=acc, latency=report,
                       dense_bytes=dense_bytes, csr_bytes=csr_bytes)
            out["rows"].append(row)

            def ms(v):
                return "-" if v is None else f"{v:.3f}"
            lines.append(f"{s:>8.0%} {acc:>7.2%} | {ms(b1['dense']):>8} {ms(b1['compacted']):>8} "
                         f"{ms(b1['sparse']):>8} | {ms(b256['dense']):>10} "
                         f"{ms(b256['compacted']):>8} {ms(b256['sparse']):>8} | "
                         f"{dense_bytes / 1024:>8.0f} {csr_bytes / 1024:>7.0f}  "
                         f"{b1['sparse_layers']} / {b256['sparse_layers']}")
            print(lines[-1], flush=True)
            save_results(args.out, out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
