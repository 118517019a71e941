"""Scale a grid out on MLflow Projects' own backends: one project run per configuration.

    submit_grid("exp1_1", overrides)                                    # local: one after the other
    submit_grid("exp1_1", overrides, backend="kubernetes",
                backend_config="deploy/kubernetes/backend-config.json")  # one Kubernetes Job each

Everything is validated before any run exists: the grid (expand_grid + check_grid's dry run), the
overrides (encodable as the `config` entry point's one `overrides` parameter), and for Kubernetes the backend
config, its Job template and the project's `docker_env`. Then the grid's parent run is opened and,
while it is the active run, one `mlflow.projects.run(entry_point="config")` is submitted per
configuration: MLflow creates each project run as a child of the active run (`mlflow.parentRunId`),
and the `config` entry point (train_configuration, run with MLFLOW_RUN_ID set) trains exactly that
configuration *in* the project run, so every configuration is one child run of the one parent.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from training.config import PROJECT_ROOT

KUBERNETES_PROJECT = PROJECT_ROOT / "deploy" / "kubernetes"
BACKENDS = ("local", "kubernetes")
ENTRY_POINT = "config"
LAUNCHER_ROLE = "launcher"  # a project run whose configuration was skipped (finished) or resumed elsewhere



# ---------------------------------------------------------------------------------------- validation

def validate_kubernetes_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    """Check an MLflow Kubernetes backend config (a JSON file or a dict) and its Job template.

    Returns the config with `kube-job-template-path` made absolute (a relative path is resolved
    against the JSON file's folder, else the current directory), ready for mlflow.projects.run.
    Every problem is a ValueError naming the key, the value and what is valid."""
    base = Path.cwd()
    if isinstance(config, Mapping):
        cfg = dict(config)
        where = "backend config"
    else:
        path = Path(config)
        where = f"backend config {str(path)!r}"
        if path.suffix != ".json":
            raise ValueError(f"{where}: must be a .json file (MLflow reads backend configs as JSON)")
        if not path.is_file():
            raise ValueError(f"{where}: file not found")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: must be a JSON object with kube-context, repository-uri and "
                             f"kube-job-template-path, got {type(cfg).__name__}")
        base = path.resolve().parent
    for key in ("kube-context", "repository-uri", "kube-job-template-path"):
        if key not in cfg:
            raise ValueError(f"{where}: missing {key!r}; required keys: kube-context (the kubectl context "
                             f"name), repository-uri (the image registry repository), kube-job-template-path "
                             f"(a batch/v1 Job YAML)")
        if not isinstance(cfg[key], str) or not cfg[key].strip():
            raise ValueError(f"{where}: {key!r} must be a non-empty string, got {cfg[key]!r}")
    template = Path(cfg["kube-job-template-path"]).expanduser()
    if not template.is_absolute():
        template = base / template
    if not template.is_file():
        raise ValueError(f"{where}: 'kube-job-template-path' = {cfg['kube-job-template-path']!r} is not a file "
                         f"(looked at {template}); relative paths are resolved against the config's folder")
    check_job_template(template)
    return {**cfg, "kube-job-template-path": str(template.resolve())}


def check_job_template(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The YAML at `path` parses and is a batch/v1 Job with the fields MLflow fills in."""
    import yaml

    where = f"kube-job-template-path {str(path)!r}"
    try:
        job = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(job, dict):
        raise ValueError(f"{where}: must be a YAML mapping (a Kubernetes Job), got {type(job).__name__}")
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise ValueError(f"{where}: must be apiVersion: batch/v1, kind: Job; got apiVersion: "
                         f"{job.get('apiVersion')!r}, kind: {job.get('kind')!r}")
    if not isinstance(job.get("metadata"), dict):
        raise ValueError(f"{where}: needs a 'metadata' mapping (MLflow sets metadata.name)")
    containers = ((((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers"))
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise ValueError(f"{where}: needs spec.template.spec.containers[0] (MLflow fills in its name, image, "
                         f"command and env); got containers = {containers!r}")
    return job


def check_docker_project(project_uri: Union[str, os.PathLike]) -> None:
    """MLflow runs only `docker_env` projects on Kubernetes: say so before anything starts."""
    from mlflow.projects._project_spec import load_project

    project = load_project(str(project_uri))
    if not project.docker_env or not project.docker_env.get("image"):
        raise ValueError(f"project {str(project_uri)!r} has no docker_env image; the kubernetes backend needs a "
                         f"docker_env project: use {str(KUBERNETES_PROJECT)!r}")
    if ENTRY_POINT not in project._entry_points:
        raise ValueError(f"project {str(project_uri)!r} has no {ENTRY_POINT!r} entry point")


SAFE_VALUE = re.compile(r"^[\w@%+=:./-]+$")  # what shlex.quote leaves alone (Kubernetes passes it verbatim)


def encode_overrides(overrides: Optional[Mapping[str, Any]]) -> str:
    """run_grid-style overrides as the `config` entry point's one `overrides` parameter:
    "epochs=2,bs_train=64,options.n_train=30000" ("none" when empty). Scalars only; a value that
    would need shell quoting is refused (MLflow's Kubernetes backend would pass the quotes on)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    options = {k: v for k, v in (overrides.pop("options", None) or {}).items() if v is not None}
    items = list(overrides.items()) + [(f"options.{k}", v) for k, v in options.items()]
    parts = []
    for key, value in items:
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"override {key}={value!r} cannot be passed to the {ENTRY_POINT!r} entry point: only "
                             f"numbers, booleans and plain strings can (no lists or mappings)")
        if not SAFE_VALUE.match(str(value)) or "," in str(value):
            raise ValueError(f"override {key}={value!r} cannot be passed to the {ENTRY_POINT!r} entry point: "
                             f"values may use letters, digits and @%+=:./-_ only (no spaces or commas)")
        parts.append(f"{key}={value}")
    return ",".join(parts) or "none"


def decode_overrides(text: Optional[str]) -> Dict[str, Any]:
    """The inverse of encode_overrides (numbers and true/false typed back)."""
    import yaml

    out: Dict[str, Any] = {"options": {}}
    if text in (None, "", "none"):
        return out
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--overrides item {part!r} is not key=value (e.g. epochs=2,options.n_train=30000)")
        value = yaml.safe_load(raw) if raw.lower() in ("true", "false") or _is_number(raw) else raw
        if key.startswith("options."):
            out["options"][key[len("options."):]] = value
        else:
            out[key] = value
    return out


def _is_number(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def _check_configurations(runs: List[Dict[str, Any]], data_here: bool) -> None:
    """check_grid's dry run; on a cluster the data lives in the pods' volume, so only its presence
    (the dry run's last check) is not required here."""
    from training.grids.expand import check_grid

    if data_here:
        check_grid(runs)
        return
    for kwargs in runs:
        try:
            check_grid([{**kwargs, "device": None}])  # the device is the pod's, resolved there
        except FileNotFoundError as e:
            if "CIFAR-10 not found" not in str(e):
                raise


def _require_packages(names: Sequence[str], why: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise RuntimeError(f"{why} needs the Python packages {missing}: pip install {' '.join(missing)}")


# ---------------------------------------------------------------------------------------- submission

def submit_grid(name: str, overrides: Optional[Mapping[str, Any]] = None, backend: str = "local",
                backend_config: Union[None, str, os.PathLike, Mapping[str, Any]] = None,
                project_uri: Union[None, str, os.PathLike] = None, only: Optional[Sequence[str]] = None,
                env_manager: Optional[str] = "local", build_image: bool = False) -> Dict[str, Any]:
    """Submit grid `name` as one parent run with one MLflow project run (a child) per configuration.

    backend: "local" (each configuration runs to completion before the next, synchronous=True) or
    "kubernetes" (all Jobs are submitted, synchronous=False, then waited on). backend_config: the
    Kubernetes JSON file or dict (validate_kubernetes_config). project_uri: default the repository
    (local) or deploy/kubernetes (its docker_env MLproject). env_manager: for the local backend
    (default "local": this environment). Returns {"parent_run_id", "runs": [{name, run_id, status}],
    "finished", "skipped", "failed"} (skipped: the project run found the configuration already done)."""
    import mlflow

    from training.tracking import runs as tracking
    from training.experiments import experiment_name_of
    from training.grids.expand import expand_grid, grid_parent_run, load_grid_config, print_summary, select_runs

    kube_config, project_uri = _check_backend(backend, backend_config, project_uri)
    cfg = load_grid_config(name)
    runs = select_runs(expand_grid(cfg, overrides), only)
    names = [experiment_name_of(kwargs) for kwargs in runs]
    encoded = encode_overrides(overrides)
    params = {n: {"grid": name, "only": n, "overrides": encoded} for n in names}
    _check_configurations(runs, data_here=backend == "local")
    if backend == "kubernetes":
        _require_packages(["docker", "kubernetes"], "the kubernetes backend")

    summary: Dict[str, Any] = {"grid": name, "backend": backend, "runs": [], "finished": [], "skipped": [],
                               "failed": []}
    from training.grids.lock import grid_lock

    with grid_lock(mlflow.get_tracking_uri(), name), grid_parent_run(name, cfg, runs) as parent:  # one per store
        summary["parent_run_id"] = parent.info.run_id
        mlflow.set_tag("archlab.backend", backend)
        submitted = []
        for n in names:
            kw = dict(uri=project_uri, entry_point=ENTRY_POINT, parameters=params[n], run_name=n,
                      experiment_id=parent.info.experiment_id, backend=backend)
            if backend == "local":
                submitted.append(_submit_local(n, kw, env_manager, parent.info.run_id))
            else:
                sub = mlflow.projects.run(**kw, backend_config=kube_config, synchronous=False,
                                          build_image=build_image)
                print(f"*** {n}: submitted as run {sub.run_id}")
                submitted.append((n, sub, None))
        for n, sub, status in submitted:
            if status is None:  # kubernetes: wait for every Job
                status = "FINISHED" if sub.wait() else "FAILED"
            run_id = sub.run_id if sub is not None else _run_id_by_name(parent.info.run_id, n)
            if status == "FINISHED" and run_id and mlflow.MlflowClient().get_run(run_id).data.tags.get(
                    tracking.ROLE_TAG) == LAUNCHER_ROLE:
                status = "SKIPPED"  # already finished (same config hash) or resumed in its earlier run
            summary["runs"].append({"name": n, "run_id": run_id, "status": status})
            summary[{"FINISHED": "finished", "SKIPPED": "skipped"}.get(status, "failed")].append(n)
    print_summary(name, {"written": summary["finished"], "skipped": summary["skipped"],
                         "diverged": summary["failed"]})
    return summary


def _submit_local(name: str, kw: Mapping[str, Any], env_manager: Optional[str], parent_run_id: str) -> tuple:
    """One configuration through the local backend, to completion: (name, submitted run, status). A
    failed command is that configuration's failure; a failed launch (the environment) stops the grid."""
    import mlflow
    from mlflow.exceptions import ExecutionException

    try:
        return name, mlflow.projects.run(**kw, env_manager=env_manager, synchronous=True), "FINISHED"
    except ExecutionException as e:
        print(f"*** {name} failed: {e}. Continuing.")
        return name, getattr(e, "submitted_run", None), "FAILED"
    except Exception:  # the environment could not be built: every configuration would fail alike
        _close_launch_failures(parent_run_id)
        raise


def _close_launch_failures(parent_run_id: str) -> None:
    """mlflow.projects.run raised before the command started (the environment build: no pyenv, no
    uv, offline): MLflow leaves the child it created RUNNING (and unnamed: the run name is set only
    after the launch). This process saw the launch fail, so it ends that child FAILED now."""
    import mlflow

    from training.tracking import lifecycle

    for run in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                f"and attributes.status = 'RUNNING'"):
        if lifecycle.never_started(run, min_age_s=0):
            lifecycle.close_never_started(run.info.run_id, run.data.tags)


def _run_id_by_name(parent_run_id: str, name: str) -> Optional[str]:
    """A failed synchronous local run's id (mlflow raises without handing back the SubmittedRun)."""
    import mlflow

    found = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                             f"and tags.mlflow.runName = '{name}'")
    return found[0].info.run_id if found else None


def _check_backend(backend: str, backend_config: Union[None, str, os.PathLike, Mapping[str, Any]],
                   project_uri: Union[None, str, os.PathLike]) -> tuple:
    """(the Kubernetes config or None, the project to run) for `backend`, or a clear error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; valid: {list(BACKENDS)}")
    kube_config = None
    if backend == "kubernetes":
        if backend_config is None:
            raise ValueError("the kubernetes backend needs a backend config (e.g. "
                             f"{str(KUBERNETES_PROJECT / 'backend-config.json')!r})")
        kube_config = validate_kubernetes_config(backend_config)
        project_uri = project_uri or KUBERNETES_PROJECT
        check_docker_project(project_uri)
    elif backend_config is not None:
        raise ValueError(f"backend_config is only for the kubernetes backend, got {backend_config!r} for local")
    return kube_config, str(project_uri or PROJECT_ROOT)


def train_configuration(grid: str, config_name: str, overrides: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """The `config` entry point: train configuration `config_name` of `grid` (cnn_experiment).

    Under `mlflow run` (MLFLOW_RUN_ID set) the project run itself becomes the configuration's child
    run. When the configuration already finished (same config hash: skipped) or is resumed in its
    earlier run, the project run is tagged archlab.role=launcher, so it never counts as a second child."""
    import mlflow

    from training.tracking import runs as tracking
    from training.cnn.experiment import decide_policy, run_recipe
    from training.grids.expand import check_grid, expand_grid, load_grid_config, select_runs

    project_run_id = os.environ.get("MLFLOW_RUN_ID")  # mlflow.start_run consumes it
    cfg = load_grid_config(grid)
    ((recipe, options),) = check_grid(select_runs(expand_grid(cfg, overrides), [config_name]))
    options = dataclasses.replace(options, grid=grid)
    path = run_recipe(recipe, decide_policy(recipe, options), options)
    if project_run_id:
        client = mlflow.MlflowClient()
        if client.get_run(project_run_id).data.tags.get(tracking.ROLE_TAG) != "child":
            client.set_tag(project_run_id, tracking.ROLE_TAG, LAUNCHER_ROLE)
            client.set_tag(project_run_id, "archlab.note",
                           f"{config_name} was not trained in this run (already finished, or resumed in its "
                           f"earlier run)")
    return path
