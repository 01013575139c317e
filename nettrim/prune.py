"""Net-Trim on a whole model: the model driver (parallel / cascade) and the write-back.

``prune`` captures each layer's activations with forward hooks (:mod:`nettrim.model.capture`),
solves its program (:func:`nettrim.layer.prune_layer`) and writes the pruned weights into a copy
of the model. A global budget (``scope="global"``) is split by :mod:`nettrim.budget`;
``structured=True`` is :mod:`nettrim.structured`.

Epsilons are *relative* here (a fraction of ``||Y||_F``); :mod:`solvers` takes absolute ones.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from solvers import OPTIMAL, OPTIMAL_INACCURATE, SUCCESS
from solvers.problem import safe_norm

from .budget import DEFAULT_MIN_PER_UNIT, check_scope, prune_global
from .checks import check_model, per_layer
from .inputs import reiterable
from .layer import PROGRAMS, check_solver_and_target, prune_layer
from .model.capture import (RELU_PROGRAM, SOLVE_DTYPES, LayerData, capture, capture_cascade,
                            group_blocks, in_solver_dtype, prunable_layers)
from .model.calibration import target_sparsity
from .resume import load_state, run_fingerprint, save_state
from .model.graph import (UnknownWeightsWarning, analyze, batchnorm_affine, parameter_counts,
                          skipped_layers, warn_unknown_weights)
from .model.surgery import apply_masks, set_layer_weight
from .results import (MAX_ITER_HINT, SKIPPED, LayerPruneResult, LayerReport, PruneResult,
                      PruningError, PruningWarning, output_discrepancy, skipped_rows)
from .structured import prune_units

__all__ = ["prune", "MODES"]

MODES = ("parallel", "cascade")
#: With ``progress="lines"`` (the CLI's ``-q``), a finished layer is printed once this many
#: seconds have passed since the start or the last line printed: a long run says where it is
#: about once a minute, a run of a few seconds stays as quiet as ``-q`` always was.
QUIET_LINE_S = 60.0


def prune(model: nn.Module, inputs: Union[torch.Tensor, Iterable], epsilon: Any = None, *,
          sparsity: Any = None, mode: str = "parallel", solver: str = "admm",
          layers: Any = None, ignore: Iterable[str] = (), activations: Optional[dict] = None,
          gamma: float = 1.1, kappa: float = 1.0, max_samples: Optional[int] = None,
          seed: int = 0, device: Any = None, inplace: bool = False, masks: bool = False,
          strict: bool = False, progress: bool = False, refit: bool = True, reweight: int = 1,
          solver_options: Optional[dict] = None, scope: str = "layer",
          structured: bool = False, min_per_unit: Optional[int] = None,
          allocation: str = "epsilon", fold_bn: bool = False,
          program: str = "auto", resume: Any = None) -> PruneResult:
    """Prune a model's Linear, Conv1d and Conv2d layers with Net-Trim.

    What follows each layer is read from the traced graph (:mod:`nettrim.graph`): a ReLU
    (directly, after an eval-mode BatchNorm, or after a residual add ``relu(bn(conv(x)) +
    skip)``) gives the ReLU-aware program, with the BatchNorm ``a * z + c`` folded into the
    weights and the skip term as a known per-sample offset (in cascade mode taken from the
    pruned network). Other activations (GELU, SiLU, LeakyReLU, Tanh, ReLU6) get the linear
    program on their pre-activations. Grouped and depthwise convolutions are solved one group
    at a time. Layers that cannot be pruned (``nn.MultiheadAttention``'s projections, layers
    the forward pass never calls, a layer whose weight is tied to another module's: the shared
    tensor is pruned once, see :func:`nettrim.graph.tied_layers`) are left as they are, with
    status ``SKIPPED`` and the reason in the report (and in ``result.skipped``); so are modules
    holding weights of a kind the toolkit does not know, which an
    :class:`~nettrim.graph.UnknownWeightsWarning` names with their share of the weights.
    float16 / bfloat16 layers are solved in float32 and written back in their own dtype (said
    in the layer's note), on every path (per layer, ``scope="global"``, ``structured=True``).

    Parameters
    ----------
    model : nn.Module
        A trained network; never modified unless ``inplace=True``.
    inputs : Tensor or iterable of batches
        Calibration data (a DataLoader works; ``(x, y)`` items use ``x``). Cascade mode passes
        over it once per layer, so it must be re-iterable (a tensor, list or DataLoader).
    epsilon : float or dict
        Relative tolerance (fraction of each layer's ``||Y||_F``), or ``{layer: epsilon}``.
        In cascade mode it sets the first layer; later layers get
        ``epsilon_l^2 = gamma ||(X-hat W_l^T - Y) on Omega||_F^2`` unless named in a dict.
    sparsity : float or dict
        Target sparsity per layer instead of ``epsilon`` (the epsilon is searched).
    mode : {"parallel", "cascade"}
        Parallel: every layer from the original network's activations (V = 0). Cascade: each
        layer from the already-pruned network's inputs X-hat and the original outputs Y, with
        ``V = X-hat W_l^T + b_l``, carrying the error forward (DESIGN.md section 2).
    solver : {"admm", "cvxpy"}
    layers, ignore : optional
        Which layers (names or module types) and which names to skip.
    activations : dict, optional
        ``{layer: "relu" | None | ...}`` (:data:`nettrim.graph.ACTIVATION_NAMES`) where the
        graph reading cannot see it (untraceable models, functional ReLUs).
    gamma : float >= 1
        Cascade slack: the original weights stay feasible.
    kappa : float in (0, 1]
        Cascade: the last linear layer's tolerance is ``kappa * gamma * ||X-hat W^T - Y||^2``
        (smaller: closer outputs, may be infeasible).
    max_samples : int, optional
        Rows kept per layer (seeded uniform subsample; for conv, patches; for a Linear on
        ``(batch, tokens, features)``, tokens). A layer with fewer rows than inputs raises a
        :class:`nettrim.CalibrationWarning`.
    device : optional
        Where activations are captured and solved (default: the model's device).
    inplace : bool
        Write into ``model`` itself instead of a copy.
    masks : bool
        Hold the zeros with ``torch.nn.utils.prune`` masks (for masked fine-tuning); the default
        writes plain weights that load into a fresh model with ``strict=True``.
    strict : bool
        Raise :class:`PruningError` instead of warning on a non-optimal solver status.
    resume : str or path-like, optional
        A run state file (:mod:`nettrim.resume`), written atomically after each finished
        layer (per-layer path). When it exists, from an interrupted run with the same options
        and layers, the layers it lists are restored (weights and report rows) and only the
        layers after them are solved. The file stays after the run; delete it when done. Not
        with ``fold_bn=True``, ``scope="global"`` or ``structured=True``.
    progress : bool or "lines"
        tqdm bars per layer (and per ADMM solve); ``"lines"``: no bars, a line on stderr for a
        finished layer once ``QUIET_LINE_S`` seconds have passed since the start or the last
        line (so a long run is never silent for long, a short one prints nothing; per-layer
        path only: the global and structured paths print nothing).
    refit, reweight, solver_options
        Passed to :func:`prune_layer`.
    scope : {"layer", "global"}
        ``"layer"``: ``sparsity`` is each layer's target. ``"global"``: ``sparsity`` (one float)
        is the fraction of all the selected weights together; Net-Trim picks the split (one
        relative epsilon for all layers, searched to the global count in parallel mode; see
        :mod:`nettrim.budget`). The allocation is in ``result.options["allocation"]``.
    structured : bool
        Group-l1 Net-Trim: remove whole input units of each layer (the output units of the
        layer before) and return a physically smaller model (see :mod:`nettrim.structured`).
    min_per_unit : int, optional
        Layer-collapse guard of ``scope="global"``: every layer keeps at least this many
        weights per output unit on average (default
        :data:`nettrim.budget.DEFAULT_MIN_PER_UNIT`).
    allocation : {"epsilon", "marginal", "magnitude"}
        How ``scope="global"`` splits the budget (see :mod:`nettrim.budget`).
    fold_bn : bool, default False
        False: the architecture is unchanged (the layer's weights pruned, its BatchNorm kept
        with a shift that absorbs the refit bias), so the state dict loads into a fresh model
        with ``strict=True``. True: the folded form, the layer holding ``diag(a) W`` and the
        bias ``a b + c`` and its BatchNorm replaced by ``nn.Identity``.
    program : {"auto", "best", "relu"}, default "auto"
        ReLU layers at a target ``sparsity``: keep the ReLU program's weights or the linear
        program's (on the layer's pre-activations, BatchNorm folded, from the original
        network), whichever gives the lower post-activation error on the calibration rows
        (see :func:`prune_layer`). A layer that kept the linear program is reported with the
        program ``linear(relu)`` and a note with both errors. Per-layer programs only
        (``structured=False``, ``scope="layer"``).

    Returns
    -------
    PruneResult
        ``.model``, ``.report`` (one :class:`LayerReport` per layer), ``.table()``,
        ``.to_dict()``, ``.output_error`` (relative output discrepancy on ``inputs``).
    """
    check_model(model)
    if mode not in MODES:
        msg = f"mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    check_solver_and_target(solver, epsilon, sparsity)
    if not (isinstance(gamma, (int, float)) and gamma >= 1):
        msg = f"gamma must be a number >= 1 (cascade slack), got {gamma!r}"
        raise ValueError(msg)
    if not (isinstance(kappa, (int, float)) and 0 < kappa <= 1):
        msg = f"kappa must be in (0, 1], got {kappa!r}"
        raise ValueError(msg)
    scope = check_scope(scope)
    if not isinstance(structured, bool):
        msg = f"structured must be True or False, got {structured!r}"
        raise TypeError(msg)
    if min_per_unit is not None and scope != "global":
        msg = "min_per_unit is the guard of a global budget: it needs scope='global'"
        raise ValueError(msg)
    hooked = dict(mode=mode, solver=solver, layers=layers, ignore=ignore,
                  activations=activations, max_samples=max_samples, seed=seed, device=device,
                  inplace=inplace, strict=strict, progress=progress is True, refit=refit,
                  reweight=reweight, solver_options=solver_options)
    if not isinstance(fold_bn, bool):
        msg = f"fold_bn must be True or False, got {fold_bn!r}"
        raise TypeError(msg)
    if program not in PROGRAMS:
        msg = f"program must be one of {PROGRAMS}, got {program!r}"
        raise ValueError(msg)
    if program != "auto" and (structured or scope == "global"):
        msg = "program= is an option of the per-layer program (structured=False, scope='layer')"
        raise ValueError(msg)
    if fold_bn and (structured or scope == "global"):
        msg = "fold_bn=True is an option of the per-layer program (structured=False, scope='layer')"
        raise ValueError(msg)
    before = parameter_counts(model)   # before any write: the "before" of skipped rows
    warn_unknown_weights(model)
    if resume is not None and (structured or scope == "global" or fold_bn):
        msg = "resume= is an option of the per-layer program (not structured, global or fold_bn)"
        raise ValueError(msg)
    if structured:
        out = prune_units(model, inputs, epsilon, sparsity=sparsity, scope=scope, masks=masks,
                          **hooked)
        return _finish(out, model, skipped_layers(model), before)
    if scope == "global":
        if epsilon is not None:
            msg = "scope='global' takes a model-wide sparsity, not an epsilon"
            raise ValueError(msg)
        out = prune_global(model, inputs, sparsity, allocation=allocation, masks=masks,
                           min_per_unit=DEFAULT_MIN_PER_UNIT if min_per_unit is None
                           else min_per_unit, per_layer_prune=_prune_quietly, **hooked)
        return _finish(out, model, skipped_layers(model), before)
    if mode == "cascade" and not reiterable(inputs):
        msg = ("inputs must be re-iterable for cascade mode (a tensor, a list of batches or a "
               "DataLoader), got a one-shot iterator")
        raise TypeError(msg)
    selected = list(prunable_layers(model, layers, ignore))
    eps_of = None if epsilon is None else per_layer(epsilon, selected, "epsilon")
    spars_of = None if sparsity is None else per_layer(sparsity, selected, "sparsity")
    if spars_of is not None and set(selected) - set(spars_of):
        msg = (f"sparsity: a dict names layers {sorted(spars_of)}, not the selected "
               f"{sorted(set(selected) - set(spars_of))}: give every selected layer a value, "
               "or select only these (layers=...)")
        raise ValueError(msg)
    options = dict(epsilon=epsilon, sparsity=sparsity, mode=mode, solver=solver, gamma=gamma,
                   kappa=kappa, max_samples=max_samples, seed=seed, refit=refit,
                   reweight=reweight, solver_options=solver_options, layers=selected,
                   fold_bn=fold_bn, program=program)
    target = model if inplace else copy.deepcopy(model)
    plan = analyze(model)   # one reading of the graph (and one warning when it fails)
    cap = dict(activations=activations, max_samples=max_samples, seed=seed, device=device,
               plan=plan, fold=True)
    with target_sparsity(spars_of):   # a CalibrationWarning speaks of the run's own target
        original = capture(model, inputs, layers=selected, **cap) if mode == "parallel" else None
    skipped = dict(plan.skipped) if original is None else dict(original.skipped)
    modules = dict(target.named_modules())

    rows = []
    fingerprint = None if resume is None else run_fingerprint(
        {**options, "activations": activations}, model, inputs)
    state = None if resume is None else load_state(resume, fingerprint)
    done = set() if state is None else set(state.done)
    if state is not None:   # an interrupted run: its finished layers as they were
        target.load_state_dict(state.state)
        rows = list(state.rows)
        skipped.update(state.skipped)
    folded: dict = {}
    names = selected
    if progress not in (True, False, "lines"):
        msg = f"progress must be True, False or 'lines', got {progress!r}"
        raise ValueError(msg)
    lines_only = progress == "lines"
    log_lines = lines_only or (progress and not _is_terminal(sys.stderr))
    progress = progress is True
    last_line = time.perf_counter() if lines_only else 0.0
    if progress and not lines_only:   # a layer bar with an ETA on a terminal; lines in a log
        names = tqdm(selected, desc=f"Net-Trim ({mode})", unit="layer", disable=None)
    first = not done
    for index, name in enumerate(names):
        if name in done:
            if mode == "parallel":
                original.pop(name, None)
            continue
        if mode == "parallel":
            data = original.pop(name, None)  # free each layer's records once used
        else:  # inputs from the pruned copy, outputs from the original, in one pass
            with target_sparsity(spars_of):
                data = capture_cascade(model, target, inputs, name, **cap)
            if data is None:
                skipped[name] = "not called by the model's forward pass (used functionally?)"
        if data is None:
            continue
        module = modules[name]
        bn = modules[data.norm] if data.norm else None
        block = _LayerProgram(data, module, bn)
        eps_layer = None if eps_of is None else eps_of[name]
        explicit = spars_of is not None or isinstance(epsilon, Mapping) and name in epsilon
        cascade = mode == "cascade" and not first
        is_last = index == len(selected) - 1
        slack = gamma * (kappa if (is_last and block.relu is False) else 1.0)
        result = block.solve(
            sparsity=None if spars_of is None else spars_of[name], epsilon=eps_layer,
            cascade=cascade, cascade_slack=None if (not cascade or explicit) else slack,
            solver=solver, refit=refit, reweight=reweight, solver_options=solver_options,
            progress=progress, program=program)
        first = False
        rep = result.report
        if rep["status"] not in SUCCESS:
            msg = (f"layer {name!r}: solver status {rep['status']} after {rep['iterations']} "
                   f"iterations (residual {rep['residual']:.4g} vs epsilon {rep['epsilon_abs']:.4g}, "
                   f"violation {rep['violation']:.3g}); {MAX_ITER_HINT} or loosen epsilon (larger epsilon, "
                   "gamma or kappa)")
            if strict:
                raise PruningError(msg)
            warnings.warn(msg, PruningWarning, stacklevel=2)
        note = block.write_back(result)
        if fold_bn and bn is not None:
            folded[name] = (data.norm, result.weight, result.bias)
        notes = [n for n in (rep.get("note", ""), note, _rows_note(data)) if n]
        rows.append(LayerReport(
            name=name, kind=data.kind, shape=tuple(module.weight.shape),
            nonzeros_before=block.nonzeros_before, nonzeros_after=rep["nonzeros"],
            total=rep["total"], sparsity=rep["sparsity"], epsilon=rep["epsilon"],
            epsilon_abs=rep["epsilon_abs"], relative_error=rep["relative_error"],
            status=rep["status"], iterations=rep["iterations"], seconds=rep["seconds"],
            solver=rep["solver"], note="; ".join(notes), program=block.program,
            rows=data.X.shape[0], rows_seen=data.rows_seen,
            peak_memory_mb=rep.get("peak_memory_mb")))
        if resume is not None:
            save_state(resume, fingerprint, rows, skipped, target)
        if log_lines and (not lines_only or time.perf_counter() - last_line >= QUIET_LINE_S):
            last_line = time.perf_counter()
            print(f"Net-Trim ({mode}) layer {index + 1}/{len(selected)} {name}: "
                  f"{100 * rep['sparsity']:.1f}% sparse, {rep['status']}, "
                  f"{rep['iterations']} iterations, {rep['seconds']:.1f} s", file=sys.stderr,
                  flush=True)
    for name, (norm, weight, bias) in folded.items():
        _fold_into(target, name, norm, weight, bias)
    if masks:
        apply_masks(target, [r.name for r in rows])
    out = PruneResult(model=target, report=rows, options=options, skipped=skipped)
    if reiterable(inputs):  # a one-shot iterator was used up by the capture
        out.output_error = output_discrepancy(model, target, inputs, device=device)
    return _finish(out, model, skipped, before)


def _finish(out: PruneResult, model: nn.Module, skipped: Mapping[str, str],
            before: Mapping[str, tuple]) -> PruneResult:
    """The skipped modules' rows (those not reported yet) and ``out.skipped``; the note of the
    layers solved in float32 for a half-precision dtype."""
    skipped = {**dict(skipped), **dict(out.skipped)}
    reported = {r.name for r in out.report}
    extra = {n: why for n, why in skipped.items() if n not in reported}
    modules = dict(model.named_modules())
    for row in out.report:
        weight = getattr(modules.get(row.name), "weight", None)
        if row.status != SKIPPED and weight is not None and weight.dtype not in SOLVE_DTYPES:
            dtype = str(weight.dtype).replace("torch.", "")
            note = (f"solved in float32 from {dtype}, weights written back in {dtype} "
                    "(rel.err is the float32 solution's)")
            if note not in row.note:   # (the per-layer pass of a global budget said it)
                row.note = "; ".join(n for n in (row.note, note) if n)
    out.report = list(out.report) + skipped_rows(extra, before, parameter_counts(out.model, extra))
    out.skipped = skipped
    return out


def _prune_quietly(*args, **kwargs) -> PruneResult:
    """:func:`prune` for the per-layer pass of a global budget: the caller has already said
    which weights sit in modules the toolkit does not know."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownWeightsWarning)
        return prune(*args, **kwargs)


def _rows_note(data: LayerData) -> str:
    N = data.X.shape[1] // data.groups
    if data.X.shape[0] >= N:
        return ""
    return f"{data.X.shape[0]} rows for {N} inputs (underdetermined, see CalibrationWarning)"


class _LayerProgram:
    """One layer's program in its solved form: the BatchNorm ``a * z + c`` folded into the
    weights (``diag(a) W``, bias ``a b + c``), the residual offset S, and one block per group of
    a grouped convolution. ``write_back`` maps the solution to the unchanged architecture."""

    def __init__(self, data: LayerData, module: nn.Module, bn: Optional[nn.Module]):
        data = in_solver_dtype(data)   # half precision: solved in float32 (note in _finish)
        self.data, self.module, self.bn = data, module, bn
        self.relu = data.activation in RELU_PROGRAM
        self.X, self.Y, self.pre = data.X, data.post, data.pre
        self.S = None if data.offset is None else data.offset.to(self.X)
        # clones: the write-back overwrites the module's tensors
        W = module.weight.detach().flatten(1).to(self.X, copy=True)
        b = None if module.bias is None else module.bias.detach().to(self.X, copy=True)
        self.nonzeros_before = int((W != 0).sum())
        self.a = None
        if bn is not None:
            a, c = batchnorm_affine(bn)
            self.a, self.c = a.to(self.X), c.to(self.X)
            W = self.a[:, None] * W
            b = self.c + (0 if b is None else self.a * b)
        self.W0, self.b0 = W, b
        self.program = "+".join(p for p in (
            data.activation if self.relu else f"linear({data.activation})" if data.activation
            else "linear",
            "bn" if bn is not None else "", "offset" if self.S is not None else "",
            f"groups={data.groups}" if data.groups > 1 else "") if p)

    def solve(self, *, sparsity, epsilon, cascade, cascade_slack, **kwargs) -> LayerPruneResult:
        M, N = self.W0.shape
        parts = []
        for cols, out in group_blocks(self.data.groups, self.X.shape[1], M):
            X, Y = self.X[:, cols], self.Y[:, out]
            S = None if self.S is None else self.S[:, out]
            W0 = self.W0[out]
            b0 = None if self.b0 is None else self.b0[out]
            V = None
            pre_hat = X @ W0.T + (0 if b0 is None else b0) + (0 if S is None else S)
            if cascade and self.relu:
                V = pre_hat
            common = dict(relu=self.relu, bias=b0 is not None, W0=W0, b0=b0, V=V, offset=S,
                          pre=self.pre[:, out] if self.relu else None, **kwargs)
            if sparsity is not None:
                parts.append(prune_layer(X, Y, sparsity=sparsity, **common))
            elif cascade_slack is not None:
                D = pre_hat - Y
                if self.relu:
                    D = D.masked_fill(Y <= 0, 0.0)
                eps_abs = math.sqrt(cascade_slack) * float(torch.linalg.vector_norm(D))
                parts.append(prune_layer(X, Y, epsilon=eps_abs, absolute=True, **common))
            else:
                parts.append(prune_layer(X, Y, epsilon=epsilon, **common))
        # the candidate kept (nettrim.layer.program): "linear..." a linear program's support
        # (or the linear refit), "...+soft" the ReLU-aware refit; said in the name, with the
        # count of groups where only some kept it
        names = [p.report.get("program", "relu") for p in parts]
        linear = sum(n.startswith("linear") for n in names)
        soft = sum(n.endswith("+soft") for n in names)
        act = self.data.activation
        if linear:
            self.program = self.program.replace(act, f"linear({act})", 1) + (
                f"(linear in {linear})" if linear < len(parts) else "")
            act = f"linear({act})"
        if soft:
            self.program = self.program.replace(act, f"{act}+soft", 1) + (
                f"(soft in {soft})" if soft < len(parts) else "")
        if len(parts) == 1:
            return parts[0]
        for p in parts:   # one line for the groups instead of one per group
            own = p.report.pop("program_note", None)
            if own:
                p.report["note"] = "; ".join(n for n in p.report["note"].split("; ") if n != own)
        merged = _merge(parts, self.Y)
        said = [f"linear program's support kept in {linear} of {len(parts)} groups" if linear
                else "", f"ReLU-aware refit in {soft} of {len(parts)} groups" if soft else ""]
        if linear or soft:
            note = "; ".join(n for n in said if n) + " (lower post-ReLU calibration error)"
            merged.report["note"] = "; ".join(n for n in (merged.report.get("note"), note) if n)
        return merged

    @torch.no_grad()
    def write_back(self, result: LayerPruneResult) -> str:
        """Write the solution into the module (and its BatchNorm); a note or ''."""
        if self.bn is None:
            set_layer_weight(self.module, result.weight, result.bias)
            return ""
        a = self.a
        dead = a == 0
        W = torch.where(dead[:, None], torch.zeros_like(result.weight),
                        result.weight / torch.where(dead, torch.ones_like(a), a)[:, None])
        set_layer_weight(self.module, W, None)
        # the folded bias b' = a b + c' gives the BatchNorm's new shift c' = b' - a b
        shift = result.bias - (0 if self.module.bias is None else
                               a * self.module.bias.detach().to(a))
        bn = self.bn
        mean = bn.running_mean.detach().to(a)
        if bn.bias is not None:      # c' = beta' - a mean
            bn.bias.copy_((shift + a * mean).to(bn.bias))
        else:                        # c' = -a mean'
            keep = torch.where(dead, mean, -shift / torch.where(dead, torch.ones_like(a), a))
            bn.running_mean.copy_(keep.to(bn.running_mean))
        return f"{int(dead.sum())} channel(s) with BatchNorm scale 0 are dead" if bool(dead.any()) \
            else ""


def _merge(parts: list, Y: torch.Tensor) -> LayerPruneResult:
    """One result from a grouped layer's blocks (weights stacked by output channel)."""
    reps = [p.report for p in parts]
    weight = torch.cat([p.weight for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    y_norm = float(safe_norm(Y))
    sq = lambda key: math.sqrt(sum(r[key] ** 2 for r in reps))  # noqa: E731
    errors, start = 0.0, 0   # each block's absolute error, from its relative one
    for r, p in zip(reps, parts):
        m = p.weight.shape[0]
        errors += (r["relative_error"] * float(safe_norm(Y[:, start:start + m]))) ** 2
        start += m
    errors = math.sqrt(errors)
    statuses = [r["status"] for r in reps]
    status = next((s for s in statuses if s not in SUCCESS), None) or \
        (OPTIMAL_INACCURATE if OPTIMAL_INACCURATE in statuses else OPTIMAL)
    nonzeros, total = sum(r["nonzeros"] for r in reps), sum(r["total"] for r in reps)
    notes = sorted({r["note"] for r in reps if r.get("note")})
    report = dict(
        nonzeros=nonzeros, total=total, sparsity=1.0 - nonzeros / total,
        epsilon_abs=sq("epsilon_abs"), relative_error=errors / y_norm if y_norm > 0 else 0.0,
        status=status, iterations=sum(r["iterations"] for r in reps),
        seconds=sum(r["seconds"] for r in reps), solver=reps[0]["solver"],
        objective=sum(r["objective"] for r in reps), residual=sq("residual"),
        violation=max(r["violation"] for r in reps), groups=len(parts),
        peak_memory_mb=max((r.get("peak_memory_mb") or 0.0 for r in reps), default=None))
    report["epsilon"] = report["epsilon_abs"] / y_norm if y_norm > 0 else float("nan")
    if notes:
        report["note"] = f"{len(parts)} groups: " + "; ".join(notes)
    return LayerPruneResult(weight=weight, bias=bias, report=report)


@torch.no_grad()
def _fold_into(model: nn.Module, name: str, norm: str, weight: torch.Tensor,
               bias: torch.Tensor) -> None:
    """The folded form: the layer holds ``diag(a) W`` and bias ``a b + c``; its BatchNorm
    becomes ``nn.Identity``."""
    layer = model.get_submodule(name)
    if layer.bias is None:   # a layer with a bias: rebuilt, the weight tensor kept
        new = copy.deepcopy(layer)
        new.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                            device=layer.weight.device))
        model.set_submodule(name, new)
        layer = new
    layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
    layer.bias.copy_(bias.to(layer.bias))
    model.set_submodule(norm, nn.Identity())


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
