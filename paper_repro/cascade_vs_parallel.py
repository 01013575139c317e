"""Cascade vs parallel Net-Trim: sparsity against output discrepancy (Fig. S.2).

Paper: Net-Trim, NIPS 2017, supplementary note, Fig. S.2: on 2-h-h-2 spiral classifiers
(h = 50, 75, 100), averaged over several trained networks, the cascade scheme reaches a sparser
network than the parallel one at the same relative output discrepancy.

What this script does: for each width and each of ``nets`` networks (seeds), trained as in
:mod:`paper_repro.spirals`, it sweeps an epsilon grid with

- parallel Net-Trim (every layer at relative tolerance epsilon, original activations), and
- cascade Net-Trim (first layer at epsilon, later layers ``gamma``-inflated propagated error),

recording the total fraction of zero weights and the relative output discrepancy on the 192
training points. Points are averaged over the networks per (width, mode, epsilon); the summary
compares the two modes at equal discrepancy by interpolating each mode's mean sparsity curve.

Outputs: ``cascade_vs_parallel.json``, ``cascade_vs_parallel.png``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nettrim  # noqa: E402
from nettrim.io.datasets import load_spirals  # noqa: E402
from nettrim.results import output_discrepancy  # noqa: E402
from paper_repro import common  # noqa: E402
from paper_repro.spirals import train_spiral  # noqa: E402

NAME = "cascade_vs_parallel"
MODES = ("parallel", "cascade")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the full run (the defaults) and of ``--quick`` (:data:`QUICK`).

    Attributes
    ----------
    widths : tuple of int
        Hidden widths h of the 2-h-h-2 networks.
    nets : int
        Trained networks per width (seeds 0 .. nets-1), averaged.
    epsilons : tuple of float
        Relative epsilons swept (cascade: the first layer's).
    gamma, kappa : float
        Cascade settings.
    epochs, lr, dropout : training of each network (full batch).
    max_iter : int
        ADMM iteration cap per layer.
    threads : int
    """

    widths: tuple = (50, 75, 100)
    nets: int = 2
    epsilons: tuple = (0.01, 0.03, 0.1)
    gamma: float = 1.1
    kappa: float = 1.0
    epochs: int = 1500
    lr: float = 3e-3
    dropout: float = 0.0
    max_iter: int = 5000
    threads: int = 1


QUICK = Config(widths=(16,), nets=1, epsilons=(0.02, 0.1), epochs=150, lr=1e-2, max_iter=300)


def sweep_point(model, x, *, mode: str, epsilon: float, gamma: float, kappa: float,
                max_iter: int) -> dict:
    """Prune ``model`` once; return sparsity, discrepancy, per-layer nonzeros and statuses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nettrim.PruningWarning)  # statuses are recorded below
        result = nettrim.prune(model, x, epsilon=epsilon, mode=mode, gamma=gamma, kappa=kappa,
                               solver_options={"max_iter": max_iter}, **common.PAPER_METHOD)
    total = sum(r.total for r in result.report)
    kept = sum(r.nonzeros_after for r in result.report)
    return {
        "sparsity": 1.0 - kept / total,
        "discrepancy": output_discrepancy(model, result.model, x),
        "nonzeros_after": [r.nonzeros_after for r in result.report],
        "status": [r.status for r in result.report],
    }


def compare_at_equal_discrepancy(curves: dict) -> dict:
    """Interpolate each mode's mean sparsity at discrepancies both modes cover.

    ``curves[mode]`` holds ``discrepancy`` and ``sparsity`` lists (means over nets, one per
    epsilon). Returns the common discrepancy points, both modes' sparsity there, and the mean
    difference cascade - parallel (positive: cascade sparser); None where the ranges do not
    overlap.
    """
    interp = {}
    for mode in MODES:
        d = np.asarray(curves[mode]["discrepancy"])
        s = np.asarray(curves[mode]["sparsity"])
        order = np.argsort(d)
        interp[mode] = (d[order], s[order])
    lo = max(interp[m][0][0] for m in MODES)
    hi = min(interp[m][0][-1] for m in MODES)
    if not hi > lo:
        return {"discrepancy": [], "parallel": [], "cascade": [], "mean_difference": None}
    points = np.linspace(lo, hi, 5)
    values = {m: np.interp(points, *interp[m]) for m in MODES}
    return {
        "discrepancy": points.tolist(),
        "parallel": values["parallel"].tolist(),
        "cascade": values["cascade"].tolist(),
        "mean_difference": float(np.mean(values["cascade"] - values["parallel"])),
    }


def run(config: Config = Config(), data_root: str | None = None) -> dict:
    """Run the sweep; returns the JSON-ready results."""
    watch = common.Stopwatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    x, y = load_spirals(data_root)
    per_width = []
    try:
        for width in config.widths:
            raw = {mode: [] for mode in MODES}   # raw[mode][net][eps] -> point
            for seed in range(config.nets):
                with watch("train"):
                    model = train_spiral(x, y, width, dropout=config.dropout,
                                         epochs=config.epochs, lr=config.lr, seed=seed)
                for mode in MODES:
                    row = []
                    for eps in config.epsilons:
                        with watch(f"prune_{mode}"):
                            row.append(sweep_point(model, x, mode=mode, epsilon=eps,
                                                   gamma=config.gamma, kappa=config.kappa,
                                                   max_iter=config.max_iter))
                    raw[mode].append(row)
            curves = {
                mode: {
                    key: np.mean([[p[key] for p in row] for row in raw[mode]], axis=0).tolist()
                    for key in ("sparsity", "discrepancy")
                }
                for mode in MODES
            }
            per_width.append({
                "width": width,
                "curves": curves,
                "comparison": compare_at_equal_discrepancy(curves),
                "points": raw,
            })
    finally:
        torch.set_num_threads(threads)
    diffs = [w["comparison"]["mean_difference"] for w in per_width]
    known = [d for d in diffs if d is not None]
    return {
        "experiment": NAME,
        "paper": "NIPS 2017 supplementary note, Fig. S.2 (cascade sparser at equal discrepancy)",
        "config": common.config_dict(config),
        "epsilons": list(config.epsilons),
        "widths": per_width,
        "cascade_minus_parallel_sparsity": diffs,
        "cascade_sparser_widths": sum(d > 0 for d in known),
        "compared_widths": len(known),
        "seconds": watch.total,
        "phase_seconds": watch.seconds,
        "environment": common.environment(),
    }


def plot(results: dict, path) -> pathlib.Path:
    """One panel per width: mean sparsity vs mean discrepancy, both modes."""
    import matplotlib.pyplot as plt

    widths = results["widths"]
    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.6), squeeze=False)
    for ax, entry in zip(axes[0], widths):
        for mode, marker in zip(MODES, ("s--", "o-")):
            curve = entry["curves"][mode]
            ax.plot(curve["discrepancy"], [100 * s for s in curve["sparsity"]], marker,
                    label=mode)
        w = entry["width"]
        ax.set_title(f"2-{w}-{w}-2 ({results['config']['nets']} nets)")
        ax.set_xlabel("relative output discrepancy")
        ax.set_ylabel("weights removed (%)")
        ax.legend()
    fig.tight_layout()
    return common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python paper_repro/cascade_vs_parallel.py [--quick] [--out-dir DIR]``."""
    args, config, results = common.run_main(argv, __doc__, Config(), QUICK, run, NAME)
    plot(results, args.out_dir / f"{NAME}.png")
    print(f"{'width':>6} {'mode':>9} " + " ".join(f"eps={e:<14}" for e in config.epsilons))
    for entry in results["widths"]:
        for mode in MODES:
            c = entry["curves"][mode]
            cells = " ".join(f"{100 * s:5.1f}% @{d:6.4f}  "
                             for s, d in zip(c["sparsity"], c["discrepancy"]))
            print(f"{entry['width']:>6} {mode:>9} {cells}")
        print(f"{'':>6} cascade - parallel sparsity at equal discrepancy: "
              f"{entry['comparison']['mean_difference']}")
    print(common.wrote(results, args, NAME))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
