"""Sample complexity of exact recovery: a phase transition over (s, P).

Paper: Net-Trim, NIPS 2017, Theorem 3 (and the SIAM paper's O(s log(N/s)) bound): a planted
s-sparse neuron ``y = relu(X w0)`` with Gaussian ``X`` (P samples, N inputs) is recovered
exactly by the Net-Trim program with ``epsilon = 0`` once ``P`` exceeds a constant times
``s log(N/s)``.

What this script does: for each sparsity ``s`` and sample count ``P`` it draws Gaussian ``X``
and ``neurons`` planted s-sparse weight vectors (supports uniform, values Gaussian), solves
``min ||W||_1 s.t. relu(X W^T) = relu(X W0^T)`` (``NetTrimProblem(X, Y, 0)``, all neurons at
once: the program is separable across neurons) with :func:`solvers.solve_admm`, and counts a
neuron as recovered when ``||w - w0|| <= tol ||w0||``. The 50% transition per ``s`` is fitted
with ``P = c s log(N/s)`` (least squares over c) and the curve is overlaid on the heat map.

Uses :mod:`solvers` only (no model). Outputs: ``sample_complexity.json``,
``sample_complexity.png``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from paper_repro import common  # noqa: E402
from solvers import NetTrimProblem, solve_admm  # noqa: E402

NAME = "sample_complexity"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the full run (the defaults) and of ``--quick`` (:data:`QUICK`).

    Attributes
    ----------
    n_inputs : int
        N, the neuron's input dimension.
    sparsities : tuple of int
        The values of s (nonzeros of the planted neuron).
    samples : tuple of int
        The values of P.
    draws : int
        Independent Gaussian X per (s, P).
    neurons : int
        Planted neurons per X (solved together as the columns of Y).
    tol : float
        Recovery threshold on ``||w - w0|| / ||w0||``.
    max_iter : int
        ADMM iteration cap (non-converged solves are judged by their last iterate).
    threads : int
        torch threads (the problems are tiny: more threads only add overhead).
    seed : int
    """

    n_inputs: int = 100
    sparsities: tuple = (2, 4, 6, 8, 12, 16)
    samples: tuple = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150)
    draws: int = 2
    neurons: int = 8
    tol: float = 1e-2
    max_iter: int = 2000
    threads: int = 1
    seed: int = 0


QUICK = Config(
    n_inputs=30, sparsities=(2, 4), samples=(6, 12, 18, 24, 36), draws=1, neurons=4,
    max_iter=800,
)


def recovery_trial(n_inputs: int, s: int, P: int, neurons: int, *, tol: float, max_iter: int,
                   rng: np.random.Generator) -> dict:
    """One draw of X with ``neurons`` planted s-sparse neurons; ADMM with epsilon = 0.

    Returns
    -------
    dict
        ``recovered`` (count), ``errors`` (relative errors, one per neuron), ``status``,
        ``iterations``, ``seconds``.
    """
    X = rng.standard_normal((P, n_inputs))
    W0 = np.zeros((neurons, n_inputs))
    for m in range(neurons):
        support = rng.choice(n_inputs, size=s, replace=False)
        W0[m, support] = rng.standard_normal(s)
    Y = np.maximum(X @ W0.T, 0.0)
    result = solve_admm(NetTrimProblem(X, Y, 0.0), max_iter=max_iter)
    errors = np.linalg.norm(result.W - W0, axis=1) / np.linalg.norm(W0, axis=1)
    return {
        "recovered": int((errors <= tol).sum()),
        "errors": errors.tolist(),
        "status": result.status,
        "iterations": result.iterations,
        "seconds": result.solve_time,
    }


def transition_points(sparsities: Sequence[int], samples: Sequence[int],
                      rate: np.ndarray) -> list:
    """Smallest P (linearly interpolated) where the recovery rate reaches 0.5, per s.

    ``rate`` has shape (len(sparsities), len(samples)); None where 0.5 is never reached.
    """
    points = []
    for i, _ in enumerate(sparsities):
        row = rate[i]
        above = np.nonzero(row >= 0.5)[0]
        if above.size == 0:
            points.append(None)
            continue
        j = int(above[0])
        if j == 0:
            points.append(float(samples[0]))
            continue
        p0, p1, r0, r1 = samples[j - 1], samples[j], row[j - 1], row[j]
        points.append(float(p0 + (0.5 - r0) * (p1 - p0) / (r1 - r0)))
    return points


def fit_constant(sparsities: Sequence[int], n_inputs: int, points: Sequence) -> float | None:
    """Least-squares c in ``P_50(s) = c s log(N/s)`` over the s with a transition point."""
    pairs = [(s * math.log(n_inputs / s), p) for s, p in zip(sparsities, points) if p is not None]
    if not pairs:
        return None
    f = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    return float((f @ p) / (f @ f))


def run(config: Config = Config(), data_root: str | None = None) -> dict:
    """Run the phase-transition experiment; returns the JSON-ready results.

    ``data_root`` is unused (the data are synthetic); it is accepted for a uniform interface.
    """
    del data_root
    watch = common.Stopwatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    S, Ps = list(config.sparsities), list(config.samples)
    rate = np.zeros((len(S), len(Ps)))
    statuses: dict[str, int] = {}
    cells = []
    try:
        for i, s in enumerate(S):
            for j, P in enumerate(Ps):
                recovered = 0
                for _ in range(config.draws):
                    trial = recovery_trial(config.n_inputs, s, P, config.neurons, tol=config.tol,
                                           max_iter=config.max_iter, rng=rng)
                    recovered += trial["recovered"]
                    statuses[trial["status"]] = statuses.get(trial["status"], 0) + 1
                    cells.append({"s": s, "P": P, **trial})
                rate[i, j] = recovered / (config.draws * config.neurons)
    finally:
        torch.set_num_threads(threads)
    points = transition_points(S, Ps, rate)
    c = fit_constant(S, config.n_inputs, points)
    return {
        "experiment": NAME,
        "paper": "NIPS 2017 Theorem 3; SIAM 2020 O(s log(N/s)) sample complexity",
        "config": common.config_dict(config),
        "sparsities": S,
        "samples": Ps,
        "recovery_rate": rate.tolist(),
        "transition_P50": points,
        "fitted_c": c,
        "statuses": statuses,
        "trials": cells,
        "seconds": watch.total,
        "environment": common.environment(),
    }


def _edges(values: Sequence[float]) -> np.ndarray:
    """Cell edges for a (possibly non-uniform) grid of centres: midpoints, ends mirrored."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def plot(results: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Heat map of the recovery rate over (s, P) with the fitted ``c s log(N/s)`` curve."""
    import matplotlib.pyplot as plt

    S, Ps = results["sparsities"], results["samples"]
    rate = np.array(results["recovery_rate"])
    N = results["config"]["n_inputs"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    image = ax.pcolormesh(_edges(S), _edges(Ps), rate.T, cmap="gray", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction recovered")
    pts = [(s, p) for s, p in zip(S, results["transition_P50"]) if p is not None]
    if pts:
        ax.plot(*zip(*pts), "o", color="tab:orange", label="measured 50% point")
    c = results["fitted_c"]
    if c is not None:
        grid = np.linspace(S[0], S[-1], 100)
        ax.plot(grid, c * grid * np.log(N / grid), color="tab:red",
                label=f"{c:.2f} s log(N/s)")
    ax.set_xlabel("s (nonzeros of the planted neuron)")
    ax.set_ylabel("P (samples)")
    ax.set_title(f"Exact recovery, epsilon = 0, N = {N}")
    ax.legend(loc="upper left", fontsize=8)
    return common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python paper_repro/sample_complexity.py [--quick] [--out-dir DIR]``."""
    args, config, results = common.run_main(argv, __doc__, Config(), QUICK, run, NAME)
    plot(results, args.out_dir / f"{NAME}.png")
    print(f"s \\ P  " + " ".join(f"{p:>5}" for p in results["samples"]))
    for s, row in zip(results["sparsities"], results["recovery_rate"]):
        print(f"{s:>5}  " + " ".join(f"{r:>5.2f}" for r in row))
    print(f"fitted P_50 = c s log(N/s) with c = {results['fitted_c']}; "
          + common.wrote(results, args, NAME))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
