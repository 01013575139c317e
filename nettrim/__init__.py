"""Net-Trim: prune trained ReLU networks by convex optimisation, layer by layer.

Quick use::

    import nettrim
    result = nettrim.prune(model, calibration_batch, epsilon=0.05, mode="cascade")
    print(result.table())
    pruned = result.model

The names below are imported on first use (PEP 562), so ``import nettrim`` (and the ``nettrim``
command's ``--help`` and ``--version``) does not pay for importing torch.

How the code is organised (imports run one way, down this list; ``tests/test_layout.py`` holds
the floors): :mod:`solvers` (the numerical core, arrays only); ``checks``, ``inputs``,
``tables`` and ``io/`` (argument checks, calibration batches, text tables, files);
``results`` (the shared vocabulary); ``model/`` (what a model is and how it changes);
``layer/`` and ``training/`` (one layer's program; masked fine-tuning and the pruning
schedules); ``budget``, ``structured`` and ``baselines/``; ``prune`` (the model driver);
``models``, ``report``, ``plots``, ``iterative`` and ``train_prune`` (iterative Net-Trim and the
training loop); ``cli/``.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types

#: Public name -> the submodule defining it (for a public module: the module itself).
_EXPORTS = {
    "baselines": "baselines", "budget": "budget", "BASELINES": "baselines", "hptd": "baselines",
    "prune_baseline": "baselines", "prune_structured": "baselines",
    "LayerData": "model.capture", "capture": "model.capture",
    "detect_activations": "model.capture", "prunable_layers": "model.capture",
    "CalibrationWarning": "model.capture",
    "graph": "model.graph", "GraphWarning": "model.graph",
    "UnknownWeightsWarning": "model.graph",
    "LayerPruneResult": "results", "LayerReport": "results", "PruneResult": "results",
    "PruningError": "results", "PruningWarning": "results", "output_discrepancy": "results",
    "prune": "prune", "prune_layer": "layer",
    "FinetuneResult": "training.finetune", "finetune": "training.finetune",
    "CompactResult": "model.surgery", "apply_masks": "model.surgery",
    "compact": "model.surgery", "count_nonzeros": "model.surgery",
    "count_parameters": "model.surgery", "fold_pruning_state_dict": "io.checkpoint",
    "remove_masks": "model.surgery", "remove_units": "model.surgery",
    "set_layer_weight": "model.surgery",
    "sparsify": "model.sparse", "save_sparse": "model.sparse", "load_sparse": "model.sparse",
    "RayExecutor": "executors", "InProcessExecutor": "executors",
    "train_prune": "train_prune", "TrainPruneResult": "train_prune", "training": "training",
    "NetTrimPruner": "iterative", "HanPruner": "training.han", "GradualPruner": "training.gradual",
    "DNSPruner": "training.dns", "PolynomialDecay": "training.schedules",
    "ConstantSparsity": "training.schedules", "adjust_dropout": "training.schedules",
}
#: Public names that are modules (the others are attributes of their module).
_MODULES = frozenset({"baselines", "budget", "graph", "training"})
#: Module paths of earlier versions -> the module that holds their names now. ``import
#: nettrim.capture`` gives the module object ``nettrim.model.capture`` itself (not a copy
#: re-exporting it), so code, pickles and ``--arch`` specs written for the flat layout work.
_MOVED = {
    "capture": "model.capture", "graph": "model.graph", "surgery": "model.surgery",
    "sparse": "model.sparse", "checkpoint": "io.checkpoint", "data": "io.datasets",
    "formats": "io.formats", "finetune": "training.finetune",
}
#: Functions named like a submodule of this package (``nettrim.prune`` is the function; the
#: moved paths ``nettrim.capture`` and ``nettrim.finetune`` count as submodules).
_SHADOWED = frozenset(name for name, module in _EXPORTS.items()
                      if name not in _MODULES and name == module.rpartition(".")[2])

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _EXPORTS:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = module if name in _MODULES else getattr(module, name)
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


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``nettrim.<old path>`` of :data:`_MOVED` as the module at its new path: the
    throwaway module the import system creates is replaced in ``sys.modules`` by the real one,
    which the import then returns (the import system allows a loader this replacement)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package != __name__ or old not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None   # the default module, replaced in exec_module

    def exec_module(self, module):
        old = module.__name__.rpartition(".")[2]
        sys.modules[module.__name__] = importlib.import_module(f"{__name__}.{_MOVED[old]}")


sys.modules[__name__].__class__ = _Package
if not any(type(finder).__name__ == _MovedModules.__name__ for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
