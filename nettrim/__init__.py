"""Net-Trim: prune trained ReLU networks by convex optimisation, layer by layer.

Quick use::

    import nettrim
    result = nettrim.prune(model, calibration_batch, epsilon=0.05, mode="cascade")
    print(result.table())
    pruned = result.model
"""

from . import baselines, budget
from .baselines import BASELINES, hptd, prune_baseline, prune_structured
from .capture import LayerData, capture, detect_activations, prunable_layers
from .prune import (LayerPruneResult, LayerReport, PruneResult, PruningError, PruningWarning,
                    output_discrepancy, prune, prune_layer)
from .finetune import FinetuneResult, finetune
from .sparse import load_sparse, save_sparse, sparsify
from .surgery import (CompactResult, apply_masks, compact, count_nonzeros, count_parameters,
                      fold_pruning_state_dict, remove_masks, remove_units, set_layer_weight)

__all__ = [
    "LayerData", "capture", "detect_activations", "prunable_layers",
    "LayerPruneResult", "LayerReport", "PruneResult", "PruningError", "PruningWarning",
    "output_discrepancy", "prune", "prune_layer",
    "CompactResult", "apply_masks", "compact", "count_nonzeros", "count_parameters",
    "fold_pruning_state_dict", "remove_masks", "remove_units", "set_layer_weight",
    "baselines", "budget", "BASELINES", "hptd", "prune_baseline", "prune_structured",
    "FinetuneResult", "finetune", "sparsify", "save_sparse", "load_sparse",
]
__version__ = "0.1.0"
