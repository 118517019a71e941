"""`python -m analysis.report`: figures + answers.md from whatever runs the store holds.

    python -m analysis.report                                  # ./mlflow.db (or $MLFLOW_TRACKING_URI) -> reports/
    python -m analysis.report --tracking-uri http://127.0.0.1:5000 --experiment archlab --out reports

It never trains: grids that have not been run are listed as missing (here and in answers.md).
Each grid's figures are also logged to that grid's newest parent run, under `report/`; under
`mlflow run . -e report` the project's own run receives the whole report folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import click

from analysis import figures as F
from analysis import query
from analysis.answers import write_answers
from analysis.data import ReportData, collect
from analysis.datasets import SMOKE_EXEMPT, left_out_lines


@dataclass
class ReportResult:
    answers: Path
    figures: Dict[str, List[Path]]   # grid (or "cifar" for the overview) -> PNG paths
    missing: List[str]
    data: ReportData


def build_figures(data: ReportData, out_dir: Path) -> Dict[str, List[Path]]:
    """Every figure the runs allow, keyed by the grid whose parent run they belong to."""
    figs: Dict[str, List[Path]] = {}
    for grid in query.CIFAR_GRIDS:
        runs = data.grids[grid]
        if len(runs):
            # one curve per configuration (its first seed), not one per seed
            figs[grid] = F.cifar_curve_figures(grid, data.configs(grid), data.histories[grid], out_dir)
            if len(data.finished(grid)):
                figs[grid].append(F.accuracy_vs_depth_width(grid, data.configs(grid), out_dir, seeds=runs))
    cifar_done = {g: data.finished(g) for g in query.CIFAR_GRIDS if g != "test_run" and len(data.finished(g))}
    if cifar_done:
        figs["cifar"] = [F.depth_overview(cifar_done, out_dir)]

    from training.data.synthetic import make_synthetic_splits

    first, mlp = data.first, data.finished("mlp_grid")
    splits = make_synthetic_splits(42) if first is not None or len(mlp) else None
    if first is not None:  # one picture: the first seed as it ran (its model, threshold, curves)
        run, hist = data.first_run, data.histories["first_classifier"]
        figs["first_classifier"] = F.first_classifier_figures(run, hist[hist["run_id"] == run["run_id"]], splits,
                                                              out_dir)
    if len(mlp):
        depths, widths = query.mlp_axes(mlp)
        figs["mlp_grid"] = [F.mlp_mosaic(data.first_seeds("mlp_grid"), splits, out_dir, depths, widths)]
    if first is not None or len(mlp):
        key = "mlp_grid" if len(mlp) else "first_classifier"
        figs[key] = figs.get(key, []) + [F.threshold_effect(mlp, first, out_dir), F.fpr_fnr(mlp, first, out_dir)]
    return figs


def log_report(figs: Dict[str, List[Path]], experiment: Optional[str], out_dir: Path) -> Dict[str, Optional[str]]:
    """Log each grid's figures to its newest parent run; returns grid -> run id used."""
    used = {}
    for grid, paths in figs.items():
        run_id = query.parent_run_id(grid, experiment) if grid in query.ALL_GRIDS else None
        F.log_figures(run_id, paths)
        used[grid] = run_id
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run:  # launched by `mlflow run . -e report`: that run holds the whole report
        from mlflow.tracking import MlflowClient

        MlflowClient().log_artifacts(project_run, str(out_dir), "report")
    return used


def build_report(out_dir: Path | str = "reports", experiment: Optional[str] = None,
                 log_artifacts: bool = True) -> ReportResult:
    """Query the current tracking store, draw the figures, write answers.md (never trains)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Reloading each Part 1 model would print MLflow's "Downloading artifacts" bar (26 of them).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    data = collect(experiment)
    data.figures = build_figures(data, out_dir)
    answers = write_answers(data, out_dir)
    if log_artifacts:
        log_report(data.figures, experiment, out_dir)
    return ReportResult(answers, data.figures, data.missing, data)


def summary(result: ReportResult) -> str:
    """What was built and what is missing, for the terminal."""
    status = result.data.status
    lines = [f"Report built from {result.data.tracking_uri} "
             f"({'experiment ' + result.data.experiment if result.data.experiment else 'all experiments'})."]
    for r in status.itertuples():
        state = "MISSING" if r.finished == 0 else "complete" if r.finished >= r.expected else "partial"
        extra = f"; not finished: {', '.join(r.unfinished_names)}" if r.unfinished_names else ""
        lines.append(f"  {r.grid:<17} {state:<8} {r.finished}/{r.expected} configurations finished{extra}")
    smoke = {g: result.data.smoke(g) for g in status["grid"] if g not in SMOKE_EXEMPT}
    if any(smoke.values()):
        lines.append("SMOKE-SIZE runs used (answers.md opens with a banner): "
                     + ", ".join(f"{g} ({len(n)})" for g, n in smoke.items() if n))
    lines += [f"Left out (another data copy): {line}" for line in left_out_lines(result.data.data)]
    if result.missing:
        lines.append(f"Missing experiments (no finished runs; answers.md says so): {', '.join(result.missing)}")
    n = sum(len(p) for p in result.figures.values())
    lines.append(f"{n} figures in {Path(result.answers).parent / 'figures'}; answers: {result.answers}")
    return "\n".join(lines)


@click.command()
@click.option("--out", default="reports", show_default=True, help="Folder for answers.md and figures/.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI to read (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--experiment", default=None,
              help="Only this MLflow experiment (default: search every experiment; `mlflow run` may log to Default).")
@click.option("--log-artifacts/--no-log-artifacts", default=True, show_default=True,
              help="Also log each grid's figures to its newest parent run (artifact folder report/).")
def cli(out: str, tracking_uri: Optional[str], experiment: Optional[str], log_artifacts: bool) -> None:
    """Build reports/answers.md and the figures from the runs in the store (never trains)."""
    from training.tracking import lifecycle
    from training.tracking import runs as tracking

    try:
        tracking.configure_tracking(tracking_uri)
        lifecycle.sweep_never_started()
        result = build_report(out, experiment, log_artifacts)
    except (ValueError, ConnectionError) as e:
        raise click.UsageError(str(e)) from None
    click.echo(summary(result))


if __name__ == "__main__":
    from entrypoints.common import run_cli

    run_cli(cli)
