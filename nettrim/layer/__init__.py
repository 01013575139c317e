"""One layer's program: :func:`prune_layer` and its pipeline, from captured activations (arrays).

* :mod:`.pipeline`: :func:`prune_layer`: its checks, the inputs zero on every row, the choice
  between the ReLU program and the linear one, the epsilon search with reweighted l1 solves,
  the refit and the report.
* :mod:`.target_count`: the default pipeline at a target sparsity (l1 solves steered to a
  count of weights, then trimmed or filled to it exactly, and refit).
* :mod:`.program`: which program's weights a ReLU layer keeps (``program="auto"``): the ReLU
  program, the linear one, their refits (least squares, ReLU-aware), judged by the post-ReLU
  error.

Knows arrays and :mod:`solvers`, not models: :mod:`nettrim.prune` feeds it a model's layers.
"""

from .pipeline import (COMPRESS_RATIO, SOLVERS, SPARSITY_EPS_RANGE, SPARSITY_MAX_SOLVES,
                       SPARSITY_TOL, check_solver_and_target, prune_layer)
from .program import (LINEAR_SOLVE_MAX_WEIGHTS, PROGRAM_MARGIN, PROGRAM_TOL, PROGRAMS,
                      RELU_PROGRAM_MAX_WORK, SOFT_REFIT_MAX_WORK)
from .target_count import PILOT_MAX_ITER, PILOT_RATIO, SETTLE_MAX_ITER

__all__ = ["COMPRESS_RATIO", "LINEAR_SOLVE_MAX_WEIGHTS", "PILOT_MAX_ITER", "PILOT_RATIO",
           "PROGRAMS", "PROGRAM_MARGIN", "PROGRAM_TOL", "RELU_PROGRAM_MAX_WORK", "SETTLE_MAX_ITER",
           "SOFT_REFIT_MAX_WORK", "SOLVERS", "SPARSITY_EPS_RANGE", "SPARSITY_MAX_SOLVES",
           "SPARSITY_TOL", "check_solver_and_target", "prune_layer"]
