"""``nettrim train-prune``: prune a checkpoint while training it on labelled data.

Builds the options of :func:`nettrim.train_prune` from the command line and writes what it
returns: the pruned model (atomically, in the input's format unless ``--format``), a JSON
report (the history, the options, the input's SHA-256) and a PNG of accuracy and sparsity per
epoch. A training state file beside the output is written atomically after every epoch; an
interrupted run (Ctrl-C, SIGTERM) leaves it, and the same command resumes from it. It is
removed once the outputs are written.

Imports torch and the library only when the command runs.
"""

from __future__ import annotations

import pathlib
import sys
import time
import warnings

from .commands import (check_fits, cli_options, format_from_suffix, load_data, load_model,
                       report_head, sha256, show_warning)
from .common import EXIT_OK, UsageError, report_path_for, say
from .outputs import check_writable, commit, input_paths, refuse_collisions

__all__ = ["cmd_train_prune", "parse_sparsity", "state_path_for", "plot_path_for"]


def state_path_for(out: pathlib.Path) -> pathlib.Path:
    """Default training state of an output: OUT's stem + ``.train-state.pt``, beside it."""
    return out.with_name(out.stem + ".train-state.pt")


def plot_path_for(out: pathlib.Path) -> pathlib.Path:
    """The training plot of an output: OUT's stem + ``.training.png``, beside it."""
    return out.with_name(out.stem + ".training.png")


def parse_sparsity(values: list) -> object:
    """``--sparsity S`` (every layer) or ``--sparsity NAME=S ...`` (a dict)."""
    def fraction(text: str, what: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"--sparsity {what}: expected a number, got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise UsageError(f"--sparsity {what}: expected a fraction in [0, 1), got {value}")
        return value

    if len(values) == 1 and "=" not in values[0]:
        return fraction(values[0], "S")
    out = {}
    for item in values:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--sparsity: expected one fraction S or NAME=S pairs, got {item!r}")
        out[name] = fraction(text, name)
    return out


def _method_options(args) -> dict:
    options = {}
    for key in ("rounds", "lr_factor", "pruning_fraction", "frequency", "dns_gamma",
                "calibration_samples"):
        value = getattr(args, key, None)
        if value is not None:
            options["gamma" if key == "dns_gamma" else key] = value
    if args.max_rows is not None:
        options["prune_options"] = {"max_samples": args.max_rows}
    return options


def cmd_train_prune(args) -> int:
    from ..io import checkpoint as ckpt_io
    from ..plots import plot_training
    from ..tables import format_json
    from ..train_prune import train_prune

    start = time.perf_counter()
    source = pathlib.Path(args.checkpoint)
    out = pathlib.Path(args.out)
    report_file = pathlib.Path(args.report) if args.report else report_path_for(out)
    state_file = pathlib.Path(args.state) if args.state else state_path_for(out)
    plot_file = plot_path_for(out)
    ckpt_io.detect_format(source)
    paths = {"--out": out, "--report": report_file, "--state": state_file, "plot": plot_file}
    inputs = [("checkpoint", source), *input_paths("--data", args.data)]
    if args.eval_data:
        inputs += input_paths("--eval-data", args.eval_data, split="test")
    refuse_collisions(list(paths.items()), inputs, overwrite=args.overwrite)
    for name, p in paths.items():
        check_writable(p, name)
    sparsity = parse_sparsity(args.sparsity)
    source_hash = sha256(source)
    loaded = load_model(args.checkpoint, args)
    out_format = args.out_format or format_from_suffix(out) or loaded.format
    if out_format == "export":
        raise UsageError("train-prune writes state_dict, module or safetensors checkpoints; "
                         "--format export (or an OUT ending in .pt2) is not supported here")
    x, y, n_available = load_data(args.data, "train", args.samples, args.seed)
    if y is None:
        raise UsageError(f"--data {args.data} has no labels: training needs (x, y) "
                         "(.npz with y, .pt with {x, y}, or an idx directory)")
    eval_path = args.eval_data or (args.data if pathlib.Path(args.data).is_dir() else None)
    eval_data = None
    if eval_path is not None:
        xe, ye, _ = load_data(eval_path, "test", args.eval_samples, args.seed)
        if ye is None:
            raise UsageError(f"--eval-data {eval_path} has no labels: accuracy needs them")
        eval_data = (xe, ye)
    model = loaded.model
    check_fits(model, x, f"data {args.data}")
    resuming = state_file.is_file() and not args.restart
    if resuming:
        say(args, f"resuming from {state_file} (--restart starts over)")

    def report_epoch(entry: dict) -> None:
        acc = "" if entry["accuracy"] is None else f", accuracy {entry['accuracy']:.2%}"
        say(args, f"epoch {entry['epoch']}/{args.epochs}: loss {entry['loss']:.4f}{acc}, "
                  f"sparsity {entry['sparsity']:.2%} ({entry['compression']:.1f}x), "
                  f"{entry['seconds']:.0f} s")

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            result = train_prune(
                model, (x, y), args.method, sparsity, args.epochs, eval_data=eval_data,
                optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                weight_decay=args.weight_decay, lr_policy=args.lr_policy,
                batch_size=args.batch_size, seed=args.seed, layers=args.layers,
                ignore=args.ignore, options=_method_options(args), checkpoint=state_file,
                resume=not args.restart, progress=not args.quiet, inplace=True,
                on_epoch=report_epoch)
    except KeyboardInterrupt:
        if state_file.is_file():
            print(f"nettrim: the training state is in {state_file}; run the same command "
                  "again to resume", file=sys.stderr, flush=True)
        raise
    except (ValueError, TypeError) as err:
        raise UsageError(f"train-prune rejected the input: {err}") from err
    pruned = result.model.cpu()
    # every output is staged, then all are renamed into place together (nettrim.cli.outputs)
    staged = args.outputs.write(out, ckpt_io.checkpoint_writer(pruned, format=out_format))
    final = result.history[-1] if result.history else {}
    document = {
        **report_head("train-prune", args, source, loaded, source_hash, (out, staged),
                      out_format),
        "data": {"path": str(pathlib.Path(args.data).resolve()), "samples": int(x.shape[0]),
                 "available": int(n_available), "eval": None if eval_path is None else
                 str(pathlib.Path(eval_path).resolve())},
        "options": {**cli_options(args), "train_prune": result.options},
        "resumed_from_epoch": result.resumed_from,
        "sparsity": result.sparsity,
        "compression": result.compression,
        "accuracy": final.get("accuracy"),
        "history": result.history,
        "rounds": result.rounds,
        "plot": str(plot_file.resolve()),
        "seconds": time.perf_counter() - start,
    }
    args.outputs.write(report_file, lambda tmp: pathlib.Path(tmp).write_text(
        format_json(document) + "\n", encoding="utf-8"))
    if result.history:
        args.outputs.write(plot_file, lambda tmp: plot_training(
            result.history, tmp, title=f"{args.method}: {source.name} -> {out.name}"))
    commit(args)
    state_file.unlink(missing_ok=True)
    lines = [result.table(),
             f"final sparsity {1 - 1 / result.compression:.2%} ({result.compression:.1f}x)"
             if result.history else "nothing to train (the run was already complete)",
             f"wrote {out} ({out_format}), {report_file} and {plot_file}"]
    say(args, *lines)
    return EXIT_OK
