"""CIFAR-10 experiment grids (exp1_1 ... exp2, test_run) from configs/<name>.yaml.

A grid file names a base recipe (`base:`), the model type, the run name, and a list of
K x L blocks; `pool_every: auto` picks, per configuration, the smallest pool_every that keeps
every feature map at least 1x1. The grid is one MLflow parent run; cnn_experiment makes each
configuration a child (skipping finished ones, resuming interrupted ones).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from training.config import load_config
from training.grids.parent import Planned, grid_parent_run, print_summary, train_child

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
    from training.cnn.recipe import CifarRecipe

    channels = CifarRecipe(cfg["run_name"], filters_per_layer=K, layers_per_block=L).channels
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


def check_grid(runs: List[Dict[str, Any]]) -> List[Planned]:
    """Validate every configuration (arguments, options, model shapes, data present) before the
    first one trains or any worker starts, and return each as a (recipe, options) pair to train:
    cnn_experiment's own checks, with the layers built on the meta device."""
    import torch

    from training.cnn.experiment import decide_policy, dry_run, plan_run
    from training.data.cifar import check_n_test, load_cifar10, split_indices

    planned = []
    rng = torch.get_rng_state()
    try:
        for kwargs in runs:
            recipe, options = plan_run(kwargs)
            decide_policy(recipe, options)  # cuda_graphs='on' where it cannot work is refused here
            dry_run(recipe, options)
            planned.append((recipe, options))
    finally:
        torch.set_rng_state(rng)
    # the data itself: every file readable and valid, and each split fits (else the grid's parent
    # run would open, and fail, before the first configuration found out)
    n_available = {}
    for recipe, options in planned:
        key = (options.data_dir, bool(options.download))
        if key not in n_available:
            arrays = load_cifar10(*key)
            n_available[key] = len(arrays.train_y), len(arrays.test_y)
        split_indices(n_available[key][0], recipe.n_train, recipe.n_valid, seed=0)
        check_n_test(recipe.n_test, n_available[key][1])
    return planned


def nothing_to_train(name: str, cfg: Mapping[str, Any], planned: Sequence[Planned]) -> bool:
    """True (and says so) when every configuration already finished: a rerun then opens no new,
    empty parent run. Under `mlflow run` the project's run exists anyway, so it still becomes the parent;
    and a parent left open by a driver that died after the last child finished is continued, so
    that it ends FINISHED instead of staying RUNNING."""
    from training.cnn.store import already_done
    from training.grids.parent import continuable_parent, parent_params

    if os.environ.get("MLFLOW_RUN_ID") or not all(already_done(r, o) for r, o in planned):
        return False
    if continuable_parent(name, parent_params(cfg)) is not None:
        print(f"*** Grid {name}: all {len(planned)} configurations already finished; closing its earlier parent run")
        return False
    print(f"*** Grid {name}: all {len(planned)} configurations already finished; nothing to train, no parent "
          f"run opened (restart=true trains them again)")
    return True


def all_skipped(name: str, planned: Sequence[Planned]) -> Dict[str, List[str]]:
    """The outcome of a grid with nothing to train, with the same closing line as one that trained."""
    from training.cnn.store import run_name

    outcome = {"written": [], "skipped": [run_name(r, o) for r, o in planned], "diverged": []}
    print_summary(name, outcome)
    return outcome


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


def plan_grid(name: str, overrides: Optional[Mapping[str, Any]] = None, only: Optional[Sequence[str]] = None,
              seeds: Optional[Sequence[int]] = None) -> List[Planned]:
    """Grid `name`'s (recipe, options) pairs, one per (configuration, seed), all checked."""
    from training.grids.seeds import with_seeds

    return check_grid(with_seeds(select_runs(expand_grid(load_grid_config(name), overrides), only), seeds))


def run_grid(name: str, overrides: Optional[Mapping[str, Any]] = None, workers: int = 1,
             devices: Optional[Sequence[str]] = None, only: Optional[Sequence[str]] = None,
             seeds: Optional[Sequence[int]] = None, planned: Optional[List[Planned]] = None) -> Dict[str, Any]:
    """Run (or continue) grid `name` as one parent run with a child per (configuration, seed).

    workers > 1 (or a devices list): the (configuration, seed) pairs train in parallel worker
    processes (training.grids.parallel); otherwise one after the other in this process.
    only: train just these configurations (programme names); the rest stay as they are.
    seeds: the seeds of every configuration (None: the config's seed).
    planned: plan_grid's answer for these arguments when the caller already has it (not checked twice)."""
    import mlflow

    from training.cnn.store import run_name
    from training.grids.lock import config_lock, grid_lock

    cfg = load_grid_config(name)
    planned = planned if planned is not None else plan_grid(name, overrides, only, seeds)
    with grid_lock(mlflow.get_tracking_uri(), name):  # one process per store and grid, in every mode
        if nothing_to_train(name, cfg, planned):
            return all_skipped(name, planned)
        if workers > 1 or devices:
            from training.grids.parallel import run_grid_parallel

            return run_grid_parallel(name, cfg, planned, workers=workers, devices=devices)
        outcome = {"written": [], "skipped": [], "diverged": [], "busy": []}
        with grid_parent_run(name, cfg, planned):
            for recipe, options in planned:
                label = run_name(recipe, options)
                with config_lock(options.checkpoint_dir, label) as holder:
                    if holder is not None:  # another grid (on another store) trains it: leave it to that one
                        print(f"*** {label}: {holder} is training it right now; leaving it to that one")
                    outcome["busy" if holder else train_child(name, recipe, options)].append(label)
    print_summary(name, outcome)
    return outcome
