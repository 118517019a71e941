"""bench/reproduce_record.py on a real, tiny `reproduce` (issue #17's record): every configuration
with its seeds, statuses, per-grid times and MLflow's measured share, read back from the store."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from bench import reproduce_record
from cifar_fixtures import fake_cifar10  # noqa: F401
from entrypoints.reproduce import cli
from training.config import load_config


def tiny_part1(tmp_path):
    """Part 1 at its smallest: one MLP cell, 2 epochs (the programme's own config otherwise)."""
    cfg = load_config("part1")
    cfg["first_classifier"]["epochs"] = 2
    cfg["mlp_grid"].update(depths=[1], widths=[8], epochs=2)
    path = tmp_path / "part1_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_reproduce(mlflow_store, fake_cifar10, tmp_path):
    result = CliRunner().invoke(cli, [
        "--grids", "test_run", "--seeds", "42,43", "--allow-cpu", "true", "--part1-config", str(tiny_part1(tmp_path)),
        "--epochs", "1", "--n-train", "64", "--n-valid", "32", "--allow-small", "true",
        "--data-dir", str(fake_cifar10), "--out", str(tmp_path / "reports"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return mlflow_store


def test_record_of_a_tiny_reproduce(tiny_reproduce, tmp_path, capsys):
    out = tmp_path / "record.json"
    assert reproduce_record.main([tiny_reproduce, "--out", str(out), "--check"]) == 0
    rec = json.loads(out.read_text())
    assert rec["all_finished"] and rec["statuses"] == {"FINISHED": rec["statuses"]["FINISHED"]}
    # reproduce + part1 + first_classifier x2 + mlp_grid parent + 2 cells + test_run parent + 2 seeds
    assert rec["statuses"]["FINISHED"] == 10
    assert list(rec["grids"]) == ["part1", "test_run"] and rec["grids"]["test_run"]["finished"] == 2
    assert all(g["seconds"] > 0 for g in rec["grids"].values())
    assert 0 < sum(g["seconds"] for g in rec["grids"].values()) <= rec["reproduce"]["wall_s"]
    [config] = rec["configurations"]
    assert config["config"] == "test_run_L1_K32-64" and config["seeds"] == [42, 43] and config["n_finished"] == 2
    assert len(config["test_acc"]) == 2 and config["mean"] == pytest.approx(sum(config["test_acc"]) / 2, abs=0.01)
    assert config["std"] is not None and rec["missing"] == {}
    share = rec["mlflow"]
    assert share["cifar"]["runs"] == 2 and share["part1"]["runs"] == 4  # first_classifier x2, mlp cell x2
    assert 0 < share["share_of_run_time"] < 1 and share["mlflow_s"] < share["run_s"]
    assert share["per_wall_s"] > 0 and "W lanes" in share["how"]
    assert rec["data"]["kind"] == ["unknown"] and rec["data"]["smoke"] == ["true"]  # fake data, small
    assert rec["device"]["torch"] and rec["device"]["run_devices"] == ["cpu"]
    assert "all FINISHED: True" in capsys.readouterr().out
    check_names_what_is_missing(tiny_reproduce)


def check_names_what_is_missing(store):
    """A cut-short programme: the record still says what finished, and --check lists the rest (in
    the same test: one tiny reproduce is most of its time)."""
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.run_name = 'test_run_L1_K32-64_s43'")
    mlflow.MlflowClient().set_terminated(runs.run_id.iloc[0], "KILLED")
    rec = reproduce_record.build_record(store)
    assert not rec["all_finished"] and rec["statuses"]["KILLED"] == 1
    assert rec["missing"] == {"test_run": ["test_run_L1_K32-64_s43"]}
    assert rec["configurations"][0]["n_finished"] == 1 and rec["configurations"][0]["std"] is None
    assert any("missing" in p for p in reproduce_record.problems(rec))
