"""Pruning during training, the whole loop: :func:`train_prune`.

One training loop for the four schedules (Han et al.'s prune-retrain, Zhu & Gupta's gradual
pruning, Dynamic Network Surgery, iterative Net-Trim; :mod:`nettrim.training`,
:mod:`nettrim.iterative`): the pruner's ``step()`` before every batch, an evaluation after
every epoch (the history: loss, accuracy, sparsity, compression, seconds), and a checkpoint
after every epoch, written atomically, from which an interrupted run resumes.

The optimizer defaults are those of Caffe's LeNet solver, which the Han and DNS papers trained
and retrained with: SGD, momentum 0.9, learning rate 0.01 with the ``inv`` policy
``lr_t = lr (1 + 1e-4 t)^-0.75``, L2 weight decay 5e-4.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import check_model
from .inputs import model_device
from .io.files import atomic_write, read_state_file
from .iterative import DEFAULT_ROUNDS as NETTRIM_ROUNDS
from .iterative import NetTrimPruner, calibration_subset
from .model.capture import prunable_layers
from .models import accuracy
from .training.dns import DEFAULT_GAMMA, DEFAULT_POWER, DNSPruner
from .training.finetune import as_loader, train_batch
from .training.gradual import DEFAULT_FREQUENCY, GradualPruner
from .training.han import DEFAULT_LR_FACTOR, DEFAULT_ROUNDS as HAN_ROUNDS, HanPruner
from .training.schedules import PolynomialDecay
from .training.sparsifier import Sparsifier, per_layer_fraction

__all__ = ["METHODS", "TrainPruneResult", "train_prune", "CHECKPOINT_FORMAT",
           "DEFAULT_CALIBRATION", "PRUNING_FRACTION", "INV_GAMMA", "INV_POWER"]

METHODS = ("han", "gradual", "dns", "nettrim")
#: The ``format`` entry of a train_prune checkpoint.
CHECKPOINT_FORMAT = "nettrim-train-prune/1"
#: Net-Trim's calibration samples (a seeded subset of the training inputs) unless given.
DEFAULT_CALIBRATION = 2000
#: Gradual and DNS: the fraction of the training steps during which the masks change (the rest
#: trains the final masks).
PRUNING_FRACTION = 0.75
#: Caffe's ``inv`` learning-rate policy of the LeNet solver: ``lr (1 + gamma t)^-power``.
INV_GAMMA, INV_POWER = 1e-4, 0.75
_OPTIMIZERS = {"sgd": 0.01, "adam": 1e-3}   # name -> default learning rate
_WEIGHT_DECAY = 5e-4


@dataclass
class TrainPruneResult:
    """What :func:`train_prune` returns.

    Attributes
    ----------
    model : nn.Module
        The pruned, trained model (plain weights with exact zeros).
    history : list of dict
        One entry per epoch: ``epoch``, ``step``, ``loss`` (mean training loss), ``accuracy``
        (on ``eval_data``, else None), ``sparsity`` (of the pruned layers together),
        ``compression`` (their weights / nonzeros), ``layer_sparsity``, ``lr``, ``seconds`` and
        ``cpu_seconds`` (cumulative, this process's CPU time included across resumes).
    method : str
    options : dict
        The options of the run (what a checkpoint must match to be resumed).
    sparsity : dict of {layer: float}
        Final per-layer sparsity.
    rounds : list of dict
        Iterative Net-Trim's per-round solve logs (empty for the other methods).
    resumed_from : int
        Epochs that were loaded from the checkpoint (0 for a fresh run).
    """

    model: nn.Module
    history: List[dict]
    method: str
    options: dict
    sparsity: Dict[str, float]
    rounds: List[dict] = field(default_factory=list)
    resumed_from: int = 0

    @property
    def compression(self) -> float:
        return self.history[-1]["compression"] if self.history else 1.0

    @property
    def seconds(self) -> float:
        return self.history[-1]["seconds"] if self.history else 0.0

    def table(self) -> str:
        """The history as a text table."""
        lines = [f"{'epoch':>5} {'loss':>8} {'accuracy':>9} {'sparsity':>9} {'compr.':>8} "
                 f"{'lr':>9} {'seconds':>8}"]
        for h in self.history:
            acc = "-" if h["accuracy"] is None else f"{h['accuracy']:.2%}"
            lines.append(f"{h['epoch']:>5} {h['loss']:>8.4f} {acc:>9} {h['sparsity']:>9.2%} "
                         f"{h['compression']:>7.1f}x {h['lr']:>9.2e} {h['seconds']:>8.1f}")
        return "\n".join(lines)


def _number(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        msg = f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{name} must be an int >= {minimum}, got {value!r}"
        raise ValueError(msg)
    return value


def _generators(loader: Any) -> List[torch.Generator]:
    """The torch.Generators that order a DataLoader's batches (its own, its samplers')."""
    found = []
    for holder in (loader, getattr(loader, "sampler", None),
                   getattr(getattr(loader, "sampler", None), "sampler", None),
                   getattr(loader, "batch_sampler", None),
                   getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(holder, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _first_inputs(data: Iterable, samples: int) -> torch.Tensor:
    parts, count = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        parts.append(x)
        count += x.shape[0]
        if count >= samples:
            break
    return torch.cat(parts)[:samples]


def _build_pruner(method: str, model: nn.Module, targets: Dict[str, float], *, epochs: int,
                  steps: int, options: dict, calibration: Any, seed: int) -> Sparsifier:
    """The method's pruner with the loop's step counts (``steps`` per epoch)."""
    total = epochs * steps
    names = list(targets)
    if method in ("han", "nettrim"):
        rounds = _int(options.get("rounds", HAN_ROUNDS if method == "han" else NETTRIM_ROUNDS),
                      "options['rounds']", 1)
        if rounds > epochs:
            msg = f"{method}: rounds ({rounds}) must not exceed epochs ({epochs})"
            raise ValueError(msg)
        every = _int(options.get("round_epochs", epochs // rounds), "options['round_epochs']", 1)
        if (rounds - 1) * every >= epochs:
            msg = (f"{method}: {rounds} rounds every {every} epoch(s) do not fit in {epochs} "
                   "epochs")
            raise ValueError(msg)
        round_steps = every * steps
        if method == "han":
            return HanPruner(model, targets, rounds=rounds, round_steps=round_steps,
                             layers=names, dropout=bool(options.get("dropout", True)))
        return NetTrimPruner(model, calibration, targets, rounds=rounds, round_steps=round_steps,
                             mode=options.get("mode", "cascade"), layers=names,
                             prune_options=options.get("prune_options"))
    end = max(1, int(options.get("pruning_fraction", PRUNING_FRACTION) * total))
    if method == "gradual":
        frequency = _int(options.get("frequency", min(DEFAULT_FREQUENCY, max(1, end // 10))),
                         "options['frequency']", 1)
        schedules = {n: PolynomialDecay(targets[n], end_step=end, frequency=frequency,
                                        power=options.get("power", 3.0)) for n in names}
        return GradualPruner(model, schedules, layers=names)
    return DNSPruner(model, targets, gamma=options.get("gamma", DEFAULT_GAMMA),
                     power=options.get("power", DEFAULT_POWER), iter_stop=end, seed=seed,
                     layers=names)


def _evaluate(model: nn.Module, eval_data: Any) -> Optional[float]:
    if eval_data is None:
        return None
    x, y = eval_data
    return accuracy(model, x, y)


def train_prune(model: nn.Module, loader: Any, method: str = "gradual", sparsity: Any = 0.9,
                epochs: int = 10, *, eval_data: Any = None, calibration: Any = None,
                optimizer: str = "sgd", lr: Optional[float] = None, momentum: float = 0.9,
                weight_decay: float = _WEIGHT_DECAY, lr_policy: str = "inv",
                batch_size: int = 64, seed: int = 0, layers: Any = None,
                ignore: Iterable[str] = (), options: Optional[dict] = None,
                checkpoint: Optional[str | os.PathLike] = None, resume: bool = True,
                progress: bool = False, inplace: bool = False,
                loss_fn: Optional[Callable] = None,
                on_epoch: Optional[Callable[[dict], None]] = None) -> TrainPruneResult:
    """Train a model while pruning it with one of the four schedules.

    Parameters
    ----------
    model : nn.Module
        Usually a trained dense model (the papers prune trained networks). Never modified
        unless ``inplace=True``.
    loader : DataLoader, list of (x, y) batches, or (x, y) tensors
        Training data (``(x, y)`` tensors are batched by ``batch_size`` and shuffled with
        ``seed``).
    method : {"han", "gradual", "dns", "nettrim"}, default "gradual"
        ``han``: :class:`nettrim.training.HanPruner`, ``rounds`` (default 3) prune / retrain
        rounds of ``epochs // rounds`` epochs, the learning rate lowered by ``lr_factor``
        (default 0.1). ``gradual``: :class:`nettrim.training.GradualPruner` with Zhu & Gupta's
        cubic from 0 to the target over the first ``pruning_fraction`` (0.75) of the steps,
        masks updated every ``frequency`` steps (100, or a tenth of the pruning steps if
        fewer). ``dns``: :class:`nettrim.training.DNSPruner` (``gamma`` 1e-4, ``power`` 1),
        masks recomputed until ``pruning_fraction`` of the steps, then cut to the target.
        ``nettrim``: :class:`nettrim.NetTrimPruner`, ``rounds`` (default 3) of cascade
        Net-Trim on ``calibration`` and ``epochs // rounds`` epochs of masked retraining.
        For both round methods ``round_epochs`` sets the epochs between rounds (the last
        round's retraining then runs to the end).
    sparsity : float in [0, 1) or dict of {layer: float}, default 0.9
        Final fraction of zero weights of each pruned layer (a dict names every layer).
    epochs : int, default 10
    eval_data : (x, y) tensors, optional
        Held-out data for the per-epoch accuracy in the history.
    calibration : Tensor, optional
        Net-Trim's calibration inputs; default :data:`DEFAULT_CALIBRATION` training inputs
        (a seeded subset of ``x`` for ``(x, y)`` tensors, else the loader's first batches).
    optimizer : {"sgd", "adam"}, default "sgd"
        SGD with ``momentum``, or Adam.
    lr : float, optional
        Default 0.01 (SGD) or 1e-3 (Adam); Han's retraining uses ``lr * lr_factor``.
    momentum : float, default 0.9
    weight_decay : float, default 5e-4
        L2 regularisation (Han et al.'s choice for pruning with retraining).
    lr_policy : {"inv", "constant"}, default "inv"
        ``inv``: ``lr_t = lr (1 + 1e-4 t)^-0.75`` over the run's steps ``t`` (Caffe's LeNet).
    batch_size : int, default 64
    seed : int, default 0
        Seeds the data order, dropout, DNS's draws and Net-Trim's calibration subset.
    layers, ignore : optional
        Which Linear / Conv layers to prune (default all).
    options : dict, optional
        The method's own options (above): ``rounds``, ``round_epochs``, ``lr_factor``,
        ``dropout`` (Han),
        ``pruning_fraction``, ``frequency``, ``power`` (gradual, DNS), ``gamma`` (DNS),
        ``mode``, ``calibration_samples``, ``prune_options`` (Net-Trim: more arguments of
        :func:`nettrim.prune`, e.g. ``{"max_samples": 20000}``).
    checkpoint : path, optional
        Written atomically after every epoch (``torch.save`` of the model with its masks, the
        optimizer, the pruner, the history and the RNG states). With ``resume=True`` an
        existing file written by a run with the same options is loaded and the run goes on
        from the epoch after it; a file from other options is an error.
    resume : bool, default True
    progress : bool, default False
        A tqdm bar over the batches.
    inplace : bool, default False
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)``; default cross-entropy.
    on_epoch : callable, optional
        Called with each epoch's history entry (after its checkpoint is written).

    Returns
    -------
    TrainPruneResult
    """
    check_model(model)
    if method not in METHODS:
        msg = f"method must be one of {METHODS}, got {method!r}"
        raise ValueError(msg)
    epochs = _int(epochs, "epochs", 1)
    if optimizer not in _OPTIMIZERS:
        msg = f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}"
        raise ValueError(msg)
    lr = _number(_OPTIMIZERS[optimizer] if lr is None else lr, "lr", positive=True)
    momentum = _number(momentum, "momentum")
    weight_decay = _number(weight_decay, "weight_decay")
    if lr_policy not in ("inv", "constant"):
        msg = f"lr_policy must be 'inv' or 'constant', got {lr_policy!r}"
        raise ValueError(msg)
    if options is not None and not isinstance(options, dict):
        msg = f"options must be a dict of the method's options, got {type(options).__name__}"
        raise TypeError(msg)
    options = dict(options or {})
    if loss_fn is not None and not callable(loss_fn):
        msg = f"loss_fn must be callable (outputs, targets) -> loss, got {type(loss_fn).__name__}"
        raise TypeError(msg)
    if eval_data is not None and (not isinstance(eval_data, (tuple, list)) or len(eval_data) != 2):
        msg = "eval_data must be an (x, y) pair of tensors"
        raise TypeError(msg)
    names = list(prunable_layers(model, layers, ignore))
    targets = per_layer_fraction(sparsity, names, "sparsity")
    data = as_loader(loader, batch_size=batch_size, seed=seed)
    steps = len(data) if hasattr(data, "__len__") else None
    if not steps:
        msg = "loader must have a length (batches per epoch) and yield at least one batch"
        raise ValueError(msg)
    if method == "han":
        lr = lr * _number(options.get("lr_factor", DEFAULT_LR_FACTOR), "options['lr_factor']",
                          positive=True)
    if method == "nettrim" and calibration is None:
        samples = _int(options.get("calibration_samples", DEFAULT_CALIBRATION),
                       "options['calibration_samples']", 1)
        if isinstance(loader, (tuple, list)) and len(loader) == 2 and all(
                isinstance(t, torch.Tensor) for t in loader) and loader[1].ndim == 1:
            calibration = calibration_subset(loader[0], samples, seed)
        else:
            calibration = _first_inputs(data, samples)
    record = {"method": method, "sparsity": targets, "epochs": epochs, "optimizer": optimizer,
              "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
              "lr_policy": lr_policy, "batch_size": batch_size, "seed": seed,
              "steps_per_epoch": steps, "options": {k: v for k, v in sorted(options.items())}}

    target = model if inplace else copy.deepcopy(model)
    device = model_device(target)
    pruner = _build_pruner(method, target, targets, epochs=epochs, steps=steps,
                           options=options, calibration=calibration, seed=seed)
    params = [p for p in target.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
           if optimizer == "sgd" else
           torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history: List[dict] = []
    start_epoch, used_wall, used_cpu = 0, 0.0, 0.0
    rng_state = None
    path = None if checkpoint is None else pathlib.Path(checkpoint)
    if path is not None and resume and path.is_file():
        state = _load_checkpoint(path, record)
        target.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        pruner.load_state_dict(state["pruner"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        used_wall, used_cpu = float(state["seconds"]), float(state["cpu_seconds"])
        rng_state = state["rng"]
        for g, s in zip(_generators(data), state["loader_rng"]):
            g.set_state(s)
    resumed_from = start_epoch
    wall0, cpu0 = time.perf_counter(), time.process_time()
    bar = None
    was_training = target.training
    try:
        if progress:
            bar = tqdm(total=(epochs - start_epoch) * steps, desc=f"train-prune ({method})",
                       leave=False, disable=None)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            if rng_state is not None:
                torch.set_rng_state(rng_state)
            for epoch in range(start_epoch, epochs):
                target.train()
                total_loss, seen = 0.0, 0
                for batch in data:
                    pruner.step()
                    rate = lr * ((1 + INV_GAMMA * (pruner.iteration - 1)) ** -INV_POWER
                                 if lr_policy == "inv" else 1.0)
                    for group in opt.param_groups:
                        group["lr"] = rate
                    loss, rows = train_batch(target, batch, opt, loss_fn, device)
                    total_loss += loss * rows
                    seen += rows
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}",
                                        sparsity=f"{pruner.total_sparsity():.3f}")
                entry = {"epoch": epoch + 1, "step": pruner.iteration,
                         "loss": total_loss / max(1, seen),
                         "accuracy": _evaluate(target, eval_data),
                         "sparsity": pruner.total_sparsity(),
                         "compression": pruner.compression(),
                         "layer_sparsity": pruner.sparsity(), "lr": rate,
                         "seconds": used_wall + time.perf_counter() - wall0,
                         "cpu_seconds": used_cpu + time.process_time() - cpu0}
                history.append(entry)
                if path is not None:
                    _save_checkpoint(path, {
                        "format": CHECKPOINT_FORMAT, "options": record, "epoch": epoch + 1,
                        "model": target.state_dict(), "optimizer": opt.state_dict(),
                        "pruner": pruner.state_dict(), "history": history,
                        "seconds": entry["seconds"], "cpu_seconds": entry["cpu_seconds"],
                        "rng": torch.get_rng_state(),
                        "loader_rng": [g.get_state() for g in _generators(data)]})
                if on_epoch is not None:
                    on_epoch(entry)
    finally:
        if bar is not None:
            bar.close()
        target.train(was_training)
    rounds = list(getattr(pruner, "log", []))
    pruner.remove()
    final = {n: 1.0 - int((m.weight != 0).sum()) / m.weight.numel()
             for n, m in target.named_modules() if n in targets}
    return TrainPruneResult(model=target, history=history, method=method, options=record,
                            sparsity=final, rounds=rounds, resumed_from=resumed_from)


def _save_checkpoint(path: pathlib.Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: pathlib.Path, record: dict) -> dict:
    state = read_state_file(path, "a train_prune checkpoint", "format", CHECKPOINT_FORMAT)
    if state["options"] != record:
        differ = sorted(k for k in set(record) | set(state["options"])
                        if record.get(k) != state["options"].get(k))
        msg = (f"checkpoint {path} was written by a run with other options ({', '.join(differ)}"
               f" differ); resume it with the same options, or pass another checkpoint path "
               "or resume=False")
        raise ValueError(msg)
    return state
