"""The run lifecycle (issue #19), the parts that need no kill mid-training: ownership and stale runs,
children in the grid's experiment, final metrics and model logged once, the per-store-and-grid
lock, and a full disk. Real temp SQLite stores, real processes and torch on tiny data; no mocks.
The kill-and-rerun cases are in test_lifecycle_kill.py."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_fixtures import fake_cifar10, write_fake_cifar10  # noqa: F401
from conftest import PROJECT_ROOT, create_store, subprocess_env
from training.tracking import lifecycle
from training.tracking import runs as tracking


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_owner_alive_knows_live_dead_and_foreign_owners():
    assert lifecycle.owner_alive(lifecycle.owner_tags())
    mine = lifecycle.owner_tags()
    assert not lifecycle.owner_alive({**mine, lifecycle.OWNER_PID_TAG: str(dead_pid())})
    assert not lifecycle.owner_alive({**mine, lifecycle.OWNER_PID_TAG: "1"})  # a live pid, another process's token
    assert not lifecycle.owner_alive({})  # a run from before owners were recorded
    elsewhere = {**mine, lifecycle.OWNER_HOST_TAG: "another-host"}
    assert lifecycle.owner_alive(elsewhere)  # a fresh heartbeat
    assert not lifecycle.owner_alive({**elsewhere, lifecycle.HEARTBEAT_TAG: f"{time.time() - 7 * 3600:.0f}"})


def test_a_resumed_parent_puts_new_children_in_its_own_experiment(mlflow_store):
    """Case 1: the continued parent is opened by run id; its new children must not fall back to
    experiment 0 (Default)."""
    with pytest.raises(KeyboardInterrupt):
        with tracking.open_run("grid", tags={"grid": "g"}, experiment="archlab") as parent:
            raise KeyboardInterrupt
    archlab = parent.info.experiment_id
    assert mlflow.get_run(parent.info.run_id).info.status == "KILLED"
    mlflow.set_experiment("Default")  # a fresh process: no experiment chosen yet
    with tracking.open_run("grid", run_id=parent.info.run_id):
        with tracking.open_run("child") as child:
            pass
    run = mlflow.get_run(child.info.run_id)
    assert run.info.experiment_id == archlab and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    tags = mlflow.get_run(parent.info.run_id).data.tags
    assert "SIGINT" in tags["archlab.previous_end_reason"] and lifecycle.END_REASON_TAG not in tags


def test_a_stale_running_parent_is_continued_and_others_closed(mlflow_store):
    """Case 3 (SIGKILL): parents left RUNNING by dead owners: the newest is continued, the older
    one is closed KILLED with the reason; a parent whose owner lives refuses the rerun."""
    from training.grids.expand import expand_grid, grid_parent_run, load_grid_config

    cfg = load_grid_config("test_run")
    runs = expand_grid(cfg)
    client = MlflowClient()
    ids = []
    for _ in range(2):  # two finished parents, then both "left RUNNING by a SIGKILL"
        with grid_parent_run("test_run", cfg, runs) as parent:
            ids.append(parent.info.run_id)
    for run_id in ids:
        client.set_terminated(run_id, "RUNNING")
        client.set_tag(run_id, lifecycle.OWNER_PID_TAG, str(dead_pid()))
    with grid_parent_run("test_run", cfg, runs) as rerun:
        pass
    assert rerun.info.run_id == ids[1]
    old = client.get_run(ids[0])
    assert old.info.status == "KILLED" and "died without ending it" in old.data.tags[lifecycle.END_REASON_TAG]
    assert client.get_run(ids[1]).info.status == "FINISHED"
    client.set_terminated(ids[1], "RUNNING")  # "owned" by a live process (this one, from another host's view)
    client.set_tag(ids[1], lifecycle.OWNER_PID_TAG, "1")
    client.set_tag(ids[1], lifecycle.OWNER_HOST_TAG, "another-host")
    with pytest.raises(lifecycle.RunBusyError, match=r"grid test_run is already running in pid 1 on another-host"):
        with grid_parent_run("test_run", cfg, runs):
            pass


def test_final_metrics_and_model_are_logged_once_after_a_kill_mid_logging(mlflow_store):
    """Case 7: a run killed during its final logging holds some final metrics and a PENDING model;
    the resumed run's final logging adds only what is missing and leaves one READY model."""
    model = torch.nn.Linear(4, 2)
    example = torch.zeros(1, 4).numpy()
    with tracking.open_run("final") as run:
        tracking.log_final_metrics({"test_acc": 50.0}, step=3)
        pending = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        mlflow.end_run("KILLED")  # what the kill left
    with tracking.open_run("final", run_id=run.info.run_id):
        tracking.log_final_metrics({"test_acc": 50.0, "n_params": 10}, step=3)
        tracking.log_torch_model(model, example)
        tracking.log_torch_model(model, example)  # a second resume: nothing new
    client = MlflowClient()
    for key in ("test_acc", "n_params"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == \
            [(3, 50.0 if key == "test_acc" else 10.0)]
    models = mlflow.search_logged_models(output_format="list", filter_string=f"source_run_id = '{run.info.run_id}'",
                                         experiment_ids=[run.info.experiment_id])
    assert [str(m.status) for m in models] == ["READY"] and models[0].model_id != pending.model_id


GRID_CLI = ["grid", "test_run", "--n-train", "800", "--n-valid", "50", "--allow-small", "true", "--epochs", "6",
            "--bs-train", "16", "--device", "cpu"]


def test_a_second_identical_grid_is_refused_while_the_first_runs(mlflow_store, tmp_path, monkeypatch):
    """Case 6: two identical sequential grid commands on one store: the second stops at once with
    one line naming the first one's pid and host, and touches nothing."""
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=200, n_test=50)
    args = GRID_CLI + ["--data-dir", str(root)]
    monkeypatch.setenv("ARCHLAB_LOCK_DIR", str(tmp_path / "locks"))
    env = {**subprocess_env(mlflow_store), "ARCHLAB_LOCK_DIR": str(tmp_path / "locks")}
    create_store()
    first = subprocess.Popen([sys.executable, "-m", "entrypoints.cifar", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if len(tracking.find_runs("tags.`archlab.role` = 'child'")):
                break
            time.sleep(0.2)
        assert first.poll() is None, "the first grid ended before the second started"
        result = CliRunner().invoke(__import__("entrypoints.cifar", fromlist=["cli"]).cli, args)
        assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
        assert f"Error: grid test_run is already running on this store in pid {first.pid} on " \
               f"{socket.gethostname()}" in result.output, result.output
        assert len(tracking.find_runs("tags.`archlab.role` = 'parent'")) == 1
    finally:
        first.kill()
        first.wait()


RUN_EXP = """
import resource, sys
sys.path.insert(0, {root!r})
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from entrypoints.cifar import cli
cli({args!r})
"""


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(mlflow_store, fake_cifar10, tmp_path):
    """Case 10: a checkpoint that cannot be written (here: a file-size limit, as `ulimit -f`) stops
    the run FAILED with one line, and no `*.tmp<pid>` file is left in checkpoints/."""
    limit = 6 * 2**20  # the store stays below it; the 33 MB checkpoint of this model does not
    create_store()  # before the file-size limit applies
    args = ["run-exp", "-n", "full", "-K", "64", "-L", "1", "-P", "1", "-H", "512", "--epochs", "1",
            "--allow-small", "--n-train", "64", "--n-valid", "32", "--bs-train", "32", "--data-dir", str(fake_cifar10)]
    proc = subprocess.run([sys.executable, "-c", RUN_EXP.format(root=str(PROJECT_ROOT), limit=limit, args=args)],
                          cwd=tmp_path, env=subprocess_env(mlflow_store), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "Error: could not write checkpoint" in proc.stderr and "free space, then rerun" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]
    run = tracking.find_runs("attributes.run_name = 'full_L1_K64'")
    assert list(run.status) == ["FAILED"]
    assert "could not write checkpoint" in run["tags.archlab.end_reason"].iloc[0]


def project_run(client: MlflowClient, experiment_id: str, age_s: float, entry: str = "report", **tags) -> str:
    """A run as `mlflow run` leaves it when the environment build fails (mlflow/projects/utils.py
    _create_run: these tags and the -P params; backend/local.py: `mlflow.project.env` before the
    build; `mlflow.project.backend` only once the command runs), started `age_s` seconds ago."""
    tags = {"mlflow.user": "someone", "mlflow.source.name": str(PROJECT_ROOT), "mlflow.source.type": "PROJECT",
            "mlflow.project.entryPoint": entry, "mlflow.project.env": "virtualenv", **tags}
    run = client.create_run(experiment_id, start_time=int((time.time() - age_s) * 1000), tags=tags)
    client.log_param(run.info.run_id, "out", "reports")
    return run.info.run_id


def never_started_reason(run_id: str) -> str:
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    return run.data.tags[lifecycle.END_REASON_TAG]


def test_project_runs_whose_command_never_started_are_closed_by_the_next_command(mlflow_store, tmp_path):
    """Case 14: `mlflow run` runs older than ARCHLAB_STALE_AFTER_S that never reached their command
    (no `mlflow.project.backend` tag, no archlab owner, no metric) end FAILED with the reason, in
    every experiment, when the report (or any entry point) starts; a young one, one whose command
    ran, and one archlab owns stay RUNNING."""
    from analysis.report import cli as report_cli

    client, old = MlflowClient(), 7 * 3600
    other = client.create_experiment("other")
    dead = [project_run(client, "0", old), project_run(client, other, old, entry="exp1_1")]
    kept = [project_run(client, "0", 60),  # may still be building its environment
            project_run(client, "0", old, **{"mlflow.project.backend": "local"}),  # its command ran
            project_run(client, "0", old, **{**lifecycle.owner_tags(), lifecycle.OWNER_PID_TAG: str(dead_pid())})]
    result = CliRunner().invoke(report_cli, ["--out", str(tmp_path / "reports"), "--no-log-artifacts"])
    assert result.exit_code == 0, result.output
    for run_id in dead:
        assert never_started_reason(run_id) == f"{lifecycle.NEVER_STARTED}; env manager: virtualenv"
        assert f"Closed run {run_id}" in result.output
    assert [client.get_run(r).info.status for r in kept] == ["RUNNING"] * 3


def test_a_project_run_closed_too_early_ends_true_when_its_command_starts(mlflow_store, monkeypatch):
    """An environment build slower than ARCHLAB_STALE_AFTER_S: the sweep closed the run, then the
    command starts in it after all; the run ends FINISHED, the sweep's reason kept as previous."""
    client = MlflowClient()
    run_id = project_run(client, "0", 7 * 3600)
    assert lifecycle.close_never_started_project_runs() == [run_id]
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # what the launcher hands the command (get_run_env_vars)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    mlflow.set_experiment(experiment_id="0")  # a fresh process: no other experiment chosen before
    with tracking.open_run("report"):
        pass
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and lifecycle.END_REASON_TAG not in run.data.tags
    assert run.data.tags["archlab.previous_end_reason"].startswith(lifecycle.NEVER_STARTED)


def test_mlflow_run_whose_environment_cannot_be_built_is_closed_by_the_next_entry_point(mlflow_store, tmp_path,
                                                                                        monkeypatch):
    """Case 14 end to end: the real `mlflow run -e report --env-manager virtualenv` without pyenv
    (as offline: the build fails before the command) leaves its run RUNNING; the next entry point
    (Part 1's, once the run is older than ARCHLAB_STALE_AFTER_S) ends it FAILED with the reason."""
    from entrypoints.part1 import cli as part1_cli

    (tmp_path / "bin").mkdir()
    env = {**subprocess_env(mlflow_store), "PATH": str(tmp_path / "bin"), "MLFLOW_ENV_ROOT": str(tmp_path / "envs")}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "report",
                           "--env-manager", "virtualenv", "--experiment-name", "e2e-env"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    (run,) = mlflow.search_runs(experiment_names=["e2e-env"], output_format="list")
    assert run.info.status == "RUNNING" and "mlflow.project.backend" not in run.data.tags  # MLflow's gap
    monkeypatch.setenv("ARCHLAB_STALE_AFTER_S", "0")
    result = CliRunner().invoke(part1_cli, ["first-classifier", "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert never_started_reason(run.info.run_id) == f"{lifecycle.NEVER_STARTED}; env manager: virtualenv"
