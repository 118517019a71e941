"""The report's figures, drawn from the query layer's DataFrames (never from training code state).

Every function saves one PNG under `<out>/figures/` and returns its path; `log_figures` attaches
them to a run (the grid's newest parent run) under `report/`. CIFAR: curves of every
configuration overlaid (the programme's display groups), test accuracy vs L and vs K, and an
all-experiment depth overview. Part 1: the MLP grid's decision-boundary mosaic rebuilt from the
logged models on the test split, the threshold effect, FPR vs FNR per split, and the first
classifier's curves, confusion matrices and boundaries.
"""
from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from training.figures import plot_fit  # noqa: E402
from training.results import FitResult  # noqa: E402

SPLITS = ("train", "valid", "test")
# The programme's display cells: exp1_1 and exp1_4 one figure per K, exp1_2 one per L.
CIFAR_GROUP_BY = {"exp1_1": "K", "exp1_2": "L", "exp1_4": "K"}


def figures_dir(out_dir: Path | str) -> Path:
    path = Path(out_dir) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(fig, out_dir: Path | str, name: str, tight: bool = False) -> Path:
    """Write the figure as figures/<name>.png and close it (tight: crop to the artists, which
    costs a second draw; only figures with labels outside the axes area need it)."""
    path = figures_dir(out_dir) / f"{name}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path


def log_figures(run_id: Optional[str], paths: Iterable[Path], artifact_path: str = "report") -> None:
    """Attach the figures to a run (its artifact folder `report/`); no run, nothing logged."""
    from mlflow.tracking import MlflowClient

    if run_id is None:
        return
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "FINISHED"] if len(df) else df


def _yerr(rows: pd.DataFrame, col: str = "test_acc") -> Optional[np.ndarray]:
    """Seed std of a per_config frame as error bars (0 where one seed); None: no column."""
    std = f"{col}_std"
    return rows[std].fillna(0.0).to_numpy(dtype=float) if std in rows.columns else None


def _seed_dots(ax, seeds: Optional[pd.DataFrame], x_of, color, col: str = "test_acc") -> None:
    """The individual seeds behind the means, as small dots (only configurations with several)."""
    if seeds is None or not len(seeds) or "config" not in seeds.columns:
        return
    many = seeds.groupby("config")["run_id"].transform("count") > 1
    rows = seeds[many & seeds[col].notna()]
    if len(rows):
        ax.scatter([x_of(r) for _, r in rows.iterrows()], rows[col], s=10, color=color, alpha=0.5, zorder=3)


# ============================================================================ CIFAR
def cifar_groups(grid: str, runs: pd.DataFrame) -> List[Tuple[str, pd.DataFrame]]:
    """(suffix, rows) per display figure: e.g. exp1_1 -> [("K32", ...), ("K64", ...)]."""
    key = CIFAR_GROUP_BY.get(grid)
    if key is None or not len(runs):
        return [("", runs)]
    return [(f"{key}{value}", runs[runs[key] == value]) for value in dict.fromkeys(runs[key])]


def _fit_of(hist: pd.DataFrame, acc_key: str) -> FitResult:
    return FitResult(len(hist), hist["train_loss"].tolist(), hist["train_acc"].tolist(), hist["valid_loss"].tolist(),
                     hist[acc_key].tolist())


def plot_curves(runs: pd.DataFrame, history: pd.DataFrame, title: str, acc_key: str = "valid_acc",
                log_loss: bool = True):
    """Train/valid loss and accuracy per epoch, one line per configuration (the programme's
    plot_fit overlay, legend L2_K32). Returns the figure."""
    fig = None
    for run in runs.itertuples(index=False):
        hist = history[history["run_id"] == run.run_id]
        if len(hist):
            fig, _ = plot_fit(_fit_of(hist, acc_key), fig=fig, log_loss=log_loss, legend=run.label)
    if fig is None:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no per-epoch metrics logged", ha="center", va="center")
        ax.axis("off")
    else:
        for ax, name in zip(fig.axes, ("train_loss", "train_acc", "valid_loss", "valid_acc")):
            ax.set_title(name)
            for line in ax.lines:  # markers keep short (even one-epoch) curves visible
                line.set_marker("o"), line.set_markersize(3)
    fig.suptitle(title)
    return fig


def cifar_curve_figures(grid: str, runs: pd.DataFrame, history: pd.DataFrame, out_dir: Path | str) -> List[Path]:
    """One curves figure per display group of a CIFAR grid (all its configurations, any status)."""
    paths = []
    for suffix, rows in cifar_groups(grid, runs):
        name = f"{grid}_curves" + (f"_{suffix}" if suffix else "")
        fig = plot_curves(rows, history, f"{grid}{' ' + suffix if suffix else ''}: per-epoch curves "
                                         f"(valid = held-out part of the training set)")
        paths.append(save(fig, out_dir, name))
    return paths


def _k_order(labels: Iterable[str]) -> List[str]:
    return sorted(dict.fromkeys(labels), key=lambda k: (sum(int(x) for x in k.split("-")), k))


def accuracy_vs_depth_width(grid: str, runs: pd.DataFrame, out_dir: Path | str,
                            seeds: Optional[pd.DataFrame] = None) -> Path:
    """Test accuracy (best-validation checkpoint) vs depth L per K, and vs width K per L.

    runs: one row per configuration (spread.per_config: means, error bars = seed std); seeds:
    the runs seed by seed, drawn as dots where a configuration has several."""
    done = _finished(runs)
    fig, (ax_l, ax_k) = plt.subplots(1, 2, figsize=(12, 4.5))
    k_order = _k_order(done["K"]) if len(done) else []
    for i, k in enumerate(k_order):
        rows = done[done["K"] == k].sort_values("L")
        ax_l.errorbar(rows["L"], rows["test_acc"], yerr=_yerr(rows), marker="o", capsize=3, label=f"K={k}",
                      color=f"C{i % 10}")
        _seed_dots(ax_l, None if seeds is None else _finished(seeds)[_finished(seeds)["K"] == k],
                   lambda r: r["L"], f"C{i % 10}")
    for i, L in enumerate(sorted(set(done["L"])) if len(done) else []):
        rows = done[done["L"] == L]
        xs = [k_order.index(k) for k in rows["K"]]
        order = np.argsort(xs)
        err = _yerr(rows)
        ax_k.errorbar(np.array(xs)[order], rows["test_acc"].to_numpy()[order], marker="o", capsize=3,
                      yerr=None if err is None else err[order], label=f"L={L}", color=f"C{i % 10}")
        _seed_dots(ax_k, None if seeds is None else _finished(seeds)[_finished(seeds)["L"] == L],
                   lambda r: k_order.index(r["K"]) if r["K"] in k_order else np.nan, f"C{i % 10}")
    ax_l.set_xscale("log", base=2)
    if len(done):
        ls = sorted(set(int(L) for L in done["L"]))
        ax_l.set_xticks(ls, [str(L) for L in ls])
        ax_l.minorticks_off()
    ax_l.set_xlabel("layers per block L")
    ax_k.set_xticks(range(len(k_order)), k_order)
    ax_k.set_xlabel("filters per layer K")
    for ax in (ax_l, ax_k):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.4)
        if ax.lines:
            ax.legend()
    n = int(done["n_seeds"].max()) if "n_seeds" in done.columns and len(done) else 1
    bars = f"; mean ± std over up to {n} seeds" if n > 1 else "; one seed each, no spread known"
    fig.suptitle(f"{grid}: test accuracy vs depth and width ({len(done)} finished configurations{bars})")
    return save(fig, out_dir, f"{grid}_accuracy_vs_L_K")


def depth_overview(cifar: Dict[str, pd.DataFrame], out_dir: Path | str) -> Path:
    """Every finished CIFAR configuration: test accuracy vs the number of conv layers (L x len K)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for grid, runs in cifar.items():
        done = _finished(runs)
        if len(done):
            ax.errorbar(done["n_convs"].astype(float), done["test_acc"], yerr=_yerr(done), fmt="o", capsize=3,
                        label=f"{grid} ({done['model_type'].iloc[0]})", markersize=6)
            for r in done.itertuples(index=False):
                ax.annotate(r.label, (r.n_convs, r.test_acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ns = sorted({int(n) for runs in cifar.values() for n in _finished(runs)["n_convs"]})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("conv layers (L x len(K))")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.4)
    if ax.lines or ax.collections:
        ax.legend()
    ax.set_title("CIFAR-10: test accuracy vs depth, all experiments (error bars: seed std where several seeds)")
    return save(fig, out_dir, "cifar_depth_overview")


# ============================================================================ Part 1
def _split_tensors(splits, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(splits[name].X), torch.from_numpy(splits[name].y)


def mlp_mosaic(grid_df: pd.DataFrame, splits, out_dir: Path | str, depths: Sequence[int],
               widths: Sequence[int]) -> Path:
    """The programme's grid figure (rows = widths, columns = depths): each cell the decision
    boundary of the logged model at its ROC threshold on the test split; cells without a run
    (or without a logged model) say so."""
    from analysis.loaded import load_binary_classifier
    from models.classifier import plot_decision_boundary_2d

    x, y = _split_tensors(splits, "test")
    fig, axes = plt.subplots(len(widths), len(depths), figsize=(4.2 * len(depths), 3.6 * len(widths)), squeeze=False)
    cells = {(int(r.depth), int(r.width)): r for r in _finished(grid_df).itertuples(index=False)}
    for (i, width), (j, depth) in product(enumerate(widths), enumerate(depths)):
        ax, run = axes[i, j], cells.get((depth, width))
        if run is None:
            ax.text(0.5, 0.5, f"depth={depth}, width={width}\nnot run in this store", ha="center", va="center")
            ax.set_xticks([]), ax.set_yticks([])
            continue
        try:
            clf = load_binary_classifier(run.run_id, run.roc_threshold)
        except Exception as e:  # noqa: BLE001 - a run without a loadable model still gets its cell
            ax.text(0.5, 0.5, f"{run.run_name}: model not loadable\n{type(e).__name__}", ha="center", va="center")
            continue
        plot_decision_boundary_2d(clf, x, y, ax=ax)
        ax.set_title(f"depth={depth}, width={width}\nthresh={run.roc_threshold:.2f}, valid_acc={run.valid_acc:.1f}%, "
                     f"test_acc={run.test_acc:.1f}%", fontsize=9)
    fig.suptitle("MLP grid: decision boundaries on the test split (reloaded models, ROC thresholds)")
    fig.tight_layout()
    return save(fig, out_dir, "mlp_grid_boundaries")


def threshold_effect(grid_df: pd.DataFrame, first: Optional[pd.Series], out_dir: Path | str) -> Path:
    """Test accuracy at 0.5 vs at the validation-chosen ROC threshold, per model."""
    rows = [(r.label, r.test_acc_thr05, r.test_acc_thrroc, r.roc_threshold) for r in _finished(grid_df).itertuples()]
    if first is not None:
        rows.insert(0, ("first_classifier", first["test_acc_thr05"], first["test_acc_thrroc"], first["roc_threshold"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.5))
    xs = np.arange(len(rows))
    done = _finished(grid_df)
    errs = [[_std_of(first, c)] if first is not None else [] for c in ("test_acc_thr05", "test_acc_thrroc")]
    errs = [e + ([] if not len(done) else list(done.get(f"{c}_std", pd.Series(np.nan, index=done.index))))
            for e, c in zip(errs, ("test_acc_thr05", "test_acc_thrroc"))]
    errs = [np.nan_to_num(np.array(e, dtype=float)) for e in errs]
    ax.bar(xs - 0.2, [r[1] for r in rows], 0.4, yerr=errs[0], capsize=3, label="threshold 0.5")
    ax.bar(xs + 0.2, [r[2] for r in rows], 0.4, yerr=errs[1], capsize=3, label="ROC threshold (chosen on valid)")
    for x, r in zip(xs, rows):
        ax.annotate(f"t={r[3]:.2f}", (x + 0.2, r[2]), ha="center", fontsize=8, xytext=(0, 3),
                    textcoords="offset points")
    accs = [v for r in rows for v in r[1:3]]
    if accs:
        ax.set_ylim(max(0, min(accs) - 5), min(100, max(accs) + 6))
    ax.set_xticks(xs, [r[0] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(loc="upper left", ncol=2)
    ax.set_title("Effect of threshold selection on the test split")
    return save(fig, out_dir, "part1_threshold_effect", tight=True)


def _std_of(row: pd.Series, col: str) -> float:
    v = row.get(f"{col}_std") if hasattr(row, "get") else None
    return float(v) if v is not None and not pd.isna(v) else np.nan


def fpr_fnr(grid_df: pd.DataFrame, first: Optional[pd.Series], out_dir: Path | str) -> Path:
    """FPR vs FNR on each split, at 0.5 (filled) and at the ROC threshold (hollow)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharex=True, sharey=True)
    models = [(r.label, r._asdict()) for r in _finished(grid_df).itertuples(index=False)]
    if first is not None:
        models.insert(0, ("first_classifier", first.to_dict()))
    for ax, split in zip(axes, SPLITS):
        for k, (label, m) in enumerate(models):
            color, marker = f"C{k % 10}", "*" if label == "first_classifier" else "o"
            ax.scatter(m[f"{split}_fpr_thr05"], m[f"{split}_fnr_thr05"], color=color, marker=marker, s=60, label=label)
            ax.scatter(m[f"{split}_fpr_thrroc"], m[f"{split}_fnr_thrroc"], facecolors="none", edgecolors=color,
                       marker=marker, s=60)
        ax.plot([0, 1], [0, 1], "k--", alpha=0.3)
        ax.set_title(split)
        ax.set_xlabel("FPR")
        ax.grid(True, alpha=0.4)
    axes[0].set_ylabel("FNR")
    fig.suptitle("FPR vs FNR per split: filled = threshold 0.5, hollow = ROC threshold chosen on valid")
    lim = max([0.05] + [m[f"{s}_{e}_{t}"] for _, m in models for s in SPLITS for e in ("fpr", "fnr")
                        for t in ("thr05", "thrroc")])
    axes[0].set_xlim(0, lim * 1.1), axes[0].set_ylim(0, lim * 1.1)
    if models:
        axes[-1].legend(fontsize=7, loc="upper right")
    return save(fig, out_dir, "part1_fpr_fnr")


def first_classifier_figures(first: pd.Series, history: pd.DataFrame, splits, out_dir: Path | str) -> List[Path]:
    """The first classifier: train/valid curves, confusion matrices (0.5 and ROC threshold, all
    splits, rebuilt from the logged model) and its decision boundary on validation."""
    from analysis.loaded import load_binary_classifier
    from models.classifier import plot_decision_boundary_2d
    from training.part1.evaluation import binary_report, plot_confusion

    paths = []
    fig, _ = plot_fit(_fit_of(history, "valid_acc_epoch"), train_test_overlay=True)
    for line in (ln for ax in fig.axes for ln in ax.lines if ln.get_label() == "test"):
        line.set_label("valid")
    for ax in fig.axes:
        ax.legend()
    fig.suptitle("first classifier: train vs valid (per-epoch mean loss, accuracy %)")
    paths.append(save(fig, out_dir, "first_classifier_fit"))

    clf = load_binary_classifier(first["run_id"])
    thresholds = (("0.5", 0.5), ("ROC", float(first["roc_threshold"])))
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for (i, (name, thr)), (j, split) in product(enumerate(thresholds), enumerate(SPLITS)):
        clf.threshold = thr
        plot_confusion(binary_report(clf, *_split_tensors(splits, split)), f"{split}, threshold {name} ({thr:.2f})",
                       ax=axes[i, j])
    fig.suptitle("first classifier: confusion matrices (fractions of all samples)")
    fig.tight_layout()
    paths.append(save(fig, out_dir, "first_classifier_confusion"))

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, (name, thr) in zip(axes, thresholds):
        clf.threshold = thr
        plot_decision_boundary_2d(clf, *_split_tensors(splits, "valid"), ax=ax)
        ax.set_title(f"first classifier on valid, threshold {name} ({thr:.2f})")
    paths.append(save(fig, out_dir, "first_classifier_boundary"))
    return paths
