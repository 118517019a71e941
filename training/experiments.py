"""The programme's experiment functions: `mlp_experiment` (Part 1); `cnn_experiment` (Part 3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from models.classifier import BinaryClassifier, select_roc_thresh
from models.mlp import MLP, make_activation
from training.engine.optim import make_loss, make_optimizer, make_scheduler
from training.results import FitResult
from training.trainer import ClassifierTrainer


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def build_binary_mlp(depth: int, width: int, activation: str = "relu", out_activation: str = "none",
                     threshold: float = 0.5) -> BinaryClassifier:
    """BinaryClassifier(MLP(2 -> [width]*depth -> 2)); validates before building anything."""
    _positive_int("depth", depth)
    _positive_int("width", width)
    make_activation(activation), make_activation(out_activation)  # unknown names fail here, clearly
    return BinaryClassifier(MLP(2, [width] * depth + [2], [activation] * depth + [out_activation]),
                            threshold=threshold)


class GaussianJitter:
    """Training-time input noise: the test population is noisier than the training one, so
    jittering the 2D points during training smooths the learned boundary (a regulariser)."""

    def __init__(self, std: float):
        if std < 0:
            raise ValueError(f"input_noise_std must be >= 0, got {std}")
        self.std = std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)


@dataclass
class BinaryOutcome:
    """Everything one Part 1 training produced (the programme's 4-tuple plus the curves)."""

    model: BinaryClassifier
    fit: FitResult
    thresh: float
    valid_acc: float  # last-epoch validation accuracy at the training threshold (0.5)
    test_acc: float   # one test epoch at the ROC threshold chosen on validation


def train_binary_mlp(model: BinaryClassifier, hp: Mapping[str, Any], dl_train, dl_valid, dl_test, n_epochs: int,
                     device: Optional[str] = None, checkpoints: Optional[str] = None,
                     on_epoch_end: Optional[Callable[[Dict[str, Any]], None]] = None) -> BinaryOutcome:
    """Train on train, validate each epoch, choose the ROC threshold on valid, judge once on test."""
    _positive_int("n_epochs", n_epochs)
    loss_fn = make_loss(hp.get("loss_fn", "cross_entropy"), out_activation=hp.get("out_activation"))
    optimizer = make_optimizer(model.parameters(), hp["optimizer"])
    scheduler, interval = make_scheduler(optimizer, hp.get("lr_schedule", "none"), n_epochs, len(dl_train))
    noise_std = float(hp.get("input_noise_std", 0.0))
    trainer = ClassifierTrainer(model, loss_fn, optimizer, device=device, scheduler=scheduler,
                                scheduler_interval=interval, augment=GaussianJitter(noise_std) if noise_std else None)
    fit = trainer.fit(dl_train, dl_valid, n_epochs, checkpoints=checkpoints, print_every=0,
                      on_epoch_end=on_epoch_end, verbose=False)
    thresh = select_roc_thresh(model, *dl_valid.dataset.tensors, plot=False)
    model.threshold = thresh
    test_acc = trainer.test_epoch(dl_test, verbose=False).accuracy
    return BinaryOutcome(model, fit, thresh, fit.test_acc[-1], test_acc)


def mlp_experiment(depth: int, width: int, dl_train, dl_valid, dl_test, n_epochs: int,
                   hp: Optional[Mapping[str, Any]] = None, **kw) -> Tuple[BinaryClassifier, float, float, float]:
    """The programme's contract: returns (model, thresh, valid_acc, test_acc).

    hp: the grid's recipe (activation, loss, optimizer), default `configs/part1.yaml: mlp_grid`.
    kw: device, checkpoints, on_epoch_end (see train_binary_mlp).
    """
    if hp is None:
        from training.config import load_config
        hp = load_config("part1")["mlp_grid"]
    model = build_binary_mlp(depth, width, hp.get("activation", "relu"), hp.get("out_activation", "none"))
    out = train_binary_mlp(model, hp, dl_train, dl_valid, dl_test, n_epochs, **kw)
    return out.model, out.thresh, out.valid_acc, out.test_acc


# Part 3: the CIFAR-10 experiment and its results files live in their own modules; re-exported
# here so the programme's names are found in one place.
from training.cnn.experiment import cnn_experiment  # noqa: E402,F401
from training.results_io import load_experiment, save_experiment  # noqa: E402,F401


def experiment_name_of(kwargs) -> str:
    """The run/file name of a cnn_experiment kwargs dict (e.g. exp1_1_L2_K32)."""
    from training.results_io import experiment_name

    return experiment_name(kwargs["run_name"], kwargs["filters_per_layer"], kwargs["layers_per_block"])
