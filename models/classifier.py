"""Classifiers wrap any model that outputs (N, C) raw class scores (programme Parts 1-2).

`Classifier` adds probabilities (softmax) and label prediction; subclasses decide how labels
are picked: `ArgMaxClassifier` (multiclass) or `BinaryClassifier` (thresholded positive-class
probability). `select_roc_thresh` picks the threshold whose ROC point is closest to (0, 1).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Tuple

import numpy as np
import torch
from torch import nn


class Classifier(nn.Module, ABC):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (N, C) class scores."""
        z = self.model(x)
        assert z.ndim == 2 and z.shape[0] == x.shape[0], f"model must return (N, C) scores, got {tuple(z.shape)}"
        return z

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_proba_scores(self.forward(x))

    def predict_proba_scores(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C) scores -> (N, C) probabilities (softmax over classes)."""
        return torch.softmax(z, dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) int labels for inputs x."""
        return self._classify(self.predict_proba(x))

    def classify_scores(self, z: torch.Tensor) -> torch.Tensor:
        """(N,) int labels from already computed scores (saves a forward pass in training)."""
        return self._classify(self.predict_proba_scores(z))

    @abstractmethod
    def _classify(self, y_proba: torch.Tensor) -> torch.Tensor:
        ...


class ArgMaxClassifier(Classifier):
    def _classify(self, y_proba: torch.Tensor) -> torch.Tensor:
        return torch.argmax(y_proba, dim=1).to(torch.int)


class BinaryClassifier(Classifier):
    """Predicts the positive class when its probability reaches `threshold`."""

    def __init__(self, model: nn.Module, positive_class: int = 1, threshold: float = 0.5):
        super().__init__(model)
        if positive_class not in (0, 1):
            raise ValueError(f"positive_class must be 0 or 1, got {positive_class!r}")
        self.positive_class = positive_class
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {value!r}")
        self._threshold = value

    def _classify(self, y_proba: torch.Tensor) -> torch.Tensor:
        positive = y_proba[:, self.positive_class] >= self.threshold
        return torch.where(positive, self.positive_class, 1 - self.positive_class).to(torch.int)


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter (CPU for parameter-free modules)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def positive_scores(classifier: BinaryClassifier, x: torch.Tensor) -> np.ndarray:
    """Positive-class probabilities as numpy (in eval mode, on the classifier's device)."""
    was_training = classifier.training
    classifier.eval()
    device = module_device(classifier)
    try:
        proba = classifier.predict_proba(x.to(device))
    finally:
        classifier.train(was_training)
    return proba[:, classifier.positive_class].cpu().numpy()


def roc_optimal_point(y: np.ndarray, score: np.ndarray, pos_label: int = 1):
    """ROC curve and the index of its point closest to the ideal (FPR=0, TPR=1).

    sklearn's first threshold is +inf (nothing predicted positive); it is never a usable
    threshold, so it is excluded from the choice.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresh = roc_curve(y, score, pos_label=pos_label)
    dist = fpr**2 + (1 - tpr) ** 2
    dist[~np.isfinite(thresh)] = np.inf
    idx = int(np.argmin(dist))
    return fpr, tpr, thresh, idx


def select_roc_thresh(classifier: BinaryClassifier, x: torch.Tensor, y: torch.Tensor, plot: bool = False,
                      ax=None) -> float:
    """Threshold of the ROC point closest to (0, 1), clipped into the open interval (0, 1)."""
    score = positive_scores(classifier, x)
    y_np = y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    fpr, tpr, thresh, idx = roc_optimal_point(y_np, score, pos_label=classifier.positive_class)
    eps = 1e-6
    best = float(np.clip(thresh[idx], eps, 1 - eps))
    if plot:
        plot_roc(fpr, tpr, idx, best, ax=ax)
    return best


def plot_roc(fpr, tpr, idx: int, threshold: float, ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(1, 1, figsize=(6, 4))
    ax.plot(fpr, tpr, color="C0", label="ROC")
    ax.plot([0, 1], [0, 1], "k--", alpha=0.4)
    ax.scatter(fpr[idx], tpr[idx], marker="o", color="red", s=60, zorder=3, label=f"Threshold={threshold:.2f}")
    ax.set_xlabel("FPR")
    ax.set_ylabel("TPR")
    ax.legend()
    return ax.figure, ax


@torch.no_grad()
def plot_decision_boundary_2d(classifier: Classifier, x: torch.Tensor, y: torch.Tensor, dx: float = 0.1,
                              ax=None, cmap=None) -> Tuple["object", "object"]:
    """Scatter 2D data over the classifier's predicted regions on a grid of step dx."""
    import matplotlib.pyplot as plt

    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
    cmap = cmap or plt.cm.coolwarm
    if ax is None:
        fig, ax = plt.subplots(1, 1, figsize=(10, 8))
    x_cpu, y_cpu = x.detach().cpu(), y.detach().cpu()
    ax.scatter(x_cpu[:, 0].numpy(), x_cpu[:, 1].numpy(), c=y_cpu.numpy(), s=20, alpha=0.8, edgecolor="k",
               cmap=cmap)
    lo, hi = x_cpu.min(dim=0).values - dx, x_cpu.max(dim=0).values + dx
    g1 = torch.arange(float(lo[0]), float(hi[0]) + dx, dx)
    g2 = torch.arange(float(lo[1]), float(hi[1]) + dx, dx)
    x1_grid, x2_grid = torch.meshgrid(g1, g2, indexing="ij")
    grid = torch.stack([x1_grid.reshape(-1), x2_grid.reshape(-1)], dim=1)
    was_training = classifier.training
    classifier.eval()
    device = module_device(classifier)
    try:
        y_hat = classifier.classify(grid.to(device)).cpu().reshape(x1_grid.shape)
    finally:
        classifier.train(was_training)
    ax.contourf(x1_grid.numpy(), x2_grid.numpy(), y_hat.numpy(), alpha=0.3, cmap=cmap)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    return ax.figure, ax
