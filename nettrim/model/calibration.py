"""How many calibration rows a layer's program asks for, at the sparsity of the run in progress.

:func:`rows_needed` is the sample complexity of Net-Trim (Aghasi et al.: O(s log(N/s)) samples
recover an s-sparse neuron of N inputs). The model driver states its per-layer target with
:func:`target_sparsity`; a capture that finds too few rows then speaks of that target
(:func:`run_sparsity`) rather than of an example.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from typing import Any, Optional

__all__ = ["EXAMPLE_SPARSITY", "rows_needed", "run_sparsity", "target_sparsity"]

#: The sparsity a row count is stated at when the run sets no target (epsilon mode).
EXAMPLE_SPARSITY = 0.9

#: ``{layer: target sparsity}`` of the run in progress, set by :func:`target_sparsity`.
_RUN_SPARSITY: contextvars.ContextVar = contextvars.ContextVar("nettrim_run_sparsity",
                                                               default=None)


def rows_needed(N: int, keep: float = 0.1) -> int:
    """Calibration rows the sample-complexity results of Net-Trim ask for, ``s log(N / s)`` with
    ``s = keep * N`` nonzero weights per neuron (Aghasi et al.: O(s log(N/s)) samples recover an
    s-sparse neuron), rounded up; at least ``s``."""
    s = max(1.0, keep * N)
    return int(math.ceil(max(s, s * math.log(N / s))))


@contextlib.contextmanager
def target_sparsity(sparsity: Optional[Mapping[str, Any]]) -> Iterator[None]:
    """Within the block, :func:`run_sparsity` answers from ``{layer: target sparsity}``."""
    token = _RUN_SPARSITY.set(dict(sparsity or {}))
    try:
        yield
    finally:
        _RUN_SPARSITY.reset(token)


def run_sparsity(name: str) -> tuple[float, str]:
    """``(sparsity, phrase)``: layer ``name``'s target in the run in progress (a fraction in
    (0, 1)), else :data:`EXAMPLE_SPARSITY` stated as an example."""
    target = (_RUN_SPARSITY.get() or {}).get(name)
    if isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target < 1:
        return float(target), f"at this run's {target:.0%} sparsity"
    return EXAMPLE_SPARSITY, f"at {EXAMPLE_SPARSITY:.0%} sparsity, for example"
