"""Fault case: SIGKILL of one worker process of a parallel grid (`workers=2`, a SQLite store, so the
private-MLflow-server path), then a rerun resumes. No mocks: the grid runs as a real subprocess, the
test finds the worker that holds the lock of the configuration it kills (via /proc/locks) and sends
it SIGKILL; the driver must end on its own, with a clear message, and the rerun must finish every
configuration exactly once, resuming the killed run (same run id) with contiguous metric steps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cifar_fixtures import write_fake_cifar10
from conftest import PROJECT_ROOT, create_store, process_cmdline, subprocess_env
from training.tracking import runs as tracking

pytestmark = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc")

GRID_SCRIPT = """
import sys, mlflow
sys.path.insert(0, {root!r})
mlflow.set_tracking_uri({uri!r})
from training.grids.expand import run_grid
run_grid({config!r}, {overrides!r}, workers={workers})
"""
CONFIGS = ["exp1_1_L1_K32", "exp1_1_L2_K32"]
EPOCHS = 7


def _children(pid: int) -> list:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids




def _worker_pids(driver: int) -> list:
    """The pool's worker processes: the driver's children started by multiprocessing's spawn
    (not its resource tracker, not the private mlflow server)."""
    return [p for p in _children(driver) if "spawn_main" in process_cmdline(p)]


def _lock_holder(lock_file: Path) -> int | None:
    """The pid holding the flock on lock_file (a worker holds its configuration's lock while it trains)."""
    try:
        inode = lock_file.stat().st_ino
    except OSError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if int(fields[5].split(":")[-1]) == inode:
            return int(fields[4])
    return None


def _steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> list:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run_in_own_session(script: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run, but in its own process group, all of which dies on timeout: the grid driver
    starts a private mlflow server, which a plain run(timeout=...) would leave orphaned."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the rerun did not finish in {timeout} s:\n" + (out + err)[-3000:])
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigkill_of_a_parallel_worker_then_rerun_resumes(mlflow_store, tmp_path):
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=200, n_test=100)
    config = tmp_path / "worker_kill_grid.yaml"
    config.write_text(yaml.safe_dump(dict(base="cifar_plain", run_name="exp1_1", model_type="cnn",
                                          grid=[dict(K=[32], L=[1, 2])], early_stopping=None, hidden_dims=[32])))
    checkpoints = tmp_path / "checkpoints"
    overrides = dict(epochs=EPOCHS, bs_train=16, device="cpu", out_dir=str(tmp_path / "results"),
                     options=dict(n_train=800, n_valid=100, allow_small=True, log_model=False, data_dir=str(root),
                                  checkpoint_dir=str(checkpoints)))
    script = GRID_SCRIPT.format(root=str(PROJECT_ROOT), uri=mlflow_store, config=str(config), overrides=overrides,
                                workers=2)
    client = MlflowClient(mlflow_store)  # reads the SQLite file the private server writes
    create_store(mlflow_store)
    log = open(tmp_path / "driver.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(mlflow_store),
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed_label = killed_run = victim = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and victim is None:
            for label in CONFIGS:
                runs = tracking.find_runs(f"attributes.run_name = '{label}'")
                if not len(runs) or len(_steps(client, runs.run_id.iloc[0])) < 2:
                    continue
                holder = _lock_holder(checkpoints / ".locks" / f"{label}.lock")
                workers = _worker_pids(proc.pid)
                assert len(workers) == 2, (workers, [process_cmdline(p) for p in _children(proc.pid)])
                assert holder in workers, (holder, workers)  # the lock is held by the worker training it
                n_done = len(_steps(client, runs.run_id.iloc[0]))
                assert n_done < EPOCHS - 1, "training ran too fast to kill a worker mid-configuration"
                os.kill(holder, signal.SIGKILL)  # the worker only, never the driver
                killed_label, killed_run, victim, pool = label, runs.run_id.iloc[0], holder, workers
                print(f"killed worker {holder} training {label} after {n_done} epochs")
                break
            time.sleep(0.1)
        assert victim is not None, "no configuration reached epoch 2: " + (
            Path(log.name).read_text()[-3000:] if proc.poll() is not None else "still running after 120 s")
        try:
            rc = proc.wait(timeout=60)  # the driver must notice the dead worker, not hang on its pool
        except subprocess.TimeoutExpired:
            pytest.fail("the driver hung after a worker was killed:\n" + Path(log.name).read_text()[-3000:])
    finally:
        _kill_tree(proc)
        log.close()
    out = Path(log.name).read_text()
    assert rc != 0, out[-3000:]
    assert "worker process died" in out and "rerun the same grid command to resume" in out, out[-3000:]
    assert "BrokenProcessPool" in out  # the pool's own error, kept as the cause
    for pid in pool:  # the pool stopped the surviving worker too: no orphan keeps training
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", pid
    assert mlflow.get_run(killed_run).info.status == "RUNNING"  # a SIGKILL leaves no chance to end it
    assert (checkpoints / ".locks" / f"{killed_label}.lock").exists()  # the lock file stays; its flock died
    assert _lock_holder(checkpoints / ".locks" / f"{killed_label}.lock") is None
    parents = tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'parent'")
    assert len(parents) == 1 and parents["status"].iloc[0] == "FAILED"  # the driver ended its run with the error

    rerun = _run_in_own_session(script, cwd=tmp_path, env=subprocess_env(mlflow_store), timeout=180)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert f"Resuming MLflow run {killed_run} of {killed_label}" in rerun.stdout, rerun.stdout[-3000:]
    assert "another process is training it" not in rerun.stdout  # no stale lock blocks the rerun
    children = tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'child'")
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["tags.mlflow.runName"]) == CONFIGS, children[["tags.mlflow.runName", "status"]]
    assert killed_run in set(finished.run_id)  # resumed, not trained again in a new run
    for run_id in finished.run_id:
        for key in ("train_loss", "valid_acc", "lr", "epoch_time_s", "best_valid_acc"):
            assert _steps(client, run_id, key) == list(range(1, EPOCHS + 1)), (run_id, key)  # no gap, no duplicate
    # the rerun continues the killed grid's parent: one parent, FINISHED, every child under it
    parents = tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'parent'")
    assert list(parents["status"]) == ["FINISHED"], parents[["run_id", "status"]]
    assert "Continuing the grid's earlier parent run" in rerun.stdout
    assert set(children["tags.mlflow.parentRunId"]) == {parents.run_id.iloc[0]}
    tags = client.get_run(parents.run_id.iloc[0]).data.tags
    assert "worker process died" in tags["archlab.previous_error"] and "archlab.error" not in tags
    assert sorted(p.stem for p in (tmp_path / "results").glob("*.json")) == CONFIGS
