"""Net-Trim: prune trained ReLU networks by convex optimisation, layer by layer.

Quick use::

    import nettrim
    result = nettrim.prune(model, calibration_batch, epsilon=0.05, mode="cascade")
    print(result.table())
    pruned = result.model

The names below are imported on first use (PEP 562), so ``import nettrim`` (and the ``nettrim``
command's ``--help`` and ``--version``) does not pay for importing torch.
"""

import importlib
import sys
import types

#: Public name -> the submodule defining it.
_EXPORTS = {
    "baselines": None, "budget": None, "BASELINES": "baselines", "hptd": "baselines",
    "prune_baseline": "baselines", "prune_structured": "baselines",
    "LayerData": "capture", "capture": "capture", "detect_activations": "capture",
    "prunable_layers": "capture", "CalibrationWarning": "capture",
    "graph": None, "GraphWarning": "graph",
    "LayerPruneResult": "prune", "LayerReport": "prune", "PruneResult": "prune",
    "PruningError": "prune", "PruningWarning": "prune", "output_discrepancy": "prune",
    "prune": "prune", "prune_layer": "prune",
    "FinetuneResult": "finetune", "finetune": "finetune",
    "CompactResult": "surgery", "apply_masks": "surgery", "compact": "surgery",
    "count_nonzeros": "surgery", "count_parameters": "surgery",
    "fold_pruning_state_dict": "surgery", "remove_masks": "surgery", "remove_units": "surgery",
    "set_layer_weight": "surgery",
    "sparsify": "sparse", "save_sparse": "sparse", "load_sparse": "sparse",
}
#: Functions named like the submodule defining them: ``nettrim.prune`` is the function.
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _EXPORTS:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    module = importlib.import_module(f".{_EXPORTS[name] or name}", __name__)
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package; for ``prune``, ``capture``
    and ``finetune`` that would hide the function of the same name, so it is skipped (the
    submodule stays in ``sys.modules``)."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
