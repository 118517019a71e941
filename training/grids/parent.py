"""A grid's MLflow parent run: opened (or continued after a crash) once, its children nest under it.

Its own module so that both ways of training a grid (in this process, training.grids.expand;
in worker processes, training.grids.parallel) share it without importing each other.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from training.cnn.options import RunOptions
    from training.cnn.recipe import CifarRecipe

Planned = Tuple["CifarRecipe", "RunOptions"]  # one validated configuration, ready to train (check_grid)
# The parent's tables/configurations.json: one row per finished child.
CONFIGURATION_PARAMS = ("filters_per_layer", "layers_per_block", "pool_every", "n_params")
CONFIGURATION_METRICS = ("best_valid_acc", "test_acc", "best_epoch", "fit_wall_time_s")


def parent_params(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The params a grid's parent logs, and what a rerun's parent must match to continue it."""
    return {"grid": cfg["grid"], "model_type": cfg["model_type"], "run_name": cfg["run_name"]}


@contextlib.contextmanager
def grid_parent_run(name: str, cfg: Mapping[str, Any], runs: Sequence[Any]) -> Iterator[Any]:
    """The grid's parent run, with its params logged; children nest under it.

    A rerun after a grid died (its parent ended FAILED or KILLED) continues that parent when it
    describes the same grid (same params), so resumed and new children share one parent and the
    grid ends as one FINISHED run; the old error moves to `archlab.previous_error`. Anything
    else (a finished grid, a changed config, a live RUNNING parent) gets a new parent.
    """
    import mlflow

    from training.tracking import runs as tracking
    from training.tracking.describe import describe, grid_description
    from training.tracking.parents import log_configuration_table

    params = parent_params(cfg)
    earlier = continuable_parent(name, params)
    resume_id = earlier["run_id"] if earlier is not None else None
    seeds = list(dict.fromkeys(str(recipe.seed) for recipe, _ in runs)) if runs and isinstance(runs[0], tuple) else []
    tags = {tracking.GRID_TAG: name, tracking.ROLE_TAG: "parent", "archlab.n_configurations": str(len(runs)),
            **({"archlab.seeds": ",".join(seeds)} if seeds else {})}
    with tracking.open_run(name, tags=tags, run_id=resume_id) as run:
        if earlier is not None:  # open_run keeps its old error as archlab.previous_error
            how = "its owner died, leaving it RUNNING" if earlier["status"] == "RUNNING" else \
                f"it ended {earlier['status']}"
            print(f"*** Continuing the grid's earlier parent run {resume_id} ({how})")
        tracking.log_params(params)
        describe(grid_description(name, len(runs), f"{cfg['model_type']}, K x L"), run.info.run_id)
        yield run
        log_configuration_table(run.info.run_id, CONFIGURATION_PARAMS, CONFIGURATION_METRICS)


class _HeldParent(threading.Thread):
    """One grid's parent run, held open in a thread of its own until released.

    Why a thread: MLflow's active-run stack is thread-local, so several grids' parents can be open
    at once (one pool of workers trains them all), each nested under the driver's active run, and
    each still goes through grid_parent_run (continuation, params, description, table, and the
    FAILED/KILLED end with its reason when the driver hands it an error)."""

    def __init__(self, name: str, cfg: Mapping[str, Any], runs: Sequence[Any], outer_run_id: Optional[str]):
        super().__init__(name=f"parent-{name}", daemon=True)
        self.grid, self.cfg, self.runs, self.outer_run_id = name, cfg, runs, outer_run_id
        self.run_obj: Any = None
        self.error: Optional[BaseException] = None     # raised inside the parent's context on release
        self.failure: Optional[BaseException] = None   # what opening or closing the parent raised
        self.ready, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        import mlflow

        try:
            if self.outer_run_id:  # this thread's active run, so the parent nests under it; never ended here
                mlflow.start_run(run_id=self.outer_run_id, log_system_metrics=False)
            with grid_parent_run(self.grid, self.cfg, self.runs) as run:
                self.run_obj = run
                self.ready.set()
                self.release.wait()
                if self.error is not None:
                    raise self.error
        except BaseException as e:  # noqa: BLE001  (handed to the driver)
            if e is not self.error:
                self.failure = e
        finally:
            self.ready.set()


@contextlib.contextmanager
def held_parent_runs(grids: Mapping[str, Tuple[Mapping[str, Any], Sequence[Any]]]) -> Iterator[Dict[str, Any]]:
    """{name: parent run} for every grid ({name: (cfg, planned)}), all open at once, each nested
    under this thread's active run (if any). Ends them all on exit: FINISHED, or FAILED/KILLED
    with the error that left the block."""
    import mlflow

    outer = mlflow.active_run()
    held: List[_HeldParent] = []
    error: Optional[BaseException] = None
    try:
        for name, (cfg, runs) in grids.items():  # one after the other: each may continue an earlier parent
            holder = _HeldParent(name, cfg, runs, outer.info.run_id if outer else None)
            held.append(holder)
            holder.start()
            holder.ready.wait()
            if holder.failure is not None:
                raise holder.failure
        yield {h.grid: h.run_obj for h in held}
    except BaseException as e:
        error = e
        raise
    finally:
        for holder in held:
            holder.error = error
            holder.release.set()
        for holder in held:
            holder.join()
        failures = [h.failure for h in held if h.failure is not None and h.failure is not error]
        if failures and error is None:
            raise failures[0]


def continuable_parent(name: str, params: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The newest parent run of grid `name` in this experiment (its search_runs row) if it ended
    FAILED or KILLED, or its owner died leaving it RUNNING (training.tracking.lifecycle), and its
    params equal `params`; None otherwise, and when launched by `mlflow run` (the project's run is
    the parent). Inside an active run (reproduce) only that run's own grid parents count, so a
    continued reproduce run continues its grids' parents. A parent whose owner lives: RunBusyError."""
    import mlflow

    from training.tracking import lifecycle, runs as tracking

    if os.environ.get("MLFLOW_RUN_ID"):
        return None
    outer = mlflow.active_run()
    under = f" and tags.mlflow.parentRunId = '{outer.info.run_id}'" if outer is not None else ""
    experiment_id = outer.info.experiment_id if outer is not None else tracking.current_experiment_id()
    found = mlflow.search_runs([experiment_id], output_format="pandas", max_results=100,
                               filter_string=f"tags.{tracking.GRID_TAG} = '{name}' and "
                                             f"tags.`{tracking.ROLE_TAG}` = 'parent'{under}",
                               order_by=["attributes.start_time DESC"])
    flat = tracking.flatten_params(params)
    return lifecycle.parent_to_continue(found, name, lambda row: all(row.get(f"params.{k}") == v
                                                                     for k, v in flat.items()))


def train_child(grid: str, recipe: "CifarRecipe", options: "RunOptions") -> str:
    """Train one configuration as a child of the active parent run: "written" | "skipped" |
    "diverged" (a non-finite loss fails only its own run, tagged with the reason)."""
    import dataclasses

    from training.cnn.experiment import decide_policy, run_recipe
    from training.trainer import NonFiniteLossError

    options = dataclasses.replace(options, grid=grid)
    try:
        path = run_recipe(recipe, decide_policy(recipe, options), options)
    except NonFiniteLossError as e:
        print(f"*** {recipe.name} diverged ({e}); the run is FAILED with the reason as a tag. Continuing.")
        return "diverged"
    return "written" if path else "skipped"


def print_summary(name: str, outcome: Mapping[str, List[str]]) -> None:
    print(f"*** Grid {name}: {len(outcome['written'])} trained, {len(outcome['skipped'])} already done, "
          f"{len(outcome['diverged'])} diverged")
