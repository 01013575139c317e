"""Prune, then retrain: Han et al.'s magnitude pruning followed by masked fine-tuning."""

from __future__ import annotations

import copy
from typing import Any, Iterable

from torch import nn

from ..checks import check_model, check_sparsity
from ..results import PruneResult, output_discrepancy
from ..training.finetune import as_loader, finetune
from .driver import prune_baseline

__all__ = ["hptd"]


def hptd(model: nn.Module, loader: Any, sparsity: Any, *, epochs: int = 1, lr: float = 1e-3,
         rounds: int = 1, scope: str = "global", inputs: Any = None,
         layers: Any = None, ignore: Iterable[str] = (), batch_size: int = 128, seed: int = 0,
         inplace: bool = False, progress: bool = False) -> PruneResult:
    """Han et al.'s prune-then-retrain ("HPTD"): magnitude pruning and masked fine-tuning.

    ``rounds`` times: prune to ``1 - (1 - sparsity)^(r / rounds)`` by magnitude (zeros stay
    zero: they are the smallest), then fine-tune ``epochs`` epochs with the zeros held
    (:func:`nettrim.finetune`).

    Parameters
    ----------
    model : nn.Module
        Never modified unless ``inplace=True``.
    loader : DataLoader or (x, y) tensors
        Training data for the fine-tuning.
    sparsity : float in [0, 1)
    epochs : int, default 1
        Fine-tuning epochs per round.
    lr : float, default 1e-3
        Adam learning rate of the fine-tuning.
    rounds : int, default 1
        Prune / retrain rounds (iterative pruning).
    scope : {"global", "layer"}
        One magnitude threshold for the whole model, or the same sparsity in every layer.
    inputs : Tensor or iterable, optional
        Data for the per-layer error report (default: the loader's inputs).
    layers, ignore
        Which layers to prune.
    batch_size, seed, progress
        Passed to :func:`nettrim.finetune`.

    Returns
    -------
    PruneResult
        The final (fine-tuned) model; the report rows are those of the last pruning step
        (errors before its fine-tuning); ``options["losses"]`` lists each round's per-epoch
        training losses; ``output_error`` is measured after the fine-tuning.
    """
    check_model(model)
    s = check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        msg = f"scope must be 'global' or 'layer', got {scope!r}"
        raise ValueError(msg)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        msg = f"rounds must be a positive int, got {rounds!r}"
        raise ValueError(msg)
    data = as_loader(loader, batch_size=batch_size, seed=seed)
    if inputs is None:
        inputs = data
    method = "global_magnitude" if scope == "global" else "magnitude"
    current = model if inplace else copy.deepcopy(model)
    losses = []
    result = None
    for r in range(1, rounds + 1):
        s_r = s if r == rounds else 1.0 - (1.0 - s) ** (r / rounds)
        result = prune_baseline(current, inputs, method, s_r, layers=layers, ignore=ignore,
                                sequential=False, inplace=True, seed=seed)
        fit = finetune(current, data, epochs=epochs, lr=lr, seed=seed + r, progress=progress)
        losses.append(list(fit.losses))
    result.options.update(method=f"hptd:{scope}", sparsity=s, rounds=rounds, epochs=epochs,
                          lr=lr, losses=losses)
    result.output_error = output_discrepancy(model, current, inputs)
    return result
