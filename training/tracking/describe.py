"""What a run says about itself in the MLflow UI beyond params and curves: a one-line
description, tables (ROC thresholds, the final summary) and system metrics.

The description is the run's `mlflow.note.content` tag (the UI's Description box); tables are
`mlflow.log_table` JSON artifacts, which the UI lists and renders as tables.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence

import mlflow

from training.tracking.timing import mlflow_call

NOTE_TAG = "mlflow.note.content"
SYSTEM_METRICS_INTERVAL_S = 5  # a psutil sample + one log_batch per run every 5 s: cheap, and short runs get points


GPU_MONITOR_LOGGER = "mlflow.system_metrics.metrics.gpu_monitor"


class FirstTimeOnly(logging.Filter):
    """Lets each distinct message through once per process. MLflow's GPU monitor warns at every
    sample when NVML refuses a query (power or utilisation on a MIG slice or a GPU without the
    sensor): every 5 s per run, in every worker, for the whole run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def enable_system_metrics() -> None:
    """CPU/GPU utilisation and memory as `system/*` metrics on every run started from now on (also in
    worker processes: MLflow keeps the switch in the environment). $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    still wins over the interval set here; MLflow's start/stop messages are kept off the console, and
    its GPU monitor's warnings are shown once each. GPU metrics need nvidia-ml-py (requirements.txt)
    and a driver; without either MLflow skips them silently (docs/mlflow-run.md)."""
    mlflow.enable_system_metrics_logging()
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    gpu_logger = logging.getLogger(GPU_MONITOR_LOGGER)
    if not any(isinstance(f, FirstTimeOnly) for f in gpu_logger.filters):
        gpu_logger.addFilter(FirstTimeOnly())


@mlflow_call()
def describe(text: str, run_id: Optional[str] = None) -> None:
    """Set the run's description (default: the active run)."""
    mlflow.MlflowClient().set_tag(run_id or mlflow.active_run().info.run_id, NOTE_TAG, text[:5000])


def _fmt(value: Any) -> str:
    return "none" if value is None else str(value)


def cnn_description(p: Mapping[str, Any]) -> str:
    """One line for a CIFAR configuration's run, from its params."""
    arch = f"{p['model_type']} K={p['filters_per_layer']} L={p['layers_per_block']} P={p['pool_every']} " \
           f"H={p['hidden_dims']}"
    opt = f"{p.get('optimizer', 'adam')} lr={p['lr']} reg={p['reg']}"
    epochs = f"{p['epochs']} epoch{'s' * (str(p['epochs']) != '1')}"
    test = p.get("n_test") or "10000"  # a run without n_test tests on the whole test set
    return (f"{arch}; {opt}; batch {p['bs_train']}, up to {epochs} (early stop {_fmt(p['early_stopping'])}, "
            f"batches/epoch {_fmt(p['batches']) if p['batches'] else 'all'}); {p.get('n_train', '?')} train / "
            f"{p.get('n_valid', '?')} valid / {test} test images; seed {p['seed']}")


def mlp_description(p: Mapping[str, Any]) -> str:
    """One line for a Part 1 MLP run, from its params."""
    if "depth" in p:
        arch = f"MLP depth {p['depth']} x width {p['width']}, {p.get('activation', 'relu')}"
    else:
        arch = f"MLP {p['n_layers']} x {p['hidden_dims']}, {p['activation']}"
    opt = p["optimizer"]
    return (f"{arch}; {opt['name']} lr={opt['lr']}; {p['epochs']} epochs, batch {p['batch_size']}; "
            f"{p['n_train']}/{p['n_valid']}/{p['n_test']} train/valid/test points; seed {p['seed']}; "
            f"threshold chosen on the validation ROC")


def grid_description(grid: str, n_configurations: int, what: str) -> str:
    return f"Grid {grid}: {n_configurations} configurations ({what}), one child run each; metrics children_* " \
           f"summarise the finished children."


@mlflow_call()
def log_roc_table(fpr: Sequence[float], tpr: Sequence[float], thresholds: Sequence[float], chosen: int,
                  artifact_file: str = "tables/roc_valid.json") -> None:
    """Every ROC point of the validation split, the chosen threshold marked."""
    finite = [i for i, t in enumerate(thresholds) if t == t and abs(t) != float("inf")]
    mlflow.log_table({"threshold": [float(thresholds[i]) for i in finite], "fpr": [float(fpr[i]) for i in finite],
                      "tpr": [float(tpr[i]) for i in finite], "chosen": [i == chosen for i in finite]},
                     artifact_file)


@mlflow_call()
def log_summary_table(row: Mapping[str, Any], artifact_file: str = "tables/summary.json") -> None:
    """The run's final summary (configuration + final metrics) as a one-row table."""
    mlflow.log_table({k: [v if isinstance(v, (int, float, str, bool)) or v is None else str(v)]
                      for k, v in row.items()}, artifact_file)
