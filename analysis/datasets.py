"""Which data a grid's answers stand on, and which runs are smoke-size (issue #16).

Two copies of CIFAR-10 (the JPEG q75 one and a lossless one) give different numbers, so a table
never mixes them: per grid, `choose_data` keeps the runs on the newest copy (the data digest of
the most recently started finished run) and returns the others as left out. Runs logged before
the data tags have no digest; they form one "unrecorded data" group, used only when no recorded
group has a finished run. Smoke-size runs (below the programme's images or epochs) are tagged by
the training side; for older runs `smoke_flags` infers it from their params.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import pandas as pd

from training.tracking import runs as tracking

UNRECORDED = ""           # data_digest of runs logged before the data tags
SHORT_DIGEST = 12
SMOKE_EXEMPT = ("test_run",)  # the programme's own smoke test: small by definition, no answer uses it


@dataclass
class DataChoice:
    """The data copy a grid's answers use, and the runs of the other copies."""

    grid: str
    digest: str = UNRECORDED
    source: str = ""
    kind: str = ""
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def recorded(self) -> bool:
        return self.digest != UNRECORDED

    def describe(self) -> str:
        """`jpeg copy, digest 3f2a9c0d11aa, from /data/cifar-q75` or the unrecorded wording."""
        if not self.recorded:
            return "data not recorded (runs logged before the data tags)"
        kind = f"{self.kind} copy, " if self.kind and self.kind != "unknown" else "unrecognised copy, "
        return f"{kind}digest `{self.digest[:SHORT_DIGEST]}`, from `{self.source or '?'}`"


def kind_of(kind: Any, source: Any) -> str:
    """The data kind: the tag when it says one, else recognised from the source's name."""
    kind = str(kind or "")
    if kind and kind != "unknown":
        return kind
    src = str(source or "").lower()
    if any(k in src for k in ("jpeg", "jpg", "q75")):
        return "jpeg"
    if any(k in src for k in ("lossless", "png", "cifar-10-batches-py")):
        return "lossless"
    return kind


def _newest(rows: pd.DataFrame) -> pd.Series:
    return rows.sort_values("start_time").iloc[-1]


def choose_data(grid: str, runs: pd.DataFrame) -> Tuple[pd.DataFrame, DataChoice]:
    """(the runs on the data copy the answers use, the choice with its left-out runs).

    The copy is that of the most recently started FINISHED run, among runs with recorded data
    when any finished one has it; with no finished run at all, that of the newest run."""
    if not len(runs) or "data_digest" not in runs.columns:
        return runs, DataChoice(grid, left_out=runs.iloc[0:0])
    done = runs[runs["status"] == "FINISHED"]
    recorded = done[done["data_digest"] != UNRECORDED]
    pool = recorded if len(recorded) else done if len(done) else runs
    pick = _newest(pool)
    chosen = runs[runs["data_digest"] == pick["data_digest"]].reset_index(drop=True)
    left = runs[runs["data_digest"] != pick["data_digest"]].reset_index(drop=True)
    choice = DataChoice(grid, pick["data_digest"], str(pick.get("data_source") or ""),
                        kind_of(pick.get("data_kind"), pick.get("data_source")), left)
    return chosen, choice


def left_out_lines(choices: Dict[str, DataChoice]) -> List[str]:
    """One line per grid with runs on another copy: which copy, how many runs, their names."""
    lines = []
    for grid, c in choices.items():
        if not len(c.left_out):
            continue
        for digest, rows in c.left_out.groupby("data_digest", sort=False):
            first = rows.iloc[0]
            other = DataChoice(grid, digest, str(first.get("data_source") or ""),
                               kind_of(first.get("data_kind"), first.get("data_source")))
            names = ", ".join(sorted(rows["run_name"]))
            lines.append(f"`{grid}`: {len(rows)} run(s) on another copy ({other.describe()}) left out: {names}")
    return lines


# ----------------------------------------------------------------------------- smoke
def programme_epochs(grid: str) -> int | None:
    """The epochs the programme's config asks of `grid` (None: unknown grid)."""
    from training.config import load_config

    try:
        if grid in ("first_classifier", "mlp_grid"):
            return int(load_config("part1")[grid]["epochs"])
        from training.grids.expand import load_grid_config

        return int(load_grid_config(grid)["epochs"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return None


def _num(row: pd.Series, key: str) -> float | None:
    v = pd.to_numeric(pd.Series([row.get(key)]), errors="coerce").iloc[0]
    return None if pd.isna(v) else float(v)


def inferred_smoke(grid: str, row: pd.Series, epochs: int | None) -> bool:
    """For a run without the smoke tag: allow_small, too few CIFAR images, or fewer epochs."""
    from training.data.cifar import MIN_TRAIN_IMAGES, MIN_VALID_IMAGES

    if row.get("allow_small") is True:
        return True
    ran = _num(row, "epochs")
    if epochs is not None and ran is not None and ran < epochs:
        return True
    if grid in ("first_classifier", "mlp_grid"):
        return False
    n_train, n_valid, batches, bs = (_num(row, k) for k in ("n_train", "n_valid", "batches", "bs_train"))
    per_epoch = n_train if batches is None or bs is None else min(n_train or batches * bs, batches * bs)
    return (per_epoch is not None and per_epoch < MIN_TRAIN_IMAGES) or (n_valid is not None
                                                                        and n_valid < MIN_VALID_IMAGES)


def smoke_flags(grid: str, runs: pd.DataFrame) -> pd.Series:
    """Per run: below the programme's size? The `archlab.smoke` tag when set, else inferred."""
    if grid in SMOKE_EXEMPT or not len(runs):
        return pd.Series(False, index=runs.index, dtype=bool)
    epochs = programme_epochs(grid)
    tags = runs["smoke_tag"] if "smoke_tag" in runs.columns else pd.Series("", index=runs.index)
    return pd.Series([t == "true" if t in ("true", "false") else inferred_smoke(grid, row, epochs)
                      for t, (_, row) in zip(tags, runs.iterrows())], index=runs.index, dtype=bool)


# ----------------------------------------------------------------------------- banner and marks
SMOKE_BANNER = "Smoke-size runs: the numbers below do not answer the programme."


def smoke_banner(smoke: Dict[str, List[str]]) -> str:
    """The report's opening warning when any run it uses is smoke-size ("" when none is)."""
    used = {g: names for g, names in smoke.items() if names}
    if not used:
        return ""
    which = "; ".join(f"`{g}` ({len(n)} configuration{'s' if len(n) > 1 else ''})" for g, n in used.items())
    return (f"> **{SMOKE_BANNER}** Some runs were trained below the programme's size (`allow_small`, fewer "
            f"training or validation images than its minimum, or fewer epochs than its configuration): {which}. "
            f"The sections built on them are marked; their sentences describe those runs and are not conclusions "
            f"about the architectures.")


def smoke_mark(grid: str, names: List[str]) -> str:
    """The mark at the head of a section whose table holds smoke-size runs ("" when none)."""
    if not names:
        return ""
    return (f"> **Smoke-size runs in `{grid}`** ({', '.join(names)}): trained below the programme's size, so "
            f"these numbers do not answer the question.")
