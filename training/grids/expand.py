"""CIFAR-10 experiment grids (exp1_1 ... exp2, test_run) from configs/<name>.yaml.

A grid file names a base recipe (`base:`), the model type, the run name, and a list of
K x L blocks; `pool_every: auto` picks, per configuration, the smallest pool_every that keeps
every feature map at least 1x1. The grid is one MLflow parent run; cnn_experiment makes each
configuration a child (skipping finished ones, resuming interrupted ones).
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from training.config import load_config

GRIDS = ("test_run", "exp1_1", "exp1_2", "exp1_3", "exp1_4", "exp2")
RUN_KEYS = ("seed", "bs_train", "bs_test", "batches", "epochs", "early_stopping", "lr", "reg", "hidden_dims",
            "pool_every", "out_dir", "device")


def _merge(base: Dict[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_grid_config(name: str) -> Dict[str, Any]:
    """configs/<name>.yaml merged over its `base:` recipe."""
    cfg = load_config(name)
    if "base" in cfg:
        cfg = _merge(load_config(cfg.pop("base")), cfg)
    for key in ("run_name", "model_type", "grid"):
        if key not in cfg:
            raise ValueError(f"grid config {name!r} is missing {key!r}")
    return cfg


def _pool_every(cfg: Mapping[str, Any], K: List[int], L: int) -> int:
    rule = cfg.get("pool_every", "auto")
    if isinstance(rule, Mapping):  # {L: P}
        if L not in rule:
            raise ValueError(f"pool_every mapping {dict(rule)} has no entry for L={L}")
        return int(rule[L])
    if rule != "auto":
        return int(rule)
    from models.cnn import min_valid_pool_every

    channels = [k for k in K for _ in range(L)]
    return min_valid_pool_every((3, 32, 32), channels, dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=2))


def expand_grid(cfg: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """One cnn_experiment kwargs dict per configuration, in the programme's order.

    overrides: top-level keys (epochs, batches, bs_train, device, out_dir ...) and `options`
    entries (n_train, n_valid, data_dir ...) given on the command line; None values are ignored.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    options = dict(cfg.get("options", {}))
    options.update(overrides.pop("options", {}) or {})
    runs = []
    for block in cfg["grid"]:
        Ks = block["K"] if isinstance(block["K"][0], list) else [block["K"]]
        for K in Ks:
            for L in block["L"]:
                kwargs = {k: cfg[k] for k in RUN_KEYS if k in cfg}
                kwargs.update(overrides)
                kwargs.update(run_name=cfg["run_name"], model_type=cfg["model_type"], filters_per_layer=list(K),
                              layers_per_block=int(L), pool_every=_pool_every({**cfg, **overrides}, list(K), int(L)),
                              **copy.deepcopy(options))
                runs.append(kwargs)
    return runs


def heaviest_first(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Longest-processing-time-first order, so that parallel workers finish together instead of one
    training the longest configuration alone at the end: exp2, then ResNets, then plain nets,
    deeper and wider first (a rough cost: layers x widest K); ties keep the programme's order."""
    rank = {"ycn": 0, "resnet": 1, "cnn": 2}
    return sorted(runs, key=lambda r: (rank.get(r["model_type"], 3),
                                       -len(r["filters_per_layer"]) * r["layers_per_block"] * max(r["filters_per_layer"])))


def check_grid(runs: List[Dict[str, Any]]) -> None:
    """Validate every configuration (arguments, options, model shapes, data present) before the
    first one trains or any worker starts: cnn_experiment's own checks, in dry-run mode."""
    import torch

    from training.data.cifar import load_cifar10, split_indices
    from training.cnn.experiment import cnn_experiment

    rng = torch.get_rng_state()
    try:
        for kwargs in runs:
            cnn_experiment(**{**kwargs, "dry_run": True})
    finally:
        torch.set_rng_state(rng)
    # the data itself: every file readable and valid, and each split fits (else the grid's parent
    # run would open, and fail, before the first configuration found out)
    n_available = {}
    for kwargs in runs:
        key = (kwargs.get("data_dir"), bool(kwargs.get("download")))
        if key not in n_available:
            n_available[key] = len(load_cifar10(*key).train_y)
        split_indices(n_available[key], kwargs.get("n_train"), kwargs.get("n_valid", 5000), seed=0)


@contextlib.contextmanager
def grid_parent_run(name: str, cfg: Mapping[str, Any], runs: List[Dict[str, Any]]) -> Iterator[Any]:
    """The grid's parent run, with its params logged; children nest under it.

    A rerun after a grid died (its parent ended FAILED or KILLED) continues that parent when it
    describes the same grid (same params), so resumed and new children share one parent and the
    grid ends as one FINISHED run; the old error moves to `archlab.previous_error`. Anything
    else (a finished grid, a changed config, a live RUNNING parent) gets a new parent.
    """
    import mlflow

    from training.tracking import runs as tracking

    params = {"grid": cfg["grid"], "model_type": cfg["model_type"], "run_name": cfg["run_name"]}
    earlier = _continuable_parent(name, params)
    resume_id = earlier["run_id"] if earlier is not None else None
    tags = {tracking.GRID_TAG: name, tracking.ROLE_TAG: "parent", "archlab.n_configurations": str(len(runs))}
    with tracking.open_run(name, tags=tags, run_id=resume_id) as run:
        if earlier is not None:
            error = earlier.get("tags.archlab.error")
            if isinstance(error, str):
                mlflow.set_tag("archlab.previous_error", error)
                mlflow.MlflowClient().delete_tag(resume_id, "archlab.error")
            print(f"*** Continuing the grid's earlier parent run {resume_id} (it ended {earlier['status']})")
        tracking.log_params(params)
        yield run


def _continuable_parent(name: str, params: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The newest parent run of grid `name` in this experiment (its search_runs row) if it ended
    FAILED or KILLED and its params equal `params`; None otherwise, and whenever the parent is not
    archlab's to choose (inside an active run, or launched by `mlflow run`)."""
    import mlflow

    from training.tracking import runs as tracking

    if mlflow.active_run() is not None or os.environ.get("MLFLOW_RUN_ID"):
        return None
    found = mlflow.search_runs([tracking.current_experiment_id()], output_format="pandas", max_results=1,
                               filter_string=f"tags.{tracking.GRID_TAG} = '{name}' and "
                                             f"tags.`{tracking.ROLE_TAG}` = 'parent'",
                               order_by=["attributes.start_time DESC"])
    if not len(found) or found["status"].iloc[0] not in ("FAILED", "KILLED"):
        return None
    logged = found.iloc[0]
    if any(logged.get(f"params.{k}") != v for k, v in tracking.flatten_params(params).items()):
        return None
    return logged


def print_summary(name: str, outcome: Mapping[str, List[str]]) -> None:
    print(f"*** Grid {name}: {len(outcome['written'])} trained, {len(outcome['skipped'])} already done, "
          f"{len(outcome['diverged'])} diverged")


def select_runs(runs: List[Dict[str, Any]], only: Optional[Sequence[str]]) -> List[Dict[str, Any]]:
    """The configurations named in `only` (child run names such as exp2_L3_K32-64-128), all when None."""
    from training.experiments import experiment_name_of

    if not only:
        return runs
    names = [experiment_name_of(kwargs) for kwargs in runs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"--only names {unknown} are not configurations of this grid; valid: {names}")
    return [kwargs for kwargs, n in zip(runs, names) if n in only]


def run_grid(name: str, overrides: Optional[Mapping[str, Any]] = None, workers: int = 1,
             devices: Optional[Sequence[str]] = None, only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run (or continue) grid `name` as one parent run with a child per configuration.

    workers > 1 (or a devices list): the configurations train in parallel worker processes
    (training.grids.parallel); otherwise one after the other in this process.
    only: train just these configurations (child run names); the rest stay as they are."""
    from training.cnn.experiment import cnn_experiment
    from training.experiments import experiment_name_of
    from training.trainer import NonFiniteLossError

    cfg = load_grid_config(name)
    runs = select_runs(expand_grid(cfg, overrides), only)
    check_grid(runs)
    if workers > 1 or devices:
        from training.grids.parallel import run_grid_parallel

        return run_grid_parallel(name, cfg, runs, workers=workers, devices=devices)
    outcome = {"written": [], "skipped": [], "diverged": []}
    with grid_parent_run(name, cfg, runs):
        for kwargs in runs:
            label = experiment_name_of(kwargs)
            try:
                path = cnn_experiment(grid=name, **kwargs)
            except NonFiniteLossError as e:
                print(f"*** {label} diverged ({e}); the run is FAILED with the reason as a tag. Continuing.")
                outcome["diverged"].append(label)
                continue
            outcome["written" if path else "skipped"].append(label)
    print_summary(name, outcome)
    return outcome
