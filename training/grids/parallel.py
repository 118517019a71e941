"""Train a grid's configurations in N worker processes, all children of the grid's one parent run.

Design (why it looks like this):
- **One owner per configuration.** The driver submits each configuration exactly once to a
  `ProcessPoolExecutor` ("spawn": CUDA and MLflow's clients are not fork-safe); a worker takes it
  whole, so no two processes ever train, resume or skip-check the same configuration in one grid.
  A lock file per configuration in the checkpoint folder also stops a second grid command started
  on the same configurations at the same time (it reports them as "busy" instead of resuming a
  run that is alive). Dynamic dispatch, not a fixed split: deep and shallow configurations differ
  several-fold in cost.
- **One device per worker.** `--devices cuda:0,cuda:1` hands worker i the device i mod len(devices)
  for its whole life (set in the pool initializer), so configurations never share a GPU by accident.
- **The parent run belongs to the driver.** A worker makes the parent the active run *in a fresh
  thread* (MLflow's active-run stack is thread-local) and lets cnn_experiment nest its child under
  it; the thread ends without `end_run`, so only the driver ever changes the parent's status.
- **One writer for local stores.** SQLite (and the file store) take one writer process; N workers
  writing one file fail with "database is locked". For such a store the driver starts a private
  `mlflow server` on 127.0.0.1 backed by that same file (artifacts in the same ./mlruns folder a
  direct run would use), points itself and the workers at it, and stops it afterwards. A server
  URI or a database server (PostgreSQL, MySQL) is used as it is.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import traceback
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from training.cnn.store import run_name
from training.grids.lock import config_lock
from training.grids.parent import Planned, train_child

_WORKER: Dict[str, Any] = {}  # per worker process: device, set once by _init_worker


class WorkerDiedError(RuntimeError):
    """A worker process was killed (signal, out of memory): the grid stops; a rerun resumes."""


def configuration_cost(run: Any) -> Tuple[int, int]:
    """A sort key, smallest first = heaviest: exp2, then ResNets, then plain nets, deeper and wider
    first (a rough cost: layers x widest K). run: cnn_experiment kwargs, or a (recipe, options) pair."""
    rank = {"ycn": 0, "resnet": 1, "cnn": 2}
    r = run[0].__dict__ if isinstance(run, tuple) else run
    return rank.get(r["model_type"], 3), -len(r["filters_per_layer"]) * r["layers_per_block"] * max(r["filters_per_layer"])


def heaviest_first(runs: List[Any]) -> List[Any]:
    """Longest-processing-time-first order, so that parallel workers finish together instead of one
    training the longest configuration alone at the end; ties keep the programme's order."""
    return sorted(runs, key=configuration_cost)


def plan_devices(workers: int, devices: Optional[Sequence[str]]) -> List[Optional[str]]:
    """Device of each worker slot: devices round-robin (None: the configuration's own setting)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    devices = [d for d in (devices or []) if d]
    return [devices[i % len(devices)] if devices else None for i in range(workers)]


def threads_per_worker(workers: int) -> int:
    """Split the CPU cores between the workers (oversubscribed torch threads slow everyone down)."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def local_artifact_root(store_uri: str) -> str:
    """Where a direct (serverless) run on this store keeps artifacts, so the private server
    puts them in the same place and the grid looks the same with 1 worker or N."""
    if store_uri.startswith("file:"):
        from urllib.parse import urlparse

        return urlparse(store_uri).path
    if "://" not in store_uri:
        return os.path.abspath(store_uri)
    return os.path.abspath("mlruns")


@contextlib.contextmanager
def shared_tracking_store(workers: int) -> Iterator[str]:
    """The tracking URI that `workers` processes can all write to (see the module notes)."""
    import mlflow

    from training.tracking.server import is_local_store, start_server

    uri = mlflow.get_tracking_uri()
    if workers < 2 or not is_local_store(uri):
        yield uri
        return
    state = tempfile.mkdtemp(prefix="archlab-grid-server-")
    print(f"*** {workers} workers on the local store {uri}: starting a private MLflow server over it "
          f"(SQLite takes one writer process) ...")
    try:
        with start_server(uri, default_artifact_root=local_artifact_root(uri), state_dir=state,
                          cleanup_dir=state) as server:
            print(f"*** Private MLflow server at {server.uri} (log {server.log_path})")
            previous_env = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(server.uri)
            os.environ["MLFLOW_TRACKING_URI"] = server.uri
            try:
                yield server.uri
            finally:
                mlflow.set_tracking_uri(uri)
                if previous_env is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = previous_env
        print(f"*** Private MLflow server stopped; the runs are in {uri}")
    finally:  # on every exit, WorkerDiedError and signals included (a SIGKILL: the watchdog removes it)
        shutil.rmtree(state, ignore_errors=True)


def _init_worker(tracking_uri: str, device_slots, n_threads: int) -> None:
    """Pool initializer: the worker's store, CPU threads and (for its whole life) its device."""
    import mlflow
    import torch

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # the driver owns the project's run
        os.environ.pop(var, None)
    mlflow.set_tracking_uri(tracking_uri)
    torch.set_num_threads(n_threads)
    from training.grids.procs import die_with_parent
    from training.tracking.lifecycle import install_signal_handlers

    die_with_parent()  # a kill -9 of the driver: SIGTERM here, the run ends KILLED, the worker exits
    install_signal_handlers()
    _WORKER["device"] = device_slots.get()


def train_configuration(grid: str, parent_run_id: str, experiment_id: str, planned: Planned) -> Tuple[str, str]:
    """Worker task: train one configuration (check_grid's recipe and options) as a child of
    `parent_run_id`. Returns (label, "written" | "skipped" | "diverged" | "busy")."""
    import dataclasses

    recipe, options = planned
    if _WORKER.get("device"):
        options = dataclasses.replace(options, device=_WORKER["device"])
    label = run_name(recipe, options)  # one per (configuration, seed)
    result: Dict[str, Any] = {}

    def body() -> None:
        import mlflow

        try:
            with config_lock(options.checkpoint_dir, label) as holder:
                if holder is not None:
                    print(f"*** {label}: another process ({holder}) is training it right now; leaving it to that one")
                    result["status"] = "busy"
                    return
                mlflow.set_experiment(experiment_id=experiment_id)
                # this thread's active run, never ended here; no second system-metrics monitor on it
                mlflow.start_run(run_id=parent_run_id, log_system_metrics=False)
                result["status"] = train_child(grid, recipe, options)
        except BaseException as e:  # noqa: BLE001  (re-raised in the worker's main thread)
            result["error"] = e
            result["traceback"] = traceback.format_exc()

    thread = threading.Thread(target=body, name=f"train-{label}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt as e:
        # Ctrl-C, SIGTERM, or the driver's death (PR_SET_PDEATHSIG). Leave at once: the pool must not hand
        # this process another configuration while the interrupted one still runs in its thread; its run
        # ends KILLED with the reason (lifecycle) and resumes from its last epoch on the next grid command.
        from training.tracking.lifecycle import close_open_runs, end_reason

        print(f"*** {label}: interrupted; it resumes from its last epoch on the next grid command", flush=True)
        close_open_runs("KILLED", end_reason(e))
        os._exit(128 + getattr(e, "signum", 2))
    if "error" in result:
        e = result["error"]
        if isinstance(e, (ValueError, FileNotFoundError)):  # bad input: the CLI turns these into usage errors
            raise (FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError)(f"{label}: {e}")
        raise RuntimeError(f"{label} failed in a worker: {type(e).__name__}: {e}\n{result['traceback']}")
    return label, result["status"]


def run_grid_parallel(name: str, cfg: Mapping[str, Any], runs: List[Planned], workers: int = 2,
                      devices: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """Run the configurations `runs` of grid `name` (check_grid's recipe and options pairs) in
    `workers` processes (run_grids_parallel with one grid)."""
    return run_grids_parallel({name: (cfg, runs)}, workers, devices)[name]


def run_grids_parallel(grids: Mapping[str, Tuple[Mapping[str, Any], List[Planned]]], workers: int = 2,
                       devices: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, List[str]]]:
    """Train the configurations of several grids ({name: (cfg, planned)}) in one pool of `workers`
    processes, heaviest first across all of them, each a child of its own grid's parent run.

    Why one pool: grid after grid, the last configurations of each grid train while the other
    workers idle. On the first failure the configurations not yet started are cancelled, the
    running ones finish, and the error is raised (the parents end FAILED; a rerun resumes the rest)."""
    import multiprocessing

    from training.grids.parent import held_parent_runs, print_summary

    tasks = sorted(((name, planned) for name, (_, runs) in grids.items() for planned in runs),
                   key=lambda task: configuration_cost(task[1]))  # the workers then finish close together
    labels = [run_name(recipe, options) for _, (recipe, options) in tasks]
    for name, (_, runs) in grids.items():
        names = [run_name(recipe, options) for recipe, options in runs]
        duplicates = sorted({lb for lb in names if names.count(lb) > 1})
        if duplicates:
            raise ValueError(f"grid {name!r} lists configurations {duplicates} more than once")
    workers = max(1, min(workers, len(tasks)))
    slots = plan_devices(workers, devices)
    outcomes = {name: {"written": [], "skipped": [], "diverged": [], "busy": []} for name in grids}
    with shared_tracking_store(workers) as uri, held_parent_runs(grids) as parents:
        ctx = multiprocessing.get_context("spawn")
        device_slots = ctx.Queue()
        for slot in slots:
            device_slots.put(slot)
        on = f" on {', '.join(str(s) for s in slots)}" if any(slots) else ""
        print(f"*** Grid{'s' if len(grids) > 1 else ''} {', '.join(grids)}: {len(tasks)} configurations in "
              f"{workers} worker processes{on}")
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(uri, device_slots, threads_per_worker(workers)))
        try:
            futures = [executor.submit(train_configuration, name, parents[name].info.run_id,
                                       parents[name].info.experiment_id, planned) for name, planned in tasks]
            _collect(futures, [(name, label) for (name, _), label in zip(tasks, labels)], outcomes)
        except BaseException:  # an error or a signal in the driver: no worker may outlive it
            from training.grids.procs import stop_processes

            stop_processes(list((executor._processes or {}).values()))
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    for name, outcome in outcomes.items():
        print_summary(name, outcome)
        if outcome["busy"]:
            print(f"*** {len(outcome['busy'])} configurations were being trained by another process: {outcome['busy']}")
    return outcomes


def _collect(futures: List[Any], tasks: List[Tuple[str, str]], outcomes: Dict[str, Dict[str, List[str]]]) -> None:
    """Wait for every configuration; file each label under its grid's outcome. On the first
    failure cancel what has not started, let the running ones finish, and raise."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    if failed:
        for f in pending:
            f.cancel()
        wait(futures)  # let the configurations already training finish cleanly
        error = failed[0].exception()
        if isinstance(error, BrokenProcessPool):
            # A worker died without a word (SIGKILL, the OOM killer): the pool stops the others,
            # so every unfinished configuration stays RUNNING with its last epoch's training state.
            unfinished = [label for (_, label), f in zip(tasks, futures) if f.cancelled() or f.exception() is not None]
            grids = ", ".join(dict.fromkeys(name for name, _ in tasks))
            raise WorkerDiedError(
                f"grid {grids}: a worker process died (killed by a signal or out of memory?); the pool "
                f"stopped the other workers. Not finished: {unfinished}. Their runs resume from their "
                f"last completed epoch: rerun the same grid command to resume them.") from error
        raise error
    for (name, _), f in zip(tasks, futures):
        label, status = f.result()
        outcomes[name][status].append(label)
