"""Several grids as one job (the whole programme): every configuration in one pool, one parent per grid.

Why not grid after grid: each grid ends with a few long configurations training while the other
workers idle (exp1_3 has 4 configurations, exp2 4, test_run 1). One pool over every grid's
configurations, heaviest first across the programme, keeps the workers busy until the programme's
last, shortest configuration; each child still nests under its own grid's parent run.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

from training.grids.expand import all_skipped, load_grid_config, nothing_to_train, plan_grid, run_grid
from training.grids.parent import Planned

Outcome = Dict[str, List[str]]


def plan_programme(names: Sequence[str], overrides: Optional[Mapping[str, Any]] = None,
                   seeds: Optional[Sequence[int]] = None) -> Dict[str, List[Planned]]:
    """Every grid's (recipe, options) pairs, all checked before anything trains."""
    return {name: plan_grid(name, overrides, seeds=seeds) for name in names}


def run_programme(names: Sequence[str], overrides: Optional[Mapping[str, Any]] = None, workers: int = 1,
                  devices: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
                  planned: Optional[Mapping[str, List[Planned]]] = None) -> Dict[str, Outcome]:
    """Run (or continue) grids `names`; {grid: outcome} as run_grid returns it.

    One worker (no devices list): grid after grid in this process (nothing idles). More: one pool
    for all of them (training.grids.parallel.run_grids_parallel), each grid locked for the whole
    job, grids with nothing left to train skipped without a parent. planned: plan_programme's
    answer for these arguments when the caller checked them already (each check builds every model
    on the meta device and reads the data)."""
    planned = planned if planned is not None else plan_programme(names, overrides, seeds)
    if workers <= 1 and not devices:
        return {name: run_grid(name, overrides, seeds=seeds, planned=planned[name]) for name in names}
    import mlflow

    from training.grids.lock import grid_lock
    from training.grids.parallel import run_grids_parallel

    outcomes: Dict[str, Outcome] = {}
    with contextlib.ExitStack() as locks:
        for name in sorted(names):  # one order for every process: two programmes never deadlock
            locks.enter_context(grid_lock(mlflow.get_tracking_uri(), name))
        todo = {}
        for name in names:
            cfg = load_grid_config(name)
            if nothing_to_train(name, cfg, planned[name]):
                outcomes[name] = {**all_skipped(name, planned[name]), "busy": []}  # as the pool reports grids
            else:
                todo[name] = (cfg, planned[name])
        if todo:
            outcomes.update(run_grids_parallel(todo, workers, devices))
    return {name: outcomes[name] for name in names}
