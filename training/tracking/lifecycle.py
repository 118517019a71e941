"""Run lifecycle: who owns a RUNNING run, how every visible exit closes it, and how a run whose
owner died unseen (SIGKILL, a lost machine) is recognised on the next run of the same grid.

Why: MLflow leaves a run RUNNING forever unless the process that opened it ends it. archlab makes
the store's state always true:
- every run archlab opens carries its owner (`archlab.owner.*`: host, pid, and the process start
  token, so a reused pid is not mistaken for the owner) and a heartbeat refreshed every epoch;
- SIGTERM, SIGHUP and SIGINT (what Kubernetes, systemd, `timeout`, a closed terminal and Ctrl-C
  send) raise `Interrupted`, a KeyboardInterrupt, in the main thread: the `with` blocks unwind and
  each run ends KILLED with the signal as `archlab.end_reason`. A signal that lands inside an
  MLflow call waits for the call to finish (a half-written SQLite transaction would keep the
  database locked, and the runs could not be closed);
- a RUNNING run is *stale* when its owner is gone: on this host, no process with that pid and
  start token; elsewhere, no heartbeat for ARCHLAB_STALE_AFTER_S (default 6 h). A stale run is
  continued (its configuration resumes in it) or closed KILLED, never duplicated;
- a project run that `mlflow run` created but whose command never started (the environment build
  failed: offline, no pyenv/uv/conda) has no owner at all; every entry point and the report close
  such runs FAILED once they are older than ARCHLAB_STALE_AFTER_S (close_never_started_project_runs);
  the grid submitter (training.grids.submit), which sees its launch fail, closes its own at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Dict, Iterable, Mapping, Optional

OWNER_PID_TAG = "archlab.owner.pid"
OWNER_HOST_TAG = "archlab.owner.host"
OWNER_TOKEN_TAG = "archlab.owner.token"
HEARTBEAT_TAG = "archlab.heartbeat"
END_REASON_TAG = "archlab.end_reason"
ERROR_TAG = "archlab.error"
STALE_AFTER_S = 6 * 3600
# What mlflow.projects writes (mlflow/projects/utils.py _create_run, backend/local.py, __init__.py _run):
SOURCE_TYPE_TAG = "mlflow.source.type"        # "PROJECT", set when the run is created
ENTRY_POINT_TAG = "mlflow.project.entryPoint"
PROJECT_ENV_TAG = "mlflow.project.env"        # virtualenv / uv / conda / docker, set before the build
PROJECT_BACKEND_TAG = "mlflow.project.backend"  # set only once backend.run() has started the command
NEVER_STARTED = "the project's command never started (environment setup failed?)"
HANDLED_SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")
STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3", "alembic")
DEFER_S = 0.05

_OPEN_RUNS: Dict[str, None] = {}  # run ids this process has open (ordered: children after parents)
_LOCK = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised in the main thread so runs unwind like a Ctrl-C (KILLED)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunBusyError(RuntimeError):
    """A live process (not this one) owns the run this command would train or continue."""


# ------------------------------------------------------------------------------------------ owners
def _process_token(pid: int) -> Optional[str]:
    """boot id + the process's start time (clock ticks since boot): unique to one process's life."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        start = stat.rsplit(")", 1)[1].split()[19]
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def owner_tags() -> Dict[str, str]:
    """Tags naming this process as a run's owner, with a fresh heartbeat."""
    return {OWNER_PID_TAG: str(os.getpid()), OWNER_HOST_TAG: socket.gethostname(),
            OWNER_TOKEN_TAG: _process_token(os.getpid()) or "", **heartbeat_tags()}


def heartbeat_tags() -> Dict[str, str]:
    return {HEARTBEAT_TAG: f"{time.time():.0f}"}


def stale_after_s() -> float:
    return float(os.environ.get("ARCHLAB_STALE_AFTER_S", STALE_AFTER_S))


def owner_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process named in a RUNNING run's owner tags still lives (runs logged before
    owners were recorded have none: nobody can be training them now)."""
    pid, host = tags.get(OWNER_PID_TAG), tags.get(OWNER_HOST_TAG)
    if not pid or not host:
        return False
    if int(pid) == os.getpid() and host == socket.gethostname():
        return True
    if host == socket.gethostname() and tags.get(OWNER_TOKEN_TAG):
        return _process_token(int(pid)) == tags[OWNER_TOKEN_TAG]
    try:
        return time.time() - float(tags.get(HEARTBEAT_TAG, 0)) < stale_after_s()
    except ValueError:
        return False


def describe_owner(tags: Mapping[str, str]) -> str:
    return f"pid {tags.get(OWNER_PID_TAG, '?')} on {tags.get(OWNER_HOST_TAG, '?')}"


def run_tags(row: Mapping) -> Dict[str, str]:
    """The tags of a search_runs row (pandas Series with `tags.*` columns) as a plain dict."""
    return {k[len("tags."):]: v for k, v in dict(row).items() if k.startswith("tags.") and isinstance(v, str)}


def close_stale(run_id: str, tags: Mapping[str, str], why: str) -> None:
    """End a stale RUNNING run KILLED, saying whose it was and why it was closed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, END_REASON_TAG, f"its owner ({describe_owner(tags)}) died without ending it; {why}")
    client.set_terminated(run_id, "KILLED")
    print(f"*** Closed stale run {run_id} as KILLED: its owner ({describe_owner(tags)}) is gone")


# ------------------------------------------------------------------------------------------ signals
def _in_store_call(frame) -> bool:
    """Whether the interrupted code is inside MLflow or its database layer."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").split(".")[0] in STORE_MODULES:
            return True
        frame = frame.f_back
    return False


def _raise_interrupted(signum, frame) -> None:
    if _in_store_call(frame):  # never cut a store write short: a half-done SQLite transaction keeps the
        # database locked, and the cleanup that ends the runs KILLED would fail; come back in a moment
        threading.Timer(DEFER_S, os.kill, (os.getpid(), signum)).start()
        return
    for name in HANDLED_SIGNALS:  # one unwinding at a time: a second signal must not cut the cleanup short
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM, SIGHUP and SIGINT raise Interrupted in the main thread, outside store calls
    (handlers set by others are kept)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in HANDLED_SIGNALS:
        sig = getattr(signal, name)
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None):
            signal.signal(sig, _raise_interrupted)


def end_reason(error: BaseException) -> str:
    """The `archlab.end_reason` of a run left by `error`."""
    if isinstance(error, Interrupted):
        how = " (Ctrl-C)" if error.signum == signal.SIGINT else ""
        return f"stopped by {error}{how}: rerun the same command to resume it"
    if isinstance(error, KeyboardInterrupt):
        return "stopped by SIGINT (Ctrl-C): rerun the same command to resume it"
    return f"failed: {type(error).__name__}: {error}"[:5000]


# ------------------------------------------------------------------------------------------ registry
def opened(run_id: str) -> None:
    with _LOCK:
        _OPEN_RUNS[run_id] = None


def closed(run_id: str) -> None:
    with _LOCK:
        _OPEN_RUNS.pop(run_id, None)


def open_runs() -> Iterable[str]:
    with _LOCK:
        return list(_OPEN_RUNS)


def close_open_runs(status: str, reason: str) -> None:
    """End every run this process still has open (a worker about to exit while its training
    thread holds a run): children first. Quick and quiet: the store may be going away too."""
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    client = MlflowClient()
    for run_id in reversed(list(open_runs())):
        with contextlib.suppress(Exception):
            client.set_tag(run_id, END_REASON_TAG, reason)
            client.set_terminated(run_id, status)
        closed(run_id)


def resumable(prior, label: str, reuse: bool = True) -> Optional[str]:
    """Of the unfinished earlier runs of one configuration (a search_runs frame, newest first), the
    run to continue (None: open a new one). A run whose owner still lives raises RunBusyError; the
    other RUNNING ones are stale and are closed KILLED, so the configuration never has two."""
    chosen = None
    for _, row in prior.iterrows():
        tags = run_tags(row)
        if row["status"] == "RUNNING" and owner_alive(tags):
            raise RunBusyError(f"{label} is already being trained in {describe_owner(tags)} (run {row['run_id']}); "
                               f"wait for it to finish, or stop that process and rerun")
    for _, row in prior.iterrows():
        if reuse and chosen is None:
            chosen = row["run_id"]
        elif row["status"] == "RUNNING":
            close_stale(row["run_id"], run_tags(row), f"superseded by {'run ' + chosen if chosen else 'a restart'}")
    return chosen


def parent_to_continue(found, grid: str, same_grid) -> Optional[Mapping]:
    """Of a grid's parent runs (a search_runs frame, newest first), the one a rerun continues: the
    newest, if it ended FAILED or KILLED or was left RUNNING by a dead owner, and `same_grid(row)`.
    A parent whose owner lives raises RunBusyError; other stale RUNNING parents are closed KILLED."""
    running = [row for _, row in found.iterrows() if row["status"] == "RUNNING"]
    for row in running:
        if owner_alive(run_tags(row)):
            raise RunBusyError(f"grid {grid} is already running in {describe_owner(run_tags(row))} (parent run "
                               f"{row['run_id']}); wait for it to finish, or stop that process and rerun")
    newest = found.iloc[0] if len(found) else None
    chosen = newest if newest is not None and newest["status"] in ("FAILED", "KILLED", "RUNNING") \
        and same_grid(newest) else None
    for row in running:
        if chosen is None or row["run_id"] != chosen["run_id"]:
            close_stale(row["run_id"], run_tags(row), f"grid {grid} was rerun")
    return chosen


# ------------------------------------------------------------------------ project runs never started
def never_started(run, now_s: Optional[float] = None, min_age_s: Optional[float] = None) -> bool:
    """Whether `run` (an mlflow Run) is a project run whose command clearly never started.

    MLflow's launcher creates the run, then builds the environment, and only when the command is
    running does `_run` tag it `mlflow.project.backend`; an exception in between leaves it RUNNING
    with no backend tag and nothing else ends it. Dead, not still building: no archlab owner (the
    command would have tagged one), no metric, and started longer ago than stale_after_s() (6 h:
    far above a pyenv build plus a torch download; `min_age_s` 0: the caller saw the launch fail)."""
    tags, now_s = run.data.tags, time.time() if now_s is None else now_s
    min_age_s = stale_after_s() if min_age_s is None else min_age_s
    return (run.info.status == "RUNNING" and tags.get(SOURCE_TYPE_TAG) == "PROJECT" and ENTRY_POINT_TAG in tags
            and PROJECT_BACKEND_TAG not in tags and OWNER_PID_TAG not in tags and not run.data.metrics
            and now_s - run.info.start_time / 1000 >= min_age_s)


def close_never_started(run_id: str, tags: Mapping[str, str]) -> None:
    """End a project run whose command never started FAILED, saying so (and which env manager)."""
    from mlflow.tracking import MlflowClient

    env = tags.get(PROJECT_ENV_TAG)
    reason = NEVER_STARTED + (f"; env manager: {env}" if env else "")
    client = MlflowClient()
    client.set_tag(run_id, END_REASON_TAG, reason)
    client.set_terminated(run_id, "FAILED")
    print(f"*** Closed run {run_id} (entry point {tags.get(ENTRY_POINT_TAG)}) as FAILED: {reason}")


def close_never_started_project_runs() -> list[str]:
    """Close every never_started project run in the store (every active experiment); returns their
    ids. Why here: MLflow's launcher owns these runs and dies without ending them, so the next
    archlab command is the first code that can; the caller's own project run is never touched."""
    import mlflow

    found = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=50_000,
                               filter_string=f"attributes.status = 'RUNNING' and tags.`{SOURCE_TYPE_TAG}` = 'PROJECT'")
    closed_ids = []
    for run in found:
        if run.info.run_id != os.environ.get("MLFLOW_RUN_ID") and never_started(run):
            close_never_started(run.info.run_id, run.data.tags)
            closed_ids.append(run.info.run_id)
    return closed_ids


def sweep_never_started() -> None:
    """close_never_started_project_runs at the start of a command: housekeeping for runs this
    command does not own, so a store that refuses it (a server whose user may not edit others'
    runs) costs one warning line, never the command."""
    try:
        close_never_started_project_runs()
    except Exception as e:  # noqa: BLE001  (MLflow, SQLAlchemy and HTTP errors alike)
        print(f"*** Could not close project runs that never started: {type(e).__name__}: {str(e)[:200]}")
