"""Where a pruning run's solves execute: in the calling process, or as tasks on a Ray cluster.

``nettrim.prune(..., executor=...)`` and ``nettrim.prune_layer(..., executor=...)`` take

* ``None`` (the default): everything runs in the calling process, as without this module
  (Ray is never imported);
* ``"ray"``: a :class:`RayExecutor` started for the call (a local Ray instance, or the cluster
  that ``RAY_ADDRESS`` or ``ray start`` on this machine names) and shut down after it;
* any object with ``map(fn, items)`` returning the results in order (the built-in protocol of
  :class:`concurrent.futures.Executor`; :class:`InProcessExecutor`, :class:`RayExecutor`). An
  optional ``workers`` attribute says how many tasks it runs at once (default 1).

What a task is, and which solves split into tasks, is decided by the callers
(:mod:`nettrim.layer.tasks`, :mod:`nettrim.prune`); this module only runs them:
:class:`TaskRunner` sends a function over items, with one payload of large arrays shared by all
of them (``ray.put`` once, read zero-copy by every task on a node), and counts the tasks on a
:class:`TaskBoard` (progress bar, per-task seconds and bytes for ``benchmarks/bench_cluster.py``).

Faults. A Ray task whose worker dies (killed, out of memory) is retried by Ray up to
``max_retries`` times; when it is lost for good, or when no task of a call finishes within
``timeout`` seconds, :class:`TaskFailed` says which and why, and the caller reports the layer as
failed. An exception raised by the solver inside a task is re-raised as itself, as in-process.
Ctrl-C (``KeyboardInterrupt``) cancels the pending tasks; :meth:`RayExecutor.close` shuts down
a Ray instance the executor started, with every process of it.

Knows nothing of models or solvers (floor 1 of ``tests/test_layout.py``): torch is imported only
inside a task, to set its thread count.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterable, Optional, Sequence

__all__ = ["EXECUTOR_NAMES", "InProcessExecutor", "RayExecutor", "TaskBoard", "TaskFailed",
           "TaskRunner", "check_executor", "concurrently", "nbytes", "ray_available",
           "workers_of"]

#: The names ``executor=`` takes besides None and objects.
EXECUTOR_NAMES = ("ray",)
#: Seconds between checks of a waiting call (Ctrl-C, a closed executor, the timeout).
POLL_SECONDS = 0.2


class TaskFailed(RuntimeError):
    """A task that could not be run: its worker was lost for good (after Ray's retries), the
    call timed out, or the executor was closed. ``reason`` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def ray_available() -> bool:
    """Whether Ray can be imported here (``pip install "nettrim[ray]"``)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def workers_of(executor: Any) -> int:
    """How many tasks ``executor`` runs at once (its ``workers`` attribute; 1 without one)."""
    workers = getattr(executor, "workers", 1)
    return max(1, int(workers)) if isinstance(workers, (int, float)) else 1


def check_executor(executor: Any) -> tuple[Any, bool]:
    """``(executor object or None, owned)``: ``"ray"`` becomes a started :class:`RayExecutor`
    that the caller owns (closes); an object needs a callable ``map``."""
    if executor is None or isinstance(executor, TaskRunner):
        return executor, False
    if isinstance(executor, str):
        if executor not in EXECUTOR_NAMES:
            msg = (f"executor must be None, one of {EXECUTOR_NAMES} or an object with "
                   f"map(fn, items), got {executor!r}")
            raise ValueError(msg)
        return RayExecutor().start(), True
    if not callable(getattr(executor, "map", None)):
        msg = (f"executor must be None, one of {EXECUTOR_NAMES} or an object with "
               f"map(fn, items), got {type(executor).__name__} (no map method)")
        raise TypeError(msg)
    if isinstance(executor, RayExecutor):
        executor.start()
    return executor, False


def nbytes(obj: Any) -> int:
    """Bytes of the arrays in ``obj`` (numpy arrays, torch tensors, in tuples, lists, dicts and
    dataclasses); what a task moves through the object store, less pickling's small change."""
    size = getattr(obj, "nbytes", None)
    if isinstance(size, int):
        return size
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):   # a torch tensor
        return int(obj.element_size() * obj.numel())
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(v) for v in obj)
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields:
        return sum(nbytes(getattr(obj, f, None)) for f in fields)
    return 0


def _execute(fn: Callable, shared: Any, item: Any, threads: Optional[int]):
    """What runs in a task: ``fn(shared, item)``, timed. ``threads``: torch's thread count."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = fn(shared, item)
    return result, time.perf_counter() - t0


class TaskBoard:
    """Counts the tasks of a run over all workers: a progress bar of tasks done (``total``
    grows as tasks are sent) and one record per task (``records``: ``label``, ``kind``,
    ``step`` (the caller's call), ``index`` (the item's), ``seconds`` inside the task, ``start``/``end`` as the driver saw them, ``bytes_in``,
    ``bytes_out``), plus ``bytes_shared`` (payloads put once). Thread-safe."""

    def __init__(self, progress: bool = False, desc: str = "tasks"):
        self.records: list = []
        self.bytes_shared = 0
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self.stop = threading.Event()   # set: every runner on this board stops sending tasks
        self.sent_count = self.done_count = 0   # what the bar shows (total, n)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, desc=desc, unit="task", leave=False, disable=None)

    def sent(self, count: int) -> None:
        with self._lock:
            self.sent_count += count
            if self.bar is not None and count:
                self.bar.total = self.sent_count
                self.bar.refresh()

    def done(self, record: dict) -> None:
        with self._lock:
            self.records.append(record)
            self.done_count += 1
            if self.bar is not None:
                self.bar.update(1)

    def shared(self, size: int) -> None:
        with self._lock:
            self.bytes_shared += size

    def summary(self) -> dict:
        """Tasks run, seconds inside them, and the bytes moved (shared, sent, returned)."""
        with self._lock:
            return dict(tasks=len(self.records),
                        task_seconds=sum(r["seconds"] for r in self.records),
                        bytes_shared=self.bytes_shared,
                        bytes_sent=sum(r["bytes_in"] for r in self.records),
                        bytes_returned=sum(r["bytes_out"] for r in self.records))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class InProcessExecutor:
    """Runs every task in the calling thread, one after another: the reference the other
    executors are compared with (same tasks, same results). ``lagrangian_blocks``: as for
    :class:`RayExecutor`."""

    workers = 1

    def __init__(self, lagrangian_blocks: bool = False):
        self.lagrangian_blocks = _check_flag(lagrangian_blocks, "lagrangian_blocks")

    def map(self, fn: Callable, items: Iterable) -> Iterable:
        return map(fn, items)

    def describe(self) -> str:
        return "in process"


class RayExecutor:
    """Tasks on Ray: a local instance started on demand, or a running cluster.

    Parameters
    ----------
    address : str, optional
        ``ray.init``'s address: None starts a local instance (or joins the cluster named by
        ``RAY_ADDRESS``, or one started by ``ray start`` on this machine); ``"auto"``, a head's
        ``host:6379`` or a Ray client's ``ray://host:10001`` joins a running cluster.
    num_cpus : int, optional
        CPUs of a local instance (default: all of this machine's). Not for a running cluster.
    max_retries : int, default 2
        Times Ray reruns a task whose worker died (killed, out of memory) before giving up.
    timeout : float, optional
        Seconds a call waits for its next task to finish before it gives up on the rest
        (:class:`TaskFailed`); None waits as long as the tasks run.
    threads : int, default 1
        torch threads inside each task (each task holds one CPU).
    init_options : dict, optional
        More keyword arguments for ``ray.init`` (e.g. ``runtime_env``).
    lagrangian_blocks : bool, default False
        Also split each count-steered l1 solve (the default pipeline's Lagrangian) into blocks
        of neurons, each steered to its share of the layer's count. Not exact (a count per
        block instead of per layer; see :mod:`nettrim.layer.tasks`), but a layer's l1 work then
        spreads over several workers (cascade mode, or one large layer).

    Notes
    -----
    ``start()`` (called by :func:`check_executor`, or by ``with RayExecutor() as ex:``) joins or
    starts Ray and warms one worker per CPU (imports torch and the solvers there, so that the
    first tasks are not paying for it). ``close()`` disconnects, and shuts down a Ray instance
    this executor started. Every node needs the same Python environment with nettrim installed
    (tasks name nettrim's functions; they are imported on the worker).
    """

    def __init__(self, address: Optional[str] = None, *, num_cpus: Optional[int] = None,
                 max_retries: int = 2, timeout: Optional[float] = None, threads: int = 1,
                 init_options: Optional[dict] = None, lagrangian_blocks: bool = False):
        if address is not None and not isinstance(address, str):
            msg = ("address must be a string such as 'host:6379' or 'ray://host:10001', got "
                   f"{address!r}")
            raise TypeError(msg)
        for name, value, low in (("num_cpus", num_cpus, 1), ("max_retries", max_retries, 0),
                                 ("threads", threads, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                msg = f"{name} must be an integer >= {low}, got {value!r}"
                raise ValueError(msg)
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            msg = f"timeout must be a positive number of seconds or None, got {timeout!r}"
            raise ValueError(msg)
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries
        self.timeout, self.threads = timeout, threads
        self.init_options = dict(init_options or {})
        self.lagrangian_blocks = _check_flag(lagrangian_blocks, "lagrangian_blocks")
        self.workers = 1
        self.nodes = 0
        self.started_local = False
        self.start_seconds = 0.0
        self._owned = False      # this object called ray.init: close() calls ray.shutdown
        self._closed = threading.Event()
        self._remote = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> "RayExecutor":
        """Join or start Ray (once); see the class notes."""
        if self._remote is not None:
            return self
        if not ray_available():
            msg = 'executor="ray" needs Ray: pip install "nettrim[ray]" (or pip install ray)'
            raise ImportError(msg)
        import ray

        t0 = time.perf_counter()
        if not ray.is_initialized():
            options = dict(address=self.address, include_dashboard=False,
                           logging_level=logging.WARNING, log_to_driver=False)
            if self.num_cpus is not None:
                options["num_cpus"] = self.num_cpus
            options.update(self.init_options)
            main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if main else None
            self._owned = True   # from here on, close() shuts down what ray.init started
            before = _descendants()
            try:
                ray.init(**options)
            except BaseException:   # Ctrl-C or an error half-way: no process left behind
                self.close()
                # a node interrupted while starting is unknown to ray.shutdown: its processes
                # (the raylet's agents outlived it by a minute) are this process's new ones
                _kill(_descendants() - before)
                raise
            finally:   # ray.init installs its own SIGTERM handler (sys.exit): keep the caller's
                if main and previous is not None:
                    signal.signal(signal.SIGTERM, previous)
            self.started_local = _started_here(ray)
        try:
            self._remote = ray.remote(_execute)
            self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._closed.clear()
            self.warm_up()
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def warm_up(self) -> None:
        """One task per CPU that imports torch and the solvers (a worker's first task pays for
        the imports: seconds)."""
        import ray

        refs = [self._remote.options(num_cpus=1).remote(_warm, None, None, self.threads)
                for _ in range(self.workers)]
        ray.get(refs)

    def close(self) -> None:
        """Cancel what is pending, disconnect; shut down a Ray instance this object started."""
        self._closed.set()
        self._remote = None
        if self._owned:
            import ray

            self._owned = False
            ray.shutdown()

    def __enter__(self) -> "RayExecutor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        msg = "a RayExecutor is not sent to tasks (tasks do not start tasks)"
        raise TypeError(msg)

    def describe(self) -> str:
        """The cluster it got: nodes and CPUs, and whether it started a local instance."""
        where = "a local Ray instance" if self.started_local else \
            f"the Ray cluster at {self.address or 'auto'}"
        return f"{where}: {self.nodes} node(s), {self.workers} CPU(s)"

    # ---- tasks ----------------------------------------------------------------------------
    def put(self, payload: Any) -> Any:
        """The payload in the object store once (an ObjectRef tasks resolve)."""
        import ray

        self._check_open()
        return ray.put(payload)

    def map(self, fn: Callable, items: Iterable, shared: Any = None,
            on_done: Optional[Callable] = None) -> list:
        """``[fn(shared, item) for item in items]`` as Ray tasks, results in order (a plain
        ``map(fn, items)`` calls ``fn(item)``). ``shared``: a payload or an ObjectRef from
        :meth:`put`. ``on_done(index, result, seconds)`` as each task finishes."""
        items = list(items)
        if shared is None:
            fn, shared = functools.partial(_single, fn), None
        return self.run(fn, shared, items, on_done)

    def run(self, fn: Callable, shared: Any, items: Sequence,
            on_done: Optional[Callable] = None,
            stop: Optional[threading.Event] = None) -> list:
        """``fn(shared, item)`` for each item as tasks; see :meth:`map`. ``stop``: an event
        that, once set, cancels the pending tasks (:class:`TaskFailed`)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError, RayTaskError

        self._check_open()
        remote = self._remote.options(num_cpus=1, max_retries=self.max_retries,
                                      retry_exceptions=False)
        refs = [remote.remote(fn, shared, item, self.threads) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        last = time.perf_counter()
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                now = time.perf_counter()
                if stop is not None and stop.is_set():
                    raise TaskFailed("stopped: another part of the run failed or was interrupted")
                if not done:
                    self._check_open()
                    if self.timeout is not None and now - last > self.timeout:
                        msg = (f"no task finished in {self.timeout:g} s ({len(pending)} of "
                               f"{len(refs)} still running or waiting); the rest were cancelled")
                        raise TaskFailed(msg)
                    continue
                last = now
                for ref in done:
                    try:
                        value, seconds = ray.get(ref)
                    except RayTaskError as err:   # the task's own exception, as in-process
                        raise err.as_instanceof_cause() from None
                    except (RayError, GetTimeoutError) as err:
                        raise TaskFailed(_lost(err, self.max_retries)) from err
                    results[index[ref]] = value
                    if on_done is not None:
                        on_done(index[ref], value, seconds)
        finally:
            for ref in pending:   # a failure, Ctrl-C or a timeout: nothing left running
                _cancel(ray, ref)
        return results

    def _check_open(self) -> None:
        if self._closed.is_set() or self._remote is None:
            msg = "the Ray executor was closed (interrupted, or its run ended)"
            raise TaskFailed(msg)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        msg = f"{name} must be True or False, got {value!r}"
        raise TypeError(msg)
    return value


def _single(fn: Callable, shared: Any, item: Any):
    return fn(item)


def _warm(shared: Any, item: Any) -> None:
    import solvers  # noqa: F401 - the imports are the point (torch, numpy, scipy)


def _started_here(ray) -> bool:
    """Whether ``ray.init`` started the head of a new Ray instance in this process (rather than
    joining a running cluster)."""
    try:
        return bool(ray._private.worker._global_node.is_head())
    except Exception:  # noqa: BLE001 - another Ray version's internals: say "joined"
        return False


def _descendants() -> set:
    """``(pid, start time)`` of this process's descendants, from ``/proc`` (Linux; empty
    elsewhere)."""
    import os

    parent, start = {}, {}
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parent[int(entry)], start[int(entry)] = int(fields[1]), fields[19]
    except OSError:
        return set()
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return {(pid, start[pid]) for pid in found}


def _kill(processes: set) -> None:
    """SIGKILL each ``(pid, start time)`` that is still that process."""
    import os

    alive = {pid: when for pid, when in _descendants()}
    for pid, when in processes:
        if alive.get(pid) == when:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _cancel(ray, ref) -> None:
    try:
        ray.cancel(ref, force=True)
    except Exception:  # noqa: BLE001 - already finished, or Ray already shut down
        pass


def _lost(err: BaseException, retries: int) -> str:
    """One line for a task Ray could not run."""
    kind = type(err).__name__
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "WorkerCrashed" in kind or "died" in first.lower():
        return (f"its worker died (killed or out of memory) and {retries} retr"
                f"{'y' if retries == 1 else 'ies'} did not bring it back ({kind})")
    return f"{kind}: {first}"


class TaskRunner:
    """One caller's view of an executor: runs ``fn(shared, item)`` over items through it, with
    the shared payload put once per ``key`` (kept until :meth:`close`), and each task counted on
    ``board``. ``label`` names the caller (a layer) in the records; ``step`` counts its calls.

    ``TaskRunner.open(executor)`` resolves ``executor`` (:func:`check_executor`) and closes an
    executor it started when the runner is closed (``with TaskRunner.open("ray") as r: ...``).
    """

    def __init__(self, executor: Any, board: Optional[TaskBoard] = None, label: str = ""):
        if isinstance(executor, TaskRunner):
            executor = executor.executor
        self.executor = executor
        self.board = board if board is not None else TaskBoard()
        self.label = label
        self.step = 0
        self.workers = workers_of(executor)
        self._shared: dict = {}   # key -> (keep-alive, handle)
        self._owned = False

    @classmethod
    def open(cls, executor: Any, board: Optional[TaskBoard] = None,
             label: str = "") -> "TaskRunner":
        resolved, owned = check_executor(executor)
        runner = cls(resolved, board, label)
        runner._owned = owned
        return runner

    def child(self, label: str) -> "TaskRunner":
        """A runner on the same executor and board for another caller."""
        return TaskRunner(self.executor, self.board, label)

    def run(self, fn: Callable, items: Sequence, *, shared: Any = None, key: Any = None,
            keep: Any = None, kind: str = "") -> list:
        """``[fn(shared, item) for item in items]`` on the executor, in order.

        ``shared`` is sent once per ``key`` (``keep``: objects whose ids make up the key, held
        until :meth:`close` so that the ids stay theirs)."""
        items = list(items)
        self.step += 1
        step = self.step
        handle = self._share(shared, key, keep)
        sent = [nbytes(item) for item in items]
        starts = [time.perf_counter()] * len(items)
        board = self.board
        board.sent(len(items))

        def record(i, value, seconds):
            board.done(dict(label=self.label, kind=kind, step=step, index=i, seconds=seconds,
                            start=starts[i] - board.t0, end=time.perf_counter() - board.t0,
                            bytes_in=sent[i], bytes_out=nbytes(value)))

        if isinstance(self.executor, RayExecutor):
            return self.executor.run(fn, handle, items, on_done=record, stop=board.stop)
        out = []
        call = functools.partial(_execute, fn, handle, threads=None)   # the caller's threads
        for i, (value, seconds) in enumerate(self.executor.map(call, items)):
            if board.stop.is_set():
                raise TaskFailed("stopped: another part of the run failed or was interrupted")
            record(i, value, seconds)
            out.append(value)
        return out

    def _share(self, shared: Any, key: Any, keep: Any) -> Any:
        if shared is None:
            return None
        if key is not None and key in self._shared:
            return self._shared[key][1]
        put = getattr(self.executor, "put", None)
        handle = put(shared) if callable(put) else shared
        self.board.shared(nbytes(shared))
        if key is not None:
            self._shared[key] = (keep, handle)
        return handle

    def close(self) -> None:
        """Release the shared payloads; close an executor this runner started."""
        self._shared.clear()
        if self._owned:
            self._owned = False
            self.executor.close()

    def __enter__(self) -> "TaskRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def concurrently(runner: Optional[TaskRunner], calls: Sequence[Callable[[], Any]]) -> list:
    """Run ``calls`` (no arguments each) and return their results in order, a call's
    :class:`TaskFailed` in place of its result (other exceptions propagate).

    With a runner on an executor of several workers the calls run in threads of this process
    (up to twice the workers), each sending its own tasks, so that the executor is kept busy
    while one call waits (parallel mode: one call per layer); otherwise one after another. An
    exception (or Ctrl-C) stops the other calls' tasks (the runner's board is told to stop).
    """
    def guarded(call):
        try:
            return call()
        except TaskFailed as err:
            return err

    workers = 1 if runner is None else runner.workers
    if workers <= 1 or len(calls) <= 1:
        return [guarded(call) for call in calls]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(len(calls), 2 * workers),
                                                 thread_name_prefix="nettrim-layer")
    futures = [pool.submit(guarded, call) for call in calls]
    try:
        return [future.result() for future in futures]
    except BaseException:   # Ctrl-C, or a call's error: the other calls stop sending tasks
        runner.board.stop.set()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
