"""Versioned experiment configs (configs/*.yaml): loading, and the programme's hp readers."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"

def load_config(name_or_path: str) -> Dict[str, Any]:
    """Load `configs/<name>.yaml` (or a path to a YAML file) as a dict, with clear errors."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config {str(name_or_path)!r} not found at {path}; available configs: {available}")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must hold a mapping at top level, got {type(cfg).__name__}")
    return cfg


def config_hash(config: Dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config: equal configs -> equal hash (runs are tagged with
    it, so a rerun finds the configurations that already finished)."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The programme's hyper-parameter readers (hw2/answers.py), now thin views of configs/part1.yaml.
def part1_arch_hp() -> Dict[str, Any]:
    fc = load_config("part1")["first_classifier"]
    return {k: fc[k] for k in ("n_layers", "hidden_dims", "activation", "out_activation")}


def part1_optim_hp() -> Dict[str, Any]:
    from training.engine.optim import make_loss

    fc = load_config("part1")["first_classifier"]
    opt = fc["optimizer"]
    return dict(lr=opt["lr"], weight_decay=opt.get("weight_decay", 0.0), momentum=opt.get("momentum", 0.0),
                loss_fn=make_loss(fc.get("loss_fn", "cross_entropy"), out_activation=fc["out_activation"]))


def part2_optim_hp() -> Dict[str, Any]:
    from training.engine.optim import make_loss

    opt = load_config("overfit")["optimizer"]
    return dict(lr=opt["lr"], weight_decay=opt.get("weight_decay", 0.0), momentum=opt.get("momentum", 0.0),
                loss_fn=make_loss("cross_entropy"))
