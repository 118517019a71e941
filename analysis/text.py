"""Markdown helpers for the answers: number formats, tables, and data-driven trend sentences.

Numbers are formatted in one place so the document is consistent and the tests can parse them
back: accuracies as `90.5%` (one decimal), rates (FPR, FNR) with three decimals, thresholds
with two or three.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd


def pct(x: Any) -> str:
    """Accuracy in percent, one decimal."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.1f}%"


def rate(x: Any) -> str:
    """A rate in [0, 1] (FPR, FNR), three decimals."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3f}"


def num(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.{digits}f}"


def count(n: Any) -> str:
    """An integer with thousands separators: 1,180,160."""
    return f"{int(n):,}"


def points(delta: float) -> str:
    """A signed difference of percentages: +1.2 points."""
    return f"{delta:+.1f} points"


def figure(path: Path, out_dir: Path, caption: str) -> str:
    """Markdown image with a link relative to the answers file."""
    rel = Path(path).resolve().relative_to(Path(out_dir).resolve()).as_posix()
    return f"![{caption}]({rel})\n\n*{caption}*"


def table(df: pd.DataFrame, columns: Sequence[Tuple[str, str, Callable[[Any], str]]]) -> str:
    """Markdown table: columns are (dataframe column, header, formatter)."""
    if not len(df):
        return "_(no runs)_"
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(col)) for col, _, fmt in columns) + " |" for _, row in df.iterrows()]
    return "\n".join([head, sep, *body])


def listing(pairs: Sequence[Tuple[Any, float]], name: str) -> str:
    """'L=2: 71.3%, L=4: 74.0%' from (value, accuracy) pairs."""
    return ", ".join(f"{name}={v}: {pct(a)}" for v, a in pairs)


def trend(pairs: Sequence[Tuple[Any, float]], name: str, flat_within: float = 1.0) -> str:
    """A sentence describing how accuracy moves along `name` (pairs sorted by the x value)."""
    if len(pairs) < 2:
        return (f"is known only at {name}={pairs[0][0]} ({pct(pairs[0][1])}): no other {name} has finished" if pairs
                else f"is unknown: no run along {name} has finished")
    xs, ys = [p[0] for p in pairs], [float(p[1]) for p in pairs]
    lo, hi = min(ys), max(ys)
    best, worst = xs[ys.index(hi)], xs[ys.index(lo)]
    if hi - lo <= flat_within:
        return f"is flat along {name} (all within {hi - lo:.1f} points: {listing(pairs, name)})"
    diffs = [b - a for a, b in zip(ys, ys[1:])]
    if all(d >= -flat_within / 2 for d in diffs):
        shape = f"rises with {name}, from {pct(ys[0])} at {name}={xs[0]} to {pct(ys[-1])} at {name}={xs[-1]}"
    elif all(d <= flat_within / 2 for d in diffs):
        shape = f"falls with {name}, from {pct(ys[0])} at {name}={xs[0]} to {pct(ys[-1])} at {name}={xs[-1]}"
    else:
        shape = f"is not monotonic in {name} (best at {name}={best}, worst at {name}={worst})"
    return f"{shape}; {listing(pairs, name)}"


PART1_COMMANDS = {"first_classifier": "first-classifier", "mlp_grid": "mlp-grid"}


def missing_note(grid: str, experiment: Optional[str]) -> str:
    where = f" of experiment `{experiment}`" if experiment else ""
    direct = (f"python -m entrypoints.part1 {PART1_COMMANDS[grid]}" if grid in PART1_COMMANDS
              else f"python -m entrypoints.cifar grid {grid}")
    return (f"**`{grid}` has not been run in this store{where}** (no finished configuration was found), "
            f"so this part cannot be answered from measurements; run it (`mlflow run . -e {grid}` or "
            f"`{direct}`) and rebuild the report.")


def bullet(lines: List[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def recipe(df: pd.DataFrame, keys: Sequence[str]) -> Dict[str, Any]:
    """The values of `keys` shared by every row (a key whose value differs is left out)."""
    out: Dict[str, Any] = {}
    for key in keys:
        if key in df.columns and len(df):
            values = {repr(v) for v in df[key]}
            if len(values) == 1:
                out[key] = df[key].iloc[0]
    return out
