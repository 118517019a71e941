"""Everything the report needs from the store, fetched once: one DataFrame per grid plus curves."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import mlflow
import pandas as pd

from analysis import query

CHANCE_ACC = 10.0          # CIFAR-10: 10 balanced classes
NOT_TRAINABLE_MARGIN = 5.0  # best validation accuracy within this many points of chance = did not train


@dataclass
class ReportData:
    tracking_uri: str
    experiment: Optional[str]
    grids: Dict[str, pd.DataFrame]       # query.grid_runs of every grid (all statuses)
    histories: Dict[str, pd.DataFrame]   # query.epoch_history of every grid
    status: pd.DataFrame                 # query.experiment_status
    missing: List[str]                   # grids without any finished configuration
    figures: Dict[str, List[Path]] = field(default_factory=dict)  # filled by analysis.report
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # query.reference_runs (calibration)

    def finished(self, grid: str) -> pd.DataFrame:
        df = self.grids.get(grid, query.empty_grid_frame())
        return df[df["status"] == "FINISHED"].reset_index(drop=True) if len(df) else df

    @property
    def first(self) -> Optional[pd.Series]:
        """The finished first classifier run, if any."""
        df = self.finished("first_classifier")
        return df.iloc[0] if len(df) else None

    def epochs_run(self, grid: str) -> pd.Series:
        """Epochs each run of `grid` actually ran (its last logged step), by run_id."""
        hist = self.histories.get(grid)
        if hist is None or not len(hist):
            return pd.Series(dtype="int64")
        return hist.groupby("run_id")["epoch"].max()


def not_trainable(df: pd.DataFrame) -> pd.DataFrame:
    """Configurations that did not learn: diverged (NaN/inf loss), or best validation accuracy
    within NOT_TRAINABLE_MARGIN points of chance. A run with no validation epoch yet (just started,
    or crashed before one) is not judged: nothing says it could not learn."""
    if not len(df):
        return df
    low = df["best_valid_acc"] <= CHANCE_ACC + NOT_TRAINABLE_MARGIN if "best_valid_acc" in df else False
    return df[df["diverged"] | low]


def collect(experiment: Optional[str] = None) -> ReportData:
    """Query every grid of the programme (and its curves) from the current tracking store."""
    grids = {g: query.grid_runs(g, experiment) for g in query.ALL_GRIDS}
    histories = {}
    for g, df in grids.items():
        keys = query.PART1_EPOCH_KEYS if g in query.PART1_GRIDS else query.CIFAR_EPOCH_KEYS
        histories[g] = query.epoch_history(df, keys)
    status = query.experiment_status(experiment, frames=grids)
    missing = status.loc[status["finished"] == 0, "grid"].tolist()
    return ReportData(mlflow.get_tracking_uri(), experiment, grids, histories, status, missing,
                      reference=query.reference_runs(experiment))
