"""Grid scale-out on MLflow Projects' backends (training.grids.submit): the local backend end to end (a
real `mlflow.projects.run` per configuration, env_manager=local), and the Kubernetes backend config
validated before any run exists (submitting to a cluster needs one: deploy/kubernetes/README.md)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.projects._project_spec import load_project

from cifar_fixtures import fake_cifar10  # noqa: F401
from conftest import PROJECT_ROOT
from training.tracking import runs as tracking
from training.grids.submit import KUBERNETES_PROJECT, submit_grid, validate_kubernetes_config

SHIPPED_CONFIG = KUBERNETES_PROJECT / "backend-config.json"
SHIPPED_TEMPLATE = KUBERNETES_PROJECT / "job-template.yaml"
CONFIGS = ["exp1_1_L2_K32", "exp1_1_L4_K32"]


def all_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_local_backend_each_configuration_is_one_finished_child_of_the_parent(mlflow_store, fake_cifar10,
                                                                              tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    overrides = dict(epochs=1, batches=2, bs_train=16, device="cpu", out_dir=str(tmp_path / "results"),
                     options=dict(n_train=64, n_valid=32, data_dir=str(fake_cifar10), allow_small=True,
                                  checkpoint_dir=str(tmp_path / "ckpt")))
    summary = submit_grid("exp1_1", overrides, backend="local", only=CONFIGS, env_manager="local")

    assert summary["failed"] == [] and sorted(summary["finished"]) == CONFIGS
    runs = all_runs()
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "parent"]
    assert len(parents) == 1 and parents[0].info.run_id == summary["parent_run_id"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["grid"] == "exp1_1"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    assert len(runs) == 1 + len(CONFIGS)  # nothing else: no launcher runs, no grandchildren
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == CONFIGS  # each exactly once
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags[tracking.ROLE_TAG] == "child" and r.data.tags["grid"] == "exp1_1"
        assert r.data.tags["mlflow.project.entryPoint"] == "config"  # the project run *is* the child
        assert r.data.tags["mlflow.project.backend"] == "local"
        assert r.data.params["epochs"] == "1" and "test_acc" in r.data.metrics
    assert {r["run_id"] for r in summary["runs"]} == {r.info.run_id for r in children}
    assert sorted(p.stem for p in (tmp_path / "results").glob("*.json")) == CONFIGS


def test_shipped_kubernetes_config_and_template_pass():
    cfg = validate_kubernetes_config(SHIPPED_CONFIG)  # template path relative to the JSON file
    assert Path(cfg["kube-job-template-path"]) == SHIPPED_TEMPLATE.resolve()
    assert isinstance(cfg["kube-context"], str) and cfg["repository-uri"]
    job = yaml.safe_load(SHIPPED_TEMPLATE.read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(m["mountPath"] == "/data" for m in container["volumeMounts"])
    raw = json.loads(SHIPPED_CONFIG.read_text())
    assert validate_kubernetes_config({**raw, "kube-job-template-path": str(SHIPPED_TEMPLATE)}) == cfg


def test_kubernetes_project_is_docker_env_with_the_same_config_entry_point():
    k8s, root = load_project(str(KUBERNETES_PROJECT)), load_project(str(PROJECT_ROOT))
    assert k8s.docker_env["image"]
    assert k8s._entry_points["config"].command == root._entry_points["config"].command
    assert k8s._entry_points["config"].parameters.keys() == root._entry_points["config"].parameters.keys()
    assert "COPY requirements.txt" in (KUBERNETES_PROJECT / "Dockerfile").read_text()


def _write(tmp_path, cfg=None, template=None, name="backend.json"):
    raw = json.loads(SHIPPED_CONFIG.read_text())
    if template is not None:
        (tmp_path / "job.yaml").write_text(template)
        raw["kube-job-template-path"] = "job.yaml"
    else:
        raw["kube-job-template-path"] = str(SHIPPED_TEMPLATE)
    raw = cfg(raw) if cfg else raw
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


GOOD_TEMPLATE = SHIPPED_TEMPLATE.read_text()
BROKEN = {
    "missing kube-context": (dict(cfg=lambda c: {k: v for k, v in c.items() if k != "kube-context"}),
                             "missing 'kube-context'"),
    "kube-context not a string": (dict(cfg=lambda c: {**c, "kube-context": 3}), "'kube-context' must be a non-empty string, got 3"),
    "missing repository-uri": (dict(cfg=lambda c: {k: v for k, v in c.items() if k != "repository-uri"}),
                               "missing 'repository-uri'"),
    "template missing": (dict(cfg=lambda c: {**c, "kube-job-template-path": "nope.yaml"}),
                         "'kube-job-template-path' = 'nope.yaml' is not a file"),
    "template not YAML": (dict(template="apiVersion: batch/v1\nkind: [Job\n"), "not valid YAML"),
    "template a Deployment": (dict(template=GOOD_TEMPLATE.replace("kind: Job", "kind: Deployment")),
                              "must be apiVersion: batch/v1, kind: Job; got apiVersion: 'batch/v1', kind: 'Deployment'"),
    "template apiVersion v1": (dict(template=GOOD_TEMPLATE.replace("apiVersion: batch/v1", "apiVersion: v1")),
                               "got apiVersion: 'v1'"),
    "template without containers": (dict(template="apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n"
                                                  "spec: {template: {spec: {containers: []}}}\n"),
                                    r"needs spec.template.spec.containers\[0\]"),
    "config not JSON": (dict(cfg=lambda c: "{kube-context: x"), "not valid JSON"),
    "config not .json": (dict(name="backend.yaml"), "must be a .json file"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_kubernetes_config_is_a_clear_error_before_any_run(mlflow_store, tmp_path, case):
    kwargs, message = BROKEN[case]
    path = _write(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message):
        validate_kubernetes_config(path)
    with pytest.raises(ValueError, match=message):
        submit_grid("exp1_1", backend="kubernetes", backend_config=path)
    assert all_runs() == []


def test_kubernetes_needs_a_docker_env_project_and_known_overrides(mlflow_store):
    with pytest.raises(ValueError, match="no docker_env image"):
        submit_grid("exp1_1", backend="kubernetes", backend_config=SHIPPED_CONFIG, project_uri=PROJECT_ROOT)
    with pytest.raises(ValueError, match=r"override options.model_kwargs=.* only numbers, booleans and plain strings"):
        submit_grid("exp1_1", {"options": {"model_kwargs": {"width_mult": 0.5}}}, backend="kubernetes",
                    backend_config=SHIPPED_CONFIG)
    with pytest.raises(ValueError, match="backend 'slurm' is not supported; valid: \\['local', 'kubernetes'\\]"):
        submit_grid("exp1_1", backend="slurm")
    with pytest.raises(ValueError, match="needs a backend config"):
        submit_grid("exp1_1", backend="kubernetes")
    if importlib.util.find_spec("kubernetes") is None or importlib.util.find_spec("docker") is None:
        with pytest.raises(RuntimeError, match="pip install"):  # valid config, but no client libraries here
            submit_grid("exp1_1", backend="kubernetes", backend_config=SHIPPED_CONFIG, only=["exp1_1_L2_K32"])
    assert all_runs() == []


def test_submit_cli_reports_a_broken_config_and_logs_nothing(mlflow_store, tmp_path):
    from entrypoints import cifar

    path = _write(tmp_path, cfg=lambda c: {k: v for k, v in c.items() if k != "repository-uri"})
    result = CliRunner().invoke(cifar.cli, ["submit", "exp1_1", "--backend", "kubernetes",
                                            "--backend-config", str(path)])
    assert result.exit_code == 2 and "missing 'repository-uri'" in result.output
    assert all_runs() == []


def test_local_backend_closes_the_child_whose_environment_cannot_be_built(mlflow_store, fake_cifar10, tmp_path,
                                                                         monkeypatch):
    """env_manager=virtualenv without pyenv (as offline): mlflow.projects.run raises after creating
    the configuration's run and before its command; the submitter ends that child FAILED with the
    reason (MLflow would leave it RUNNING), then the error stops the grid (its parent FAILED)."""
    from training.tracking import lifecycle

    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("MLFLOW_ENV_ROOT", str(tmp_path / "envs"))
    overrides = dict(epochs=1, batches=1, bs_train=16, device="cpu", out_dir=str(tmp_path / "results"),
                     options=dict(n_train=64, n_valid=32, data_dir=str(fake_cifar10), allow_small=True,
                                  checkpoint_dir=str(tmp_path / "ckpt")))
    with pytest.raises(Exception):
        submit_grid("exp1_1", overrides, backend="local", only=CONFIGS[:1], env_manager="virtualenv")
    runs = all_runs()
    (parent,) = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "parent"]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert child.data.tags[lifecycle.END_REASON_TAG] == f"{lifecycle.NEVER_STARTED}; env manager: virtualenv"
    assert child.data.tags["mlflow.project.entryPoint"] == "config"
