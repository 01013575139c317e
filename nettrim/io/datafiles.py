"""Data files the command line reads: ``.npz``, ``.pt`` and MNIST-style idx files.

``.npz`` with an array ``x`` (and optionally integer labels ``y``); ``.pt`` holding a tensor or a
dict with ``x`` (and optionally ``y``), loaded with ``weights_only=True``; or an MNIST-style idx
directory (``train-images-idx3-ubyte[.gz]`` and friends, read with
:func:`nettrim.io.datasets.read_idx`) or a single idx images file. Integer images are scaled to
[0, 1]; 3-D idx images get a channel axis, as :func:`nettrim.io.datasets.load_mnist` does.

Missing, unreadable or malformed data (NaN/Inf samples, labels that do not match, an idx
directory without the split asked for) raises :class:`nettrim.io.files.CheckpointError` with a
one-line message naming the file.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch

from .datasets import read_idx
from .files import CheckpointError, one_line

__all__ = ["data_files", "load_data"]

#: Names of the idx files in an MNIST-style directory: split -> (images, labels).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_data(path: str | os.PathLike, *, split: str = "train", integers: bool = False
              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Load samples (and labels when present) from ``.npz``, ``.pt`` or idx files.

    Parameters
    ----------
    path : str or path-like
        A ``.npz`` file (arrays ``x`` and optional ``y``), a ``.pt`` file (a tensor, or a dict with
        ``x`` and optional ``y``; read with ``weights_only=True``), an MNIST-style directory of
        idx files, or one idx images file.
    split : {"train", "test"}, default "train"
        Which pair of files to read from an idx directory; a directory without that split's
        images is an error naming the missing file (never the other split in its place).
    integers : bool, default False
        Keep integer samples as int64 (token ids for a model that starts with an
        ``nn.Embedding``) instead of converting them to float32.

    Returns
    -------
    x : Tensor of shape (n, ...), float32 (int64 for integer data with ``integers=True``)
    y : Tensor of shape (n,), int64, or None

    Raises
    ------
    CheckpointError
        Missing, unreadable or malformed data, in one line naming the file.
    """
    if split not in _IDX_FILES:
        msg = f"split: expected one of {tuple(_IDX_FILES)}, got {split!r}"
        raise ValueError(msg)
    path = pathlib.Path(path)
    if not path.exists():
        msg = f"data {path} does not exist"
        raise CheckpointError(msg)
    try:
        if path.is_dir():
            x, y = _load_idx_dir(path, split)
        elif path.suffix == ".npz":
            x, y = _load_npz(path)
        elif path.suffix in (".idx", ".gz") or "idx" in path.name:
            x, y = _load_idx_file(path), None
        else:
            x, y = _load_pt(path)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any decode failure of a user file
        msg = (f"data {path}: cannot read it ({type(err).__name__}: {err}); expected a .npz "
               "with arrays x (and y), a .pt tensor or {'x', 'y'} dict, or an MNIST-style idx "
               "directory")
        raise CheckpointError(one_line(msg)) from err
    return _as_samples(x, y, path, integers)


def data_files(path: str | os.PathLike, *, split: str = "train") -> list[pathlib.Path]:
    """The files :func:`load_data` reads for ``path`` (what a command must never overwrite).

    ``[path]`` for a file; for an idx directory, the ``split``'s images and labels files that
    exist (``.gz`` or not); ``[]`` when ``path`` does not exist.
    """
    if split not in _IDX_FILES:
        msg = f"split: expected one of {tuple(_IDX_FILES)}, got {split!r}"
        raise ValueError(msg)
    path = pathlib.Path(path)
    if not path.is_dir():
        return [path] if path.exists() else []
    return [path / f"{stem}{gz}" for stem in _IDX_FILES[split] for gz in (".gz", "")
            if (path / f"{stem}{gz}").is_file()]


def _load_npz(path: pathlib.Path):
    with np.load(path, allow_pickle=False) as archive:
        if "x" not in archive.files:
            msg = (f"data {path}: expected an array named 'x' (and optionally 'y'), "
                   f"found {archive.files}")
            raise CheckpointError(msg)
        x = torch.from_numpy(np.array(archive["x"]))
        y = torch.from_numpy(np.array(archive["y"])) if "y" in archive.files else None
    return x, y


def _load_pt(path: pathlib.Path):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = (f"data {path}: not a tensor file readable with weights_only=True (save a tensor "
               "or a dict {'x': tensor, 'y': tensor})")
        raise CheckpointError(msg) from err
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, Mapping) and isinstance(obj.get("x"), torch.Tensor):
        y = obj.get("y")
        if y is not None and not isinstance(y, torch.Tensor):
            msg = f"data {path}: 'y' must be a tensor of labels, got {type(y).__name__}"
            raise CheckpointError(msg)
        return obj["x"], y
    what = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, Mapping) else \
        f"a {type(obj).__name__}"
    msg = f"data {path}: expected a tensor or a dict with 'x' (and optionally 'y'), got {what}"
    raise CheckpointError(msg)


def _load_idx_file(path: pathlib.Path) -> torch.Tensor:
    images = read_idx(path)
    x = torch.from_numpy(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x


def _load_idx_dir(path: pathlib.Path, split: str):
    def find(stem):
        for name in (stem + ".gz", stem):
            if (path / name).is_file():
                return path / name
        return None

    images_file, labels_file = (find(stem) for stem in _IDX_FILES[split])
    if images_file is None:
        others = [s for s in _IDX_FILES if s != split and find(_IDX_FILES[s][0])]
        hint = f"; it holds the {others[0]} split (--split {others[0]})" if others else ""
        msg = (f"data {path}: the {split} split's images {_IDX_FILES[split][0]}[.gz] are "
               f"missing{hint}")
        raise CheckpointError(msg)
    x = _load_idx_file(images_file)
    y = torch.from_numpy(read_idx(labels_file).astype(np.int64)) if labels_file else None
    return x, y


def _as_samples(x: torch.Tensor, y: Optional[torch.Tensor], path: pathlib.Path,
                integers: bool = False):
    """``(x, y)`` checked (numeric, finite samples; integer labels, one per sample) and converted
    (float32, integer images scaled to [0, 1]; int64 ids with ``integers``)."""
    if x.ndim < 2 or x.shape[0] == 0:
        msg = (f"data {path}: expected samples of shape (n, ...) with n >= 1, "
               f"got shape {tuple(x.shape)}")
        raise CheckpointError(msg)
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16,
                                                  torch.int32, torch.int64)):
        msg = f"data {path}: expected numeric samples, got dtype {x.dtype}"
        raise CheckpointError(msg)
    if integers and not x.is_floating_point():
        x = x.long()
    else:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        msg = (f"data {path}: {bad} of the {x.numel()} sample values are NaN or Inf (as float32); "
               "nettrim needs finite data")
        raise CheckpointError(msg)
    if y is not None:
        if y.is_floating_point() or y.ndim != 1 or y.shape[0] != x.shape[0]:
            msg = (f"data {path}: labels 'y' must be integers of shape ({x.shape[0]},), got "
                   f"{y.dtype} of shape {tuple(y.shape)}")
            raise CheckpointError(msg)
        y = y.long()
    return x.contiguous(), y
