"""Masked fine-tuning: retrain a pruned model while its zero weights stay exactly zero.

The zeros of every Linear / Conv2d weight are held by :mod:`torch.nn.utils.prune` masks
(``mask = weight != 0``; a mask already on the model, e.g. from ``nettrim.prune(masks=True)``,
is used as it is) while Adam trains ``weight_orig``; the forward pass sees
``weight_orig * mask``, so pruned entries get no gradient and no effect. At the end the masks
are folded (:func:`torch.nn.utils.prune.remove`): the model has plain weights again, with exact
zeros, and saves and loads like the unpruned architecture. The same procedure serves every
pruning method (Net-Trim and the baselines of :mod:`nettrim.baselines`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, List, NamedTuple, Optional

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader

from ..checks import check_model
from ..inputs import model_device
from ..io.datasets import data_loader
from ..results import model_logits

__all__ = ["finetune", "FinetuneResult", "as_loader", "train_batch"]

_PRUNABLE = (nn.Linear, nn.Conv2d)
#: The optimizers :func:`finetune` takes (``torch.optim`` classes).
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class FinetuneResult(NamedTuple):
    """What :func:`finetune` returns (unpacks as ``model, losses``).

    Attributes
    ----------
    model : nn.Module
        The fine-tuned model (the same object that was passed), plain weights, zeros kept.
    losses : list of float
        Mean training loss of each epoch (sample-weighted).
    """

    model: nn.Module
    losses: List[float]


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value


def as_loader(loader: Any, *, batch_size: int = 128, seed: int = 0) -> Iterable:
    """A re-iterable source of ``(x, y)`` batches from a DataLoader, a list or ``(x, y)``."""
    if isinstance(loader, DataLoader):
        return loader
    if (isinstance(loader, (tuple, list)) and len(loader) == 2
            and all(isinstance(t, torch.Tensor) for t in loader)
            and loader[0].ndim >= 1 and loader[1].ndim == 1
            and loader[0].shape[0] == loader[1].shape[0]):
        x, y = loader
        return data_loader(x, y, batch_size=_check_positive_int(batch_size, "batch_size"),
                           shuffle=True, seed=seed)
    if (isinstance(loader, (tuple, list)) and len(loader) == 2
            and all(isinstance(t, torch.Tensor) for t in loader)):
        msg = (f"loader as (x, y) tensors needs x of shape (n, ...) and y of shape (n,), got "
               f"{tuple(loader[0].shape)} and {tuple(loader[1].shape)}")
        raise ValueError(msg)
    if isinstance(loader, (list, tuple)) and loader and all(
            isinstance(b, (tuple, list)) and len(b) >= 2 for b in loader):
        return loader
    msg = ("loader must be a DataLoader of (x, y) batches, a list of (x, y) batches or an "
           f"(x, y) pair of tensors with the same number of rows, got {type(loader).__name__}")
    raise TypeError(msg)


def train_batch(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
                loss_fn: Callable, device: torch.device) -> tuple:
    """One optimizer step on an ``(x, y)`` batch: ``(mean loss, rows)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        msg = "loader must yield (x, y) batches (labels are needed to train)"
        raise TypeError(msg)
    xb = batch[0].to(device)
    yb = batch[1].to(device)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), xb.shape[0]


def _masked_modules(model: nn.Module, layers: Optional[Iterable[str]]) -> dict:
    modules = dict(model.named_modules())
    if layers is None:
        return {n: m for n, m in modules.items() if isinstance(m, _PRUNABLE)}
    names = list(layers)
    unknown = [n for n in names if n not in modules]
    if unknown:
        msg = f"layers names unknown modules {unknown}"
        raise ValueError(msg)
    bad = [n for n in names if not isinstance(modules[n], _PRUNABLE)]
    if bad:
        msg = f"layers must name Linear or Conv2d modules; {bad} are not"
        raise ValueError(msg)
    return {n: modules[n] for n in names}


def _has_mask(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


def cross_entropy_on_logits(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's logits (:func:`nettrim.results.model_logits`) and
    ``targets`` of shape (batch,), int64: :func:`finetune`'s default ``loss_fn``."""
    return nn.functional.cross_entropy(model_logits(outputs), targets)


def finetune(model: nn.Module, loader: Any, *, epochs: int = 1, lr: float = 1e-3,
             weight_decay: float = 0.0, batch_size: int = 128, seed: int = 0,
             loss_fn: Optional[Callable] = None, layers: Optional[Iterable[str]] = None,
             progress: bool = False, optimizer: str = "adam") -> FinetuneResult:
    """Fine-tune a pruned model with Adam (or plain SGD), keeping its zero weights at zero.

    Side effects: trains ``model`` in place; its train/eval mode is restored afterwards. The
    global RNG is left as it was (dropout runs under a forked RNG seeded with ``seed``).

    Parameters
    ----------
    model : nn.Module
        The pruned model. Every Linear / Conv2d weight's zeros (or those of ``layers``) are
        held; masks already on the model (``weight_orig`` / ``weight_mask``) are used as they
        are. Biases train freely.
    loader : DataLoader, list of (x, y) batches, or (x, y) tensors
        Training data; ``(x, y)`` tensors are batched (``batch_size``) and shuffled with
        ``seed``.
    epochs : int, default 1
    lr : float, default 1e-3
        Learning rate of the optimizer.
    weight_decay : float, default 0.0
    batch_size : int, default 128
        Used only when ``loader`` is a pair of tensors.
    seed : int, default 0
    loss_fn : callable, optional
        ``loss_fn(outputs, targets) -> scalar``, called with what the model returns as it is.
        Default: cross-entropy on the logits, read as :func:`nettrim.results.model_logits`
        says (the output itself when it is a tensor, else its ``.logits``, e.g. a Hugging Face
        ``ModelOutput``, else its first tensor).
    layers : iterable of str, optional
        Names of the Linear / Conv2d modules whose zeros are held (default: all of them).
    progress : bool, default False
        A tqdm bar over batches with the running loss.
    optimizer : {"adam", "sgd"}, default "adam"
        ``"sgd"``: plain gradient descent (no momentum), the Net-Trim authors' fine-tuning.
        It keeps no state between steps, so calls of one epoch each at a decaying ``lr``
        make a stepwise learning-rate schedule.

    Returns
    -------
    FinetuneResult
        ``(model, losses)``: the same model with plain weights (masks folded in), and the
        mean training loss of each epoch.
    """
    check_model(model)
    epochs = _check_positive_int(epochs, "epochs")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        msg = f"lr must be a positive number, got {lr!r}"
        raise ValueError(msg)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not weight_decay >= 0:
        msg = f"weight_decay must be a number >= 0, got {weight_decay!r}"
        raise ValueError(msg)
    if optimizer not in OPTIMIZERS:
        msg = f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}"
        raise ValueError(msg)
    if loss_fn is not None and not callable(loss_fn):
        msg = f"loss_fn must be callable (outputs, targets) -> loss, got {type(loss_fn).__name__}"
        raise TypeError(msg)
    data = as_loader(loader, batch_size=batch_size, seed=seed)
    targets = _masked_modules(model, layers)
    loss_fn = loss_fn or cross_entropy_on_logits
    device = model_device(model)

    added = []
    done = False
    losses: List[float] = []
    was_training = model.training
    bar = None
    try:
        for module in targets.values():
            if not _has_mask(module):
                torch_prune.custom_from_mask(module, "weight", module.weight.detach() != 0)
                added.append(module)
        step = OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)
        if progress:
            from tqdm.auto import tqdm
            total = len(data) * epochs if hasattr(data, "__len__") else None
            bar = tqdm(total=total, desc="finetune", leave=False, disable=None)
        fork = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed)
            model.train()
            for epoch in range(epochs):
                total_loss, seen = 0.0, 0
                for batch in data:
                    loss, rows = train_batch(model, batch, step, loss_fn, device)
                    total_loss += loss * rows
                    seen += rows
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                if seen == 0:
                    msg = "loader yielded no batches"
                    raise ValueError(msg)
                losses.append(total_loss / seen)
        done = True
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
        # fold the masks: on success every one (ours and any that came with the model), so
        # the model has plain weights with exact zeros; after an error only ours
        for module in (targets.values() if done else added):
            if _has_mask(module):
                torch_prune.remove(module, "weight")
    return FinetuneResult(model=model, losses=losses)
