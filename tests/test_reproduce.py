"""`reproduce`: the whole programme in one command (tiny settings), and its refusal on a CPU."""
import torch
import pytest
from click.testing import CliRunner

from cifar_fixtures import fake_cifar10  # noqa: F401
from entrypoints.reproduce import cli
from test_part1_tracking import small_config
from training.tracking import runs as tracking


def test_refuses_cifar_grids_without_gpu_unless_allowed(mlflow_store):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 2 and "no GPU here" in result.output and "--allow-cpu true" in result.output
    assert "--profile smoke" in result.output  # the way a CPU user runs the whole pipeline
    assert len(tracking.find_runs("")) == 0


@pytest.mark.parametrize("option", [["--n-train", "45000"], ["--epochs", "30"], ["--allow-small", "true"],
                                    ["--n-test", "10000"]])
def test_smoke_profile_refuses_size_options(mlflow_store, option):
    result = CliRunner().invoke(cli, ["--profile", "smoke", *option])
    assert result.exit_code == 2, result.output
    assert "--profile smoke sets the sizes itself" in result.output and " ".join(option) in result.output
    assert len(tracking.find_runs("")) == 0


def test_bad_grid_name_and_missing_data_fail_before_training(mlflow_store, tmp_path):
    result = CliRunner().invoke(cli, ["--grids", "exp9", "--allow-cpu", "true"])
    assert result.exit_code == 2 and "unknown grids ['exp9']" in result.output
    result = CliRunner().invoke(cli, ["--grids", "exp1_3", "--allow-cpu", "true", "--data-dir", str(tmp_path / "no")])
    assert result.exit_code == 2 and "CIFAR-10 not found" in result.output
    assert len(tracking.find_runs("")) == 0


def test_whole_programme_tiny(mlflow_store, fake_cifar10, tmp_path):
    _, part1 = small_config(tmp_path)
    result = CliRunner().invoke(cli, [
        "--grids", "test_run,exp1_3", "--allow-cpu", "true", "--part1-config", str(part1), "--epochs", "1",
        "--bs-train", "32", "--n-train", "96", "--n-valid", "32", "--allow-small", "true",
        "--data-dir", str(fake_cifar10), "--out", str(tmp_path / "reports"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    runs = tracking.find_runs("")
    by_name = {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}
    top = by_name["reproduce"].run_id
    for name in ("part1", "test_run", "exp1_3"):
        assert by_name[name]["tags.mlflow.parentRunId"] == top
    assert "exp1_3_L4_K64-128-256" in by_name and "mlp_d2_w8" in by_name
    answers = (tmp_path / "reports" / "answers.md").read_text()
    assert "exp1_1" in answers and "has not been run" in answers  # grids left out are reported missing
    assert "Missing experiments" in result.output


def test_whole_programme_with_workers_is_one_pool_over_all_grids(mlflow_store, fake_cifar10, tmp_path):
    """--workers 2: the configurations of every grid train in one pool of two processes (through the
    private server over mlflow.db), each a child of its own grid's parent, each parent a child of
    `reproduce`: one parent per grid, every run FINISHED."""
    _, part1 = small_config(tmp_path)
    result = CliRunner().invoke(cli, [
        "--grids", "test_run,exp1_3", "--allow-cpu", "true", "--part1-config", str(part1), "--epochs", "1",
        "--bs-train", "32", "--n-train", "96", "--n-valid", "32", "--allow-small", "true", "--workers", "2",
        "--data-dir", str(fake_cifar10), "--out", str(tmp_path / "reports"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "starting a private MLflow server" in result.output
    assert "Grids test_run, exp1_3: 5 configurations in 2 worker processes" in result.output  # one pool
    runs = tracking.find_runs("")
    assert set(runs["status"]) == {"FINISHED"}
    top = runs[runs["tags.mlflow.runName"] == "reproduce"].run_id.tolist()
    assert len(top) == 1
    expected = {"test_run": ["test_run_L1_K32-64"], "exp1_3": [f"exp1_3_L{L}_K64-128-256" for L in (1, 2, 3, 4)]}
    for grid, names in expected.items():
        parents = runs[(runs["tags.mlflow.runName"] == grid) & (runs["tags.archlab.role"] == "parent")]
        assert len(parents) == 1 and parents["tags.mlflow.parentRunId"].iloc[0] == top[0]
        children = runs[runs["tags.mlflow.parentRunId"] == parents.run_id.iloc[0]]
        assert sorted(children["tags.mlflow.runName"]) == names


def test_workers_must_be_positive(mlflow_store):
    result = CliRunner().invoke(cli, ["--grids", "", "--workers", "-1"])
    assert result.exit_code == 2 and "must be a positive integer" in result.output


def test_default_workers_share_only_large_gpus():
    from entrypoints.common import GPU_SHARING_WORKERS, worker_count, workers_for_gpu_memory

    assert workers_for_gpu_memory(80 * 2**30) == GPU_SHARING_WORKERS == 4  # an H100: the measured setting
    assert workers_for_gpu_memory(16 * 2**30) == 1                         # a small GPU: not tried, one worker
    assert worker_count(None, None, "cpu") == 1                            # a CPU's cores would only be split
    assert worker_count(None, ["cpu", "cpu"], "cpu") == 2                  # one per listed CPU device
    assert worker_count(3, ["cpu"], "cpu") == 3                            # --workers wins
