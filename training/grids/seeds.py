"""Several seeds per configuration: `--seeds 42,43,44` on grids, run-exp, reproduce and Part 1.

Why: two runs of one configuration differ by up to 1.3 points, so one run per configuration cannot
tell a trend from noise. The first seed keeps the programme's run name and results file; each
further seed is its own run `<name>_s<seed>` (training.tracking.runs.seed_run_name) with `seed`
logged as a param; skip and resume work per (configuration, seed).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence


def parse_seeds(text: Optional[str]) -> Optional[List[int]]:
    """'42,43,44' -> [42, 43, 44]; None or '' -> None (the config's own seed). An empty item,
    a non-integer, a negative or a repeated seed is a one-line ValueError."""
    if text is None or not str(text).strip():
        return None
    items = [t.strip() for t in str(text).split(",")]
    hint = "give distinct non-negative integers, comma-separated, e.g. --seeds 42,43,44"
    if any(not t for t in items):
        raise ValueError(f"seeds {text!r} has an empty item; {hint}")
    bad = [t for t in items if not re.fullmatch(r"[+-]?\d+", t)]
    if bad:
        raise ValueError(f"seeds {text!r}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not an integer; {hint}")
    seeds = [int(t) for t in items]
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ValueError(f"seeds {text!r}: negative seed(s) {negative}; {hint}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds {text!r} repeats {repeated}; {hint}")
    return seeds


def with_seeds(runs: Sequence[Dict[str, Any]], seeds: Optional[Sequence[int]]) -> List[Dict[str, Any]]:
    """cnn_experiment kwargs per (configuration, seed), seed by seed (the whole grid at the first
    seed first, so an interrupted grid still has every configuration once). None: unchanged."""
    if not seeds:
        return list(runs)
    return [{**kwargs, "seed": seed, "first_seed": i == 0} for i, seed in enumerate(seeds) for kwargs in runs]
