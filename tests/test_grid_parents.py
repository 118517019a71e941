"""Where a grid's parent runs come from and which one the report writes to: a rerun that trains
nothing opens no parent; figures go to the newest FINISHED parent that has children."""
import mlflow
import yaml

from analysis import query
from cifar_fixtures import fake_cifar10  # noqa: F401
from training.grids.expand import run_grid
from training.tracking import runs as tracking


def tiny_grid(tmp_path, data_dir) -> tuple:
    config = tmp_path / "tiny_grid.yaml"
    config.write_text(yaml.safe_dump(dict(base="cifar_plain", run_name="exp1_1", model_type="cnn",
                                          grid=[dict(K=[8], L=[1])], early_stopping=None)))
    overrides = dict(epochs=1, bs_train=32, options=dict(n_train=64, n_valid=32, allow_small=True, log_model=False,
                                                         data_dir=str(data_dir)))
    return str(config), overrides


def parents(grid: str):
    runs = tracking.find_runs(f"tags.grid = '{grid}' and tags.`archlab.role` = 'parent'")
    return runs.sort_values("start_time")


def test_a_rerun_that_trains_nothing_opens_no_parent(mlflow_store, fake_cifar10, tmp_path, capsys):
    grid, overrides = tiny_grid(tmp_path, fake_cifar10)
    first = run_grid(grid, overrides)
    assert first["written"] == ["exp1_1_L1_K8"]
    again = run_grid(grid, overrides)
    assert again == {"written": [], "skipped": ["exp1_1_L1_K8"], "diverged": []}
    assert "nothing to train, no parent run opened" in capsys.readouterr().out
    assert len(parents(grid)) == 1


def test_report_figures_go_to_the_newest_finished_parent_with_children(mlflow_store, fake_cifar10, tmp_path):
    grid, overrides = tiny_grid(tmp_path, fake_cifar10)
    run_grid(grid, overrides)
    trained = parents(grid).run_id.iloc[-1]
    tags = {tracking.GRID_TAG: grid, tracking.ROLE_TAG: "parent"}
    mlflow.set_experiment(tracking.DEFAULT_EXPERIMENT)
    with mlflow.start_run(run_name="empty-finished", tags=tags):
        pass
    failed = mlflow.start_run(run_name="failed-before-training", tags=tags)
    mlflow.end_run("FAILED")
    assert parents(grid).run_id.iloc[-1] == failed.info.run_id  # the newest parent is neither of these two:
    assert query.parent_run_id(grid) == trained
    assert query.parent_run_id("never_ran") is None
