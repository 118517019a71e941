"""`reports/answers.md`: every question of the programme answered from the logged runs.

Each number in the document is read from the runs (through analysis.query / analysis.data) or
computed while the document is built from the project's own classes and data (parameter and
FLOP counts, the synthetic splits). Sentences that compare or rank are chosen from the measured
numbers, so the text stays true when the runs change; a grid that was not run is reported as
missing rather than described.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from analysis.answers_common import figs
from analysis.answers_part1 import part1_q1, part1_q2, part1_q3, part1_q4
from analysis.answers_part2 import part2_q1
from analysis.answers_part3 import part3_q1, part3_q2, part3_q3, part3_q4, part3_q5
from analysis.data import ReportData
from analysis.datasets import SMOKE_EXEMPT, left_out_lines, smoke_banner
from analysis.text import bullet, table


def header(data: ReportData) -> str:
    where = f"experiment `{data.experiment}`" if data.experiment else "all experiments"
    rows = data.status.copy()
    rows["state"] = [("missing" if r.finished == 0 else "complete" if r.finished >= r.expected else "partial")
                     for r in rows.itertuples()]
    status = table(rows, [("grid", "grid", str), ("expected", "configurations (programme)", str),
                          ("finished", "finished", str), ("unfinished", "failed/killed/running", str),
                          ("not_run", "never run", str), ("state", "state", str)])
    missing = (f"**Missing experiments:** {', '.join(f'`{g}`' for g in data.missing)} — the answers that depend on "
               f"them say so instead of guessing." if data.missing else "**Every experiment has finished runs.**")
    banner = smoke_banner({g: data.smoke(g) for g in data.grids if g not in SMOKE_EXEMPT})
    return "\n\n".join([
        "# HW2: answers generated from the MLflow runs", *([banner] if banner else []),
        f"Built by `python -m analysis.report` on {_dt.datetime.now().isoformat(timespec='seconds')} from the "
        f"tracking store `{data.tracking_uri}` ({where}). Every number below is read from the logged runs or "
        f"computed, while this file was built, from the project's own classes and data; none is typed by hand. "
        f"Accuracies are percentages; FPR/FNR are rates in [0, 1]. A configuration trained with several seeds "
        f"is quoted as `mean ± std (n=seeds)` over its finished seeds, and a difference is called a finding only "
        f"when it exceeds the two stds added together (otherwise the text says it is within seed noise); with one "
        f"seed no spread is known and no trend is claimed. Of repeated attempts of one seed, the newest FINISHED "
        f"run counts.",
        "## Status of the experiments", status, missing, data_section(data)])


def data_section(data: ReportData) -> str:
    """Which data copy each grid's answers stand on, and the runs on other copies left out."""
    rows = [dict(grid=g, data=c.describe(), seeds=_seed_range(data, g))
            for g, c in data.data.items() if len(data.grids.get(g, []))]
    if not rows:
        return "## Data behind the answers\n\nNo runs in this store."
    import pandas as pd

    tbl = table(pd.DataFrame(rows), [("grid", "grid", str), ("data", "data copy used", str),
                                     ("seeds", "finished seeds per configuration", str)])
    left = left_out_lines(data.data)
    tail = ("Runs on other data copies are never mixed into a table; left out here:\n\n" + bullet(left) if left else
            "No run was left out: every grid's runs are on one data copy.")
    return "\n\n".join(["## Data behind the answers",
                         "Each grid is answered from the data copy of its most recently started finished run "
                         "(runs that record their data win over runs logged before data was recorded).", tbl, tail])


def _seed_range(data: ReportData, grid: str) -> str:
    ns = data.finished(grid)["n_seeds"] if len(data.finished(grid)) else []
    if not len(ns):
        return "none finished"
    lo, hi = int(min(ns)), int(max(ns))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def render(data: ReportData, out_dir: Path) -> str:
    """The whole document as Markdown."""
    out_dir = Path(out_dir)
    overview = figs(data, "cifar", out_dir, "All CIFAR experiments")
    return "\n\n".join([
        header(data),
        "## Part 1: binary classification with MLPs",
        part1_q1(data, out_dir), part1_q2(data), part1_q3(data), part1_q4(data, out_dir),
        part2_q1(),
        "## Part 3: convolutional architecture experiments",
        *([overview] if overview else []),
        part3_q1(data, out_dir), part3_q2(data, out_dir), part3_q3(data, out_dir), part3_q4(data, out_dir),
        part3_q5(data, out_dir),
    ]) + "\n"


def write_answers(data: ReportData, out_dir: Path | str) -> Path:
    """Write <out_dir>/answers.md and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "answers.md"
    path.write_text(render(data, out_dir))
    return path
