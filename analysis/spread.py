"""Seeds and spread: one row per configuration, `mean ± std (n=k)`, and when a difference is a finding.

Two trainings of one configuration differ (up to 1.3 points measured on CIFAR-10), so a single
run cannot tell a 1-point trend from noise. Here, and only here, the report decides:
- `per_config`: a grid's runs -> one row per configuration; float columns are the mean over its
  finished seeds, with `<col>_std` (sample std) and `<col>_n` beside them;
- `Stat.quote`: how a number is written (`71.3% ± 0.4 (n=3)`, or `71.3% (n=1, no spread known)`);
- `verdict` / `compare`: a difference is a finding only when |Δmean| > std_a + std_b; with one
  seed on either side no spread is known and the text makes no claim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pandas as pd

from analysis.text import pct, points

FINISHED = "FINISHED"
NO_SPREAD = "no spread known"


def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and not pd.isna(x)


@dataclass(frozen=True)
class Stat:
    """A measured quantity over the seeds of one configuration."""

    mean: float
    std: float = math.nan
    n: int = 1

    @classmethod
    def of(cls, row: Any, col: str = "test_acc", suffix: str = "") -> "Stat":
        """The column `col` of a per_config row (a plain run row counts as one seed); suffix: that
        of a merge (`_res` reads test_acc_res, test_acc_std_res, test_acc_n_res)."""
        get = row.get if hasattr(row, "get") else lambda k, d=None: getattr(row, k, d)
        mean = get(f"{col}{suffix}")
        n = get(f"{col}_n{suffix}", None)
        n = (1 if _finite(mean) else 0) if not _finite(n) else int(n)
        std = get(f"{col}_std{suffix}", math.nan)
        return cls(float(mean) if _finite(mean) else math.nan, float(std) if _finite(std) else math.nan, n)

    @property
    def has_spread(self) -> bool:
        return self.n >= 2 and not math.isnan(self.std)

    def short(self, fmt: Callable[[Any], str] = pct, digits: int = 1) -> str:
        """`71.3% ± 0.4` (several seeds) or `71.3%` (one): for lists that state n once."""
        return f"{fmt(self.mean)} ± {self.std:.{digits}f}" if self.has_spread else fmt(self.mean)

    def quote(self, fmt: Callable[[Any], str] = pct, digits: int = 1) -> str:
        """`71.3% ± 0.4 (n=3)`, or `71.3% (n=1, no spread known)` for a single seed."""
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{self.short(fmt, digits)} (n={self.n})" if self.has_spread else f"{fmt(self.mean)} (n=1, {NO_SPREAD})"


def stat_pct(row: Any, col: str = "test_acc") -> str:
    """Shortcut: the quoted accuracy of a per_config row."""
    return Stat.of(row, col).quote()


# ----------------------------------------------------------------------------- findings
def verdict(a: Stat, b: Stat) -> str:
    """'higher' / 'lower' (a vs b, beyond the spread), 'noise' (within it), 'unknown' (a single seed)."""
    if not (a.has_spread and b.has_spread):
        return "unknown"
    if abs(a.mean - b.mean) <= a.std + b.std:
        return "noise"
    return "higher" if a.mean > b.mean else "lower"


def is_finding(a: Stat, b: Stat) -> bool:
    return verdict(a, b) in ("higher", "lower")


def compare(a: Stat, b: Stat) -> str:
    """The difference a - b with what it is worth: `+2.1 points, beyond the seed spread: the two stds
    add up to 0.9`, `+0.4 points, within seed noise: the two stds add up to 0.9`, or `+0.4 points;
    single seed, no spread known: not a measured difference`."""
    d, v = a.mean - b.mean, verdict(a, b)
    if v == "unknown":
        return f"{points(d)}; single seed, {NO_SPREAD}: not a measured difference"
    if v == "noise":
        return f"{points(d)}, within seed noise: the two stds add up to {a.std + b.std:.1f}"
    return f"{points(d)}, beyond the seed spread: the two stds add up to {a.std + b.std:.1f}"


def spread_note(stats: Sequence[Stat]) -> str:
    """How many seeds stand behind a list of numbers: `(n=3 each)`, `(n=2-3)` or the single-seed warning."""
    ns = sorted({s.n for s in stats if s.n})
    if not ns:
        return ""
    if ns == [1]:
        return f"(one seed each: {NO_SPREAD})"
    if ns[0] == 1:
        return f"(n={ns[0]}-{ns[-1]}; where n=1 {NO_SPREAD})"
    return f"(n={ns[0]} each)" if len(ns) == 1 else f"(n={ns[0]}-{ns[-1]})"


def stat_listing(pairs: Sequence[Tuple[Any, Stat]], name: str) -> str:
    """'L=2: 71.3% ± 0.4, L=4: 74.0% ± 0.6 (n=3 each)'."""
    body = ", ".join(f"{name}={x}: {s.short()}" for x, s in pairs)
    note = spread_note([s for _, s in pairs])
    return f"{body} {note}".rstrip()


def spread_trend(pairs: Sequence[Tuple[Any, Stat]], name: str) -> str:
    """How accuracy moves along `name` (pairs sorted by x), claimed only beyond the seed spread.

    With a single seed anywhere no spread is known: the old point-estimate wording
    (analysis.text.trend) is kept and says so."""
    from analysis.text import trend

    if not pairs:
        return trend([], name)
    if len(pairs) == 1:
        x, s = pairs[0]
        known = f"{s.short()}, n={s.n}" if s.has_spread else f"{s.short()}, one seed: {NO_SPREAD}"
        return f"is known only at {name}={x} ({known}): no other {name} has finished"
    if not all(s.has_spread for _, s in pairs):
        text = trend([(x, s.mean) for x, s in pairs], name)
        return f"{text} {spread_note([s for _, s in pairs])}".rstrip() if pairs else text
    stats = [s for _, s in pairs]
    hi = max(stats, key=lambda s: s.mean)
    lo = min(stats, key=lambda s: s.mean)
    xs = [x for x, _ in pairs]
    if verdict(hi, lo) == "noise":
        return f"is within seed noise along {name} ({stat_listing(pairs, name)})"
    steps = [verdict(b, a) for a, b in zip(stats, stats[1:])]
    best, worst = xs[stats.index(hi)], xs[stats.index(lo)]
    ends = verdict(stats[-1], stats[0])
    if "lower" not in steps and ("higher" in steps or ends == "higher"):
        direction = "rises with"
    elif "higher" not in steps and ("lower" in steps or ends == "lower"):
        direction = "falls with"
    else:
        direction = "is not monotonic in"
    shape = f"{direction} {name} (best at {name}={best}, worst at {name}={worst}: beyond the seed spread)"
    noisy = sum(v == "noise" for v in steps)
    tail = (f"; {noisy} of the {len(steps)} steps between neighbouring values {'is' if noisy == 1 else 'are'} "
            f"within seed noise" if noisy else "")
    return f"{shape}{tail}; {stat_listing(pairs, name)}"


# ----------------------------------------------------------------------------- aggregation
def _first_seed(rows: pd.DataFrame, config: str) -> pd.Series:
    """The run that represents a configuration in pictures: the programme-named first seed."""
    named = rows[rows["run_name"] == config] if "run_name" in rows.columns else rows.iloc[0:0]
    if len(named):
        return named.iloc[0]
    if "seed" in rows.columns and rows["seed"].notna().any():
        return rows.loc[pd.to_numeric(rows["seed"], errors="coerce").idxmin()]
    return rows.iloc[0]


def _aggregate(rows: pd.DataFrame, config: str) -> dict:
    first = _first_seed(rows, config)
    out = first.to_dict()
    for col in rows.columns:
        if str(rows[col].dtype) != "float64":
            continue
        values = rows[col].dropna()
        constant = values.nunique() <= 1
        out[col] = (values.iloc[0] if len(values) else math.nan) if constant else float(values.mean())
        out[f"{col}_std"] = float(values.std(ddof=1)) if len(values) >= 2 else math.nan
        out[f"{col}_n"] = len(values)
    out.update(run_name=config, n_seeds=len(rows), run_ids=list(rows.get("run_id", [])),
               seeds=list(rows["seed"]) if "seed" in rows.columns else [])
    return out


def per_config(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of a grid frame (query.grid_runs, one data copy).

    A configuration with finished seeds: its first seed's row (run id, params, label), the
    programme's run name, and every float column averaged over the finished seeds with `<col>_std`
    and `<col>_n`; `n_seeds` finished seeds, `n_unfinished` other runs. A configuration without a
    finished seed keeps its newest run as it is (n_seeds 0). Order: the frame's (programme) order."""
    if not len(runs):
        return runs.assign(n_seeds=pd.Series(dtype="int64"), n_unfinished=pd.Series(dtype="int64"))
    key = runs[next(c for c in ("config", "run_name", "label") if c in runs.columns)]
    rows: List[dict] = []
    for config in dict.fromkeys(key):
        group = runs[key == config]
        done = group[group["status"] == FINISHED]
        row = _aggregate(done, config) if len(done) else {**group.iloc[0].to_dict(), "n_seeds": 0,
                                                              "run_ids": list(group.get("run_id", [])), "seeds": []}
        row["n_unfinished"] = len(group) - max(len(done), 1)  # runs besides those the row stands for
        rows.append(row)
    return pd.DataFrame(rows)


def seed_points(runs: pd.DataFrame, config_row: Any, col: str = "test_acc") -> List[float]:
    """The finished seeds' values of `col` behind one per_config row (for figures)."""
    ids = set(config_row["run_ids"]) if isinstance(config_row.get("run_ids"), list) else {config_row["run_id"]}
    done = runs[(runs["run_id"].isin(ids)) & (runs["status"] == FINISHED)]
    return [float(v) for v in done[col].dropna()] if col in done.columns else []


def max_seeds(configs: pd.DataFrame) -> Optional[int]:
    """Largest number of finished seeds behind any configuration (None: no configuration)."""
    return int(configs["n_seeds"].max()) if len(configs) and "n_seeds" in configs.columns else None

