"""A CNN with a wide, underdetermined dense layer: Net-Trim's cascade against SparseGPT on the
whole model, measured in one run.

The model is a residual CNN for MNIST as users build them: ``conv 1->32 3x3, BN, ReLU``,
``conv 32->64 3x3 stride 2, BN, ReLU``, one residual block of two ``64->64 3x3`` convolutions
with BN, ``max-pool 2`` (64 x 7 x 7), ``flatten``, ``Linear 3136 -> 256, ReLU``,
``Linear 256 -> 10``. It is trained for ``--epochs`` on ``--train-images`` of MNIST's training
set (cached under ``~/.cache/nettrim``). Its dense layer sees 512 calibration rows for 3,136
inputs: more inputs than rows.

Both methods prune every Conv2d and Linear layer at ``--sparsity`` (default 0.9) from the same
512 training images: Net-Trim with ``nettrim.prune(mode="cascade")`` (defaults otherwise),
SparseGPT with ``nettrim.prune_baseline(method="sparsegpt")`` (sequential, as its paper runs
it). The table gives the time, each layer's status, and the test accuracy without fine-tuning.

    python benchmarks/bench_wide.py [--samples 512] [--sparsity 0.9] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_data_and_out, log, quiet_single_thread, save_results  # noqa: E402

import nettrim  # noqa: E402
from nettrim.io.datasets import load_mnist  # noqa: E402
from nettrim.models import accuracy, train_classifier  # noqa: E402

CACHE = Path.home() / ".cache" / "nettrim"


class Block(nn.Module):
    """A residual block: two 3x3 convolutions with BN, the input added before the last ReLU."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


def residual_cnn():
    """(batch, 1, 28, 28) -> (batch, 10) logits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        Block(64), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))


def trained_model(data_root, epochs, images):
    path = CACHE / f"bench_wide_rescnn_e{epochs}_n{images}.pt"
    model = residual_cnn()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    log(f"training the residual CNN on {images} images for {epochs} epochs (cached in {path})")
    x, y = load_mnist(data_root, train=True)
    x, y = x[-images:], y[-images:]   # the last images: the calibration set draws from all
    train_classifier(model, x, y, epochs=epochs, seed=0, progress=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def statuses(result):
    """{layer: "status, seconds, program"} of a PruneResult's report."""
    return {row.name: f"{row.status} {row.seconds:.1f} s" + (f" {row.program}" if row.program
                                                            else "")
            for row in result.report}


def weight_sparsity(model):
    """Fraction of zeros over the Conv2d and Linear weights."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=512, help="calibration images")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=1, help="training epochs of the dense model")
    p.add_argument("--train-images", type=int, default=12000,
                   help="MNIST training images the dense model is trained on")
    add_data_and_out(p, "bench_wide")
    args = p.parse_args(argv)
    quiet_single_thread()
    model = trained_model(args.data_root, args.epochs, args.train_images)
    x, _ = load_mnist(args.data_root, train=True)
    calib = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:args.samples]]
    xt, yt = load_mnist(args.data_root, train=False)
    dense = accuracy(model, xt, yt)

    runs = {}
    for name, call in (
            ("sparsegpt", lambda: nettrim.prune_baseline(model, calib, "sparsegpt", args.sparsity)),
            ("nettrim cascade", lambda: nettrim.prune(model, calib, sparsity=args.sparsity,
                                                      mode="cascade"))):
        log(name)
        t0 = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - t0
        runs[name] = dict(seconds=seconds, accuracy=accuracy(result.model, xt, yt),
                          sparsity=weight_sparsity(result.model), statuses=statuses(result))
    ratio = runs["nettrim cascade"]["seconds"] / runs["sparsegpt"]["seconds"]
    lines = [f"bench_wide: residual CNN (3136 -> 256 dense layer), {args.samples} calibration "
             f"images, sparsity {args.sparsity}, torch {torch.__version__}, 1 thread",
             f"dense test accuracy {100 * dense:.2f}%",
             f"{'method':<18}{'seconds':>9}{'sparsity':>10}{'test acc.':>11}  statuses"]
    for name, r in runs.items():
        st = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(f"{name:<18}{r['seconds']:>9.1f}{100 * r['sparsity']:>9.1f}%"
                     f"{100 * r['accuracy']:>10.2f}%  {st}")
    verdict = "met" if ratio <= 10 else "missed"
    lines.append(f"Net-Trim / SparseGPT time: {ratio:.1f}x (target <= 10x: {verdict})")
    print("\n".join(lines))
    save_results(args.out, dict(runs=runs, dense_accuracy=dense, ratio=ratio,
                                samples=args.samples, sparsity=args.sparsity), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
