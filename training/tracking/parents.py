"""A grid parent's own metrics and table, so the UI's chart view and table work on parents.

After each child FINISHES its parent gets `children_best_<key>`, `children_mean_<key>` and
`children_finished` (step = the number finished), computed from the store, so it is right
whichever process (a worker, a `mlflow run` job) finished the child; at the end of the grid a
`tables/configurations.json` table holds one row per finished child.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import mlflow
from mlflow.entities import Metric

from training.tracking.timing import mlflow_call


def finished_children(parent_run_id: str):
    """search_runs rows of the parent's FINISHED children."""
    exp_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
    return mlflow.search_runs([exp_id], output_format="pandas", max_results=50_000,
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                            f"attributes.status = 'FINISHED'")


@mlflow_call()
def summarise_parent(child_run_id: str, key: str = "test_acc") -> Optional[str]:
    """Refresh the summary metrics of `child_run_id`'s parent; returns the parent id (None: no parent)."""
    client = mlflow.MlflowClient()
    parent = client.get_run(child_run_id).data.tags.get("mlflow.parentRunId")
    if parent is None:
        return None
    done = finished_children(parent)
    values = done[f"metrics.{key}"].dropna() if f"metrics.{key}" in done else []
    n, ts = len(done), int(time.time() * 1000)
    metrics = [Metric("children_finished", n, ts, n)]
    if len(values):
        metrics += [Metric(f"children_best_{key}", float(values.max()), ts, n),
                    Metric(f"children_mean_{key}", float(values.mean()), ts, n)]
    client.log_batch(parent, metrics=metrics)
    return parent


@mlflow_call()
def log_configuration_table(parent_run_id: str, params: Sequence[str], metrics: Sequence[str]) -> None:
    """One row per finished child: its name, the given params and metrics (`tables/configurations.json`)."""
    done = finished_children(parent_run_id)
    if not len(done):
        return
    cols = {"run": "tags.mlflow.runName", **{p: f"params.{p}" for p in params}, **{m: f"metrics.{m}" for m in metrics}}
    table = {name: [None if v != v else v for v in done[col]] if col in done else [None] * len(done)
             for name, col in cols.items()}
    mlflow.MlflowClient().log_table(parent_run_id, table, "tables/configurations.json")
