"""MNIST FC 784-300-1000-100-10 at the authors' protocol: Net-Trim vs magnitude and SparseGPT.

Paper: Fast Convex Pruning of Deep Neural Networks (SIAM J. Math. Data Sci. 2020), the FC
experiment: Net-Trim compresses the 784-300-1000-100-10 network 10-50x (90-98% of the weights
removed) with little loss of test accuracy, and beats one-shot magnitude pruning to the same
per-layer nonzero counts (Han et al.'s prune/retrain, "HPTD"), before and after retraining.

The authors' protocol (their ``mnist_fc/nettrim_evaluation.py``, DNNToolBox/Net-Trim): train
with Adam at 1e-3 (staircase decay 0.98 every 500 steps), dropout keep-probability 0.5 before
every layer, L2 weight 0.004 on the weights (``0.004 * sum(w^2) / 2``), truncated-normal
initialisation (std 0.1) and biases 0.1, 8,000 steps of batch 100 on the 55,000 training images
(the last 5,000 of the 60,000 are TensorFlow's validation split); prune every layer in parallel
mode on all training samples, sweeping the relative epsilon over 0.01 ... 0.7 (rho = 100, 2,000
ADMM iterations); magnitude-threshold the original weights to the same per-layer counts;
fine-tune both with masks for 5k, 10k and 15k steps (SGD, batch 100).

What this script does, for each epsilon of the grid:

1. ``plain``: the papers' program (``nettrim.prune(..., epsilon=eps, refit=False,
   reweight=0)``) on ``calib_samples`` training rows; its per-layer counts fix the point;
2. ``default``: our pipeline (reweighted l1 + refit) at the same per-layer counts
   (``nettrim.prune(..., sparsity={layer: s})``);
3. ``magnitude`` and ``sparsegpt`` (``nettrim.baselines.prune_baseline``) at the same counts;
4. test accuracy of each; at the epsilons of ``finetune_epsilons``, masked fine-tuning of
   ``finetune_methods`` at the authors' protocol (``nettrim.finetune`` with plain
   SGD, lr 0.01 decayed by 0.98 every 500 steps, batch 100), with the test accuracy after
   each of ``finetune_steps`` (5k, 10k, 15k).

Then, per method, the largest compression whose accuracy is within ``little_loss`` of the
unpruned network without fine-tuning (the paper's "little loss", read as at most 1 point).

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
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nettrim  # noqa: E402
from nettrim.baselines import prune_baseline  # noqa: E402
from nettrim.training.finetune import finetune  # noqa: E402
from nettrim.models import PRETRAINED, accuracy, pretrained  # noqa: E402
from nettrim.results import output_discrepancy  # noqa: E402
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
#: The compared methods: the papers' plain program sets the per-layer counts of each point.
METHODS = ("plain", "default", "magnitude", "sparsegpt")
#: The authors' epsilon grid (``nettrim_evaluation.py``).
AUTHORS_EPSILONS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Widths of the network.
SIZES = (784, 300, 1000, 100, 10)


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the full run (the defaults) and of ``--quick`` (:data:`QUICK`).

    Attributes
    ----------
    name : str
        Experiment name: the output files are ``<name>.json`` and ``<name>.png``.
    dataset : {"mnist", "fashion-mnist"}
    recipe : {"authors", "pretrained"}
        ``"authors"``: train here with the authors' recipe (the fields ``train_*``, cached in
        ``$NETTRIM_CACHE`` or ``~/.cache/nettrim/models``); ``"pretrained"``: the cached
        reference ``nettrim.models.pretrained(model_name)`` (10 epochs of plain Adam).
    model_name : str
        Key of :data:`nettrim.models.PRETRAINED` (``recipe="pretrained"`` only).
    train_steps, train_batch, train_lr, lr_decay, lr_decay_steps, keep_prob, l2_weight, init_std, init_bias, validation :
        The authors' recipe: Adam steps of ``train_batch`` images at ``train_lr``, times
        ``lr_decay`` every ``lr_decay_steps`` steps; dropout keep-probability before every
        layer; ``l2_weight * sum(w^2) / 2`` added to the loss; truncated-normal weights (std
        ``init_std``, cut at 2 std) and constant biases; the first ``validation`` training
        images are held out (as TensorFlow's MNIST reader does) and never used.
    calib_samples : int or None
        Training rows of every layer's program (None: all training images).
    epsilons : tuple of float
        Relative epsilons of the plain program (the same for every layer).
    max_iter : int
        ADMM iteration cap per layer (plain program).
    default_max_iter : int or None
        Iteration cap of each solve of the default pipeline (None: the library's own).
    methods : tuple of str
        Subset of :data:`METHODS`; ``"plain"`` is always run (it fixes the counts).
    finetune_epsilons : tuple of float
        The epsilons whose pruned networks are fine-tuned.
    finetune_methods : tuple of str
    finetune_steps : tuple of int
        Cumulative fine-tuning steps (batch ``train_batch``) at which test accuracy is taken.
    finetune_lr, finetune_optimizer :
        Initial learning rate and optimizer (``"sgd"``: plain SGD, the authors'; ``"adam"``)
        of the masked fine-tuning; the rate is multiplied by ``lr_decay`` every
        ``lr_decay_steps`` steps (the authors' schedule, as in training).
    little_loss : float
        "Little loss": at most this drop of test accuracy (fraction) without fine-tuning.
    test_samples : int or None
        Test images used for accuracy (None: all 10,000).
    seed : int
    threads : int
        torch threads (the committed run used one).
    """

    name: str = NAME
    dataset: str = "mnist"
    recipe: str = "authors"
    model_name: str = "fc_784_300_1000_100_10"
    train_steps: int = 8000
    train_batch: int = 100
    train_lr: float = 1e-3
    lr_decay: float = 0.98
    lr_decay_steps: int = 500
    keep_prob: float = 0.5
    l2_weight: float = 0.004
    init_std: float = 0.1
    init_bias: float = 0.1
    validation: int = 5000
    calib_samples: int | None = 2000
    epsilons: tuple = (0.1, 0.3, 0.6)
    max_iter: int = 1000
    default_max_iter: int | None = None
    methods: tuple = METHODS
    finetune_epsilons: tuple = (0.3, 0.6)
    finetune_methods: tuple = ("default", "magnitude")
    finetune_steps: tuple = (5000, 10000, 15000)
    finetune_lr: float = 0.01
    finetune_optimizer: str = "sgd"
    little_loss: float = 0.01
    test_samples: int | None = None
    seed: int = 0
    threads: int = 1


QUICK = Config(train_steps=150, calib_samples=200, epsilons=(0.1, 0.3), max_iter=150,
               methods=("plain", "magnitude", "sparsegpt"), finetune_epsilons=(0.3,),
               finetune_methods=("plain", "magnitude"), finetune_steps=(5, 10),
               lr_decay_steps=4, test_samples=1000)


def train_authors_recipe(config: Config, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """Train the FC net with the authors' recipe; return it as a plain ``mlp`` (no Dropout).

    Deterministic given ``config.seed``; the global RNG is left as it was.
    """
    p_drop = 1.0 - config.keep_prob
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = PRETRAINED["fc_784_300_1000_100_10"].builder()
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for m in linears:
                nn.init.trunc_normal_(m.weight, std=config.init_std, a=-2 * config.init_std,
                                      b=2 * config.init_std)
                m.bias.fill_(config.init_bias)
        # the authors' graph: dropout before every layer (input included)
        trained = nn.Sequential(nn.Flatten(), *[
            module for m in net if not isinstance(m, nn.Flatten)
            for module in ((nn.Dropout(p_drop), m) if isinstance(m, nn.Linear) else (m,))])
        optimizer = torch.optim.Adam(trained.parameters(), lr=config.train_lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_steps,
                                                   config.lr_decay)
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(x.shape[0], generator=generator)
        position = 0
        trained.train()
        for _ in range(config.train_steps):
            if position + config.train_batch > x.shape[0]:  # a new epoch, reshuffled
                order = torch.randperm(x.shape[0], generator=generator)
                position = 0
            index = order[position:position + config.train_batch]
            position += config.train_batch
            loss = nn.functional.cross_entropy(trained(x[index]), y[index])
            loss = loss + config.l2_weight * sum(0.5 * (m.weight ** 2).sum() for m in linears)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def _recipe_key(config: Config) -> str:
    fields = ("dataset", "train_steps", "train_batch", "train_lr", "lr_decay", "lr_decay_steps",
              "keep_prob", "l2_weight", "init_std", "init_bias", "validation", "seed")
    return "fc_authors-" + "-".join(f"{getattr(config, f)}" for f in fields)


def reference_model(config: Config, data_root: str | None) -> tuple:
    """The network to prune and the seconds its training took (0 when loaded from the cache).

    ``recipe="authors"``: trained here with :func:`train_authors_recipe`, cached under a key of
    every recipe field; ``"pretrained"``: :func:`nettrim.models.pretrained`.
    """
    if config.recipe == "pretrained":
        return pretrained(config.model_name, data_root=data_root, seed=config.seed), {
            "recipe": f"nettrim.models.pretrained({config.model_name!r})"}
    if config.recipe != "authors":
        msg = f"recipe: expected 'authors' or 'pretrained', got {config.recipe!r}"
        raise ValueError(msg)
    x, y = _train_split(config, data_root)
    return common.cached_model(_recipe_key(config), fc_builder,
                               lambda: train_authors_recipe(config, x.flatten(1), y))


def fc_builder() -> nn.Sequential:
    """A fresh 784-300-1000-100-10 ``mlp`` (the architecture the cache stores)."""
    return PRETRAINED["fc_784_300_1000_100_10"].builder()


def _train_split(config: Config, data_root: str | None) -> tuple:
    """The training images after the held-out validation block (the authors' 55,000)."""
    x, y = common.load_split(data_root, config.dataset, True)
    return x[config.validation:], y[config.validation:]


def per_layer(result) -> dict:
    """Per-layer nonzeros and totals of a PruneResult."""
    return {
        "layers": [r.name for r in result.report],
        "nonzeros_before": [r.nonzeros_before for r in result.report],
        "nonzeros_after": [r.nonzeros_after for r in result.report],
        "totals": [r.total for r in result.report],
        "layer_relative_error": [r.relative_error for r in result.report],
    }


def _caught(caught) -> list:
    return [str(w.message) for w in caught if issubclass(w.category, nettrim.PruningWarning)]


def _prune_method(method: str, model, x_cal, eps: float, sparsity: dict | None, config: Config):
    """One method's PruneResult (``sparsity``: the plain program's per-layer fractions)."""
    if method == "plain":
        return nettrim.prune(model, x_cal, epsilon=eps, mode="parallel",
                             solver_options={"max_iter": config.max_iter}, **common.PAPER_METHOD)
    if method == "default":
        options = None if config.default_max_iter is None else {
            "max_iter": config.default_max_iter}
        return nettrim.prune(model, x_cal, sparsity=sparsity, mode="parallel",
                             solver_options=options)
    if method in ("magnitude", "sparsegpt"):
        return prune_baseline(model, x_cal, method, sparsity, sequential=method == "sparsegpt")
    msg = f"methods: expected names from {METHODS}, got {method!r}"
    raise ValueError(msg)


def fine_tune_curve(model, x, y, x_test, y_test, config: Config) -> list:
    """Test accuracy after each cumulative step count of ``config.finetune_steps``.

    Masked fine-tuning in blocks of at most ``lr_decay_steps`` steps, the block starting at
    step ``k`` at ``finetune_lr * lr_decay ** (k // lr_decay_steps)`` (with plain SGD, which
    keeps no state, this is the authors' staircase schedule exactly; Adam restarts its
    moments each block). Batches are drawn with replacement from ``x``.
    """
    accuracies, done = [], 0
    generator = torch.Generator().manual_seed(config.seed + 3)
    for steps in config.finetune_steps:
        while done < steps:
            block = min(steps - done, config.lr_decay_steps - done % config.lr_decay_steps)
            index = torch.randint(x.shape[0], (block * config.train_batch,),
                                  generator=generator)
            lr = config.finetune_lr * config.lr_decay ** (done // config.lr_decay_steps)
            model = finetune(model, (x[index], y[index]), epochs=1, lr=lr,
                             batch_size=config.train_batch, seed=config.seed + done,
                             optimizer=config.finetune_optimizer).model
            done += block
        accuracies.append(accuracy(model, x_test, y_test))
    return accuracies


def largest_within(points: list, before: float, loss: float) -> dict:
    """Largest compression among ``points`` (dicts with ``compression``, ``accuracy``) whose
    accuracy is at least ``before - loss``; None values when no point holds."""
    held = [p for p in points if p["accuracy"] is not None and p["accuracy"] >= before - loss]
    best = max(held, key=lambda p: p["compression"], default=None)
    return {"compression": None if best is None else best["compression"],
            "accuracy": None if best is None else best["accuracy"],
            "holds_at_10x": any(p["compression"] >= 10 for p in held)}


def run(config: Config = Config(), data_root: str | None = None) -> dict:
    """Run the epsilon sweep; returns the JSON-ready results."""
    watch = common.Stopwatch()
    with common.threads(config.threads):
        with watch("reference"):
            model, training = reference_model(config, data_root)
        x_train, y_train = _train_split(config, data_root)
        x_test, y_test = common.load_split(data_root, config.dataset, False)
        x_test, y_test = common.subset(x_test, y_test, config.test_samples, config.seed)
        x_cal, _ = common.subset(x_train, y_train, config.calib_samples, config.seed + 2)
        acc_before = accuracy(model, x_test, y_test)
        methods = ("plain",) + tuple(m for m in config.methods if m != "plain")
        rows, tuned = [], []
        for eps in config.epsilons:
            row = {"epsilon": eps}
            results = {}
            for method in methods:
                sparsity = None if method == "plain" else \
                    {r.name: r.sparsity for r in results["plain"].report}
                prefix = "nettrim" if method == "plain" else method
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", nettrim.PruningWarning)
                    try:
                        with watch(method) as phase:
                            results[method] = _prune_method(method, model, x_cal, eps,
                                                            sparsity, config)
                    except nettrim.PruningError as err:   # no solution found: say so
                        if method == "plain":
                            raise
                        row[f"{prefix}_error"] = str(err)
                        row[f"{prefix}_accuracy"] = None
                        continue
                result = results[method]
                if method == "plain":
                    row.update(per_layer(result))
                    row["status"] = [r.status for r in result.report]
                    row["iterations"] = [r.iterations for r in result.report]
                else:
                    row[f"{prefix}_nonzeros_after"] = [r.nonzeros_after for r in result.report]
                    row[f"{prefix}_layer_relative_error"] = [r.relative_error
                                                            for r in result.report]
                row[f"{prefix}_seconds"] = phase.seconds
                row[f"{prefix}_cpu_seconds"] = phase.cpu_seconds
                row[f"{prefix}_warnings"] = _caught(caught)
                with watch("evaluate"):
                    row[f"{prefix}_discrepancy"] = output_discrepancy(model, result.model,
                                                                      x_test)
                    row[f"{prefix}_accuracy"] = accuracy(result.model, x_test, y_test)
            kept, total = sum(row["nonzeros_after"]), sum(row["totals"])
            row["sparsity"] = 1.0 - kept / total
            row["compression"] = total / max(1, kept)
            rows.append(row)
            if eps in config.finetune_epsilons:
                for method in config.finetune_methods:
                    if method not in results:   # not run, or no solution (row says why)
                        continue
                    with watch("finetune"):
                        curve = fine_tune_curve(results[method].model, x_train, y_train,
                                                x_test, y_test, config)
                    tuned.append({"epsilon": eps, "compression": row["compression"],
                                  "method": method, "steps": list(config.finetune_steps),
                                  "accuracy": curve})
        little = {}
        for method in methods:
            prefix = "nettrim" if method == "plain" else method
            points = [{"compression": r["compression"], "accuracy": r[f"{prefix}_accuracy"]}
                      for r in rows]
            little[method] = largest_within(points, acc_before, config.little_loss)
    return {
        "experiment": config.name,
        "paper": SOURCE[config.dataset],
        "paper_values": PAPER if config.dataset == "mnist" else {},
        "config": common.config_dict(config),
        "methods": list(methods),
        "calibration_rows": int(x_cal.shape[0]),
        "training": training,
        "accuracy_before": acc_before,
        "nonzeros_before": rows[0]["nonzeros_before"] if rows else [],
        "sweep": rows,
        "finetuned": tuned,
        "little_loss": little,
        **watch.as_dict(),
        "environment": common.environment(),
    }


#: Plot styles per method.
STYLES = {"plain": ("tab:blue", "Net-Trim, plain l1 (papers)"),
          "default": ("tab:green", "Net-Trim, default (reweight + refit)"),
          "magnitude": ("tab:red", "magnitude (HPTD, one shot)"),
          "sparsegpt": ("tab:purple", "SparseGPT")}


def plot(results: dict, path) -> pathlib.Path:
    """Test accuracy vs compression (log scale), every method; fine-tuned points as stars."""
    import matplotlib.pyplot as plt

    sweep = sorted(results["sweep"], key=lambda r: r["compression"])
    ratio = [r["compression"] for r in sweep]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for method in results["methods"]:
        color, label = STYLES[method]
        prefix = "nettrim" if method == "plain" else method
        points = [(x, 100 * r[f"{prefix}_accuracy"]) for x, r in zip(ratio, sweep)
                  if r[f"{prefix}_accuracy"] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color, label=label)
    for entry in results["finetuned"]:
        color, _ = STYLES[entry["method"]]
        ax.plot([entry["compression"]], [100 * entry["accuracy"][-1]], "*", ms=11, color=color,
                markeredgecolor="k")
    before = 100 * results["accuracy_before"]
    ax.axhline(before, color="gray", lw=0.8, label="unpruned")
    ax.axhline(before - 100 * results["config"]["little_loss"], color="gray", lw=0.8, ls=":",
               label="unpruned - 1 point")
    ax.axvspan(10, 50, color="gold", alpha=0.15, label="paper's 10-50x")
    ax.set_xscale("log")
    ax.set_xlim(1.8, 60)
    ax.set_xticks([2, 5, 10, 20, 50], ["2x", "5x", "10x", "20x", "50x"])
    ax.minorticks_off()
    ax.set_ylim(max(0.0, min(before - 30, ax.get_ylim()[0])), 100)
    ax.set_xlabel("compression (weights before / after), same per-layer counts for all")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['config']['dataset']} FC 784-300-1000-100-10, "
                 f"{results['calibration_rows']} calibration rows (stars: fine-tuned "
                 f"{results['config']['finetune_steps'][-1]} steps)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return common.save_figure(fig, path)


def print_table(results: dict) -> None:
    """The sweep as a text table."""
    before = 100 * results["accuracy_before"]
    methods = results["methods"]
    print(f"{results['experiment']}: unpruned test accuracy {before:.2f}%, "
          f"{results['calibration_rows']} calibration rows")
    print(f"{'eps':>6} {'nonzeros after (plain)':>28} {'x':>6} "
          + " ".join(f"{m:>10}" for m in methods))
    for r in results["sweep"]:
        values = [r[("nettrim" if m == "plain" else m) + "_accuracy"] for m in methods]
        accs = " ".join(f"{'n/a':>10}" if v is None else f"{100 * v:>9.2f}%" for v in values)
        print(f"{r['epsilon']:>6} {'/'.join(map(str, r['nonzeros_after'])):>28} "
              f"{r['compression']:>6.1f} {accs}")
    for e in results["finetuned"]:
        steps = ", ".join(f"{s}: {100 * a:.2f}%" for s, a in zip(e["steps"], e["accuracy"]))
        print(f"fine-tuned {e['method']} at eps {e['epsilon']} ({e['compression']:.1f}x): {steps}")
    for m, v in results["little_loss"].items():
        print(f"{m}: largest compression within {100 * results['config']['little_loss']:.0f} "
              f"point: {v['compression']}, holds at >= 10x: {v['holds_at_10x']}")


def main(argv: Sequence[str] | None = None, *, config: Config | None = None,
         quick_config: Config | None = None) -> int:
    """Command line: ``python paper_repro/mnist_fc.py [--quick] [--out-dir DIR] [--data-root DIR]``.

    ``config`` / ``quick_config`` replace the full / quick settings (used by
    :mod:`paper_repro.fashion_fc`).
    """
    args, config, results = common.run_main(argv, __doc__, config or Config(),
                                            quick_config or QUICK, run, None)
    plot(results, args.out_dir / f"{config.name}.png")
    print_table(results)
    print(f"{results['seconds']:.1f} s ({results['cpu_seconds']:.1f} CPU s); wrote "
          f"{args.out_dir / (config.name + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
