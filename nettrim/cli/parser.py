"""The parser of the ``nettrim`` command: subcommands, flags, help text on every flag.

Torch-free (``--help`` and ``--version`` stay fast): the commands it dispatches to import the
library when they run.
"""

from __future__ import annotations

import argparse

from ..io.formats import FORMATS
from .commands import cmd_demo, cmd_evaluate, cmd_prune, cmd_report
from .train import cmd_train_prune
from .common import (DEFAULT_EPSILON, DEFAULT_THREADS, DEMO_EPOCHS, DEMO_SAMPLES, DEMO_SPARSITY,
                     EXIT_USAGE, version)

__all__ = ["COMMANDS", "build_parser"]

#: Each subcommand's line in ``nettrim --help`` and its own ``--help`` description.
COMMANDS = {
    "prune": ("prune a checkpoint on calibration data",
              "Prune CHECKPOINT with Net-Trim on calibration data; write the pruned model to OUT "
              "(same format as the input unless --format) and a report beside it (x.pt -> "
              "x.report.json, x.safetensors -> x.safetensors.report.json) unless --report."),
    "report": ("per-layer shapes, nonzeros and sparsity of a checkpoint",
               "Show CHECKPOINT's prunable layers; with --data also the accuracy (when labels are "
               "given) and, against the original model (--original, or the one named in the "
               "report.json beside CHECKPOINT), the per-layer and output relative error."),
    "evaluate": ("compare a pruned checkpoint with its original on data",
                 "Accuracy (when the data has labels), nonzeros and the relative output "
                 "discrepancy ||f_pruned(x) - f(x)||_F / ||f(x)||_F."),
    "train-prune": ("prune a checkpoint while training it on labelled data",
                    "Train CHECKPOINT on labelled data while pruning it with one schedule (han, "
                    "gradual, dns or nettrim); write the pruned model to OUT, a JSON report "
                    "(OUT's stem + .report.json) and a plot of accuracy and sparsity per epoch "
                    "(OUT's stem + .training.png). A state file written after every epoch lets "
                    "an interrupted run resume: run the same command again."),
    "demo": ("train LeNet-300-100 on MNIST briefly, prune it, report",
             "Train LeNet-300-100 on MNIST for a couple of epochs, prune it in cascade mode to 90% "
             "sparsity (or --epsilon) on 5,000 calibration samples, print test accuracy before "
             "and after and the per-layer table. MNIST is read from --data-root (else "
             "$NETTRIM_DATA, else ~/.cache/nettrim) and downloaded, checksum-verified, when "
             "missing."),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``nettrim: error: ...`` and exit status 2."""

    def error(self, message):  # noqa: D102 - argparse API
        self.exit(EXIT_USAGE, f"nettrim: error: {message} (see '{self.prog} --help')\n")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _nonneg_int(text: str) -> int:
    return _int_at_least(text, 0)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", metavar="MODULE:CALLABLE",
                   help="factory that builds the model, e.g. nettrim.models:lenet_300_100; needed "
                        "for state_dict and safetensors checkpoints (optional for .pt2 programs); "
                        "the current directory is on the import path, as with python -m")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a whole pickled module, or the parts of a .pt2 program "
                        "that are not plain data (this runs code from the file; only for files "
                        "you trust)")


def _add_input_output(p: argparse.ArgumentParser, checkpoint_help: str, data_metavar: str,
                      data_help: str) -> None:
    """CHECKPOINT, --data and --out of a command that writes a pruned model."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=checkpoint_help)
    p.add_argument("--data", required=True, metavar=data_metavar, help=data_help)
    p.add_argument("--out", required=True, metavar="OUT", help="where to write the pruned model")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, metavar="N", default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}: measured fastest for "
                        "the solver's small matrix products on a busy machine; more can pay "
                        "for large layers on an idle one; at most the CPUs available)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="only these layers (module names, e.g. 1 3); default: every Linear/Conv2d")
    p.add_argument("--ignore", nargs="+", metavar="NAME", default=[],
                   help="leave these layers out")


def _add_subset(p: argparse.ArgumentParser, samples_help: str) -> None:
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="split read from an idx directory (default test)")
    p.add_argument("--samples", type=_positive_int, metavar="N", help=samples_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subset (default 0)")


def _mean_std(text: str) -> tuple:
    """``MEAN,STD``: two numbers, or per-channel lists joined by '/' (``0.5/0.4,0.2/0.3``)."""
    parts = text.split(",")
    try:
        mean, std = ([float(v) for v in part.split("/")] for part in parts) if len(parts) == 2 \
            else (None, None)
    except ValueError:
        mean = std = None
    if mean is None or len(mean) != len(std) or not all(v > 0 for v in std):
        msg = (f"expected MEAN,STD (e.g. 0.1307,0.3081; per channel 0.49/0.48/0.45,0.25/0.24/"
               f"0.26) with STD > 0, got {text!r}")
        raise argparse.ArgumentTypeError(msg)
    return tuple(mean), tuple(std)


def _add_normalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--normalize", type=_mean_std, metavar="MEAN,STD",
                   help="feed (x - MEAN) / STD (per channel with '/'-joined lists, channels on "
                        "dim 1). The loader reads float data as stored and scales uint8 data "
                        "(idx images) by 1/255 into [0, 1]; integer data for a model whose "
                        "input enters an nn.Embedding stays token ids (not normalized). "
                        "Default: no normalization")


def _add_table_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", dest="fmt", choices=("table", "json", "csv"), default="table",
                   help="output format (default table)")


def _subcommand(sub, name: str) -> argparse.ArgumentParser:
    help_line, description = COMMANDS[name]
    return sub.add_parser(name, help=help_line, description=description)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``nettrim`` command (subcommands prune, report, evaluate, train-prune,
    demo)."""
    parser = _Parser(prog="nettrim", description="Net-Trim: prune trained ReLU networks by convex "
                     "optimisation, layer by layer.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = _subcommand(sub, "prune")
    _add_input_output(p, "state_dict (.pt, with --arch), safetensors (with --arch), torch.export "
                         "program (.pt2) or pickled module (with --trust-pickle)", "CALIB",
                      "calibration data: .npz (x, optional y), .pt (tensor or {x, y}) or an "
                      "MNIST-style idx directory (train split)")
    _add_model_options(p)
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--epsilon", type=_nonneg_float, metavar="E",
                      help=f"relative tolerance per layer, a fraction of ||Y||_F (default "
                           f"{DEFAULT_EPSILON}; in cascade mode: the first layer's)")
    goal.add_argument("--sparsity", type=_fraction, metavar="S",
                      help="target fraction of zero weights per layer instead of an epsilon")
    p.add_argument("--global", dest="global_budget", action="store_true",
                   help="--sparsity is the fraction of all the selected weights together; "
                        "each layer's share is chosen by --allocation")
    p.add_argument("--allocation", choices=("loss", "epsilon", "marginal", "magnitude"),
                   help="with --global: how the budget is split (default loss: the per-layer "
                        "counts of least calibration loss, cross-entropy when --data has labels, "
                        "else the output discrepancy; epsilon, marginal: one epsilon for all "
                        "layers; magnitude: global magnitude's counts)")
    p.add_argument("--min-per-unit", type=_nonneg_int, metavar="K",
                   help="with --global: every layer keeps at least K weights per output unit "
                        "(layer-collapse guard; default 4)")
    p.add_argument("--mode", choices=("parallel", "cascade"), default="parallel",
                   help="parallel: each layer from the original activations; cascade: from the "
                        "pruned layers before it (default parallel)")
    p.add_argument("--solver", choices=("admm", "cvxpy"), default="admm",
                   help="admm (fast, default) or cvxpy (reference, small layers only)")
    _add_selection(p)
    p.add_argument("--samples", type=_positive_int, metavar="N",
                   help="use N calibration samples (a seeded random subset); default all")
    p.add_argument("--max-rows", type=_positive_int, metavar="R",
                   help="keep at most R rows per layer (a seeded subset of the conv patches or "
                        "sequence tokens the samples give); default all")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where activations are captured and solved (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subsets (default 0)")
    p.add_argument("--gamma", type=float, default=1.1,
                   help="cascade slack gamma >= 1 (default 1.1)")
    p.add_argument("--max-iter", type=_positive_int, metavar="N",
                   help="iteration cap per solve: the ADMM's, or Clarabel's with --solver "
                        "cvxpy (default: the solver's)")
    p.add_argument("--reweight", type=_nonneg_int, default=1, metavar="K",
                   help="rounds of reweighted l1 before the refit (default 1; 0 with --no-refit "
                        "is the papers' plain program)")
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep the l1 weights as they are instead of refitting them on their "
                        "support (default: refit, which undoes the l1 shrinkage)")
    p.add_argument("--program", choices=("auto", "best", "relu"), default="auto",
                   help="ReLU layers at a --sparsity: keep the linear program's weights where "
                        "their post-ReLU error on the calibration rows is lower (auto: solved "
                        "when its refit on the ReLU support is lower; best: always solved; "
                        "relu: the ReLU program's weights); default auto")
    p.add_argument("--lenient", action="store_true",
                   help="warn and keep going when a layer's solver stops short of an optimal "
                        "status (default: fail with exit status 1 naming the layer)")
    p.add_argument("--format", dest="out_format", choices=FORMATS,
                   help="output format (default: export for an OUT ending in .pt2, safetensors "
                        "for .safetensors, else the input's)")
    p.add_argument("--report", metavar="REPORT.json",
                   help="where to write the JSON report (default beside OUT: x.pt -> "
                        "x.report.json, other suffixes kept: x.safetensors.report.json)")
    p.add_argument("--plot", metavar="DIR", help="write sparsity and error plots (PNG) into DIR")
    p.add_argument("--latency", action="store_true",
                   help="add a 'latency' section to the report: the pruned model's CPU latency "
                        "at batch 1 and 256, dense, compacted and on sparse CSR kernels")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to be the input checkpoint itself (replaced atomically)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the solves as Ray tasks: on a local Ray instance started for this "
                        "run (no ADDRESS), or on a running cluster (--ray=ADDRESS: auto, "
                        "host:6379 or ray://host:10001); prints the cluster size it got; needs "
                        "pip install 'nettrim[ray]'")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars, no table; one line per finished layer on stderr "
                        "(--silent: none)")
    p.add_argument("--recipe", metavar="FILE",
                   help="read the pruning options (sparsity or epsilon, per layer as "
                        "{layer: value}; layers, ignore, mode, program, ...) from a JSON file, "
                        "YAML when PyYAML is installed, or a run's report (every report records "
                        "its run's recipe); flags given here win")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run after its last finished layer: every "
                        "per-layer run keeps its state in OUT.resume (written atomically after "
                        "each finished layer, removed once the outputs are written); rerun the "
                        "same command with --resume (without it, the state is replaced)")
    p.add_argument("--silent", action="store_true",
                   help="print nothing but warnings and errors (implies -q)")
    _add_normalize(p)
    _add_threads(p)
    p.set_defaults(func=cmd_prune)

    p = _subcommand(sub, "report")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint to inspect")
    _add_model_options(p)
    p.add_argument("--data", metavar="DATA", help="data to measure on (.npz, .pt or idx directory)")
    p.add_argument("--original", metavar="ORIGINAL",
                   help="the unpruned checkpoint to compare with (same --arch)")
    _add_subset(p, "use N samples of the data (seeded random subset)")
    _add_normalize(p)
    _add_selection(p)
    _add_table_format(p)
    p.add_argument("--plot", metavar="DIR", help="write sparsity (and error) plots into DIR")
    p.add_argument("--latency", action="store_true",
                   help="also measure CPU latency at batch 1 and 256: as stored (dense), with "
                        "dead units removed (compacted) and on sparse CSR kernels where faster "
                        "(needs --data for the input shape)")
    _add_threads(p)
    p.set_defaults(func=cmd_report)

    p = _subcommand(sub, "evaluate")
    p.add_argument("original", metavar="ORIGINAL", help="the unpruned checkpoint")
    p.add_argument("pruned", metavar="PRUNED", help="the pruned checkpoint")
    p.add_argument("--data", required=True, metavar="TEST",
                   help="test data (.npz, .pt or idx directory)")
    _add_model_options(p)
    _add_subset(p, "use N samples (seeded random subset)")
    _add_normalize(p)
    _add_table_format(p)
    _add_threads(p)
    p.set_defaults(func=cmd_evaluate)

    p = _subcommand(sub, "train-prune")
    _add_input_output(p, "the trained model: state_dict or safetensors (with --arch), or a "
                         "pickled module (with --trust-pickle)", "LABELLED",
                      "training data with labels: .npz (x, y), .pt ({x, y}) or an MNIST-style "
                      "idx directory (train split; its test split is evaluated after every "
                      "epoch unless --eval-data)")
    _add_model_options(p)
    p.add_argument("--method", choices=("han", "gradual", "dns", "nettrim"), default="gradual",
                   help="han: prune-retrain rounds (Han et al. 2015); gradual: cubic schedule "
                        "(Zhu & Gupta 2017); dns: prune and splice (Guo et al. 2016); nettrim: "
                        "rounds of cascade Net-Trim and retraining (default gradual)")
    p.add_argument("--sparsity", nargs="+", default=["0.9"], metavar="S",
                   help="final fraction of zero weights per layer: one S for every layer, or "
                        "NAME=S pairs naming every pruned layer (default 0.9)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default 10)")
    p.add_argument("--eval-data", metavar="TEST",
                   help="labelled data evaluated after every epoch (idx directories: the test "
                        "split)")
    p.add_argument("--eval-samples", type=_positive_int, metavar="N",
                   help="evaluate on N samples of it (seeded subset); default all")
    p.add_argument("--samples", type=_positive_int, metavar="N",
                   help="train on N samples (seeded subset); default all")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="SGD with momentum (default, Caffe's LeNet solver) or Adam")
    p.add_argument("--lr", type=_nonneg_float, metavar="LR",
                   help="learning rate (default 0.01 for SGD, 1e-3 for Adam; han retrains at "
                        "LR x --lr-factor)")
    p.add_argument("--momentum", type=_nonneg_float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--weight-decay", type=_nonneg_float, default=5e-4,
                   help="L2 weight decay (default 5e-4)")
    p.add_argument("--lr-policy", choices=("inv", "constant"), default="inv",
                   help="inv: LR (1 + 1e-4 t)^-0.75 (Caffe's LeNet, default) or constant")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (64)")
    for flag, kind, metavar, text in (   # the schedules' own options (default: the method's)
            ("--rounds", _positive_int, "K", "han and nettrim: prune / retrain rounds (3)"),
            ("--lr-factor", _nonneg_float, "F", "han: retraining rate as a fraction of --lr (0.1)"),
            ("--pruning-fraction", _fraction, "F",
             "gradual and dns: fraction of the steps during which masks change (0.75)"),
            ("--frequency", _positive_int, "STEPS", "gradual: steps between mask updates (100)"),
            ("--dns-gamma", _nonneg_float, "G", "dns: update probability (1 + G t)^-1 (1e-4)"),
            ("--calibration-samples", _positive_int, "N",
             "nettrim: calibration samples for each round (2000)"),
            ("--max-rows", _positive_int, "R",
             "nettrim: at most R rows per layer's program (conv patches); default all")):
        p.add_argument(flag, type=kind, metavar=metavar, help=text)
    _add_selection(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data order, the subsets and DNS's draws (default 0)")
    p.add_argument("--state", metavar="STATE",
                   help="training state file (default OUT's stem + .train-state.pt), written "
                        "after every epoch and removed at the end")
    p.add_argument("--restart", action="store_true",
                   help="ignore an existing state file and start over")
    p.add_argument("--format", dest="out_format", choices=("state_dict", "module", "safetensors"),
                   help="output format (default: safetensors for .safetensors, else the input's)")
    p.add_argument("--report", metavar="REPORT.json",
                   help="where to write the JSON report (default: OUT's stem + .report.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to be the input checkpoint itself (replaced atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    _add_threads(p)
    p.set_defaults(func=cmd_train_prune)

    p = _subcommand(sub, "demo")
    p.add_argument("--data-root", metavar="DIR", help="directory holding mnist/ (idx .gz files)")
    p.add_argument("--out", metavar="DIR",
                   help="also save original.pt, pruned.pt (state_dicts) and pruned.report.json")
    p.add_argument("--plot", metavar="DIR", help="write the sparsity and error plots into DIR")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--sparsity", type=_fraction, default=None, metavar="S",
                      help=f"fraction of zero weights per layer (default {DEMO_SPARSITY})")
    goal.add_argument("--epsilon", type=_nonneg_float, default=None, metavar="E",
                      help="prune to the first layer's relative epsilon E instead of a sparsity")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # hidden knobs for quick checks
    p.add_argument("--epochs", type=_positive_int, default=DEMO_EPOCHS, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=_positive_int, default=DEMO_SAMPLES, help=argparse.SUPPRESS)
    p.add_argument("--train-samples", type=_positive_int, help=argparse.SUPPRESS)
    p.add_argument("--test-samples", type=_positive_int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    _add_threads(p)
    p.set_defaults(func=cmd_demo)
    return parser
