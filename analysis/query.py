"""Query layer: the project's runs as tidy pandas DataFrames, through the MLflow client API only.

Only `mlflow.search_runs` and `MlflowClient.get_metric_history` are used, so the same code
reads the local sqlite store and a tracking server. It relies on the conventions of
`training.tracking.runs`: every grid is a parent run tagged `grid=<name>`, `archlab.role=parent`,
and each configuration a child tagged `grid=<name>`, `archlab.role=child`,
`archlab.config_hash=<hash>` (Part 1's first classifier: tag `grid=first_classifier`, no role).

search_runs returns params as strings and metrics as their latest value: `grid_runs` casts
the params back to ints, floats, bools and JSON lists, and `epoch_history` fetches the
per-epoch curves (one get_metric_history call per run and key; the client has no bulk call).
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from training.tracking import runs as tracking
from training.grids.expand import GRIDS as CIFAR_GRIDS

PART1_GRIDS = ("first_classifier", "mlp_grid")
ALL_GRIDS = PART1_GRIDS + tuple(CIFAR_GRIDS)
BASE_COLUMNS = ["run_id", "run_name", "label", "status", "diverged", "n_attempts", "experiment_id", "parent_run_id",
                "config_hash", "start_time", "end_time", "config", "data_digest", "data_source", "data_kind",
                "smoke_tag"]
CIFAR_EPOCH_KEYS = ("train_loss", "train_acc", "valid_loss", "valid_acc")
PART1_EPOCH_KEYS = ("train_loss", "train_acc", "valid_loss", "valid_acc_epoch")


# ----------------------------------------------------------------------------- searching
def experiment_ids(experiment: Optional[str] = None) -> Optional[List[str]]:
    """None (search every experiment) or the id of the named one; an unknown name is an error
    that lists the experiments the store does hold."""
    if not experiment:
        return None
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in mlflow.search_experiments())
        raise ValueError(f"experiment {experiment!r} not found in {mlflow.get_tracking_uri()}; "
                         f"experiments there: {names}")
    return [exp.experiment_id]


def search(filter_string: str = "", experiment: Optional[str] = None) -> pd.DataFrame:
    """search_runs over one named experiment, or over all of them (runs started by `mlflow run`
    may sit in "Default" rather than "archlab")."""
    ids = experiment_ids(experiment)
    kwargs = dict(filter_string=filter_string, output_format="pandas", max_results=50_000)
    if ids:
        return mlflow.search_runs(experiment_ids=ids, **kwargs)
    return mlflow.search_runs(search_all_experiments=True, **kwargs)


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


# ----------------------------------------------------------------------------- param casting
def parse_param(text: Any) -> Any:
    """One MLflow param string back to its Python value: '42' -> 42, '0.001' -> 0.001,
    '[32, 64]' -> [32, 64], 'True' -> True, 'None' -> None; anything else stays a string."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if not isinstance(text, str):
        return text
    if text in ("None", "null", ""):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float, list, dict)) else text


def cast_column(values: pd.Series) -> pd.Series:
    """A column of param strings with one proper dtype: int64 (Int64 when some are missing),
    float64, bool (boolean), or object for lists and strings."""
    parsed = pd.Series([parse_param(v) for v in values], index=values.index, dtype=object)
    present = [v for v in parsed if v is not None]
    if not present:
        return parsed.astype(object)
    if all(isinstance(v, bool) for v in present):
        return parsed.astype("boolean" if len(present) < len(parsed) else bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return parsed.astype("Int64" if len(present) < len(parsed) else "int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(parsed.map(lambda v: math.nan if v is None else v), errors="coerce").astype("float64")
    return parsed.astype(object)


# ----------------------------------------------------------------------------- grids
def _label(row: pd.Series) -> str:
    """Legend label: L2_K32 / L3_K32-64-128 for CIFAR, d1_w32 for the MLP grid."""
    if isinstance(row.get("filters_per_layer"), list) and row.get("layers_per_block") is not None:
        return f"L{row['layers_per_block']}_K{'-'.join(str(k) for k in row['filters_per_layer'])}"
    if row.get("depth") is not None and row.get("width") is not None and not pd.isna(row.get("depth")):
        return f"d{row['depth']}_w{row['width']}"
    return str(row.get("run_name"))


def empty_grid_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in BASE_COLUMNS})


def grid_runs(grid: str, experiment: Optional[str] = None, finished_only: bool = False) -> pd.DataFrame:
    """One row per configuration of `grid` (its children; for first_classifier, its own run).

    A run name (e.g. exp1_1_L2_K32, or exp1_1_L2_K32_s43 for a further seed) may have several runs
    on one data copy: a FAILED or KILLED attempt and a FINISHED rerun, or runs of an older recipe
    (another config hash). The row kept per (run name, data digest) is the newest FINISHED one,
    else the newest of any status; `n_attempts` says how many runs there were. Runs on other data
    copies stay as rows of their own: analysis.datasets picks one copy and lists the others.
    `config` is the configuration's name without the seed suffix (config_of), `data_*` the data
    tags ("" when not recorded), `smoke_tag` the raw smoke tag. Columns: the BASE_COLUMNS, then
    every param under its own name, cast (see cast_column), then every metric's latest value (a
    metric that is also a param, like n_params, keeps the typed param); CIFAR rows also get `K`
    (e.g. "64-128-256"), `L` and `n_convs` (= L x len(K)).
    """
    runs = search(f"tags.{tracking.GRID_TAG} = '{grid}'", experiment)
    if len(runs):
        runs = runs[_col(runs, f"tags.{tracking.ROLE_TAG}") != "parent"]
    if not len(runs):
        return empty_grid_frame()
    runs = runs.assign(_finished=runs["status"].eq("FINISHED"), run_name=_col(runs, "tags.mlflow.runName"),
                       _digest=_col(runs, f"tags.{tracking.DATA_DIGEST_TAG}").fillna(""))
    runs = runs.sort_values(["_finished", "start_time"], ascending=[False, False])
    attempts = runs.groupby(["run_name", "_digest"])["run_id"].transform("count")
    runs = runs.assign(n_attempts=attempts).drop_duplicates(["run_name", "_digest"], keep="first")

    out = pd.DataFrame({
        "run_id": runs["run_id"].values,
        "run_name": runs["run_name"].values,
        "status": runs["status"].values,
        "diverged": (_col(runs, f"tags.{tracking.DIVERGED_TAG}") == "true").values,
        "n_attempts": runs["n_attempts"].astype("int64").values,
        "experiment_id": runs["experiment_id"].values,
        "parent_run_id": _col(runs, "tags.mlflow.parentRunId").values,
        "config_hash": _col(runs, f"tags.{tracking.HASH_TAG}").values,
        "start_time": runs["start_time"].values,
        "end_time": runs["end_time"].values,
        **_contract_columns(runs),
    })
    present = [c for c in runs.columns if runs[c].notna().any()]  # drop the parents' columns
    for c in sorted(c for c in present if c.startswith("params.")):
        name = c[len("params."):]
        name = f"param_{name}" if name in out.columns else name  # e.g. CIFAR's run_name param ("exp1_1")
        out[name] = cast_column(runs[c].reset_index(drop=True)).values
    for c in sorted(c for c in present if c.startswith("metrics.")):
        name = c[len("metrics."):]
        if name not in out.columns:
            out[name] = pd.to_numeric(runs[c], errors="coerce").astype("float64").values
    if "filters_per_layer" in out.columns and "layers_per_block" in out.columns:
        is_cnn = out["filters_per_layer"].map(lambda v: isinstance(v, list))
        out["K"] = out["filters_per_layer"].map(lambda v: "-".join(str(k) for k in v) if isinstance(v, list) else None)
        out["L"] = out["layers_per_block"]
        out["n_convs"] = [int(L) * len(K) if ok else None
                          for ok, L, K in zip(is_cnn, out["layers_per_block"], out["filters_per_layer"])]
        out["n_convs"] = out["n_convs"].astype("Int64" if out["n_convs"].isna().any() else "int64")
    out.insert(2, "label", out.apply(_label, axis=1) if len(out) else pd.Series(dtype=object))
    if finished_only:
        out = out[out["status"] == "FINISHED"]
    order = {name: i for i, name in enumerate(_expected_or_empty(grid))}
    out["_order"] = [order.get(n, len(order)) for n in out["config"]]  # a configuration's seeds stay together
    return out.sort_values(["_order", "run_name"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _contract_columns(runs: pd.DataFrame) -> Dict[str, Any]:
    """The seeds/data/smoke contract of training.tracking.runs as columns ("" where not logged)."""
    return {
        "config": [config_of(n, t, p) for n, t, p in zip(runs["run_name"], _col(runs, f"tags.{tracking.CONFIG_TAG}"),
                                                          _col(runs, f"params.{tracking.SEED_PARAM}"))],
        "data_digest": runs["_digest"].values,
        "data_source": _col(runs, f"tags.{tracking.DATA_SOURCE_TAG}").fillna("").values,
        "data_kind": _col(runs, f"tags.{tracking.DATA_KIND_TAG}").fillna("").values,
        "smoke_tag": _col(runs, f"tags.{tracking.SMOKE_TAG}").fillna("").values,
    }


def config_of(run_name: Any, tag: Any, seed: Any) -> str:
    """The configuration a run belongs to: its `archlab.config` tag; for runs logged before the
    tag, the run name, less a trailing `_s<seed>` when that is the run's own `seed` param."""
    if isinstance(tag, str) and tag:
        return tag
    name = str(run_name)
    head, sep, tail = name.rpartition("_s")
    if sep and head and tail.isdigit() and seed is not None and str(seed).strip() == tail:
        return head
    return name


def _expected_or_empty(grid: str) -> List[str]:
    try:
        return expected_configurations(grid)
    except (FileNotFoundError, KeyError, ValueError):
        return []


def parent_run_id(grid: str, experiment: Optional[str] = None) -> Optional[str]:
    """The run the report's figures of `grid` go to: its newest FINISHED parent run that has
    children (a parent that failed before training, or one that trained nothing, is no home for
    them); for a grid without parents (first_classifier) its newest FINISHED run; else None."""
    runs = search(f"tags.{tracking.GRID_TAG} = '{grid}'", experiment)
    if not len(runs):
        return None
    roles = _col(runs, f"tags.{tracking.ROLE_TAG}")
    parents = runs[roles == "parent"]
    if len(parents):
        with_children = set(_col(runs, "tags.mlflow.parentRunId").dropna())
        pool = parents[parents["run_id"].isin(with_children)]
    else:
        pool = runs
    pool = pool[pool["status"] == "FINISHED"]
    return str(pool.sort_values("start_time", ascending=False)["run_id"].iloc[0]) if len(pool) else None


def recipe_attempts(grid: str, run_name: str, experiment: Optional[str] = None) -> pd.DataFrame:
    """Every FINISHED run of one configuration (e.g. exp2_L3_K32-64-128), oldest first: the
    recipe's history. Columns: run_id, start_time, test_acc, and `changed`: the params (as
    {name: (previous value, this value)}) that differ from the previous attempt's."""
    runs = search(f"tags.{tracking.GRID_TAG} = '{grid}' and attributes.run_name = '{run_name}' "
                  f"and attributes.status = 'FINISHED'", experiment)
    if not len(runs):
        return pd.DataFrame(columns=["run_id", "start_time", "test_acc", "changed"])
    runs = runs.sort_values("start_time").reset_index(drop=True)
    params = [c for c in runs.columns if c.startswith("params.")]
    changed, previous = [], None
    for _, row in runs.iterrows():
        current = {c[len("params."):]: parse_param(row[c]) for c in params}
        changed.append({} if previous is None else
                       {k: (previous.get(k), v) for k, v in current.items() if repr(previous.get(k)) != repr(v)})
        previous = current
    return pd.DataFrame({"run_id": runs["run_id"], "start_time": runs["start_time"],
                         "test_acc": _col(runs, "metrics.test_acc"), "changed": changed})


REFERENCE_TAG_VALUE = "reference"  # bench/airbench_reference.py logs its calibration runs with grid=reference


def reference_runs(experiment: Optional[str] = None) -> pd.DataFrame:
    """Finished calibration runs (an independent published recipe on the same data), newest
    first: run_name, n_train, epochs, test_acc, test_acc_tta, device."""
    runs = search(f"tags.{tracking.GRID_TAG} = '{REFERENCE_TAG_VALUE}' and attributes.status = 'FINISHED'", experiment)
    cols = {"tags.mlflow.runName": "run_name", "params.n_train": "n_train", "params.epochs": "epochs",
            "params.device": "device", "metrics.test_acc": "test_acc", "metrics.test_acc_tta": "test_acc_tta"}
    if not len(runs):
        return pd.DataFrame(columns=list(cols.values()))
    runs = runs.sort_values("start_time", ascending=False)
    out = pd.DataFrame({new: _col(runs, old).values for old, new in cols.items()})
    for c in ("n_train", "epochs"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


# ----------------------------------------------------------------------------- curves
def epoch_history(runs_df: pd.DataFrame, keys: Sequence[str] = CIFAR_EPOCH_KEYS) -> pd.DataFrame:
    """Per-epoch curves of every run in `runs_df`: one row per run x epoch (step), one column
    per key (NaN where a run lacks it). A step logged twice keeps its latest value."""
    client = MlflowClient()
    rows: Dict[tuple, Dict[str, Any]] = {}
    for run in runs_df.itertuples(index=False):
        for key in keys:
            for m in sorted(client.get_metric_history(run.run_id, key), key=lambda m: m.timestamp):
                row = rows.setdefault((run.run_id, m.step), {"run_id": run.run_id, "run_name": run.run_name,
                                                             "label": getattr(run, "label", run.run_name),
                                                             "epoch": int(m.step)})
                row[key] = float(m.value)
    cols = ["run_id", "run_name", "label", "epoch", *keys]
    hist = pd.DataFrame(list(rows.values()), columns=cols)
    for key in keys:
        hist[key] = hist[key].astype("float64")
    hist["epoch"] = hist["epoch"].astype("int64")
    order = {rid: i for i, rid in enumerate(runs_df["run_id"])}
    hist["_o"] = hist["run_id"].map(order)
    return hist.sort_values(["_o", "epoch"]).drop(columns="_o").reset_index(drop=True)


# ----------------------------------------------------------------------------- coverage
def expected_configurations(grid: str) -> List[str]:
    """Run names the programme asks for, in its order, from the versioned configs (configs/*.yaml)."""
    from training.config import load_config

    if grid == "first_classifier":
        return ["first_classifier"]
    if grid == "mlp_grid":
        from training.part1.runs import grid_run_name

        cfg = load_config("part1")["mlp_grid"]
        return [grid_run_name(d, w) for w in cfg["widths"] for d in cfg["depths"]]
    from training.experiments import experiment_name_of
    from training.grids.expand import expand_grid, load_grid_config

    return [experiment_name_of(kw) for kw in expand_grid(load_grid_config(grid))]


def mlp_axes(mlp: pd.DataFrame) -> Tuple[List[int], List[int]]:
    """Depths and widths of the MLP mosaic: the programme's (configs/part1.yaml) plus any run."""
    from training.config import load_config

    cfg = load_config("part1")["mlp_grid"]
    depths = sorted(set(cfg["depths"]) | {int(d) for d in mlp.get("depth", [])})
    widths = sorted(set(cfg["widths"]) | {int(w) for w in mlp.get("width", [])})
    return depths, widths


def experiment_status(experiment: Optional[str] = None, grids: Iterable[str] = ALL_GRIDS,
                      frames: Optional[Dict[str, pd.DataFrame]] = None) -> pd.DataFrame:
    """Per grid: configurations expected, finished (at least one seed), present but not finished
    (no seed finished), never run; a configuration is counted once whatever its number of seeds.

    frames: grid_runs results already fetched (avoids searching again)."""
    rows = []
    for grid in grids:
        df = frames[grid] if frames is not None and grid in frames else grid_runs(grid, experiment)
        expected = expected_configurations(grid)
        names = df["config"] if "config" in df.columns else df["run_name"]
        finished = set(names[df["status"] == "FINISHED"])
        unfinished = sorted(set(names) - finished)
        never = [n for n in expected if n not in set(names)]
        rows.append(dict(grid=grid, expected=len(expected), finished=len(finished), unfinished=len(unfinished),
                         not_run=len(never), unfinished_names=unfinished, not_run_names=never,
                         extra_names=sorted(set(names) - set(expected))))
    return pd.DataFrame(rows)


def missing_experiments(experiment: Optional[str] = None,
                        frames: Optional[Dict[str, pd.DataFrame]] = None) -> List[str]:
    """Grids with no FINISHED configuration in the store (searched over all experiments, or the
    named one), in the programme's order."""
    status = experiment_status(experiment, frames=frames)
    return status.loc[status["finished"] == 0, "grid"].tolist()
