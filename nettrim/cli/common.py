"""What every part of the command line shares: exit statuses, defaults, the usage error, and a
few small steps. Torch-free, like the parser: ``nettrim --help`` imports no torch.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["DEFAULT_EPSILON", "DEFAULT_THREADS", "DEMO_EPOCHS", "DEMO_SAMPLES", "DEMO_SPARSITY",
           "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE",
           "Terminated", "UsageError", "report_path_for", "say", "version"]

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


class UsageError(Exception):
    """A mistake in the invocation or the input files; printed as one line, exit status 2."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (like KeyboardInterrupt on SIGINT), so that every
    ``finally`` and :func:`nettrim.io.files.atomic_write` cleans up; exit status 143."""


def version() -> str:
    """The package version (``unknown`` in a partial checkout)."""
    try:
        from .. import __version__
    except ImportError:  # pragma: no cover - partial checkout
        return "unknown"
    return __version__


def say(args, *lines: str) -> None:
    """Print ``lines`` unless the command runs with ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(*lines, sep="\n", flush=True)


def report_path_for(out: str | os.PathLike) -> pathlib.Path:
    """Default report file of an output checkpoint, beside it: ``x.pt`` -> ``x.report.json``,
    any other name keeps its suffix (``x.safetensors`` -> ``x.safetensors.report.json``,
    ``x.pt2`` -> ``x.pt2.report.json``), so outputs of different formats never share one."""
    out = pathlib.Path(out)
    return out.with_name((out.stem if out.suffix == ".pt" else out.name) + ".report.json")
