"""Reference architectures and small train/evaluate helpers.

Every architecture is a flat :class:`torch.nn.Sequential` whose activations are ``nn.ReLU``
*modules* (never functional calls): Net-Trim reads the layer/activation structure from the
Sequential, so ``model[i]`` is a ``Linear``/``Conv2d`` and ``model[i + 1]`` its ``ReLU``.

=============================  ==========================================  ===============
builder                        layers                                      data
=============================  ==========================================  ===============
``lenet_300_100()``            784-300-100-10                              MNIST
``fc_784_300_1000_100_10()``   784-300-1000-100-10                         MNIST / Fashion
``lenet_cnn()``                conv32-pool-conv64-pool-512-10              MNIST
``lenet5()``                   conv20-pool-conv50-pool-500-10 (Caffe)      MNIST
``spiral_net(hidden)``         2-hidden-hidden-2                           two spirals
=============================  ==========================================  ===============

:func:`pretrained` trains one of the named models deterministically on the training set the
first time it is asked for, caches its ``state_dict`` and loads the cached file afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import check_xy
from .inputs import model_device
from .io.datasets import data_loader, load_mnist
from .io.files import atomic_write
from .results import model_logits

__all__ = [
    "PRETRAINED",
    "PretrainedSpec",
    "accuracy",
    "fc_784_300_1000_100_10",
    "lenet_300_100",
    "lenet_cnn",
    "lenet5",
    "mlp",
    "pretrained",
    "pretrained_path",
    "spiral_net",
    "train_classifier",
]

#: Environment variable naming the directory of cached trained weights.
CACHE_ENV = "NETTRIM_CACHE"
DEFAULT_CACHE = "~/.cache/nettrim/models"
_MNIST_PIXELS = 28 * 28
_MNIST_CLASSES = 10
_DEFAULT_EPOCHS = 10


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``; raise otherwise."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        msg = f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    value = int(value)  # type: ignore[call-overload]
    if value < minimum:
        msg = f"{name}: expected an int >= {minimum}, got {value}"
        raise ValueError(msg)
    return value


def mlp(sizes: Sequence[int], *, dropout: float = 0.0) -> nn.Sequential:
    """A fully connected ReLU network.

    ``nn.Flatten()``, then ``Linear -> ReLU [-> Dropout]`` for each hidden layer, then a final
    ``Linear`` with no activation (the logits).

    Parameters
    ----------
    sizes : sequence of int, length >= 2
        Layer widths ``[in_features, hidden_1, ..., out_features]``, e.g. ``[784, 300, 100, 10]``.
    dropout : float in [0, 1), default 0.0
        Dropout probability after each hidden ReLU; no Dropout module when 0.

    Returns
    -------
    nn.Sequential
        Input of shape (batch, ...) with ``prod(...) == sizes[0]``; output (batch, sizes[-1]).
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        msg = f"sizes: expected a sequence of layer widths, got {type(sizes).__name__}"
        raise TypeError(msg)
    if len(sizes) < 2:
        msg = f"sizes: expected at least 2 widths (input and output), got {list(sizes)}"
        raise ValueError(msg)
    widths = [_check_int(f"sizes[{i}]", size, 1) for i, size in enumerate(sizes)]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        msg = f"dropout: expected a float in [0, 1), got {type(dropout).__name__}"
        raise TypeError(msg)
    if not 0.0 <= dropout < 1.0:
        msg = f"dropout: expected a float in [0, 1), got {dropout}"
        raise ValueError(msg)
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def lenet_300_100() -> nn.Sequential:
    """LeNet-300-100: ``mlp([784, 300, 100, 10])``, input (batch, 1, 28, 28) -> (batch, 10)."""
    return mlp([_MNIST_PIXELS, 300, 100, _MNIST_CLASSES])


def fc_784_300_1000_100_10() -> nn.Sequential:
    """The FC net of the Net-Trim paper: ``mlp([784, 300, 1000, 100, 10])``.

    Input (batch, 1, 28, 28) -> logits (batch, 10).
    """
    return mlp([_MNIST_PIXELS, 300, 1000, 100, _MNIST_CLASSES])


def spiral_net(hidden: int = 200) -> nn.Sequential:
    """Two-spirals classifier: ``mlp([2, hidden, hidden, 2])``, input (batch, 2) -> (batch, 2)."""
    hidden = _check_int("hidden", hidden, 1)
    return mlp([2, hidden, hidden, 2])


def lenet_cnn() -> nn.Sequential:
    """LeNet-style CNN for MNIST, as one flat Sequential.

    ``Conv2d(1, 32, 5, padding=2), ReLU, MaxPool2d(2), Conv2d(32, 64, 5, padding=2), ReLU,
    MaxPool2d(2), Flatten, Linear(3136, 512), ReLU, Linear(512, 10)``.

    Input (batch, 1, 28, 28) -> logits (batch, 10).
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512),
        nn.ReLU(),
        nn.Linear(512, _MNIST_CLASSES),
    )


def lenet5() -> nn.Sequential:
    """LeNet-5 as in Caffe's MNIST example (the "20-50-500-10" net of Han et al. 2015 and
    Guo et al. 2016), as one flat Sequential.

    ``Conv2d(1, 20, 5), MaxPool2d(2), Conv2d(20, 50, 5), MaxPool2d(2), Flatten,
    Linear(800, 500), ReLU, Linear(500, 10)``: 430,500 weights. As in Caffe, the convolutions
    have no ReLU (max pooling follows them directly), so Net-Trim prunes them with the linear
    program.

    Input (batch, 1, 28, 28) -> logits (batch, 10).
    """
    return nn.Sequential(
        nn.Conv2d(1, 20, kernel_size=5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.ReLU(),
        nn.Linear(500, _MNIST_CLASSES),
    )


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = _DEFAULT_EPOCHS,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train a classifier with Adam and cross-entropy, in place.

    Deterministic given ``seed`` (on CPU): the batch order comes from a seeded
    :class:`torch.Generator`, and dropout runs under a forked RNG seeded with ``seed``, so the
    global RNG state is left as it was. Batches are moved to the model's device; the model's
    train/eval mode is restored afterwards.

    Parameters
    ----------
    model : nn.Module
        Maps (batch, ...) inputs to (batch, n_classes) logits.
    x : Tensor of shape (n, ...)
        Inputs.
    y : Tensor of shape (n,), int64
        Class labels.
    epochs : int, default 10
        Passes over the data.
    lr : float, default 1e-3
        Adam learning rate.
    batch_size : int, default 128
    weight_decay : float, default 0.0
        Adam weight decay (L2).
    seed : int, default 0
        Seed of the batch order and of dropout.
    progress : bool, default False
        Show a tqdm progress bar with the running loss.

    Returns
    -------
    nn.Module
        ``model`` itself, trained.
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    check_xy(x, y)
    epochs = _check_int("epochs", epochs, 1)
    if not lr > 0:
        msg = f"lr: expected a positive float, got {lr!r}"
        raise ValueError(msg)
    if not weight_decay >= 0:
        msg = f"weight_decay: expected a float >= 0, got {weight_decay!r}"
        raise ValueError(msg)
    device = model_device(model)
    loader = data_loader(x, y, batch_size=batch_size, shuffle=True, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    was_training = model.training
    fork_devices = [device] if device.type == "cuda" else []
    bar = tqdm(total=epochs * len(loader), desc="train", disable=None if progress else True,
               leave=False)   # None: off when stderr is not a terminal (a log file)
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            model.train()
            for epoch in range(epochs):
                for xb, yb in loader:
                    xb = xb.to(device, non_blocking=True)
                    yb = yb.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model_logits(model(xb)), yb)
                    loss.backward()
                    optimizer.step()
                    bar.update(1)
                    if progress:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
    finally:
        bar.close()
        model.train(was_training)
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000) -> float:
    """Fraction of samples whose arg-max logit equals the label.

    Runs in eval mode under ``torch.no_grad()`` (the model's mode is restored afterwards).

    Parameters
    ----------
    model : nn.Module
        Maps (batch, ...) inputs to (batch, n_classes) logits.
    x : Tensor of shape (n, ...)
    y : Tensor of shape (n,), int64
    batch_size : int, default 1000

    Returns
    -------
    float
        Accuracy in [0, 1].
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    check_xy(x, y)
    if y.shape[0] == 0:
        msg = "x, y: expected at least one sample, got 0"
        raise ValueError(msg)
    device = model_device(model)
    was_training = model.training
    correct = 0
    model.eval()
    try:
        with torch.no_grad():
            for xb, yb in data_loader(x, y, batch_size=batch_size):
                logits = model_logits(model(xb.to(device)))
                correct += int((logits.argmax(dim=1).cpu() == yb).sum())
    finally:
        model.train(was_training)
    return correct / y.shape[0]


@dataclasses.dataclass(frozen=True)
class PretrainedSpec:
    """How :func:`pretrained` builds and trains one named model.

    Attributes
    ----------
    builder : callable
        Returns a freshly initialised model.
    dataset : {"mnist", "fashion-mnist"}
        Training set (the ``train=True`` split of :func:`nettrim.io.datasets.load_mnist`).
    epochs : int
        Default number of training epochs.
    lr : float
        Adam learning rate.
    """

    builder: Callable[[], nn.Module]
    dataset: str
    epochs: int
    lr: float = 1e-3


#: The models :func:`pretrained` knows, by name.
PRETRAINED: Mapping[str, PretrainedSpec] = MappingProxyType(
    {
        "lenet_300_100": PretrainedSpec(lenet_300_100, "mnist", epochs=10),
        "fc_784_300_1000_100_10": PretrainedSpec(fc_784_300_1000_100_10, "mnist", epochs=10),
        "lenet_cnn": PretrainedSpec(lenet_cnn, "mnist", epochs=3),
        "lenet5": PretrainedSpec(lenet5, "mnist", epochs=10),
        "fashion_fc_784_300_1000_100_10": PretrainedSpec(
            fc_784_300_1000_100_10, "fashion-mnist", epochs=10
        ),
    }
)


def _spec(name: str) -> PretrainedSpec:
    if name not in PRETRAINED:
        msg = f"name: expected one of {sorted(PRETRAINED)}, got {name!r}"
        raise ValueError(msg)
    return PRETRAINED[name]


def pretrained_path(name: str, *, data_root: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, epochs: int | None = None,
                    seed: int = 0) -> pathlib.Path:
    """Cache file of :func:`pretrained` for these arguments (it need not exist).

    Returns
    -------
    pathlib.Path
        ``cache_dir / f"{name}-epochs{epochs}-seed{seed}.pt"``; ``cache_dir`` defaults to
        ``$NETTRIM_CACHE``, else ``~/.cache/nettrim/models`` (the data directory may be
        read-only), and ``epochs`` to the model's default.
    """
    spec = _spec(name)
    epochs = spec.epochs if epochs is None else _check_int("epochs", epochs, 1)
    seed = _check_int("seed", seed, 0)
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return pathlib.Path(cache_dir).expanduser() / f"{name}-epochs{epochs}-seed{seed}.pt"


def pretrained(name: str, *, data_root: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, epochs: int | None = None,
               seed: int = 0) -> nn.Module:
    """A trained reference model, trained once and cached.

    The first call builds the model (initialised under ``torch.manual_seed(seed)``, without
    touching the global RNG), trains it with :func:`train_classifier` on the training split of
    its dataset and saves the ``state_dict`` atomically to :func:`pretrained_path`. Later calls
    load that file. A cache file that fails to load (corrupt, wrong architecture) is retrained,
    with a warning; a cache directory that cannot be written only warns.

    Parameters
    ----------
    name : {"lenet_300_100", "fc_784_300_1000_100_10", "lenet_cnn", "lenet5", \
            "fashion_fc_784_300_1000_100_10"}
        The last is the FC net trained on Fashion-MNIST; the others train on MNIST.
    data_root : str or path-like, optional
        Where the datasets are (see :func:`nettrim.io.datasets.data_root`); missing files are
        downloaded.
    cache_dir : str or path-like, optional
        Where the weights are cached; default ``$NETTRIM_CACHE`` or ``~/.cache/nettrim/models``.
    epochs : int, optional
        Training epochs; default ``PRETRAINED[name].epochs``. Part of the cache key.
    seed : int, default 0
        Seed of the initialisation, batch order and dropout. Part of the cache key.

    Returns
    -------
    nn.Module
        The trained model on the CPU, in eval mode.
    """
    spec = _spec(name)
    epochs = spec.epochs if epochs is None else _check_int("epochs", epochs, 1)
    path = pretrained_path(name, data_root=data_root, cache_dir=cache_dir, epochs=epochs, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder()
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - any failure means "do not trust the file"
            warnings.warn(
                f"cached weights {path} could not be loaded ({type(err).__name__}: {err}); "
                "retraining and overwriting the cache",
                RuntimeWarning,
                stacklevel=2,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = spec.builder()
        else:
            return model.eval()
    x, y = load_mnist(data_root, train=True, dataset=spec.dataset)
    start = time.perf_counter()
    train_classifier(model, x, y, epochs=epochs, lr=spec.lr, seed=seed)
    elapsed = time.perf_counter() - start
    try:
        state = model.state_dict()
        atomic_write(path, lambda temp: torch.save(state, temp))
    except OSError as err:
        warnings.warn(
            f"could not cache the trained weights of {name!r} at {path} ({err}); pass a "
            "writable cache_dir= to avoid retraining next time",
            RuntimeWarning,
            stacklevel=2,
        )
    model.eval()
    model.training_seconds = elapsed  # type: ignore[assignment]
    return model
