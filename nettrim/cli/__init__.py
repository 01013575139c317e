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

Exit status: 0 success; 1 a layer's solver failed (``PruningError``, strict by default) or an
output could not be written (disk full: nothing is written); 2 a usage error (bad option,
missing or corrupt file, a file that would run code without ``--trust-pickle``, wrong
``--arch``, data that does not fit the model, no prunable layers, an output path that cannot be
written or that is an input), printed as one line ``nettrim: error: ...`` on stderr; 130
interrupted (Ctrl-C), 143 terminated (SIGTERM), each with one line on stderr and none of the
run's outputs written. The outputs of a run are renamed into place together, while signals
wait; a signal that arrives once they are all in place leaves the status 0 (the run completed)
with a line saying so.

Modules: :mod:`.parser` (subcommands and flags), :mod:`.commands` (what each subcommand does,
and the steps they share), :mod:`.outputs` (output paths checked and committed), :mod:`.common`
(exit statuses, defaults, the usage error) and this one, the frame that runs a command (exit
statuses, signals, one-line errors).

The command line only builds options and calls the library: :func:`nettrim.prune`,
:mod:`nettrim.io` (file formats), :mod:`nettrim.report`, :mod:`nettrim.tables` and
:mod:`nettrim.plots`. torch and the library are imported only once the arguments are parsed
(``--help`` and ``--version`` stay fast), inside the handlers of Ctrl-C and SIGTERM, which
wait while the heavy modules load (:class:`_Signals`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from ..io.files import StagedFiles
from .commands import LIBRARY, cli_hint
from .common import (DEFAULT_EPSILON, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                     EXIT_USAGE, Terminated, UsageError, report_path_for)
from .parser import build_parser

__all__ = ["main", "build_parser", "UsageError", "Terminated", "EXIT_OK", "EXIT_FAILURE",
           "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "DEFAULT_EPSILON",
           "report_path_for"]

_STOPPED = {signal.SIGINT: ("interrupted", EXIT_INTERRUPTED),
            signal.SIGTERM: ("terminated (SIGTERM)", EXIT_TERMINATED)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``nettrim`` command line; returns the exit status (see the module docstring).

    With ``argv=None`` (the ``nettrim`` program itself) SIGINT and SIGTERM stay ignored once
    the status is decided, until the process exits; otherwise the caller's handlers are put
    back.
    """
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return int(stop.code or 0) if not isinstance(stop.code, str) else EXIT_USAGE
    args.argv = argv
    args.outputs = StagedFiles()
    args.signals = signals = _Signals(program)
    with signals.installed(keep_ignoring=program):
        try:
            code = _run(args)
            signals.hold()           # the status is decided: a later signal changes nothing
            late = signals.received is not None
        except BaseException as err:  # noqa: BLE001 - mapped to an exit status, or raised
            signals.hold()
            args.outputs.discard()
            code, late = _status_after(err, args), False
            if code is None:
                raise
        if not args.outputs.committed:   # a command that stopped with an error
            args.outputs.discard()
        if late:
            _note(f"{_STOPPED[signals.received][0]} after the run completed; nothing was lost")
    return code


def _run(args) -> int:
    """Import what the command needs (torch, the library) and run it; user errors -> 2,
    solver failures and outputs that cannot be written -> 1."""
    _import_path_has_cwd()
    with args.signals.held(exit_at_once=True):   # see _Signals: an interrupt inside an
        _import_heavy(args)                      # extension module's initialisation
    import torch

    from ..io.files import CheckpointError, OutputError
    from ..results import PruningError

    if getattr(args, "threads", None):
        available = _cpus()
        if args.threads > available:
            _note(f"--threads {args.threads} is more than the {available} CPUs this process "
                  f"may use: using {available}", "warning")
            args.threads = available
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or EXIT_OK)
    except (UsageError, CheckpointError, OutputError, PruningError) as err:
        if args.signals.received is not None:   # an interrupt that surfaced as another error
            raise
        if isinstance(err, PruningError):
            _error(f"pruning failed: {cli_hint(str(err))}")
            return EXIT_FAILURE
        _error(str(err) + _state_kept(args))
        return EXIT_FAILURE if isinstance(err, OutputError) else EXIT_USAGE


def _state_kept(args) -> str:
    """The words that say where a stopped prune run's finished layers are kept ("" if none)."""
    state = getattr(args, "resume_state", None)
    if state is None or not state.is_file():
        return ""
    return (f" (the finished layers are kept in {state}: run the same command with --resume "
            "to continue after them)")


def _status_after(err: BaseException, args) -> Optional[int]:
    """The exit status after ``err`` ended the command (None: not ours, raise it)."""
    received = args.signals.received
    if received is None and isinstance(err, (KeyboardInterrupt, Terminated)):
        received = signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM
    if received is None:
        if isinstance(err, BrokenPipeError):  # stdout closed early (``nettrim report | head``)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILURE
        return None
    what, code = _STOPPED[received]
    if args.outputs.committed:
        written = ", ".join(str(p) for p in args.outputs.destinations)
        _note(f"{what} after every output was written ({written}); the run completed")
        state = getattr(args, "resume_state", None)
        if state is not None:   # the outputs are in place: the run state has served
            state.unlink(missing_ok=True)
        return EXIT_OK
    return _stopped(what + _state_kept(args), code)


def _import_heavy(args) -> None:
    """Import numpy, torch and the library modules the command uses, up front."""
    names = ["numpy", "torch", *LIBRARY.get(args.command, ())]
    if getattr(args, "plot", None):
        names += ["matplotlib.figure", "matplotlib.backends.backend_agg"]
    if getattr(args, "solver", None) == "cvxpy":
        names.append("cvxpy")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:   # reported where the command uses it, as it would be
            pass


def _cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _stopped(what: str, code: int) -> int:
    print(_stopped_line(what), file=sys.stderr, flush=True)
    return code


def _stopped_line(what: str) -> str:
    return f"nettrim: {what}; files are written whole or not at all"


class _Signals:
    """SIGINT and SIGTERM while a command runs (main thread only).

    The first one becomes ``KeyboardInterrupt`` (SIGINT) or :class:`Terminated` (SIGTERM) in
    the main thread, so that every ``finally`` cleans up; later ones are ignored, so that the
    clean-up is not cut short. While *held* (:meth:`held`: the heavy imports, the renames of
    the outputs; :meth:`hold`: from the moment the exit status is decided) a signal is only
    recorded, and raised when the hold ends: an exception inside an extension module's
    initialisation (numpy's) leaves it half-loaded, re-raised as ``ImportError: cannot load
    module more than once per process``, ``RecursionError``, or swallowed (22 of 24 interrupts
    timed into numpy's initialisation). In the ``nettrim`` program itself (``program``) a
    signal during the heavy imports ends the process at once instead (``exit_at_once``): no
    file has been touched yet, and importing torch takes seconds on a busy machine.
    """

    def __init__(self, program: bool = False) -> None:
        self.received: Optional[int] = None
        self.program = program
        self._holding = False
        self._exit_at_once = False

    @contextlib.contextmanager
    def installed(self, keep_ignoring: bool = False):
        """Handle SIGINT and SIGTERM in the block; afterwards put the previous handlers back,
        or, with ``keep_ignoring``, leave both ignored (the process is about to exit)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in _STOPPED}
        try:
            yield
        finally:
            self._holding = True
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_IGN if keep_ignoring else handler)

    def hold(self) -> None:
        """From now on a signal is only recorded."""
        self._holding = True

    @contextlib.contextmanager
    def held(self, exit_at_once: bool = False):
        """Signals in the block are recorded; the first is raised when the block ends. With
        ``exit_at_once`` (for a block before any file work), the ``nettrim`` program exits
        at the signal instead, with its one line."""
        was = self._holding, self._exit_at_once
        self._holding, self._exit_at_once = True, exit_at_once and self.program
        try:
            yield
        finally:
            self._holding, self._exit_at_once = was
        if self.received is not None and not was[0]:
            raise _exception(self.received)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            return
        self.received = signum
        if self._exit_at_once:
            what, code = _STOPPED[signum]
            os.write(2, (_stopped_line(what) + "\n").encode())
            os._exit(code)
        if not self._holding:
            raise _exception(signum)


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _import_path_has_cwd() -> None:
    """Put the working directory first on the import path, as ``python -m`` does, so that
    ``--arch mymodule:build`` finds a module there also through the installed script."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _note(message: str, kind: str = "note") -> None:
    print(f"nettrim: {kind}: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"nettrim: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
