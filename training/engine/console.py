"""Console output that reads well both in a terminal and in a log file.

On a TTY each pass over a loader shows a tqdm bar; elsewhere (a log, `mlflow run`'s captured
output, a Kubernetes pod) a bar's carriage returns become one run-on line, so there the bars
are off and `fit` prints one line per epoch instead (`epoch_line`).
"""
from __future__ import annotations

import sys
from typing import Any, Mapping


def on_tty() -> bool:
    """Whether stdout is an interactive terminal (bars) rather than a file or pipe (lines)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def epoch_line(metrics: Mapping[str, Any], num_epochs: int) -> str:
    """`epoch 3/15: train loss 1.234 acc 56.7% | valid loss 1.100 acc 60.1% | 12.3 s`."""
    return (f"epoch {metrics['epoch']}/{num_epochs}: train loss {metrics['train_loss']:.3f} "
            f"acc {metrics['train_acc']:.1f}% | valid loss {metrics['test_loss']:.3f} acc {metrics['test_acc']:.1f}% "
            f"| {metrics['epoch_time_s']:.1f} s")
