"""`TrainingSession`: one recipe's data, model, optimiser and trainer, ready to fit and test.

Built from a recipe and an execution policy; `train_and_test` fits with early stopping and
checkpoints, reloads the best checkpoint and tests it once on the official test set.
Benchmarks reach a session through run_recipe's `on_epoch_end(metrics, session)` hook.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from training.cnn.recipe import CifarRecipe
from training.engine.execution import ExecutionPolicy
from training.results import FitResult
from training.trainer import BatchLimit, ClassifierTrainer, load_checkpoint

SessionHook = Callable[[Dict[str, Any], "TrainingSession"], None]


@dataclass
class TrainingSession:
    recipe: CifarRecipe
    policy: ExecutionPolicy
    model: torch.nn.Module
    trainer: ClassifierTrainer
    dl_train: Any          # the whole training split (DeviceLoader)
    dl_train_epoch: Any    # what one epoch trains on (`batches` of it)
    dl_valid: Any
    dl_test: Any
    final_tta: Any         # the model's test-time augmentation, used by the final test

    @classmethod
    def prepare(cls, recipe: CifarRecipe, policy: ExecutionPolicy, model: torch.nn.Module,
                data_dir: Optional[str] = None, download: bool = False, data: Optional[tuple] = None,
                ) -> "TrainingSession":
        """Loaders on the device, the model there (data-dependent init done), optimiser, trainer.
        data: (train, valid, test, record) as cifar10_splits returns it (default: read from data_dir)."""
        from models.cnn import tta_of
        from training.data.cifar import check_programme_minimum, cifar10_splits, split_loaders

        r, dev = recipe, policy.device
        train, valid, test, record = data or cifar10_splits(data_dir, r.n_train, r.n_valid, r.split_seed, download,
                                                            n_test=r.n_test)
        check_programme_minimum(len(train.y), len(valid.y), r.allow_small,
                                n_test=None if r.n_test is None else len(test.y))  # a subset: >= 10000 or smoke
        dl_train, dl_valid, dl_test = split_loaders(train, valid, test, dev, r.bs_train, r.bs_test, r.augment, r.seed,
                                                    channels_last=policy.channels_last, crop_padding=r.crop_padding)
        dl_train.data_digest = record.digest  # kept in the training state: resume checks it
        dl_train_epoch = BatchLimit(dl_train, r.batches)
        model = model.to(dev, memory_format=policy.memory_format)
        for module in model.modules():  # data-dependent init (YourCNN's whitening stem), before any snapshot
            if hasattr(module, "init_from_data"):
                module.init_from_data(dl_train.first_images(r.whiten_images))
        trainer = make_trainer(r, policy, model, len(dl_train_epoch))
        return cls(r, policy, model, trainer, dl_train, dl_train_epoch, dl_valid, dl_test, tta_of(model))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_and_test(self, checkpoint: str, print_every: int = 1, resume: bool = True,
                       on_epoch_end: Optional[SessionHook] = None, logger: Optional[Callable] = None,
                       ) -> Tuple[FitResult, Dict[str, Any], List[dict]]:
        """Fit, then test the best checkpoint once; returns the fit, the final figures and the
        per-epoch history for the results file. Each epoch's metrics go to `on_epoch_end(metrics,
        session)` first (it may add entries: they are kept and logged), then to `logger(metrics)`."""
        from models.cnn import tta_off

        t0, history, r = time.perf_counter(), [], self.recipe

        def record(metrics: Dict[str, Any]) -> None:
            if on_epoch_end is not None:
                on_epoch_end(metrics, self)
            history.append({k: v for k, v in metrics.items() if k != "improved"})
            if logger is not None:
                logger(metrics)

        with contextlib.nullcontext() if r.valid_tta else tta_off(self.model):
            fit = self.trainer.fit(self.dl_train_epoch, self.dl_valid, r.epochs, checkpoints=checkpoint,
                                   early_stopping=r.early_stopping, print_every=print_every, resume=resume,
                                   on_epoch_end=record)
        self.model.load_state_dict(load_checkpoint(checkpoint, map_location=self.policy.device))
        test = self.trainer.test_epoch(self.dl_test, verbose=False)
        final = dict(test_acc=test.accuracy, test_loss=sum(test.losses) / len(test.losses),
                     best_valid_acc=max(fit.test_acc), best_epoch=1 + fit.test_acc.index(max(fit.test_acc)),
                     fit_wall_time_s=time.perf_counter() - t0, n_params=self.n_params)
        return fit, final, history

    def graph_report(self) -> Dict[str, Any]:
        """How the training steps ran, for the results file and the run's tags."""
        graphed = self.trainer.graphed_step
        if graphed is None:
            return dict(cuda_graph=False)
        if graphed.fallback:
            print(f"*** CUDA graphs off for {self.recipe.name}, it trained eagerly: {graphed.fallback}")
        return dict(cuda_graph=graphed.fallback is None, cuda_graph_replays=graphed.replays,
                    eager_steps=graphed.eager_steps, **({"cuda_graph_fallback": graphed.fallback}
                                                        if graphed.fallback else {}))


def make_trainer(recipe: CifarRecipe, policy: ExecutionPolicy, model: torch.nn.Module,
                 steps_per_epoch: int) -> ClassifierTrainer:
    """The recipe's loss, optimiser, schedule and lookahead; eager, or graphed when the policy says so."""
    from training.engine.lookahead import Lookahead
    from training.engine.optim import make_loss, make_optimizer, make_scheduler

    r = recipe
    optimizer = make_optimizer(model, r.optimizer_spec())
    scheduler, interval = make_scheduler(optimizer, r.lr_schedule, r.epochs, steps_per_epoch, r.warmup_frac,
                                         r.lr_start_frac, r.lr_end_frac)
    lookahead = Lookahead(model, r.epochs * steps_per_epoch, r.lookahead_every, r.lookahead_decay) \
        if r.lookahead_every else None
    return ClassifierTrainer(model, make_loss("cross_entropy", r.label_smoothing), optimizer, device=policy.device,
                             scheduler=scheduler, scheduler_interval=interval, amp_dtype=policy.amp_dtype,
                             grad_clip=r.grad_clip, lookahead=lookahead, cuda_graph=policy.cuda_graphs)
