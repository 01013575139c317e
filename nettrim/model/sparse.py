"""Real speed and size from unstructured sparsity: CSR kernels and a compressed checkpoint.

* :func:`sparsify` returns a copy of a pruned model whose Linear / Conv2d layers run on torch's
  sparse CSR kernels **only where that was measured to be faster** on this machine, at the batch
  size asked for; ``copy.nettrim_sparse`` says, per layer, what was measured and what was done.
  Dense BLAS is very fast: at moderate sparsity (50-80%) a CSR product is usually *slower*.
* :func:`latency_report`: dense, compacted (:func:`nettrim.model.surgery.compact`, dead units
  removed) and sparse (:func:`sparsify`) CPU latency of a model at batch 1 and 256.
* :func:`save_sparse` / :func:`load_sparse`: a safetensors checkpoint that stores each weight
  with enough zeros as CSR arrays (``<key>.crow``, ``<key>.col`` int32 and ``<key>.values``;
  the shape in the metadata) and everything else densely; it loads back into the plain dense
  architecture (``model.load_state_dict(load_sparse(path), strict=True)``).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_model
from ..io.checkpoint import fold_pruning_state_dict
from ..io.files import atomic_write
from .capture import SUPPORTED
from .graph import TransposedLinear
from .surgery import compact, measure_latency, remove_masks

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "latency_report", "format_latency",
           "save_sparse",
           "load_sparse", "SPARSE_FORMAT"]

#: Metadata tag of the compressed checkpoint format.
SPARSE_FORMAT = "nettrim-csr-1"
#: Forward passes timed per candidate layer (median) when deciding.
DECIDE_REPEATS = 30


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():   # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().flatten(1).to_sparse_csr()


class SparseLinear(nn.Module):
    """``nn.Linear`` whose weight is a CSR matrix: ``y = b + W_csr x`` (torch.addmm)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _csr(linear.weight)
        b = linear.bias
        self.bias = None if b is None else b.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.bias is None:
            out = (self.weight @ rows.T).T
        else:
            out = torch.addmm(self.bias[:, None], self.weight, rows.T).T
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={nnz} (CSR)")


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups=1) as unfold + a CSR product with the (out, in*kh*kw) weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            msg = "SparseConv2d supports groups=1, zero padding given as numbers"
            raise ValueError(msg)
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.weight = _csr(conv.weight)
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)                       # (B, C*kh*kw, L)
        Ho = (H + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) \
            // self.stride[0] + 1
        Wo = (W + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) \
            // self.stride[1] + 1
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)   # (C*kh*kw, B*L)
        out = self.weight @ flat if self.bias is None else \
            torch.addmm(self.bias[:, None], self.weight, flat)
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
             batch_size: int = 1, repeats: int = DECIDE_REPEATS) -> nn.Module:
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
        Timed forward passes per candidate (the median is compared).

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
    for name in names:
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
                   batches: tuple = (1, 256), repeats: int = 20) -> dict:
    """Median CPU latency (ms) of the model dense, compacted and sparsified, per batch size.

    Returns ``{"batch_1": {"dense": ms, "compacted": ms or None, "sparse": ms,
    "sparse_layers": [converted layers]}, ..., "notes": [...]}``. A model compaction
    cannot handle gets a note saying why its figure is missing; ``sparse`` is
    :func:`sparsify` decided at that batch size.
    """
    out: dict = {"notes": []}
    dense = remove_masks(copy.deepcopy(model)).eval()
    rows = example_input.shape[0]
    for b in batches:
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
        fast = sparsify(dense, x, repeats=repeats)
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
def save_sparse(model_or_state: Any, path: str | os.PathLike) -> dict:
    """Write a safetensors file with CSR arrays for every tensor that is smaller that way.

    A tensor of 2+ dimensions is stored as ``<key>.crow`` / ``<key>.col`` (int32) and
    ``<key>.values`` of its ``(shape[0], -1)`` matrix when that takes fewer bytes than dense;
    other tensors as they are. Written atomically (:func:`nettrim.io.files.atomic_write`).

    Returns ``{"path", "bytes", "dense_bytes", "csr_tensors"}``: the file size and that of the
    same tensors all dense (safetensors, same metadata-free layout).
    """
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) \
        else dict(model_or_state)
    state = {k: v for k, v in state.items()}
    if any(k.endswith(("_orig", "_mask")) for k in state):
        state = fold_pruning_state_dict(state)
    tensors, layout = {}, {}
    dense_bytes = 0
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        dense_bytes += value.numel() * value.element_size()
        if value.ndim >= 2 and value.numel():
            matrix = value.reshape(value.shape[0], -1)
            nnz = int((matrix != 0).sum())
            csr_bytes = nnz * (4 + value.element_size()) + (matrix.shape[0] + 1) * 4
            if csr_bytes < value.numel() * value.element_size():
                csr = _csr(matrix)
                tensors[key + ".crow"] = csr.crow_indices().to(torch.int32)
                tensors[key + ".col"] = csr.col_indices().to(torch.int32)
                tensors[key + ".values"] = csr.values().contiguous()
                layout[key] = {"layout": "csr", "shape": list(value.shape)}
                continue
        tensors[key] = value
        layout[key] = {"layout": "dense"}
    metadata = {"format": SPARSE_FORMAT, "tensors": json.dumps(layout)}
    target = atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return {"path": str(target), "bytes": pathlib.Path(target).stat().st_size,
            "dense_bytes": dense_bytes, "csr_tensors": [k for k, v in layout.items()
                                                        if v["layout"] == "csr"]}


def load_sparse(path: str | os.PathLike, model: Optional[nn.Module] = None) -> dict:
    """Read a :func:`save_sparse` file back as a dense state_dict (loaded into ``model``,
    strictly, when given)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != SPARSE_FORMAT:
            msg = (f"{path} is not a nettrim compressed checkpoint (metadata format "
                   f"{meta.get('format')!r}, expected {SPARSE_FORMAT!r})")
            raise ValueError(msg)
        layout = json.loads(meta["tensors"])
        state = {}
        for key, spec in layout.items():
            if spec["layout"] == "dense":
                state[key] = f.get_tensor(key)
                continue
            shape = spec["shape"]
            values = f.get_tensor(key + ".values")
            csr = torch.sparse_csr_tensor(f.get_tensor(key + ".crow").to(torch.int64),
                                          f.get_tensor(key + ".col").to(torch.int64), values,
                                          size=(shape[0], int(torch.tensor(shape[1:]).prod())),
                                          check_invariants=True)
            state[key] = csr.to_dense().reshape(shape)
    if model is not None:
        model.load_state_dict(state, strict=True)
    return state
