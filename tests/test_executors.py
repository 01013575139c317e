"""Executors (issue 26): where the solves run, in process or as Ray tasks.

The first part needs no Ray: the default never imports it, the refit's neuron blocks equal the
whole-layer refit, an in-process executor (and a threaded one) gives the default's results, a
lost task is reported, bad arguments are refused. The second part starts one local Ray with 2
CPUs for the module (skipped where Ray is not installed): the same results on Ray, a worker
killed mid-solve (retried; lost for good: the layer fails with the reason, no hang), a timeout,
the CLI's ``--ray`` on a running cluster, and Ctrl-C leaving no process behind.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import nettrim
from nettrim.executors import (InProcessExecutor, TaskBoard, TaskFailed, TaskRunner,
                               ray_available)
from nettrim.layer import tasks
from solvers import NetTrimProblem, refit

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_RAY = "Ray is not installed (pip install 'nettrim[ray]'): the Ray executor's tests need it"


#: ``--arch arch:build`` of the CLI tests: :func:`mlp` of the given sizes and seed.
ARCH = """
import torch
from torch import nn


def build():
    torch.manual_seed({seed})
    sizes = {sizes}
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers).eval()
"""


def mlp(seed=0, sizes=(24, 40, 20, 5)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers).eval()


def calibration(n=300, width=24, seed=1):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def same_results(a, b, atol=1e-5):
    """Same layers, statuses and counts; weights equal to the solver's tolerance."""
    assert [(r.name, r.status, r.nonzeros_after) for r in a.report] == \
        [(r.name, r.status, r.nonzeros_after) for r in b.report]
    for ra, rb in zip(a.report, b.report):
        assert ra.relative_error == pytest.approx(rb.relative_error, rel=1e-4, abs=atol)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=atol, rtol=0), key


def process_table() -> dict:
    """``{pid: (ppid, state, start time)}`` from /proc."""
    rows = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            rows[int(entry)] = (int(fields[1]), fields[0], fields[19])
    return rows


def descendants(root: int) -> dict:
    table = process_table()
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, row in table.items() if row[0] in frontier} - set(found)
        found.update({pid: table[pid] for pid in frontier})
    return found


def still_running(processes: dict) -> list:
    now = process_table()
    return [pid for pid, (_, _, start) in processes.items()
            if pid in now and now[pid][2] == start and now[pid][1] != "Z"]


# ---- without Ray ------------------------------------------------------------------------------
def test_default_never_imports_ray():
    code = ("import sys, torch, nettrim\n"
            "torch.manual_seed(0)\n"
            "m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
            "nettrim.prune(m, torch.randn(60, 6), sparsity=0.5)\n"
            "nettrim.prune(m, torch.randn(60, 6), sparsity=0.5, executor=nettrim.InProcessExecutor())\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.stdout.split()[-1] == "False"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_in_neuron_blocks_is_the_layers_refit(seed):
    """The refit splits into independent per-neuron QPs: blocks of neurons (with V and S
    sliced alike) give the whole-layer refit's weights and status."""
    g = torch.Generator().manual_seed(seed)
    P, N, M = 200, 12, 3 * tasks.NEURONS_PER_BLOCK + 5
    X = torch.randn(P, N, generator=g, dtype=torch.float64)
    W = torch.randn(M, N, generator=g, dtype=torch.float64)
    S = 0.1 * torch.randn(P, M, generator=g, dtype=torch.float64)
    support = torch.rand(M, N, generator=g) < 0.5
    Y = torch.relu(X @ W.T + S)
    V = X @ (W * support).T + S + 0.05   # W * support is feasible (a cascade's bound)
    problem = NetTrimProblem(X, Y, 0.0, V=V, S=S)
    whole = refit(problem, support, W0=W * support)
    with TaskRunner(InProcessExecutor()) as runner:
        blocks = tasks.refit(runner, problem, support, W0=W * support)
        assert runner.board.summary()["tasks"] == len(tasks.neuron_blocks(M)) == 4
        assert runner.board.summary()["bytes_shared"] == 3 * P * M * 8 + P * N * 8
    assert blocks.status == whole.status
    assert torch.allclose(torch.as_tensor(blocks.W), torch.as_tensor(whole.W), atol=1e-7)
    assert blocks.residual == pytest.approx(whole.residual, rel=1e-6)
    assert blocks.violation <= 1e-3 * float(Y.abs().max())


def test_neuron_blocks_cover_every_neuron_once():
    for M in (1, 31, 32, 33, 300, 1000):
        blocks = tasks.neuron_blocks(M)
        assert blocks[0][0] == 0 and blocks[-1][1] == M
        assert all(a < b <= a + tasks.NEURONS_PER_BLOCK for a, b in blocks)
        assert all(b == c for (_, b), (c, _) in zip(blocks[:-1], blocks[1:]))


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.8, mode="parallel"),
                                    dict(sparsity=0.8, mode="cascade"),
                                    dict(epsilon=0.1, mode="cascade"),
                                    dict(sparsity=0.85, scope="global")])
def test_in_process_executor_gives_the_default_results(kwargs):
    model, x = mlp(), calibration()
    plain = nettrim.prune(model, x, **kwargs)
    board_run = nettrim.prune(model, x, executor=InProcessExecutor(), **kwargs)
    same_results(plain, board_run)
    assert board_run.options["executor"] == "in process"
    assert board_run.options["tasks"]["tasks"] > 0
    assert "executor" not in plain.options


def lagrangian_tasks(model, x, mode, split):
    """A run and the number of its Lagrangian tasks."""
    board = TaskBoard()
    with TaskRunner(InProcessExecutor(lagrangian_blocks=split), board) as runner:
        run = nettrim.prune(model, x, sparsity=0.8, mode=mode, executor=runner)
    return run, sum(r["kind"] == "lagrangian" for r in board.records)


def test_lagrangian_in_blocks_keeps_statuses_and_counts():
    """``lagrangian_blocks=True``: each block of neurons steers its own lam to its share of the
    count (not exact); the layers still land on their counts with the same statuses, and the
    errors stay close (measured on LeNet-300-100 at 90%, 2,000 images: within 0.5%)."""
    model, x = mlp(sizes=(24, 80, 40, 5)), calibration()
    for mode in ("parallel", "cascade"):
        plain = nettrim.prune(model, x, sparsity=0.8, mode=mode)
        whole, n_whole = lagrangian_tasks(model, x, mode, False)
        blocks, n_blocks = lagrangian_tasks(model, x, mode, True)
        same_results(plain, whole)
        assert n_blocks > n_whole   # the 80- and 40-neuron layers' solves split in 3 and 2
        assert [(r.status, r.nonzeros_after) for r in plain.report] == \
            [(r.status, r.nonzeros_after) for r in blocks.report]
        for a, b in zip(plain.report, blocks.report):
            assert b.relative_error == pytest.approx(a.relative_error, rel=0.1), (mode, a.name)


class Threads:
    """An executor of the plain protocol: ``map`` (a thread pool's) and ``workers``."""

    def __init__(self, workers=2):
        self.workers = workers
        self.pool = concurrent.futures.ThreadPoolExecutor(workers)
        self.seen: set = set()

    def map(self, fn, items):
        def call(item):
            self.seen.add(threading.get_ident())
            return fn(item)
        return self.pool.map(call, items)


def test_any_object_with_map_and_layers_solved_concurrently():
    model, x = mlp(), calibration()
    plain = nettrim.prune(model, x, sparsity=0.8)
    threads = Threads()
    run = nettrim.prune(model, x, sparsity=0.8, executor=threads)
    same_results(plain, run)
    assert len(threads.seen) >= 1 and run.options["tasks"]["tasks"] > 3


class LosesLayer:
    """Runs tasks in process, except that every task of the layer with ``inputs`` inputs is
    lost (as Ray reports a worker lost for good)."""

    workers = 1

    def __init__(self, inputs):
        self.inputs = inputs

    def map(self, fn, items):
        for item in items:
            payload = fn.args[1] if hasattr(fn, "args") else None
            if payload is not None and payload["X"].shape[1] in (self.inputs, self.inputs + 1):
                raise TaskFailed("its worker died (killed or out of memory) and 2 retries did "
                                 "not bring it back (WorkerCrashedError)")
            yield fn(item)


def test_a_lost_layer_is_reported_failed_and_left_as_it_was():
    model, x = mlp(), calibration()
    with pytest.warns(nettrim.PruningWarning, match="layer '2': its solves could not be run"):
        run = nettrim.prune(model, x, sparsity=0.8, executor=LosesLayer(40))
    rows = {r.name: r for r in run.report}
    assert rows["2"].status == "FAILED" and "worker died" in rows["2"].note
    assert torch.equal(run.model[2].weight, model[2].weight)       # not written half
    assert rows["0"].status == rows["4"].status == "OPTIMAL_INACCURATE"
    assert rows["0"].nonzeros_after == round(0.2 * 24 * 40)
    with pytest.raises(nettrim.PruningError, match="layer '2'.*worker died"):
        nettrim.prune(model, x, sparsity=0.8, executor=LosesLayer(40), strict=True)


def test_task_board_counts_every_task():
    model, x = mlp(), calibration()
    board = TaskBoard(progress=True)
    with TaskRunner(InProcessExecutor(), board, "layer") as runner:
        nettrim.prune_layer(x, torch.relu(model[0](x)).detach(), sparsity=0.8,
                            W0=model[0].weight.detach(), executor=runner)
        assert board.sent_count == board.done_count == len(board.records) > 0
        assert board.bar.total == board.sent_count   # the bar (off without a terminal)
    summary = board.summary()
    assert summary["bytes_shared"] >= x.numel() * 4 and summary["bytes_returned"] > 0
    assert {r["kind"] for r in board.records} >= {"lagrangian", "refit"}
    board.close()


def test_executor_arguments_are_checked():
    model, x = mlp(), calibration()
    with pytest.raises(ValueError, match="executor must be None, one of"):
        nettrim.prune(model, x, sparsity=0.5, executor="spark")
    with pytest.raises(TypeError, match="no map method"):
        nettrim.prune(model, x, sparsity=0.5, executor=object())
    with pytest.raises(ValueError, match="structured=True"):
        nettrim.prune(model, x, sparsity=0.5, structured=True, executor=InProcessExecutor())
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        nettrim.prune(model, x, sparsity=0.5, device="cuda", executor=InProcessExecutor())
    with pytest.raises(ValueError, match="max_retries must be an integer"):
        nettrim.RayExecutor(max_retries=-1)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        nettrim.RayExecutor(timeout=0)


def test_cli_ray_without_ray_is_a_usage_error(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = mlp()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    np.savez(tmp_path / "x.npz", x=calibration(60).numpy())
    (tmp_path / "arch.py").write_text(ARCH.format(sizes=(24, 40, 20, 5), seed=0))
    monkeypatch.setattr("nettrim.executors.ray_available", lambda: False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "arch", raising=False)
    from nettrim.cli import main

    code = main(["prune", str(tmp_path / "m.pt"), "--arch", "arch:build", "--data",
                 str(tmp_path / "x.npz"), "--out", str(tmp_path / "out.pt"), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "--ray needs Ray: pip install 'nettrim[ray]'" in err
    assert "Traceback" not in err and not (tmp_path / "out.pt").exists()


# ---- on Ray -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """One local Ray with 2 CPUs for the module (its start-up is seconds), shut down at the end
    with every process it started."""
    if not ray_available():
        pytest.skip(NO_RAY)
    import ray

    before = set(descendants(os.getpid()))
    executor = nettrim.RayExecutor(num_cpus=2, max_retries=1, timeout=120)
    executor.start()
    # this module's task functions travel by value (the workers do not import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = {pid: row for pid, row in descendants(os.getpid()).items() if pid not in before}
    assert executor.workers == 2 and executor.nodes == 1 and started
    yield executor
    executor.close()
    deadline = time.monotonic() + 20
    while still_running(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not still_running(started), "Ray processes left behind after shutdown"


def ray_model():
    """Layers whose solves take a second or so (long enough to kill a worker in one)."""
    return mlp(3, sizes=(64, 96, 48, 10)), calibration(1500, 64, seed=4)


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.9, mode="parallel"),
                                    dict(sparsity=0.9, mode="cascade"),
                                    dict(sparsity=0.85, scope="global")])
def test_ray_gives_the_in_process_results(cluster, kwargs):
    model, x = mlp(), calibration()
    plain = nettrim.prune(model, x, **kwargs)
    local = nettrim.prune(model, x, executor=InProcessExecutor(), **kwargs)
    on_ray = nettrim.prune(model, x, executor=cluster, **kwargs)
    same_results(plain, on_ray)
    same_results(local, on_ray, atol=0.0)   # the same tasks: the same numbers
    assert on_ray.options["executor"] == "a local Ray instance: 1 node(s), 2 CPU(s)"
    assert on_ray.options["tasks"]["tasks"] == local.options["tasks"]["tasks"]
    assert on_ray.options["tasks"]["bytes_shared"] == local.options["tasks"]["bytes_shared"]


def test_ray_splits_the_lagrangian_as_in_process(cluster):
    model, x = mlp(sizes=(24, 80, 40, 5)), calibration()
    local = nettrim.prune(model, x, sparsity=0.8, mode="cascade",
                          executor=InProcessExecutor(lagrangian_blocks=True))
    split = nettrim.RayExecutor(lagrangian_blocks=True)
    with split:   # joins the module's Ray; closing only disconnects
        on_ray = nettrim.prune(model, x, sparsity=0.8, mode="cascade", executor=split)
    same_results(local, on_ray, atol=0.0)


def _dies_once(marker, item):
    if not os.path.exists(marker):
        pathlib.Path(marker).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return item * 2


def _always_dies(shared, item):
    os.kill(os.getpid(), signal.SIGKILL)


def _sleeps(shared, item):
    time.sleep(60)


def test_a_killed_worker_is_retried(cluster, tmp_path):
    assert cluster.run(_dies_once, str(tmp_path / "marker"), [1, 2, 3]) == [2, 4, 6]
    assert (tmp_path / "marker").exists()


def test_a_worker_lost_for_good_fails_the_call_without_hanging(cluster):
    t0 = time.monotonic()
    with pytest.raises(TaskFailed, match="worker died"):
        cluster.run(_always_dies, None, [1])
    assert time.monotonic() - t0 < 60


def test_a_call_that_stalls_times_out(cluster):
    stalled = nettrim.RayExecutor(timeout=2)
    stalled.start()   # joins the module's Ray (already running here)
    t0 = time.monotonic()
    with pytest.raises(TaskFailed, match="no task finished in 2 s"):
        stalled.run(_sleeps, None, [1, 2])
    assert time.monotonic() - t0 < 20
    stalled.close()   # only disconnects: the module's Ray stays up
    assert cluster.run(lambda shared, item: item + 1, None, [1]) == [2]


def _kill_one_task_worker(stop: threading.Event, killed: list):
    """SIGKILL the first worker seen running a task (process title ``ray::_execute``)."""
    while not stop.is_set() and not killed:
        for pid in descendants(os.getpid()):
            try:
                title = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::_execute"):
                time.sleep(0.3)   # mid-solve
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except OSError:
                    continue
                return
        time.sleep(0.05)


def test_a_worker_killed_mid_prune_is_retried_with_the_same_results(cluster):
    model, x = ray_model()
    expected = nettrim.prune(model, x, sparsity=0.9, executor=InProcessExecutor())
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_task_worker, args=(stop, killed))
    killer.start()
    try:
        run = nettrim.prune(model, x, sparsity=0.9, executor=cluster)
    finally:
        stop.set()
        killer.join()
    assert killed, "no task was seen running"
    same_results(expected, run, atol=0.0)


def test_a_worker_killed_mid_prune_without_retries_fails_its_layer(cluster):
    model, x = ray_model()
    no_retry = nettrim.RayExecutor(max_retries=0, timeout=120)
    no_retry.start()
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_task_worker, args=(stop, killed))
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.warns(nettrim.PruningWarning, match="its solves could not be run"):
            run = nettrim.prune(model, x, sparsity=0.9, executor=no_retry)
    finally:
        stop.set()
        killer.join()
        no_retry.close()
    assert killed and time.monotonic() - t0 < 300
    failed = [r for r in run.report if r.status == "FAILED"]
    # the killed worker's task (and any other Ray had queued on that worker) is lost
    assert failed and all("worker died" in r.note for r in failed)
    for row in failed:
        assert torch.equal(run.model.get_submodule(row.name).weight,
                           model.get_submodule(row.name).weight)
    assert {r.status for r in run.report} <= {"FAILED", "OPTIMAL_INACCURATE"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_cli")
    model, x = ray_model()
    torch.save(model.state_dict(), root / "m.pt")
    np.savez(root / "x.npz", x=x.numpy())
    (root / "arch.py").write_text(ARCH.format(sizes=(64, 96, 48, 10), seed=3))
    return root


def test_cli_ray_on_a_running_cluster(cluster, checkpoint):
    import ray

    address = ray.get_runtime_context().gcs_address
    out = checkpoint / "out.pt"
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(checkpoint)]),
                   OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "nettrim.cli", "prune", str(checkpoint / "m.pt"),
                           "--arch", "arch:build", "--data", str(checkpoint / "x.npz"), "--out",
                           str(out), "--sparsity", "0.9", f"--ray={address}"], cwd=checkpoint,
                          env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"ray: the Ray cluster at {address}: 1 node(s), 2 CPU(s)" in done.stderr
    report = json.loads((checkpoint / "out.report.json").read_text())
    assert report["options"]["prune"]["executor"].endswith("1 node(s), 2 CPU(s)")
    assert report["options"]["prune"]["tasks"]["tasks"] > 0
    assert {row["status"] for row in report["layers"]} == {"OPTIMAL_INACCURATE"}


def test_cli_ctrl_c_shuts_the_local_ray_down(checkpoint):
    """``--ray`` starts a local Ray; Ctrl-C mid-solve exits 130 with no output file and no
    process of it left (checked in the process table)."""
    if not ray_available():
        pytest.skip(NO_RAY)
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(checkpoint)]),
                   OMP_NUM_THREADS="1")
    environ.pop("RAY_ADDRESS", None)
    out = checkpoint / "interrupted.pt"
    proc = subprocess.Popen([sys.executable, "-m", "nettrim.cli", "prune",
                             str(checkpoint / "m.pt"), "--arch", "arch:build", "--data",
                             str(checkpoint / "x.npz"), "--out", str(out), "--sparsity", "0.9",
                             "--ray"], cwd=checkpoint, env=environ, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    seen: dict = {}
    lines = []
    try:
        for line in proc.stderr:   # "ray: a local Ray instance: ..." once it is up
            lines.append(line)
            seen.update(descendants(proc.pid))
            if line.startswith("ray: "):
                break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_execute")
                for pid in descendants(proc.pid) if pathlib.Path(f"/proc/{pid}").exists()):
            seen.update(descendants(proc.pid))
            time.sleep(0.05)
        seen.update(descendants(proc.pid))
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "nettrim: interrupted" in rest and "Traceback" not in rest
    assert len(seen) >= 3   # the raylet, the GCS, workers
    deadline = time.monotonic() + 10
    while still_running(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not still_running(seen), "processes left behind after Ctrl-C"
    assert not out.exists() and not list(checkpoint.glob("interrupted*"))
