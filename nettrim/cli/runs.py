"""How a ``nettrim prune`` run is set up from its flags, beside the command itself: where the
solves run (``--ray``), how much it prints (``-q``, ``--silent``), and the guard on the default
report file.
"""

from __future__ import annotations

import pathlib
import sys

from .common import UsageError

__all__ = ["progress_of", "ray_executor", "refuse_foreign_report"]


def ray_executor(args):
    """``--ray [ADDRESS]``: a started :class:`nettrim.executors.RayExecutor` (its cluster size
    printed on stderr), or None without the flag."""
    if getattr(args, "ray", None) is None:
        return None
    from ..executors import RayExecutor, ray_available

    if not ray_available():
        raise UsageError("--ray needs Ray: pip install 'nettrim[ray]' (or pip install ray)")
    if args.device != "cpu":
        raise UsageError("--ray runs the solves on the workers' CPUs: leave --device at cpu")
    executor = RayExecutor(address=args.ray or None, threads=args.threads)
    try:
        executor.start()
    except Exception as err:  # noqa: BLE001 - ray.init's errors: an address, a version, ...
        executor.close()
        where = f"the cluster at {args.ray}" if args.ray else "a local instance"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--ray: could not start or join {where}: {first}") from err
    if not args.quiet:
        print(f"ray: {executor.describe()} (ready in {executor.start_seconds:.1f} s)",
              file=sys.stderr, flush=True)
    return executor


def refuse_foreign_report(report_file: pathlib.Path, out: pathlib.Path) -> None:
    """UsageError when the default report file is the report of another output that still
    exists (it would be replaced silently): pass --report to name another."""
    import json

    try:
        recorded = json.loads(report_file.read_text(encoding="utf-8"))["output"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    other = pathlib.Path(str(recorded))
    if other != out.resolve() and other.is_file():
        msg = (f"{report_file} is the report of another output, {other}; pass --report FILE "
               "to write this run's report elsewhere")
        raise UsageError(msg)


def progress_of(args):
    """prune's ``progress``: bars; ``"lines"`` with -q (a finished layer now and then on
    stderr, so a long run is never silent); nothing with --silent."""
    if getattr(args, "silent", False):
        return False
    if not args.quiet:
        return True
    return "lines" if not args.global_budget else False
