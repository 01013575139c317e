"""Real speed and size from unstructured sparsity: CSR kernels and a compressed checkpoint.

* :func:`sparsify` returns a copy of a pruned model whose Linear / Conv2d layers run on torch's
  sparse CSR kernels **only where that was measured to be faster** on this machine, at the batch
  size asked for; ``copy.nettrim_sparse`` says, per layer, what was measured and what was done.
  Dense BLAS is very fast: at moderate sparsity (50-80%) a CSR product is usually *slower*.
* :func:`latency_report`: dense, compacted (:func:`nettrim.model.surgery.compact`, dead units
  removed) and sparse (:func:`sparsify`) CPU latency of a model at batch 1 and 256.
* :func:`save_sparse` / :func:`load_sparse`: a safetensors checkpoint that stores each weight
  with enough zeros as CSR arrays (``crow``, ``col`` int32 and ``values``; their names and the
  shape in the metadata) and everything else densely, bit for bit (-0.0 kept); it loads back
  into the plain dense architecture (``model.load_state_dict(load_sparse(path), strict=True)``),
  from a model converted by :func:`sparsify` too.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pathlib
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_model
from ..io.checkpoint import fold_pruning_state_dict
from ..io.files import CheckpointError, atomic_write, one_line
from .capture import SUPPORTED
from .kinds import TransposedLinear
from .surgery import compact, measure_latency, remove_masks

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "latency_report", "format_latency",
           "save_sparse",
           "load_sparse", "SPARSE_FORMAT"]

#: Metadata tag of the compressed checkpoint format (2: the metadata names each tensor's
#: arrays in the file; files of format 1 are still read).
SPARSE_FORMAT = "nettrim-csr-2"
_FORMAT_1 = "nettrim-csr-1"
#: The largest CSR index save_sparse stores (int32).
INDEX_MAX = torch.iinfo(torch.int32).max
#: Forward passes timed per candidate layer (median) when deciding.
DECIDE_REPEATS = 30


def _csr_arrays(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow, col, values)`` of a 2-D strided tensor, keeping every entry that is not a plain
    zero: -0.0 (and NaN) are stored, so the round trip is exact bit for bit."""
    keep = matrix != 0
    if matrix.is_floating_point():
        keep |= torch.signbit(matrix)
    crow = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64, device=matrix.device)
    crow[1:] = torch.cumsum(keep.sum(1), 0)
    return crow, keep.nonzero()[:, 1], matrix[keep]


def _dense(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
           shape: tuple) -> torch.Tensor:
    """The dense tensor of ``shape`` whose ``(shape[0], -1)`` matrix has these CSR arrays (the
    values written as they are: -0.0 stays -0.0)."""
    rows = shape[0]
    dense = torch.zeros(rows, math.prod(shape[1:]), dtype=values.dtype, device=values.device)
    counts = crow.to(torch.int64).diff()
    row_of = torch.repeat_interleave(torch.arange(rows, device=counts.device), counts)
    dense[row_of, col.to(torch.int64)] = values
    return dense.reshape(tuple(shape))


class _CSRWeight(nn.Module):
    """A layer whose weight is held as CSR arrays: the buffers ``weight_crow``, ``weight_col``
    and ``weight_values`` (plain tensors, so ``.to(dtype)``, ``.to(device)`` and
    ``copy.deepcopy`` work) and an optional ``bias`` buffer. Its ``state_dict`` holds the dense
    ``weight`` in the original layer's shape and the ``bias``, so it loads into the dense
    architecture (and a dense layer's state loads into it)."""

    def _set_weight(self, weight: torch.Tensor) -> None:
        self.weight_shape = tuple(weight.shape)
        crow, col, values = _csr_arrays(weight.detach().flatten(1))
        self.register_buffer("weight_crow", crow.to(weight.device))
        self.register_buffer("weight_col", col.to(weight.device))
        self.register_buffer("weight_values", values)

    def _set_bias(self, bias: Optional[torch.Tensor]) -> None:
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in * kernel size) weight as a CSR tensor (built from the buffers)."""
        rows = self.weight_shape[0]
        cols = math.prod(self.weight_shape[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.weight_crow, self.weight_col, self.weight_values,
                                           size=(rows, cols))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = _dense(self.weight_crow, self.weight_col,
                                                self.weight_values, self.weight_shape)
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for key in ("weight", "bias") if self.bias is not None else ("weight",):
            if prefix + key not in state_dict:
                missing_keys.append(prefix + key)
                continue
            value = state_dict[prefix + key]
            want = self.weight_shape if key == "weight" else tuple(self.bias.shape)
            if tuple(value.shape) != want:
                error_msgs.append(f"size mismatch for {prefix}{key}: copying a param with shape "
                                  f"{tuple(value.shape)}, the shape in current model is {want}")
            elif key == "weight":
                dtype, device = self.weight_values.dtype, self.weight_values.device
                self._set_weight(value.detach().to(dtype=dtype, device=device))
            else:
                self.bias.copy_(value.detach())
        if strict:
            known = ("weight", "bias") if self.bias is not None else ("weight",)
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and
                                   k[len(prefix):] not in known)


class SparseLinear(_CSRWeight):
    """``nn.Linear`` whose weight is a CSR matrix: ``y = b + W_csr x`` (torch.addmm)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._set_weight(linear.weight.detach())
        self._set_bias(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        weight = self.weight
        if self.bias is None:
            out = (weight @ rows.T).T
        else:
            out = torch.addmm(self.bias[:, None], weight, rows.T).T
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight_values.numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={nnz} (CSR)")


class SparseConv2d(_CSRWeight):
    """``nn.Conv2d`` (groups=1) as unfold + a CSR product with the (out, in*kh*kw) weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            msg = "SparseConv2d supports groups=1, zero padding given as numbers"
            raise ValueError(msg)
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self._set_weight(conv.weight.detach())
        self._set_bias(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)                       # (B, C*kh*kw, L)
        Ho = (H + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) \
            // self.stride[0] + 1
        Wo = (W + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) \
            // self.stride[1] + 1
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)   # (C*kh*kw, B*L)
        weight = self.weight
        out = weight @ flat if self.bias is None else torch.addmm(self.bias[:, None], weight, flat)
        return out.reshape(self.out_channels, B, Ho * Wo).transpose(0, 1).reshape(
            B, self.out_channels, Ho, Wo)


def _layer_inputs(model: nn.Module, example: torch.Tensor, names: list) -> dict:
    """The input tensor each named layer receives on ``example``."""
    seen: dict = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(
        lambda m, inp, out, n=n: seen.__setitem__(n, inp[0].detach())) for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _median_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    return measure_latency(module, x, repeats=repeats)


def sparsify(model: nn.Module, example_input: Optional[torch.Tensor] = None, *,
             batch_size: int = 1, repeats: int = DECIDE_REPEATS,
             progress: bool = False) -> nn.Module:
    """A copy of ``model`` whose pruned layers run on CSR kernels where measured faster.

    Parameters
    ----------
    model : nn.Module
        A (pruned) model; never modified. Pruning masks are folded in the copy.
    example_input : Tensor, optional
        A batch whose layer inputs are timed (its batch size is the one decided for). Without
        it, Linear layers are timed on random inputs of ``batch_size`` rows and Conv2d layers
        (whose input size is unknown) stay dense.
    batch_size : int, default 1
        Rows of the random inputs when ``example_input`` is None.
    repeats : int
        Timed forward passes per candidate (the median is compared); fewer once they take
        :data:`nettrim.model.surgery.LATENCY_BUDGET_S` seconds, so a layer is decided in a
        few seconds at most.
    progress : bool, default False
        A tqdm bar over the layers timed (on stderr).

    Returns
    -------
    nn.Module
        The copy, in eval mode. ``copy.nettrim_sparse`` is ``{layer: {"sparsity",
        "dense_ms", "sparse_ms", "converted"}}`` (times None for a layer not timed).

    Raises
    ------
    ValueError
        The model has no nn.Linear / nn.Conv2d layer.
    """
    check_model(model)
    work = remove_masks(copy.deepcopy(model)).eval()
    names = [n for n, m in work.named_modules() if isinstance(m, SUPPORTED)]
    if not names:
        msg = "sparsify: the model has no prunable layers (nn.Linear / nn.Conv2d) to convert"
        raise ValueError(msg)
    inputs = _layer_inputs(work, example_input, names) if example_input is not None else {}
    info = {}
    for name in tqdm(names, desc="sparsify", unit="layer", disable=None if progress else True,
                     leave=False):
        module = work.get_submodule(name)
        weight = module.weight.detach()
        sparsity = 1.0 - int((weight != 0).sum()) / weight.numel()
        entry = dict(sparsity=sparsity, dense_ms=None, sparse_ms=None, converted=False)
        info[name] = entry
        x = inputs.get(name)
        if x is None and isinstance(module, nn.Linear):
            x = torch.randn(batch_size, module.in_features, dtype=weight.dtype,
                            device=weight.device)
        is_std_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and \
            module.padding_mode == "zeros" and not isinstance(module.padding, str)
        if x is None or sparsity == 0.0 or isinstance(module, (nn.Conv1d, TransposedLinear)) or \
                (isinstance(module, nn.Conv2d) and not is_std_conv):   # no CSR kernel
            continue
        candidate = (SparseLinear if isinstance(module, nn.Linear) else SparseConv2d)(module)
        entry["dense_ms"] = _median_ms(module, x, repeats)
        entry["sparse_ms"] = _median_ms(candidate, x, repeats)
        if entry["sparse_ms"] < entry["dense_ms"]:
            parent, _, child = name.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, child, candidate)
            entry["converted"] = True
    work.nettrim_sparse = info
    return work


def latency_report(model: nn.Module, example_input: torch.Tensor, *,
                   batches: tuple = (1, 256), repeats: int = 20,
                   progress: bool = False) -> dict:
    """Median CPU latency (ms) of the model dense, compacted and sparsified, per batch size
    (each timing bounded as :func:`nettrim.model.surgery.measure_latency` says; ``progress``:
    a tqdm bar per batch size and per layer decided, on stderr).

    Returns ``{"batch_1": {"dense": ms, "compacted": ms or None, "sparse": ms,
    "sparse_layers": [converted layers]}, ..., "notes": [...]}``. A model compaction
    cannot handle gets a note saying why its figure is missing; ``sparse`` is
    :func:`sparsify` decided at that batch size.
    """
    out: dict = {"notes": []}
    dense = remove_masks(copy.deepcopy(model)).eval()
    rows = example_input.shape[0]
    for b in tqdm(batches, desc="latency", unit="batch size",
                  disable=None if progress else True, leave=False):
        reps = -(-b // rows)
        x = example_input.repeat((reps,) + (1,) * (example_input.ndim - 1))[:b]
        entry = {"dense": measure_latency(dense, x, repeats=repeats)}
        try:
            small = compact(dense, x, repeats=repeats)
            entry["compacted"] = small.latency_after_ms
        except (TypeError, ValueError) as err:
            entry["compacted"] = None
            if not any("compact" in n for n in out["notes"]):
                out["notes"].append(f"compacted: not measured ({err})")
        fast = sparsify(dense, x, repeats=repeats, progress=progress)
        entry["sparse"] = measure_latency(fast, x, repeats=repeats)
        entry["sparse_layers"] = [n for n, v in fast.nettrim_sparse.items() if v["converted"]]
        out[f"batch_{b}"] = entry
    return out


def format_latency(report: dict) -> str:
    """:func:`latency_report` as a small text table (ms; the layers run sparse per batch)."""
    lines = [f"{'CPU latency (ms)':<18}{'dense':>10}{'compacted':>11}{'sparse':>10}  sparse layers"]
    for key, v in report.items():
        if not key.startswith("batch_"):
            continue
        comp = "-" if v["compacted"] is None else f"{v['compacted']:.3f}"
        lines.append(f"{key.replace('_', ' '):<18}{v['dense']:>10.3f}{comp:>11}"
                     f"{v['sparse']:>10.3f}  {', '.join(v['sparse_layers']) or 'none'}")
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


# ---- compressed checkpoint ------------------------------------------------------------------
def _csr_candidate(value: torch.Tensor) -> bool:
    """A tensor save_sparse may store as CSR: 2+ dimensions, some entries, real numbers."""
    return value.ndim >= 2 and value.numel() > 0 and value.dtype != torch.bool and \
        not value.is_complex()


def _unique_name(wanted: str, taken: set) -> str:
    name, i = wanted, 0
    while name in taken:
        i += 1
        name = f"{wanted}#{i}"
    taken.add(name)
    return name


def save_sparse(model_or_state: Any, path: str | os.PathLike) -> dict:
    """Write a safetensors file with CSR arrays for every tensor that is smaller that way.

    A tensor of 2+ dimensions (floating or integer) is stored as ``crow`` / ``col`` (int32) and
    ``values`` arrays of its ``(shape[0], -1)`` matrix when that takes fewer bytes than dense;
    other tensors as they are. Every entry that is not a plain zero is kept (-0.0 and NaN
    too): :func:`load_sparse` gives back the same bits. The metadata (``format``
    :data:`SPARSE_FORMAT`) maps each state-dict key to its layout, shape and the names of its
    arrays in the file, so any keys work (``a`` beside ``a.values`` too). A model converted by
    :func:`sparsify` is written with its dense weights (as its ``state_dict`` holds them).
    Written atomically (:func:`nettrim.io.files.atomic_write`).

    Parameters
    ----------
    model_or_state : nn.Module or dict of {str: Tensor}
        A model (its ``state_dict``; pruning masks folded) or a state dict. Sparse tensors are
        written as their dense values.
    path : str or path-like

    Returns
    -------
    dict
        ``{"path", "bytes", "dense_bytes", "csr_tensors"}``: the file size and that of the
        same tensors all dense, and the keys stored as CSR.

    Raises
    ------
    TypeError
        A key that is not a string or a value that is not a tensor.
    ValueError
        A tensor whose CSR indices do not fit int32 (more than 2**31 - 1 kept entries or
        columns); nothing is written.
    """
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) \
        else dict(model_or_state)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            msg = (f"model_or_state must map str keys to tensors, got {type(key).__name__} "
                   f"{key!r} -> {type(value).__name__}")
            raise TypeError(msg)
    if any(k.endswith(("_orig", "_mask")) for k in state):
        state = fold_pruning_state_dict(state)
    plans, dense_bytes = {}, 0
    for key, value in state.items():
        value = value.detach()
        value = (value.to_dense() if value.layout != torch.strided else value).cpu()
        dense_bytes += value.numel() * value.element_size()
        parts = None
        if _csr_candidate(value):
            matrix = value.reshape(value.shape[0], -1)
            crow, col, values = _csr_arrays(matrix)
            csr_bytes = values.numel() * (4 + value.element_size()) + crow.numel() * 4
            if csr_bytes < value.numel() * value.element_size():
                if max(values.numel(), matrix.shape[1] - 1) > INDEX_MAX:
                    msg = (f"tensor {key!r} of shape {tuple(value.shape)} has "
                           f"{values.numel()} entries and {matrix.shape[1]} columns: its CSR "
                           f"indices do not fit int32 (at most {INDEX_MAX}); nothing was written")
                    raise ValueError(msg)
                parts = {"crow": crow.to(torch.int32), "col": col.to(torch.int32),
                         "values": values.contiguous()}
        plans[key] = (value, parts)
    taken = {k for k, (_, parts) in plans.items() if parts is None}  # dense keys keep their name
    tensors, layout = {}, {}
    for key, (value, parts) in plans.items():
        if parts is None:   # a copy: safetensors refuses tensors that share memory (tied weights)
            tensors[key] = value.contiguous().clone()
            layout[key] = {"layout": "dense", "name": key}
            continue
        names = {part: _unique_name(f"{key}.{part}", taken) for part in parts}
        tensors.update({names[part]: array for part, array in parts.items()})
        layout[key] = {"layout": "csr", "shape": list(value.shape), **names}
    metadata = {"format": SPARSE_FORMAT, "tensors": json.dumps(layout)}
    target = atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return {"path": str(target), "bytes": pathlib.Path(target).stat().st_size,
            "dense_bytes": dense_bytes, "csr_tensors": [k for k, v in layout.items()
                                                        if v["layout"] == "csr"]}


def load_sparse(path: str | os.PathLike, model: Optional[nn.Module] = None) -> dict:
    """Read a :func:`save_sparse` file back as a dense state_dict (loaded into ``model``,
    strictly, when given).

    Files of the earlier format ``nettrim-csr-1`` (arrays named ``<key>.crow`` /
    ``<key>.col`` / ``<key>.values``) are read too.

    Raises
    ------
    nettrim.io.files.CheckpointError
        (a ValueError) The path is a directory or missing, the file is not safetensors or not
        a compressed checkpoint, its metadata is incomplete or inconsistent with its arrays
        (a missing ``tensors`` entry, shape or array; a layout other than ``dense`` / ``csr``;
        CSR indices out of range), or the state does not load into ``model``.
    """
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    if path.is_dir():
        msg = f"{path} is a directory; load_sparse reads the one file save_sparse wrote"
        raise CheckpointError(msg)
    if not path.exists():
        msg = f"{path}: no such file"
        raise CheckpointError(msg)
    try:
        with safe_open(str(path), framework="pt") as f:
            layout = _read_layout(path, f.metadata() or {})
            available = set(f.keys())

            def get(name: str, key: str, what: str) -> torch.Tensor:
                if not isinstance(name, str) or name not in available:
                    msg = f"{path}: the {what} of tensor {key!r} ({name!r}) is not in the file"
                    raise CheckpointError(msg)
                return f.get_tensor(name)

            state = {key: _read_tensor(path, key, spec, get) for key, spec in layout.items()}
    except SafetensorError as err:
        msg = f"{path} is not a readable safetensors file ({one_line(str(err))})"
        raise CheckpointError(msg) from None
    if model is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            msg = f"{path} does not load into the model: {one_line(str(err))}"
            raise CheckpointError(msg) from None
    return state


def _read_layout(path: pathlib.Path, meta: dict) -> dict:
    """``{key: spec}`` of a compressed checkpoint's metadata, checked."""
    if meta.get("format") not in (SPARSE_FORMAT, _FORMAT_1):
        msg = (f"{path} is not a nettrim compressed checkpoint (metadata format "
               f"{meta.get('format')!r}, expected {SPARSE_FORMAT!r})")
        raise CheckpointError(msg)
    if "tensors" not in meta:
        msg = (f"{path}: the metadata has no 'tensors' entry (each tensor's layout and shape); "
               "the file is damaged or was not written by save_sparse")
        raise CheckpointError(msg)
    try:
        layout = json.loads(meta["tensors"])
    except ValueError as err:
        msg = f"{path}: the metadata's 'tensors' entry is not JSON ({err})"
        raise CheckpointError(msg) from None
    if not isinstance(layout, dict) or not all(isinstance(v, dict) for v in layout.values()):
        msg = f"{path}: the metadata's 'tensors' entry must map each key to its layout"
        raise CheckpointError(msg)
    legacy = meta["format"] == _FORMAT_1
    for key, spec in layout.items():
        kind = spec.get("layout")
        if kind not in ("dense", "csr"):
            msg = (f"{path}: tensor {key!r} has layout {kind!r}; this reader knows 'dense' and "
                   "'csr'")
            raise CheckpointError(msg)
        if legacy:   # nettrim-csr-1 named the arrays after the key
            spec.setdefault("name", key)
            for part in ("crow", "col", "values"):
                spec.setdefault(part, f"{key}.{part}")
        shape = spec.get("shape")
        if kind == "csr" and not (isinstance(shape, list) and len(shape) >= 2 and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            msg = (f"{path}: CSR tensor {key!r} needs a shape of 2 or more non-negative "
                   f"integers in the metadata, got {shape!r}")
            raise CheckpointError(msg)
    return layout


def _read_tensor(path: pathlib.Path, key: str, spec: dict, get) -> torch.Tensor:
    """One tensor of a compressed checkpoint, dense, its CSR arrays checked against its shape."""
    if spec["layout"] == "dense":
        return get(spec.get("name"), key, "array")
    shape = spec["shape"]
    rows, cols = shape[0], math.prod(shape[1:])
    crow, col, values = (get(spec.get(p), key, f"{p} array") for p in ("crow", "col", "values"))
    bad = None
    if any(a.ndim != 1 for a in (crow, col, values)):
        bad = "its CSR arrays must be 1-D"
    elif crow.is_floating_point() or col.is_floating_point() or crow.dtype == torch.bool:
        bad = "its crow / col arrays must hold integers"
    elif crow.numel() != rows + 1:
        bad = f"crow has {crow.numel()} entries for {rows} rows (expected {rows + 1})"
    else:
        crow, col = crow.to(torch.int64), col.to(torch.int64)
        counts = crow.diff()
        if int(crow[0]) != 0 or bool((counts < 0).any()) or int(crow[-1]) != col.numel() or \
                col.numel() != values.numel():
            bad = (f"crow does not describe its {col.numel()} columns and {values.numel()} "
                   "values")
        elif col.numel() and (int(col.min()) < 0 or int(col.max()) >= cols):
            bad = f"a column index lies outside [0, {cols})"
    if bad is not None:
        msg = f"{path}: CSR tensor {key!r} of shape {tuple(shape)}: {bad}"
        raise CheckpointError(msg)
    return _dense(crow, col, values, shape)
