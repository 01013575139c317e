"""Checkpoints: read a model to prune, write the pruned one back.

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
    Parts of the archive that would run code as torch loads them (pickles of more than tensors,
    such as crafted sample inputs; see :func:`nettrim.io.export.load_program`) are refused
    unless ``trust_pickle=True``, whatever the file's suffix.
``safetensors``
    ``safetensors`` weights (no code runs) plus an architecture factory, like ``state_dict``.

Leftovers of :mod:`torch.nn.utils.prune` (``weight_orig`` / ``weight_mask`` pairs in a state dict,
or pruning hooks on a pickled module) are folded into plain weights when loading.

Reading data files is :mod:`nettrim.io.datafiles`; rebuilding ``.pt2`` programs is
:mod:`nettrim.io.export`. A problem with a file raises :class:`nettrim.io.files.CheckpointError`
with a one-line message naming it; writes are atomic (:func:`nettrim.io.files.atomic_write`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
from torch import nn

from ..inputs import model_device
from .export import export_model, load_program, save_program, sequential_from_program
from .files import CheckpointError, atomic_write, one_line
from .formats import FORMATS

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointError",
    "build_model",
    "checkpoint_writer",
    "detect_format",
    "example_from_program",
    "fold_pruning_state_dict",
    "load_arch",
    "load_checkpoint",
    "save_checkpoint",
]


#: File suffix written for each format when the CLI picks an output name.
SUFFIXES = {"state_dict": ".pt", "module": ".pt", "export": ".pt2", "safetensors": ".safetensors"}

#: Keys under which training-loop checkpoints nest their weights.
_NESTED_KEYS = ("state_dict", "model_state_dict")
#: Batch size used when an exported program's batch dimension is dynamic.
_DYNAMIC_EXAMPLE_BATCH = 2


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

    Raises
    ------
    nettrim.io.files.OutputError
        The file could not be written (disk full, ...); nothing was left in place.
    """
    return atomic_write(path, checkpoint_writer(model, format=format, example_input=example_input,
                                                dynamic_batch=dynamic_batch))


def checkpoint_writer(model: nn.Module, *, format: str,
                      example_input: Optional[torch.Tensor] = None,
                      dynamic_batch: bool = False) -> Callable[[str], None]:
    """What :func:`save_checkpoint` writes, as a function of the file name to write it to.

    For outputs written together (:class:`nettrim.io.files.StagedFiles`). Everything but the
    writing happens here, the export of ``format="export"`` included, so that an error of the
    returned function is the file's (disk full, ...). Parameters as :func:`save_checkpoint`.
    """
    if format not in FORMATS:
        msg = f"format: expected one of {FORMATS}, got {format!r}"
        raise ValueError(msg)
    model = _on_cpu(model)
    if format == "state_dict":
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return lambda tmp: torch.save(state, tmp)
    if format == "safetensors":
        from safetensors.torch import save_file
        # clone: safetensors refuses tensors that share storage (tied weights)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        return lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    if format == "module":
        return lambda tmp: torch.save(model, tmp)
    if example_input is None:
        msg = "example_input: a tensor is required to export a program (format='export')"
        raise ValueError(msg)
    program = export_model(model, example_input.cpu(), dynamic_batch=dynamic_batch)
    return lambda tmp: save_program(program, tmp)   # torch.export.save wants a .pt2 name


def _on_cpu(model: nn.Module) -> nn.Module:
    if model_device(model).type == "cpu":
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
        raise CheckpointError(one_line(msg)) from err
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
        raise CheckpointError(one_line(msg)) from err
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
        Allow unpickling a whole module, or the parts of a ``.pt2`` archive that are not plain
        data (:func:`nettrim.io.export.unsafe_parts`): this runs code named in the file.
        Without it such files are refused, whatever their suffix.

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
        return _load_program(path, arch, notes, trust_pickle)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            msg = f"checkpoint {path}: not a readable safetensors file ({err})"
            raise CheckpointError(one_line(msg)) from err
        model = _model_from_state(state, arch, path, "safetensors", notes)
        return Checkpoint(model=model.eval(), format="safetensors", path=path, arch=arch,
                          notes=notes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            msg = f"checkpoint {path}: corrupt or not a torch checkpoint ({err})"
            raise CheckpointError(one_line(msg)) from err
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
        raise CheckpointError(one_line(msg)) from err
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
        raise CheckpointError(one_line(msg)) from err


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
        raise CheckpointError(one_line(msg)) from err


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


def fold_pruning_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``x_orig`` / ``x_mask`` pairs of a saved state_dict by ``x = x_orig * x_mask``.

    Keys keep their order; a ``_orig`` without its ``_mask`` (or the reverse) is an error.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("_mask"):
            base = key[: -len("_mask")]
            if base + "_orig" not in state_dict:
                msg = f"state_dict has {key!r} but no {base + '_orig'!r}"
                raise ValueError(msg)
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            mask = state_dict.get(base + "_mask")
            if mask is None:
                msg = f"state_dict has {key!r} but no {base + '_mask'!r}"
                raise ValueError(msg)
            out[base] = value * mask.to(value.dtype)
        else:
            out[key] = value
    return out


# ---- torch.export programs ---------------------------------------------------------------------
def _load_program(path: pathlib.Path, arch: Optional[str], notes: list,
                  trust_pickle: bool) -> Checkpoint:
    program, unsafe = load_program(path, trust_pickle=trust_pickle)
    if unsafe:
        notes.append(f"loaded the program's parts that run code ({', '.join(unsafe)}) "
                     "(--trust-pickle)")
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


# ---- helpers -----------------------------------------------------------------------------------
def _short(items: list, limit: int = 4) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
