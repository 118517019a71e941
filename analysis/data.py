"""Everything the report needs from the store, fetched once: one DataFrame per grid plus curves.

Each grid's frame holds the runs on one data copy (analysis.datasets chooses it; the others are
listed, never mixed in) with a `smoke` column; `finished` gives one row per configuration with
the mean and spread over its seeds (analysis.spread), `runs` the seeds one by one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import mlflow
import pandas as pd

from analysis import query
from analysis.datasets import DataChoice, choose_data, smoke_flags
from analysis.spread import per_config

CHANCE_ACC = 10.0          # CIFAR-10: 10 balanced classes
NOT_TRAINABLE_MARGIN = 5.0  # best validation accuracy within this many points of chance = did not train


@dataclass
class ReportData:
    tracking_uri: str
    experiment: Optional[str]
    grids: Dict[str, pd.DataFrame]       # query.grid_runs of every grid (all statuses, seeds, one data copy)
    histories: Dict[str, pd.DataFrame]   # query.epoch_history of every grid
    status: pd.DataFrame                 # query.experiment_status
    missing: List[str]                   # grids without any finished configuration
    figures: Dict[str, List[Path]] = field(default_factory=dict)  # filled by analysis.report
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # query.reference_runs (calibration)
    data: Dict[str, DataChoice] = field(default_factory=dict)       # the data copy each grid uses
    _configs: Dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # per_config, computed once

    def runs(self, grid: str) -> pd.DataFrame:
        """The FINISHED runs of `grid`, one row per seed."""
        df = self.grids.get(grid, query.empty_grid_frame())
        return df[df["status"] == "FINISHED"].reset_index(drop=True) if len(df) else df

    def configs(self, grid: str) -> pd.DataFrame:
        """One row per configuration, any status (spread.per_config): what tables list."""
        if grid not in self._configs:
            self._configs[grid] = per_config(self.grids.get(grid, query.empty_grid_frame()))
        return self._configs[grid].copy()

    def finished(self, grid: str) -> pd.DataFrame:
        """One row per configuration with a finished seed: the mean over its finished seeds, with
        `<metric>_std`/`_n` (spread.per_config); ids and params are the first seed's."""
        df = self.configs(grid)
        return df[df["status"] == "FINISHED"].reset_index(drop=True) if len(df) else df

    def first_seeds(self, grid: str) -> pd.DataFrame:
        """The finished run of each configuration's first seed: what one-picture figures show."""
        ids = set(self.finished(grid)["run_id"])
        runs = self.runs(grid)
        return runs[runs["run_id"].isin(ids)].reset_index(drop=True) if len(runs) else runs

    @property
    def first(self) -> Optional[pd.Series]:
        """The finished first classifier: mean over its seeds, ids of the first seed."""
        df = self.finished("first_classifier")
        return df.iloc[0] if len(df) else None

    @property
    def first_run(self) -> Optional[pd.Series]:
        """The first classifier's first seed, as it ran (its model, threshold and curves)."""
        df = self.first_seeds("first_classifier")
        return df.iloc[0] if len(df) else None

    def smoke(self, grid: str) -> List[str]:
        """Configurations of `grid` (used data copy) with a smoke-size finished run."""
        df = self.runs(grid)
        if not len(df) or "smoke" not in df.columns:
            return []
        return list(dict.fromkeys(df.loc[df["smoke"], "config"]))

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
    grids, choices = {}, {}
    for g in query.ALL_GRIDS:
        runs, choices[g] = choose_data(g, query.grid_runs(g, experiment))
        grids[g] = runs.assign(smoke=smoke_flags(g, runs))
    histories = {}
    for g, df in grids.items():
        keys = query.PART1_EPOCH_KEYS if g in query.PART1_GRIDS else query.CIFAR_EPOCH_KEYS
        histories[g] = query.epoch_history(df, keys)
    status = query.experiment_status(experiment, frames=grids)
    missing = status.loc[status["finished"] == 0, "grid"].tolist()
    return ReportData(mlflow.get_tracking_uri(), experiment, grids, histories, status, missing,
                      reference=query.reference_runs(experiment), data=choices)
