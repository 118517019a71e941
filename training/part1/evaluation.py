"""Evaluation of a trained BinaryClassifier at its current threshold (sklearn metrics)."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from models.classifier import BinaryClassifier, positive_scores


def binary_report(classifier: BinaryClassifier, X: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    """Accuracy (%), FPR, FNR and the 2x2 confusion matrix counts at the classifier's threshold."""
    from sklearn.metrics import confusion_matrix

    score = positive_scores(classifier, X)
    pred = np.where(score >= classifier.threshold, classifier.positive_class, 1 - classifier.positive_class)
    y_np = y.cpu().numpy()
    tn, fp, fn, tp = confusion_matrix(y_np, pred, labels=[0, 1]).ravel()
    return dict(acc=100.0 * (tp + tn) / len(y_np), fpr=fp / max(fp + tn, 1), fnr=fn / max(fn + tp, 1),
                tn=int(tn), fp=int(fp), fn=int(fn), tp=int(tp))


def plot_confusion(report: Dict[str, float], title: str, ax=None, normalize: bool = True):
    """Confusion matrix figure from a binary_report (normalised over all samples, like the programme)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.array([[report["tn"], report["fp"]], [report["fn"], report["tp"]]], dtype=float)
    if normalize:
        cm = cm / cm.sum()
    if ax is None:
        _, ax = plt.subplots(1, 1, figsize=(4.5, 4))
    ConfusionMatrixDisplay(cm, display_labels=[0, 1]).plot(ax=ax, colorbar=False, values_format=".3f")
    ax.set_title(title)
    return ax.figure, ax
