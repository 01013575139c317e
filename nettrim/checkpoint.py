"""Checkpoint and data files: read a model to prune, write the pruned one back, load data.

Checkpoint formats (:data:`FORMATS`)
------------------------------------
``state_dict``
    ``torch.save(model.state_dict(), path)``. Loaded with ``torch.load(..., weights_only=True)``
    (no code runs); the model itself comes from an *architecture factory* ``module:callable``
    (e.g. ``nettrim.models:lenet_300_100``) whose result receives the weights with
    ``load_state_dict(strict=True)``. A dict nesting the weights under ``"state_dict"`` or
    ``"model_state_dict"`` (training-loop checkpoints) is accepted too.
``module``
    ``torch.save(model, path)``: a whole pickled module. Unpickling it runs code named in the file,
    so it is refused unless ``trust_pickle=True`` (the CLI's ``--trust-pickle``).
``export``
    A ``torch.export`` program (``torch.export.save``, usually ``.pt2``). A program is a graph, not
    a module whose layers can be rewritten, so it is turned back into one: with an architecture
    factory the program's weights are loaded into the factory's model; without one, a plain chain
    of supported operations (flatten, linear, conv2d, relu, max/avg pooling) is rebuilt as an
    ``nn.Sequential`` (:func:`sequential_from_program`). Saving re-exports the pruned module with an
    example input of the program's input shape (a dynamic batch dimension stays dynamic).
``safetensors``
    ``safetensors`` weights (no code runs) plus an architecture factory, like ``state_dict``.

Leftovers of :mod:`torch.nn.utils.prune` (``weight_orig`` / ``weight_mask`` pairs in a state dict,
or pruning hooks on a pickled module) are folded into plain weights when loading.

Data files (:func:`load_data`)
------------------------------
``.npz`` with an array ``x`` (and optionally integer labels ``y``); ``.pt`` holding a tensor or a
dict with ``x`` (and optionally ``y``), loaded with ``weights_only=True``; or an MNIST-style idx
directory (``train-images-idx3-ubyte[.gz]`` and friends, read with :func:`nettrim.data.read_idx`)
or a single idx images file. Integer images are scaled to [0, 1]; 3-D idx images get a channel
axis, as :func:`nettrim.data.load_mnist` does.

Every problem a user can cause (missing or corrupt file, unknown format, wrong factory, keys or
shapes that do not match, NaN/Inf weights or samples, an idx directory without the split asked
for) raises :class:`CheckpointError` (a :class:`ValueError`) with a one-line
message naming the file. Writes go to a temporary file in the destination directory that is
renamed into place (:func:`atomic_write`): an interrupted write leaves no partial file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import pathlib
import pickle
import pickletools
import struct
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .formats import FORMATS

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointError",
    "atomic_write",
    "build_model",
    "detect_format",
    "example_from_program",
    "export_model",
    "load_arch",
    "load_checkpoint",
    "load_data",
    "save_checkpoint",
    "sequential_from_program",
]


#: File suffix written for each format when the CLI picks an output name.
SUFFIXES = {"state_dict": ".pt", "module": ".pt", "export": ".pt2", "safetensors": ".safetensors"}

#: Keys under which training-loop checkpoints nest their weights.
_NESTED_KEYS = ("state_dict", "model_state_dict")
#: Names of the idx files in an MNIST-style directory: split -> (images, labels).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Batch size used when an exported program's batch dimension is dynamic.
_DYNAMIC_EXAMPLE_BATCH = 2


class CheckpointError(ValueError):
    """A checkpoint, factory or data file that cannot be used; the message is one line."""


@dataclasses.dataclass
class Checkpoint:
    """A model loaded by :func:`load_checkpoint`.

    Attributes
    ----------
    model : nn.Module
        The model, on the CPU, in eval mode.
    format : str
        One of :data:`FORMATS`.
    path : pathlib.Path
        The file it came from.
    arch : str or None
        The factory used (``module:callable``), if any.
    example_shape : tuple or None
        ``export`` only: the program's input shape (``None`` entries are dynamic dimensions).
    example_dtype : torch.dtype or None
        ``export`` only: the program's input dtype.
    notes : list of str
        What was done to load it (folded pruning masks, rebuilt a program, ...).
    """

    model: nn.Module
    format: str
    path: pathlib.Path
    arch: Optional[str] = None
    example_shape: Optional[tuple] = None
    example_dtype: Optional[torch.dtype] = None
    notes: list = dataclasses.field(default_factory=list)


# ---- writing -----------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary file lives in the destination directory (so :func:`os.replace` is atomic) and
    is removed if ``write`` raises anything, ``KeyboardInterrupt`` included.

    Parameters
    ----------
    path : str or path-like
        Final file name. Its directory is created if missing.
    write : callable
        Receives the temporary path (a str) and writes the whole file there.

    Returns
    -------
    pathlib.Path
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb") as done:
            os.fsync(done.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        pathlib.Path(temp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, format: str,
                    example_input: Optional[torch.Tensor] = None,
                    dynamic_batch: bool = False) -> pathlib.Path:
    """Write ``model`` in one of :data:`FORMATS`, atomically.

    Parameters
    ----------
    model : nn.Module
        Saved from the CPU (a copy is moved there; ``model`` itself is not).
    path : str or path-like
    format : {"state_dict", "module", "export", "safetensors"}
    example_input : Tensor, optional
        Required for ``export``: the input ``torch.export.export`` traces with.
    dynamic_batch : bool, default False
        ``export``: mark dimension 0 of the input as dynamic.

    Returns
    -------
    pathlib.Path
    """
    if format not in FORMATS:
        msg = f"format: expected one of {FORMATS}, got {format!r}"
        raise ValueError(msg)
    model = _on_cpu(model)
    if format == "state_dict":
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return atomic_write(path, lambda tmp: torch.save(state, tmp))
    if format == "safetensors":
        from safetensors.torch import save_file
        # clone: safetensors refuses tensors that share storage (tied weights)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    if format == "module":
        return atomic_write(path, lambda tmp: torch.save(model, tmp))
    if example_input is None:
        msg = "example_input: a tensor is required to export a program (format='export')"
        raise ValueError(msg)
    program = export_model(model, example_input.cpu(), dynamic_batch=dynamic_batch)
    # torch.export.save wants a name ending in .pt2
    return atomic_write(path, lambda tmp: _save_program(program, tmp))


def _save_program(program, temp: str) -> None:
    staged = temp + ".pt2"
    try:
        torch.export.save(program, staged)
        os.replace(staged, temp)
    finally:
        pathlib.Path(staged).unlink(missing_ok=True)


def export_model(model: nn.Module, example_input: torch.Tensor, *, dynamic_batch: bool = False):
    """``torch.export.export(model, (example_input,))`` in eval mode (dim 0 dynamic if asked)."""
    was_training = model.training
    model.eval()
    try:
        shapes = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
        return torch.export.export(model, (example_input,), dynamic_shapes=shapes)
    finally:
        model.train(was_training)


def _on_cpu(model: nn.Module) -> nn.Module:
    param = next(model.parameters(), None)
    if param is None or param.device.type == "cpu":
        return model
    import copy
    return copy.deepcopy(model).cpu()


# ---- reading -----------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    """Name the checkpoint format of a file from its content (and suffix).

    Returns
    -------
    str
        ``"export"`` (a torch.export archive), ``"safetensors"``, or ``"torch"`` for anything
        else that :func:`torch.load` may read (a state_dict or a pickled module: only loading
        tells them apart).

    Raises
    ------
    CheckpointError
        The file is missing, a directory, or empty.
    """
    path = pathlib.Path(path)
    if not path.exists():
        msg = f"checkpoint {path} does not exist"
        raise CheckpointError(msg)
    if not path.is_file():
        msg = f"checkpoint {path} is not a file"
        raise CheckpointError(msg)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        msg = f"checkpoint {path} is empty"
        raise CheckpointError(msg)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.endswith("/archive_format") or "serialized_exported_program" in n or
               n.endswith("/models/model.json") for n in names):
            return "export"
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len < path.stat().st_size:
            return "safetensors"
    if path.suffix == ".safetensors":
        return "safetensors"
    return "torch"


def load_arch(spec: str) -> Callable[[], nn.Module]:
    """Resolve ``"package.module:callable"`` to the callable (a factory building the model).

    ``callable`` may be a dotted attribute path (``module:Class.build``).

    Raises
    ------
    CheckpointError
        Malformed spec, module not importable, attribute missing or not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        msg = (f"--arch: expected 'module:callable' (e.g. nettrim.models:lenet_300_100), "
               f"got {spec!r}")
        raise CheckpointError(msg)
    module_name, attr_path = spec.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's factory
        msg = f"--arch {spec}: cannot import module {module_name!r} ({type(err).__name__}: {err})"
        raise CheckpointError(_one_line(msg)) from err
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            msg = f"--arch {spec}: module {module_name!r} has no attribute {attr_path!r}"
            raise CheckpointError(msg)
        obj = getattr(obj, part)
    if not callable(obj):
        msg = f"--arch {spec}: {attr_path!r} is a {type(obj).__name__}, not a callable"
        raise CheckpointError(msg)
    return obj


def build_model(spec: str) -> nn.Module:
    """Call the factory named by ``spec`` (see :func:`load_arch`) and check it built a module."""
    factory = load_arch(spec)
    try:
        model = factory()
    except Exception as err:  # noqa: BLE001 - the factory is user code
        msg = f"--arch {spec}: calling the factory failed ({type(err).__name__}: {err})"
        raise CheckpointError(_one_line(msg)) from err
    if not isinstance(model, nn.Module):
        msg = f"--arch {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module"
        raise CheckpointError(msg)
    return model


def load_checkpoint(path: str | os.PathLike, *, arch: Optional[str] = None,
                    trust_pickle: bool = False) -> Checkpoint:
    """Load a model from a checkpoint of any of :data:`FORMATS`; the file is only read.

    Parameters
    ----------
    path : str or path-like
    arch : str, optional
        ``"module:callable"`` building the model; required for ``state_dict`` and
        ``safetensors`` files, optional for ``export`` programs (else the graph is rebuilt),
        ignored for pickled modules.
    trust_pickle : bool, default False
        Allow unpickling a whole module (this runs code named in the file).

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        Any problem with the file or the factory, in one line naming it.
    """
    path = pathlib.Path(path)
    kind = detect_format(path)
    notes: list[str] = []
    if kind == "export":
        return _load_program(path, arch, notes)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            msg = f"checkpoint {path}: not a readable safetensors file ({err})"
            raise CheckpointError(_one_line(msg)) from err
        model = _model_from_state(state, arch, path, "safetensors", notes)
        return Checkpoint(model=model.eval(), format="safetensors", path=path, arch=arch,
                          notes=notes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            msg = f"checkpoint {path}: corrupt or not a torch checkpoint ({err})"
            raise CheckpointError(_one_line(msg)) from err
        if not _holds_pickle(path):  # torch's advice (weights_only=False) would be wrong here
            msg = (f"checkpoint {path}: corrupt or not a torch checkpoint (neither a torch zip "
                   "archive nor a pickle)")
            raise CheckpointError(msg) from err
        if not trust_pickle:
            msg = (f"checkpoint {path} holds pickled Python objects (a whole module?), and "
                   "loading it would run code from the file: refused. Pass --trust-pickle only "
                   "if you trust its source, or save model.state_dict() and use --arch")
            raise CheckpointError(msg) from err
        obj = _load_pickle(path)
        notes.append("unpickled a whole module (--trust-pickle)")
    except Exception as err:  # noqa: BLE001 - zip/EOF/runtime errors of a damaged file
        msg = f"checkpoint {path}: corrupt or not a torch checkpoint ({type(err).__name__}: {err})"
        raise CheckpointError(_one_line(msg)) from err
    if isinstance(obj, nn.Module):
        if arch is not None:
            notes.append(f"--arch {arch} ignored: the file holds a whole module")
        _fold_module_pruning(obj, notes)
        _check_finite_parameters(obj, path)
        return Checkpoint(model=obj.cpu().eval(), format="module", path=path, notes=notes)
    state = _as_state_dict(obj, path)
    model = _model_from_state(state, arch, path, "state_dict", notes)
    return Checkpoint(model=model.eval(), format="state_dict", path=path, arch=arch, notes=notes)


def _holds_pickle(path: pathlib.Path) -> bool:
    """Whether the file really is a pickle (a torch zip archive with a ``data.pkl``, or a
    legacy file starting with a pickle of protocol 2 to 5 that parses): only then may the user
    be told about ``--trust-pickle``."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("data.pkl") for n in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    try:
        with open(path, "rb") as handle:
            if handle.read(2)[:1] != b"\x80":
                return False
            handle.seek(0)
            for _ in pickletools.genops(handle):
                pass
    except Exception:  # noqa: BLE001 - any parse failure: not a pickle
        return False
    return True


def _check_finite_parameters(model: nn.Module, path: pathlib.Path) -> None:
    """CheckpointError naming the first parameter with NaN/Inf entries (nothing can be pruned
    or measured with it)."""
    for name, param in model.named_parameters():
        bad = int((~torch.isfinite(param.detach())).sum()) if param.is_floating_point() else 0
        if bad:
            msg = (f"checkpoint {path}: parameter {name!r} has {bad} NaN/Inf entries (of "
                   f"{param.numel()}); nettrim needs finite weights")
            raise CheckpointError(msg)


def _load_pickle(path: pathlib.Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - e.g. the pickled class cannot be imported
        msg = f"checkpoint {path}: unpickling failed ({type(err).__name__}: {err})"
        raise CheckpointError(_one_line(msg)) from err


def _as_state_dict(obj: Any, path: pathlib.Path) -> dict:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    what = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else \
        f"a {type(obj).__name__}"
    msg = f"checkpoint {path} holds {what}, not a state_dict (names -> tensors)"
    raise CheckpointError(msg)


def _model_from_state(state: dict, arch: Optional[str], path: pathlib.Path, kind: str,
                      notes: list) -> nn.Module:
    if any(k.endswith("_orig") or k.endswith("_mask") for k in state):
        from .surgery import fold_pruning_state_dict
        state = fold_pruning_state_dict(state)
        notes.append("folded torch.nn.utils.prune leftovers (*_orig * *_mask)")
    if arch is None:
        msg = (f"checkpoint {path} is a {kind} (weights only): pass --arch module:callable "
               "naming a function that builds the model (e.g. nettrim.models:lenet_300_100)")
        raise CheckpointError(msg)
    model = build_model(arch)
    _load_strict(model, state, f"checkpoint {path} does not fit --arch {arch}")
    _check_finite_parameters(model, path)
    return model


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message on mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_short(shapes)}")
    if problems:
        msg = f"{what}: {'; '.join(problems)}"
        raise CheckpointError(msg)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001 - dtype or custom load hooks
        msg = f"{what}: {type(err).__name__}: {err}"
        raise CheckpointError(_one_line(msg)) from err


def _fold_module_pruning(model: nn.Module, notes: list) -> None:
    """Make torch.nn.utils.prune reparametrizations permanent on an unpickled module."""
    from torch.nn.utils import prune as torch_prune
    folded = []
    for name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
                folded.append(f"{name}.{hook._tensor_name}")
    if folded:
        notes.append(f"folded torch.nn.utils.prune masks of {', '.join(folded)}")


# ---- torch.export programs ---------------------------------------------------------------------
def _load_program(path: pathlib.Path, arch: Optional[str], notes: list) -> Checkpoint:
    try:
        with _quiet_logger("torch.export"):  # torch logs a traceback on a bad archive
            program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 - any failure means the archive is unusable
        msg = (f"checkpoint {path}: not a loadable torch.export program "
               f"({type(err).__name__}: {err})")
        raise CheckpointError(_one_line(msg)) from err
    shape, dtype = _program_input(program, path)
    if arch is not None:
        model = build_model(arch)
        _load_strict(model, program.state_dict, f"checkpoint {path} does not fit --arch {arch}")
        notes.append(f"loaded the program's weights into --arch {arch}")
    else:
        model = sequential_from_program(program, path)
        notes.append("rebuilt the exported graph as an nn.Sequential (no --arch given)")
    _check_finite_parameters(model, path)
    return Checkpoint(model=model.eval(), format="export", path=path, arch=arch,
                      example_shape=shape, example_dtype=dtype, notes=notes)


def _program_input(program, path: pathlib.Path) -> tuple[tuple, torch.dtype]:
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        msg = (f"checkpoint {path}: the exported program takes {len(user_inputs)} inputs; "
               "nettrim handles programs with exactly one tensor input")
        raise CheckpointError(msg)
    node = next(n for n in program.graph.nodes
                if n.op == "placeholder" and n.name == user_inputs[0])
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        msg = f"checkpoint {path}: the exported program's input is not a tensor"
        raise CheckpointError(msg)
    shape = tuple(int(s) if isinstance(s, int) else None for s in val.shape)
    return shape, val.dtype


def example_from_program(checkpoint: Checkpoint, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """An example input for re-exporting: rows of ``x`` with the program's input shape.

    Returns ``(example, dynamic_batch)``. Raises :class:`CheckpointError` when ``x`` does not
    have the program's per-sample shape.
    """
    shape = checkpoint.example_shape
    if shape is None:
        return x[:_DYNAMIC_EXAMPLE_BATCH], True
    if any(s is None for s in shape[1:]) or tuple(x.shape[1:]) != tuple(shape[1:]):
        if any(s is None for s in shape[1:]):
            msg = (f"checkpoint {checkpoint.path}: the program has dynamic non-batch dimensions "
                   f"{shape}; only a dynamic batch dimension is supported")
        else:
            msg = (f"data samples have shape {tuple(x.shape[1:])} but the program "
                   f"{checkpoint.path} takes inputs of shape {shape}")
        raise CheckpointError(msg)
    dynamic = shape[0] is None
    rows = _DYNAMIC_EXAMPLE_BATCH if dynamic else shape[0]
    example = x[:rows]
    if example.shape[0] < rows:
        reps = -(-rows // max(1, example.shape[0]))
        example = example.repeat(reps, *([1] * (example.ndim - 1)))[:rows]
    return example.to(checkpoint.example_dtype or example.dtype), dynamic


class _View(nn.Module):
    """``x.reshape(x.shape[0], *shape)`` (a batch-preserving view from an exported graph)."""

    def __init__(self, shape: tuple):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self):
        return f"shape={self.shape}"


def sequential_from_program(program, path: str | os.PathLike = "<program>") -> nn.Sequential:
    """Rebuild a chain-shaped exported program as an ``nn.Sequential`` with the same weights.

    Supported ATen operations, each applied to the previous one's output: ``flatten``, batch-
    preserving ``view``/``reshape``, ``linear``, ``conv2d``, ``relu``, ``max_pool2d``,
    ``avg_pool2d``, ``dropout`` (eval: identity). Anything else (branches, residual additions,
    other operators) raises :class:`CheckpointError` asking for ``--arch``.
    """
    aten = torch.ops.aten
    params = {**program.state_dict, **getattr(program, "constants", {})}
    sig = program.graph_signature
    name_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
               **getattr(sig, "inputs_to_lifted_tensor_constants", {})}

    def tensor(node):
        if node is None:
            return None
        key = name_of.get(getattr(node, "name", None))
        if key is None or key not in params:
            msg = (f"checkpoint {path}: operator input {node} is not a stored weight; "
                   "pass --arch to load the program's weights into your model instead")
            raise CheckpointError(msg)
        return params[key].detach().clone()

    def unsupported(node, why=""):
        msg = (f"checkpoint {path}: cannot rebuild the exported graph as a chain of layers "
               f"(at {node.name}: {node.target}{why}); pass --arch module:callable to load the "
               "program's weights into your model")
        return CheckpointError(msg)

    user_input = sig.user_inputs[0]
    current = next(n for n in program.graph.nodes if n.name == user_input)
    layers: list[nn.Module] = []
    for node in program.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op != "call_function":
            raise unsupported(node)
        if not node.args or node.args[0] is not current:
            raise unsupported(node, ", not a chain")
        args = list(node.args) + [None] * 8
        target = node.target
        if target in (aten.linear.default,):
            weight, bias = tensor(args[1]), tensor(args[2])
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            _assign(layer, weight, bias)
        elif target in (aten.conv2d.default,):
            weight, bias = tensor(args[1]), tensor(args[2])
            stride, padding, dilation = (args[3] or 1), (args[4] or 0), (args[5] or 1)
            groups = args[6] or 1
            if isinstance(padding, str):
                raise unsupported(node, f", padding={padding!r}")
            layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                              stride=stride, padding=padding, dilation=dilation, groups=groups,
                              bias=bias is not None)
            _assign(layer, weight, bias)
        elif target in (aten.relu.default, aten.relu_.default):
            layer = nn.ReLU()
        elif target in (aten.flatten.using_ints,):
            start = node.args[1] if len(node.args) > 1 else 0
            end = node.args[2] if len(node.args) > 2 else -1
            if start != 1 or end != -1:
                raise unsupported(node, f", flatten({start}, {end})")
            layer = nn.Flatten()
        elif target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            out_shape = node.meta["val"].shape
            in_shape = current.meta["val"].shape
            if len(out_shape) < 1 or str(out_shape[0]) != str(in_shape[0]):
                raise unsupported(node, ", a view that changes the batch dimension")
            layer = _View(tuple(int(s) for s in out_shape[1:]))
        elif target in (aten.max_pool2d.default,):
            layer = nn.MaxPool2d(args[1], stride=args[2] or args[1], padding=args[3] or 0,
                                 dilation=args[4] or 1, ceil_mode=bool(args[5]))
        elif target in (aten.avg_pool2d.default,):
            layer = nn.AvgPool2d(args[1], stride=args[2] or args[1], padding=args[3] or 0,
                                 ceil_mode=bool(args[4]),
                                 count_include_pad=True if args[5] is None else bool(args[5]))
        elif target in (aten.dropout.default, aten.clone.default, aten.alias.default):
            layer = nn.Identity()
        else:
            raise unsupported(node)
        if not isinstance(layer, nn.Identity):
            layers.append(layer)
        current = node
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    if not (isinstance(outputs, (tuple, list)) and len(outputs) == 1 and outputs[0] is current):
        msg = (f"checkpoint {path}: the exported program does not return its last operation's "
               "result alone; pass --arch module:callable")
        raise CheckpointError(msg)
    return nn.Sequential(*layers)


def _assign(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    with torch.no_grad():
        layer.weight = nn.Parameter(weight)
        if bias is not None:
            layer.bias = nn.Parameter(bias)


# ---- data --------------------------------------------------------------------------------------
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
        raise CheckpointError(_one_line(msg)) from err
    return _check_xy(x, y, path, integers)


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
    from .data import read_idx
    images = read_idx(path)
    x = torch.from_numpy(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x


def _load_idx_dir(path: pathlib.Path, split: str):
    from .data import read_idx

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


def _check_xy(x: torch.Tensor, y: Optional[torch.Tensor], path: pathlib.Path,
              integers: bool = False):
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


# ---- helpers -----------------------------------------------------------------------------------
def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _short(items: list, limit: int = 4) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
