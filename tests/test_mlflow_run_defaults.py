"""Every MLproject entry point under the real `mlflow run . --env-manager local -e NAME` with its
defaults: the -P values given are only data (where it is, where outputs go) and size (how many
images, epochs, batches), never a recipe value. And inputs the project rejects leave a run that
says so (named `rejected-<entry>`, the reason as tag and description, FAILED)."""
import subprocess
import sys

import mlflow
import pytest
import yaml
from mlflow.projects._project_spec import load_project

from cifar_fixtures import fake_cifar10  # noqa: F401
from conftest import PROJECT_ROOT, subprocess_env
from training.config import load_config
from training.tracking.rejected import NOTE_TAG, REJECTED_TAG


def mlflow_run(entry: str, params: dict, tmp_path, store: str, experiment: str,
               project=PROJECT_ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry, "--env-manager", "local",
           "--experiment-name", experiment]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    env = {**subprocess_env(store), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}  # short runs get samples too
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def assert_quiet_console(proc: subprocess.CompletedProcess) -> None:
    """Not a TTY: one line per epoch, no progress-bar carriage returns, the validation pass named
    as such, no torch.export notes about the model's example input."""
    assert "\r" not in proc.stdout and "test_batch" not in proc.stdout
    assert "Downloading artifacts" not in proc.stdout + proc.stderr
    assert "specialized" not in proc.stderr


def project_runs(experiment: str):
    return mlflow.search_runs(experiment_names=[experiment])


def tiny_part1_config(tmp_path):
    """configs/part1.yaml with a 2 x 2 grid (the data is Part 1's own, fixed-size synthetic set)."""
    cfg = load_config("part1")
    cfg["mlp_grid"].update(depths=[1, 2], widths=[2, 8])
    path = tmp_path / "part1_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_part1_mlproject_epochs_defaults_are_the_configs():
    """MLflow logs each -P default as a param before the command starts; the runs then log the
    epochs they train, so the two must be the same number."""
    entries = load_project(str(PROJECT_ROOT))._entry_points
    cfg = load_config("part1")
    assert float(entries["first_classifier"].parameters["epochs"].default) == cfg["first_classifier"]["epochs"]
    assert float(entries["mlp_grid"].parameters["epochs"].default) == cfg["mlp_grid"]["epochs"]


@pytest.mark.parametrize("entry", ["first_classifier", "mlp_grid", "main"])
def test_part1_entry_points_run_with_their_defaults(mlflow_store, tmp_path, entry):
    proc = mlflow_run(entry, {"config": tiny_part1_config(tmp_path)}, tmp_path, mlflow_store, f"e2e-{entry}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = project_runs(f"e2e-{entry}")
    assert runs["status"].eq("FINISHED").all()
    project = runs[runs["tags.mlflow.project.entryPoint"] == entry]
    assert len(project) == 1
    if entry != "main":  # the project run is the trained model's run / the grid's parent
        assert project["params.epochs"].iloc[0] == str(load_config("part1")[entry]["epochs"])


def cifar_data(fake_cifar10, tmp_path) -> dict:
    return dict(data_dir=fake_cifar10, out_dir=tmp_path / "results", checkpoint_dir=tmp_path / "ckpt")


# Size only: tiny splits, and for the heavy grids one epoch of one small batch. n_test: the final
# test (exp2's is 6-view test-time augmentation of a 12-layer-per-stage net) on 50 of the 200 images.
ONE_BATCH = dict(epochs=1, batches=1, bs_train=32, n_test=50)


@pytest.mark.parametrize("entry,size", [
    ("test_run", dict(n_train=500, n_valid=50)),
    ("grid", dict(grid_name="test_run", n_train=500, n_valid=50)),  # grid_name: the one required parameter
    ("exp1_1", dict(n_train=128, n_valid=32, n_test=50, allow_small="true", epochs=2)),
    ("exp1_2", dict(n_train=64, n_valid=32, allow_small="true", **ONE_BATCH)),
    ("exp1_3", dict(n_train=64, n_valid=32, allow_small="true", **ONE_BATCH)),
    ("exp1_4", dict(n_train=64, n_valid=32, allow_small="true", **ONE_BATCH)),
    ("exp2", dict(n_train=64, n_valid=32, allow_small="true", **ONE_BATCH)),
])
def test_cifar_grid_entry_points_run_with_their_defaults(mlflow_store, fake_cifar10, tmp_path, entry, size):
    proc = mlflow_run(entry, {**cifar_data(fake_cifar10, tmp_path), **size}, tmp_path, mlflow_store, f"e2e-{entry}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet_console(proc)
    assert "epoch 1/" in proc.stdout
    runs = project_runs(f"e2e-{entry}")
    assert runs["status"].eq("FINISHED").all()
    parent = runs[runs["tags.mlflow.project.entryPoint"] == entry]
    children = runs[runs["tags.archlab.role"] == "child"]
    assert len(parent) == 1 and len(children) >= 1
    assert set(children["tags.mlflow.parentRunId"]) == {parent.run_id.iloc[0]}
    # finished: no state, no weight copies; only the per-configuration lock files (.locks/, a line each) stay
    assert not [p for p in (tmp_path / "ckpt").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert all(p.stat().st_size < 1024 for p in (tmp_path / "ckpt" / ".locks").glob("*.lock"))
    if entry == "exp1_1":
        check_exp1_1_runs(parent.run_id.iloc[0], children)


def check_exp1_1_runs(parent_id: str, children) -> None:
    """What the MLflow API returns for exp1_1's runs: description, tables, the model named after the
    configuration with its test metrics, system metrics; on the parent, children_* metrics and the
    configuration table."""
    client = mlflow.MlflowClient()
    child_id = children[children["tags.mlflow.runName"] == "exp1_1_L2_K32"].run_id.iloc[0]
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.note.content"].startswith("cnn K=[32] L=2")
    assert child.data.params["epochs"] == "2" and child.data.params["n_train"] == "128"
    assert any(k.startswith("system/cpu_utilization") for k in child.data.metrics)
    assert any(k.startswith("system/system_memory_usage") for k in child.data.metrics)
    summary = client.load_table(child.info.experiment_id, "tables/summary.json", run_ids=[child_id])
    assert summary["test_acc"].iloc[0] == pytest.approx(child.data.metrics["test_acc"])
    (model,) = mlflow.search_logged_models(experiment_ids=[child.info.experiment_id], output_format="list",
                                          filter_string=f"source_run_id = '{child_id}'")
    assert model.name == "exp1_1_L2_K32"
    assert {m.key: m.value for m in model.metrics}["test_acc"] == pytest.approx(child.data.metrics["test_acc"])
    parent = client.get_run(parent_id)
    assert parent.data.metrics["children_finished"] == len(children) == 8
    assert parent.data.metrics["children_best_test_acc"] == pytest.approx(children["metrics.test_acc"].max())
    assert len(client.get_metric_history(parent_id, "children_finished")) == 8  # one point per finished child
    table = client.load_table(child.info.experiment_id, "tables/configurations.json", run_ids=[parent_id])
    assert sorted(table["run"]) == sorted(children["tags.mlflow.runName"])


def test_config_and_report_entry_points_run_with_their_defaults(mlflow_store, fake_cifar10, tmp_path):
    overrides = (f"options.data_dir={fake_cifar10},options.n_train=500,options.n_valid=50,"
                 f"out_dir={tmp_path / 'results'},options.checkpoint_dir={tmp_path / 'ckpt'}")
    proc = mlflow_run("config", {"overrides": overrides}, tmp_path, mlflow_store, "e2e-config")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = project_runs("e2e-config").iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "test_run_L1_K32-64"

    proc = mlflow_run("report", {"out": tmp_path / "reports"}, tmp_path, mlflow_store, "e2e-config")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet_console(proc)
    assert (tmp_path / "reports" / "answers.md").exists()


def assert_rejected(experiment: str, entry: str, message: str) -> None:
    runs = project_runs(experiment)
    assert len(runs) == 1
    run = mlflow.get_run(runs.run_id.iloc[0])
    assert run.info.status == "FAILED"
    assert run.info.run_name == f"rejected-{entry}"
    assert message in run.data.tags[REJECTED_TAG]
    assert message in run.data.tags[NOTE_TAG]


@pytest.mark.parametrize("entry,params,message", [
    ("mlp_grid", {"epochs": -3}, "got -3"),
    ("exp1_1", {"device": "tpu"}, "'tpu' is not a device"),
    ("exp1_1", {"download": "maybe"}, "'maybe' is not a valid boolean"),
    ("reproduce", {}, "no GPU here"),  # its default on a CPU machine: refused, and told so
])
def test_rejected_inputs_leave_a_run_that_says_why(mlflow_store, tmp_path, entry, params, message):
    if entry == "reproduce":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: reproduce would run")
    proc = mlflow_run(entry, params, tmp_path, mlflow_store, "e2e-rejected")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert_rejected("e2e-rejected", entry, message)


def test_reproduce_smoke_profile_runs_under_mlflow_run(mlflow_store, tmp_path):
    """`-e reproduce -P profile=smoke`: the MLflow project run becomes the `reproduce` run (its -P
    values and the programme's own params side by side, no clash), the grids' parents nest under it,
    every configuration of them FINISHED, the smoke report written."""
    from cifar_fixtures import write_fake_cifar10

    data = write_fake_cifar10(tmp_path / "fake", n_train_per_batch=200, n_test=300)  # >= the profile's 256
    params = dict(profile="smoke", grids="test_run,exp1_3", data_dir=data, part1_config=tiny_part1_config(tmp_path))
    project = project_copy(tmp_path / "project")  # the profile's results/ and checkpoints/ land in the project
    proc = mlflow_run("reproduce", params, tmp_path, mlflow_store, "e2e-reproduce", project=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = project_runs("e2e-reproduce")
    assert runs["status"].eq("FINISHED").all()
    top = runs[runs["tags.mlflow.project.entryPoint"] == "reproduce"]
    assert len(top) == 1 and top["tags.grid"].iloc[0] == "reproduce"
    assert top["params.profile"].iloc[0] == top["params.programme.profile"].iloc[0] == "smoke"
    for grid, n in (("test_run", 1), ("exp1_3", 4)):
        parent = runs[(runs["tags.grid"] == grid) & (runs["tags.archlab.role"] == "parent")]
        assert len(parent) == 1 and parent["tags.mlflow.parentRunId"].iloc[0] == top.run_id.iloc[0]
        assert (runs["tags.mlflow.parentRunId"] == parent.run_id.iloc[0]).sum() == n
    assert "Smoke-size runs" in (project / "reports" / "smoke" / "answers.md").read_text()
    assert len(list((project / "results" / "smoke").glob("*.json"))) == 5


def project_copy(dest):
    """The project's tracked files in `dest` (git ls-files), so a run's outputs stay out of the repo."""
    import shutil

    files = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    for name in files.stdout.splitlines():
        if (PROJECT_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, dest / name)
    return dest
