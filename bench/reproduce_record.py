"""The record of one `python -m entrypoints.reproduce` (issue #17), built from its MLflow store.

    python bench/reproduce_record.py sqlite:///mlflow.db --out bench/measured/reproduce_h200_<date>.json

Why from the store: the store is what the programme leaves whatever happened (a run cut short by
a timeout ends KILLED, with its end time), so the same code records a complete run, a cut-short
one and a CPU rehearsal. It reads the newest `reproduce` run (tags grid=reproduce,
archlab.role=parent: entrypoints/reproduce.py) and the runs under it:
- wall time: the reproduce run's end - start; per grid parent (part1, test_run, ..., exp2) its
  span, the span of its children and their summed durations;
- every CIFAR configuration: the runs of its seeds (`<name>`, `<name>_s<seed>`), grouped as the
  report groups them (analysis.query.grid_runs + analysis.spread.per_config): seeds, test_acc
  per finished seed, mean, std, n finished, and the expected (configuration, seed) runs missing;
- statuses of every run under reproduce (all must be FINISHED);
- MLflow's share (training.tracking.timing): sum(mlflow_time_s) / sum(run durations) over the
  training runs that logged it, and the same seconds against the reproduce wall;
- device and torch from this process (the record is built on the machine that trained), the
  device tags the runs logged, and the data copy (archlab.data_kind / archlab.data_digest).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402

PARENT_ID = "tags.mlflow.parentRunId"
ROLE = "tags.archlab.role"
GRID = "tags.grid"


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def _seconds(start: Any, end: Any) -> Optional[float]:
    return None if pd.isna(start) or pd.isna(end) else round((end - start).total_seconds(), 2)


def _num(x: Any, digits: int = 3) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x) else round(float(x), digits)


def load_runs(uri: str) -> pd.DataFrame:
    """Every run of the store, every experiment (search_runs as pandas)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="pandas", max_results=50_000)


def newest_reproduce(runs: pd.DataFrame) -> pd.Series:
    """The newest run tagged grid=reproduce, archlab.role=parent (ValueError: none)."""
    found = runs[(_col(runs, GRID) == "reproduce") & (_col(runs, ROLE) == "parent")] if len(runs) else runs
    if not len(found):
        raise ValueError("no `reproduce` run in this store (tags grid=reproduce, archlab.role=parent)")
    return found.sort_values("start_time", ascending=False).iloc[0]


def descendants(runs: pd.DataFrame, root_id: str) -> pd.DataFrame:
    """The runs under `root_id` (children, grandchildren, ...), by their mlflow.parentRunId tags."""
    parent = _col(runs, PARENT_ID)
    ids, frontier = set(), {root_id}
    while frontier:
        frontier = set(runs.loc[parent.isin(frontier), "run_id"]) - ids
        ids |= frontier
    return runs[runs["run_id"].isin(ids)]


def wall(root: pd.Series, tree: pd.DataFrame) -> Dict[str, Any]:
    """The reproduce run's span; a run left RUNNING (its process killed hard) ends at its last child's end."""
    end = root["end_time"]
    if pd.isna(end) and len(tree):
        end = tree["end_time"].max()
    return {"run_id": root["run_id"], "status": root["status"], "start": str(root["start_time"]),
            "end": None if pd.isna(end) else str(end), "wall_s": _seconds(root["start_time"], end),
            "cut_short": root["status"] != "FINISHED"}


def grid_times(tree: pd.DataFrame, root_id: str) -> Dict[str, Dict[str, Any]]:
    """Per grid parent directly under reproduce (part1, test_run, ..., exp2): its span, its
    descendants' span and summed durations, and how many of them finished."""
    out = {}
    for _, p in tree[_col(tree, PARENT_ID) == root_id].sort_values("start_time").iterrows():
        kids = descendants(tree, p["run_id"])
        kids = kids[_col(kids, ROLE) != "parent"]
        spans = [(s, e) for s, e in zip(kids["start_time"], kids["end_time"]) if not pd.isna(e)]
        out[p[GRID] if isinstance(p.get(GRID), str) else p["tags.mlflow.runName"]] = {
            "run_id": p["run_id"], "status": p["status"], "seconds": _seconds(p["start_time"], p["end_time"]),
            "children_span_s": _seconds(min(s for s, _ in spans), max(e for _, e in spans)) if spans else None,
            "children_run_s": round(sum((e - s).total_seconds() for s, e in spans), 2),
            "runs": len(kids), "finished": int((kids["status"] == "FINISHED").sum())}
    return out


def status_counts(root: pd.Series, tree: pd.DataFrame) -> Dict[str, int]:
    """Runs by status: the reproduce run and every run under it."""
    counts = tree["status"].value_counts().to_dict() if len(tree) else {}
    counts[root["status"]] = counts.get(root["status"], 0) + 1
    return {k: int(v) for k, v in sorted(counts.items())}


def _seed_names(config: str, seeds: List[str]) -> List[str]:
    from training.tracking.runs import seed_run_name

    return [seed_run_name(config, int(s), i == 0) for i, s in enumerate(seeds)] if seeds else [config]


def _config_row(grid: str, frame: pd.DataFrame, row: pd.Series) -> Dict[str, Any]:
    """One configuration: per_config's row (analysis.spread) and the runs of its seeds."""
    from analysis.spread import Stat, seed_points

    runs = frame[frame["config"] == row["config"]]
    stat = Stat.of(row)
    return {"grid": grid, "config": row["config"], "seeds": sorted(int(s) for s in runs["seed"].dropna()),
            "test_acc": [round(a, 2) for a in seed_points(frame, row)], "mean": _num(stat.mean, 2),
            "std": _num(stat.std, 2), "n_finished": int(row["n_seeds"]), "runs": len(runs),
            "statuses": {k: int(v) for k, v in runs["status"].value_counts().items()},
            "run_s": round(sum(_seconds(s, e) or 0.0 for s, e in zip(runs["start_time"], runs["end_time"])), 2),
            "mlflow_time_s": _num(runs["mlflow_time_s"].sum(), 2) if "mlflow_time_s" in runs else None}


def configurations(tree: pd.DataFrame, grids: Dict[str, Dict[str, Any]]) -> tuple:
    """(one dict per CIFAR configuration under reproduce, {grid: expected seed runs not FINISHED})."""
    from analysis.query import expected_configurations, grid_runs
    from analysis.spread import per_config
    from training.grids.expand import GRIDS

    ids, rows, missing = set(tree["run_id"]), [], {}
    for grid in (g for g in GRIDS if g in grids):
        frame = grid_runs(grid)
        frame = frame[frame["run_id"].isin(ids)].reset_index(drop=True)
        if len(frame) and "seed" not in frame.columns:
            frame["seed"] = None
        rows += [_config_row(grid, frame, row) for _, row in per_config(frame).iterrows()]
        parent = tree[tree["run_id"] == grids[grid]["run_id"]].iloc[0]
        seeds = [s for s in str(parent.get("tags.archlab.seeds") or "").split(",") if s]
        done = set(frame.loc[frame["status"] == "FINISHED", "run_name"])
        expected = [n for c in expected_configurations(grid) for n in _seed_names(c, seeds)]
        missing[grid] = [n for n in expected if n not in done]
    return rows, {g: names for g, names in missing.items() if names}


def _share(timed: pd.DataFrame) -> Dict[str, Any]:
    spent = float(timed["metrics.mlflow_time_s"].sum()) if len(timed) else 0.0
    run_s = float(sum((e - s).total_seconds() for s, e in zip(timed["start_time"], timed["end_time"])))
    pre = float(_col(timed, "metrics.mlflow_pre_run_s").fillna(0).sum())
    return {"runs": len(timed), "mlflow_s": round(spent, 2), "run_s": round(run_s, 2), "pre_run_s": round(pre, 2),
            "share_of_run_time": round(spent / run_s, 4) if run_s else None}


def mlflow_share(tree: pd.DataFrame, wall_s: Optional[float]) -> Dict[str, Any]:
    """MLflow's share, from the runs' mlflow_time_s (training.tracking.timing): of the runs' own time,
    for CIFAR and Part 1 apart and together, and the same seconds against the reproduce wall."""
    from analysis.query import PART1_GRIDS
    from training.grids.expand import GRIDS

    col = "metrics.mlflow_time_s"
    timed = tree[_col(tree, col).notna() & tree["end_time"].notna()]
    total = _share(timed)
    out = {**total, "cifar": _share(timed[_col(timed, GRID).isin(GRIDS)]),
           "part1": _share(timed[_col(timed, GRID).isin(PART1_GRIDS)])}
    out["per_wall_s"] = round((total["mlflow_s"] + total["pre_run_s"]) / wall_s, 4) if wall_s else None
    out["how"] = ("share_of_run_time = sum(mlflow_time_s) / sum(end - start) over the training runs that logged "
                  "it (MLflow calls inside each run: start_run to just before end_run); per_wall_s = (sum of "
                  "mlflow_time_s + mlflow_pre_run_s, the skip checks) / the reproduce wall: with W workers "
                  "training at once these are W lanes' seconds, so it is MLflow-seconds per wall-second, not "
                  "a fraction of the wall; not counted: end_run, the parents' summaries, grid-level calls, "
                  "MLflow's background system-metrics thread")
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_info(tree: pd.DataFrame) -> Dict[str, Any]:
    """This process's device and versions (the record is built where the programme ran), and the
    devices the runs were tagged with."""
    import mlflow
    import torch

    cuda = torch.cuda.is_available()
    return {"name": torch.cuda.get_device_name(0) if cuda else _cpu_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "python": platform.python_version(),
            "mlflow": mlflow.__version__, "cpu_count": os.cpu_count(),
            "run_devices": sorted(set(_col(tree, "tags.archlab.device").dropna()))}


def data_info(tree: pd.DataFrame) -> Dict[str, Any]:
    """The data copies the CIFAR runs saw (one is expected: the lossless copy at full size)."""
    from training.grids.expand import GRIDS

    cifar = tree[_col(tree, GRID).isin(GRIDS) & (_col(tree, ROLE) == "child")]
    values = {k: sorted(set(_col(cifar, f"tags.archlab.data_{k}").dropna()) - {""}) for k in ("kind", "digest", "source")}
    return {**values, "smoke": sorted(set(_col(cifar, "tags.archlab.smoke").dropna()))}


def build_record(uri: str) -> Dict[str, Any]:
    """The whole record of the newest reproduce run in the store at `uri`."""
    runs = load_runs(uri)
    root = newest_reproduce(runs)
    tree = descendants(runs, root["run_id"])
    reproduce = wall(root, tree)
    grids = grid_times(tree, root["run_id"])
    configs, missing = configurations(tree, grids)
    statuses = status_counts(root, tree)
    return {"what": "python -m entrypoints.reproduce, recorded from its MLflow store (bench/reproduce_record.py)",
            "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "store": uri, "reproduce": reproduce, "device": device_info(tree), "data": data_info(tree),
            "statuses": statuses, "all_finished": set(statuses) == {"FINISHED"}, "grids": grids,
            "mlflow": mlflow_share(tree, reproduce["wall_s"]), "n_configurations": len(configs),
            "configurations": configs, "missing": missing}


def summary_lines(rec: Dict[str, Any]) -> List[str]:
    """A few lines for a console (the device call's output tail)."""
    r, m, d = rec["reproduce"], rec["mlflow"], rec["device"]
    lines = [f"reproduce {r['status']}{' (cut short)' if r['cut_short'] else ''}: {r['wall_s']} s wall on "
             f"{d['name']} (torch {d['torch']}); data {','.join(rec['data']['kind']) or '?'}",
             f"runs by status: {rec['statuses']} -> all FINISHED: {rec['all_finished']}",
             "grids: " + ", ".join(f"{g} {v['seconds']} s ({v['finished']}/{v['runs']})" for g, v in rec["grids"].items()),
             f"MLflow: {m['mlflow_s']} s of {m['run_s']} s run time = {_pct(m['share_of_run_time'])} (CIFAR "
             f"{_pct(m['cifar']['share_of_run_time'])}, Part 1 {_pct(m['part1']['share_of_run_time'])}); "
             f"+{m['pre_run_s']} s skip checks; {m['per_wall_s']} MLflow-s per wall-s",
             f"{rec['n_configurations']} CIFAR configurations; missing seed runs: "
             f"{sum(len(v) for v in rec['missing'].values())}"]
    for c in rec["configurations"]:
        lines.append(f"  {c['config']}: {c['mean']} ± {c['std']} (n={c['n_finished']}) {c['test_acc']}")
    return lines


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def problems(rec: Dict[str, Any]) -> List[str]:
    """What --check refuses: a run not FINISHED, a missing seed run, a grid without a time, no share."""
    out = [] if rec["all_finished"] else [f"runs not FINISHED: {rec['statuses']}"]
    out += [f"{g}: {len(v)} seed runs missing ({', '.join(v[:3])}...)" for g, v in rec["missing"].items()]
    out += [f"grid {g} has no time" for g, v in rec["grids"].items() if v["seconds"] is None]
    if rec["mlflow"]["share_of_run_time"] is None:
        out.append("no run logged mlflow_time_s")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="MLflow tracking URI, e.g. sqlite:///mlflow.db")
    ap.add_argument("--out", required=True, help="the record's JSON file")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every run FINISHED, none is missing, "
                                                         "every grid has a time and the share is measured")
    args = ap.parse_args(argv)
    rec = build_record(args.store)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1, default=str)
    print("\n".join(summary_lines(rec)))
    print(f"record: {args.out}")
    bad = problems(rec) if args.check else []
    for line in bad:
        print(f"CHECK FAILED: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
