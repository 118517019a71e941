"""Shared pieces of the answers: recipe keys, small DataFrame helpers, the CIFAR results table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis.data import CHANCE_ACC, NOT_TRAINABLE_MARGIN, ReportData, not_trainable
from analysis.spread import NO_SPREAD, Stat, compare, verdict
from analysis.text import count, figure, num, pct, points, recipe, table

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


def stat_pairs(df: pd.DataFrame, x: str, y: str = "test_acc") -> List[Tuple[Any, Stat]]:
    """(x, Stat of y) per configuration row, sorted by x: acc_pairs with the seeds' spread."""
    rows = df.dropna(subset=[y]).sort_values(x)
    return [(v, Stat.of(r, y)) for v, (_, r) in zip(rows[x].tolist(), rows.iterrows())]


def _top_two(df: pd.DataFrame, col: str) -> Optional[Tuple[pd.Series, pd.Series]]:
    ranked = df.dropna(subset=[col]).sort_values(col, ascending=False)
    return (ranked.iloc[0], ranked.iloc[1]) if len(ranked) >= 2 else None


def lead_verdict(df: pd.DataFrame, col: str = "test_acc") -> str:
    """spread.verdict of the best configuration against the runner-up ('unknown' with fewer than two)."""
    top = _top_two(df, col)
    return verdict(Stat.of(top[0], col), Stat.of(top[1], col)) if top else "unknown"


def lead_sentence(df: pd.DataFrame, col: str = "test_acc") -> str:
    """Whether the best configuration's lead over the runner-up is a finding, as one sentence and a
    trailing space to go before the next one ("" with a single configuration)."""
    top = _top_two(df, col)
    if top is None:
        return ""
    best, second = top
    a, b = Stat.of(best, col), Stat.of(second, col)
    v = verdict(a, b)
    if v == "unknown":
        return (f"Its lead over the runner-up {second['label']} ({b.short()}) is {points(a.mean - b.mean)}; with a "
                f"single seed no spread is known, so this ranking is one measurement, not an established trend. ")
    if v == "noise":
        return (f"Its lead over the runner-up {second['label']} ({b.short()}) is {compare(a, b)}. These runs do not "
                f"establish which of the two is better. ")
    return f"Its lead over the runner-up {second['label']} ({b.short()}) is {compare(a, b)}. "


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
    """One row per configuration: accuracies are means over its finished seeds, with the test
    accuracy's std and the number of seeds; epochs are the first seed's."""
    df = data.configs(grid)
    if not len(df):
        return table(df, [])
    df["epochs_run"] = df["run_id"].map(data.epochs_run(grid))
    for col in ("best_epoch", "best_valid_acc", "test_acc", "test_acc_std", "fit_wall_time_s", "n_params",
                "pool_every"):
        if col not in df.columns:
            df[col] = np.nan
    df["status_text"] = [s + (f" (+{u} unfinished)" if u else "") for s, u in zip(df["status"], df["n_unfinished"])]
    return table(df, [("run_name", "run", str), ("n_params", "params", count_or_na),
                      ("pool_every", "P", int_or_na), ("epochs_run", "epochs run", int_or_na),
                      ("best_epoch", "best epoch", int_or_na), ("best_valid_acc", "best valid acc", pct),
                      ("test_acc", "test acc", pct), ("test_acc_std", "± std", spread_cell),
                      ("n_seeds", "seeds", str), ("fit_wall_time_s", "fit time (s)", lambda v: num(v, 0)),
                      ("status_text", "status", str)])


def spread_cell(v: Any) -> str:
    """A table's ± column: the seed std, or n/a with a single seed (no spread known)."""
    return "n/a" if v is None or pd.isna(v) else f"± {float(v):.1f}"


def count_or_na(v: Any) -> str:
    return "n/a" if v is None or pd.isna(v) else count(v)


def int_or_na(v: Any) -> str:
    return "n/a" if v is None or pd.isna(v) else str(int(v))


COMPARABLE_KEYS = ("optimizer", "lr", "reg", "bs_train", "epochs", "early_stopping", "batches", "n_train", "n_valid",
                   "hidden_dims", "augment", "seed", "data_digest")  # data_digest: the two ran on other data


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
    names = list(dict.fromkeys(bad["label"]))  # a configuration's seeds share its label
    criterion = (f"(criterion: the run diverged, or its best validation accuracy stayed within "
                 f"{NOT_TRAINABLE_MARGIN:.0f} points of chance, {pct(CHANCE_ACC)})")
    return names, criterion
