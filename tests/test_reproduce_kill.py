"""`reproduce` killed (SIGKILL) mid-grid, then the same command again: it finishes only what is
missing, under the same runs. Real processes, a real sqlite store, the private server, 2 workers."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from mlflow import MlflowClient

from cifar_fixtures import fake_cifar10  # noqa: F401
from conftest import create_store
from test_part1_tracking import small_config
from training.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _command(part1, data, out):
    return [sys.executable, "-m", "entrypoints.reproduce", "--grids", "exp1_3,test_run", "--allow-cpu", "true",
            "--part1-config", str(part1), "--epochs", "2", "--bs-train", "32", "--n-train", "96", "--n-valid", "32",
            "--allow-small", "true", "--workers", "2", "--data-dir", str(data), "--out", str(out), "--device", "cpu"]


def _runs(client):
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def _configurations(runs):
    return [r for r in runs if r.data.tags.get("archlab.role") == "child" and r.data.tags.get("grid") != "mlp_grid"
            and r.data.tags.get("mlflow.runName", "").startswith(("exp1_3_", "test_run_"))]


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_grid_then_rerun_finishes_only_what_is_missing(mlflow_store, fake_cifar10, tmp_path):
    _, part1 = small_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}
    command = _command(part1, fake_cifar10, tmp_path / "reports")
    client = MlflowClient()
    create_store(mlflow_store)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: any(r.info.status == "FINISHED" for r in _configurations(_runs(client))), 300,
                      "a first configuration to finish")
        finally:
            family = psutil.Process(first.pid).children(recursive=True)  # workers, the private server
            first.send_signal(signal.SIGKILL)
            first.wait(30)
    # the workers and the server die with the driver (PR_SET_PDEATHSIG, the watchdog); a worker ends its
    # run KILLED if the server still answers, else leaves it RUNNING with a dead owner (stale): both resume
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"processes outlived their driver: {alive}"
    done_before = {r.data.tags["mlflow.runName"]: r.info.run_id
                   for r in _configurations(_runs(client)) if r.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 5, (tmp_path / "first.log").read_text()

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Continuing the earlier reproduce run" in second.stdout
    assert "Part 1 already finished in this reproduce run" in second.stdout

    runs = _runs(client)
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    by_name = {}
    for r in runs:
        by_name.setdefault(r.info.run_name, []).append(r)
    assert len(by_name["reproduce"]) == 1 and len(by_name["part1"]) == 1  # one reproduce run, Part 1 once
    top = by_name["reproduce"][0].info.run_id
    for grid in ("exp1_3", "test_run", "part1"):
        parents = [r for r in by_name[grid] if r.data.tags.get("archlab.role") == "parent"]
        assert len(parents) == 1 and parents[0].data.tags["mlflow.parentRunId"] == top  # one parent per grid
    configurations = _configurations(runs)
    names = sorted(r.info.run_name for r in configurations)
    assert names == sorted([f"exp1_3_L{L}_K64-128-256" for L in (1, 2, 3, 4)] + ["test_run_L1_K32-64"])
    for r in configurations:  # nothing trained twice: what finished before the kill is the same run
        if r.info.run_name in done_before:
            assert r.info.run_id == done_before[r.info.run_name]
