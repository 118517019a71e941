"""The programme's results files: `{out_dir}/{run_name}_L{L}_K{k1-k2-...}.json`."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from training.results import FitResult


def experiment_name(run_name: str, filters_per_layer: Sequence[int], layers_per_block: int) -> str:
    """`exp1_1` + K=[32] + L=2 -> `exp1_1_L2_K32` (the run name and the file stem)."""
    return f"{run_name}_L{layers_per_block}_K{'-'.join(str(k) for k in filters_per_layer)}"


def save_experiment(run_name: str, out_dir: str, cfg: Dict[str, Any], fit_res: FitResult,
                    extra: Optional[Dict[str, Any]] = None, stem: Optional[str] = None) -> str:
    """Write `{"config": cfg, "results": fit_res._asdict()}` (plus archlab's extra top-level keys,
    which load_experiment ignores) and return the path. stem: the file's name without .json
    (default: the programme's; a further seed's run name keeps the first seed's file apart)."""
    stem = stem or experiment_name(run_name, cfg["filters_per_layer"], cfg["layers_per_block"])
    path = os.path.join(out_dir, stem + ".json")
    os.makedirs(out_dir, exist_ok=True)
    payload = {"config": cfg, "results": fit_res._asdict(), **(extra or {})}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def load_experiment(filename: str) -> Tuple[Dict[str, Any], FitResult]:
    with open(filename) as f:
        output = json.load(f)
    return output["config"], FitResult(**output["results"])
