"""`cnn_experiment` (programme Part 3): one CIFAR-10 configuration as one MLflow run.

`cnn_experiment` keeps the programme's signature and only adapts it: its arguments become a
validated `CifarRecipe` (what is trained) and `RunOptions` (where and how), the device an
`ExecutionPolicy`; `run_recipe` trains it, with the run store (training.cnn.store) deciding
skip/resume and keeping the run's params, metrics and artifacts.
"""
from __future__ import annotations

import random
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from training.cnn import store
from training.cnn.options import RunOptions
from training.cnn.recipe import CifarRecipe
from training.cnn.session import SessionHook, TrainingSession
from training.engine.execution import ExecutionPolicy
from training.cnn.preflight import check_outputs


def cnn_experiment(run_name: str, out_dir: str = "./results", seed: Optional[int] = None, device: Optional[str] = None,
                   bs_train: int = 128, bs_test: Optional[int] = None, batches: Optional[int] = 100,
                   epochs: int = 100, early_stopping: Optional[int] = 3, checkpoints: Optional[str] = None,
                   lr: float = 1e-3, reg: float = 1e-3, filters_per_layer: Sequence[int] = (64,),
                   layers_per_block: int = 2, pool_every: int = 2, hidden_dims: Sequence[int] = (1024,),
                   model_type: str = "cnn", **kw) -> Optional[str]:
    """Train one configuration, write the results JSON, log it all to MLflow; returns the JSON path
    (None when an identical configuration already finished and was skipped).

    batches: training batches per epoch (None: the whole training split); validation always uses
    every image, and so does the test unless n_test (smoke runs) takes the first n_test. The fit's
    "test" curves are on the validation split (early stopping and checkpoints use it); the official
    test set is evaluated once, with the best checkpoint.
    kw: archlab's extra options: `CifarRecipe`'s settings and `RunOptions`' execution options.
    """
    recipe, options = plan_run(dict(
        run_name=run_name, out_dir=out_dir, seed=seed, device=device, bs_train=bs_train, bs_test=bs_test,
        batches=batches, epochs=epochs, early_stopping=early_stopping, checkpoints=checkpoints, lr=lr, reg=reg,
        filters_per_layer=filters_per_layer, layers_per_block=layers_per_block, pool_every=pool_every,
        hidden_dims=hidden_dims, model_type=model_type, **kw))
    policy = decide_policy(recipe, options)
    if options.dry_run:
        return dry_run(recipe, options)
    return run_recipe(recipe, policy, options)


def plan_run(call: Dict[str, Any]) -> Tuple[CifarRecipe, RunOptions]:
    """cnn_experiment's arguments (a dict of its parameters and **kw) as a validated recipe and
    options; unknown names and bad values fail here, with a one-line error, before any work."""
    call = dict(call)
    valid = sorted(set(CifarRecipe.settings_names()) | set(RunOptions.kw_names()))
    named = set(CifarRecipe.PROGRAMME_ARGS) | set(RunOptions.PROGRAMME_ARGS)
    unknown = sorted(set(call) - named - set(valid))
    if unknown:
        raise ValueError(f"unknown cnn_experiment options {unknown}; valid extra options: {valid}")
    if call.get("seed") is None:  # the programme draws one when none is given (0 is a seed: --seeds 0,1)
        call["seed"] = random.randint(0, 2**31)
    if call.get("bs_test") is None and "bs_train" in call:
        call["bs_test"] = max(call["bs_train"] // 4, 1)
    for name in ("filters_per_layer", "hidden_dims"):
        if name in call:
            call[name] = list(call[name])
    options = RunOptions(**{k: v for k, v in call.items() if k in RunOptions.__dataclass_fields__}).validate()
    recipe = CifarRecipe(**{k: v for k, v in call.items() if k in CifarRecipe.__dataclass_fields__})
    recipe.validate()
    check_outputs(recipe.run_name, options.out_dir, options.checkpoints, options.checkpoint_dir)
    return recipe, options


def decide_policy(recipe: CifarRecipe, options: RunOptions) -> ExecutionPolicy:
    """The run's execution policy, from its device and execution options (once, before any work)."""
    return ExecutionPolicy.decide(options.device, options.amp, options.channels_last, options.cuda_graphs,
                                  recipe.lr_schedule)


def dry_run(recipe: CifarRecipe, options: RunOptions) -> None:
    """The whole check, cheaply: the layers built on the meta device, the data only located."""
    from training.data.cifar import require_cifar10

    with torch.device("meta"):
        recipe.build_model()
    require_cifar10(options.data_dir, options.download)


def run_recipe(recipe: CifarRecipe, policy: ExecutionPolicy, options: RunOptions = RunOptions(),
               on_epoch_end: Optional[SessionHook] = None) -> Optional[str]:
    """Train `recipe` as `policy` says; returns the results file (None: skipped, already done).

    The data is read first: its digest is part of the recipe's identity, so the skip/resume
    decision is per (configuration, seed, data). on_epoch_end(metrics, session): called after each
    epoch, before the metrics are recorded and logged (benchmarks add their own measurements)."""
    from training.data.cifar import cifar10_splits
    from training.tracking.timing import spent

    before_check = spent()  # the skip/resume check's MLflow time: the run's mlflow_pre_run_s
    torch.manual_seed(recipe.seed)
    model = recipe.build_model()  # shape errors (maps shrinking below 1x1) surface here
    data = cifar10_splits(options.data_dir, recipe.n_train, recipe.n_valid, recipe.split_seed, options.download,
                          n_test=recipe.n_test)  # n_test beyond the data's test images: refused here
    record = data[3]
    recipe = recipe.with_(data_digest=record.digest)
    skip, resume_run_id = store.find_prior(recipe, options)
    if skip:
        return None
    store.check_state_fits(recipe, options, model)  # a corrupt or other-architecture state: one line, the way out
    store.check_resume_data(recipe, options)
    print(f"*** Starting cnn_experiment {store.run_name(recipe, options)} with config: "
          f"{store.programme_config(recipe, options)} on {record.kind} data {record.digest[:12]} ({record.source})")
    policy.apply()
    session = TrainingSession.prepare(recipe, policy, model, data=data)
    checkpoint = store.checkpoint_path(recipe, options)
    train = dict(checkpoint=checkpoint, print_every=options.print_every, resume=not options.restart,
                 on_epoch_end=on_epoch_end)
    if not options.tracking:  # runs without MLflow installed (e.g. a bare GPU box)
        fit, final, history = session.train_and_test(**train)
        path = store.write_results(recipe, options, fit, final, epochs=history, execution=session.graph_report(),
                                   data=record.summary())
        store.after_finish(recipe, options, None)
        return path
    from training.tracking.runs import SMOKE_TAG

    smoke = store.is_smoke(recipe, options, session.dl_train.images_per_epoch(recipe.batches),
                           len(session.dl_valid.dataset))
    tags = {**record.tags(), SMOKE_TAG: "true" if smoke else "false"}
    opened = spent()  # the run's mlflow_time_s counts from its start_run on
    with store.tracked_run(recipe, options, policy.device, resume_run_id, tags) as run:
        store.log_run_params(recipe, options, dict(
            n_train=len(session.dl_train.dataset), n_valid=len(session.dl_valid.dataset),
            n_test=len(session.dl_test.dataset), n_params=session.n_params))
        record.log()
        fit, final, history = session.train_and_test(**train, logger=store.epoch_logger())
        # two example rows: the logged model keeps a dynamic batch dimension
        example = next(iter(session.dl_test))[0][:2].float().cpu().contiguous().numpy() if options.log_model else None
        path = store.log_outcome(run, recipe, options, fit, final, history, session.graph_report(),
                                 example_input=example, model=session.model, data=record.summary())
        store.log_mlflow_time(opened - before_check, opened, fit.num_epochs)
    store.after_finish(recipe, options, run.info.run_id)
    return path
