"""The shared vocabulary of pruning: what a layer's or a model's pruning returns, how a
solver's failure is reported, and how far a pruned model's outputs drift.

Every pruning method (Net-Trim per layer, globally or structured, and the baselines) returns
these types, so reports, tables and the command line read them the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from solvers.status import OPTIMAL

from .inputs import forward_args, to_device
from .tables import format_prune_table

__all__ = ["MAX_ITER_HINT", "SKIPPED", "FAILED", "LayerPruneResult", "LayerReport", "PruneResult",
           "PruningError", "PruningWarning", "layer_result", "model_logits", "output_discrepancy",
           "output_tensors", "pre_activation", "report_row", "skipped_rows"]

#: How a PruningWarning/PruningError says to raise the iteration cap (the CLI names its flag).
MAX_ITER_HINT = "raise max_iter through solver_options={'max_iter': ...}"
#: Report status of a layer left as it is (the note says why).
SKIPPED = "SKIPPED"
#: Report status of a layer whose solves could not be run (an executor's worker lost for good,
#: a timeout): its weights are left as they were, the note gives the reason.
FAILED = "FAILED"


class PruningWarning(UserWarning):
    """A layer's solver did not report an optimal solution (status, residuals in the text)."""


class PruningError(RuntimeError):
    """Raised instead of :class:`PruningWarning` when ``strict=True``."""


@dataclass
class LayerPruneResult:
    """Result of :func:`nettrim.prune_layer` (and of every baseline layer method).

    Attributes
    ----------
    weight : Tensor of shape (M, N)
    bias : Tensor of shape (M,) or None
    report : dict
        ``nonzeros``, ``total``, ``sparsity`` (weights only, bias excluded), ``epsilon``
        (relative to ||Y||_F), ``epsilon_abs``, ``relative_error`` (``||act(X W^T + b) - Y||_F
        / ||Y||_F``), ``status``, ``iterations``, ``seconds``, ``solver``, ``objective``, and in
        sparsity mode ``target_sparsity`` and ``solves``; for a ReLU layer at a target
        sparsity with ``program="auto" | "best"``, ``program`` (the candidate kept) and
        ``program_errors`` (the post-ReLU error of each candidate tried).
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    report: dict


@dataclass
class LayerReport:
    """One row of :attr:`PruneResult.report`."""

    name: str
    kind: str
    shape: tuple
    nonzeros_before: int
    nonzeros_after: int
    total: int
    sparsity: float
    epsilon: float
    epsilon_abs: float
    relative_error: float
    status: str
    iterations: int
    seconds: float
    solver: str
    note: str = ""
    #: The program solved: "relu" or "linear(<activation>)", with "+bn" (BatchNorm folded),
    #: "+offset" (residual add before the ReLU), "+groups=G"; "skipped".
    program: str = ""
    #: Calibration rows the program used (after ``max_samples``), of ``rows_seen``.
    rows: int = 0
    rows_seen: int = 0
    #: Peak memory of the layer's solve above the memory in use before it, MB (None where it
    #: could not be measured; :mod:`nettrim.resources`).
    peak_memory_mb: Optional[float] = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class PruneResult:
    """Result of :func:`nettrim.prune` (and of the baselines' model drivers): the pruned model
    and a per-layer report."""

    model: nn.Module
    report: list
    options: dict = field(default_factory=dict)
    output_error: float = float("nan")
    #: ``{name: reason}`` of the layers left as they are.
    skipped: dict = field(default_factory=dict)

    def table(self) -> str:
        """The per-layer report as an aligned text table (see :mod:`nettrim.tables`)."""
        return format_prune_table(self.report, self.output_error)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"layers": [...], "options": {...}, "output_error": float}``."""
        return {"layers": [r.as_dict() for r in self.report], "options": dict(self.options),
                "output_error": self.output_error, "skipped": dict(self.skipped)}


def report_row(name: str, data: Any, module: nn.Module, W_orig: torch.Tensor,
               rep: dict) -> LayerReport:
    """The :class:`LayerReport` of a layer pruned from ``W_orig`` (M, N), from the report dict
    of a :class:`LayerPruneResult` (``data``: the layer's captured data, for its kind)."""
    return LayerReport(
        name=name, kind=getattr(data, "kind", "linear" if isinstance(module, nn.Linear) else "conv2d"),
        shape=tuple(module.weight.shape), nonzeros_before=int((W_orig != 0).sum()),
        nonzeros_after=rep["nonzeros"], total=rep["total"], sparsity=rep["sparsity"],
        epsilon=rep["epsilon"], epsilon_abs=rep["epsilon_abs"],
        relative_error=rep["relative_error"], status=rep["status"],
        iterations=rep["iterations"], seconds=rep["seconds"], solver=rep["solver"])


def skipped_rows(skipped: Mapping[str, str], before: Mapping[str, tuple],
                 after: Mapping[str, tuple]) -> list[LayerReport]:
    """:data:`SKIPPED` rows of the modules left as they are, ``{name: reason}``, in that order.

    ``before`` and ``after`` are ``{name: (nonzeros, total, shape, kind)}`` of the model before
    and after pruning (:func:`nettrim.model.graph.parameter_counts`, counted before any write so
    that an in-place run reports the true "before"); a name missing from ``before`` holds no
    parameter and gets no row. The note is ``"skipped: <reason>"``.
    """
    rows = []
    for name, reason in skipped.items():
        if name not in before:
            continue
        n_before, total, shape, kind = before[name]
        n_after = after.get(name, before[name])[0]
        rows.append(LayerReport(
            name=name, kind=kind, shape=tuple(shape), nonzeros_before=n_before,
            nonzeros_after=n_after, total=total,
            sparsity=1.0 - n_after / total if total else float("nan"), epsilon=float("nan"),
            epsilon_abs=float("nan"), relative_error=float("nan"), status=SKIPPED,
            iterations=0, seconds=0.0, solver="none", note=f"skipped: {reason}",
            program="skipped"))
    return rows


def pre_activation(X: torch.Tensor, W: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``X W^T + b`` in X's dtype."""
    out = X @ W.to(X.dtype).T
    return out if bias is None else out + bias.to(X.dtype)


def layer_result(name: str, W: torch.Tensor, W_new: torch.Tensor, X, bias, Y, relu: bool,
                 t0: float, extra: Optional[dict] = None) -> LayerPruneResult:
    """Package a pruned weight as a :class:`LayerPruneResult` with prune_layer's report keys.

    ``W_new`` replaces ``W`` (both (M, N)); with ``X`` (P, N) the report's ``relative_error``
    is measured against ``Y`` (P, M), by default the unpruned layer's own output
    ``act(X W^T + b)``; ``solver`` is ``name``, ``status`` OPTIMAL, ``seconds`` since ``t0``."""
    W_new = W_new.to(dtype=W.dtype, device=W.device).contiguous()
    M, N = W.shape
    nonzeros = int((W_new != 0).sum())
    rel = float("nan")
    if X is not None:
        target = Y
        if target is None:
            target = pre_activation(X, W, bias)
            target = torch.relu(target) if relu else target
        out = pre_activation(X, W_new, bias)
        out = torch.relu(out) if relu else out
        y_norm = float(torch.linalg.vector_norm(target))
        diff = float(torch.linalg.vector_norm(out - target.to(out.dtype)))
        rel = diff / y_norm if y_norm > 0 else diff
    report = dict(
        nonzeros=nonzeros, total=M * N, sparsity=1.0 - nonzeros / (M * N) if M * N else 0.0,
        epsilon=float("nan"), epsilon_abs=float("nan"), relative_error=rel, status=OPTIMAL,
        iterations=0, seconds=time.perf_counter() - t0, solver=name,
        objective=float(W_new.abs().sum()), residual=float("nan"), violation=0.0)
    if extra:
        report.update(extra)
    b = None if bias is None else bias.to(dtype=W.dtype).clone()
    return LayerPruneResult(weight=W_new, bias=b, report=report)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every floating tensor of a model's output (a tensor, or tuples, lists, dicts and
    dataclass-like objects of them), in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() or out.is_complex() else []
    if isinstance(out, Mapping):
        return [t for k in out for t in output_tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    return []


def model_logits(out: Any) -> torch.Tensor:
    """The tensor a classifier's output stands for (accuracy, the default fine-tuning loss).

    The output itself when it is a tensor; else its ``logits`` (a Hugging Face ``ModelOutput``,
    or any dict or object with that entry); else the first floating tensor it holds (the order
    of :func:`output_tensors`: a tuple's first item, a dict's first value).

    Parameters
    ----------
    out : Tensor of shape (batch, n_classes), or a ModelOutput / dict / tuple holding one

    Returns
    -------
    Tensor of shape (batch, n_classes)

    Raises
    ------
    TypeError
        When ``out`` holds no floating tensor.
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    found = output_tensors(out)
    if not found:
        msg = (f"the model's output: expected a tensor, or a ModelOutput / dict / tuple holding "
               f"one (its .logits or its first tensor), got a {type(out).__name__} without one")
        raise TypeError(msg)
    return found[0]


@torch.no_grad()
def output_discrepancy(reference: nn.Module, other: nn.Module, inputs: Any, *,
                       device: Any = None) -> float:
    """``||f_other(x) - f_ref(x)||_F / ||f_ref(x)||_F`` over all batches of ``inputs`` and every
    tensor the models return (tuples and dicts of outputs are compared entry by entry).
    Batches are fed as :func:`nettrim.inputs.model_inputs` says."""
    num = den = 0.0
    modes = (reference.training, other.training)
    reference.eval()
    other.eval()
    try:
        for args, kwargs in forward_args(inputs):
            if device is not None:
                args, kwargs = to_device(args, device), to_device(kwargs, device)
            ref = output_tensors(reference(*args, **kwargs))
            got = output_tensors(other(*args, **kwargs))
            if len(ref) != len(got):
                msg = (f"the pruned model returns {len(got)} tensors where the original returns "
                       f"{len(ref)}")
                raise ValueError(msg)
            for r, g in zip(ref, got):
                num += float(torch.linalg.vector_norm(g - r)) ** 2
                den += float(torch.linalg.vector_norm(r)) ** 2
    finally:
        reference.train(modes[0])
        other.train(modes[1])
    return math.sqrt(num / den) if den > 0 else 0.0
