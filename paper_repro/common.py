"""Shared plumbing of the ``paper_repro`` scripts: command line, atomic outputs, timing.

Every experiment script follows the same shape::

    @dataclass(frozen=True)
    class Config: ...              # the full run's settings (defaults)
    QUICK = Config(...)            # the --quick settings (well under a minute)
    def run(config, data_root) -> dict      # JSON-ready results (figures drawn from it)
    def main(argv=None) -> int     # parse_args(...), run, write results/<name>.json + PNGs

Outputs are written atomically (a temporary file in the destination directory, then
:func:`os.replace`), so an interrupted run never leaves a half-written JSON or PNG behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # scripts and tests draw off-screen

import torch  # noqa: E402  (after the backend choice)

from nettrim.io.files import atomic_write  # noqa: E402

__all__ = [
    "PAPER_METHOD",
    "RESULTS_DIR",
    "QUICK_ENV",
    "ExperimentArgs",
    "cached_model",
    "config_dict",
    "environment",
    "load_split",
    "next_log_guess",
    "parse_args",
    "run_main",
    "save_figure",
    "subset",
    "threads",
    "to_jsonable",
    "write_json",
    "wrote",
]

#: Where the full runs' results are committed.
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
#: Environment variable that notebooks read to switch to the --quick settings.
QUICK_ENV = "NETTRIM_QUICK"
#: The papers' method: the plain l1 program, no support refit and no reweighted l1 rounds
#: (pinned so that the results do not move with the library's defaults).
PAPER_METHOD = {"refit": False, "reweight": 0}


@dataclasses.dataclass(frozen=True)
class ExperimentArgs:
    """Parsed command line of an experiment script.

    Attributes
    ----------
    quick : bool
        Run the small version (``QUICK`` config).
    out_dir : pathlib.Path
        Where ``<name>.json`` and the figures go (default :data:`RESULTS_DIR`).
    data_root : str or None
        Dataset directory passed to the ``nettrim.io.datasets`` loaders (None: ``$NETTRIM_DATA``,
        else ``~/.cache/nettrim``).
    """

    quick: bool
    out_dir: pathlib.Path
    data_root: str | None


def parse_args(argv: Sequence[str] | None, description: str) -> ExperimentArgs:
    """Parse the common flags ``--quick``, ``--out-dir`` and ``--data-root``.

    Parameters
    ----------
    argv : sequence of str or None
        Arguments without the program name; None reads ``sys.argv[1:]``.
    description : str
        Shown by ``--help``.

    Returns
    -------
    ExperimentArgs
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run the small version (under a minute on a 2-core CPU); use with --out-dir so "
        "the committed full results are not overwritten",
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help=f"directory for the JSON and PNG outputs (default: {RESULTS_DIR})",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="dataset directory holding mnist/, fashion-mnist/, spirals/ "
        "(default: $NETTRIM_DATA, else ~/.cache/nettrim)",
    )
    ns = parser.parse_args(None if argv is None else list(argv))
    out_dir = pathlib.Path(ns.out_dir) if ns.out_dir is not None else RESULTS_DIR
    return ExperimentArgs(quick=ns.quick, out_dir=out_dir, data_root=ns.data_root)


def run_main(argv: Sequence[str] | None, doc: str, config: Any, quick: Any, run,
             name: str | None, *, public=None) -> tuple:
    """The start every script's ``main`` shares: parse the common flags (``doc``'s first line is
    the description), ``run(config, data_root)`` with the full ``config`` (``quick`` with
    ``--quick``), and write ``<out-dir>/<name>.json`` (``name`` None: the chosen config's
    ``name``; ``public(results)`` when given, for results holding entries that are not JSON).
    Returns ``(args, config, results)``."""
    args = parse_args(argv, doc.splitlines()[0])
    config = quick if args.quick else config
    results = run(config, args.data_root)
    results["quick"] = args.quick
    name = config.name if name is None else name
    write_json(args.out_dir / f"{name}.json", results if public is None else public(results))
    return args, config, results


def wrote(results: Mapping, args: ExperimentArgs, name: str) -> str:
    """The last line of a script's output: its time and the JSON it wrote."""
    return f"{results['seconds']:.1f} s; wrote {args.out_dir / (name + '.json')}"


def config_dict(config: Any) -> dict:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        msg = f"config: expected a dataclass instance, got {type(config).__name__}"
        raise TypeError(msg)
    return to_jsonable(dataclasses.asdict(config))


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy scalars/arrays, tuples and paths into plain JSON values.

    Non-finite floats become None (JSON has no NaN).
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def environment() -> dict:
    """Where the numbers were measured: versions, threads, CPU."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(path: str | os.PathLike, payload: Mapping) -> pathlib.Path:
    """Write ``payload`` (made JSON-ready by :func:`to_jsonable`) atomically, indented."""
    text = json.dumps(to_jsonable(payload), indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda temp: pathlib.Path(temp).write_bytes(text.encode("utf-8")))


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> pathlib.Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(
            path, lambda temp: fig.savefig(temp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def cached_model(key: str, builder, train) -> tuple:
    """A model trained once and cached by ``key``: ``(model in eval mode, training info)``.

    The ``state_dict`` is stored (atomically) as ``<cache>/paper_repro-<key>.pt``, the cache
    being ``$NETTRIM_CACHE`` or ``~/.cache/nettrim/models`` (as :func:`nettrim.models.pretrained`);
    ``builder()`` makes the empty architecture, ``train()`` returns the trained model. The
    training info gives the wall and CPU seconds of the training that made the file (kept in
    the file) and whether this call loaded it.
    """
    from nettrim.models import CACHE_ENV, DEFAULT_CACHE

    cache = pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    path = cache / f"paper_repro-{key}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        model = builder()
        model.load_state_dict(stored["state_dict"])
        return model.eval(), {**stored["training"], "loaded_from_cache": True}
    t0, c0 = time.perf_counter(), time.process_time()
    model = train()
    info = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    payload = {"state_dict": model.state_dict(), "training": info}
    atomic_write(path, lambda temp: torch.save(payload, temp))
    return model.eval(), {**info, "loaded_from_cache": False}


@functools.lru_cache(maxsize=8)
def load_split(data_root: str | None, dataset: str, train: bool) -> tuple:
    """``nettrim.io.datasets.load_mnist`` cached per process (scripts and tests share the
    decode)."""
    from nettrim.io.datasets import load_mnist

    return load_mnist(data_root, train=train, dataset=dataset)


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int) -> tuple:
    """A seeded random subset of ``n`` rows (all rows when ``n`` is None or too large)."""
    if n is None or n >= x.shape[0]:
        return x, y
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(x.shape[0], generator=generator)[:n]
    return x[index], y[index]


def next_log_guess(tried: Sequence[tuple], target: float, *, increasing: bool) -> float:
    """Next ``x`` of a search for ``f(x) = target`` by false position on ``log x, log f``.

    ``tried``: the ``(x, f(x))`` pairs so far (at least two, or one pair and a guess), ``f``
    monotone (``increasing`` or not) and positive. Interpolates between the closest pair
    that brackets the target, else extrapolates along the last two points; a flat or
    wrong-signed slope is replaced by +-1.
    """
    below = [t for t in tried if t[1] < target]
    above = [t for t in tried if t[1] >= target]
    if below and above:   # bracketed: the closest pair on either side
        a, b = max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1])
    else:                 # the last two points, the lower f first
        a, b = sorted(tried[-2:], key=lambda t: t[1])
    slope = (math.log(b[1]) - math.log(a[1])) / (math.log(b[0]) - math.log(a[0])) \
        if a[0] != b[0] else float("nan")
    sign = 1.0 if increasing else -1.0
    slope = slope if math.isfinite(slope) and sign * slope > 0.1 else sign
    return math.exp(math.log(a[0]) + (math.log(target) - math.log(a[1])) / slope)


@contextlib.contextmanager
def threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Stopwatch:
    """Wall-clock and CPU seconds per named phase: ``with watch("train"): ...``.

    ``watch.seconds`` / ``watch.cpu_seconds`` map each phase to its wall / CPU
    (:func:`time.process_time`, all threads of this process) seconds; ``total`` and
    ``cpu_total`` count from the stopwatch's creation.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def __call__(self, name: str):
        watch = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()
                self.c0 = time.process_time()
                return self

            def __exit__(self, *exc):
                self.seconds = time.perf_counter() - self.t0      # this phase alone
                self.cpu_seconds = time.process_time() - self.c0
                watch.seconds[name] = watch.seconds.get(name, 0.0) + self.seconds
                watch.cpu_seconds[name] = watch.cpu_seconds.get(name, 0.0) + self.cpu_seconds
                return False

        return _Phase()

    @property
    def total(self) -> float:
        """Wall seconds since the stopwatch was created."""
        return time.perf_counter() - self._start

    @property
    def cpu_total(self) -> float:
        """CPU seconds of this process since the stopwatch was created."""
        return time.process_time() - self._cpu_start

    def as_dict(self) -> dict:
        """The timing fields every results JSON carries."""
        return {"seconds": self.total, "cpu_seconds": self.cpu_total,
                "phase_seconds": dict(self.seconds), "phase_cpu_seconds": dict(self.cpu_seconds)}
