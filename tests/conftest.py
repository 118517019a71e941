"""Shared fixtures: a real, temporary MLflow sqlite store per test (no mocks)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import matplotlib
import mlflow
import pytest

matplotlib.use("Agg")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store in tmp_path; the test runs with tmp_path as CWD so nothing
    (mlflow.db, artifacts, results) lands in the project folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "ARCHLAB_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def create_store(uri: Optional[str] = None) -> None:
    """Create (and migrate) the tracking store now (default: the current one). A test that polls a
    fresh SQLite store beside a subprocess would otherwise race that process's first migration of
    the file ("No such index")."""
    mlflow.MlflowClient(uri).search_experiments()


def subprocess_env(tracking_uri: str) -> dict:
    """Environment for running an entry point as a real subprocess from the project root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
    # `mlflow run --env-manager local` starts `python` from PATH: make it this interpreter.
    path = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PYTHONPATH=str(PROJECT_ROOT), PATH=path)
    return env


def process_cmdline(pid: int) -> str:
    """A process's command line from /proc ('' once it is gone): how kill tests tell workers and servers apart."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
