"""MNIST FC 784-300-1000-100-10: Net-Trim (parallel) vs magnitude pruning (HPTD), with fine-tuning.

Paper: Fast Convex Pruning of Deep Neural Networks (SIAM J. Math. Data Sci. 2020), the FC
experiment: Net-Trim compresses the 784-300-1000-100-10 network 10-50x (90-98% of the weights
removed) with little loss of test accuracy, and beats one-shot magnitude pruning to the same
per-layer nonzero counts (Han et al.'s prune/retrain, "HPTD"), before and after retraining.

What this script does: loads (training and caching on first use) the reference network
``nettrim.models.pretrained(model_name)``; for each epsilon of the grid it

1. prunes every layer with parallel Net-Trim on ``calib_samples`` training images;
2. prunes the original network by magnitude to the *same per-layer nonzero counts*
   (``nettrim.baselines.prune_baseline(..., "magnitude", per-layer sparsity)``);
3. measures test accuracy of both, then fine-tunes both with their zeros held
   (``nettrim.finetune.finetune``, same data, epochs and learning rate) and measures again.

:mod:`paper_repro.fashion_fc` runs the same experiment on Fashion-MNIST.
Outputs: ``<name>.json``, ``<name>.png``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import warnings
from collections.abc import Sequence

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nettrim  # noqa: E402
from nettrim.baselines import prune_baseline  # noqa: E402
from nettrim.finetune import finetune  # noqa: E402
from nettrim.models import PRETRAINED, accuracy, pretrained, train_classifier  # noqa: E402
from nettrim.prune import output_discrepancy  # noqa: E402
from paper_repro import common  # noqa: E402

NAME = "mnist_fc"

#: The paper's headline, for the README table and the JSON.
PAPER = {"compression": "10-50x (90-98% of weights removed)", "accuracy_loss": "little"}
#: What each data set's run reproduces.
SOURCE = {
    "mnist": "SIAM J. Math. Data Sci. 2020, FC 784-300-1000-100-10 (Net-Trim vs HPTD)",
    "fashion-mnist": "SIAM 2020 CIFAR-10 experiment, replaced by Fashion-MNIST (no CIFAR-10 "
                     "offline); FC 784-300-1000-100-10",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the full run (the defaults) and of ``--quick`` (:data:`QUICK`).

    Attributes
    ----------
    name : str
        Experiment name: the output files are ``<name>.json`` and ``<name>.png``.
    dataset : {"mnist", "fashion-mnist"}
    model_name : str
        Key of :data:`nettrim.models.PRETRAINED` (the full run uses the cached reference net).
    train_samples, train_epochs : int or None
        Only when ``train_from_scratch``: a small model trained here on that many images.
    train_from_scratch : bool
        Train a fresh model here instead of using :func:`nettrim.models.pretrained` (--quick).
    calib_samples : int
        Training images used as Net-Trim's calibration data (the P of every layer).
    epsilons : tuple of float
        Relative epsilons of parallel Net-Trim (the same for every layer).
    max_iter : int
        ADMM iteration cap per layer.
    finetune_samples, finetune_epochs, finetune_lr :
        Masked fine-tuning of both pruned networks (same settings for both).
    test_samples : int or None
        Test images used for accuracy (None: all 10,000).
    seed : int
    """

    name: str = NAME
    dataset: str = "mnist"
    model_name: str = "fc_784_300_1000_100_10"
    train_from_scratch: bool = False
    train_samples: int = 2000
    train_epochs: int = 1
    calib_samples: int = 500
    epsilons: tuple = (0.05, 0.15, 0.3)
    max_iter: int = 800
    finetune_samples: int = 5000
    finetune_epochs: int = 1
    finetune_lr: float = 1e-4
    test_samples: int | None = None
    seed: int = 0


QUICK = Config(train_from_scratch=True, train_samples=1000, train_epochs=3, calib_samples=200,
               epsilons=(0.1,), max_iter=150, finetune_samples=500, test_samples=1000)


def reference_model(config: Config, data_root: str | None) -> torch.nn.Module:
    """The network to prune: the cached reference, or (quick) a small one trained here."""
    if not config.train_from_scratch:
        return pretrained(config.model_name, data_root=data_root, seed=config.seed)
    x, y = common.load_split(data_root, config.dataset, True)
    x, y = common.subset(x, y, config.train_samples, config.seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = PRETRAINED[config.model_name].builder()
    train_classifier(model, x, y, epochs=config.train_epochs, seed=config.seed)
    return model.eval()


def per_layer(result) -> dict:
    """Per-layer nonzeros and totals of a PruneResult."""
    return {
        "layers": [r.name for r in result.report],
        "nonzeros_before": [r.nonzeros_before for r in result.report],
        "nonzeros_after": [r.nonzeros_after for r in result.report],
        "totals": [r.total for r in result.report],
        "layer_relative_error": [r.relative_error for r in result.report],
    }


def run(config: Config = Config(), data_root: str | None = None) -> dict:
    """Run the epsilon sweep; returns the JSON-ready results."""
    watch = common.Stopwatch()
    with watch("reference"):
        model = reference_model(config, data_root)
    x_train, y_train = common.load_split(data_root, config.dataset, True)
    x_test, y_test = common.load_split(data_root, config.dataset, False)
    x_test, y_test = common.subset(x_test, y_test, config.test_samples, config.seed)
    x_cal, _ = common.subset(x_train, y_train, config.calib_samples, config.seed + 2)
    x_ft, y_ft = common.subset(x_train, y_train, config.finetune_samples, config.seed + 3)
    acc_before = accuracy(model, x_test, y_test)
    rows = []
    for eps in config.epsilons:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", nettrim.PruningWarning)
            with watch("nettrim"):
                trimmed = nettrim.prune(model, x_cal, epsilon=eps, mode="parallel",
                                        solver_options={"max_iter": config.max_iter},
                                        **common.PAPER_METHOD)
        layers = per_layer(trimmed)
        sparsity = {r.name: r.sparsity for r in trimmed.report}
        with watch("magnitude"):
            magnitude = prune_baseline(model, x_cal, "magnitude", sparsity, sequential=False)
        row = {
            "epsilon": eps,
            **layers,
            "magnitude_nonzeros_after": [r.nonzeros_after for r in magnitude.report],
            "status": [r.status for r in trimmed.report],
            "iterations": [r.iterations for r in trimmed.report],
            "nettrim_seconds": sum(r.seconds for r in trimmed.report),
            "warnings": [str(w.message) for w in caught
                         if issubclass(w.category, nettrim.PruningWarning)],
        }
        kept = sum(row["nonzeros_after"])
        total = sum(row["totals"])
        row["sparsity"] = 1.0 - kept / total
        row["compression"] = total / max(1, kept)
        for method, result in (("nettrim", trimmed), ("magnitude", magnitude)):
            row[f"{method}_discrepancy"] = output_discrepancy(model, result.model, x_test)
            row[f"{method}_accuracy"] = accuracy(result.model, x_test, y_test)
            with watch("finetune"):
                fit = finetune(result.model, (x_ft, y_ft), epochs=config.finetune_epochs,
                               lr=config.finetune_lr, seed=config.seed)
            row[f"{method}_accuracy_finetuned"] = accuracy(fit.model, x_test, y_test)
            row[f"{method}_nonzeros_after_finetune"] = sum(
                int((m.weight != 0).sum()) for name, m in fit.model.named_modules()
                if name in row["layers"])
        rows.append(row)
    return {
        "experiment": config.name,
        "paper": SOURCE[config.dataset],
        "paper_values": PAPER if config.dataset == "mnist" else {},
        "config": common.config_dict(config),
        "accuracy_before": acc_before,
        "nonzeros_before": rows[0]["nonzeros_before"] if rows else [],
        "sweep": rows,
        "seconds": watch.total,
        "phase_seconds": watch.seconds,
        "environment": common.environment(),
    }


def plot(results: dict, path) -> pathlib.Path:
    """Test accuracy vs fraction of weights removed, both methods, before/after fine-tuning."""
    import matplotlib.pyplot as plt

    sweep = sorted(results["sweep"], key=lambda r: r["sparsity"])
    removed = [100 * r["sparsity"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6.2, 4))
    styles = {"nettrim": ("tab:blue", "Net-Trim"), "magnitude": ("tab:red", "magnitude (HPTD)")}
    for method, (color, label) in styles.items():
        ax.plot(removed, [100 * r[f"{method}_accuracy"] for r in sweep], "o--", color=color,
                label=f"{label}, no fine-tuning")
        ax.plot(removed, [100 * r[f"{method}_accuracy_finetuned"] for r in sweep], "o-",
                color=color, label=f"{label}, fine-tuned")
    ax.axhline(100 * results["accuracy_before"], color="gray", lw=0.8, label="unpruned")
    ax.set_xlabel("weights removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['config']['dataset']} FC 784-300-1000-100-10")
    ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def print_table(results: dict) -> None:
    """The sweep as a text table."""
    before = 100 * results["accuracy_before"]
    print(f"{results['experiment']}: unpruned test accuracy {before:.2f}%")
    print(f"{'eps':>6} {'nonzeros after':>26} {'removed':>8} {'x':>6} {'NT acc':>7} "
          f"{'NT+FT':>7} {'mag acc':>8} {'mag+FT':>7} {'NT disc':>8} {'mag disc':>8}")
    for r in results["sweep"]:
        print(f"{r['epsilon']:>6} {'/'.join(map(str, r['nonzeros_after'])):>26} "
              f"{100 * r['sparsity']:>7.1f}% {r['compression']:>6.1f} "
              f"{100 * r['nettrim_accuracy']:>6.2f}% "
              f"{100 * r['nettrim_accuracy_finetuned']:>6.2f}% "
              f"{100 * r['magnitude_accuracy']:>7.2f}% "
              f"{100 * r['magnitude_accuracy_finetuned']:>6.2f}% "
              f"{r['nettrim_discrepancy']:>8.4f} {r['magnitude_discrepancy']:>8.4f}")


def main(argv: Sequence[str] | None = None, *, config: Config | None = None,
         quick_config: Config | None = None) -> int:
    """Command line: ``python paper_repro/mnist_fc.py [--quick] [--out-dir DIR] [--data-root DIR]``.

    ``config`` / ``quick_config`` replace the full / quick settings (used by
    :mod:`paper_repro.fashion_fc`).
    """
    args = common.parse_args(argv, __doc__.splitlines()[0])
    config = (quick_config or QUICK) if args.quick else (config or Config())
    results = run(config, args.data_root)
    results["quick"] = args.quick
    common.write_json(args.out_dir / f"{config.name}.json", results)
    plot(results, args.out_dir / f"{config.name}.png")
    print_table(results)
    print(f"{results['seconds']:.1f} s; wrote {args.out_dir / (config.name + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
