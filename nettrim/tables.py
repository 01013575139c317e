"""Report rows as text: aligned tables, CSV and JSON (what the CLI prints and what
:meth:`nettrim.results.PruneResult.table` returns).

A report is a list of *rows*, one dict per layer (or objects with ``as_dict()``, such as
:class:`nettrim.results.LayerReport`). Rows from :func:`nettrim.report.layer_rows` (inspecting
a model) have the keys ``name, kind, shape, nonzeros, total, sparsity`` and, after
:func:`nettrim.report.add_layer_errors`, ``relative_error``; rows from a prune report
(:meth:`nettrim.results.LayerReport.as_dict`) have ``nonzeros_before`` / ``nonzeros_after``,
``epsilon``, ``status``, ``iterations``, ``seconds``, ``solver`` as well. ``sparsity`` always
counts the weights only (biases excluded), as the prune report does.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

__all__ = [
    "COLUMNS",
    "INSPECT_COLUMNS",
    "PRUNE_COLUMNS",
    "PRUNE_LEGEND",
    "format_csv",
    "format_json",
    "format_prune_table",
    "format_table",
    "render",
    "to_jsonable",
    "totals",
]

#: Known columns: key -> (header, alignment, formatter). Other keys print with ``str``.
COLUMNS: Mapping[str, tuple] = {
    "name": ("layer", "<", str),
    "kind": ("kind", "<", str),
    "shape": ("shape", ">",
              lambda s: "x".join(map(str, s)) if isinstance(s, (list, tuple)) else str(s)),
    "nonzeros": ("nonzeros", ">", lambda v: str(v)),
    "nonzeros_before": ("before", ">", lambda v: str(v)),
    "nonzeros_after": ("after", ">", lambda v: str(v)),
    "total": ("weights", ">", lambda v: str(v)),
    "sparsity": ("sparsity", ">", lambda v: _num(v, "{:.1%}")),
    "epsilon": ("epsilon", ">", lambda v: _num(v, "{:.4f}")),
    "relative_error": ("rel.err", ">", lambda v: _num(v, "{:.4f}")),
    "status": ("status", ">", str),
    "iterations": ("iters", ">", lambda v: str(v)),
    "seconds": ("sec", ">", lambda v: _num(v, "{:.2f}")),
    "solver": ("solver", ">", str),
    "program": ("program", "<", str),
    "accuracy": ("accuracy", ">", lambda v: _num(v, "{:.2%}")),
    "accuracy_original": ("accuracy (original)", ">", lambda v: _num(v, "{:.2%}")),
    "accuracy_pruned": ("accuracy (pruned)", ">", lambda v: _num(v, "{:.2%}")),
    "model": ("model", "<", str),
    "checkpoint": ("checkpoint", "<", str),
    "params": ("params", ">", lambda v: str(v)),
    "output_error": ("output rel.err", ">", lambda v: _num(v, "{:.4f}")),
}

#: Columns of an inspection table (``nettrim report``) and of a prune table.
INSPECT_COLUMNS = ("name", "kind", "shape", "nonzeros", "total", "sparsity", "relative_error")
PRUNE_COLUMNS = ("name", "shape", "program", "nonzeros", "sparsity", "epsilon", "relative_error",
                 "status", "iterations", "seconds")

#: Lines under a prune table, each shown when a row has the status named ("*": any solved row).
PRUNE_LEGEND = (
    ("epsilon: the tolerance the layer's new weights meet, ||residual||_F / ||Y||_F of the "
     "program solved (a linear(...) program's on the pre-activations); rel.err: the layer's "
     "output error ||a - a0||_F / ||a0||_F on the calibration rows, equal for a linear layer "
     "and lower after a ReLU, which can only shrink the residual", "*"),
    ("OPTIMAL_INACCURATE is the normal outcome at a target sparsity: the l1 solves stop once "
     "the kept weights have settled, the refit fits their values, and the weights are checked "
     "to meet the program at the epsilon shown", "OPTIMAL_INACCURATE"),
)


def _num(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def totals(rows: Sequence[Mapping]) -> dict:
    """Summed weights and nonzeros over the rows, and the overall sparsity.

    Returns
    -------
    dict
        ``nonzeros`` (``nonzeros_after`` for prune rows), ``total``, ``sparsity``, and for
        prune rows ``nonzeros_before``.
    """
    total = sum(int(r["total"]) for r in rows)
    key = "nonzeros_after" if rows and "nonzeros_after" in rows[0] else "nonzeros"
    nonzeros = sum(int(r[key]) for r in rows)
    out = {"nonzeros": nonzeros, "total": total,
           "sparsity": 1.0 - nonzeros / total if total else float("nan")}
    if key == "nonzeros_after":
        out["nonzeros_before"] = sum(int(r["nonzeros_before"]) for r in rows)
    return out


# ---- rendering -----------------------------------------------------------------------------------
def _as_row(row: Any) -> dict:
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "as_dict"):
        return row.as_dict()
    msg = f"rows: expected dicts or LayerReport objects, got {type(row).__name__}"
    raise TypeError(msg)


def _cell(key: str, value: Any) -> str:
    spec = COLUMNS.get(key)
    return spec[2](value) if spec else ("-" if value is None else str(value))


def format_table(rows: Sequence[Any], columns: Optional[Sequence[str]] = None, *,
                 footer: Optional[Mapping[str, Any]] = None, note: str = "") -> str:
    """Rows as an aligned text table.

    Parameters
    ----------
    rows : sequence of dict (or objects with ``as_dict()``)
    columns : sequence of str, optional
        Keys to show, in order; default: :data:`INSPECT_COLUMNS` present in the first row, or
        all its keys. A key missing from a row shows ``-``.
    footer : dict, optional
        A last row (e.g. totals) below a rule; missing keys are blank.
    note : str
        Text appended after the footer row.

    Returns
    -------
    str
    """
    rows = [_as_row(r) for r in rows]
    if columns is None:
        first = rows[0] if rows else {}
        columns = [c for c in INSPECT_COLUMNS if c in first] or list(first)
    headers = [COLUMNS[c][0] if c in COLUMNS else c for c in columns]
    body = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    foot = None
    if footer is not None:
        foot = [("" if footer.get(c) is None and c not in footer else _cell(c, footer.get(c)))
                for c in columns]
    widths = [len(h) for h in headers]
    for line in body + ([foot] if foot else []):
        widths = [max(w, len(cell)) for w, cell in zip(widths, line)]
    aligns = [COLUMNS[c][1] if c in COLUMNS else ">" for c in columns]

    def fmt(cells):
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, aligns, widths)).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    lines = [fmt(headers), rule] + [fmt(line) for line in body]
    if foot is not None:
        lines += [rule, (fmt(foot) + ("   " + note if note else "")).rstrip()]
    elif note:
        lines.append(note)
    return "\n".join(lines)


def format_prune_table(rows: Sequence[Any], output_error: float = float("nan")) -> str:
    """The per-layer table of a prune run (what :meth:`PruneResult.table` prints).

    Parameters
    ----------
    rows : sequence of LayerReport or dict
        With ``nonzeros_before``, ``nonzeros_after`` and the other prune-report keys.
    output_error : float
        Relative output discrepancy of the whole model, shown after the totals.

    Returns
    -------
    str
    """
    shown = []
    for row in map(_as_row, rows):
        row["nonzeros"] = f"{row['nonzeros_before']}->{row['nonzeros_after']}"
        shown.append(row)
    foot: dict = {"name": "total"}
    if shown:
        t = totals(shown)
        foot.update(nonzeros=f"{t['nonzeros_before']}->{t['nonzeros']}", sparsity=t["sparsity"])
    note = f"output rel. error {_num(output_error, '{:.4f}')}"
    columns = [c for c in PRUNE_COLUMNS if c != "program" or any(r.get("program") for r in shown)]
    table = format_table(shown, columns, footer=foot, note=note)
    legend = [line for line, shows in PRUNE_LEGEND
              if any(r.get("status") == shows or shows == "*" and r.get("status") != "SKIPPED"
                     for r in shown)]
    table += "".join("\n" + textwrap.fill(line, width=100) for line in legend)
    skipped = [f"  {r['name']}: {r.get('note', '')}" for r in shown if r.get("status") == "SKIPPED"]
    return table + ("\nnot pruned:\n" + "\n".join(skipped) if skipped else "")


def to_jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists, tensors/numpy scalars as numbers, NaN/inf as None, and
    other objects (dtypes, paths) as strings: safe for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return to_jsonable(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "as_dict"):
        return to_jsonable(obj.as_dict())
    return str(obj)


def format_json(obj: Any) -> str:
    """Strict JSON (non-finite numbers as null), indented, keys in insertion order."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False)


def format_csv(rows: Sequence[Any], columns: Optional[Sequence[str]] = None) -> str:
    """Rows as CSV with a header line; shapes as ``AxB``, missing values empty, floats exact."""
    rows = [_as_row(r) for r in rows]
    if columns is None:
        columns = list(rows[0]) if rows else list(INSPECT_COLUMNS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            if isinstance(v, (list, tuple)):
                v = "x".join(map(str, v))
            elif v is None or (isinstance(v, float) and math.isnan(v)):
                v = ""
            elif isinstance(v, float):
                v = repr(v)
            cells.append(v)
        writer.writerow(cells)
    return buffer.getvalue()


def render(rows: Sequence[Any], fmt: str = "table", *, columns: Optional[Sequence[str]] = None,
           summary: Optional[Mapping[str, Any]] = None) -> str:
    """Rows in one of ``"table"``, ``"json"``, ``"csv"``.

    Parameters
    ----------
    rows : sequence of dict
    fmt : {"table", "json", "csv"}
    columns : sequence of str, optional
        Table / CSV columns (JSON always has every key).
    summary : dict, optional
        Whole-model values: the table prints them as ``key: value`` lines below the totals,
        JSON puts them next to ``"layers"``; CSV ignores them (one row per layer).
    """
    if fmt == "json":
        return format_json({"layers": [_as_row(r) for r in rows], **dict(summary or {})})
    if fmt == "csv":
        return format_csv(rows, columns)
    if fmt != "table":
        msg = f"fmt: expected 'table', 'json' or 'csv', got {fmt!r}"
        raise ValueError(msg)
    rows = [_as_row(r) for r in rows]
    foot = {"name": "total", **totals(rows)} if rows else None
    text = format_table(rows, columns, footer=foot)
    extra = [f"{k}: {_summary_value(k, v)}" for k, v in (summary or {}).items()]
    return "\n".join([text] + extra)


def _summary_value(key: str, value: Any) -> str:
    if key in COLUMNS and not isinstance(value, str):
        return COLUMNS[key][2](value)
    if isinstance(value, float):
        return _num(value, "{:.6g}")
    return str(value)
