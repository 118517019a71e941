"""Result records shared by the Trainer, the experiment files and the analysis (programme names)."""
from __future__ import annotations

from typing import List, NamedTuple


class BatchResult(NamedTuple):
    """One batch: its loss and number of correct predictions.

    Trainers may return 0-d tensors here instead of Python numbers: the epoch loop adds them up
    on the device and converts once per epoch, so a GPU step never waits for the host.
    """

    loss: float
    num_correct: int


class EpochResult(NamedTuple):
    """One epoch: the loss of every batch, and the accuracy in percent."""

    losses: List[float]
    accuracy: float


class FitResult(NamedTuple):
    """A whole fit. Losses are **per-epoch means** (MLflow metrics `train_loss`/`test_loss` at
    step = epoch); accuracies are per epoch, in percent. `num_epochs` counts the epochs run."""

    num_epochs: int
    train_loss: List[float]
    train_acc: List[float]
    test_loss: List[float]
    test_acc: List[float]
