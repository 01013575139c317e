"""Net-Trim on a whole model: the model driver (parallel / cascade) and the write-back.

``prune`` captures each layer's activations with forward hooks (:mod:`nettrim.model.capture`),
solves its program (:func:`nettrim.layer.prune_layer`) and writes the pruned weights into a copy
of the model. A global budget (``scope="global"``) is split by :mod:`nettrim.budget`;
``structured=True`` is :mod:`nettrim.structured`.

Epsilons are *relative* here (a fraction of ``||Y||_F``); :mod:`solvers` takes absolute ones.
"""

from __future__ import annotations

import copy
import functools
import sys
import time
import warnings
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from solvers import SUCCESS

from .budget import DEFAULT_MIN_PER_UNIT, check_scope, prune_global
from .checks import check_model, per_layer
from .executors import TaskBoard, TaskFailed, TaskRunner, concurrently
from .inputs import reiterable
from .folded import LayerProgram, fold_into, rows_note
from .layer import PROGRAMS, check_solver_and_target
from .layer.nm import check_nm_layers
from .model.blocks import BlockRunner
from .model.calibration import target_sparsity
from .model.capture import SOLVE_DTYPES, capture, capture_cascade, prunable_layers
from .model.graph import (UnknownWeightsWarning, analyze, parameter_counts, skipped_layers,
                          warn_unknown_weights)
from .model.surgery import apply_masks
from .resume import load_state, run_fingerprint, save_state
from .results import (FAILED, MAX_ITER_HINT, SKIPPED, LayerReport, PruneResult, PruningError,
                      PruningWarning, output_discrepancy, skipped_rows)
from .structured import prune_units

__all__ = ["prune", "MODES"]

MODES = ("parallel", "cascade")


def prune(model: nn.Module, inputs: Union[torch.Tensor, Iterable], epsilon: Any = None, *,
          sparsity: Any = None, mode: str = "parallel", solver: str = "admm",
          layers: Any = None, ignore: Iterable[str] = (), activations: Optional[dict] = None,
          gamma: float = 1.1, kappa: float = 1.0, max_samples: Optional[int] = None,
          seed: int = 0, device: Any = None, inplace: bool = False, masks: bool = False,
          strict: bool = False, progress: bool = False, refit: bool = True, reweight: int = 1,
          solver_options: Optional[dict] = None, scope: str = "layer",
          structured: bool = False, min_per_unit: Optional[int] = None,
          allocation: str = "loss", fold_bn: bool = False,
          program: str = "auto", statistics: bool = False, executor: Any = None,
          targets: Any = None, resume: Any = None) -> PruneResult:
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
    sparsity : float, str or dict
        Target sparsity per layer instead of ``epsilon`` (the epsilon is searched), or an
        N:M pattern ``"n:m"`` (n zeros in every m consecutive weights of each row, e.g.
        ``"2:4"``; see :mod:`nettrim.layer.nm`).
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
        tqdm bars per layer (and per ADMM solve); ``"lines"``: no bars, one line on stderr per
        finished layer (per-layer path only: the global and structured paths print nothing).
    refit, reweight, solver_options
        Passed to :func:`prune_layer`.
    scope : {"layer", "global"}
        ``"layer"``: ``sparsity`` is each layer's target. ``"global"``: ``sparsity`` (one float)
        is the fraction of all the selected weights together; the split is chosen by
        ``allocation`` (see :mod:`nettrim.budget`) and is in ``result.options["allocation"]``.
    structured : bool
        Group-l1 Net-Trim: remove whole input units of each layer (the output units of the
        layer before) and return a physically smaller model (see :mod:`nettrim.structured`).
    min_per_unit : int, optional
        Layer-collapse guard of ``scope="global"``: every layer keeps at least this many
        weights per output unit on average (default
        :data:`nettrim.budget.DEFAULT_MIN_PER_UNIT`).
    allocation : {"loss", "epsilon", "marginal", "magnitude"}, default "loss"
        How ``scope="global"`` splits the budget (see :mod:`nettrim.budget`): ``"loss"``
        picks the per-layer counts of least calibration loss (parallel mode returns its
        database's solutions, cascade mode refits each layer on its chosen support from the
        pruned layers' outputs); the others are Net-Trim's epsilon splits and global
        magnitude's counts.
    targets : Tensor, optional
        Calibration labels for ``allocation="loss"`` (scope="global"), one per row of a tensor
        ``inputs``: integer classes (cross-entropy) or floating targets of the output's shape
        (mean squared error). ``(inputs, labels)`` batches bring their own. Without labels the
        loss is the output discrepancy against the dense model;
        ``result.options["allocation_loss"]`` says which was used.
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
        program ``linear(relu)`` and a note with both errors; ``+soft`` in the program says
        the ReLU-aware refit (:mod:`nettrim.layer.program`) gave the weights. Per-layer
        programs only (``structured=False``, ``scope="layer"``).
    statistics : bool, default False
        True: the layers solved by the linear program (no ReLU after them, no residual add
        before their ReLU, one group) are captured as the statistics of all their rows
        (``X^T X``, ``X^T Y``, ``||Y||^2``; :func:`nettrim.capture` with ``statistics=True``)
        instead of the rows, so that their memory is ``O(N^2 + N M)`` whatever the number of
        calibration rows, and solved as the same program (``max_samples`` does not apply to
        them; the rows column of the report counts every row). Per-layer programs only.
    executor : None, "ray" or an object with ``map(fn, items)``, optional
        Where the solves run (:mod:`nettrim.executors`). None (default): in this process, Ray
        never imported. ``"ray"``: a local Ray instance for this call (or the cluster
        ``RAY_ADDRESS`` names), shut down after it; a :class:`nettrim.RayExecutor` joins a
        cluster and is left to its owner. Each l1 solve is a task and each refit a task per
        block of neurons (:mod:`nettrim.layer.tasks`); parallel mode runs the layers
        concurrently, cascade one after another, and ``scope="global"`` its per-layer solves at
        the chosen counts (its ladders run here). The results are the in-process ones (the
        refit's blocks are exact to its tolerance). A layer whose task is lost for good (its worker killed beyond Ray's
        retries, a timeout) is reported with status ``FAILED`` and the reason, its weights left
        as they were (:class:`PruningError` with ``strict=True``). ``progress`` shows one bar
        of tasks done over all workers. CPU only (``device="cpu"``).

    Returns
    -------
    PruneResult
        ``.model``, ``.report`` (one :class:`LayerReport` per layer), ``.table()``,
        ``.to_dict()``, ``.output_error`` (relative output discrepancy on ``inputs``).
    """
    arguments = {k: v for k, v in locals().items() if k != "executor"}   # the call's own
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
    if targets is not None and scope != "global":
        msg = ("targets= are the calibration labels of the global budget's loss: they need "
               "scope='global'")
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
    if not isinstance(statistics, bool):
        msg = f"statistics must be True or False, got {statistics!r}"
        raise TypeError(msg)
    if statistics and (structured or scope == "global"):
        msg = ("statistics=True is an option of the per-layer program (structured=False, "
               "scope='layer')")
        raise ValueError(msg)
    if isinstance(sparsity, str) and (structured or scope == "global"):
        msg = (f"sparsity={sparsity!r} (N:M) is a per-layer pattern: it needs structured=False "
               "and scope='layer'")
        raise ValueError(msg)
    if executor is not None and structured:
        msg = "executor= runs Net-Trim's per-layer and global programs; structured=True runs here"
        raise ValueError(msg)
    if executor is not None and device is not None and torch.device(device).type != "cpu":
        msg = f"executor= runs the solves on the workers' CPUs: device must be 'cpu', got {device!r}"
        raise ValueError(msg)
    if scope == "global" and epsilon is not None:
        msg = "scope='global' takes a model-wide sparsity, not an epsilon"
        raise ValueError(msg)
    if executor is not None and not isinstance(executor, TaskRunner):
        # the same call with the executor's runner (Ray started here is shut down after it)
        with TaskRunner.open(executor, TaskBoard(progress, desc="Net-Trim tasks")) as runner:
            try:
                out = prune(**arguments, executor=runner)
            except TaskFailed as err:   # a global budget's search cannot go on without it
                msg = f"a solve could not be run: {err.reason}"
                raise PruningError(msg) from err
            finally:
                runner.board.close()
        describe = getattr(runner.executor, "describe", None)
        out.options.update(executor=describe() if callable(describe) else
                           type(runner.executor).__name__, tasks=runner.board.summary())
        return out
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
        out = prune_global(model, inputs, sparsity, allocation=allocation, masks=masks,
                           min_per_unit=DEFAULT_MIN_PER_UNIT if min_per_unit is None
                           else min_per_unit, per_layer_prune=_prune_quietly, executor=executor,
                           targets=targets,
                           **hooked)
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
    if spars_of is not None:
        check_nm_layers(model, spars_of)   # N:M patterns fit every layer, before solving
    options = dict(epsilon=epsilon, sparsity=sparsity, mode=mode, solver=solver, gamma=gamma,
                   kappa=kappa, max_samples=max_samples, seed=seed, refit=refit,
                   reweight=reweight, solver_options=solver_options, layers=selected,
                   fold_bn=fold_bn, program=program, statistics=statistics)
    target = model if inplace else copy.deepcopy(model)
    plan = analyze(model, example=inputs if reiterable(inputs) else None)   # read once
    cap = dict(activations=activations, max_samples=max_samples, seed=seed, device=device,
               plan=plan, fold=True, statistics=statistics)
    # a model with blocks (a transformer's layers) goes block by block (nettrim.model.blocks)
    blocks = BlockRunner.for_model(model, target if mode == "cascade" else None, inputs,
                                   selected, **cap)
    rest = [n for n in selected if blocks is None or not blocks.covers(n)]
    with target_sparsity(spars_of):   # a CalibrationWarning speaks of the run's own target
        original = capture(model, inputs, layers=rest, **cap) if mode == "parallel" and rest \
            else None
    skipped = {n: r for n, r in (plan.skipped if original is None else original.skipped).items()
               if n not in selected}
    modules = dict(target.named_modules())

    rows = []
    fingerprint = None if resume is None else run_fingerprint(
        {**options, "activations": activations}, model, inputs)
    state = None if resume is None else load_state(resume, fingerprint)
    finished = set() if state is None else set(state.done)
    if state is not None:   # an interrupted run: its finished layers as they were
        target.load_state_dict(state.state)
        rows = list(state.rows)
        skipped.update(state.skipped)
    folded: dict = {}
    if progress not in (True, False, "lines"):
        msg = f"progress must be True, False or 'lines', got {progress!r}"
        raise ValueError(msg)
    lines_only = progress == "lines"
    log_lines = lines_only or (progress and not _is_terminal(sys.stderr))
    progress = progress is True
    # with an executor of several workers, parallel mode solves the layers concurrently (their
    # tasks interleave on the workers); results are written back in order either way
    together = executor is not None and mode == "parallel" and executor.workers > 1
    names = selected
    if progress and not together:   # a layer bar (ETA) on a terminal; lines in a log
        names = tqdm(selected, desc=f"Net-Trim ({mode})", unit="layer", disable=None)

    def prepare(index, name, first):
        """(data, block, solve) of a layer, or None when the forward pass never calls it (or
        the interrupted run being resumed solved it)."""
        if name in finished:
            if original is not None:
                original.pop(name, None)
            return None
        if blocks is not None and blocks.covers(name):
            data = blocks.data(name)
            if data is None:
                skipped[name] = blocks.missing[name]
        elif mode == "parallel":
            data = original.pop(name, None)  # free each layer's records once used
        else:  # inputs from the pruned copy, outputs from the original, in one pass
            with target_sparsity(spars_of):
                data = capture_cascade(model, target, inputs, name, **cap)
            if data is None:
                skipped[name] = "not called by the model's forward pass (used functionally?)"
        if data is None:
            return None
        bn = modules[data.norm] if data.norm else None
        block = LayerProgram(data, modules[name], bn)
        explicit = spars_of is not None or isinstance(epsilon, Mapping) and name in epsilon
        cascade = mode == "cascade" and not first
        is_last = index == len(selected) - 1
        slack = gamma * (kappa if (is_last and block.relu is False) else 1.0)
        solve = functools.partial(
            _solve_or_fail, block, sparsity=None if spars_of is None else spars_of[name],
            epsilon=None if eps_of is None else eps_of[name], cascade=cascade,
            cascade_slack=None if (not cascade or explicit) else slack, solver=solver,
            refit=refit, reweight=reweight, solver_options=solver_options, progress=progress,
            program=program, executor=None if executor is None else executor.child(name))
        return data, block, solve

    if together:
        layers_ = [(i, name, prepare(i, name, True)) for i, name in enumerate(selected)]
        layers_ = [(i, name, p) for i, name, p in layers_ if p is not None]
        solved = concurrently(executor, [p[2] for _, _, p in layers_])
        done = [(i, name, p, result) for (i, name, p), result in zip(layers_, solved)]
    else:
        done = _one_by_one(names, prepare, first=not finished)
    for index, name, (data, block, _), result in done:
        module, bn = modules[name], block.bn
        if isinstance(result, TaskFailed):   # the layer's tasks could not be run
            msg = f"layer {name!r}: its solves could not be run: {result.reason}"
            if strict:
                raise PruningError(msg)
            warnings.warn(msg, PruningWarning, stacklevel=2)
            rows.append(LayerReport(
                name=name, kind=data.kind, shape=tuple(module.weight.shape),
                nonzeros_before=block.nonzeros_before, nonzeros_after=block.nonzeros_before,
                total=block.W0.numel(), sparsity=1.0 - block.nonzeros_before / block.W0.numel(),
                epsilon=float("nan"), epsilon_abs=float("nan"), relative_error=float("nan"),
                status=FAILED, iterations=0, seconds=0.0, solver=solver,
                note=f"failed, weights left as they were: {result.reason}",
                program=block.program, rows=data.rows, rows_seen=data.rows_seen))
            continue
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
        notes = [n for n in (rep.get("note", ""), note, rows_note(data)) if n]
        rows.append(LayerReport(
            name=name, kind=data.kind, shape=tuple(module.weight.shape),
            nonzeros_before=block.nonzeros_before, nonzeros_after=rep["nonzeros"],
            total=rep["total"], sparsity=rep["sparsity"], epsilon=rep["epsilon"],
            epsilon_abs=rep["epsilon_abs"], relative_error=rep["relative_error"],
            status=rep["status"], iterations=rep["iterations"], seconds=rep["seconds"],
            solver=rep["solver"], note="; ".join(notes), program=block.program,
            rows=data.rows, rows_seen=data.rows_seen,
            peak_memory_mb=rep.get("peak_memory_mb")))
        if resume is not None:   # a safety net: a state that cannot be written stops nothing
            try:
                save_state(resume, fingerprint, rows, skipped, target)
            except OSError as err:
                warnings.warn(f"resume: could not write the run state {resume} ({err}); the "
                              "run goes on without it", PruningWarning, stacklevel=2)
                resume = None
        if log_lines:
            print(f"Net-Trim ({mode}) layer {index + 1}/{len(selected)} {name}: "
                  f"{100 * rep['sparsity']:.1f}% sparse, {rep['status']}, "
                  f"{rep['iterations']} iterations, {rep['seconds']:.1f} s", file=sys.stderr,
                  flush=True)
    for name, (norm, weight, bias) in folded.items():
        fold_into(target, name, norm, weight, bias)
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


def _one_by_one(names, prepare, first=True):
    """Each layer prepared and solved in turn (a generator: cascade captures a layer's inputs
    after the layers before it are written back); ``first``: whether the first layer solved
    is the network's first (not when a run resumes)."""
    for index, name in enumerate(names):
        prepared = prepare(index, name, first)
        if prepared is None:
            continue
        first = False
        yield index, name, prepared, prepared[2]()


def _solve_or_fail(block: "LayerProgram", **kwargs):
    """The layer's solution, or the :class:`TaskFailed` of an executor that lost its task."""
    try:
        return block.solve(**kwargs)
    except TaskFailed as err:
        return err


def _prune_quietly(*args, **kwargs) -> PruneResult:
    """:func:`prune` for the per-layer pass of a global budget: the caller has already said
    which weights sit in modules the toolkit does not know."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownWeightsWarning)
        return prune(*args, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
