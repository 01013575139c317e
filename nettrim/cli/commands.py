"""What each subcommand of ``nettrim`` does (prune, report, evaluate, demo), and the steps they
share (loading checkpoints and data, checking that the data fits the model, sample subsets).

Each command imports torch and the library when it runs, never at import time: the parser
imports this module to dispatch, and ``nettrim --help`` stays free of torch.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Optional

from .common import (DEFAULT_EPSILON, DEMO_SPARSITY, EXIT_OK, UsageError, report_path_for, say,
                     version)
from .outputs import check_writable, commit, input_paths, plot_outputs, refuse_collisions
from .recipe import recipe_of
from .runs import progress_of, ray_executor, refuse_foreign_report

if TYPE_CHECKING:  # imported lazily at run time (see the module docstring)
    import torch

    from ..io import checkpoint as ckpt_io

__all__ = ["LIBRARY", "cli_hint", "cmd_demo", "cmd_evaluate", "cmd_prune", "cmd_report"]

#: The library modules each command uses: imported up front, with numpy and torch, while
#: SIGINT and SIGTERM wait (see :func:`nettrim.cli.main`).
LIBRARY = {
    "prune": ("nettrim.io.checkpoint", "nettrim.io.datafiles", "nettrim.prune", "nettrim.tables"),
    "report": ("nettrim.io.checkpoint", "nettrim.io.datafiles", "nettrim.report",
               "nettrim.tables"),
    "evaluate": ("nettrim.io.checkpoint", "nettrim.io.datafiles", "nettrim.report",
                 "nettrim.tables"),
    "demo": ("nettrim.io.checkpoint", "nettrim.io.datasets", "nettrim.models", "nettrim.prune",
             "nettrim.tables"),
    "train-prune": ("nettrim.io.checkpoint", "nettrim.io.datafiles", "nettrim.train_prune",
                    "nettrim.tables", "nettrim.plots"),
}

#: Rows pushed through a model to check that the data fits it.
_PROBE_ROWS = 2


# ---- shared steps -------------------------------------------------------------------------------
def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _device(name: str) -> torch.device:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to torch on this machine")
    return torch.device(name)


def _subset(x: torch.Tensor, y: Optional[torch.Tensor], samples: Optional[int], seed: int):
    import torch

    if samples is None or samples >= x.shape[0]:
        return x, y
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:samples]
    order = order.sort().values
    return x[order], (None if y is None else y[order])


def _load_data(path: str, split: str, samples: Optional[int], seed: int,
               integers: bool = False, normalize: Optional[tuple] = None):
    from ..io.datafiles import load_data

    x, y = load_data(path, split=split, integers=integers)
    n_available = x.shape[0]
    x, y = _subset(x, y, samples, seed)
    if normalize is not None and x.is_floating_point():
        x = _normalized(x, *normalize)
    return x, y, n_available


def _normalized(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(x - mean) / std``, one value for all entries or one per channel (dim 1)."""
    import torch

    if len(mean) > 1 and (x.ndim < 2 or x.shape[1] != len(mean)):
        raise UsageError(f"--normalize gives {len(mean)} channels, the data's samples have shape "
                         f"{tuple(x.shape[1:])} (channels first expected)")
    shape = (1, len(mean)) + (1,) * (x.ndim - 2) if len(mean) > 1 else ()
    m = torch.tensor(mean, dtype=x.dtype).reshape(shape)
    s = torch.tensor(std, dtype=x.dtype).reshape(shape)
    return (x - m) / s


def _check_fits(model: torch.nn.Module, x: torch.Tensor, what: str, many: bool = False) -> Any:
    """Run the model on a couple of rows; a failure is a shape mismatch between data and model,
    a non-finite output a model (or data) that gives no usable measurement. Returns the output
    (with ``many``) or its logits (:func:`nettrim.results.model_logits`: a Hugging Face
    ``ModelOutput``'s ``.logits``, or the first tensor of a tuple or dict)."""
    import torch

    from ..inputs import model_device

    was_training = model.training
    model.eval()
    try:
        device = model_device(model)
        with torch.no_grad():
            out = model(x[:_PROBE_ROWS].to(device))
    except Exception as err:  # noqa: BLE001 - whatever the model raises on the wrong input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (f"{what} (samples of shape {tuple(x.shape[1:])}) does not fit the model: {first}")
        raise UsageError(msg) from err
    finally:
        model.train(was_training)
    from ..results import model_logits, output_tensors

    if not output_tensors(out):
        msg = (f"the model returns a {type(out).__name__} holding no floating tensor: nettrim "
               "needs a tensor, or a ModelOutput / dict / tuple with .logits or a first tensor")
        raise UsageError(msg)
    if any(not bool(torch.isfinite(t).all()) for t in output_tensors(out)):
        msg = f"the model's output on {what} has NaN/Inf entries: nothing can be measured on it"
        raise UsageError(msg)
    return out if many else model_logits(out)


def _select(model: torch.nn.Module, layers, ignore) -> list[str]:
    from ..model.capture import prunable_layers

    try:
        return list(prunable_layers(model, layers, ignore))
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    from ..models import accuracy

    return accuracy(model, x, y)


def _load(path: str, args) -> ckpt_io.Checkpoint:
    from ..io import checkpoint as ckpt_io

    return ckpt_io.load_checkpoint(path, arch=args.arch, trust_pickle=args.trust_pickle)


def report_head(command: str, args, source: pathlib.Path, loaded, source_hash: str,
                output: tuple, out_format: str) -> dict:
    """The first entries of a command's JSON report: the command, the version, argv, the input
    checkpoint (with its SHA-256) and the output, ``(destination, staged file)``, with its own."""
    out, staged = output
    return {
        "command": command,
        "nettrim_version": version(),
        "argv": list(args.argv),
        "input": {"path": str(source.resolve()), "format": loaded.format, "arch": args.arch,
                  "sha256": source_hash},
        "output": {"path": str(out.resolve()), "format": out_format, "sha256": _sha256(staged)},
    }


# ---- prune --------------------------------------------------------------------------------------
def cmd_prune(args) -> int:
    from ..io import checkpoint as ckpt_io
    from ..model.graph import takes_token_ids
    from ..prune import prune
    from ..tables import format_json, format_prune_table, totals

    start = time.perf_counter()
    args.quiet = args.quiet or args.silent
    if args.recipe:
        from .recipe import apply_recipe, read_recipe
        apply_recipe(args, read_recipe(args.recipe))
    source = pathlib.Path(args.checkpoint)
    out = pathlib.Path(args.out)
    report_file = pathlib.Path(args.report) if args.report else report_path_for(out)
    ckpt_io.detect_format(source)  # missing, a directory, empty: one line before any work
    report_flag = "--report" if args.report else f"the report ({report_file.name})"
    if not args.report:
        refuse_foreign_report(report_file, out)
    outputs = [("--out", out), (report_flag, report_file)]
    refuse_collisions(outputs + (plot_outputs(args.plot) if args.plot else []),
                      [("checkpoint", source), *input_paths("--data", args.data),
                       *([("--recipe", pathlib.Path(args.recipe))] if args.recipe else [])],
                      overwrite=args.overwrite)
    check_writable(out, "--out")
    check_writable(report_file, "--report")
    if args.plot:
        check_writable(pathlib.Path(args.plot), "--plot", is_dir=True)
    if args.resume and args.global_budget:
        raise UsageError("--resume keeps the state of per-layer runs: not with --global")
    # every per-layer run keeps its state after each finished layer, so that an interrupted
    # run can continue with --resume; without --resume an earlier state is replaced
    resume_file = None if args.global_budget else out.with_name(out.name + ".resume")
    if resume_file is not None and not args.resume and resume_file.exists():
        print(f"nettrim: warning: {resume_file} (an interrupted run's state) is replaced by "
              "this run's; rerun with --resume to continue from it instead", file=sys.stderr,
              flush=True)
        resume_file.unlink()
    args.resume_state = resume_file
    if (args.global_budget or args.min_per_unit is not None) and args.sparsity is None:
        raise UsageError("--global and --min-per-unit need --sparsity (the model-wide fraction)")
    if args.min_per_unit is not None and not args.global_budget:
        raise UsageError("--min-per-unit is the guard of a global budget: add --global")
    if args.allocation is not None and not args.global_budget:
        raise UsageError("--allocation splits a global budget: add --global")
    source_hash = _sha256(source)
    loaded = _load(args.checkpoint, args)
    out_format = args.out_format or _format_from_suffix(out) or loaded.format
    x, y, n_available = _load_data(args.data, "train", args.samples, args.seed,
                                   integers=takes_token_ids(loaded.model),
                                   normalize=args.normalize)
    device = _device(args.device)
    model = loaded.model.to(device)
    from ..results import model_logits
    classifies = model_logits(_check_fits(model, x, f"data {args.data}", many=True)).ndim == 2
    selected = _select(model, args.layers, args.ignore)
    example, dynamic = None, False
    notes = list(loaded.notes)
    if out_format == "export":
        if loaded.format == "export":
            example, dynamic = ckpt_io.example_from_program(loaded, x)
        else:  # two rows: an example of batch 1 would fix the exported batch size to 1
            example = x[:2].repeat(2 if x.shape[0] == 1 else 1, *[1] * (x.ndim - 1))
            dynamic = True
        _check_exportable(model, example.to(device), dynamic, args)
        notes.append(f"re-exported with torch.export.export on an example input of shape "
                     f"{tuple(example.shape)}{' (batch dimension dynamic)' if dynamic else ''}")
    global_options = {}
    if args.global_budget:   # the labels (when the data has them) feed the loss allocation
        global_options["allocation"] = args.allocation or "loss"
        if y is not None and classifies and global_options["allocation"] == "loss":
            global_options["targets"] = y.to(device)
    epsilon = args.epsilon if args.sparsity is None and args.epsilon is not None else (
        DEFAULT_EPSILON if args.sparsity is None else None)
    solver_options = None
    if args.max_iter:   # the ADMM's cap, or the conic solver's (Clarabel's max_iter) for cvxpy
        solver_options = {"max_iter": args.max_iter} if args.solver == "admm" else \
            {"solver_options": {"max_iter": args.max_iter}}
    executor = ray_executor(args)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = prune(
                model, x.to(device), epsilon, sparsity=args.sparsity, mode=args.mode,
                solver=args.solver, layers=selected, seed=args.seed, device=device,
                max_samples=args.max_rows, gamma=args.gamma, strict=not args.lenient,
                progress=progress_of(args), solver_options=solver_options, refit=args.refit,
                reweight=args.reweight, scope="global" if args.global_budget else "layer",
                min_per_unit=args.min_per_unit, program=args.program, executor=executor,
                resume=resume_file, **global_options)
    except (ValueError, TypeError) as err:
        # prune validates its options and the model structure; anything it rejects is ours
        from ..results import PruningError
        if isinstance(err, PruningError):
            raise
        raise UsageError(f"prune rejected the input: {err}") from err
    finally:   # Ctrl-C and SIGTERM included: a local Ray instance goes with its processes
        if executor is not None:
            executor.close()
    pruned = result.model.cpu()
    notes += [f"layer {row.name}: {row.note}" for row in result.report if row.note]
    # every output is staged, then all are renamed into place together (nettrim.cli.outputs)
    staged = args.outputs.write(out, ckpt_io.checkpoint_writer(
        pruned, format=out_format, example_input=example, dynamic_batch=dynamic))
    rows = [r.as_dict() for r in result.report]
    summary: dict = {}
    if y is not None and classifies:   # (batch, classes) logits, a tensor's or .logits
        summary["accuracy_original"] = _accuracy(loaded.model.cpu(), x, y)  # prune copied it
        summary["accuracy_pruned"] = _accuracy(pruned, x, y)
    document = {
        **report_head("prune", args, source, loaded, source_hash, (out, staged), out_format),
        "data": {"path": str(pathlib.Path(args.data).resolve()), "samples": int(x.shape[0]),
                 "available": int(n_available), "sample_shape": list(x.shape[1:]),
                 "labels": y is not None},
        "options": {**_cli_options(args), "epsilon_used": epsilon, "prune": result.options},
        "recipe": recipe_of(args),   # read back by --recipe: the same options again
        "notes": notes,
        "layers": rows,
        "totals": totals(rows),
        "output_error": result.output_error,
        **summary,
        **_latency(args, pruned),
        "seconds": time.perf_counter() - start,
    }
    args.outputs.write(report_file, lambda tmp: pathlib.Path(tmp).write_text(
        format_json(document) + "\n", encoding="utf-8"))
    plots = _stage_plots(args, rows)
    commit(args)
    if resume_file is not None:   # the outputs are in place: the run state has served
        resume_file.unlink(missing_ok=True)
    lines = [format_prune_table(result.report, result.output_error)]
    if result.options.get("scope") == "global":
        from ..budget import format_allocation
        lines.append(format_allocation(result.options))
    if "accuracy_pruned" in summary:
        lines.append(f"calibration accuracy: original {summary['accuracy_original']:.2%}, "
                     f"pruned {summary['accuracy_pruned']:.2%}")
    lines += [f"note: {n}" for n in notes]
    lines.append(f"wrote {out} ({out_format}) and {report_file}")
    lines += [f"wrote {p}" for p in plots]
    say(args, *lines)
    return EXIT_OK


def _check_exportable(model, example, dynamic: bool, args) -> None:
    """UsageError, before any solving, when torch.export cannot trace the model (the pruned
    one has the same structure, so it would fail after all the work)."""
    from ..io.export import check_exportable

    try:
        check_exportable(model, example, dynamic_batch=dynamic)
    except ValueError as err:
        flag = "--format export" if args.out_format else f"--out {args.out} (.pt2: export)"
        raise UsageError(f"{flag}: {err}; save another format (--format state_dict, "
                         "safetensors or module)") from err


def _stage_plots(args, rows) -> list[pathlib.Path]:
    """Stage the plots of ``rows`` into ``--plot`` (nothing without it)."""
    if not args.plot:
        return []
    from ..plots import plot_report

    return args.outputs.write_dir(args.plot, lambda directory: plot_report(rows, directory))


def cli_hint(text: str) -> str:
    """A library message with the command line's spelling of the iteration cap."""
    from ..results import MAX_ITER_HINT

    return text.replace(MAX_ITER_HINT, "raise the iteration cap with --max-iter N")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings during a command, one line each, in the command line's terms."""
    text = cli_hint(str(message))
    print(f"nettrim: warning: {text}", file=sys.stderr if file is None else file, flush=True)


def _format_from_suffix(path: pathlib.Path) -> Optional[str]:
    """``export`` for ``.pt2``, ``safetensors`` for ``.safetensors``, else None."""
    return {".pt2": "export", ".safetensors": "safetensors"}.get(path.suffix.lower())


def _cli_options(args) -> dict:
    skip = {"func", "argv", "outputs", "signals"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


# ---- report -------------------------------------------------------------------------------------
def _original_from_report(path: pathlib.Path) -> tuple[Optional[str], Optional[str]]:
    """(original checkpoint, its arch) named in the report.json beside ``path``, if any."""
    import json

    report_file = report_path_for(path)
    if not report_file.is_file():   # a report written before reports kept the output's suffix
        report_file = path.with_name(path.stem + ".report.json")
    if not report_file.is_file():
        return None, None
    try:
        doc = json.loads(report_file.read_text(encoding="utf-8"))
        written = doc.get("output", {}).get("path") if isinstance(doc.get("output"), dict) \
            else None
        if written is not None and pathlib.Path(str(written)) != path.resolve():
            return None, None   # the report of another output
        source, arch = doc["input"]["path"], doc["input"].get("arch")
        return (source if pathlib.Path(source).is_file() else None), \
            (arch if isinstance(arch, str) else None)
    except (ValueError, KeyError, TypeError, OSError):
        return None, None


def _load_original(path: str, args, recorded_arch: Optional[str]):
    """The original model to compare with. An architecture named by a report file is data,
    not consent: it is imported (its code run) only when the user passes it as --arch."""
    from ..io import checkpoint as ckpt_io
    from ..io.files import CheckpointError

    try:
        return ckpt_io.load_checkpoint(path, arch=args.arch, trust_pickle=args.trust_pickle).model
    except CheckpointError as err:
        if args.arch is not None or recorded_arch is None:
            raise
        report = report_path_for(args.checkpoint)
        msg = (f"the original {path} named in {report} cannot be loaded without its "
               f"architecture ({err}); the report names {recorded_arch!r}, which is imported "
               f"(its code run) only when you name it yourself: pass --arch {recorded_arch}, or "
               "--original ORIGINAL")
        raise UsageError(msg) from err


def cmd_report(args) -> int:
    from ..report import add_layer_errors, layer_errors, layer_rows
    from ..tables import format_csv, render

    recorded_arch = None
    original = args.original
    if original is None and args.data:
        original, recorded_arch = _original_from_report(pathlib.Path(args.checkpoint))
    if args.plot:
        inputs = [("checkpoint", args.checkpoint)]
        inputs += input_paths("--data", args.data, args.split) if args.data else []
        inputs += [("--original", original)] if original else []
        refuse_collisions(plot_outputs(args.plot), inputs)
        check_writable(pathlib.Path(args.plot), "--plot", is_dir=True)
    loaded = _load(args.checkpoint, args)
    model = loaded.model
    _select(model, args.layers, args.ignore)
    rows = layer_rows(model, args.layers, args.ignore)
    summary: dict = {"checkpoint": str(args.checkpoint), "format": loaded.format}
    if args.data:
        x, y, _ = _load_data(args.data, args.split, args.samples, args.seed,
                             normalize=args.normalize)
        _check_fits(model, x, f"data {args.data}")
        if original is None and y is None:
            raise UsageError(f"--data {args.data} has no labels and no original model was found "
                             "to compare with: pass --original ORIGINAL")
        summary["samples"] = int(x.shape[0])
        if y is not None:
            summary["accuracy"] = _accuracy(model, x, y)
        if original is not None:
            reference = _load_original(original, args, recorded_arch)
            _check_fits(reference, x, f"data {args.data}")
            try:
                errors, output_error = layer_errors(reference, model, x, layers=args.layers,
                                                    ignore=args.ignore)
            except ValueError as err:
                raise UsageError(f"--original {original}: {err}") from err
            add_layer_errors(rows, errors)
            summary["original"] = str(original)
            summary["output_error"] = output_error
            if y is not None:
                summary["accuracy_original"] = _accuracy(reference, x, y)
    latency = _latency(args, model)
    plots = _stage_plots(args, rows)
    if plots:
        summary["plots"] = [str(p) for p in plots]
        commit(args)
    if args.fmt == "csv":
        print(format_csv(rows), end="")
    elif args.fmt == "json":
        print(render(rows, args.fmt, summary=dict(summary, **latency)))
    else:
        print(render(rows, args.fmt, summary=summary))
        if latency:
            from ..model.sparse import format_latency
            print(format_latency(latency["latency"]))
    return EXIT_OK


def _latency(args, model) -> dict:
    """``{"latency": nettrim.model.sparse.latency_report(...)}`` with --latency, else {}."""
    if not getattr(args, "latency", False):
        return {}
    if not args.data:
        raise UsageError("--latency needs --data: a batch of inputs gives the input shape")
    from ..model.sparse import latency_report
    x, _, _ = _load_data(args.data, getattr(args, "split", "train"), 8, args.seed,
                         normalize=getattr(args, "normalize", None))
    return {"latency": latency_report(model.cpu(), x[:8].cpu(),
                                      progress=not getattr(args, "quiet", False))}


# ---- evaluate -----------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    from ..model.surgery import count_nonzeros, count_parameters
    from ..report import layer_errors, layer_rows
    from ..tables import format_csv, format_json, format_table, totals

    original = _load(args.original, args).model
    pruned = _load(args.pruned, args).model
    x, y, _ = _load_data(args.data, args.split, args.samples, args.seed,
                         normalize=args.normalize)
    out_a = _check_fits(original, x, f"data {args.data}")
    out_b = _check_fits(pruned, x, f"data {args.data}")
    if out_a.shape != out_b.shape:
        raise UsageError(f"the models' outputs differ in shape: {tuple(out_a.shape)} vs "
                         f"{tuple(out_b.shape)}")
    try:
        errors, output_error = layer_errors(original, pruned, x)
    except ValueError as err:
        raise UsageError(str(err)) from err
    rows = []
    for role, path, model in (("original", args.original, original),
                              ("pruned", args.pruned, pruned)):
        layers = layer_rows(model)
        t = totals(layers)
        rows.append({
            "model": role, "checkpoint": str(path),
            "nonzeros": count_nonzeros(model), "params": count_parameters(model),
            "sparsity": t["sparsity"],
            "accuracy": _accuracy(model, x, y) if y is not None else None,
            "output_error": 0.0 if role == "original" else output_error,
        })
    columns = ["model", "nonzeros", "params", "sparsity", "accuracy", "output_error"]
    summary = {"samples": int(x.shape[0]), "layer_errors": errors}
    if args.fmt == "json":
        print(format_json({"models": rows, **summary}))
    elif args.fmt == "csv":
        print(format_csv(rows, columns), end="")
    else:
        print(format_table(rows, columns))
        print("sparsity: zero weights of the Linear/Conv2d layers; output_error: "
              "||f_pruned(x) - f_original(x)||_F / ||f_original(x)||_F on "
              f"{x.shape[0]} samples")
        print("per-layer relative error: " +
              ", ".join(f"{name} {value:.4f}" for name, value in errors.items()))
    return EXIT_OK


# ---- demo ---------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import torch

    from ..io import checkpoint as ckpt_io
    from ..io.datasets import data_root, load_mnist
    from ..models import lenet_300_100, train_classifier
    from ..prune import prune
    from ..tables import format_json, format_prune_table, totals

    for path, what in ((args.out, "--out"), (args.plot, "--plot")):
        if path:
            check_writable(pathlib.Path(path), what, is_dir=True)
    root = data_root(args.data_root)
    say(args, f"MNIST from {root} (downloaded with checksum verification if missing)")
    try:
        x_train, y_train = load_mnist(root, train=True)
        x_test, y_test = load_mnist(root, train=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load MNIST from {root}: {err}") from err
    x_train, y_train = _subset(x_train, y_train, args.train_samples, args.seed)
    x_test, y_test = _subset(x_test, y_test, args.test_samples, args.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = lenet_300_100()
    t0 = time.perf_counter()
    train_classifier(model, x_train, y_train, epochs=args.epochs, seed=args.seed,
                     progress=not args.quiet)
    train_s = time.perf_counter() - t0
    model.eval()
    before = _accuracy(model, x_test, y_test)
    calib, _ = _subset(x_train, y_train, args.samples, args.seed + 1)
    t0 = time.perf_counter()
    if args.epsilon is None and args.sparsity is None:
        args.sparsity = DEMO_SPARSITY
    goal = {"epsilon": args.epsilon} if args.epsilon is not None else {"sparsity": args.sparsity}
    result = prune(model, calib, **goal, mode="cascade", seed=args.seed,
                   progress=not args.quiet)
    prune_s = time.perf_counter() - t0
    after = _accuracy(result.model, x_test, y_test)
    rows = [r.as_dict() for r in result.report]
    print(f"LeNet-300-100 trained {args.epochs} epoch(s) on {x_train.shape[0]} images "
          f"({train_s:.1f} s); cascade Net-Trim, "
          + (f"epsilon {args.epsilon}" if args.epsilon is not None else
             f"sparsity {args.sparsity}") + f", {calib.shape[0]} "
          f"calibration images ({prune_s:.1f} s)")
    print(format_prune_table(result.report, result.output_error))
    print(f"test accuracy ({x_test.shape[0]} images): before {before:.2%}, after {after:.2%}")
    if args.out:
        out = pathlib.Path(args.out)
        for name, net in (("original.pt", model), ("pruned.pt", result.model)):
            args.outputs.write(out / name, ckpt_io.checkpoint_writer(net, format="state_dict"))
        document = {"command": "demo", "nettrim_version": version(), "argv": list(args.argv),
                    "input": {"path": str((out / "original.pt").resolve()), "format": "state_dict",
                              "arch": "nettrim.models:lenet_300_100"},
                    "options": {**_cli_options(args), "prune": result.options},
                    "layers": rows, "totals": totals(rows),
                    "output_error": result.output_error,
                    "test_accuracy_before": before, "test_accuracy_after": after}
        args.outputs.write(out / "pruned.report.json", lambda tmp: pathlib.Path(tmp).write_text(
            format_json(document) + "\n", encoding="utf-8"))
    plots = _stage_plots(args, rows)
    if args.out or plots:
        commit(args)
    if args.out:
        print(f"wrote {out / 'original.pt'}, {out / 'pruned.pt'} (state_dicts, --arch "
              f"nettrim.models:lenet_300_100) and {out / 'pruned.report.json'}")
    for path in plots:
        print(f"wrote {path}")
    return EXIT_OK


# ---- shared with the other command modules (public names: no module imports private ones) -----
sha256 = _sha256
load_model = _load
load_data = _load_data
check_fits = _check_fits
cli_options = _cli_options
show_warning = _show_warning
format_from_suffix = _format_from_suffix
