"""Language-model pruning: perplexity of a small OPT pruned layer by layer, measured in one run.

Model and text (:mod:`lm_model`): a byte-level ``transformers.OPTForCausalLM`` (4 decoder
layers, width 256, FFN 1,024 with ReLU) trained on CPU on the standard library's ``.py`` files,
perplexity on held-out files. The trained weights are cached in ``~/.cache/nettrim``.

Protocol (SparseGPT's, scaled down): ``--calib`` calibration windows of ``--calib-len`` bytes from
the training text (the same for every method); every linear layer of the decoder blocks (q, k, v,
out_proj, fc1, fc2: 24 layers) pruned, block by block, each layer from the inputs of the
already-pruned layers before it (SparseGPT's sequential loop; Net-Trim in cascade mode), at each
sparsity of ``--sparsities`` (fractions, and N:M patterns like ``2:4``). Embeddings and the tied
LM head stay dense. Methods: magnitude, Wanda, SparseGPT, ALPS (:mod:`nettrim.baselines`) and
Net-Trim (``nettrim.prune(..., mode="cascade")``, default options). Reported per cell: held-out
perplexity (``--eval`` windows of 128 bytes), seconds (the whole model, capture included), and
for Net-Trim the program kept on the four fc1 layers (ReLU program / linear ones).

    python benchmarks/bench_lm.py [--sparsities 0.5 0.6 0.7 0.8 2:4] [--methods ...]
                                  [--calib 128] [--calib-len 64] [--eval 128] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_model  # noqa: E402
from common import log, quiet_single_thread, save_results  # noqa: E402

import nettrim  # noqa: E402
from nettrim.baselines import prune_baseline  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt", "alps", "nettrim")
SPARSITIES = ("0.5", "0.6", "0.7", "0.8", "2:4")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsities", nargs="+", default=list(SPARSITIES),
                   help="fractions of zero weights per layer, or N:M patterns (n zeros in m)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--calib", type=int, default=128, help="calibration sequences")
    p.add_argument("--calib-len", type=int, default=64, help="bytes per calibration sequence")
    p.add_argument("--eval", type=int, default=128, help="held-out windows of 128 bytes")
    p.add_argument("--out", default="benchmarks/results/bench_lm")
    return p.parse_args(argv)


def block_layers(model) -> list[str]:
    """The linear layers of the decoder blocks, in model order."""
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n]


def run_method(model, method, sparsity, calib, layers):
    """(pruned model, seconds, fc1 programs, achieved sparsity, per-layer rows) of one cell;
    the rows (Net-Trim only) give each layer's seconds, program and status."""
    nm = ":" in sparsity
    t0 = time.perf_counter()
    rows = []
    if method == "nettrim":
        result = nettrim.prune(model, calib, sparsity=sparsity if nm else float(sparsity),
                               mode="cascade", layers=layers)
        programs = [r.program for r in result.report if r.name.endswith(".fc1")]
        rows = [dict(name=r.name, seconds=r.seconds, program=r.program, status=str(r.status),
                     iterations=r.iterations) for r in result.report]
    else:
        options = {"nm": sparsity} if nm else {}
        result = prune_baseline(model, calib, method, None if nm else float(sparsity),
                                layers=layers, method_options=options)
        programs = []
    seconds = time.perf_counter() - t0
    zeros = sum(int((result.model.get_submodule(n).weight == 0).sum()) for n in layers)
    total = sum(result.model.get_submodule(n).weight.numel() for n in layers)
    return result.model, seconds, programs, zeros / total, rows


def main(argv=None):
    args = parse_args(argv)
    quiet_single_thread()
    warnings.simplefilter("ignore", nettrim.GraphWarning)
    warnings.simplefilter("ignore", nettrim.CalibrationWarning)
    train_text, held_text = lm_model.corpus()
    model, train_log = lm_model.trained_model(train_text)
    calib = lm_model.windows(train_text, args.calib, args.calib_len, seed=1)
    held = lm_model.held_out_windows(held_text, args.eval, lm_model.SEQ_LEN)
    layers = block_layers(model)
    dense = lm_model.perplexity(model, held)
    log(f"dense perplexity {dense:.4f} ({len(layers)} layers pruned per cell)")
    cells = {}
    for sparsity in args.sparsities:
        for method in args.methods:
            pruned, seconds, programs, achieved, rows = run_method(model, method, sparsity,
                                                                   calib, layers)
            ppl = lm_model.perplexity(pruned, held)
            relu = sum("linear" not in p for p in programs)
            cells[f"{method}@{sparsity}"] = dict(
                method=method, sparsity=sparsity, perplexity=ppl, seconds=seconds,
                achieved_sparsity=achieved, fc1_programs=programs, fc1_relu_kept=relu,
                layers=rows)
            log(f"{sparsity:>4} {method:>9}: perplexity {ppl:.4f}, {seconds:.1f} s, "
                f"sparsity {achieved:.4f}" + (f", fc1 ReLU program kept {relu}/{len(programs)}"
                                              if programs else ""))
    lines = report_lines(args, dense, cells, train_log)
    print("\n".join(lines))
    payload = dict(dense_perplexity=dense, cells=cells, train=train_log,
                   settings=dict(vars(args), config=lm_model.CONFIG, train_settings=lm_model.TRAIN,
                                 layers=layers, torch=torch.__version__))
    save_results(args.out, payload, lines)


def report_lines(args, dense, cells, train_log):
    methods, sparsities = args.methods, args.sparsities
    lines = [f"bench_lm: byte-level OPT (4 x 256, FFN 1024, ReLU), trained {train_log['steps']} "
             f"steps ({train_log['tokens']} tokens, {train_log['cpu_seconds']:.0f} CPU-s); "
             f"{args.calib} calibration sequences x {args.calib_len} bytes; held-out perplexity "
             f"on {args.eval} x {lm_model.SEQ_LEN} bytes; dense perplexity {dense:.4f}", "",
             "perplexity (lower is better)",
             "sparsity " + "".join(f"{m:>11}" for m in methods)]
    for s in sparsities:
        lines.append(f"{s:>8} " + "".join(
            f"{cells[f'{m}@{s}']['perplexity']:>11.4f}" if f"{m}@{s}" in cells else f"{'-':>11}"
            for m in methods))
    lines += ["", "seconds (whole model: capture, solves, write-back)",
              "sparsity " + "".join(f"{m:>11}" for m in methods)]
    for s in sparsities:
        lines.append(f"{s:>8} " + "".join(
            f"{cells[f'{m}@{s}']['seconds']:>11.1f}" if f"{m}@{s}" in cells else f"{'-':>11}"
            for m in methods))
    if "nettrim" in methods:
        lines += ["", "Net-Trim's program on the fc1 layers (ReLU program kept / fc1 layers): " +
                  ", ".join(f"{s}: {cells[f'nettrim@{s}']['fc1_relu_kept']}/"
                            f"{len(cells[f'nettrim@{s}']['fc1_programs'])}"
                            for s in sparsities)]
        for s in sparsities:   # where Net-Trim's time goes: seconds per kind of layer
            by_kind: dict = {}
            for row in cells[f"nettrim@{s}"].get("layers", []):
                kind = row["name"].rsplit(".", 1)[-1]
                by_kind[kind] = by_kind.get(kind, 0.0) + row["seconds"]
            if by_kind:
                lines.append(f"Net-Trim seconds per layer kind at {s} (all blocks): " + ", ".join(
                    f"{k} {v:.0f}" for k, v in by_kind.items()))
    lines += [""] + targets(methods, sparsities, dense, cells)
    return lines


def targets(methods, sparsities, dense, cells):
    """The issue's targets, each met / missed with the measured numbers."""
    out = ["targets (this run):"]
    if "nettrim" not in methods:
        return out + ["  (Net-Trim not run)"]
    for s in ("0.6", "0.7", "0.8"):
        if s not in sparsities:
            continue
        ppl = {m: cells[f"{m}@{s}"]["perplexity"] for m in methods}
        best = min(ppl, key=ppl.get)
        out.append(f"  lowest perplexity at {s}: {best} ({ppl[best]:.4f}); Net-Trim "
                   f"{ppl['nettrim']:.4f}: {'met' if best == 'nettrim' else 'missed'}")
    if "0.7" in sparsities and "alps" in methods:
        ours = cells["nettrim@0.7"]["perplexity"] - dense
        theirs = cells["alps@0.7"]["perplexity"] - dense
        ratio = ours / theirs if theirs > 0 else float("inf")
        out.append(f"  70%: Net-Trim's increase over dense {ours:.4f} vs ALPS's {theirs:.4f}: "
                   f"{ratio:.2f}x (target <= 0.7x): {'met' if ratio <= 0.7 else 'missed'}")
    if "sparsegpt" in methods:
        ours = sum(cells[f"nettrim@{s}"]["seconds"] for s in sparsities)
        theirs = sum(cells[f"sparsegpt@{s}"]["seconds"] for s in sparsities)
        ratio = ours / theirs
        out.append(f"  whole-model time, all sparsities: Net-Trim {ours:.0f} s vs SparseGPT "
                   f"{theirs:.0f} s: {ratio:.1f}x (target <= 20x): "
                   f"{'met' if ratio <= 20 else 'missed'}")
    return out


if __name__ == "__main__":
    main()
