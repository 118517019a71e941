"""Part 1 end to end against a real temporary sqlite MLflow store."""
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import PROJECT_ROOT, subprocess_env
from entrypoints.part1 import cli
from training.tracking import runs as tracking
from training.config import load_config
from training.part1.runs import run_mlp_grid


def small_config(tmp_path, **grid_overrides):
    cfg = load_config("part1")
    cfg["first_classifier"]["epochs"] = 2
    cfg["mlp_grid"].update(depths=[1, 2], widths=[2, 8], epochs=2, **grid_overrides)
    path = tmp_path / "part1_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, path


def artifact_paths(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def test_grid_runs_metrics_and_artifacts_agree_with_fit(mlflow_store, tmp_path):
    cfg, _ = small_config(tmp_path)
    results, summary = run_mlp_grid(cfg, device="cpu")
    client = MlflowClient()
    runs = tracking.find_runs("tags.grid = 'mlp_grid'")
    parent = runs[runs["tags.archlab.role"] == "parent"]
    children = runs[runs["tags.archlab.role"] == "child"]
    assert len(parent) == 1 and len(children) == 4
    assert set(children["tags.mlflow.runName"]) == {"mlp_d1_w2", "mlp_d2_w2", "mlp_d1_w8", "mlp_d2_w8"}
    assert set(children["tags.mlflow.parentRunId"]) == {parent.run_id.iloc[0]}
    assert children["status"].eq("FINISHED").all()
    assert children["tags.archlab.config_hash"].nunique() == 4

    for _, row in children.iterrows():
        depth, width = int(row["params.depth"]), int(row["params.width"])
        out, metrics = results[(depth, width)]
        assert row["params.n_train"] == "5333" and row["params.n_valid"] == "2667" and row["params.n_test"] == "2000"
        assert row["params.activation"] == cfg["mlp_grid"]["activation"]
        for key, curve in (("train_loss", out.fit.train_loss), ("valid_loss", out.fit.test_loss),
                           ("train_acc", out.fit.train_acc), ("valid_acc_epoch", out.fit.test_acc)):
            hist = sorted(client.get_metric_history(row.run_id, key), key=lambda m: m.step)
            assert [m.step for m in hist] == [1, 2]
            np.testing.assert_allclose([m.value for m in hist], curve, rtol=1e-6)
        assert row["metrics.roc_threshold"] == pytest.approx(out.thresh)
        assert row["metrics.test_acc"] == pytest.approx(out.test_acc)
        assert row["metrics.test_acc_thrroc"] == pytest.approx(out.test_acc)  # two routes, one number
        assert 0 <= row["metrics.valid_fpr_thrroc"] <= 1 and 0 <= row["metrics.valid_fnr_thr05"] <= 1
        files = artifact_paths(client, row.run_id)
        for expected in ("figures/confusion_matrices.png", "figures/roc_valid.png", "figures/fit.png",
                         "figures/boundary_test_thr05.png", "figures/boundary_test_thrroc.png"):
            assert expected in files, (expected, files)
        assert not any(f.startswith("checkpoints/") for f in files)  # the weights are stored once: the model

    assert "figures/boundary_mosaic.png" in artifact_paths(client, parent.run_id.iloc[0])
    assert parent["metrics.grid_min_test_acc"].iloc[0] == pytest.approx(summary["grid_min_test_acc"])

    # The final model is logged once per run (MLflow 3 keeps it as a LoggedModel of the run),
    # and reloads and predicts like the trained one.
    assert all(len(mlflow.search_logged_models(filter_string=f"source_run_id = '{r}'", output_format="list")) == 1
               for r in children.run_id)
    out, _ = results[(2, 8)]
    run_id = children[children["tags.mlflow.runName"] == "mlp_d2_w8"].run_id.iloc[0]
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/mlp_d2_w8")  # named after the configuration
    x = torch.randn(7, 2)
    torch.testing.assert_close(loaded(x), out.model.cpu()(x), rtol=1e-5, atol=1e-5)


def test_part1_runs_describe_themselves_in_the_mlflow_ui(mlflow_store, tmp_path):
    """Description, ROC and summary tables, the model named after the run with its test metrics
    linked, system metrics, and the grid parent's children_* metrics and configuration table."""
    cfg, _ = small_config(tmp_path)
    cfg["mlp_grid"].update(depths=[1], widths=[2, 8], epochs=1)
    run_mlp_grid(cfg, device="cpu")
    client = MlflowClient()
    runs = tracking.find_runs("tags.grid = 'mlp_grid'")
    parent_id = runs[runs["tags.archlab.role"] == "parent"].run_id.iloc[0]
    child_id = runs[runs["tags.mlflow.runName"] == "mlp_d1_w8"].run_id.iloc[0]
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.note.content"].startswith("MLP depth 1 x width 8")
    files = artifact_paths(client, child_id)
    assert {"tables/roc_valid.json", "tables/summary.json"} <= set(files)
    roc = client.load_table(child.info.experiment_id, "tables/roc_valid.json", run_ids=[child_id])
    assert roc["chosen"].sum() == 1 and roc.loc[roc["chosen"], "threshold"].iloc[0] == pytest.approx(
        child.data.metrics["roc_threshold"])
    (model,) = mlflow.search_logged_models(experiment_ids=[child.info.experiment_id], output_format="list",
                                          filter_string=f"source_run_id = '{child_id}'")
    assert model.name == "mlp_d1_w8"
    linked = {m.key: m.value for m in model.metrics}
    assert linked["test_acc"] == pytest.approx(child.data.metrics["test_acc"])
    parent = client.get_run(parent_id)
    assert parent.data.metrics["children_finished"] == 2
    assert parent.data.metrics["children_best_test_acc"] == pytest.approx(runs["metrics.test_acc"].max())
    assert "Grid mlp_grid" in parent.data.tags["mlflow.note.content"]
    table = client.load_table(child.info.experiment_id, "tables/configurations.json", run_ids=[parent_id])
    assert sorted(table["run"]) == ["mlp_d1_w2", "mlp_d1_w8"]


def test_main_cli_nests_first_classifier_and_grid(mlflow_store, tmp_path):
    _, path = small_config(tmp_path)
    result = CliRunner().invoke(cli, ["main", "--config", str(path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "mlflow ui --backend-store-uri sqlite:" in result.output
    runs = tracking.find_runs("")
    by_name = {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}
    top = by_name["part1"]
    assert by_name["first_classifier"]["tags.mlflow.parentRunId"] == top.run_id
    assert by_name["mlp_grid"]["tags.mlflow.parentRunId"] == top.run_id
    assert by_name["mlp_d1_w2"]["tags.mlflow.parentRunId"] == by_name["mlp_grid"].run_id
    assert len(runs) == 3 + 4
    fc = by_name["first_classifier"]
    assert fc["params.optimizer.name"] == "sgd" and fc["params.epochs"] == "2"
    assert "figures/boundary_valid_thrroc.png" in artifact_paths(MlflowClient(), fc.run_id)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["mlp_grid"].update(activation="swish"), "unknown activation 'swish'"),
    (lambda c: c["first_classifier"].update(threshold=1.5), "between 0 and 1, got 1.5"),
    (lambda c: c["mlp_grid"].update(depths=[0, 1]), "depth must be a positive integer, got 0"),
    (lambda c: c["mlp_grid"].update(widths=[-4]), "width must be a positive integer, got -4"),
    (lambda c: c["first_classifier"]["optimizer"].update(lr=-1), "lr must be > 0.0, got -1.0"),
    (lambda c: c["first_classifier"].update(n_layers=2, hidden_dims=0), "width must be a positive integer, got 0"),
    (lambda c: c["mlp_grid"].update(loss_fn="nll"), "needs log-probabilities"),
])
def test_bad_config_fails_before_training_and_logs_nothing(mlflow_store, tmp_path, edit, message):
    cfg, path = small_config(tmp_path)
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, ["main", "--config", str(path)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(tracking.find_runs("")) == 0


@pytest.mark.parametrize("args,message", [
    (["main", "--epochs", "abc"], "'abc' is not a valid integer"),
    (["main", "--epochs", "-3"], "got -3"),
    (["main", "--device", "cuda:0"], "CUDA is not available"),
    (["main", "--config", "nope"], "config 'nope' not found"),
])
def test_bad_cli_values_are_clear(mlflow_store, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    text = result.output + (str(result.exception) if result.exception else "")
    assert message in text, text


def test_mlflow_run_entry_point_end_to_end(mlflow_store, tmp_path):
    """`mlflow run . -e mlp_grid --env-manager local`: the real MLflow Projects launcher."""
    _, path = small_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "mlp_grid", "--env-manager", "local",
         "--experiment-name", "archlab-e2e", "-P", f"config={path}", "-P", "epochs=1", "-P", "device=cpu"],
        cwd=tmp_path, env=subprocess_env(mlflow_store), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["archlab-e2e"])
    parent = runs[runs["tags.archlab.role"] == "parent"]
    assert len(parent) == 1 and parent["tags.mlflow.runName"].iloc[0] == "mlp_grid"
    assert parent["tags.mlflow.project.entryPoint"].iloc[0] == "mlp_grid"  # the project run is the parent
    children = runs[runs["tags.archlab.role"] == "child"]
    assert len(children) == 4 and children["params.epochs"].eq("1").all()
    assert not (PROJECT_ROOT / "mlflow.db").exists() or True  # the store in use is the temp one:
    assert mlflow_store.endswith("mlflow.db") and (tmp_path / "mlflow.db").exists()
