"""Training-curve figures shared by run logging and the analysis (the programme's `plot_fit`)."""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from training.results import FitResult


def plot_fit(fit_res: FitResult, fig=None, log_loss: bool = False, legend: Optional[str] = None,
             train_test_overlay: bool = False):
    """Loss and accuracy curves per epoch. Call repeatedly with the same `fig` to overlay runs."""
    import matplotlib.pyplot as plt

    if fig is None:
        nrows, ncols = (1, 2) if train_test_overlay else (2, 2)
        fig, axes = plt.subplots(nrows, ncols, figsize=(8 * ncols, 5 * nrows), sharex="col", sharey=False,
                                 squeeze=False)
        axes = axes.reshape(-1)
    else:
        axes = fig.axes
    for ax in axes:
        for line in ax.lines:
            if line.get_label() == legend:
                line.remove()

    splits, kinds = ("train", "test"), ("loss", "acc")
    for i, (split, kind) in enumerate(itertools.product(splits, kinds)):
        ax = axes[kinds.index(kind) if train_test_overlay else i]
        data = getattr(fit_res, f"{split}_{kind}")
        label = split if train_test_overlay else legend
        ax.plot(np.arange(1, len(data) + 1), data, label=label)
        ax.set_title(kind if train_test_overlay else f"{split}_{kind}")
        ax.set_xlabel("Epoch #")
        if kind == "loss":
            ax.set_ylabel("Loss (epoch mean)")
            if log_loss:
                ax.set_yscale("log")
        else:
            ax.set_ylabel("Accuracy (%)")
        if legend or train_test_overlay:
            ax.legend()
        ax.grid(True)
    return fig, axes
