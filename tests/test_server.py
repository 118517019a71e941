"""The team tracking server and parallel grids, against real `mlflow server` processes on free
127.0.0.1 ports (started and stopped here, no mocks) and small generated CIFAR-shaped data.

Each server start costs 10-20 s on a busy 2-core machine, so each test starts at most one."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_fixtures import fake_cifar10  # noqa: F401
from conftest import subprocess_env
from entrypoints.cifar import cli
from training.tracking import runs as tracking
from training.grids.expand import run_grid
from training.grids.parallel import plan_devices
from training.tracking.server import free_port, is_local_store, server_command, start_server

EPOCHS = 2
METRIC_KEYS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "epoch_time_s")


def tiny_grid(tmp_path: Path) -> Path:
    """Three small plain CNNs (K=[8], L=1..3): the parallel path's cost is start-up, not training."""
    path = tmp_path / "tiny_grid.yaml"
    path.write_text(yaml.safe_dump(dict(base="cifar_plain", run_name="exp1_1", model_type="cnn",
                                        grid=[dict(K=[8], L=[1, 2, 3])], early_stopping=None, hidden_dims=[16])))
    return path


def tiny_overrides(data_dir: Path, tmp_path: Path, epochs: int = EPOCHS) -> dict:
    return dict(epochs=epochs, bs_train=32, out_dir=str(tmp_path / "results"),
                options=dict(n_train=96, n_valid=32, allow_small=True, log_model=False, data_dir=str(data_dir),
                             checkpoint_dir=str(tmp_path / "checkpoints")))


def assert_grid_complete(grid: str, names: list, epochs: int = EPOCHS) -> None:
    """Every configuration exactly once, FINISHED, a child of the one parent, contiguous histories."""
    runs = tracking.find_runs(f"tags.grid = '{grid}'")
    parents = runs[runs["tags.archlab.role"] == "parent"]
    children = runs[runs["tags.archlab.role"] == "child"]
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert sorted(children["tags.mlflow.runName"]) == sorted(names)  # once each
    assert children["status"].eq("FINISHED").all()
    assert set(children["tags.mlflow.parentRunId"]) == {parents.run_id.iloc[0]}
    assert set(children["experiment_id"]) == {parents["experiment_id"].iloc[0]}
    client = MlflowClient()
    for run_id in children.run_id:
        for key in METRIC_KEYS:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (run_id, key, steps)  # no gaps, no duplicates


def test_helpers_plan_devices_and_server_command():
    assert plan_devices(3, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0"]
    assert plan_devices(2, None) == [None, None]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        plan_devices(0, None)
    cmd = server_command("sqlite:////x/mlflow.db", "127.0.0.1", 5000, artifacts_destination="s3://b/p", auth=True)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://b/p"
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert is_local_store("sqlite:///mlflow.db") and is_local_store("file:///m") and is_local_store("./mlruns")
    assert not is_local_store("http://127.0.0.1:5000") and not is_local_store("postgresql://u@h/db")
    assert not is_local_store("databricks") and not is_local_store("databricks://profile")


def test_unreachable_server_is_a_one_line_error_before_any_training(mlflow_store, fake_cifar10, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = sorted(p.name for p in tmp_path.iterdir())
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, ["grid", "exp1_3", "--tracking-uri", url, "--workers", "2", "--devices", "cpu,cpu",
                                      "--epochs", "1",
                                      "--n-train", "64", "--n-valid", "32", "--allow-small", "true",
                                      "--data-dir", str(fake_cifar10), "--device", "cpu"])
    elapsed = time.monotonic() - t0
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output  # click's one-line error
    assert url in result.output and "not reachable" in result.output
    assert elapsed < 10, elapsed
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no results, checkpoints or store written
    assert "Starting cnn_experiment" not in result.output


def test_parallel_grid_against_a_server_logs_each_configuration_once(mlflow_store, fake_cifar10, tmp_path,
                                                                     monkeypatch, capsys):
    with start_server(f"sqlite:///{tmp_path / 'server.db'}", artifacts_destination=str(tmp_path / "artifacts"),
                      state_dir=tmp_path / "server-state") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        tracking.configure_tracking(server.uri)
        grid = str(tiny_grid(tmp_path))
        outcome = run_grid(grid, tiny_overrides(fake_cifar10, tmp_path), workers=2)
        names = [f"exp1_1_L{L}_K8" for L in (1, 2, 3)]
        assert sorted(outcome["written"]) == names and not outcome["skipped"] and not outcome["diverged"]
        assert "3 configurations in 2 worker processes" in capsys.readouterr().out
        assert_grid_complete(grid, names)
        # artifacts went through the server's proxy into its destination
        child = tracking.find_runs("attributes.run_name = 'exp1_1_L2_K8'").iloc[0]
        assert child["artifact_uri"].startswith("mlflow-artifacts:")
        assert [f.path for f in MlflowClient().list_artifacts(child.run_id, "results")] == ["results/exp1_1_L2_K8.json"]
        assert list((tmp_path / "artifacts").rglob("exp1_1_L2_K8.json"))

        # a rerun (here in-process: a second pool start-up would double the test) skips them all
        assert sorted(run_grid(grid, tiny_overrides(fake_cifar10, tmp_path))["skipped"]) == names
        assert len(tracking.find_runs(f"tags.grid = '{grid}' and tags.`archlab.role` = 'child'")) == 3
    assert server.process.poll() is not None and not server.healthy()


def test_parallel_grid_on_sqlite_goes_through_a_private_server(mlflow_store, fake_cifar10, tmp_path, capsys):
    """workers=2 on a plain SQLite store: a private server owns the file while the workers write,
    then stops; the runs are in the SQLite file and the artifacts in ./mlruns, as without workers."""
    grid = str(tiny_grid(tmp_path))
    outcome = run_grid(grid, tiny_overrides(fake_cifar10, tmp_path, epochs=1), workers=2, devices=["cpu", "cpu"])
    out = capsys.readouterr().out
    names = [f"exp1_1_L{L}_K8" for L in (1, 2, 3)]
    assert sorted(outcome["written"]) == names
    assert "starting a private MLflow server" in out and "Private MLflow server stopped" in out
    assert "database is locked" not in out and "on cpu, cpu" in out
    private_uri = out.split("Private MLflow server at ")[1].split()[0]
    with pytest.raises(OSError):
        urllib.request.urlopen(private_uri + "/health", timeout=2)  # stopped
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_store and mlflow.get_tracking_uri() == mlflow_store
    assert_grid_complete(grid, names, epochs=1)
    child = tracking.find_runs("attributes.run_name = 'exp1_1_L1_K8'").iloc[0]
    assert child["artifact_uri"].startswith(str(tmp_path / "mlruns"))  # where a direct SQLite run puts them
    assert child["tags.archlab.device"] == "cpu"


def test_grid_cli_rejects_bad_worker_options(mlflow_store, fake_cifar10, tmp_path):
    for args, message in ((["--workers", "-1"], "must be a positive integer"),
                          (["--devices", "cpu,tpu:0"], "'tpu:0' is not a device"),
                          (["--devices", "cuda:0"] if not __import__("torch").cuda.is_available() else
                           ["--devices", "cuda:99"], "cuda")):
        result = CliRunner().invoke(cli, ["grid", "exp1_3", "--data-dir", str(fake_cifar10)] + args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert len(tracking.find_runs("")) == 0 and not (tmp_path / "checkpoints").exists()


def _rest(uri: str, path: str, body: dict, auth=None) -> int:
    req = urllib.request.Request(uri + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_server_cli_with_auth_refuses_anonymous_writes_and_accepts_the_admin(tmp_path):
    import flask_wtf  # noqa: F401  (declared in requirements.txt: the auth app needs it)
    port, password = free_port(), "archlab-test-admin-pw"
    env = subprocess_env("")
    env.pop("MLFLOW_TRACKING_URI")
    env.update(MLFLOW_AUTH_ADMIN_PASSWORD=password)
    env.pop("MLFLOW_FLASK_SERVER_SECRET_KEY", None)
    env.pop("MLFLOW_AUTH_CONFIG_PATH", None)
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.server", "--port", str(port), "--auth",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'team.db'}",
                             "--state-dir", str(tmp_path / "state")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops the server" in line:
                break
        out = "".join(lines)
        uri = f"http://127.0.0.1:{port}"
        assert f"export MLFLOW_TRACKING_URI={uri}" in out and "MLFLOW_TRACKING_USERNAME=admin" in out, out
        assert "(proxied)" in out and str(tmp_path / "mlartifacts") in out
        tracking.configure_tracking(uri)  # /health stays open, so clients still fail fast / pass fast
        create = "/api/2.0/mlflow/experiments/create"
        assert _rest(uri, create, {"name": "anon"}) == 401
        # a grid command without credentials: one line saying what to set, not a traceback (issue #19, case 13)
        refused = CliRunner().invoke(cli, ["grid", "test_run", "--tracking-uri", uri])
        assert refused.exit_code == 1 and refused.exception is None or isinstance(refused.exception, SystemExit)
        assert f"Error: the tracking server {uri} refused the request (HTTP 401): it needs credentials; export " \
               f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in refused.output, refused.output
        assert _rest(uri, create, {"name": "wrong"}, auth=("admin", "not-the-password")) == 401
        assert _rest(uri, create, {"name": "team"}, auth=("admin", password)) == 200
        # the Python client with the admin's credentials in the environment
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        try:
            assert MlflowClient(uri).get_experiment_by_name("team") is not None
        finally:
            for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(var, None)
        assert (tmp_path / "state" / "basic_auth.db").exists() and not (tmp_path / "basic_auth.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + proc.stdout.read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
