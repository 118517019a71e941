"""What a CIFAR run leaves on disk once it FINISHED.

While a run can still resume, `<checkpoints>` (best weights) and `<checkpoints>.state` (optimizer,
scheduler, RNG, loader, curves) stay in the checkpoint folder. Once it finished, the run is never
resumed (a rerun skips it), and the best weights live in MLflow as the run's logged model: keeping
the local copies only stored the same weights two or three times (a smoke grid left 404 MB).
"""
from __future__ import annotations

import os


def state_file(best_weights: str) -> str:
    """The training-state file the trainer writes beside the best weights."""
    return f"{best_weights}.state"


def drop_after_finish(best_weights: str, keep_best: bool) -> None:
    """Delete a finished run's training state, and its best weights unless `keep_best` (a file the
    user named with --checkpoints, or the only copy when nothing was logged to MLflow)."""
    for path in (state_file(best_weights), None if keep_best else best_weights):
        if path and os.path.exists(path):
            os.remove(path)
