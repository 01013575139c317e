"""Net-Trim's solves as Ray tasks (issue 26): in process vs a local Ray with 1 and 2 workers,
and a paper model of the wall time on N workers.

Parallel-mode Net-Trim (``sparsity=0.9``, the default pipeline) on LeNet-300-100 (MNIST) and on
the ResNet of ``bench_archs.py`` (Fashion-MNIST, 256 calibration images, at most 3,000 rows per
layer), each run

* in process (``executor=None``, the default: the baseline of the speed-ups),
* in process through :class:`nettrim.InProcessExecutor` (the same tasks as on Ray, run one
  after another: the per-task seconds and bytes the paper model starts from),
* on a local Ray with 1 and with 2 worker CPUs (``RayExecutor(num_cpus=w)``; its start-up,
  workers warmed, is timed apart from the pruning).

Printed per run: wall seconds, speed-up over in process, tasks, object-store traffic (the
layers' arrays put once, task arguments, results), and whether the results are identical
(statuses, counts, largest weight difference against in process).

The paper model (:func:`simulate`) replays the in-process executor's tasks on W workers: each
layer is a chain of steps (one l1 solve, or one refit in blocks of neurons, whose tasks run
side by side), separated by the driver's own work between them (measured as the gaps of the
in-process run); a task takes its in-process seconds plus Ray's per-task overhead and its bytes
over the store's bandwidth (both measured here); layers run concurrently (parallel mode) in at
most 2 W driver threads, or one after another (cascade). Checked against the measured 1- and
2-worker runs, then used to project a 24-layer, 768-wide transformer at P = 131,072 rows on 8
and 64 workers (:func:`transformer_projection`).

    python benchmarks/bench_cluster.py [--quick] [--models lenet resnet] [--workers 1 2]
                                       [--samples 5000] [--out benchmarks/results/bench_cluster]

One torch thread in every process (the driver and each task). ``--quick``: 600 LeNet images,
the ResNet trained on 1,000 images, 400 rows per layer (a check that it runs, not a timing).
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import nettrim
from nettrim.executors import InProcessExecutor, RayExecutor, TaskBoard, TaskRunner
from nettrim.io.datasets import load_mnist
from nettrim.layer.tasks import NEURONS_PER_BLOCK
from nettrim.models import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, log, quiet_single_thread, save_results  # noqa: E402

SPARSITY = 0.9
#: Paper model of the transformer job: rows, width, blocks, and what a cluster is made of.
JOB = dict(rows=131_072, width=768, blocks=24, ffn=4)
WORKERS_PER_NODE = 8
#: Network bandwidth between nodes assumed by the projection (10 GbE), bytes per second.
NETWORK_BYTES_PER_S = 1.25e9
#: CPU time of the l1 solves split in blocks of neurons (``lagrangian_blocks=True``) over the
#: whole-layer solves, measured in process on LeNet-300-100 at 90% (2,000 images): 69.0 s vs
#: 49.9 s for the cascade run, 56.2 vs 42.6 parallel (the blocks also pay for the refits and
#: the driver; taken as the l1 tasks' factor here).
SPLIT_CPU = 1.35


# ---- the runs ---------------------------------------------------------------------------------
def lenet_job(args):
    model = pretrained("lenet_300_100", data_root=args.data_root)
    x, _ = load_mnist(args.data_root, train=True, download=False)
    gen = torch.Generator().manual_seed(0)
    calib = x[torch.randperm(x.shape[0], generator=gen)[:args.samples]]
    return model.eval(), calib, None


def resnet_job(args):
    import bench_archs

    ns = SimpleNamespace(quick=args.quick, train_images=None, dataset="fashion-mnist",
                         cache=args.cache)
    x_train, y_train = load_mnist(args.data_root, train=True, dataset="fashion-mnist",
                                  download=False)
    x_test, y_test = load_mnist(args.data_root, train=False, dataset="fashion-mnist",
                                download=False)
    model, _ = bench_archs.trained_model("resnet", ns, x_train, y_train, x_test[:500],
                                         y_test[:500])
    gen = torch.Generator().manual_seed(1)
    calib = x_train[torch.randperm(x_train.shape[0], generator=gen)[:256]]
    return model.eval(), calib, 400 if args.quick else 3000


JOBS = {"lenet": lenet_job, "resnet": resnet_job}


def prune_once(model, calib, max_samples, executor):
    """One parallel-mode run: wall seconds, the result, and the task board (or None)."""
    board = None if executor is None else TaskBoard()
    runner = None if executor is None else TaskRunner(executor, board)
    t0 = time.perf_counter()
    result = nettrim.prune(model, calib, sparsity=SPARSITY, mode="parallel",
                           max_samples=max_samples, executor=runner)
    wall = time.perf_counter() - t0
    if runner is not None:
        runner.close()
    return wall, result, board


def compare(reference, other) -> dict:
    """Statuses and counts equal? The largest weight difference and relative-error difference."""
    same = [(r.name, r.status, r.nonzeros_after) for r in reference.report] == \
        [(r.name, r.status, r.nonzeros_after) for r in other.report]
    sa, sb = reference.model.state_dict(), other.model.state_dict()
    dw = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    de = max(abs(a.relative_error - b.relative_error)
             for a, b in zip(reference.report, other.report))
    return dict(same_statuses_and_counts=same, max_weight_diff=dw, max_rel_error_diff=de)


def ray_costs(executor: RayExecutor, megabytes: int = 64) -> dict:
    """Ray's per-task overhead (median round trip of an empty task) and the object store's
    put bandwidth, on this cluster."""
    import numpy as np

    trips = []
    for _ in range(30):
        t0 = time.perf_counter()
        executor.run(_empty, None, [0])
        trips.append(time.perf_counter() - t0)
    block = np.ones(megabytes * 2 ** 20 // 8)
    t0 = time.perf_counter()
    ref = executor.put(block)
    executor.run(_touch, ref, [0])
    seconds = time.perf_counter() - t0
    return dict(task_overhead=float(np.median(trips)), put_bytes_per_s=block.nbytes / seconds)


def _empty(shared, item):
    return item


def _touch(shared, item):
    return float(shared[0])


# ---- the paper model --------------------------------------------------------------------------
def task_profile(board: TaskBoard, wall: float) -> dict:
    """The in-process executor's run as the model's input: per layer, its steps (tasks' seconds
    and bytes) and the driver's gaps before each step; ``fixed``: the rest of the wall time
    (capture, output measurement)."""
    layers: dict = {}
    for r in board.records:
        layers.setdefault(r["label"], {}).setdefault(r["step"], []).append(r)
    profile, previous_end, busy = {}, None, 0.0
    ordered = sorted(layers.items(), key=lambda kv: min(r["start"] for s in kv[1].values()
                                                        for r in s))
    first_start = None
    for label, steps in ordered:
        chain = []
        for step in sorted(steps):
            tasks = sorted(steps[step], key=lambda r: r["index"])
            start, end = min(r["start"] for r in tasks), max(r["end"] for r in tasks)
            first_start = start if first_start is None else first_start
            gap = 0.0 if previous_end is None else max(0.0, start - previous_end)
            chain.append(dict(kind=tasks[0]["kind"], gap=gap, step=step,
                              seconds=[r["seconds"] for r in tasks],
                              bytes=[r["bytes_in"] + r["bytes_out"] for r in tasks]))
            busy += gap + (end - start)
            previous_end = end
        profile[label] = chain
    fixed = max(0.0, wall - busy)
    return dict(layers=profile, fixed=fixed, shared_bytes=board.bytes_shared)


def simulate(profile: dict, workers: int, *, overhead: float, bytes_per_s: float,
             cascade: bool = False, transfer: float = 0.0) -> float:
    """Predicted wall seconds on ``workers`` (see the module docstring): list scheduling of the
    layers' step chains; ``transfer``: seconds before any task can start (data to the nodes)."""
    layers = list(profile["layers"].values())
    threads = 1 if cascade else min(len(layers), 2 * workers)
    free = [0.0] * workers                      # when each worker is next free
    heapq.heapify(free)
    t_layer = profile["fixed"] + transfer
    ready = [(t_layer, i, 0) for i in range(threads)]   # (time, layer, step index)
    waiting = list(range(threads, len(layers)))
    finish = t_layer
    heapq.heapify(ready)
    while ready:
        t, i, k = heapq.heappop(ready)
        step = layers[i][k]
        t += step["gap"]
        ends = []
        for seconds, size in sorted(zip(step["seconds"], step["bytes"]), reverse=True):
            start = max(t, heapq.heappop(free))
            end = start + seconds + overhead + size / bytes_per_s
            heapq.heappush(free, end)
            ends.append(end)
        done = max(ends) if ends else t
        finish = max(finish, done)
        if k + 1 < len(layers[i]):
            heapq.heappush(ready, (done, i, k + 1))
        elif waiting:   # this driver thread takes the next layer (cascade: the next in order)
            heapq.heappush(ready, (done, waiting.pop(0), 0))
    return finish


def cost_constants(profiles: dict) -> dict:
    """Seconds per unit of work of each task kind, ``seconds / (P N M)`` summed over the
    measured tasks (M: the task's neurons), for ReLU layers and linear ones apart."""
    totals: dict = {}
    for shape_of, profile in profiles:
        for label, chain in profile["layers"].items():
            P, N, M, relu = shape_of[label]
            for step in chain:
                blocks = len(step["seconds"])
                per = [M / blocks] * blocks if step["kind"] == "refit" else [M]
                key = (step["kind"], relu)
                s, w = totals.get(key, (0.0, 0.0))
                totals[key] = (s + sum(step["seconds"]), w + sum(P * N * m for m in per))
    return {key: s / w for key, (s, w) in totals.items() if w}


def transformer_projection(template: dict, constants: dict, costs: dict,
                           split: bool = False) -> dict:
    """The example job, projected: per block 4 projections (768 -> 768, linear programs), an MLP
    (768 -> 3072 ReLU, 3072 -> 768 linear), each layer's steps as the measured template of its
    kind (ReLU: LeNet's first layer; linear: its last; ``template[relu] = (chain, (P, N, M))``)
    with every task's seconds scaled to its own P N M by :func:`cost_constants`, its refits in
    blocks of NEURONS_PER_BLOCK, and the driver's gaps scaled by P N M. ``split``: the l1
    solves in blocks too (``lagrangian_blocks=True``), at :data:`SPLIT_CPU` times the CPU."""
    P, d = JOB["rows"], JOB["width"]
    shapes = [(d, d, False)] * 4 + [(d, JOB["ffn"] * d, True), (JOB["ffn"] * d, d, False)]
    layers, data = {}, 0.0
    for b in range(JOB["blocks"]):
        for j, (N, M, relu) in enumerate(shapes):
            chain = []
            steps, (P0, N0, M0) = template[relu]
            for step in steps:
                c = constants.get((step["kind"], relu)) or constants[(step["kind"], True)]
                if step["kind"] == "refit" or split:
                    blocks = math.ceil(M / NEURONS_PER_BLOCK)
                    more = SPLIT_CPU if step["kind"] != "refit" else 1.0
                    seconds = [more * c * P * N * (M / blocks)] * blocks
                    size = [4 * (P * 2 + N) * M / blocks] * blocks
                else:
                    seconds, size = [c * P * N * M], [4 * 2 * M * N]
                chain.append(dict(kind=step["kind"], gap=step["gap"] * P * N * M / (P0 * N0 * M0),
                                  seconds=seconds, bytes=size))
            layers[f"{b}.{j}"] = chain
            data += 4 * P * (N + M)          # X and Y of the layer, put once
    profile = dict(layers=layers, fixed=0.0)
    work = sum(sum(sum(s["seconds"]) for s in chain) for chain in layers.values())
    longest = max(sum(max(s["seconds"]) + s["gap"] for s in chain) for chain in layers.values())
    # an l1 task holds X and Y and about four more (P, M) iterates, and X^T X in float64
    memory = max(4 * P * (N + 5 * M) + 8 * N * N for N, M, _ in shapes)
    out = dict(job=dict(JOB), data_bytes=data, work_seconds=work, longest_layer_seconds=longest,
               memory_per_l1_task_bytes=memory, runs={})
    for workers in (1, 8, 64):
        nodes = max(1, workers // WORKERS_PER_NODE)
        # the head sends each layer's X and Y to every other node that works on it: in
        # parallel mode while the nodes compute, in cascade before each layer's tasks
        transfer = data * (nodes - 1) / NETWORK_BYTES_PER_S
        row = {}
        for mode in ("parallel", "cascade"):
            wall = simulate(profile, workers, overhead=costs["task_overhead"],
                            bytes_per_s=costs["put_bytes_per_s"], cascade=mode == "cascade")
            row[mode] = dict(compute=wall, transfer=transfer, wall=max(wall, transfer)
                             if mode == "parallel" else wall + transfer)
        out["runs"][workers] = row
    return out


# ---- driver -----------------------------------------------------------------------------------
def layer_shapes(result) -> dict:
    """``{layer: (rows, inputs, outputs, relu)}`` of a run."""
    return {r.name: (r.rows, r.shape[1] if len(r.shape) == 2 else int(math.prod(r.shape[1:])),
                     r.shape[0], r.program.startswith(("relu", "linear(relu")))
            for r in result.report}


def run_model(name, args, costs_box) -> dict:
    model, calib, max_samples = JOBS[name](args)
    log(f"{name}: in process")
    wall0, base, _ = prune_once(model, calib, max_samples, None)
    log(f"{name}: in process, {wall0:.1f} s; through the in-process executor")
    wall1, tasked, board = prune_once(model, calib, max_samples, InProcessExecutor())
    profile = task_profile(board, wall1)
    row = dict(model=name, rows={}, shapes=layer_shapes(base), profile=profile,
               in_process=dict(wall=wall0, layers=[(r.name, r.status, r.nonzeros_after,
                                                    r.relative_error) for r in base.report]),
               in_process_executor=dict(wall=wall1, **board.summary(),
                                        **compare(base, tasked)))
    for workers in args.workers:
        executor = RayExecutor(num_cpus=workers, threads=1)
        executor.start()
        try:
            if costs_box.get("costs") is None and workers == max(args.workers):
                costs_box["costs"] = ray_costs(executor)
            log(f"{name}: Ray with {workers} worker(s), up in {executor.start_seconds:.1f} s")
            wall, result, board_w = prune_once(model, calib, max_samples, executor)
        finally:
            executor.close()
        row["rows"][workers] = dict(wall=wall, start=executor.start_seconds,
                                    speedup=wall0 / wall, **board_w.summary(),
                                    **compare(base, result), records=board_w.records)
        log(f"{name}: Ray with {workers} worker(s), {wall:.1f} s ({wall0 / wall:.2f}x)")
    return row


def replayed(profile: dict, records: list) -> dict:
    """``profile`` with each task's seconds as a run measured them (its records), and the
    driver's gaps and fixed time scaled by that run's task seconds over the profile's: the model
    given the run's own CPU speed (the machine's load changes between runs)."""
    seconds = {(r["label"], r["step"], r["index"]): r["seconds"] for r in records}
    layers, before, after = {}, 0.0, 0.0
    for label, chain in profile["layers"].items():
        steps = []
        for step in chain:
            now = [seconds.get((label, step["step"], i), s)
                   for i, s in enumerate(step["seconds"])]
            before, after = before + sum(step["seconds"]), after + sum(now)
            steps.append(dict(step, seconds=now))
        layers[label] = steps
    ratio = after / before if before else 1.0
    for steps in layers.values():
        for step in steps:
            step["gap"] *= ratio
    return dict(profile, layers=layers, fixed=profile["fixed"] * ratio, ratio=ratio)


def predictions(row, costs) -> None:
    """The model's wall time for each Ray run: from the in-process executor's task seconds
    (``predicted``) and from the run's own (``replayed``: checks the scheduling part)."""
    for workers, measured in row["rows"].items():
        common = dict(overhead=costs["task_overhead"], bytes_per_s=costs["put_bytes_per_s"])
        measured["predicted"] = simulate(row["profile"], workers, **common)
        measured["prediction_error"] = measured["predicted"] / measured["wall"] - 1.0
        replay = replayed(row["profile"], measured.pop("records"))
        measured["replayed"] = simulate(replay, workers, **common)
        measured["replay_error"] = measured["replayed"] / measured["wall"] - 1.0
        measured["cpu_ratio"] = replay["ratio"]


def format_report(payload) -> list:
    lines = [f"bench_cluster on commit {payload['commit']} ({payload['date']}); parallel-mode "
             f"Net-Trim at sparsity {SPARSITY}; one torch thread per process; load before the "
             f"run: {payload['load']}", ""]
    costs = payload["ray_costs"]
    lines.append(f"Ray on this machine: {costs['task_overhead'] * 1e3:.1f} ms per empty task "
                 f"(round trip), object store put {costs['put_bytes_per_s'] / 1e9:.2f} GB/s")
    lines.append("model s: the paper model from the in-process executor's task seconds; replay s: "
                 "the same model given the run's own task seconds (the load changes between "
                 "runs); task s: seconds inside the tasks; same: statuses and counts equal to "
                 "in process; max|dW|, max|d err|: largest weight and relative-error difference")
    header = (f"{'model':8} {'run':22} {'wall s':>8} {'speed-up':>8} {'model s':>8} "
              f"{'err':>6} {'replay s':>8} {'err':>6} {'tasks':>6} {'task s':>7} "
              f"{'shared MB':>9} {'sent MB':>8} {'back MB':>8} {'same':>5} {'max|dW|':>9} "
              f"{'max|d err|':>10}")
    lines += ["", header, "-" * len(header)]
    for row in payload["models"]:
        ip, ex = row["in_process"], row["in_process_executor"]
        lines.append(f"{row['model']:8} {'in process':22} {ip['wall']:8.2f} {'1.00x':>8}")
        lines.append(f"{'':8} {'in-process executor':22} {ex['wall']:8.2f} "
                     f"{ip['wall'] / ex['wall']:7.2f}x {'':>8} {'':>6} {'':>8} {'':>6} "
                     f"{ex['tasks']:6d} "
                     f"{ex['task_seconds']:7.1f} "
                     f"{ex['bytes_shared'] / 1e6:9.1f} {ex['bytes_sent'] / 1e6:8.1f} "
                     f"{ex['bytes_returned'] / 1e6:8.1f} {str(ex['same_statuses_and_counts']):>5} "
                     f"{ex['max_weight_diff']:9.2g} {ex['max_rel_error_diff']:10.2g}")
        for workers, r in row["rows"].items():
            lines.append(
                f"{'':8} {f'Ray, {workers} worker(s)':22} {r['wall']:8.2f} {r['speedup']:7.2f}x "
                f"{r['predicted']:8.2f} {100 * r['prediction_error']:+5.0f}% "
                f"{r['replayed']:8.2f} {100 * r['replay_error']:+5.0f}% {r['tasks']:6d} "
                f"{r['task_seconds']:7.1f} "
                f"{r['bytes_shared'] / 1e6:9.1f} {r['bytes_sent'] / 1e6:8.1f} "
                f"{r['bytes_returned'] / 1e6:8.1f} {str(r['same_statuses_and_counts']):>5} "
                f"{r['max_weight_diff']:9.2g} {r['max_rel_error_diff']:10.2g}")
        starts = ", ".join(f"{w}: {r['start']:.1f} s" for w, r in row["rows"].items())
        lines.append(f"{'':8} (Ray start-up with warmed workers, not in the wall times: {starts})")
    tp = payload["transformer"]
    job = tp["job"]
    lines += ["", f"Projection: {job['blocks']} blocks x (4 projections {job['width']}->"
              f"{job['width']}, MLP {job['width']}->{job['ffn'] * job['width']}->{job['width']}),"
              f" P = {job['rows']:,} rows, parallel and cascade; {WORKERS_PER_NODE} workers per "
              f"node, {NETWORK_BYTES_PER_S / 1e9:.2f} GB/s between nodes",
              f"  task work {tp['work_seconds'] / 3600:.1f} CPU-h, the longest layer's chain "
              f"{tp['longest_layer_seconds'] / 60:.1f} min, the layers' X and Y "
              f"{tp['data_bytes'] / 1e9:.0f} GB (put once), an l1 task of the widest layer "
              f"needs about {tp['memory_per_l1_task_bytes'] / 1e9:.1f} GB"]
    split = payload["transformer_split"]
    lines.append(f"  {'':12} {'l1 solves whole (default)':>28}   {'lagrangian_blocks=True':>28}")
    lines.append(f"  {'workers':>12} {'parallel h':>13} {'cascade h':>13}   {'parallel h':>13} "
                 f"{'cascade h':>13}   data to the nodes")
    for workers, row in tp["runs"].items():
        other = split["runs"][workers]
        lines.append(f"  {workers:12d} {row['parallel']['wall'] / 3600:13.2f} "
                     f"{row['cascade']['wall'] / 3600:13.2f}   "
                     f"{other['parallel']['wall'] / 3600:13.2f} "
                     f"{other['cascade']['wall'] / 3600:13.2f}   "
                     f"{row['parallel']['transfer'] / 60:.1f} min")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small run (checks, not timings)")
    p.add_argument("--models", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--samples", type=int, default=None,
                   help="LeNet calibration images (default 5000; --quick: 600)")
    p.add_argument("--data-root", default=os.environ.get("NETTRIM_DATA", "../shared/data"))
    p.add_argument("--cache", default=str(HERE / "results" / "cache_archs"),
                   help="trained ResNet of bench_archs (gitignored)")
    p.add_argument("--out", default=None,
                   help="prefix of the .json and .txt written (default "
                        "benchmarks/results/bench_cluster; --quick: none unless given)")
    args = p.parse_args(argv)
    args.samples = args.samples or (600 if args.quick else 5000)
    if args.out is None and not args.quick:
        args.out = str(HERE / "results" / "bench_cluster")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet_single_thread()
    t0 = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    costs_box: dict = {}
    rows = [run_model(name, args, costs_box) for name in args.models]
    costs = costs_box["costs"]
    for row in rows:
        predictions(row, costs)
    lenet = next((r for r in rows if r["model"] == "lenet"), rows[0])
    names = list(lenet["profile"]["layers"])
    shape = lambda n: lenet["shapes"][n][:3]  # noqa: E731
    template = {True: (lenet["profile"]["layers"][names[0]], shape(names[0])),
                False: (lenet["profile"]["layers"][names[-1]], shape(names[-1]))}
    constants = cost_constants([(r["shapes"], r["profile"]) for r in rows])
    payload = dict(commit=_commit(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   load=" ".join(f"{x:.2f}" for x in load), quick=args.quick,
                   samples=args.samples, ray_costs=costs, models=rows,
                   cost_constants={f"{k[0]}/{'relu' if k[1] else 'linear'}": v
                                   for k, v in constants.items()},
                   transformer=transformer_projection(template, constants, costs),
                   transformer_split=transformer_projection(template, constants, costs,
                                                            split=True),
                   seconds=time.perf_counter() - t0)
    lines = format_report(payload)
    lines.append(f"\n(benchmark wall time {payload['seconds']:.0f} s)")
    print("\n".join(lines))
    if args.out:
        for row in payload["models"]:   # keys of JSON objects are strings
            row["rows"] = {str(k): v for k, v in row["rows"].items()}
        for key in ("transformer", "transformer_split"):
            payload[key]["runs"] = {str(k): v for k, v in payload[key]["runs"].items()}
        save_results(args.out, payload, lines)
    return payload


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
