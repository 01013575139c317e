"""Net-Trim beyond MLPs: a small ResNet, a MobileNet-style net and a small transformer.

Three models are trained on CPU on Fashion-MNIST (a few minutes each; cached, so a rerun skips
training):

* ``resnet``: a stem conv and three basic blocks (conv-BN-ReLU-conv-BN + skip, ReLU after the
  add; widths 16/32/64, 1x1 conv + BN on the strided skips), global average pool, Linear;
* ``mobilenet``: a stem conv, three depthwise-separable blocks (depthwise 3x3 + BN + ReLU,
  pointwise 1x1 + BN + ReLU; widths 32/64/96), global average pool, Linear;
* ``transformer``: 7x7 image patches as 16 tokens, a Linear patch embedding, a learned position
  embedding, two ``nn.TransformerEncoderLayer`` (d_model 64, 4 heads, feed-forward 128,
  ``activation="relu"``, batch first), mean pooling, LayerNorm, Linear.

Each model is pruned at each sparsity, every Linear / Conv2d at that sparsity, with Net-Trim
(``nettrim.prune(..., sparsity=s, mode="parallel" | "cascade")``) and with the baselines of
:mod:`nettrim.baselines` (``nettrim.prune_baseline``: magnitude, Wanda, SparseGPT; sequential,
each layer from the already-pruned layers' inputs as SparseGPT does). Reported per cell: test
accuracy without fine-tuning, the layers Net-Trim solved with the ReLU program (inequality
constraints off the active set) and how many of them kept its weights rather than the linear
program's (the report's ``program``: ``linear(relu)...`` where the linear program's post-ReLU
calibration error was lower), the number of Linear / Conv2d layers left unpruned
(skipped), and the seconds. Conv layers are captured as many patch rows: ``max_samples`` caps the
rows kept per layer (seeded subsample), the figure is printed with the table.

A method that fails on a model (capture or pruning raises) is recorded in its cell with the
error message; the run goes on. The table states the commit it was run on.

    python benchmarks/bench_archs.py [--quick] [--data-root DIR] [--cache DIR]
                                     [--models resnet mobilenet transformer]
                                     [--methods nt-parallel nt-cascade magnitude wanda sparsegpt]
                                     [--sparsities 0.5 0.7 0.9] [--out results/bench_archs.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

import nettrim
from nettrim.io.datasets import load_mnist
from nettrim.io.files import atomic_write
from nettrim.models import accuracy, train_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, log, write_json, write_text  # noqa: E402

RESULTS = HERE / "results"
NETTRIM_MODES = {"nt-parallel": "parallel", "nt-cascade": "cascade"}
BASELINES = ("magnitude", "wanda", "sparsegpt")
METHODS = list(NETTRIM_MODES) + list(BASELINES)
MODELS = ("resnet", "mobilenet", "transformer")
#: Training recipe per model: (training images, epochs, Adam learning rate).
TRAINING = {"resnet": (20000, 1, 2e-3), "mobilenet": (30000, 1, 3e-3),
            "transformer": (60000, 2, 2e-3)}
QUICK_TRAINING = (1000, 1)


# ---- models -------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the skip (identity or 1x1 conv + BN), ReLU after the add."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def _conv_bn_relu(c_in, c_out, kernel, stride=1, groups=1):
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


def mobilenet(widths=(16, 32, 64, 96), n_classes: int = 10) -> nn.Sequential:
    """Stem conv, then depthwise 3x3 + pointwise 1x1 blocks (each with BN + ReLU)."""
    layers = _conv_bn_relu(1, widths[0], 3)
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        layers += _conv_bn_relu(c_in, c_in, 3, stride=1 if i == 0 else 2, groups=c_in)
        layers += _conv_bn_relu(c_in, c_out, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], n_classes)]
    return nn.Sequential(*layers)


class PatchTransformer(nn.Module):
    """7x7 patches of a 28x28 image as 16 tokens; two encoder layers; mean pool; Linear."""

    def __init__(self, patch: int = 7, dim: int = 64, heads: int = 4, ff: int = 128,
                 depth: int = 2, n_classes: int = 10):
        super().__init__()
        self.patch = patch
        n_tokens = (28 // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, n_tokens, dim))
        self.encoder = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="relu",
                                       batch_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        p = self.patch
        tokens = x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, p * p)
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(self.norm(h.mean(1)))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return {"resnet": SmallResNet, "mobilenet": mobilenet, "transformer": PatchTransformer}[name]()


# ---- helpers ------------------------------------------------------------------------------------
def commit_of_tree() -> str:
    """The checked-out commit (with '+changes' when the work tree differs), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nettrim", "solvers"],
                               cwd=HERE, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def layer_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def relu_layers(result, model, *, detected: bool = False) -> int:
    """Layers whose ReLU-aware solution Net-Trim kept: the report's ``program`` shows the ReLU
    program (``relu``, ``relu+bn+offset``, ``relu6+bn+groups=16``, ...) or the ReLU-aware refit
    (``relu+soft``, ``linear(relu)+soft``: the post-ReLU least squares on the ReLU or the linear
    program's support); ``linear(gelu)``, ``skipped``, and ``linear(relu)+...`` without
    ``+soft``, a ReLU layer whose linear fit had the lower post-ReLU calibration error, are
    not. ``detected``: the layers with a ReLU program
    solved, kept or not (``linear(relu...`` counted too).
    For a baseline, whose report has no program, what ``nettrim.detect_activations`` reads
    (ReLU and ReLU6) for the reported layers: the layers the baselines' ReLU-aware error uses."""
    rows = result.report
    if rows and getattr(rows[0], "program", None):
        if detected:
            return sum(1 for r in rows if str(r.program).startswith(("relu", "linear(relu")))
        return sum(1 for r in rows if str(r.program).startswith("relu") or "+soft" in r.program)
    try:
        detected = nettrim.detect_activations(model)
    except Exception:  # noqa: BLE001 - a count we cannot read is reported as unknown
        return -1
    return sum(1 for r in rows if detected.get(r.name) in ("relu", "relu6"))


def skipped_layers(result, model) -> int:
    """Linear / Conv2d layers of the model that the run left unpruned (not solved)."""
    done = {r.name for r in result.report
            if not str(r.status).upper().startswith("SKIP") and r.nonzeros_after < r.total}
    return sum(1 for n in layer_names(model) if n not in done)


# ---- training (cached) --------------------------------------------------------------------------
def trained_model(name, args, x_train, y_train, x_test, y_test):
    """The trained model and its record (accuracy, training seconds), from the cache if there."""
    n, epochs, lr = TRAINING[name]
    if args.quick:
        n, epochs = QUICK_TRAINING
    n = args.train_images or n
    tag = f"{name}_{args.dataset}_n{n}_e{epochs}"
    path = Path(args.cache) / f"{tag}.pt"
    model = build(name)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        record = saved["record"]
        log(f"{name}: loaded {path} (trained in {record['train_seconds']:.0f} s)")
        return model.eval(), record
    log(f"{name}: training on {n} images, {epochs} epoch(s)")
    t0 = time.perf_counter()
    train_classifier(model, x_train[:n], y_train[:n], epochs=epochs, lr=lr, batch_size=128)
    seconds = time.perf_counter() - t0
    model.eval()
    record = dict(train_images=n, epochs=epochs, lr=lr, train_seconds=seconds,
                  parameters=sum(p.numel() for p in model.parameters()),
                  layers=len(layer_names(model)),
                  accuracy=accuracy(model, x_test, y_test))
    log(f"{name}: {seconds:.0f} s, test accuracy {record['accuracy']:.4f}")
    atomic_write(path, lambda temp: torch.save({"state_dict": model.state_dict(),
                                                "record": record}, temp))
    return model, record


# ---- one cell -----------------------------------------------------------------------------------
def run_cell(model, method, sparsity, calib, x_test, y_test, args):
    """Prune ``model`` with ``method`` at ``sparsity``; a failure is returned as its message."""
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if method in NETTRIM_MODES:
                result = nettrim.prune(model, calib, sparsity=sparsity,
                                       mode=NETTRIM_MODES[method], max_samples=args.max_samples,
                                       solver_options=args.solver_options)
            else:
                result = nettrim.prune_baseline(model, calib, method, sparsity,
                                                max_samples=args.max_samples)
        seconds = time.perf_counter() - t0
        pruned = [r for r in result.report if not str(r.status).upper().startswith("SKIP")]
        kept = sum(r.nonzeros_after for r in pruned)     # over the layers pruned (the skipped
        total = sum(r.total for r in pruned)             # in_proj is dense for every method)
        return dict(accuracy=accuracy(result.model, x_test, y_test), seconds=seconds,
                    relu_layers=relu_layers(result, model) if method in NETTRIM_MODES else None,
                    relu_detected=relu_layers(result, model, detected=True)
                    if method in NETTRIM_MODES else None,
                    pruned_layers=len(result.report),
                    skipped_layers=skipped_layers(result, model),
                    sparsity=1.0 - kept / total if total else 0.0,
                    warnings=sorted({str(w.message).split(";")[0][:160] for w in caught}))
    except Exception as err:  # noqa: BLE001 - one failing cell must not stop the benchmark
        log(f"  {method} failed: {type(err).__name__}: {err}")
        return dict(error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - t0,
                    where=traceback.format_exc(limit=-2).strip().splitlines()[-3:])


# ---- tables -------------------------------------------------------------------------------------
def format_table(payload) -> str:
    lines = [f"bench_archs on commit {payload['commit']} ({payload['date']}); "
             f"{payload['dataset']}, calibration {payload['calibration']} training images, "
             f"test {payload['test_images']} images, max_samples {payload['max_samples']} rows "
             f"per layer, no fine-tuning; torch threads {payload['threads']}", ""]
    lines.append("trained models:")
    for name, rec in payload["models"].items():
        lines.append(f"  {name:12s} {rec['parameters']:7d} parameters, {rec['layers']:2d} "
                     f"Linear/Conv2d layers, trained on {rec['train_images']} images x "
                     f"{rec['epochs']} epoch(s) in {rec['train_seconds']:.0f} s, test accuracy "
                     f"{100 * rec['accuracy']:.2f}%")
    lines.append("")
    head = f"{'model':12s} {'method':12s} {'sparsity':>8s} {'acc %':>7s} {'reached':>7s} " \
           f"{'relu':>5s} {'skip':>4s} {'sec':>7s}  note"
    lines += [head, "-" * len(head)]
    errors = {}
    for cell in payload["cells"]:
        r = cell["result"]
        start = f"{cell['model']:12s} {cell['method']:12s} {cell['sparsity']:8.2f}"
        if "error" in r:
            key = r["error"]
            errors.setdefault(key, len(errors) + 1)
            lines.append(f"{start} {'-':>7s} {'-':>7s} {'-':>5s} {'-':>4s} {r['seconds']:7.1f}"
                         f"  failed [{errors[key]}]")
        else:
            note = "; ".join(r["warnings"])[:60]
            relu = "-" if r["relu_layers"] is None else f"{r['relu_layers']}/" \
                f"{r.get('relu_detected', r['relu_layers'])}"
            lines.append(f"{start} {100 * r['accuracy']:7.2f} {100 * r['sparsity']:6.1f}% "
                         f"{relu:>5s} {r['skipped_layers']:4d} {r['seconds']:7.1f}"
                         f"  {note}")
    if errors:
        lines += ["", "failures:"]
        lines += [f"  [{i}] {msg}" for msg, i in errors.items()]
    lines += ["", "relu: K/D, of the D layers Net-Trim solved with the ReLU program "
              "(inequalities off the active set), the K where it kept that program's weights "
              "(the others kept the linear program's, whose post-ReLU calibration error was "
              "lower: program='auto'); skip: Linear/Conv2d layers left unpruned; reached: the weight sparsity over "
              "the pruned layers; sec: wall seconds of the pruning call (capture included). "
              "The transformer's q/k/v projection (nn.MultiheadAttention.in_proj_weight, a bare "
              "parameter) stays dense with every method; Net-Trim lists it as skipped."]
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny run: models trained on 1000 images, 32 calibration images, "
                        "256 rows per layer, 500 test images, sparsity 0.5, ADMM capped at "
                        "100 iterations")
    p.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA", "../shared/data"),
                   help="directory with the dataset files (default $NETTRIM_DATA or "
                        "../shared/data)")
    p.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--cache", default=str(RESULTS / "cache_archs"),
                   help="where trained models are kept (gitignored)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--sparsities", nargs="+", type=float, default=None,
                   help="per-layer sparsities (default 0.5 0.7 0.9; --quick: 0.5)")
    p.add_argument("--calibration", type=int, default=None,
                   help="calibration images (default 256; --quick: 64)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="rows kept per layer (default 3000; --quick: 400)")
    p.add_argument("--test", type=int, default=None,
                   help="test images (default all 10000; --quick: 500)")
    p.add_argument("--train-images", type=int, default=None,
                   help="training images per model (default: the model's recipe, TRAINING; "
                        "--quick: 1000)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2 threads, torch 2.13.0+cpu returned "
                        "invalid pivots from batched LU factorizations here, which the "
                        "refit of solvers/refit.py uses)")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results/bench_archs.json; --quick: "
                        "none unless given); the table goes next to it as .txt")
    args = p.parse_args(argv)
    quick = args.quick
    args.sparsities = args.sparsities or ([0.5] if quick else [0.5, 0.7, 0.9])
    args.calibration = args.calibration or (32 if quick else 256)
    args.max_samples = args.max_samples or (256 if quick else 3000)
    args.test = args.test or (500 if quick else 10000)
    args.solver_options = {"max_iter": 100} if quick else None
    if args.out is None and not quick:
        args.out = str(RESULTS / "bench_archs.json")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x_train, y_train = load_mnist(args.data_root, train=True, dataset=args.dataset,
                                  download=False)
    x_test, y_test = load_mnist(args.data_root, train=False, dataset=args.dataset,
                                download=False)
    x_test, y_test = x_test[:args.test], y_test[:args.test]
    gen = torch.Generator().manual_seed(1)
    calib = x_train[torch.randperm(x_train.shape[0], generator=gen)[:args.calibration]]
    payload = dict(commit=commit_of_tree(), date=time.strftime("%Y-%m-%d %H:%M UTC",
                                                               time.gmtime()),
                   dataset=args.dataset, calibration=args.calibration, test_images=args.test,
                   max_samples=args.max_samples, threads=args.threads, quick=args.quick,
                   sparsities=args.sparsities, methods=args.methods, models={}, cells=[])
    for name in args.models:
        model, record = trained_model(name, args, x_train, y_train, x_test, y_test)
        if args.quick or args.test != 10000:
            record = dict(record, accuracy=accuracy(model, x_test, y_test))
        payload["models"][name] = record
        for sparsity in args.sparsities:
            for method in args.methods:
                log(f"{name} {method} {sparsity}")
                result = run_cell(model, method, sparsity, calib, x_test, y_test, args)
                payload["cells"].append(dict(model=name, method=method, sparsity=sparsity,
                                             result=result))
    text = format_table(payload)
    print(text)
    if args.out:
        write_json(args.out, payload)
        write_text(Path(args.out).with_suffix(".txt"), text)
    return payload


if __name__ == "__main__":
    main()
