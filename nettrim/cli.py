"""The ``nettrim`` command line: prune saved checkpoints, inspect and compare them, run a demo.

::

    nettrim prune CHECKPOINT --data CALIB --out OUT [--arch module:callable]
                  [--epsilon E | --sparsity S]
                  [--mode parallel|cascade] [--solver admm|cvxpy] [--layers ...] [--ignore ...]
                  [--samples N] [--device cpu|cuda] [--seed N] [--report REPORT.json] [--plot DIR]
    nettrim report CHECKPOINT [--arch ...] [--data ...] [--original ORIGINAL]
                   [--format table|json|csv]
    nettrim evaluate ORIGINAL PRUNED --data TEST [--arch ...]
    nettrim demo [--data-root DIR] [--out DIR] [--plot DIR]

Exit status: 0 success; 1 a layer's solver failed (``PruningError``, strict by default); 2 a
usage error (bad option, missing or corrupt file, wrong ``--arch``, data that does not fit the
model, no prunable layers, an output path that cannot be written), printed as one line
``nettrim: error: ...`` on stderr; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), each with
one line on stderr and no partial output file left behind.

The command line only builds options and calls the library: :func:`nettrim.prune.prune`,
:mod:`nettrim.checkpoint` (file formats), :mod:`nettrim.report` and :mod:`nettrim.plots`. torch
and the library are imported only once the arguments are parsed (``--help`` and ``--version``
stay fast), inside the handlers of Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pathlib
import signal
import sys
import tempfile
import threading
import warnings
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .formats import FORMATS

if TYPE_CHECKING:  # imported lazily at run time (see the module docstring)
    import torch

    from . import checkpoint as ckpt_io

__all__ = ["main", "build_parser", "UsageError", "Terminated", "EXIT_OK", "EXIT_FAILURE",
           "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "DEFAULT_EPSILON",
           "report_path_for"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM, as a shell reports a process killed by it.
EXIT_TERMINATED = 143
#: Relative epsilon used when neither --epsilon nor --sparsity is given.
DEFAULT_EPSILON = 0.05
#: torch CPU threads unless --threads says otherwise. torch's own default (one per core) stalls
#: the solver's small matrix products whenever another process holds a core: the demo took
#: 19 min with it and 6.5 min with one thread on a busy 2-core machine (issue 11).
DEFAULT_THREADS = 1
#: Demo defaults: a couple of minutes on two CPU cores.
DEMO_EPOCHS = 2
DEMO_SAMPLES = 5000
#: The demo prunes every layer to this sparsity (cascade) unless --epsilon is given.
DEMO_SPARSITY = 0.9
#: Rows pushed through a model to check that the data fits it.
_PROBE_ROWS = 2


class UsageError(Exception):
    """A mistake in the invocation or the input files; printed as one line, exit status 2."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (like KeyboardInterrupt on SIGINT), so that every
    ``finally`` and :func:`nettrim.checkpoint.atomic_write` cleans up; exit status 143."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``nettrim: error: ...`` and exit status 2."""

    def error(self, message):  # noqa: D102 - argparse API
        self.exit(EXIT_USAGE, f"nettrim: error: {message} (see '{self.prog} --help')\n")


# ---- parser -------------------------------------------------------------------------------------
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
                   help="allow loading a whole pickled module (this runs code from the file; "
                        "only for files you trust)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, metavar="N", default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}: measured fastest for "
                        "the solver's small matrix products on a busy machine; more can pay "
                        "for large layers on an idle one)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="only these layers (module names, e.g. 1 3); default: every Linear/Conv2d")
    p.add_argument("--ignore", nargs="+", metavar="NAME", default=[],
                   help="leave these layers out")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``nettrim`` command (subcommands prune, report, evaluate, demo)."""
    parser = _Parser(prog="nettrim", description="Net-Trim: prune trained ReLU networks by convex "
                     "optimisation, layer by layer.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("prune", help="prune a checkpoint on calibration data",
                       description="Prune CHECKPOINT with Net-Trim on calibration data; write the "
                       "pruned model to OUT (same format as the input unless --format) and a "
                       "report (OUT's stem + .report.json unless --report).")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="state_dict (.pt, with --arch), safetensors (with --arch), torch.export "
                        "program (.pt2) or pickled module (with --trust-pickle)")
    p.add_argument("--data", required=True, metavar="CALIB",
                   help="calibration data: .npz (x, optional y), .pt (tensor or {x, y}) or an "
                        "MNIST-style idx directory (train split)")
    p.add_argument("--out", required=True, metavar="OUT", help="where to write the pruned model")
    _add_model_options(p)
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--epsilon", type=_nonneg_float, metavar="E",
                      help=f"relative tolerance per layer, a fraction of ||Y||_F (default "
                           f"{DEFAULT_EPSILON}; in cascade mode: the first layer's)")
    goal.add_argument("--sparsity", type=_fraction, metavar="S",
                      help="target fraction of zero weights per layer instead of an epsilon")
    p.add_argument("--global", dest="global_budget", action="store_true",
                   help="--sparsity is the fraction of all the selected weights together; "
                        "Net-Trim picks each layer's share (one epsilon for all layers)")
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
                   help="ADMM iteration cap per solve (default: the solver's)")
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
                   help="where to write the JSON report (default: OUT's stem + .report.json)")
    p.add_argument("--plot", metavar="DIR", help="write sparsity and error plots (PNG) into DIR")
    p.add_argument("--latency", action="store_true",
                   help="add a 'latency' section to the report: the pruned model's CPU latency "
                        "at batch 1 and 256, dense, compacted and on sparse CSR kernels")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to be the input checkpoint itself (replaced atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no table")
    _add_threads(p)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("report", help="per-layer shapes, nonzeros and sparsity of a checkpoint",
                       description="Show CHECKPOINT's prunable layers; with --data also the "
                       "accuracy (when labels are given) and, against the original model "
                       "(--original, or the one named in the report.json beside CHECKPOINT), "
                       "the per-layer and output relative error.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint to inspect")
    _add_model_options(p)
    p.add_argument("--data", metavar="DATA", help="data to measure on (.npz, .pt or idx directory)")
    p.add_argument("--original", metavar="ORIGINAL",
                   help="the unpruned checkpoint to compare with (same --arch)")
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="split read from an idx directory (default test)")
    p.add_argument("--samples", type=_positive_int, metavar="N",
                   help="use N samples of the data (seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subset (default 0)")
    _add_selection(p)
    p.add_argument("--format", dest="fmt", choices=("table", "json", "csv"), default="table",
                   help="output format (default table)")
    p.add_argument("--plot", metavar="DIR", help="write sparsity (and error) plots into DIR")
    p.add_argument("--latency", action="store_true",
                   help="also measure CPU latency at batch 1 and 256: as stored (dense), with "
                        "dead units removed (compacted) and on sparse CSR kernels where faster "
                        "(needs --data for the input shape)")
    _add_threads(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("evaluate", help="compare a pruned checkpoint with its original on data",
                       description="Accuracy (when the data has labels), nonzeros and the "
                       "relative output discrepancy ||f_pruned(x) - f(x)||_F / ||f(x)||_F.")
    p.add_argument("original", metavar="ORIGINAL", help="the unpruned checkpoint")
    p.add_argument("pruned", metavar="PRUNED", help="the pruned checkpoint")
    p.add_argument("--data", required=True, metavar="TEST",
                   help="test data (.npz, .pt or idx directory)")
    _add_model_options(p)
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="split read from an idx directory (default test)")
    p.add_argument("--samples", type=_positive_int, metavar="N",
                   help="use N samples (seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subset (default 0)")
    p.add_argument("--format", dest="fmt", choices=("table", "json", "csv"), default="table",
                   help="output format (default table)")
    _add_threads(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="train LeNet-300-100 on MNIST briefly, prune it, report",
                       description="Train LeNet-300-100 on MNIST for a couple of epochs, prune it "
                       "in cascade mode to 90% sparsity (or --epsilon) on 5,000 calibration samples, "
                       "print test accuracy before "
                       "and after and the per-layer table. MNIST is read from --data-root (else "
                       "$NETTRIM_DATA, else ~/.cache/nettrim) and downloaded, checksum-verified, "
                       "when missing.")
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
    p.set_defaults(func=_cmd_demo)
    return parser


# ---- entry point --------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``nettrim`` command line; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return int(stop.code or 0) if not isinstance(stop.code, str) else EXIT_USAGE
    args.argv = argv
    with _signals_raise():
        try:
            return _run(args)
        except KeyboardInterrupt:
            return _stopped("interrupted", EXIT_INTERRUPTED)
        except Terminated:
            return _stopped("terminated (SIGTERM)", EXIT_TERMINATED)
        except BrokenPipeError:  # stdout closed early (``nettrim report ... | head``)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILURE


def _run(args) -> int:
    """Import what the command needs (torch, the library) and run it; user errors -> 2,
    solver failures -> 1."""
    _import_path_has_cwd()
    import torch

    from .checkpoint import CheckpointError
    from .prune import PruningError

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or EXIT_OK)
    except (UsageError, CheckpointError) as err:
        _error(str(err))
        return EXIT_USAGE
    except PruningError as err:
        _error(f"pruning failed: {_cli_hint(str(err))}")
        return EXIT_FAILURE


def _stopped(what: str, code: int) -> int:
    print(f"nettrim: {what}; files are written whole or not at all", file=sys.stderr, flush=True)
    return code


def _raise_once(signum, frame):
    """Signal handler: stop the run by an exception; a repeated signal is ignored so that the
    clean-up it triggers (removing temporary files) is not cut short."""
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


@contextlib.contextmanager
def _signals_raise():
    """SIGINT -> KeyboardInterrupt, SIGTERM -> :class:`Terminated` while the command runs
    (main thread only; the previous handlers are restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_once) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _import_path_has_cwd() -> None:
    """Put the working directory first on the import path, as ``python -m`` does, so that
    ``--arch mymodule:build`` finds a module there also through the installed script."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _error(message: str) -> None:
    print(f"nettrim: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _version() -> str:
    try:
        from . import __version__
    except ImportError:  # pragma: no cover - partial checkout
        return "unknown"
    return __version__


def _say(args, *lines: str) -> None:
    if not getattr(args, "quiet", False):
        print(*lines, sep="\n", flush=True)


# ---- shared steps -------------------------------------------------------------------------------
def report_path_for(out: str | os.PathLike) -> pathlib.Path:
    """Default report file of an output checkpoint: ``OUT``'s stem + ``.report.json``, beside it."""
    out = pathlib.Path(out)
    return out.with_name(out.stem + ".report.json")


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _device(name: str) -> torch.device:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to torch on this machine")
    return torch.device(name)


def _subset(x: torch.Tensor, y: Optional[torch.Tensor], samples: Optional[int], seed: int):
    import torch

    if samples is None or samples >= x.shape[0]:
        return x, y
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:samples]
    order = order.sort().values
    return x[order], (None if y is None else y[order])


def _load_data(path: str, split: str, samples: Optional[int], seed: int,
               integers: bool = False):
    from . import checkpoint as ckpt_io

    x, y = ckpt_io.load_data(path, split=split, integers=integers)
    n_available = x.shape[0]
    x, y = _subset(x, y, samples, seed)
    return x, y, n_available


def _check_fits(model: torch.nn.Module, x: torch.Tensor, what: str, many: bool = False) -> Any:
    """Run the model on a couple of rows; a failure is a shape mismatch between data and model,
    a non-finite output a model (or data) that gives no usable measurement. With ``many``, a
    tuple or dict of outputs is accepted (each tensor checked)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.empty(0)).device
        with torch.no_grad():
            out = model(x[:_PROBE_ROWS].to(device))
    except Exception as err:  # noqa: BLE001 - whatever the model raises on the wrong input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (f"{what} (samples of shape {tuple(x.shape[1:])}) does not fit the model: {first}")
        raise UsageError(msg) from err
    finally:
        model.train(was_training)
    from .prune import output_tensors

    if not isinstance(out, torch.Tensor) and not (many and output_tensors(out)):
        msg = f"the model returns a {type(out).__name__}, not a tensor: nettrim needs one output"
        raise UsageError(msg)
    if any(not bool(torch.isfinite(t).all()) for t in output_tensors(out)):
        msg = f"the model's output on {what} has NaN/Inf entries: nothing can be measured on it"
        raise UsageError(msg)
    return out


def _select(model: torch.nn.Module, layers, ignore) -> list[str]:
    from .capture import prunable_layers

    try:
        return list(prunable_layers(model, layers, ignore))
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    from .models import accuracy

    return accuracy(model, x, y)


def _load(path: str, args) -> ckpt_io.Checkpoint:
    from . import checkpoint as ckpt_io

    return ckpt_io.load_checkpoint(path, arch=args.arch, trust_pickle=args.trust_pickle)


def _check_writable(path: pathlib.Path, what: str, *, is_dir: bool = False) -> None:
    """UsageError unless ``path`` (a file, or a directory with ``is_dir``) can be written: its
    nearest existing ancestor must be a directory that takes new files, probed with an anonymous
    temporary file (no name is left behind, even if interrupted)."""
    if path.exists() and path.is_dir() != is_dir:
        raise UsageError(f"{what} {path} is {'a directory' if path.is_dir() else 'a file'}; "
                         f"name a {'directory' if is_dir else 'file'}")
    existing = path if is_dir else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(f"{what} {path}: cannot write in {existing} "
                         f"({err.strerror or type(err).__name__})") from err


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


# ---- prune --------------------------------------------------------------------------------------
def _cmd_prune(args) -> int:
    import torch

    from . import checkpoint as ckpt_io
    from . import report as rep
    from .graph import takes_token_ids
    from .prune import prune

    start = time.perf_counter()
    source = pathlib.Path(args.checkpoint)
    out = pathlib.Path(args.out)
    report_file = pathlib.Path(args.report) if args.report else report_path_for(out)
    ckpt_io.detect_format(source)  # missing, a directory, empty: one line before any work
    if _same_file(out, source) and not args.overwrite:
        raise UsageError(f"--out {out} is the input checkpoint; pass --overwrite to replace it "
                         "(the input is otherwise never modified)")
    if _same_file(report_file, source) or report_file.resolve() == out.resolve():
        raise UsageError(f"the report path {report_file} collides with the input or output "
                         "checkpoint; pass --report elsewhere")
    _check_writable(out, "--out")
    _check_writable(report_file, "--report")
    if args.plot:
        _check_writable(pathlib.Path(args.plot), "--plot", is_dir=True)
    source_hash = _sha256(source)
    loaded = _load(args.checkpoint, args)
    out_format = args.out_format or _format_from_suffix(out) or loaded.format
    x, y, n_available = _load_data(args.data, "train", args.samples, args.seed,
                                   integers=takes_token_ids(loaded.model))
    device = _device(args.device)
    model = loaded.model.to(device)
    one_output = isinstance(_check_fits(model, x, f"data {args.data}", many=True), torch.Tensor)
    selected = _select(model, args.layers, args.ignore)
    example, dynamic = None, False
    notes = list(loaded.notes)
    if out_format == "export":
        if loaded.format == "export":
            example, dynamic = ckpt_io.example_from_program(loaded, x)
        else:  # two rows: an example of batch 1 would fix the exported batch size to 1
            example = x[:2].repeat(2 if x.shape[0] == 1 else 1, *[1] * (x.ndim - 1))
            dynamic = True
        notes.append(f"re-exported with torch.export.export on an example input of shape "
                     f"{tuple(example.shape)}{' (batch dimension dynamic)' if dynamic else ''}")
    if (args.global_budget or args.min_per_unit is not None) and args.sparsity is None:
        raise UsageError("--global and --min-per-unit need --sparsity (the model-wide fraction)")
    if args.min_per_unit is not None and not args.global_budget:
        raise UsageError("--min-per-unit is the guard of a global budget: add --global")
    epsilon = args.epsilon if args.sparsity is None and args.epsilon is not None else (
        DEFAULT_EPSILON if args.sparsity is None else None)
    solver_options = None
    if args.max_iter and args.solver == "admm":
        solver_options = {"max_iter": args.max_iter}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = prune(
                model, x.to(device), epsilon, sparsity=args.sparsity, mode=args.mode,
                solver=args.solver, layers=selected, seed=args.seed, device=device,
                max_samples=args.max_rows, gamma=args.gamma, strict=not args.lenient,
                progress=not args.quiet, solver_options=solver_options, refit=args.refit,
                reweight=args.reweight, scope="global" if args.global_budget else "layer",
                min_per_unit=args.min_per_unit, program=args.program)
    except (ValueError, TypeError) as err:
        # prune validates its options and the model structure; anything it rejects is ours
        from .prune import PruningError
        if isinstance(err, PruningError):
            raise
        raise UsageError(f"prune rejected the input: {err}") from err
    pruned = result.model.cpu()
    notes += [f"layer {row.name}: {row.note}" for row in result.report if row.note]
    ckpt_io.save_checkpoint(pruned, out, format=out_format, example_input=example,
                            dynamic_batch=dynamic)
    rows = [r.as_dict() for r in result.report]
    summary: dict = {}
    if y is not None and one_output:
        summary["accuracy_original"] = _accuracy(loaded.model.cpu(), x, y)  # prune copied it
        summary["accuracy_pruned"] = _accuracy(pruned, x, y)
    document = {
        "command": "prune",
        "nettrim_version": _version(),
        "argv": list(args.argv),
        "input": {"path": str(source.resolve()), "format": loaded.format, "arch": args.arch,
                  "sha256": source_hash},
        "output": {"path": str(out.resolve()), "format": out_format, "sha256": _sha256(out)},
        "data": {"path": str(pathlib.Path(args.data).resolve()), "samples": int(x.shape[0]),
                 "available": int(n_available), "sample_shape": list(x.shape[1:]),
                 "labels": y is not None},
        "options": {**_cli_options(args), "epsilon_used": epsilon, "prune": result.options},
        "notes": notes,
        "layers": rows,
        "totals": rep.totals(rows),
        "output_error": result.output_error,
        **summary,
        **_latency(args, pruned),
        "seconds": time.perf_counter() - start,
    }
    ckpt_io.atomic_write(report_file, lambda tmp: pathlib.Path(tmp).write_text(
        rep.format_json(document) + "\n", encoding="utf-8"))
    plots = []
    if args.plot:
        from .plots import plot_report
        plots = plot_report(rows, args.plot)
    lines = [rep.format_prune_table(result.report, result.output_error)]
    if result.options.get("scope") == "global":
        from .budget import format_allocation
        lines.append(format_allocation(result.options))
    if "accuracy_pruned" in summary:
        lines.append(f"calibration accuracy: original {summary['accuracy_original']:.2%}, "
                     f"pruned {summary['accuracy_pruned']:.2%}")
    lines += [f"note: {n}" for n in notes]
    lines.append(f"wrote {out} ({out_format}) and {report_file}")
    lines += [f"wrote {p}" for p in plots]
    _say(args, *lines)
    return EXIT_OK


def _cli_hint(text: str) -> str:
    """A library message with the command line's spelling of the iteration cap."""
    from .prune import MAX_ITER_HINT

    return text.replace(MAX_ITER_HINT, "raise the iteration cap with --max-iter N")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings during a command, one line each, in the command line's terms."""
    text = _cli_hint(str(message))
    print(f"nettrim: warning: {text}", file=sys.stderr if file is None else file, flush=True)


def _format_from_suffix(path: pathlib.Path) -> Optional[str]:
    """``export`` for ``.pt2``, ``safetensors`` for ``.safetensors``, else None."""
    return {".pt2": "export", ".safetensors": "safetensors"}.get(path.suffix.lower())


def _cli_options(args) -> dict:
    skip = {"func", "argv"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


# ---- report -------------------------------------------------------------------------------------
def _original_from_report(path: pathlib.Path) -> tuple[Optional[str], Optional[str]]:
    """(original checkpoint, its arch) named in the report.json beside ``path``, if any."""
    import json

    report_file = report_path_for(path)
    if not report_file.is_file():
        return None, None
    try:
        doc = json.loads(report_file.read_text(encoding="utf-8"))
        source = doc["input"]["path"]
        return (source if pathlib.Path(source).is_file() else None), doc["input"].get("arch")
    except (ValueError, KeyError, TypeError, OSError):
        return None, None


def _cmd_report(args) -> int:
    from . import checkpoint as ckpt_io
    from . import report as rep

    loaded = _load(args.checkpoint, args)
    model = loaded.model
    _select(model, args.layers, args.ignore)
    rows = rep.layer_rows(model, args.layers, args.ignore)
    summary: dict = {"checkpoint": str(args.checkpoint), "format": loaded.format}
    if args.data:
        x, y, _ = _load_data(args.data, args.split, args.samples, args.seed)
        _check_fits(model, x, f"data {args.data}")
        original, original_arch = args.original, args.arch
        if original is None:
            original, recorded_arch = _original_from_report(pathlib.Path(args.checkpoint))
            original_arch = args.arch or recorded_arch
        if original is None and y is None:
            raise UsageError(f"--data {args.data} has no labels and no original model was found "
                             "to compare with: pass --original ORIGINAL")
        summary["samples"] = int(x.shape[0])
        if y is not None:
            summary["accuracy"] = _accuracy(model, x, y)
        if original is not None:
            reference = ckpt_io.load_checkpoint(original, arch=original_arch,
                                                trust_pickle=args.trust_pickle).model
            _check_fits(reference, x, f"data {args.data}")
            try:
                errors, output_error = rep.layer_errors(reference, model, x, layers=args.layers,
                                                        ignore=args.ignore)
            except ValueError as err:
                raise UsageError(f"--original {original}: {err}") from err
            rep.add_layer_errors(rows, errors)
            summary["original"] = str(original)
            summary["output_error"] = output_error
            if y is not None:
                summary["accuracy_original"] = _accuracy(reference, x, y)
    if args.plot:
        from .plots import plot_report
        summary["plots"] = [str(p) for p in plot_report(rows, args.plot)]
    latency = _latency(args, model)
    if args.fmt == "csv":
        print(rep.format_csv(rows), end="")
    elif args.fmt == "json":
        print(rep.render(rows, args.fmt, summary=dict(summary, **latency)))
    else:
        print(rep.render(rows, args.fmt, summary=summary))
        if latency:
            from .sparse import format_latency
            print(format_latency(latency["latency"]))
    return EXIT_OK


def _latency(args, model) -> dict:
    """``{"latency": nettrim.sparse.latency_report(...)}`` with --latency, else {}."""
    if not getattr(args, "latency", False):
        return {}
    if not args.data:
        raise UsageError("--latency needs --data: a batch of inputs gives the input shape")
    from .sparse import latency_report
    x, _, _ = _load_data(args.data, getattr(args, "split", "train"), 8, args.seed)
    return {"latency": latency_report(model.cpu(), x[:8].cpu())}


# ---- evaluate -----------------------------------------------------------------------------------
def _cmd_evaluate(args) -> int:
    from . import report as rep
    from .surgery import count_nonzeros, count_parameters

    original = _load(args.original, args).model
    pruned = _load(args.pruned, args).model
    x, y, _ = _load_data(args.data, args.split, args.samples, args.seed)
    out_a = _check_fits(original, x, f"data {args.data}")
    out_b = _check_fits(pruned, x, f"data {args.data}")
    if out_a.shape != out_b.shape:
        raise UsageError(f"the models' outputs differ in shape: {tuple(out_a.shape)} vs "
                         f"{tuple(out_b.shape)}")
    try:
        errors, output_error = rep.layer_errors(original, pruned, x)
    except ValueError as err:
        raise UsageError(str(err)) from err
    rows = []
    for role, path, model in (("original", args.original, original),
                              ("pruned", args.pruned, pruned)):
        layers = rep.layer_rows(model)
        t = rep.totals(layers)
        rows.append({
            "model": role, "checkpoint": str(path),
            "nonzeros": count_nonzeros(model), "params": count_parameters(model),
            "sparsity": t["sparsity"],
            "accuracy": _accuracy(model, x, y) if y is not None else None,
            "output_error": 0.0 if role == "original" else output_error,
        })
    columns = ["model", "nonzeros", "params", "sparsity", "accuracy", "output_error"]
    summary = {"samples": int(x.shape[0]), "layer_errors": errors}
    if args.fmt == "json":
        print(rep.format_json({"models": rows, **summary}))
    elif args.fmt == "csv":
        print(rep.format_csv(rows, columns), end="")
    else:
        print(rep.format_table(rows, columns))
        print("sparsity: zero weights of the Linear/Conv2d layers; output_error: "
              "||f_pruned(x) - f_original(x)||_F / ||f_original(x)||_F on "
              f"{x.shape[0]} samples")
        print("per-layer relative error: " +
              ", ".join(f"{name} {value:.4f}" for name, value in errors.items()))
    return EXIT_OK


# ---- demo ---------------------------------------------------------------------------------------
def _cmd_demo(args) -> int:
    import torch

    from . import checkpoint as ckpt_io
    from . import report as rep
    from .data import data_root, load_mnist
    from .models import lenet_300_100, train_classifier
    from .prune import prune

    for path, what in ((args.out, "--out"), (args.plot, "--plot")):
        if path:
            _check_writable(pathlib.Path(path), what, is_dir=True)
    root = data_root(args.data_root)
    _say(args, f"MNIST from {root} (downloaded with checksum verification if missing)")
    try:
        x_train, y_train = load_mnist(root, train=True)
        x_test, y_test = load_mnist(root, train=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load MNIST from {root}: {err}") from err
    x_train, y_train = _subset(x_train, y_train, args.train_samples, args.seed)
    x_test, y_test = _subset(x_test, y_test, args.test_samples, args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = lenet_300_100()
    t0 = time.perf_counter()
    train_classifier(model, x_train, y_train, epochs=args.epochs, seed=args.seed,
                     progress=not args.quiet)
    train_s = time.perf_counter() - t0
    model.eval()
    before = _accuracy(model, x_test, y_test)
    calib, _ = _subset(x_train, y_train, args.samples, args.seed + 1)
    t0 = time.perf_counter()
    if args.epsilon is None and args.sparsity is None:
        args.sparsity = DEMO_SPARSITY
    goal = {"epsilon": args.epsilon} if args.epsilon is not None else {"sparsity": args.sparsity}
    result = prune(model, calib, **goal, mode="cascade", seed=args.seed,
                   progress=not args.quiet)
    prune_s = time.perf_counter() - t0
    after = _accuracy(result.model, x_test, y_test)
    rows = [r.as_dict() for r in result.report]
    print(f"LeNet-300-100 trained {args.epochs} epoch(s) on {x_train.shape[0]} images "
          f"({train_s:.1f} s); cascade Net-Trim, "
          + (f"epsilon {args.epsilon}" if args.epsilon is not None else
             f"sparsity {args.sparsity}") + f", {calib.shape[0]} "
          f"calibration images ({prune_s:.1f} s)")
    print(rep.format_prune_table(result.report, result.output_error))
    print(f"test accuracy ({x_test.shape[0]} images): before {before:.2%}, after {after:.2%}")
    if args.out:
        out = pathlib.Path(args.out)
        ckpt_io.save_checkpoint(model, out / "original.pt", format="state_dict")
        ckpt_io.save_checkpoint(result.model, out / "pruned.pt", format="state_dict")
        document = {"command": "demo", "nettrim_version": _version(), "argv": list(args.argv),
                    "input": {"path": str((out / "original.pt").resolve()), "format": "state_dict",
                              "arch": "nettrim.models:lenet_300_100"},
                    "options": {**_cli_options(args), "prune": result.options},
                    "layers": rows, "totals": rep.totals(rows),
                    "output_error": result.output_error,
                    "test_accuracy_before": before, "test_accuracy_after": after}
        ckpt_io.atomic_write(out / "pruned.report.json", lambda tmp: pathlib.Path(tmp).write_text(
            rep.format_json(document) + "\n", encoding="utf-8"))
        print(f"wrote {out / 'original.pt'}, {out / 'pruned.pt'} (state_dicts, --arch "
              f"nettrim.models:lenet_300_100) and {out / 'pruned.report.json'}")
    if args.plot:
        from .plots import plot_report
        for path in plot_report(rows, args.plot):
            print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
