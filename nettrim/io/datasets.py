"""Dataset loaders: MNIST, Fashion-MNIST (idx files) and the two-spirals CSV.

Where the data live
-------------------
Every loader takes a ``root`` directory. :func:`data_root` resolves it: the argument if given,
else the ``NETTRIM_DATA`` environment variable, else ``~/.cache/nettrim``. Under the root the
files are looked up as

- ``<root>/mnist/train-images-idx3-ubyte.gz`` (and the other three standard idx files),
- ``<root>/fashion-mnist/...`` (same four file names),
- ``<root>/spirals/two_spiral.csv``,

and also directly under ``root`` itself, so a root pointing at the dataset folder works too
(``root="../shared/data"`` and ``root="../shared/data/mnist"`` both load MNIST). Uncompressed idx
files (the same names without ``.gz``) are accepted as well.

Downloads
---------
MNIST and Fashion-MNIST are downloaded only when a file is missing and ``download=True``: each
file is fetched from the mirrors in :data:`MIRRORS` (tried in order), checked against its known
MD5 (:data:`MD5`) and moved into place atomically (a temporary file in the destination
directory, then :func:`os.replace`), so an interrupted or corrupt download never leaves a
partial file under the final name.

Batching
--------
There is no batching helper to learn: use :class:`torch.utils.data.DataLoader`.
:func:`data_loader` only builds one over in-memory tensors with a seeded generator and whole-batch
indexing (fast, deterministic).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import math
import os
import pathlib
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torch.utils.data import TensorDataset

__all__ = [
    "DATA_ENV",
    "DATASETS",
    "MD5",
    "MIRRORS",
    "data_loader",
    "data_root",
    "download_file",
    "load_mnist",
    "load_spirals",
    "read_idx",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the default data directory.
DATA_ENV = "NETTRIM_DATA"

#: Default data directory when neither an argument nor ``$NETTRIM_DATA`` is given.
DEFAULT_ROOT = "~/.cache/nettrim"

#: Datasets read by :func:`load_mnist` (they share the idx file names).
DATASETS = ("mnist", "fashion-mnist")

#: Standard idx file names: (images, labels) for the training and the test split.
_SPLIT_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: Download mirrors per dataset, tried in order. A mirror is a base URL; the file name is
#: appended. Any scheme ``urllib`` opens works (``https://``, ``http://``, ``file://``).
MIRRORS: Mapping[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: Published MD5 sums of the compressed files (the ones torchvision pins).
MD5: Mapping[str, Mapping[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

#: idx type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_SIZE = 28
_NUM_CLASSES = 10
_SPIRALS_FILE = "two_spiral.csv"
_SPIRALS_HEADER = ["X", "Y", "Class"]
_CHUNK_BYTES = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0


def data_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """Resolve the data directory.

    Parameters
    ----------
    root : str or path-like, optional
        Explicit directory. Wins when given.

    Returns
    -------
    pathlib.Path
        ``root`` if given, else ``$NETTRIM_DATA`` if set and non-empty, else
        ``~/.cache/nettrim`` (``~`` expanded). The directory need not exist.
    """
    if root is None:
        root = os.environ.get(DATA_ENV) or DEFAULT_ROOT
    elif not isinstance(root, (str, os.PathLike)):
        msg = f"root: expected a str or path-like directory or None, got {type(root).__name__}"
        raise TypeError(msg)
    return pathlib.Path(root).expanduser()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not.

    The header is a magic number ``0x0000TTDD`` (``TT`` the type code, e.g. ``0x08`` for uint8;
    ``DD`` the number of dimensions), then ``DD`` big-endian uint32 sizes, then the data.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip compression is detected from the content, not the name.

    Returns
    -------
    ndarray of shape (d_1, ..., d_DD)
        The data in native byte order (uint8 for MNIST), a writable copy.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not valid gzip, has a bad magic number, or holds more or fewer data bytes
        than its header announces (truncated or corrupt). The message names the file.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            msg = f"{path}: corrupt or truncated gzip data ({err})"
            raise ValueError(msg) from err
    if len(raw) < 4:
        msg = f"{path}: not an idx file: expected a 4-byte magic number, got {len(raw)} bytes"
        raise ValueError(msg)
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        codes = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        msg = (
            f"{path}: not an idx file: magic number 0x{magic:08X}; expected 0x0000TTDD with "
            f"type code TT in {{{codes}}} and DD >= 1 dimensions (e.g. 0x00000803 = 2051 "
            "for MNIST images, 0x00000801 = 2049 for labels)"
        )
        raise ValueError(msg)
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        msg = (
            f"{path}: truncated idx header: {ndim} dimensions need {header_bytes} header bytes, "
            f"the file has {len(raw)}"
        )
        raise ValueError(msg)
    shape = struct.unpack(f">{ndim}I", raw[4:header_bytes])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header_bytes
    if found != expected:
        kind = "truncated" if found < expected else "corrupt (trailing bytes)"
        msg = (
            f"{path}: {kind} idx file: header announces shape {shape} of {dtype.name}, i.e. "
            f"{expected} data bytes, but the file holds {found}"
        )
        raise ValueError(msg)
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header_bytes)
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def download_file(
    filename: str,
    directory: str | os.PathLike,
    md5: str,
    mirrors: Sequence[str],
    *,
    timeout: float = _DOWNLOAD_TIMEOUT_S,
) -> pathlib.Path:
    """Download one file from the first mirror that serves it with the right MD5.

    The bytes are streamed into a temporary file in ``directory`` while being hashed; only a
    file whose MD5 matches is moved to ``directory / filename`` (with :func:`os.replace`, atomic
    on one file system). A temporary file is always removed on failure.

    Parameters
    ----------
    filename : str
        File name, appended to each mirror's base URL and used as the destination name.
    directory : str or path-like
        Destination directory, created if missing.
    md5 : str
        Expected MD5 hex digest of the file.
    mirrors : sequence of str
        Base URLs tried in order (``https://``, ``http://`` or ``file://``).
    timeout : float, default 60.0
        Network timeout in seconds per connection.

    Returns
    -------
    pathlib.Path
        The downloaded file, ``directory / filename``.

    Raises
    ------
    ValueError
        If no mirror succeeded and at least one served a file with the wrong MD5 (the message
        lists every attempt), or if ``mirrors`` is empty.
    OSError
        If no mirror could be reached (the message lists every attempt and how to install the
        file by hand).
    """
    if isinstance(mirrors, str) or not isinstance(mirrors, Sequence) or not mirrors:
        msg = f"mirrors: expected a non-empty sequence of base URLs, got {mirrors!r}"
        raise ValueError(msg)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / filename
    failures: list[str] = []
    mismatch = False
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        logger.info("downloading %s to %s", url, destination)
        try:
            digest, temp_path = _fetch_to_temp(url, directory, filename, timeout)
        except (OSError, urllib.error.URLError, ValueError) as err:
            failures.append(f"{url}: {err}")
            continue
        if digest != md5.lower():
            pathlib.Path(temp_path).unlink(missing_ok=True)
            failures.append(f"{url}: MD5 mismatch: expected {md5}, got {digest}")
            mismatch = True
            continue
        os.replace(temp_path, destination)
        return destination
    attempts = "\n  ".join(failures)
    hint = (
        f"Download '{filename}' by hand (MD5 {md5}) into {directory}, or set {DATA_ENV} / "
        "pass root= to a directory that already holds it."
    )
    if mismatch:
        msg = f"download of '{filename}' failed the checksum test:\n  {attempts}\n{hint}"
        raise ValueError(msg)
    msg = f"could not download '{filename}' from any mirror:\n  {attempts}\n{hint}"
    raise OSError(msg)


def _fetch_to_temp(
    url: str, directory: pathlib.Path, filename: str, timeout: float
) -> tuple[str, str]:
    """Stream ``url`` into a temporary file in ``directory``; return (md5 hex, temp path)."""
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    try:
        hasher = hashlib.md5()
        request = urllib.request.Request(url, headers={"User-Agent": "nettrim"})
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as src:
            while chunk := src.read(_CHUNK_BYTES):
                hasher.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_path, 0o644)
    except BaseException:
        pathlib.Path(temp_path).unlink(missing_ok=True)
        raise
    return hasher.hexdigest(), temp_path


def _candidate_dirs(root: pathlib.Path, dataset: str) -> list[pathlib.Path]:
    """Directories searched for ``dataset``: ``root/dataset``, then ``root`` itself.

    ``root`` itself is skipped when it is named after another dataset (``.../mnist`` when
    Fashion-MNIST is asked for), because the file names are shared between the two datasets.
    """
    dirs = [root / dataset]
    if root.name == dataset or root.name not in DATASETS:
        dirs.append(root)
    return dirs


def _find_file(dirs: Sequence[pathlib.Path], filename: str) -> pathlib.Path | None:
    """First existing ``dir / filename`` (or its uncompressed twin), or None."""
    for directory in dirs:
        for name in (filename, filename.removesuffix(".gz")):
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    train: bool = True,
    dataset: str = "mnist",
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST from the standard idx files.

    Parameters
    ----------
    root : str or path-like, optional
        Data directory (see :func:`data_root`). Files are looked up under ``root/<dataset>/``
        and directly under ``root``.
    train : bool, default True
        Training split (60,000 images) if True, test split (10,000) if False.
    dataset : {"mnist", "fashion-mnist"}, default "mnist"
    download : bool, default True
        Download missing files into ``root/<dataset>/`` (MD5-checked, atomic). If False, a
        missing file raises :class:`FileNotFoundError`.
    mirrors : sequence of str, optional
        Base URLs to download from, tried in order; default ``MIRRORS[dataset]``.

    Returns
    -------
    x : Tensor of shape (n, 1, 28, 28), float32
        Images scaled to [0, 1].
    y : Tensor of shape (n,), int64
        Labels in 0..9.

    Raises
    ------
    FileNotFoundError
        A file is missing and ``download=False``; the message lists where it looked.
    ValueError
        Unknown ``dataset``, a corrupt file, or images and labels that do not match.
    """
    if dataset not in DATASETS:
        msg = f"dataset: expected one of {DATASETS}, got {dataset!r}"
        raise ValueError(msg)
    if not isinstance(train, bool):
        msg = f"train: expected a bool, got {type(train).__name__}"
        raise TypeError(msg)
    root = data_root(root)
    dirs = _candidate_dirs(root, dataset)
    paths = []
    for filename in _SPLIT_FILES[train]:
        path = _find_file(dirs, filename)
        if path is None:
            if not download:
                looked = ", ".join(str(d / filename) for d in dirs)
                msg = (
                    f"{dataset} file '{filename}' not found; looked for {looked} (and the names "
                    f"without .gz). Set the {DATA_ENV} environment variable to a directory "
                    f"holding '{dataset}/{filename}', pass root=..., or call with download=True."
                )
                raise FileNotFoundError(msg)
            sources = MIRRORS[dataset] if mirrors is None else mirrors
            path = download_file(filename, root / dataset, MD5[dataset][filename], sources)
        paths.append(path)
    images, labels = (read_idx(path) for path in paths)
    _check_mnist_arrays(images, labels, paths)
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels).to(torch.int64)
    return x, y


def _check_mnist_arrays(
    images: np.ndarray, labels: np.ndarray, paths: Sequence[pathlib.Path]
) -> None:
    """Validate shapes, dtypes and label range of a decoded MNIST split."""
    image_path, label_path = paths
    if images.ndim != 3 or images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE):
        msg = f"{image_path}: expected images of shape (n, 28, 28), got {images.shape}"
        raise ValueError(msg)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        msg = (
            f"{image_path}, {label_path}: expected uint8 idx data, got {images.dtype} images "
            f"and {labels.dtype} labels"
        )
        raise ValueError(msg)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        msg = (
            f"{label_path}: expected {images.shape[0]} labels (one per image in {image_path}), "
            f"got shape {labels.shape}"
        )
        raise ValueError(msg)
    if labels.size and labels.max() >= _NUM_CLASSES:
        msg = f"{label_path}: expected labels in 0..9, found {int(labels.max())}"
        raise ValueError(msg)


def load_spirals(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the two-spirals set (192 points) used by the Net-Trim supplementary note.

    Reads ``spirals/two_spiral.csv`` (columns ``X, Y, Class``) under the data root, or
    ``two_spiral.csv`` directly under it. No download: the file ships with the H2O project's
    test data (``smalldata/junit/two_spiral.csv``).

    Parameters
    ----------
    root : str or path-like, optional
        Data directory (see :func:`data_root`).

    Returns
    -------
    x : Tensor of shape (n, 2), float32
        Point coordinates (n = 192 for the published file).
    y : Tensor of shape (n,), int64
        Class labels mapped to 0/1 (sorted class values -> 0, 1).

    Raises
    ------
    FileNotFoundError
        The CSV is missing; the message lists where it looked.
    ValueError
        Wrong header, a malformed row, or not exactly two classes.
    """
    root = data_root(root)
    candidates = [root / "spirals" / _SPIRALS_FILE, root / _SPIRALS_FILE]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        looked = ", ".join(str(p) for p in candidates)
        msg = (
            f"spirals file not found; looked for {looked}. Set the {DATA_ENV} environment "
            f"variable or pass root= to a directory holding 'spirals/{_SPIRALS_FILE}'."
        )
        raise FileNotFoundError(msg)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [field.strip() for field in next(reader, [])]
        if header != _SPIRALS_HEADER:
            msg = f"{path}: expected the header {_SPIRALS_HEADER}, got {header}"
            raise ValueError(msg)
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            msg = f"{path}, line {line}: expected 3 numbers, got {row}"
            if len(row) != len(_SPIRALS_HEADER):
                raise ValueError(msg)
            try:
                rows.append([float(value) for value in row])
            except ValueError as err:
                raise ValueError(msg) from err
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(_SPIRALS_HEADER))
    classes, labels = np.unique(table[:, 2], return_inverse=True)
    if classes.size != 2:
        msg = f"{path}: expected exactly two classes in column 'Class', found {classes.tolist()}"
        raise ValueError(msg)
    x = torch.from_numpy(table[:, :2].astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def data_loader(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over in-memory tensors.

    Batches are taken by indexing the tensors with a whole index batch (no per-sample collate),
    and shuffling uses its own :class:`torch.Generator` seeded with ``seed``, so the order is
    reproducible and the global RNG is untouched. Each iteration of the loader reshuffles.

    Parameters
    ----------
    x : Tensor of shape (n, ...)
    y : Tensor of shape (n, ...), optional
    batch_size : int, default 128
    shuffle : bool, default False
    seed : int, default 0
        Seed of the shuffling generator (ignored when ``shuffle=False``).
    drop_last : bool, default False
        Drop the last incomplete batch.

    Returns
    -------
    DataLoader
        Yields ``(x_batch,)`` or ``(x_batch, y_batch)`` tuples.
    """
    if not isinstance(x, torch.Tensor):
        msg = f"x: expected a torch.Tensor, got {type(x).__name__}"
        raise TypeError(msg)
    tensors = [x]
    if y is not None:
        if not isinstance(y, torch.Tensor):
            msg = f"y: expected a torch.Tensor or None, got {type(y).__name__}"
            raise TypeError(msg)
        if y.shape[0] != x.shape[0]:
            msg = f"y: expected {x.shape[0]} rows (as many as x), got shape {tuple(y.shape)}"
            raise ValueError(msg)
        tensors.append(y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size: expected a positive int, got {batch_size!r}"
        raise ValueError(msg)
    dataset = TensorDataset(*tensors)
    if shuffle:
        generator = torch.Generator().manual_seed(int(seed))
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(dataset, sampler=batches, batch_size=None)
