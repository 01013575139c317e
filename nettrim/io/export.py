"""``torch.export`` programs (``.pt2``): load one without running code from it, export a
module, and rebuild a chain-shaped program as an ``nn.Sequential`` whose layers can be pruned (a
program is a graph, not a module whose layers can be rewritten). :mod:`nettrim.io.checkpoint`
reads and writes them as the ``export`` format.

A ``.pt2`` archive is mostly data (JSON and raw tensor bytes), but :func:`torch.export.load`
unpickles some of its parts with ``weights_only=False``, which runs any code a pickle names: the
sample inputs (after a ``weights_only=True`` attempt fails), weights and constants flagged
``use_pickle``, custom and opaque objects, the legacy formats' ``.pt`` members. :func:`load_program`
first reads every member that is neither one of the archive's text records nor raw tensor bytes,
and accepts it only if ``torch.load(..., weights_only=True)`` reads it (tensors and containers)
or it is JSON whose symbolic shape expressions are arithmetic (torch parses them with
:func:`sympy.sympify`, which evaluates Python); anything else is refused unless the caller trusts
the file. The bytes checked are the bytes loaded (the file is read once).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pathlib
import re
import zipfile
from typing import Optional

import torch
from torch import nn

from .files import CheckpointError, one_line

__all__ = ["check_exportable", "export_model", "load_program", "save_program",
           "sequential_from_program", "unsafe_parts"]

#: Members of a .pt2 archive that torch reads as text, never unpickles (relative to the
#: archive's root folder; ``extra/`` holds the user's text files).
_TEXT_RECORDS = ("archive_format", "archive_version", "byteorder", "version", ".data/version",
                 ".data/serialization_id", ".format_version", ".storage_alignment")
#: Where torch keeps raw tensor bytes, and the configs that say which files hold them.
_PAYLOAD_DIRS = {"data/weights/": "_weights_config.json",
                 "data/constants/": "_constants_config.json"}


def load_program(path: str | os.PathLike, *, trust_pickle: bool = False):
    """``torch.export.load`` of ``path``, refusing parts that would run code.

    Parameters
    ----------
    path : str or path-like
    trust_pickle : bool, default False
        Load the parts found by :func:`unsafe_parts` too (this runs code named in the file).

    Returns
    -------
    program : torch.export.ExportedProgram
    unsafe : list of str
        The archive members that needed ``trust_pickle`` (empty for a plain program).

    Raises
    ------
    CheckpointError
        Parts that would run code without ``trust_pickle``, or an archive torch cannot load.
    """
    path = pathlib.Path(path)
    archive = path.read_bytes()
    unsafe = unsafe_parts(archive)
    if unsafe and not trust_pickle:
        shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        msg = (f"checkpoint {path}: the torch.export archive holds parts that are not plain "
               f"tensors ({shown}); loading them would run code from the file: refused. Pass "
               "--trust-pickle (trust_pickle=True) only if you trust its source")
        raise CheckpointError(msg)
    try:
        with _quiet_loggers("torch.export", "torch._export"):  # tracebacks logged as warnings
            program = torch.export.load(io.BytesIO(archive))
    except Exception as err:  # noqa: BLE001 - any failure means the archive is unusable
        msg = (f"checkpoint {path}: not a loadable torch.export program "
               f"({type(err).__name__}: {err})")
        raise CheckpointError(one_line(msg)) from err
    return program, unsafe


def unsafe_parts(archive: bytes) -> list[str]:
    """Members of a torch.export archive that could run code when torch loads them.

    Plain data: the archive's text records, raw tensor bytes (files that the weights' and
    constants' configs list with ``use_pickle`` false and never with true), JSON whose symbolic
    shape expressions (``expr_str``, which torch parses with :func:`sympy.sympify`, i.e.
    ``eval``) are arithmetic on symbols and numbers, and anything
    ``torch.load(..., weights_only=True)`` reads. Everything else is listed: pickles of other
    objects, compiled code, other expressions, duplicated member names.

    Parameters
    ----------
    archive : bytes
        The whole ``.pt2`` file.

    Returns
    -------
    list of str
        ``"member (why)"``, member names relative to the archive's root folder.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            infos = [info for info in zf.infolist() if not info.is_dir()]
            names = [info.filename for info in infos]
            roots = {name.split("/", 1)[0] for name in names}
            strip = len(roots) == 1 and all("/" in name for name in names)
            relative = [name.split("/", 1)[1] if strip else name for name in names]
            raw = _raw_payloads(zf, infos, relative)
            found = [f"{name} (a duplicated name)" for name in sorted(set(relative))
                     if relative.count(name) > 1]
            for info, name in zip(infos, relative):
                if name in raw or name in _TEXT_RECORDS or name.startswith("extra/"):
                    continue
                why = _why_unsafe(zf.read(info))
                if why:
                    found.append(f"{name} ({why})")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return ["the archive itself (not a readable zip file)"]
    return found


def _raw_payloads(zf: zipfile.ZipFile, infos: list, relative: list[str]) -> set[str]:
    """Members that torch reads as raw tensor bytes, never unpickles."""
    raw, pickled = set(), set()
    for info, name in zip(infos, relative):
        for folder, suffix in _PAYLOAD_DIRS.items():
            if not (name.startswith(folder) and name.endswith(suffix)):
                continue
            try:
                entries = list(json.loads(zf.read(info)).get("config", {}).values())
            except (ValueError, AttributeError):
                continue
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("path_name"), str):
                    is_pickle = entry.get("use_pickle") is not False
                    (pickled if is_pickle else raw).add(folder + entry["path_name"])
    return raw - pickled


def _why_unsafe(blob: bytes) -> Optional[str]:
    """None for plain data (see :func:`unsafe_parts`), else a few words saying why not."""
    try:
        document = json.loads(blob)
    except ValueError:   # includes UnicodeDecodeError: not JSON
        pass
    else:
        bad = [e for e in _expressions(document) if not _arithmetic(e)]
        return f"symbolic expression {one_line(bad[0], 60)!r} is not arithmetic" if bad else None
    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the restricted unpickler refuses
        return "a pickle of more than tensors, or not torch data"
    return None


def _expressions(document) -> list[str]:
    """Every string under an ``expr_str`` key of a JSON document."""
    found, stack = [], [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if k == "expr_str" and isinstance(v, str)]
            stack += [v for k, v in item.items() if k != "expr_str"]
        elif isinstance(item, list):
            stack += item
    return found


def _arithmetic(expression: str) -> bool:
    """Whether ``expression`` is numbers, shape symbols and allowed functions joined by
    operators and parentheses (no attributes, strings, subscripts or other names)."""
    position = 0
    while position < len(expression.rstrip()):
        token = _TOKEN.match(expression, position)
        if token is None or (token["name"] and token["name"] not in _SYMPY_NAMES
                             and not _SYMBOL.fullmatch(token["name"])):
            return False
        position = token.end()
    return True


#: One token of a symbolic shape expression as torch writes them
#: (``Symbol('s31', positive=True, integer=True)``, ``2*s31 + 1``, ``Max(1, s0)``): a number, a
#: name, a quoted name (a symbol's), an operator or a parenthesis.
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|"
                    r"(?P<name>[A-Za-z][A-Za-z0-9_]*)|'[A-Za-z][A-Za-z0-9_]*'|"
                    r"\"[A-Za-z][A-Za-z0-9_]*\"|\*\*|//|<=|>=|==|!=|[-+*/%(),<>&|~=])")
#: Shape symbols (``s0``, ``u3``, ``zuf1``, ...): letters then digits.
_SYMBOL = re.compile(r"[a-z]+\d+")
#: Functions and constants a shape expression may name: sympy's and torch's
#: (``torch.utils._sympy.functions``, which the deserializer passes to sympify).
_SYMPY_NAMES = frozenset((
    "Abs", "And", "Eq", "False", "Float", "Ge", "Gt", "Integer", "Le", "Lt", "Max", "Min", "Mod",
    "Ne", "Not", "Or", "Rational", "True", "ceiling", "floor", "nan", "oo", "sqrt", "zoo",
    "CeilDiv", "CeilToInt", "CleanDiv", "FloatPow", "FloatTrueDiv", "FloorDiv", "FloorToInt",
    "Identity", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "LShift", "ModularIndexing",
    "PowByNatural", "PythonMod", "RShift", "RoundDecimal", "RoundToInt", "ToFloat",
    "TruncToFloat", "TruncToInt", "Where", "Symbol",
    # a symbol's assumptions, as keyword arguments of Symbol
    "algebraic", "commutative", "complex", "composite", "even", "extended_negative",
    "extended_nonnegative", "extended_nonpositive", "extended_nonzero", "extended_positive",
    "extended_real", "finite", "imaginary", "infinite", "integer", "irrational", "negative",
    "noninteger", "nonnegative", "nonpositive", "nonzero", "odd", "positive", "prime",
    "rational", "real", "transcendental", "zero"))


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_model(model: nn.Module, example_input: torch.Tensor, *, dynamic_batch: bool = False):
    """``torch.export.export(model, (example_input,))`` in eval mode (dim 0 dynamic if asked)."""
    was_training = model.training
    model.eval()
    try:
        shapes = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
        return torch.export.export(model, (example_input,), dynamic_shapes=shapes)
    finally:
        model.train(was_training)


def check_exportable(model: nn.Module, example_input: torch.Tensor, *,
                     dynamic_batch: bool = False) -> None:
    """Export ``model`` once (:func:`export_model`), to fail early rather than after the work.

    Raises
    ------
    ValueError
        torch.export cannot trace the model (data-dependent control flow, unsupported
        operations, ...), in one line; torch's own log of the failure is kept quiet.
    """
    sink = io.StringIO()   # a failed trace prints the graph (a screenful) to stderr
    try:
        with _quiet_loggers("torch"), contextlib.redirect_stderr(sink), \
                contextlib.redirect_stdout(sink):
            export_model(model, example_input, dynamic_batch=dynamic_batch)
    except Exception as err:  # noqa: BLE001 - whatever tracing the user's model raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        msg = f"torch.export cannot trace the model ({type(err).__name__}: {first})"
        raise ValueError(one_line(msg, 300)) from err


def save_program(program, temp: str) -> None:
    """``torch.export.save`` to ``temp`` (it wants a name ending in .pt2: staged beside it)."""
    staged = temp + ".pt2"
    try:
        torch.export.save(program, staged)
        os.replace(staged, temp)
    except RuntimeError as err:
        _finish_writers(err)
        raise
    finally:
        pathlib.Path(staged).unlink(missing_ok=True)


def _finish_writers(err: BaseException) -> None:
    """Finish the zip writers a failed ``torch.export.save`` left open.

    When a write fails (disk full, file size limit), the archive's ``__exit__`` writes one more
    record before it closes its writer; that write fails too, the writer is never finished, and
    its destructor then finishes it, fails again and aborts the process (``std::terminate``,
    exit -6, after nettrim's one-line error). A writer finished once, even by a failing call,
    is done: finish those held by the failed call's frames here, where a failure is only an
    exception.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        frame = err.__traceback__
        while frame is not None:
            for value in list(frame.tb_frame.f_locals.values()):
                for writer in (value, getattr(value, "archive_file", None)):
                    if isinstance(writer, torch._C.PyTorchFileWriter):
                        with contextlib.suppress(RuntimeError):
                            writer.write_end_of_file()
            frame = frame.tb_next
        err = err.__context__


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
