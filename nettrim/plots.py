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
           "plot_training", "wrap_name"]

#: Horizontal bars, one per layer: figure height in inches per layer (plus a margin), the
#: minimum height, the width; layer names longer than _LABEL_CHARS are wrapped at their dots.
_INCH_PER_LAYER = 0.28
_MARGIN = 1.2
_HEIGHT = 3.2
_WIDTH = 7.0
_LABEL_CHARS = 28
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


def wrap_name(name: str, width: int = _LABEL_CHARS) -> str:
    """A layer name broken into lines of at most about ``width`` characters, at its dots
    (``transformer.h.11.mlp.c_fc`` stays whole when it fits; a part longer than ``width`` is
    cut into pieces)."""
    lines, line = [], ""
    for part in name.split("."):
        piece = part if not line else "." + part
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line, piece = "", "." + part
        line += piece
        while len(line) > width:
            lines.append(line[:width])
            line = line[width:]
    lines.append(line)
    return "\n".join(lines)


def _figure(n_layers: int, lines_per_label: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(_HEIGHT, _MARGIN + _INCH_PER_LAYER * n_layers * max(1, lines_per_label))
    fig = Figure(figsize=(_WIDTH, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> pathlib.Path:
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def _bar_chart(names: Sequence[str], values: Sequence[float], labels: Sequence[str], *,
               color: str, xlabel: str, title: str, xmax: float):
    """One horizontal bar per layer, top to bottom in the model's order, each with its value."""
    wrapped = [wrap_name(n) for n in names]
    fig = _figure(len(names), max(w.count("\n") + 1 for w in wrapped))
    ax = fig.add_subplot()
    positions = range(len(names))
    bars = ax.barh(positions, values, color=color)
    for bar, label in zip(bars, labels):
        ax.annotate(f" {label}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    ha="left", va="center", fontsize=8)
    ax.set_yticks(positions, wrapped, fontsize=8)
    ax.invert_yaxis()   # the first layer on top
    ax.set_xlim(0, xmax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_title(title)
    return fig


def plot_sparsity(rows: Sequence[Any], path: str | os.PathLike, *, title: str = "") -> pathlib.Path:
    """Horizontal bar chart of each layer's weight sparsity (percent of zero weights).

    The figure grows with the number of layers; long layer names are wrapped at their dots.

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
    values = [100.0 * float(r["sparsity"]) for r in rows]
    fig = _bar_chart([str(r["name"]) for r in rows], values, [f"{v:.1f}%" for v in values],
                     color="tab:blue", xlabel="zero weights (%)",
                     title=title or "Sparsity per layer", xmax=115)
    return _save(fig, path)


def plot_relative_error(rows: Sequence[Any], path: str | os.PathLike, *,
                        title: str = "") -> pathlib.Path:
    """Horizontal bar chart of each layer's relative error (``relative_error`` key; a NaN
    bar is drawn empty and labelled n/a).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        No row has a finite ``relative_error``.
    """
    rows = _rows(rows)
    values = [r.get("relative_error") for r in rows]
    values = [float(v) if v is not None else math.nan for v in values]
    if not any(math.isfinite(v) for v in values):
        msg = "rows: no layer has a finite 'relative_error' to plot"
        raise ValueError(msg)
    shown = [v if math.isfinite(v) else 0.0 for v in values]
    fig = _bar_chart([str(r["name"]) for r in rows], shown,
                     [f"{v:.3g}" if math.isfinite(v) else "n/a" for v in values],
                     color="tab:orange", xlabel="||a - a0||_F / ||a0||_F",
                     title=title or "Relative error per layer", xmax=max(shown) * 1.25 or 1.0)
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
