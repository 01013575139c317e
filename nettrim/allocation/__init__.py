"""The loss-aware global budget (``allocation="loss"``): a database of per-layer solutions at a
ladder of kept counts, and the search for the rungs of least calibration loss.

* :mod:`.ladder`: :class:`LayerLadder`, least-squares fits of a layer's outputs on nested
  supports grown and pruned from Net-Trim's solution at the layer's share of the budget.
* :mod:`.search`: :class:`CalibrationLoss` (cross-entropy on labels, else the output
  discrepancy against the dense model) and :func:`search_levels` (a dynamic program on an
  additive proxy, then a local search on the real loss).

:func:`nettrim.budget.prune_global` drives them. Knows layers' arrays and a model's forward
pass; the floors and the budget come from the caller.
"""

from .ladder import (LADDER_LEVELS, LayerLadder, Rung, anchor_weight, ladder_counts,
                     least_squares_on_support)
from .search import (DP_UNITS, LOSSES, MAX_EVALUATIONS, CalibrationLoss, batch_labels,
                     search_levels)

__all__ = ["DP_UNITS", "LADDER_LEVELS", "LOSSES", "MAX_EVALUATIONS", "CalibrationLoss",
           "LayerLadder", "Rung", "anchor_weight", "batch_labels", "ladder_counts", "least_squares_on_support",
           "search_levels"]
