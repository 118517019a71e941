"""The run lifecycle under real signals (issue #19): a sequential grid is killed by SIGTERM, SIGINT
or SIGKILL in epoch 2+ of its first configuration, then rerun.

No mocks: the grid runs as a real subprocess on a temp SQLite store and tiny fake CIFAR data; the
test waits until the first configuration has logged an epoch, sends the signal, checks what the
store says, and reruns. Expected (the state machine in training.tracking.lifecycle):
- SIGTERM / SIGINT: parent and child end KILLED at once, the signal named in `archlab.end_reason`;
- SIGKILL: both stay RUNNING (nothing can run), and the rerun recognises them as stale;
- the rerun continues the same parent and the same child (case 3: never a second parent), puts the
  configuration that had not started yet in the grid's experiment, under that parent (case 1), and
  does so although `device` and `out_dir` changed (case 4: execution-only values are tags).
"""
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
from training.tracking import lifecycle
from training.tracking import runs as tracking

pytestmark = pytest.mark.slow

GRID_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from training.grids.expand import run_grid
run_grid({config!r}, {overrides!r})
"""
FIRST, SECOND = "exp1_1_L1_K32", "exp1_1_L1_K8"
EPOCHS = 5


def grid_setup(tmp_path: Path, n_train: int = 800) -> tuple:
    """A two-configuration grid file (the first one slower) and its overrides on fake data."""
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=max(200, n_train // 5 + 20), n_test=50)
    config = tmp_path / "life_grid.yaml"
    config.write_text(yaml.safe_dump(dict(base="cifar_plain", run_name="exp1_1", model_type="cnn",
                                          grid=[dict(K=[32], L=[1]), dict(K=[8], L=[1])], early_stopping=None,
                                          hidden_dims=[32])))
    overrides = dict(epochs=EPOCHS, bs_train=16, device="cpu", out_dir=str(tmp_path / "results"),
                     options=dict(n_train=n_train, n_valid=50, allow_small=True, log_model=False, data_dir=str(root),
                                  checkpoint_dir=str(tmp_path / "checkpoints")))
    return str(config), overrides


def grid_env(store: str, tmp_path: Path) -> dict:
    return {**subprocess_env(store), "ARCHLAB_LOCK_DIR": str(tmp_path / "locks")}


def start_grid(store: str, tmp_path: Path, config: str, overrides: dict, log_name: str = "grid.log"):
    create_store(store)
    script = GRID_SCRIPT.format(root=str(PROJECT_ROOT), config=config, overrides=overrides)
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=grid_env(store, tmp_path),
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_grid_to_end(store: str, tmp_path: Path, config: str, overrides: dict) -> subprocess.CompletedProcess:
    script = GRID_SCRIPT.format(root=str(PROJECT_ROOT), config=config, overrides=overrides)
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=grid_env(store, tmp_path),
                          capture_output=True, text=True, timeout=600)


def steps(run_id: str, key: str = "train_loss") -> list:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def runs_named(name: str):
    return tracking.find_runs(f"attributes.run_name = '{name}'")


def wait_for_epochs(proc, name: str, n: int = 1, timeout_s: float = 300) -> str:
    """Poll the store until run `name` has logged `n` epochs; returns its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = runs_named(name)
        if len(found) and len(steps(found.run_id.iloc[0])) >= n:
            return found.run_id.iloc[0]
        time.sleep(0.1)
    pytest.fail(f"{name} never logged {n} epoch(s) (grid exit code {proc.poll()})")


def log_text(tmp_path: Path, name: str = "grid.log") -> str:
    return (tmp_path / name).read_text()[-3000:]


def grid_parents(config: str):
    return tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'parent'")


def kill_in_epoch_two(store: str, tmp_path: Path, config: str, overrides: dict, sig: int) -> tuple:
    """Start the grid, send `sig` once its first configuration logged an epoch; (parent id, child id)."""
    proc = start_grid(store, tmp_path, config, overrides)
    try:
        child = wait_for_epochs(proc, FIRST)
        os.kill(proc.pid, sig)
        proc.wait(timeout=120)  # SIGTERM/SIGINT: the runs are closed before the process leaves
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(steps(child)) < EPOCHS and not len(runs_named(SECOND)), \
        "training ran too fast to be killed mid-configuration:\n" + log_text(tmp_path)
    parents = grid_parents(config)
    assert len(parents) == 1, parents
    return parents.run_id.iloc[0], child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_killed_grid_ends_true_and_its_rerun_continues_it(mlflow_store, tmp_path, sig):
    config, overrides = grid_setup(tmp_path)
    parent, child = kill_in_epoch_two(mlflow_store, tmp_path, config, overrides, sig)
    client = MlflowClient()
    for run_id in (parent, child):
        run = client.get_run(run_id)
        if sig == signal.SIGKILL:  # nothing can run on a SIGKILL: left RUNNING, its owner dead
            assert run.info.status == "RUNNING" and not lifecycle.owner_alive(run.data.tags)
        else:
            assert run.info.status == "KILLED", (run_id, run.info.status, log_text(tmp_path))
            assert signal.Signals(sig).name in run.data.tags[lifecycle.END_REASON_TAG]

    # the rerun: another device spelling and another out_dir (execution-only: tags, not params)
    rerun = run_grid_to_end(mlflow_store, tmp_path, config, {**overrides, "device": "cpu:0",
                                                             "out_dir": str(tmp_path / "results2")})
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert f"Continuing the grid's earlier parent run {parent}" in rerun.stdout
    assert f"Resuming MLflow run {child} of {FIRST}" in rerun.stdout
    parents = grid_parents(config)
    assert list(parents.run_id) == [parent] and list(parents.status) == ["FINISHED"]  # one parent per grid
    archlab = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
    children = tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'child'")
    assert sorted(children["tags.mlflow.runName"]) == sorted([FIRST, SECOND])  # each once
    assert set(children.status) == {"FINISHED"} and set(children.experiment_id) == {archlab}
    assert set(children["tags.mlflow.parentRunId"]) == {parent}
    assert child in set(children.run_id)
    for run_id in children.run_id:
        for key in ("train_loss", "valid_acc", "best_valid_acc"):
            assert steps(run_id, key) == list(range(1, EPOCHS + 1)), (run_id, key)
        assert len(client.get_metric_history(run_id, "test_acc")) == 1
    resumed = client.get_run(child)
    assert "device" not in resumed.data.params and "out_dir" not in resumed.data.params
    assert resumed.data.tags["archlab.out_dir"] == str(tmp_path / "results2")
    assert lifecycle.END_REASON_TAG not in resumed.data.tags and "archlab.error" not in resumed.data.tags
    if sig != signal.SIGKILL:
        assert signal.Signals(sig).name in resumed.data.tags["archlab.previous_end_reason"]


def test_a_configuration_killed_before_its_first_checkpoint_is_continued_not_duplicated(mlflow_store, tmp_path):
    """Case 8: SIGKILL after the child run opened, before its first epoch saved a training state:
    the rerun trains it in that same run (from scratch), never beside a RUNNING duplicate."""
    config, overrides = grid_setup(tmp_path, n_train=1600)  # a long first epoch: time to kill inside it
    overrides["epochs"] = 2
    proc = start_grid(mlflow_store, tmp_path, config, overrides)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not len(runs_named(FIRST)):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = runs_named(FIRST)
    assert len(killed) == 1 and not steps(killed.run_id.iloc[0]), log_text(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("*.state")), "killed too late: a training state exists"
    rerun = run_grid_to_end(mlflow_store, tmp_path, config, overrides)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    runs = runs_named(FIRST)
    assert list(runs.run_id) == [killed.run_id.iloc[0]] and list(runs.status) == ["FINISHED"]
    assert steps(runs.run_id.iloc[0]) == [1, 2]


def descendants(pid: int) -> set:
    """Every live process below `pid` (workers, the watchdog, mlflow server, uvicorn)."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [k for k in kids if k not in found]
            found.update(kids)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False




def wait_all_gone(pids: set, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    survivors = {p: process_cmdline(p) for p in pids if alive(p)}
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"{what} left these processes running: {survivors}"


PARALLEL_SCRIPT = GRID_SCRIPT.replace("{overrides!r})", "{overrides!r}, workers=2)")


def test_kill_9_of_a_parallel_grids_driver_takes_its_workers_and_server_along(mlflow_store, tmp_path):
    """Case 2: the workers (PR_SET_PDEATHSIG) and the private mlflow server (its watchdog) die with
    a SIGKILLed driver, the server's temp folder is removed, and a rerun finishes the grid."""
    config, overrides = grid_setup(tmp_path)
    (tmp_path / "tmp").mkdir()
    env = {**grid_env(mlflow_store, tmp_path), "TMPDIR": str(tmp_path / "tmp")}
    script = PARALLEL_SCRIPT.format(root=str(PROJECT_ROOT), config=config, overrides=overrides)
    create_store(mlflow_store)
    log = open(tmp_path / "grid.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_epochs(proc, FIRST)
        family = descendants(proc.pid)
        assert sum("spawn_main" in process_cmdline(p) for p in family) == 2, {p: process_cmdline(p) for p in family}
        assert any(" server " in process_cmdline(p) and "mlflow" in process_cmdline(p) for p in family)
        assert list((tmp_path / "tmp").glob("archlab-grid-server-*"))
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
        proc.wait()
        wait_all_gone(family, "a SIGKILLed grid driver")
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not list((tmp_path / "tmp").glob("archlab-grid-server-*")), "the private server's temp folder leaked"
    rerun = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600, start_new_session=True)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    parents = grid_parents(config)
    assert len(parents) == 1 and list(parents.status) == ["FINISHED"]
    children = tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'child'")
    assert sorted(children["tags.mlflow.runName"]) == sorted([FIRST, SECOND]) and set(children.status) == {"FINISHED"}
    assert not list((tmp_path / "tmp").glob("archlab-grid-server-*"))


def test_killing_the_server_entrypoints_group_stops_its_mlflow_server(tmp_path):
    """Case 2: `kill -9 -PGID` of `python -m entrypoints.server` also stops the mlflow server it runs."""
    import urllib.request

    from training.tracking.server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.server", "--port", str(port), "--backend-store-uri",
                             f"sqlite:///{tmp_path / 'team.db'}", "--state-dir", str(tmp_path / "state")],
                            cwd=PROJECT_ROOT, env=subprocess_env("unused"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # it prints once /health answers
            if "MLflow server up" in line:
                break
        assert proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            assert resp.status == 200
        family = descendants(proc.pid)
        assert any("mlflow" in process_cmdline(p) and " server " in process_cmdline(p) for p in family)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_all_gone(family, "a SIGKILLed entrypoints.server")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
