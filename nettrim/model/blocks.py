"""Block by block: the calibration data carried through a model's repeated blocks.

A language model is a stack of blocks (an ``nn.ModuleList`` of decoder or encoder layers:
``model.decoder.layers`` of OPT, ``transformer.h`` of GPT-2, ``encoder.layer`` of BERT,
``vit.layers`` of ViT). As in SparseGPT's loop, the model runs once up to its first block,
whose inputs (the hidden states and the keyword arguments the model passes to every block:
attention mask, positions) are kept for every calibration batch; then each block runs on its
own, and the layers inside block k are recorded from block k's inputs. Memory holds the block
inputs (one ``(tokens, width)`` tensor per model and batch) and one block's records, not every
layer's.

Cascade (``pair=True``, Net-Trim's cascade mode and the baselines' sequential mode): the
original model's block inputs and the pruned copy's are carried side by side; a layer's input
rows come from the pruned copy (all layers before it already pruned, those of its own block
included) and its targets from the original. Parallel (``pair=False``): the original model
only, each block's layers recorded in one pass.

Used when :func:`find_blocks` finds a list of blocks holding the selected layers, the inputs can
be iterated again, no selected layer inside the blocks folds a BatchNorm or takes a residual
offset (those need the whole model's traced graph), and one forward pass on the first batch
shows every block receiving the same keyword arguments (else the whole-model capture is used).
Caches (``past_key_values`` and the like) are not carried: ``use_cache`` is turned off.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import nn

from ..inputs import forward_args, model_device, reiterable, to_device
from .capture import LayerData, record_layers, resolve_patterns
from .graph import ModelPlan, analyze
from .hooks import eval_mode, plain_attention

__all__ = ["BlockRunner", "find_blocks"]


class _Reached(Exception):
    """Raised by the hook on the first block: the model has computed that block's inputs."""


def find_blocks(model: nn.Module, names: list[str]) -> Optional[tuple[str, list[str]]]:
    """``(list name, [block names])`` of the ``nn.ModuleList`` of at least two blocks of one
    type that holds the most of the layers ``names`` (at least one per block), or None."""
    best, best_count = None, 0
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2 or \
                len({type(child) for child in module}) != 1:
            continue
        prefix = f"{list_name}." if list_name else ""
        blocks = [f"{prefix}{i}" for i in range(len(module))]
        inside = [[n for n in names if n.startswith(b + ".")] for b in blocks]
        count = sum(len(group) for group in inside)
        if all(inside) and count > best_count:
            best, best_count = (list_name, blocks), count
    return best


def _arguments(block: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A block call as keyword arguments (``**kwargs`` flattened), caches dropped."""
    bound = inspect.signature(block.forward).bind_partial(*args, **kwargs)
    out = {}
    for key, value in bound.arguments.items():
        kind = bound.signature.parameters[key].kind
        out.update(value if kind is inspect.Parameter.VAR_KEYWORD else {key: value})
    for key, value in list(out.items()):
        if key == "use_cache":
            out[key] = False
        elif type(value).__name__.endswith("Cache"):
            out[key] = None
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared differ
        return False


def _first_tensor(out: Any) -> torch.Tensor:
    """A block's output hidden states (a tensor, or the first item of a tuple)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        msg = f"a block returned {type(out).__name__}, not hidden states (a tensor)"
        raise TypeError(msg)
    return out


class BlockRunner:
    """Layer records of a model with blocks, block by block (see the module docstring).

    Parameters
    ----------
    original : nn.Module
        The model as trained (targets; parallel inputs).
    pruned : nn.Module or None
        The copy being pruned, with the original's architecture (cascade inputs); None for
        parallel.
    inputs : re-iterable calibration data (a tensor, a list of batches, a DataLoader)
    names : list of str
        The selected layers, in the order they will be asked for.
    patterns : dict
        ``{name: LayerPattern}`` of the selected layers (activations resolved).
    max_samples, seed, device, dtype, fold, statistics
        As in :func:`nettrim.capture` (statistics in parallel mode only); layer ``i`` of ``names`` is subsampled with seed
        ``seed`` in cascade (as :func:`nettrim.model.capture.capture_cascade`) and
        ``seed + 7919 i`` in parallel (as :func:`nettrim.capture`).
    """

    def __init__(self, original: nn.Module, pruned: Optional[nn.Module], inputs: Any,
                 names: list[str], patterns: dict, blocks: list[str], *,
                 max_samples: Optional[int] = None, seed: int = 0, device: Any = None,
                 dtype: Optional[torch.dtype] = None, fold: bool = False,
                 statistics: bool = False):
        self.original, self.pruned, self.inputs = original, pruned, inputs
        self.patterns, self.blocks = patterns, blocks
        # statistics in parallel only: in cascade a layer's inputs come from a second pass
        # (the pruned block) and must pair with the original's targets row by row
        self.options = dict(max_samples=max_samples, device=device, dtype=dtype, fold=fold,
                            statistics=statistics and pruned is None)
        self.block_of = {n: k for k, b in enumerate(blocks) for n in names
                         if n.startswith(b + ".")}
        self.seeds = {n: seed if pruned is not None else seed + 7919 * i
                      for i, n in enumerate(names)}
        self.current = -1          # the block the streams are at (-1: not started)
        self.streams: list = []    # per model: one dict of block keyword arguments per batch
        self.cache: dict = {}      # the original model's records of the current block
        self.after: list = []      # the original block's outputs (the next block's inputs)
        self.missing: dict = {}

    @classmethod
    def for_model(cls, original: nn.Module, pruned: Optional[nn.Module], inputs: Any,
                  names: list[str], *, plan: Optional[ModelPlan] = None,
                  activations: Optional[dict] = None, **options: Any
                  ) -> Optional["BlockRunner"]:
        """A runner when the model has blocks it can run them on (see the module docstring),
        else None. ``plan`` and ``activations`` as in :func:`nettrim.capture`; ``options``:
        ``max_samples``, ``seed``, ``device``, ``dtype``, ``fold``, ``statistics``."""
        found = find_blocks(original, names)
        if found is None or not reiterable(inputs):
            return None
        plan = plan or analyze(original, example=inputs)
        patterns = resolve_patterns(plan, names, activations, options.get("fold", False))
        inside = [n for n in names if any(n.startswith(b + ".") for b in found[1])]
        if any(patterns[n].norm or patterns[n].offset for n in inside):
            return None
        runner = cls(original, pruned, inputs, names, patterns, found[1], **options)
        return runner if runner._same_arguments() else None

    def covers(self, name: str) -> bool:
        """Whether ``name`` is a layer inside one of the blocks."""
        return name in self.block_of

    def _module(self, model: nn.Module, name: str) -> nn.Module:
        return model.get_submodule(name)

    def _same_arguments(self) -> bool:
        """One forward pass on the first batch: every block gets the keyword arguments the
        first one gets (masks, positions), so block k can run on what block 0 was given."""
        seen: list = []

        def hook(module, args, kwargs):
            seen.append({k: v for k, v in list(_arguments(module, args, kwargs).items())[1:]})

        blocks = [self._module(self.original, b) for b in self.blocks]
        handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in blocks]
        try:
            args, kwargs = next(iter(forward_args(self.inputs)))
            device = model_device(self.original)
            with torch.no_grad(), eval_mode(self.original), plain_attention():
                self.original(*to_device(args, device), **to_device(kwargs, device))
        except Exception:  # noqa: BLE001 - the whole-model capture will report the problem
            return False
        finally:
            for handle in handles:
                handle.remove()
        return len(seen) == len(blocks) and all(
            set(s) == set(seen[0]) and all(_same(s[k], seen[0][k]) for k in s) for s in seen)

    def _first_inputs(self, model: nn.Module) -> list[dict]:
        """Each batch's keyword arguments to the first block of ``model`` (the model stops
        there)."""
        block = self._module(model, self.blocks[0])
        stored: list = []

        def hook(module, args, kwargs):
            stored.append(_arguments(module, args, kwargs))
            raise _Reached

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        device = model_device(model)
        try:
            with torch.no_grad(), eval_mode(model), plain_attention():
                for args, kwargs in forward_args(self.inputs):
                    try:
                        model(*to_device(args, device), **to_device(kwargs, device))
                    except _Reached:
                        continue
                    msg = f"the model never called its block {self.blocks[0]!r}"
                    raise RuntimeError(msg)
        finally:
            handle.remove()
        return stored

    def _models(self) -> list[nn.Module]:
        return [self.original] + ([self.pruned] if self.pruned is not None else [])

    def _record(self, model: nn.Module, stream: list, names: list[str],
                outputs: Optional[list] = None) -> dict:
        """``{name: LayerData or None}`` of ``names`` (one block's layers) from one pass of
        ``stream`` through that block of ``model``."""
        block = self.blocks[self.block_of[names[0]]]
        module = self._module(model, block)
        rel = {n: n[len(block) + 1:] for n in names}
        records, missing = record_layers(
            [module], [stream], {rel[n]: module.get_submodule(rel[n]) for n in names},
            {rel[n]: self.patterns[n] for n in names},
            seeds={rel[n]: self.seeds[n] for n in names}, outputs=outputs, **self.options)
        out = {}
        for n in names:
            if rel[n] in missing:
                self.missing[n] = missing[rel[n]]
                out[n] = None
            else:
                records[rel[n]].name = n
                out[n] = records[rel[n]]
        return out

    def _enter(self, k: int) -> None:
        """Carry the streams to the inputs of block ``k`` (the blocks before it are final);
        on entering a block, one pass of the original block records all its layers and keeps
        its outputs (the next block's original inputs)."""
        if not self.streams:
            self.streams = [self._first_inputs(m) for m in self._models()]
        while self.current < k:
            if self.current >= 0:
                self.streams[0] = self.after
                if self.pruned is not None:   # the pruned block, final now, run once
                    module = self._module(self.pruned, self.blocks[self.current])
                    key = next(iter(inspect.signature(module.forward).parameters))
                    with torch.no_grad(), eval_mode(module), plain_attention():
                        self.streams[1] = [dict(b, **{key: _first_tensor(module(**b))})
                                           for b in self.streams[1]]
            self.current += 1
            names = [n for n, j in self.block_of.items() if j == self.current]
            outputs: list = [[]]
            self.cache = self._record(self.original, self.streams[0], names, outputs)
            module = self._module(self.original, self.blocks[self.current])
            key = next(iter(inspect.signature(module.forward).parameters))
            self.after = [dict(b, **{key: _first_tensor(o)})
                          for b, o in zip(self.streams[0], outputs[0])]

    def data(self, name: str) -> Optional[LayerData]:
        """The records of layer ``name`` (inside a block; layers are asked for in block
        order); None when the forward pass never calls it (the reason in ``missing``). In
        cascade the input rows come from the pruned block as it is now (the same rows: the
        same batches and subsample seed), the targets from the original block's pass."""
        k = self.block_of[name]
        if k < self.current or (k == self.current and name not in self.cache):
            msg = f"layer {name!r} is in block {k}, asked for after the runner moved past it"
            raise RuntimeError(msg)
        self._enter(k)
        target = self.cache.pop(name)
        if target is None or self.pruned is None:
            return target
        hat = self._record(self.pruned, self.streams[1], [name])[name]
        return None if hat is None else replace(target, X=hat.X)
