"""Nested spirals: cascade Net-Trim on 2-h-h-2 ReLU classifiers (Fig. S.1, Tables S.1/S.2).

Paper: Net-Trim, NIPS 2017, supplementary note. A 2-200-200-2 ReLU network trained on the two
nested spirals is pruned by cascade Net-Trim with ``epsilon_1 = 0.01 ||Y_1||_F``,
``gamma = 1.1`` and ``kappa = 0.35``: nonzeros 397/39770/399 -> 362/2663/131 at a relative output
discrepancy of 0.046 (Table S.1), with the classifier's decision regions essentially unchanged
(Fig. S.1). Table S.2 repeats this for dropout-trained 2-h-h-2 networks (h = 50 ... 200) at a
discrepancy below 0.02 (e.g. the 2-200-200-2 net keeps 399/1991/113).

What this script does:

1. trains ``nettrim.models.spiral_net(hidden)`` on the 192 points of ``two_spiral.csv``
   (full-batch Adam), prunes it with ``nettrim.prune(mode="cascade")`` using the training points
   as calibration data, and reports per-layer nonzeros, the output discrepancy and the accuracy,
   with the decision regions before/after as a figure;
2. for each width, trains a network with dropout, copies its weights into a plain
   ``spiral_net`` and prunes it with cascade Net-Trim at the first epsilon of a descending grid
   whose output discrepancy is below the target.

Outputs: ``spirals.json``, ``spirals_contour.png``, ``spirals_widths.png``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nettrim  # noqa: E402
from nettrim.io.datasets import load_spirals  # noqa: E402
from nettrim.models import accuracy, mlp, spiral_net, train_classifier  # noqa: E402
from nettrim.results import output_discrepancy  # noqa: E402
from paper_repro import common  # noqa: E402

NAME = "spirals"

#: Paper's numbers (supplementary note), for the README table and the JSON.
PAPER = {
    "table_s1": {"nonzeros_before": [397, 39770, 399], "nonzeros_after": [362, 2663, 131],
                 "discrepancy": 0.046},
    "table_s2_200": {"nonzeros_after": [399, 1991, 113], "discrepancy_below": 0.02},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the full run (the defaults) and of ``--quick`` (:data:`QUICK`).

    Attributes
    ----------
    hidden : int
        Width of the main network (2-hidden-hidden-2).
    epochs, lr : int, float
        Full-batch Adam steps and learning rate for training.
    epsilon, gamma, kappa : float
        Cascade Net-Trim settings of the main experiment (paper: 0.01, 1.1, 0.35).
    widths : tuple of int
        Widths of the dropout-trained networks of the table.
    dropout : float
        Dropout probability used to train the table's networks.
    table_epsilons : tuple of float
        Descending first-layer epsilons tried per width until the discrepancy is below
        ``table_target``.
    table_target : float
        Output discrepancy bound of the table (paper: 0.02).
    table_kappa : float
        kappa of the table's runs.
    max_iter : int
        ADMM iteration cap per layer.
    match_search : int
        Solves of the search for the first-layer epsilon whose discrepancy is the paper's
        (Table S.1: 0.046), with gamma and kappa as in the main experiment.
    match_tol : float
        The search stops when the discrepancy is within this relative distance of the paper's.
    grid : int
        Resolution of the decision-region figure (grid x grid points).
    seed : int
    threads : int
        torch threads (tiny problems: one thread avoids oversubscription).
    """

    hidden: int = 200
    epochs: int = 2000
    lr: float = 3e-3
    epsilon: float = 0.01
    gamma: float = 1.1
    kappa: float = 0.35
    widths: tuple = (50, 75, 125, 175, 200)
    dropout: float = 0.1
    table_epsilons: tuple = (0.002, 0.0005)
    table_target: float = 0.02
    table_kappa: float = 1.0
    max_iter: int = 3000
    match_search: int = 5
    match_tol: float = 0.05
    grid: int = 200
    seed: int = 0
    threads: int = 1


QUICK = Config(hidden=24, epochs=150, lr=1e-2, widths=(16,), table_epsilons=(0.005,),
               max_iter=300, match_search=2, grid=40)


def train_spiral(x: torch.Tensor, y: torch.Tensor, hidden: int, *, dropout: float = 0.0,
                 epochs: int, lr: float, seed: int) -> nn.Sequential:
    """Train a 2-hidden-hidden-2 ReLU classifier full-batch; return it without Dropout.

    The network is trained as ``mlp([2, hidden, hidden, 2], dropout=dropout)`` and its Linear
    weights copied into a fresh ``spiral_net(hidden)`` (no Dropout modules: identical outputs
    in eval mode), which is what Net-Trim prunes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trained = mlp([2, hidden, hidden, 2], dropout=dropout)
    train_classifier(trained, x, y, epochs=epochs, lr=lr, batch_size=x.shape[0], seed=seed)
    plain = spiral_net(hidden)
    sources = [m for m in trained if isinstance(m, nn.Linear)]
    targets = [m for m in plain if isinstance(m, nn.Linear)]
    for source, target in zip(sources, targets):
        target.load_state_dict(source.state_dict())
    return plain.eval()


def prune_cascade(model: nn.Module, x: torch.Tensor, *, epsilon: float | None = None,
                  gamma: float, kappa: float, max_iter: int, sparsity: dict | None = None,
                  method: str = "plain") -> tuple:
    """Cascade Net-Trim; returns ``(PruneResult, solver warnings as strings)``.

    ``epsilon`` (the first layer's) or ``sparsity`` (``{layer: fraction}``, the epsilons
    searched); ``method="plain"``: the papers' program (:data:`common.PAPER_METHOD`),
    ``"default"``: the library's pipeline (reweighted l1 and refit).
    """
    options = common.PAPER_METHOD if method == "plain" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", nettrim.PruningWarning)
        result = nettrim.prune(model, x, epsilon=epsilon, sparsity=sparsity, mode="cascade",
                               gamma=gamma, kappa=kappa, solver_options={"max_iter": max_iter},
                               **options)
    notes = [str(w.message) for w in caught if issubclass(w.category, nettrim.PruningWarning)]
    return result, notes


def _summary(reference: nn.Module, result, x: torch.Tensor, y: torch.Tensor, notes) -> dict:
    return {
        "nonzeros_before": [r.nonzeros_before for r in result.report],
        "nonzeros_after": [r.nonzeros_after for r in result.report],
        "totals": [r.total for r in result.report],
        "layer_relative_error": [r.relative_error for r in result.report],
        "status": [r.status for r in result.report],
        "iterations": [r.iterations for r in result.report],
        "seconds": [r.seconds for r in result.report],
        "discrepancy": output_discrepancy(reference, result.model, x),
        "accuracy_before": accuracy(reference, x, y),
        "accuracy_after": accuracy(result.model, x, y),
        "warnings": notes,
    }


def paper_count_sparsity(model: nn.Module, counts: Sequence[int]) -> dict:
    """``{layer: sparsity}`` that keeps ``counts`` weights in the Linear layers, in order."""
    names = list(nettrim.prunable_layers(model))
    modules = dict(model.named_modules())
    return {name: 1.0 - count / modules[name].weight.numel()
            for name, count in zip(names, counts)}


def match_discrepancy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: float,
                      config: Config, start: tuple) -> dict:
    """Search the first-layer epsilon whose cascade discrepancy is ``target``.

    False position on ``log epsilon`` against ``log discrepancy`` (both grow together), from
    ``start = (epsilon, discrepancy)`` (the main run) and a tenth of its epsilon; at most
    ``config.match_search`` solves, stopping within ``config.match_tol`` (relative). Returns
    the closest run's summary with its ``epsilon`` and the ``tried`` (epsilon, discrepancy)
    pairs.
    """
    tried = [start]
    best = None
    eps = start[0] / 10
    for _ in range(config.match_search):
        result, notes = prune_cascade(model, x, epsilon=eps, gamma=config.gamma,
                                      kappa=config.kappa, max_iter=config.max_iter)
        row = {"epsilon": eps, **_summary(model, result, x, y, notes)}
        tried.append((eps, row["discrepancy"]))
        if best is None or abs(math.log(row["discrepancy"] / target)) < \
                abs(math.log(best["discrepancy"] / target)):
            best = row
        if abs(row["discrepancy"] / target - 1) <= config.match_tol:
            break
        eps = common.next_log_guess(tried, target, increasing=True)
    best["tried"] = tried
    return best


def decision_grid(model: nn.Module, x: torch.Tensor, n: int) -> dict:
    """Predicted class on an n x n grid covering the data (10% margin)."""
    lo = x.min(0).values - 0.1 * (x.max(0).values - x.min(0).values)
    hi = x.max(0).values + 0.1 * (x.max(0).values - x.min(0).values)
    gx = torch.linspace(float(lo[0]), float(hi[0]), n)
    gy = torch.linspace(float(lo[1]), float(hi[1]), n)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    with torch.no_grad():
        labels = model(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).argmax(1)
    return {"x": gx, "y": gy, "labels": labels.reshape(n, n)}


def run(config: Config = Config(), data_root: str | None = None) -> dict:
    """Run both parts; returns the JSON-ready results (decision grids under ``"_grids"``)."""
    watch = common.Stopwatch()
    with common.threads(config.threads):
        x, y = load_spirals(data_root)
        with watch("train"):
            model = train_spiral(x, y, config.hidden, epochs=config.epochs, lr=config.lr,
                                 seed=config.seed)
        with watch("prune"):
            result, notes = prune_cascade(model, x, epsilon=config.epsilon, gamma=config.gamma,
                                          kappa=config.kappa, max_iter=config.max_iter)
        main_row = _summary(model, result, x, y, notes)
        grids = {"before": decision_grid(model, x, config.grid),
                 "after": decision_grid(result.model, x, config.grid)}
        main_row["grid_agreement"] = float(
            (grids["before"]["labels"] == grids["after"]["labels"]).float().mean())
        # Table S.1 at the paper's own operating points: its counts, and its discrepancy
        counts = PAPER["table_s1"]["nonzeros_after"] if config.hidden == 200 else [
            max(1, round(n * r.total / t)) for n, r, t in
            zip(PAPER["table_s1"]["nonzeros_after"], result.report,
                PAPER["table_s1"]["nonzeros_before"])]
        at_counts = {}
        for method in ("default", "plain"):
            with watch(f"at_paper_counts_{method}"):
                try:
                    res, notes = prune_cascade(model, x, gamma=config.gamma, kappa=config.kappa,
                                               sparsity=paper_count_sparsity(model, counts),
                                               max_iter=config.max_iter, method=method)
                except nettrim.PruningError as err:  # the epsilon search found no solution
                    at_counts[method] = {"target_nonzeros": counts, "error": str(err)}
                    continue
            at_counts[method] = {"target_nonzeros": counts, **_summary(model, res, x, y, notes)}
        with watch("at_paper_discrepancy"):
            at_discrepancy = match_discrepancy(
                model, x, y, PAPER["table_s1"]["discrepancy"], config,
                (config.epsilon, main_row["discrepancy"]))
        table = []
        for width in config.widths:
            with watch("train"):
                net = train_spiral(x, y, width, dropout=config.dropout, epochs=config.epochs,
                                   lr=config.lr, seed=config.seed)
            row = None
            for eps in config.table_epsilons:
                with watch("prune"):
                    res, notes = prune_cascade(net, x, epsilon=eps, gamma=config.gamma,
                                               kappa=config.table_kappa,
                                               max_iter=config.max_iter)
                row = {"width": width, "epsilon": eps, **_summary(net, res, x, y, notes)}
                if row["discrepancy"] < config.table_target:
                    break
            row["meets_target"] = row["discrepancy"] < config.table_target
            table.append(row)
    return {
        "experiment": NAME,
        "paper": "NIPS 2017 supplementary note: Fig. S.1, Tables S.1 and S.2",
        "paper_values": PAPER,
        "config": common.config_dict(config),
        "main": main_row,
        "at_paper_counts": at_counts,
        "at_paper_discrepancy": at_discrepancy,
        "widths_table": table,
        **watch.as_dict(),
        "environment": common.environment(),
        "_grids": grids,
        "_data": (x, y),
    }


def plot_contours(results: dict, path) -> pathlib.Path:
    """Decision regions of the network before and after cascade Net-Trim, with the data."""
    import matplotlib.pyplot as plt

    x, y = results["_data"]
    main_row = results["main"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key in zip(axes, ("before", "after")):
        grid = results["_grids"][key]
        ax.contourf(grid["x"].numpy(), grid["y"].numpy(), grid["labels"].numpy(),
                    levels=[-0.5, 0.5, 1.5], colors=["#c6dbef", "#fdd0a2"])
        ax.scatter(x[:, 0], x[:, 1], c=np.where(y.numpy() == 1, "tab:orange", "tab:blue"), s=8)
        nz = main_row["nonzeros_before" if key == "before" else "nonzeros_after"]
        ax.set_title(f"{key}: nonzeros {'/'.join(map(str, nz))}")
        ax.set_aspect("equal")
    fig.suptitle(f"2-{results['config']['hidden']}-{results['config']['hidden']}-2, cascade "
                 f"Net-Trim: discrepancy {main_row['discrepancy']:.3f}, grid agreement "
                 f"{100 * main_row['grid_agreement']:.1f}%")
    return common.save_figure(fig, path)


def plot_widths(results: dict, path) -> pathlib.Path:
    """Kept fraction of each layer per width (dropout-trained nets)."""
    import matplotlib.pyplot as plt

    table = results["widths_table"]
    widths = [row["width"] for row in table]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for layer in range(3):
        kept = [row["nonzeros_after"][layer] / row["totals"][layer] for row in table]
        ax.plot(widths, kept, "o-", label=f"layer {layer + 1}")
    ax.set_xlabel("hidden width h (2-h-h-2)")
    ax.set_ylabel("fraction of weights kept")
    ax.set_yscale("log")
    ax.set_title("Cascade Net-Trim on dropout-trained spiral nets")
    ax.legend()
    return common.save_figure(fig, path)


def public(results: dict) -> dict:
    """The results without the private (non-JSON) entries."""
    return {k: v for k, v in results.items() if not k.startswith("_")}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python paper_repro/spirals.py [--quick] [--out-dir DIR]``.

    ``--data-root DIR`` points at the datasets.
    """
    args, config, results = common.run_main(argv, __doc__, Config(), QUICK, run, NAME,
                                            public=public)
    plot_contours(results, args.out_dir / f"{NAME}_contour.png")
    plot_widths(results, args.out_dir / f"{NAME}_widths.png")
    m = results["main"]
    print(f"main 2-{config.hidden}-{config.hidden}-2: nonzeros "
          f"{'/'.join(map(str, m['nonzeros_before']))} -> "
          f"{'/'.join(map(str, m['nonzeros_after']))}, discrepancy {m['discrepancy']:.4f}, "
          f"accuracy {m['accuracy_before']:.3f} -> {m['accuracy_after']:.3f}")
    print(f"{'width':>6} {'epsilon':>8} {'nonzeros after':>22} {'discrepancy':>12} {'acc':>6}")
    for row in results["widths_table"]:
        print(f"{row['width']:>6} {row['epsilon']:>8} "
              f"{'/'.join(map(str, row['nonzeros_after'])):>22} {row['discrepancy']:>12.4f} "
              f"{row['accuracy_after']:>6.3f}")
    print(common.wrote(results, args, NAME))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
