"""Shared pieces of the answers: recipe keys, small DataFrame helpers, the CIFAR results table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis.data import CHANCE_ACC, NOT_TRAINABLE_MARGIN, ReportData, not_trainable
from analysis.text import count, figure, num, pct, recipe, table

RECIPE_KEYS = ("model_type", "optimizer", "lr", "reg", "momentum", "nesterov", "lr_schedule", "warmup_frac",
               "label_smoothing", "bs_train", "epochs", "early_stopping", "batches", "n_train", "n_valid",
               "hidden_dims", "augment", "crop_padding", "model_kwargs.batchnorm", "model_kwargs.dropout",
               "model_kwargs.width_mult", "model_kwargs.tta", "model_kwargs.stem", "model_kwargs.learn_bn_scale",
               "model_kwargs.dirac_init", "model_kwargs.logit_scale", "model_kwargs.bn_momentum", "bias_lr_scale",
               "norm_weight_decay",
               "lr_start_frac", "lr_end_frac", "lookahead_every", "lookahead_decay", "seed")
MLP_RECIPE_KEYS = ("activation", "loss_fn", "optimizer.name", "optimizer.lr", "optimizer.weight_decay",
                   "optimizer.momentum", "lr_schedule", "input_noise_std", "batch_size", "epochs", "seed")


def figs(data: ReportData, key: str, out_dir: Path, caption: str) -> str:
    paths = data.figures.get(key, [])
    return "\n\n".join(figure(p, out_dir, f"{caption} ({Path(p).stem})") for p in paths)


def n_params_mlp(depth: int, width: int, activation: str = "relu") -> int:
    from models.counting import count_parameters
    from training.experiments import build_binary_mlp

    return count_parameters(build_binary_mlp(int(depth), int(width), activation))


def acc_pairs(df: pd.DataFrame, x: str, y: str = "test_acc") -> List[Tuple[Any, float]]:
    rows = df.dropna(subset=[y]).sort_values(x)
    return list(zip(rows[x].tolist(), rows[y].tolist()))


def best_row(df: pd.DataFrame, col: str = "test_acc") -> Optional[pd.Series]:
    df = df.dropna(subset=[col]) if col in df.columns else df.iloc[0:0]
    return df.loc[df[col].idxmax()] if len(df) else None


def recipe_line(df: pd.DataFrame, keys: Sequence[str] = RECIPE_KEYS) -> str:
    shared = recipe(df, keys)
    if shared.get("optimizer", "sgd") != "sgd":  # SGD-only settings are noise for Adam & co.
        shared = {k: v for k, v in shared.items() if k not in ("momentum", "nesterov")}
    if shared.get("lr_schedule") == "none":
        shared.pop("warmup_frac", None)
    return ", ".join(f"`{k}={v}`" for k, v in shared.items()) or "(no shared settings)"


def cifar_table(data: ReportData, grid: str) -> str:
    df = data.grids[grid].copy()
    df["epochs_run"] = df["run_id"].map(data.epochs_run(grid))
    for col in ("best_epoch", "best_valid_acc", "test_acc", "fit_wall_time_s", "n_params", "pool_every"):
        if col not in df.columns:
            df[col] = np.nan
    return table(df, [("run_name", "run", str), ("n_params", "params", count_or_na),
                      ("pool_every", "P", int_or_na), ("epochs_run", "epochs run", int_or_na),
                      ("best_epoch", "best epoch", int_or_na), ("best_valid_acc", "best valid acc", pct),
                      ("test_acc", "test acc", pct), ("fit_wall_time_s", "fit time (s)", lambda v: num(v, 0)),
                      ("status", "status", str)])


def count_or_na(v: Any) -> str:
    return "n/a" if v is None or pd.isna(v) else count(v)


def int_or_na(v: Any) -> str:
    return "n/a" if v is None or pd.isna(v) else str(int(v))


COMPARABLE_KEYS = ("optimizer", "lr", "reg", "bs_train", "epochs", "early_stopping", "batches", "n_train", "n_valid",
                   "hidden_dims", "augment", "seed")


def recipe_differences(merged: pd.DataFrame, a: str, b: str) -> List[str]:
    """Training settings (COMPARABLE_KEYS) that differ between the paired columns key_a / key_b."""
    out = []
    for key in COMPARABLE_KEYS:
        ca, cb = f"{key}{a}", f"{key}{b}"
        if ca in merged.columns and cb in merged.columns and \
                any(repr(x) != repr(y) for x, y in zip(merged[ca], merged[cb])):
            out.append(key)
    return out


def recipe_caveat(diff: List[str]) -> str:
    return (f" Caveat: the paired runs were trained with different settings ({', '.join(diff)}), so part of these "
            f"differences comes from the recipe, not the architecture." if diff else "")


def untrainable_text(df: pd.DataFrame) -> Tuple[List[str], str]:
    bad = not_trainable(df)
    names = bad["label"].tolist()
    criterion = (f"(criterion: the run diverged, or its best validation accuracy stayed within "
                 f"{NOT_TRAINABLE_MARGIN:.0f} points of chance, {pct(CHANCE_ACC)})")
    return names, criterion
