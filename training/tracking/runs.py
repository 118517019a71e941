"""MLflow plumbing shared by every entry point: store selection, run nesting, batched logging.

Conventions (the analysis relies on them):
- every grid is one *parent* run tagged `grid=<name>`, `archlab.role=parent`; each configuration
  is a nested *child* run tagged `grid=<name>`, `archlab.role=child`, `archlab.config_hash=<hash>`;
- a configuration run with several seeds has one child per seed (param `seed`; names from
  `seed_run_name`), all tagged `archlab.config=<programme name>`; children also carry the data they
  saw (`archlab.data_digest/_source/_kind`) and `archlab.smoke=true` when below the programme's size;
- per-epoch metrics are logged with one `log_batch` call per epoch at `step = epoch` (1-based);
- the default store is MLflow's own default, `sqlite:///mlflow.db` in the working directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Dict, Iterator, Mapping, Optional

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from training.config import config_hash  # noqa: F401  (re-exported: runs are tagged with it)
from training.tracking.timing import mlflow_call

DEFAULT_EXPERIMENT = "archlab"
ROLE_TAG = "archlab.role"
HASH_TAG = "archlab.config_hash"
GRID_TAG = "grid"
DIVERGED_TAG = "archlab.diverged"
# Seeds, data and size (issue #16): the contract between the training side and analysis/.
# Every child logs param `seed`; the first seed keeps the programme's run name, further seeds are
# `<name>_s<seed>` (seed_run_name); CONFIG_TAG holds the name without the seed suffix.
SEED_PARAM = "seed"
CONFIG_TAG = "archlab.config"
DATA_DIGEST_TAG = "archlab.data_digest"   # hex digest of the arrays a run trained and was judged on
DATA_SOURCE_TAG = "archlab.data_source"   # the data folder (Part 1: the generator's params and seed)
DATA_KIND_TAG = "archlab.data_kind"       # one of DATA_KINDS
DATA_KINDS = ("lossless", "jpeg", "synthetic", "unknown")
SMOKE_TAG = "archlab.smoke"               # "true": below the programme's size (allow_small, fewer epochs)
MAX_PARAM_LENGTH = 6000


def seed_run_name(name: str, seed: int, first: bool) -> str:
    """The run name of one seed of configuration `name`: the programme's own name for the first
    seed (its results file keeps its name too), `<name>_s<seed>` for every further seed."""
    return name if first else f"{name}_s{seed}"


def default_tracking_uri() -> str:
    return f"sqlite:///{os.path.abspath('mlflow.db')}"


def configure_tracking(tracking_uri: Optional[str] = None, check_timeout_s: float = 10.0) -> str:
    """Point MLflow at `tracking_uri` (else $MLFLOW_TRACKING_URI, else ./mlflow.db) and check that
    the store answers, so an unreachable server fails in seconds, before any training."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    from training.tracking.describe import enable_system_metrics

    enable_system_metrics()
    if uri.startswith(("http://", "https://")):
        _check_server(uri, check_timeout_s)
    return uri


def _check_server(uri: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise ConnectionError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError, ConnectionError) as e:
        raise ConnectionError(
            f"MLflow tracking server {uri!r} is not reachable ({e}); start it (python -m entrypoints.server) "
            f"or unset MLFLOW_TRACKING_URI to use the local store {default_tracking_uri()!r}") from e


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> Dict[str, str]:
    """Nested dicts become dotted keys; lists are JSON; every value a string within MLflow's limit."""
    flat: Dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


@contextlib.contextmanager
def open_run(name: str, tags: Optional[Mapping[str, str]] = None, experiment: Optional[str] = None,
             run_id: Optional[str] = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, with `run_id`) a run in the right place:

    - inside an active run: a nested child of it, in the parent's experiment (a resumed child is
      moved under the active parent);
    - launched by `mlflow run` (MLFLOW_RUN_ID set): the project's own run becomes this run;
    - otherwise: a new top-level run in `experiment` (default: default_experiment_name()).
    The run is tagged with its owner (training.tracking.lifecycle). A run that raises ends FAILED
    (KILLED for Ctrl-C, SIGTERM, SIGHUP) with the reason in `archlab.end_reason` and the error in
    `archlab.error`; a resumed run keeps its previous ones as `archlab.previous_*` (so does a
    project run a sweep closed as never started while its environment was in fact still building).
    """
    from training.tracking import lifecycle

    lifecycle.install_signal_handlers()
    tags = {**dict(tags or {}), **lifecycle.owner_tags()}
    active = mlflow.active_run()
    # launched by `mlflow run` (start_run consumes MLFLOW_RUN_ID, so note it first)
    launched = os.environ.get("MLFLOW_RUN_ID") if run_id is None and active is None else None
    with mlflow_call():
        ctx = _start_run(name, tags, experiment, run_id, active)
    with ctx as run:
        lifecycle.opened(run.info.run_id)
        try:
            if run_id is not None:
                with mlflow_call():
                    _reopened(run_id, tags, parent_id=active.info.run_id if active is not None else None)
            elif launched is not None:  # closed by a sweep while its environment was still building?
                _keep_previous_end(launched, MlflowClient().get_run(launched).data.tags)
            yield run
        except BaseException as e:
            status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):
                mlflow.set_tags({lifecycle.ERROR_TAG: f"{type(e).__name__}: {e}"[:5000],
                                 lifecycle.END_REASON_TAG: lifecycle.end_reason(e)})
            mlflow.end_run(status=status)
            raise
        finally:
            lifecycle.closed(run.info.run_id)


def _start_run(name: str, tags: Mapping[str, str], experiment: Optional[str], run_id: Optional[str],
               active: Optional[mlflow.ActiveRun]) -> mlflow.ActiveRun:
    """open_run's choice of where the run goes (see there), made with one start_run call."""
    if run_id is not None:
        if active is None:  # new nested children must land in the resumed run's experiment
            mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
        return mlflow.start_run(run_id=run_id, nested=active is not None)
    if active is not None:
        return mlflow.start_run(run_name=name, nested=True, tags=tags, experiment_id=active.info.experiment_id)
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run(run_name=name, tags=tags)
    if not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment or default_experiment_name())
    return mlflow.start_run(run_name=name, tags=tags)


def _reopened(run_id: str, tags: Mapping[str, str], parent_id: Optional[str]) -> None:
    """A resumed run: new owner tags, under the active parent, its old end kept as `previous_*`."""
    old = MlflowClient().get_run(run_id).data.tags
    extra = {"mlflow.parentRunId": parent_id} if parent_id and old.get("mlflow.parentRunId") != parent_id else {}
    mlflow.set_tags({**tags, **extra})
    _keep_previous_end(run_id, old)


def _keep_previous_end(run_id: str, old: Mapping[str, str]) -> None:
    """A run that ends afresh keeps how it ended before (`archlab.end_reason`, `archlab.error`) as
    `archlab.previous_*`, so its tags never describe an end that is not its last."""
    from training.tracking import lifecycle

    moved = {f"archlab.previous_{key.split('.', 1)[1]}": old[key]
             for key in (lifecycle.ERROR_TAG, lifecycle.END_REASON_TAG) if key in old}
    if not moved:
        return
    client = MlflowClient()
    mlflow.set_tags(moved)
    for key in (lifecycle.ERROR_TAG, lifecycle.END_REASON_TAG):
        if key in old:
            client.delete_tag(run_id, key)


def default_experiment_name() -> str:
    """$ARCHLAB_EXPERIMENT, else $MLFLOW_EXPERIMENT_NAME (what `mlflow run` also reads, so one
    export puts both ways of running in one experiment), else "archlab"."""
    return os.environ.get("ARCHLAB_EXPERIMENT") or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@mlflow_call()
def current_experiment_id() -> str:
    """The experiment `open_run` would put a new run in (same resolution order)."""
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    if os.environ.get("MLFLOW_RUN_ID"):
        return MlflowClient().get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = default_experiment_name()
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else mlflow.create_experiment(name)


@mlflow_call()
def mark_diverged(reason: str) -> None:
    """Tag the active run as diverged (NaN/inf loss): a rerun will not retry it blindly."""
    mlflow.set_tags({DIVERGED_TAG: "true", "archlab.error": reason[:5000]})


@mlflow_call()
def log_params(params: Mapping[str, Any], run_id: Optional[str] = None) -> None:
    """All params in one call; re-logging the same values (a resumed run, or the -P values that
    `mlflow run` logged on the project's run before it started) is fine."""
    run_id = run_id or mlflow.active_run().info.run_id
    flat = flatten_params(params)
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in flat.items() if k not in existing]
    changed = {k: (existing[k], v) for k, v in flat.items() if k in existing and not same_param(existing[k], v)}
    if changed:
        raise ValueError(f"run {run_id} already has different values for params {changed}")
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])


def same_param(logged: str, value: str) -> bool:
    """Equal strings, or equal numbers: `mlflow run -P epochs=5.0` logs "5.0" for what trains as 5."""
    if logged == value:
        return True
    try:
        return float(logged) == float(value)
    except ValueError:
        return False


@mlflow_call()
def log_metrics(metrics: Mapping[str, Any], step: int, run_id: Optional[str] = None,
                model_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> None:
    """Numeric, finite-or-not metrics in a single `log_batch` call (one round-trip per epoch);
    with `model_id` they are also the metrics of that logged model (its page in the UI)."""
    run_id = run_id or mlflow.active_run().info.run_id
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step, model_id=model_id) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if batch:
        MlflowClient().log_batch(run_id, metrics=batch, tags=[RunTag(k, v) for k, v in (tags or {}).items()])


class EpochLogger:
    """Trainer `on_epoch_end` callback: one batched MLflow call per epoch, step = epoch.

    Idempotent per step: epochs the run already holds (a resumed run replays its saved epochs)
    are skipped, so every step is logged exactly once even across kills and resumes."""

    def __init__(self, run_id: Optional[str] = None, prefix_map: Optional[Mapping[str, str]] = None,
                 probe_key: str = "train_loss"):
        self.run_id = run_id or mlflow.active_run().info.run_id
        self.prefix_map = dict(prefix_map or {})
        with mlflow_call():
            logged = MlflowClient().get_metric_history(self.run_id, self.prefix_map.get(probe_key, probe_key))
        self.last_logged_step = max((m.step for m in logged), default=0)

    def __call__(self, epoch_metrics: Dict[str, Any]) -> None:
        epoch = epoch_metrics["epoch"]
        if epoch <= self.last_logged_step:
            return
        self.last_logged_step = epoch
        renamed = {self.prefix_map.get(k, k): v for k, v in epoch_metrics.items() if k not in ("epoch", "improved")}
        from training.tracking.lifecycle import heartbeat_tags

        log_metrics({k: v for k, v in renamed.items() if v is not None}, step=epoch, run_id=self.run_id,
                    tags=heartbeat_tags())  # the owner's heartbeat, in the same round-trip


@mlflow_call()
def log_figure(fig, artifact_file: str, close: bool = True) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, artifact_file)
    if close:
        plt.close(fig)


@mlflow_call()
def log_final_metrics(metrics: Mapping[str, Any], step: int, run_id: Optional[str] = None,
                      model_id: Optional[str] = None) -> None:
    """The run's one-off final metrics (test_acc, n_params ...), each logged once: a resumed run
    that was killed during its final logging does not log them a second time."""
    run_id = run_id or mlflow.active_run().info.run_id
    have = MlflowClient().get_run(run_id).data.metrics
    log_metrics({k: v for k, v in metrics.items() if k not in have}, step=step, run_id=run_id, model_id=model_id)


def _logged_models(run_id: str, name: str) -> list:
    run = MlflowClient().get_run(run_id)
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}'")
    return [m for m in found if m.name == name]


@mlflow_call()
def log_torch_model(model, input_example, name: str = "model") -> str:
    """Log the final model once, as the LoggedModel `name`; returns its model_id (for linking the
    test metrics). Explicit pip requirements skip MLflow's slow inference (~6 s); torch.export's
    notes about the example's shapes are kept off the console (give an example of >= 2 rows, so
    the batch dimension stays dynamic)."""
    import logging
    import warnings

    import mlflow.pytorch
    import torch

    run_id = mlflow.active_run().info.run_id
    existing = _logged_models(run_id, name)  # a resumed run: a READY model is kept (logged once), a
    ready = [m for m in existing if str(m.status) == "READY"]  # PENDING one (a kill mid-upload) deleted
    if ready:
        return ready[0].model_id
    for m in existing:
        MlflowClient().delete_logged_model(m.model_id)
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    model_cpu = model.to("cpu").eval()
    quiet = [logging.getLogger(n) for n in ("torch._export", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # torch.export's per-model note about weight groups of a CPU model
            warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
            info = mlflow.pytorch.log_model(model_cpu, name=name, input_example=input_example, pip_requirements=reqs)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return info.model_id


def find_runs(filter_string: str, experiment_names: Optional[list] = None) -> "Any":
    """search_runs over the given experiments (default: all), as a pandas DataFrame."""
    kwargs = dict(filter_string=filter_string, output_format="pandas", max_results=50_000)
    if experiment_names:
        return mlflow.search_runs(experiment_names=experiment_names, **kwargs)
    return mlflow.search_runs(search_all_experiments=True, **kwargs)

