"""Benchmark-only ways to train a recipe: per-epoch test accuracy and torch.compile.

Neither belongs in the core: nothing is chosen on the per-epoch test accuracy (it feeds the
time-to-accuracy figures), and `compile` was measured slower on the CPU (0.56x, bench/measured/
cpu_2026-11-27_compile.json) and has no GPU measurement showing a gain. Both use only the core's
public pieces: `plan_run`, `decide_policy`, `run_recipe`'s epoch hook, `TrainingSession`, the run store.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

import torch

COMPILE_MODES = (False, True, "reduce-overhead", "max-autotune")


def test_each_epoch(metrics: Dict[str, Any], session) -> None:
    """run_recipe hook: the test set after every epoch, as the final test sees it (TTA too);
    after the epoch's timing, so epoch_time_s stays training + validation."""
    from models.cnn import tta_modes

    if "epoch_test_acc" in metrics:  # not again for a resume's replay
        return
    with tta_modes(session.final_tta):
        metrics["epoch_test_acc"] = session.trainer.test_epoch(session.dl_test, verbose=False).accuracy


def train_untracked(kwargs: Dict[str, Any], compile: Union[bool, str] = False,
                    each_epoch_test: bool = False) -> Optional[str]:
    """Train cnn_experiment kwargs (tracking forced off); returns the results file.
    compile: torch.compile the model in place (after its data-dependent init), one of COMPILE_MODES."""
    from training.cnn import store
    from training.cnn.experiment import decide_policy, plan_run, run_recipe
    from training.cnn.session import TrainingSession

    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile!r}")
    recipe, options = plan_run({**kwargs, "tracking": False})
    policy = decide_policy(recipe, options)
    if compile and policy.cuda_graphs:  # reduce-overhead captures graphs itself; one capture at a time
        policy = dataclasses.replace(policy, cuda_graphs=False)
    hook = test_each_epoch if each_epoch_test else None
    if not compile:
        return run_recipe(recipe, policy, options, on_epoch_end=hook)
    torch.manual_seed(recipe.seed)
    model = recipe.build_model()
    store.find_prior(recipe, options)  # restart: forget earlier state
    policy.apply()
    session = TrainingSession.prepare(recipe, policy, model, options.data_dir, options.download)
    session.model.compile(mode=None if compile is True else compile)  # in place: state_dict keys stay plain
    fit, final, history = session.train_and_test(store.checkpoint_path(recipe, options), options.print_every,
                                                 resume=not options.restart, on_epoch_end=hook)
    return store.write_results(recipe, options, fit, final, epochs=history, execution=session.graph_report())
