"""The run store of CIFAR-10 runs: where a recipe's run, checkpoint and results live.

A rerun is safe: a configuration whose run already FINISHED (same config hash) is skipped, and
an interrupted one continues its own MLflow run from the last saved epoch (model, optimizer,
scheduler, RNG, loader, early-stopping counter), so its metric steps stay contiguous.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, Optional, Tuple

from training.cnn.checkpoints import drop_after_finish
from training.cnn.options import RunOptions
from training.cnn.recipe import CifarRecipe
from training.results import FitResult
from training.results_io import save_experiment
from training.tracking.timing import mlflow_call  # no MLflow import: runs without MLflow still work

# The fit's "test" curves are on the validation split: MLflow names them for what they are.
VALID_METRIC_NAMES = {"test_loss": "valid_loss", "test_acc": "valid_acc", "best_test_acc": "best_valid_acc"}


def programme_config(recipe: CifarRecipe, options: RunOptions) -> Dict[str, Any]:
    """The call as the programme's results file records it: its arguments, then `kw` (the
    archlab options that differ from their defaults)."""
    r, o = recipe, options
    return dict(run_name=r.run_name, out_dir=o.out_dir, seed=r.seed, device=o.device, bs_train=r.bs_train,
                bs_test=r.bs_test, batches=r.batches, epochs=r.epochs, early_stopping=r.early_stopping,
                checkpoints=o.checkpoints, lr=r.lr, reg=r.reg, filters_per_layer=list(r.filters_per_layer),
                layers_per_block=r.layers_per_block, pool_every=r.pool_every, hidden_dims=list(r.hidden_dims),
                model_type=r.model_type, kw={**r.changed_settings(), **o.changed_kw()})


def run_name(recipe: CifarRecipe, options: RunOptions) -> str:
    """The run's name: the programme's for the first seed, `<name>_s<seed>` for further seeds."""
    from training.tracking.runs import seed_run_name

    return seed_run_name(recipe.name, recipe.seed, options.first_seed)


def programme_epochs(grid: Optional[str]) -> Optional[int]:
    """The epochs grid `grid`'s config trains (None: not a grid of ours)."""
    from training.grids.expand import GRIDS, load_grid_config

    return int(load_grid_config(grid)["epochs"]) if grid in GRIDS else None


def is_smoke(recipe: CifarRecipe, options: RunOptions, train_images_per_epoch: int, n_valid: int) -> bool:
    """Below the programme's size: fewer images per epoch than its minimum (what allow_small
    permits), a test on fewer than the 10000 test images (n_test), or fewer epochs than the grid's
    config trains."""
    from training.data.cifar import FULL_TEST_IMAGES, MIN_TRAIN_IMAGES, MIN_VALID_IMAGES

    if train_images_per_epoch < MIN_TRAIN_IMAGES or n_valid < MIN_VALID_IMAGES:
        return True
    if recipe.n_test is not None and recipe.n_test < FULL_TEST_IMAGES:  # tested on a subset
        return True
    full = programme_epochs(options.grid or recipe.run_name)
    return full is not None and recipe.epochs < full


def check_resume_data(recipe: CifarRecipe, options: RunOptions) -> None:
    """Before any run opens: a training state left by a run on other data (or saved before data
    digests were recorded) is never continued; a one-line error names both digests."""
    from training.data.cifar import check_same_data
    from training.cnn.preflight import read_training_state

    state_file = f"{checkpoint_path(recipe, options)}.state"
    if options.restart or not os.path.isfile(state_file):
        return
    saved = (read_training_state(state_file).get("loader") or {}).get("data_digest")
    check_same_data(saved or "(not recorded)", recipe.data_digest, what=f"the training state {state_file}")


def checkpoint_path(recipe: CifarRecipe, options: RunOptions) -> str:
    """The best model's file (the training state sits beside it as `<path>.state`)."""
    return options.checkpoints or os.path.join(options.checkpoint_dir, f"{recipe.name}-{recipe.config_hash()}.pt")


@mlflow_call()
def prior_runs(chash: str):
    """Earlier runs of this exact configuration in the experiment this run will land in."""
    import mlflow

    from training.tracking import runs as tracking

    exp_id = tracking.current_experiment_id()
    return mlflow.search_runs(experiment_ids=[exp_id], filter_string=f"tags.`{tracking.HASH_TAG}` = '{chash}'",
                              output_format="pandas", order_by=["attributes.start_time DESC"])


def find_prior(recipe: CifarRecipe, options: RunOptions) -> Tuple[bool, Optional[str]]:
    """(skip, resume_run_id): skip a configuration that already finished (or diverged); continue
    the newest unfinished earlier run (killed, failed, or left RUNNING by a dead owner), from its
    training state when one is on disk, else afresh in that same run: one run per configuration,
    never a duplicate. restart forgets both (and closes stale runs)."""
    state_base = checkpoint_path(recipe, options)
    resume_run_id = None
    if options.tracking:
        from training.tracking import lifecycle

        chash = recipe.config_hash()
        prior = prior_runs(chash)
        done = _done(prior)
        if len(done) and not options.restart:
            print(f"*** Skipping {run_name(recipe, options)}: already finished in run {done.run_id.iloc[0]} (same "
                  f"config hash {chash}, same data); use restart to train it again")
            return True, None
        unfinished = prior[~prior.run_id.isin(done.run_id)] if len(prior) else prior
        with mlflow_call():  # closes stale runs of this configuration
            resume_run_id = lifecycle.resumable(unfinished, run_name(recipe, options), reuse=not options.restart)
    if options.restart:
        for path in (state_base, f"{state_base}.state"):
            if os.path.exists(path):
                os.remove(path)
    return False, resume_run_id


def check_state_fits(recipe: CifarRecipe, options: RunOptions, model: Any) -> None:
    """The training state a resume would load was made for `model` (else a one-line error with the way out)."""
    from training.cnn.preflight import check_training_state

    state_file = f"{checkpoint_path(recipe, options)}.state"
    if not options.restart and os.path.isfile(state_file):
        check_training_state(state_file, model)


def _done(prior):
    """The rows of prior_runs that end a configuration: FINISHED, or diverged (never retried blindly)."""
    from training.tracking import runs as tracking

    return prior[(prior["status"] == "FINISHED") | (prior.get(f"tags.{tracking.DIVERGED_TAG}") == "true")] \
        if len(prior) else prior


def already_done(recipe: CifarRecipe, options: RunOptions) -> bool:
    """Whether run_recipe would skip this configuration (quietly: a grid asks before opening a parent).
    Like run_recipe, it judges the recipe with the digest of the data it would train on."""
    if options.restart or not options.tracking:
        return False
    if recipe.data_digest is None:
        recipe = recipe.with_(data_digest=_data_digest(recipe, options))
    return bool(len(_done(prior_runs(recipe.config_hash()))))


def _data_digest(recipe: CifarRecipe, options: RunOptions) -> str:
    """The digest run_recipe would record for the recipe's splits (cifar10_splits caches them per folder)."""
    from training.data.cifar import cifar10_splits

    return cifar10_splits(options.data_dir, recipe.n_train, recipe.n_valid, recipe.split_seed, options.download,
                          n_test=recipe.n_test)[3].digest


@contextlib.contextmanager
def tracked_run(recipe: CifarRecipe, options: RunOptions, device: Any, resume_run_id: Optional[str],
                tags: Optional[Dict[str, str]] = None) -> Iterator[Any]:
    """The configuration's MLflow run (a child when a grid's parent is active); a run that fails
    with a non-finite loss is tagged diverged, so a rerun skips it. tags: the data and smoke tags."""
    from training.tracking import runs as tracking
    from training.trainer import NonFiniteLossError

    tags = {tracking.ROLE_TAG: "child", tracking.HASH_TAG: recipe.config_hash(), "archlab.device": str(device),
            "archlab.out_dir": str(options.out_dir), "archlab.checkpoints": checkpoint_path(recipe, options),
            tracking.CONFIG_TAG: recipe.name, **({tracking.GRID_TAG: options.grid} if options.grid else {}),
            **(tags or {})}
    with tracking.open_run(run_name(recipe, options), tags=tags, run_id=resume_run_id) as run:
        if resume_run_id:
            print(f"*** Resuming MLflow run {resume_run_id} of {run_name(recipe, options)}")
        try:
            yield run
        except NonFiniteLossError as e:
            tracking.mark_diverged(str(e))
            raise


def log_run_params(recipe: CifarRecipe, options: RunOptions, counts: Dict[str, int]) -> None:
    """The call's arguments, every result-changing setting, split sizes, n_params and channels."""
    from training.tracking import describe
    from training.tracking import runs as tracking

    cfg = programme_config(recipe, options)
    for name in ("kw", *RunOptions.PROGRAMME_ARGS):  # out_dir, device, checkpoints: tags (tracked_run), not
        cfg.pop(name)                                 # params, so changing them never blocks a resume
    settings = {k: v for k, v in recipe.fields_logged().items()
                if k not in recipe.PROGRAMME_ARGS + recipe.FROM_DATA}  # the data: tags and dataset inputs
    params = {**cfg, **settings, **counts, "channels": recipe.channels}
    tracking.log_params(params)
    describe.describe(describe.cnn_description(params))


def epoch_logger():
    """Logs each epoch's metrics (validation under its own name) once, even across resumes."""
    from training.tracking import runs as tracking

    return tracking.EpochLogger(prefix_map=VALID_METRIC_NAMES)


def log_outcome(run: Any, recipe: CifarRecipe, options: RunOptions, fit: FitResult, final: Dict[str, Any],
                history: list, execution: Dict[str, Any], example_input=None, model=None,
                data: Optional[Dict[str, str]] = None) -> str:
    """The model (log_model: the best weights, stored once, named after the run), the final metrics
    linked to it and as a summary table, execution tags, the results file (and, without a model,
    the best weights as an artifact)."""
    import mlflow

    from training.tracking import describe
    from training.tracking import runs as tracking

    model_id = None
    if options.log_model and model is not None:
        model_id = tracking.log_torch_model(model.float(), example_input, name=run_name(recipe, options))
    # best_valid_acc is already a per-epoch metric: logging it again would duplicate its last step
    # (each once: a run killed during its final logging and resumed does not log them again)
    tracking.log_final_metrics({k: v for k, v in final.items() if k != "best_valid_acc"}, step=fit.num_epochs,
                               model_id=model_id)
    describe.log_summary_table({"run": run_name(recipe, options), **final})
    with mlflow_call():
        mlflow.set_tags({f"archlab.{k}": v for k, v in execution.items() if k in ("cuda_graph", "cuda_graph_fallback")})
    path = write_results(recipe, options, fit, final, epochs=history, execution=execution,
                         mlflow_run_id=run.info.run_id, data=data or {})
    with mlflow_call():
        mlflow.log_artifact(path, "results")
        if model_id is None:
            mlflow.log_artifact(checkpoint_path(recipe, options), "checkpoints")
    return path


def log_mlflow_time(pre_run_s: float, since: float, step: int) -> None:
    """The run's `mlflow_time_s` (training.tracking.timing): seconds this thread spent in MLflow
    calls since `since` (a timing.spent() reading taken just before start_run), and its skip check's
    `mlflow_pre_run_s`; logged last, just before the run ends, so that issue #17's record can put
    MLflow's share of the time in numbers."""
    from training.tracking import runs as tracking
    from training.tracking import timing

    tracking.log_metrics({timing.METRIC: timing.spent() - since, timing.PRE_RUN_METRIC: pre_run_s}, step=step)


def after_finish(recipe: CifarRecipe, options: RunOptions, run_id: Optional[str]) -> None:
    """Once the run FINISHED: its checkpoints leave the disk (training.cnn.checkpoints; a file named
    with `checkpoints`, or the only copy of the weights when nothing was tracked, stays) and its
    grid's parent gets fresh children_* metrics."""
    drop_after_finish(checkpoint_path(recipe, options), keep_best=options.checkpoints is not None or run_id is None)
    if run_id is not None:
        from training.tracking.parents import summarise_parent

        summarise_parent(run_id)


def write_results(recipe: CifarRecipe, options: RunOptions, fit: FitResult, final: Dict[str, Any], **extra) -> str:
    """The programme's results JSON (plus archlab's final test, epochs and execution report)."""
    path = save_experiment(recipe.run_name, options.out_dir, programme_config(recipe, options), fit,
                           extra={"final_test": final, **extra}, stem=run_name(recipe, options))
    print(f"*** {run_name(recipe, options)}: best valid_acc={final['best_valid_acc']:.2f}% (epoch {final['best_epoch']}), "
          f"test_acc={final['test_acc']:.2f}%")
    print(f"*** Output file {path} written")
    return path
