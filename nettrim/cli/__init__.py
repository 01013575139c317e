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

Modules: :mod:`.parser` (subcommands and flags), :mod:`.commands` (what each subcommand does,
and the steps they share), :mod:`.common` (exit statuses, defaults, the usage error) and this
one, the frame that runs a command (exit statuses, signals, one-line errors).

The command line only builds options and calls the library: :func:`nettrim.prune`,
:mod:`nettrim.io` (file formats), :mod:`nettrim.report`, :mod:`nettrim.tables` and
:mod:`nettrim.plots`. torch and the library are imported only once the arguments are parsed
(``--help`` and ``--version`` stay fast), inside the handlers of Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from .commands import cli_hint
from .common import (DEFAULT_EPSILON, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                     EXIT_USAGE, Terminated, UsageError, report_path_for)
from .parser import build_parser

__all__ = ["main", "build_parser", "UsageError", "Terminated", "EXIT_OK", "EXIT_FAILURE",
           "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "DEFAULT_EPSILON",
           "report_path_for"]


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

    from ..io.files import CheckpointError
    from ..results import PruningError

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or EXIT_OK)
    except (UsageError, CheckpointError) as err:
        _error(str(err))
        return EXIT_USAGE
    except PruningError as err:
        _error(f"pruning failed: {cli_hint(str(err))}")
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
