"""How long a training run waits on MLflow: the `mlflow_time_s` metric of every training run.

Why: issue #17 asks what share of the programme's wall time MLflow takes, measured rather than
estimated. A benchmark can time logging calls apart from training (bench/mlflow_logging.py); this
times the calls the runs really make, in the process and thread that make them, against the store
they really use (the sqlite file, or the private server that parallel grids start).

How: the few tracking-layer functions that call MLflow run inside `mlflow_call()` (a context
manager, also usable as a decorator). Nested calls count once (the outermost), so a wrapped
function that calls another wrapped one is not counted twice. The clock is per thread: a grid
worker trains its configuration in a thread of its own, and MLflow's system-metrics thread,
which logs in the background and does not hold training up, is never counted. Overhead: two
`perf_counter` calls per MLflow call, against the milliseconds a call to a store takes.

What `mlflow_time_s` covers: the run's own lifetime, from start_run to the metric itself, just
before the run ends (start_run, params, description, dataset inputs, the per-epoch log_batch
calls, the logged model, final metrics, tables, artifacts), so that it is a part of the run's
duration (end_time - start_time). A CIFAR run also logs `mlflow_pre_run_s`: its skip/resume check
(a search of the store) before start_run, outside that duration. Not covered: the run's own
end_run and what follows it (the grid parent's children_* summary), which come after the last
moment a metric can be logged on the run.
"""
from __future__ import annotations

import contextlib
import threading
import time

METRIC = "mlflow_time_s"          # within the run: start_run .. just before end_run
PRE_RUN_METRIC = "mlflow_pre_run_s"  # a CIFAR run's skip/resume check, before start_run


class _Clock(threading.local):
    """Per-thread total of seconds spent inside MLflow calls, and the nesting depth."""

    def __init__(self) -> None:
        self.total = 0.0
        self.depth = 0
        self.started = 0.0


_CLOCK = _Clock()


class mlflow_call(contextlib.ContextDecorator):
    """Time the enclosed MLflow call(s); only the outermost of nested blocks adds to the total."""

    def __enter__(self) -> "mlflow_call":
        if _CLOCK.depth == 0:
            _CLOCK.started = time.perf_counter()
        _CLOCK.depth += 1
        return self

    def __exit__(self, *exc) -> bool:
        _CLOCK.depth -= 1
        if _CLOCK.depth == 0:
            _CLOCK.total += time.perf_counter() - _CLOCK.started
        return False


def spent() -> float:
    """Seconds this thread has spent in timed MLflow calls so far (a run takes the difference of
    two readings, so runs in one thread never need to reset it)."""
    return _CLOCK.total
