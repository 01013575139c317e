"""PNG plots of a per-layer report (sparsity bars and, when measured, relative errors) and of a
training run (accuracy and sparsity per epoch).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display
needed) and written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from .io.files import atomic_write

__all__ = ["REPORT_FILES", "plot_relative_error", "plot_report", "plot_sparsity",
           "plot_training"]

#: Figure size in inches per layer (width) and the minimum width.
_INCH_PER_LAYER = 0.7
_MIN_WIDTH = 4.0
_HEIGHT = 3.2
_DPI = 120
#: The files :func:`plot_report` writes (after its ``prefix``): sparsity, relative error.
REPORT_FILES = ("sparsity.png", "relative_error.png")


def _rows(rows: Sequence[Any]) -> list[dict]:
    out = []
    for row in rows:
        if hasattr(row, "as_dict"):
            row = row.as_dict()
        if not isinstance(row, Mapping) or "name" not in row:
            msg = f"rows: expected dicts with a 'name' key (per-layer report rows), got {row!r}"
            raise TypeError(msg)
        out.append(dict(row))
    if not out:
        msg = "rows: expected at least one layer, got none"
        raise ValueError(msg)
    return out


def _figure(n_layers: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(_MIN_WIDTH, _INCH_PER_LAYER * n_layers + 1.5), _HEIGHT), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> pathlib.Path:
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_sparsity(rows: Sequence[Any], path: str | os.PathLike, *, title: str = "") -> pathlib.Path:
    """Bar chart of each layer's weight sparsity (percent of zero weights).

    Parameters
    ----------
    rows : sequence of dict
        Report rows with ``name`` and ``sparsity`` (a fraction in [0, 1]).
    path : str or path-like
        The PNG to write.
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    rows = _rows(rows)
    names = [str(r["name"]) for r in rows]
    values = [100.0 * float(r["sparsity"]) for r in rows]
    fig = _figure(len(rows))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(rows)), values, color="tab:blue")
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.1f}%", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), names, rotation=30 if len(rows) > 6 else 0, ha="right"
                  if len(rows) > 6 else "center")
    ax.set_ylim(0, 105)
    ax.set_ylabel("zero weights (%)")
    ax.set_xlabel("layer")
    ax.set_title(title or "Sparsity per layer")
    return _save(fig, path)


def plot_relative_error(rows: Sequence[Any], path: str | os.PathLike, *,
                        title: str = "") -> pathlib.Path:
    """Bar chart of each layer's relative error (``relative_error`` key, NaN bars omitted).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        No row has a finite ``relative_error``.
    """
    rows = _rows(rows)
    names = [str(r["name"]) for r in rows]
    values = [r.get("relative_error") for r in rows]
    values = [float(v) if v is not None else math.nan for v in values]
    if not any(math.isfinite(v) for v in values):
        msg = "rows: no layer has a finite 'relative_error' to plot"
        raise ValueError(msg)
    fig = _figure(len(rows))
    ax = fig.add_subplot()
    shown = [v if math.isfinite(v) else 0.0 for v in values]
    bars = ax.bar(range(len(rows)), shown, color="tab:orange")
    for bar, value in zip(bars, values):
        label = f"{value:.3g}" if math.isfinite(value) else "n/a"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), names, rotation=30 if len(rows) > 6 else 0, ha="right"
                  if len(rows) > 6 else "center")
    ax.set_ylim(0, max(shown) * 1.2 or 1.0)
    ax.set_ylabel("||a - a0||_F / ||a0||_F")
    ax.set_xlabel("layer")
    ax.set_title(title or "Relative error per layer")
    return _save(fig, path)


def plot_report(rows: Sequence[Any], directory: str | os.PathLike, *,
                prefix: str = "") -> list[pathlib.Path]:
    """Write ``sparsity.png`` and, when errors were measured, ``relative_error.png``.

    Parameters
    ----------
    rows : sequence of dict
    directory : str or path-like
        Created if missing.
    prefix : str
        Prepended to the file names (e.g. ``"pruned-"``).

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    rows = _rows(rows)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sparsity_file, error_file = REPORT_FILES
    written = [plot_sparsity(rows, directory / f"{prefix}{sparsity_file}")]
    errors = [r.get("relative_error") for r in rows]
    if any(v is not None and math.isfinite(float(v)) for v in errors):
        written.append(plot_relative_error(rows, directory / f"{prefix}{error_file}"))
    return written


def plot_training(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                  title: str = "") -> pathlib.Path:
    """Accuracy and sparsity over a training run (:func:`nettrim.train_prune`'s history).

    Parameters
    ----------
    history : sequence of dict
        One entry per epoch with ``epoch``, ``sparsity`` (a fraction), ``compression`` and
        ``accuracy`` (a fraction, or None when nothing was evaluated).
    path : str or path-like
        Where the PNG goes (written atomically).
    title : str, optional
        A title above both panels.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if not history or not all(isinstance(h, Mapping) and "epoch" in h and "sparsity" in h
                              for h in history):
        msg = "history: expected epochs as dicts with 'epoch' and 'sparsity', got none or other"
        raise ValueError(msg)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(8.0, _HEIGHT), dpi=_DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    accuracy = [h.get("accuracy") for h in history]
    if any(a is not None for a in accuracy):
        left.plot([e for e, a in zip(epochs, accuracy) if a is not None],
                  [100.0 * a for a in accuracy if a is not None], marker="o", color="tab:green")
        left.set_ylabel("accuracy (%)")
    else:
        left.text(0.5, 0.5, "no evaluation data", ha="center", va="center",
                  transform=left.transAxes)
    left.set_xlabel("epoch")
    left.set_title("Accuracy")
    right.plot(epochs, [100.0 * h["sparsity"] for h in history], marker="o", color="tab:blue")
    right.set_xlabel("epoch")
    right.set_ylabel("zero weights (%)")
    right.set_ylim(0, 100)
    compression = history[-1].get("compression")
    right.set_title("Sparsity" + (f" (final {compression:.1f}x)" if compression else ""))
    if title:
        fig.suptitle(title)
    return _save(fig, path)
