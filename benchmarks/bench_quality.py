"""Pruning quality: Net-Trim against the layer-wise baselines, measured in one run.

(a) Per layer, at each sparsity: the relative output error
    ``||act(X W-hat^T + b-hat) - Y||_F / ||Y||_F`` (act = ReLU on hidden layers, identity on the
    last, linear layer; Y the unpruned layer's output on the same X) and the seconds per layer,
    for
      * Net-Trim through ``nettrim.prune_layer(X, Y, sparsity=s, bias=True, ...)``: plain l1,
        with ``refit=True``, and with ``reweight=1, refit=True`` (the defaults; the bias is refit,
        unpenalized), optionally (``--methods ... nt-rw3+refit``) with ``reweight=3``;
      * the baselines of :mod:`nettrim.baselines`: magnitude, Wanda, L-OBS, SparseGPT and
        ALPS (bias kept).
    Layers: the three layers of LeNet-300-100 trained on MNIST (calibration: a seeded random
    subset of the training images) and one synthetic dense ReLU layer. The same error is also
    measured on held-out inputs (other training images, never in the calibration set; fresh
    draws for the synthetic layer): a method that fits the calibration rows too closely shows
    it there.
(b) The whole network: every layer pruned at the same sparsity with each method, from the
    ORIGINAL network's layer inputs (parallel, i.e. the per-layer solutions of (a) put
    together; no method sees the inputs of already-pruned layers), then MNIST test accuracy
    without and with one epoch of masked fine-tuning (:func:`nettrim.finetune`, Adam).

Net-Trim reaches a target sparsity by bisection on epsilon: its achieved sparsity is within
0.005 of the target (printed); the baselines hit it exactly.

A full run is long on a small CPU (the Net-Trim cells of the 784 -> 300 layer take minutes
each). With ``--cache DIR`` every finished cell (weights, bias and figures) is saved there as a
safetensors file, atomically, and a rerun with the same settings loads it instead of solving
again: an interrupted run resumes, and several processes can share the work (e.g. one per
sparsity) before a last run over everything assembles the tables. A cached cell records the
settings it was computed with and is recomputed when they differ; delete the directory after
changing the solvers.

    python benchmarks/bench_quality.py [--quick] [--data-root DIR] [--samples 5000]
                                       [--sparsities 0.5 0.8 0.9 0.95] [--cache DIR]
                                       [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import nettrim
from nettrim import baselines
from nettrim.io.datasets import load_mnist
from nettrim.io.files import atomic_write
from nettrim.models import accuracy, pretrained
from nettrim.training.finetune import finetune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, write_json  # noqa: E402

NETTRIM = {  # column name -> prune_layer flags
    "nt-plain": dict(refit=False, reweight=0),
    "nt-refit": dict(refit=True, reweight=0),
    "nt-rw+refit": dict(refit=True, reweight=1),
    "nt-rw3+refit": dict(refit=True, reweight=3),   # opt-in (--methods): 2-3x the time
}
BASELINE_COLUMNS = {"magnitude": "magnitude", "wanda": "wanda", "lobs": "lobs",
                    "sparsegpt": "sparsegpt", "alps": "alps"}
METHODS = list(NETTRIM) + list(BASELINE_COLUMNS)
DEFAULT_METHODS = [m for m in METHODS if m != "nt-rw3+refit"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small run: 300 samples, sparsity 0.9, ADMM capped at 300 iterations, "
                        "fine-tuning on 2000 images, test on 1000")
    p.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA", "../shared/data"),
                   help="directory with the MNIST files (default $NETTRIM_DATA or ../shared/data)")
    p.add_argument("--samples", type=int, default=None,
                   help="calibration images (default 5000; --quick 500)")
    p.add_argument("--sparsities", type=float, nargs="+", default=None,
                   help="target sparsities (default 0.5 0.8 0.9 0.95; --quick 0.5 0.9)")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS,
                   help="columns to run (default: all but nt-rw3+refit)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to run: fc1 fc2 fc3 synthetic (default all); the whole-network "
                        "part (b) needs fc1 fc2 fc3")
    p.add_argument("--heldout", type=int, default=None,
                   help="held-out inputs for the per-layer error (default 5000; --quick 500)")
    p.add_argument("--finetune-samples", type=int, default=None,
                   help="training images for the one fine-tuning epoch (default all 60000; "
                        "--quick 5000)")
    p.add_argument("--test-samples", type=int, default=None,
                   help="MNIST test images for the accuracy (default all 10000; --quick 2000)")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning Adam learning rate")
    p.add_argument("--synthetic", nargs=3, type=int, default=None, metavar=("P", "N", "M"),
                   help="synthetic layer size (default 2000 256 128; --quick 400 64 32)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="ADMM iteration cap per Net-Trim solve (default: the solver's; "
                        "--quick 300); a capped solve is flagged in the notes")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset and data")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache", default=None,
                   help="directory for finished cells (resume an interrupted run, or split the "
                        "work between processes); default: no cache")
    p.add_argument("--out", default=None, help="also write all figures as JSON here (atomically)")
    args = p.parse_args(argv)
    q = args.quick
    args.samples = args.samples or (300 if q else 5000)
    args.sparsities = args.sparsities or ([0.9] if q else [0.5, 0.8, 0.9, 0.95])
    args.heldout = args.heldout or (500 if q else 5000)
    args.finetune_samples = args.finetune_samples or (2000 if q else 60000)
    args.test_samples = args.test_samples or (1000 if q else 10000)
    if q and args.max_iter is None:
        args.max_iter = 300
    args.synthetic = args.synthetic or ([400, 64, 32] if q else [2000, 256, 128])
    for s in args.sparsities:
        if not 0 <= s < 1:
            p.error(f"--sparsities: each must be in [0, 1), got {s}")
    return args


def relative_error(X, W, b, Y, relu):
    out = X @ W.T.to(X.dtype) + (0 if b is None else b.to(X.dtype))
    out = torch.relu(out) if relu else out
    return float(torch.linalg.vector_norm(out - Y) / torch.linalg.vector_norm(Y))


def synthetic_layer(P, N, M, seed, heldout=0):
    """A dense ReLU layer on nonnegative, correlated inputs: (X, W0, b0, X_heldout).

    ``X_heldout`` (heldout, N) are fresh draws from the same input distribution.
    """
    g = torch.Generator().manual_seed(seed + 100)
    latent = torch.randn(P, N // 4, generator=g)
    mixing = torch.randn(N // 4, N, generator=g)

    def inputs(latent, gen):  # nonnegative inputs correlated through the shared mixing
        noise = torch.randn(len(latent), N, generator=gen)
        return torch.relu(latent @ mixing / math.sqrt(N / 4) + 0.3 * noise)

    X = inputs(latent, g)
    W0 = torch.randn(M, N, generator=g) / math.sqrt(N)
    b0 = 0.1 * torch.randn(M, generator=g)
    g_held = torch.Generator().manual_seed(seed + 200)
    X_held = inputs(torch.randn(heldout, N // 4, generator=g_held), g_held)
    return X, W0, b0, X_held


def run_cell(method, X, Y, W0, b0, relu, s, max_iter=None):
    """One (layer, method, sparsity): (weight, bias, error, seconds, achieved sparsity, note)."""
    t0 = time.perf_counter()
    note = ""
    if method in NETTRIM:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opts = None if max_iter is None else {"max_iter": max_iter}
            r = nettrim.prune_layer(X, Y, sparsity=s, bias=True, relu=relu, W0=W0, b0=b0,
                                    solver_options=opts, **NETTRIM[method])
        if r.report["status"] not in ("OPTIMAL", "OPTIMAL_INACCURATE"):
            note = r.report["status"]
        elif caught:
            note = "warned"
    else:
        r = baselines.BASELINES[BASELINE_COLUMNS[method]](W0, X, sparsity=s, bias=b0, relu=relu,
                                                          Y=Y)
    seconds = time.perf_counter() - t0
    W, b = r.weight, (r.bias if r.bias is not None else b0)
    err = relative_error(X, W, b, Y, relu)
    achieved = 1.0 - int((W != 0).sum()) / W.numel()
    return dict(weight=W, bias=b, error=err, seconds=seconds, sparsity=achieved, note=note)


CELL_FIGURES = ("error", "seconds", "sparsity", "note")


def cell_settings(args, lname, method, s):
    """What a cell's result depends on (besides the code): the cache key."""
    settings = dict(layer=lname, method=method, sparsity=s, samples=args.samples, seed=args.seed,
                    max_iter=args.max_iter if method in NETTRIM else None)
    if lname == "synthetic":
        settings["synthetic"] = list(args.synthetic)
    return settings


def cached_cell(cache, settings):
    """The cached cell for ``settings``, or None (missing, or computed with other settings)."""
    path = Path(cache) / f"{settings['layer']}-{settings['method']}-{settings['sparsity']}.safetensors"
    if not path.exists():
        return path, None
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads(f.metadata()["cell"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        log(f"cache: ignoring unreadable {path} ({exc})")
        return path, None
    if meta["settings"] != settings:
        return path, None
    return path, dict(weight=tensors["weight"], bias=tensors.get("bias"),
                      **{k: meta[k] for k in CELL_FIGURES})


def save_cell(path, settings, cell):
    tensors = {"weight": cell["weight"].contiguous()}
    if cell["bias"] is not None:
        tensors["bias"] = cell["bias"].contiguous()
    meta = json.dumps(dict(settings=settings, **{k: cell[k] for k in CELL_FIGURES}))
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata={"cell": meta}))


def per_layer(args, layers_data, heldout=None):
    """Part (a): {layer: {sparsity: {method: cell}}}.

    ``heldout`` maps a layer to its held-out ``(X, Y)``; each cell then also gets
    ``heldout_error`` (computed from its weights, so cached cells get it too).
    """
    heldout = heldout or {}
    results = {}
    for lname, (X, Y, W0, b0, relu) in layers_data.items():
        results[lname] = {}
        for s in args.sparsities:
            results[lname][s] = {}
            for method in args.methods:
                settings = cell_settings(args, lname, method, s)
                path, cell = cached_cell(args.cache, settings) if args.cache else (None, None)
                cached = cell is not None
                if not cached:
                    try:
                        cell = run_cell(method, X, Y, W0, b0, relu, s, args.max_iter)
                    except Exception as exc:  # noqa: BLE001 - report the failure in the table
                        cell = dict(weight=None, bias=None, error=float("nan"),
                                    seconds=float("nan"), sparsity=float("nan"),
                                    note=f"{type(exc).__name__}: {exc}")
                    if path is not None and cell["weight"] is not None:
                        save_cell(path, settings, cell)
                cell["heldout_error"] = float("nan")
                if lname in heldout and cell["weight"] is not None:
                    cell["heldout_error"] = relative_error(*heldout[lname][:1], cell["weight"],
                                                           cell["bias"], heldout[lname][1], relu)
                results[lname][s][method] = cell
                log(f"{lname:>10} s={s:.2f} {method:>12}: err {cell['error']:.4f} "
                    f"(held-out {cell['heldout_error']:.4f}) sparsity {cell['sparsity']:.4f} {cell['seconds']:.1f}s {cell['note']}"
                    + (" (cached)" if cached else ""))
    return results


#: Ratio columns of the layer table: Net-Trim variant / SparseGPT.
RATIOS = ("nt-refit", "nt-rw+refit", "nt-rw3+refit")


def _error_rows(by_s, methods, sparsities, key, seconds):
    """One row per sparsity: each method's ``key`` error, ratios to SparseGPT, the best."""
    width = 17 if seconds else 13
    ratios = [m for m in RATIOS if m in methods] if "sparsegpt" in methods else []
    head = f"{'sparsity':>8} " + "".join(f"{m:>{width}}" for m in methods)
    head += "".join(f"{m.replace('nt-', '') + '/sgpt':>15}" for m in ratios) + f"{'best':>13}"
    lines = [head]
    for s in sparsities:
        cells = by_s[s]
        row = f"{100 * s:>7.0f}% "
        for m in methods:
            c = cells[m]
            txt = "fail" if math.isnan(c[key]) else f"{c[key]:.4f}"
            if seconds and not math.isnan(c[key]):
                txt += f" ({c['seconds']:.1f})"
            row += f"{txt:>{width}}"
        for m in ratios:
            a, b = cells[m][key], cells["sparsegpt"][key]
            row += f"{(a / b if b > 0 else float('nan')):>15.3f}"
        finite = {m: cells[m][key] for m in methods if not math.isnan(cells[m][key])}
        row += f"{(min(finite, key=finite.get) if finite else '-'):>13}"
        lines.append(row)
    return lines


def format_layer_table(results, shapes, methods, sparsities, heldout_note=""):
    lines = []
    for lname, by_s in results.items():
        lines.append(f"\nlayer {lname}  {shapes[lname]}")
        lines.append("relative output error on the calibration inputs (seconds)")
        lines += _error_rows(by_s, methods, sparsities, "error", seconds=True)
        if not all(math.isnan(by_s[s][m]["heldout_error"]) for s in sparsities for m in methods):
            lines.append(f"relative output error on held-out inputs{heldout_note}")
            lines += _error_rows(by_s, methods, sparsities, "heldout_error", seconds=False)
        nt = [m for m in methods if m in NETTRIM]
        if nt:
            lines.append("  Net-Trim achieved sparsity: " + "; ".join(
                f"{100 * s:.0f}%: " + ", ".join(f"{m} {100 * by_s[s][m]['sparsity']:.1f}%" for m in nt)
                for s in sparsities))
        notes = [f"{100 * s:.0f}% {m}: {by_s[s][m]['note']}" for s in sparsities for m in methods
                 if by_s[s][m]["note"]]
        if notes:
            lines.append("  notes: " + "; ".join(notes))
    return "\n".join(lines)


def whole_network(args, model, names, results, x_test, y_test, x_ft, y_ft):
    """Part (b): {sparsity: {method: (acc, acc after fine-tuning)}}."""
    modules = dict(model.named_modules())
    out = {}
    for s in args.sparsities:
        out[s] = {}
        for method in args.methods:
            cells = [results[n][s][method] for n in names]
            if any(c["weight"] is None for c in cells):
                out[s][method] = (float("nan"), float("nan"), float("nan"))
                continue
            pruned = copy.deepcopy(model)
            pm = dict(pruned.named_modules())
            for n, c in zip(names, cells):
                nettrim.set_layer_weight(pm[n], c["weight"].to(modules[n].weight.dtype),
                                         c["bias"].to(modules[n].weight.dtype))
            total = sum(pm[n].weight.numel() for n in names)
            zeros = sum(int((pm[n].weight == 0).sum()) for n in names)
            acc0 = accuracy(pruned, x_test, y_test)
            t0 = time.perf_counter()
            finetune(pruned, (x_ft, y_ft), epochs=1, lr=args.ft_lr, seed=args.seed)
            acc1 = accuracy(pruned, x_test, y_test)
            zeros_after = sum(int((pm[n].weight == 0).sum()) for n in names)
            assert zeros_after >= zeros, "fine-tuning revived pruned weights"
            out[s][method] = (acc0, acc1, zeros / total)
            log(f"  network s={s:.2f} {method:>12}: acc {acc0:.4f} -> {acc1:.4f} after FT "
                f"({time.perf_counter() - t0:.1f}s)")
    return out


def format_network_table(net, methods, sparsities, acc_dense):
    width = 17
    lines = [f"\nwhole network (LeNet-300-100, MNIST test, dense accuracy {acc_dense:.4f}):",
             "test accuracy without -> with one epoch of masked fine-tuning "
             "(all layers pruned; every method from the original inputs)",
             f"{'sparsity':>8} " + "".join(f"{m:>{width}}" for m in methods)
             + f"{'best (no FT)':>14}"]
    for s in sparsities:
        row = f"{100 * s:>7.0f}% "
        for m in methods:
            a0, a1, _ = net[s][m]
            txt = "fail" if math.isnan(a0) else f"{a0:.4f}->{a1:.4f}"
            row += f"{txt:>{width}}"
        finite = {m: net[s][m][0] for m in methods if not math.isnan(net[s][m][0])}
        row += f"{(max(finite, key=finite.get) if finite else '-'):>14}"
        lines.append(row)
    lines.append("  overall weight sparsity of the pruned networks: " + "; ".join(
        f"{100 * s:.0f}%: " + ", ".join(f"{m} {100 * net[s][m][2]:.1f}%" for m in methods
                                        if not math.isnan(net[s][m][2]))
        for s in sparsities))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    root = args.data_root
    model = pretrained("lenet_300_100", data_root=root)
    x_train, y_train = load_mnist(root, train=True)
    x_test, y_test = load_mnist(root, train=False)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(x_train.shape[0], generator=g)
    calib = x_train[perm[:args.samples]]
    held = x_train[perm[args.samples:args.samples + args.heldout]]
    x_ft, y_ft = x_train[perm[:args.finetune_samples]], y_train[perm[:args.finetune_samples]]
    x_test, y_test = x_test[:args.test_samples], y_test[:args.test_samples]

    data = nettrim.capture(model, calib)
    data_held = nettrim.capture(model, held)
    modules = dict(model.named_modules())
    names = list(data)
    layers_data, heldout, shapes = {}, {}, {}
    for i, n in enumerate(names):
        d = data[n]
        relu = d.activation == "relu"
        W0 = modules[n].weight.detach().reshape(modules[n].weight.shape[0], -1)
        b0 = modules[n].bias.detach()
        label = f"fc{i + 1}"
        layers_data[label] = (d.X, d.post, W0, b0, relu)
        heldout[label] = (data_held[n].X, data_held[n].post)
        shapes[label] = (f"{W0.shape[1]}->{W0.shape[0]}, {'relu' if relu else 'linear'}, "
                         f"P={d.X.shape[0]} MNIST calibration images")
    P, N, M = args.synthetic
    X, W0, b0, X_held = synthetic_layer(P, N, M, args.seed, heldout=args.heldout)
    layers_data["synthetic"] = (X, torch.relu(X @ W0.T + b0), W0, b0, True)
    heldout["synthetic"] = (X_held, torch.relu(X_held @ W0.T + b0))
    shapes["synthetic"] = f"{N}->{M}, relu, P={P} correlated nonnegative random inputs"

    if args.layers is not None:
        unknown = sorted(set(args.layers) - set(layers_data))
        if unknown:
            msg = f"--layers: unknown {unknown}; choose from {list(layers_data)}"
            raise SystemExit(msg)
        layers_data = {k: v for k, v in layers_data.items() if k in args.layers}
        shapes = {k: shapes[k] for k in layers_data}
    log(f"calibration: {args.samples} images; methods {args.methods}; sparsities {args.sparsities}")
    results = per_layer(args, layers_data, heldout)
    acc_dense = accuracy(model, x_test, y_test)
    labels = [f"fc{i + 1}" for i in range(len(names))]
    net = None
    if all(lab in results for lab in labels):
        by_name = {n: results[lab] for n, lab in zip(names, labels)}
        net = whole_network(args, model, names, by_name, x_test, y_test, x_ft, y_ft)

    print(f"bench_quality: LeNet-300-100 on MNIST, {args.samples} calibration images "
          f"(seed {args.seed}); torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (" [--quick]" if args.quick else ""))
    print(format_layer_table(results, shapes, args.methods, args.sparsities,
                             f" ({args.heldout} inputs outside the calibration set)"))
    if net is None:
        print("\nwhole network: skipped (--layers does not include fc1 fc2 fc3)")
        net = {}
    else:
        print(format_network_table(net, args.methods, args.sparsities, acc_dense))
    print(f"\nfine-tuning: 1 epoch, Adam lr {args.ft_lr}, {args.finetune_samples} training "
          f"images; test accuracy on {args.test_samples} test images")
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.out:
        payload = {
            "args": {k: v for k, v in vars(args).items()},
            "layers": {lab: {str(s): {m: {k: c[k] for k in CELL_FIGURES + ("heldout_error",)}
                                      for m, c in by_s.items()} for s, by_s in r.items()}
                       for lab, r in results.items()},
            "network": {"dense_accuracy": acc_dense,
                        **{str(s): {m: {"accuracy": v[0], "accuracy_finetuned": v[1],
                                        "sparsity": v[2]} for m, v in row.items()}
                           for s, row in net.items()}},
        }
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
