"""Part 1 as MLflow runs: the first classifier and the depth x width grid.

Each trained model is one run that logs its recipe (params), per-epoch curves (one batched call
per epoch; validation is the fit's "test" loader, logged as valid_*), the ROC threshold chosen
on validation, accuracy/FPR/FNR at 0.5 and at that threshold, figures, checkpoint and model.
"""
from __future__ import annotations

import os
import tempfile
import time
from itertools import product
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import torch  # noqa: E402

from models.classifier import plot_decision_boundary_2d, plot_roc, positive_scores, roc_optimal_point  # noqa: E402
from training.tracking import describe  # noqa: E402
from training.tracking import runs as tracking  # noqa: E402
from training.tracking import timing  # noqa: E402
from training.tracking.parents import log_configuration_table, summarise_parent  # noqa: E402
from training.part1.evaluation import binary_report, plot_confusion  # noqa: E402
from training.experiments import BinaryOutcome, build_binary_mlp, train_binary_mlp  # noqa: E402
from training.figures import plot_fit  # noqa: E402
from training.engine.optim import check_optimizer_spec, make_loss  # noqa: E402
from training.data.provenance import synthetic_record  # noqa: E402
from training.data.synthetic import POPULATIONS, make_loaders, make_synthetic_splits  # noqa: E402

GRID_NAME = "mlp_grid"
SPLITS = ("train", "valid", "test")


def grid_run_name(depth: int, width: int) -> str:
    return f"mlp_d{depth}_w{width}"


KNOWN_KEYS = {
    "": {"seed", "batch_size", "first_classifier", "mlp_grid"},
    "first_classifier": {"n_layers", "hidden_dims", "activation", "out_activation", "threshold", "loss_fn",
                         "optimizer", "epochs", "lr_schedule", "input_noise_std"},
    "mlp_grid": {"depths", "widths", "epochs", "activation", "out_activation", "loss_fn", "optimizer", "lr_schedule",
                 "input_noise_std"},
}


def check_part1_keys(cfg: Mapping[str, Any]) -> None:
    """A misspelt key would be silently ignored (its default used instead): refuse it."""
    for section, known in KNOWN_KEYS.items():
        keys = set(cfg if not section else cfg.get(section) or {})
        unknown = sorted(keys - known)
        if unknown:
            where = f"section {section!r}" if section else "the top level"
            raise ValueError(f"unknown key(s) {unknown} at {where}; valid: {sorted(known)}")
    if not isinstance(cfg.get("batch_size"), int) or isinstance(cfg["batch_size"], bool) or cfg["batch_size"] < 1:
        raise ValueError(f"batch_size must be a positive integer, got {cfg.get('batch_size')!r}")


def check_part1_config(cfg: Mapping[str, Any]) -> None:
    """Every recipe value checked up front, so a typo fails before minutes of training."""
    check_part1_keys(cfg)
    fc, grid = cfg["first_classifier"], cfg["mlp_grid"]
    build_binary_mlp(fc["n_layers"], fc["hidden_dims"], fc["activation"], fc["out_activation"], fc.get("threshold", 0.5))
    for name, section in (("first_classifier", fc), ("mlp_grid", grid)):
        check_optimizer_spec(section["optimizer"])
        make_loss(section.get("loss_fn", "cross_entropy"), out_activation=section.get("out_activation", "none"))
        if not isinstance(section["epochs"], int) or section["epochs"] < 1:
            raise ValueError(f"{name}.epochs must be a positive integer, got {section['epochs']!r}")
    for d, w in product(grid["depths"], grid["widths"]):
        build_binary_mlp(d, w, grid.get("activation", "relu"))


def _loaders(cfg: Mapping[str, Any], seed: Optional[int] = None):
    """(record, loaders by split): the programme's data (always drawn with the config's seed, so
    every seed trains and is judged on the same points) and loaders shuffling with `seed`."""
    splits = make_synthetic_splits(cfg["seed"])
    record = synthetic_record(splits, "training.data.synthetic.make_synthetic_splits",
                              {"seed": cfg["seed"], "populations": POPULATIONS})
    dls = make_loaders(splits, batch_size=cfg["batch_size"], seed=cfg["seed"] if seed is None else seed)
    return record, dict(zip(SPLITS, dls))


def _seeds(cfg: Mapping[str, Any], seeds: Optional[Sequence[int]]) -> List[Tuple[int, bool]]:
    """(seed, first) pairs: the given seeds, else the config's one."""
    return [(s, i == 0) for i, s in enumerate(seeds or [cfg["seed"]])]


def _run_tags(grid: str, config: str, record, smoke: bool, **more: str) -> Dict[str, str]:
    """The contract's tags of one Part 1 run (training.tracking.runs): grid, configuration, data, smoke."""
    return {tracking.GRID_TAG: grid, tracking.CONFIG_TAG: config, **record.tags(),
            tracking.SMOKE_TAG: "true" if smoke else "false", **more}


def _tensors(dl):
    return dl.dataset.tensors


def _evaluate_and_log(out: BinaryOutcome, loaders: Dict[str, Any], boundary_split: str, title: str) -> Dict[str, float]:
    """Metrics at 0.5 and at the ROC threshold on every split, plus the figures."""
    model, metrics, reports = out.model, {"roc_threshold": out.thresh, "valid_acc": out.valid_acc,
                                          "test_acc": out.test_acc}, {}
    for thr_name, thr in (("thr05", 0.5), ("thrroc", out.thresh)):
        model.threshold = thr
        for split in SPLITS:
            rep = binary_report(model, *_tensors(loaders[split]))
            reports[(split, thr_name)] = rep
            metrics.update({f"{split}_{k}_{thr_name}": rep[k] for k in ("acc", "fpr", "fnr")})
    model.threshold = out.thresh

    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for (i, thr_name), (j, split) in product(enumerate(("thr05", "thrroc")), enumerate(SPLITS)):
        thr = 0.5 if thr_name == "thr05" else out.thresh
        plot_confusion(reports[(split, thr_name)], f"{split}, threshold {thr:.2f}", ax=axes[i, j])
    fig.tight_layout()
    tracking.log_figure(fig, "figures/confusion_matrices.png")

    x_val, y_val = _tensors(loaders["valid"])
    fpr, tpr, thr_arr, idx = roc_optimal_point(y_val.numpy(), positive_scores(model, x_val))
    describe.log_roc_table(fpr, tpr, thr_arr, idx)
    fig, _ = plot_roc(fpr, tpr, idx, out.thresh)
    fig.suptitle(f"{title}: ROC on validation")
    tracking.log_figure(fig, "figures/roc_valid.png")

    fig, _ = plot_fit(out.fit, train_test_overlay=True)
    fig.suptitle(f"{title}: train vs valid (per-epoch mean loss)")
    tracking.log_figure(fig, "figures/fit.png")

    for thr_name, thr in (("thr05", 0.5), ("thrroc", out.thresh)):
        model.threshold = thr
        fig, ax = plot_decision_boundary_2d(model, *_tensors(loaders[boundary_split]))
        ax.set_title(f"{title}: {boundary_split}, threshold {thr:.2f}")
        tracking.log_figure(fig, f"figures/boundary_{boundary_split}_{thr_name}.png")
    model.threshold = out.thresh
    return metrics


def _train_logged_binary(run_name: str, model, hp: Mapping[str, Any], params: Mapping[str, Any], loaders,
                         n_epochs: int, boundary_split: str, tags: Mapping[str, str], device: Optional[str], record):
    """One MLflow run: params, description, data inputs, per-epoch metrics, evaluation, figures and
    tables, the model (the best weights, stored once)."""
    mlflow_since = timing.spent()
    with tracking.open_run(run_name, tags=tags) as run:
        tracking.log_params(params)
        describe.describe(describe.mlp_description(params))
        record.log()
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "best_model.pt")
            logger = tracking.EpochLogger(prefix_map={"test_loss": "valid_loss", "test_acc": "valid_acc_epoch",
                                                      "best_test_acc": "best_valid_acc"})
            out = train_binary_mlp(model, hp, loaders["train"], loaders["valid"], loaders["test"], n_epochs,
                                   device=device, checkpoints=ckpt, on_epoch_end=logger)
        metrics = _evaluate_and_log(out, loaders, boundary_split, run_name)
        model_id = tracking.log_torch_model(out.model, _tensors(loaders["valid"])[0][:5].numpy(), name=run_name)
        tracking.log_metrics(metrics, step=out.fit.num_epochs, model_id=model_id)
        describe.log_summary_table({"run": run_name, **{k: v for k, v in params.items() if k != "optimizer"},
                                    **metrics})
        tracking.log_metrics({timing.METRIC: timing.spent() - mlflow_since}, step=out.fit.num_epochs)
    if tags.get(tracking.ROLE_TAG) == "child":
        summarise_parent(run.info.run_id)
    return out, metrics, run.info.run_id


def _data_params(cfg, loaders, seed: Optional[int] = None) -> Dict[str, Any]:
    """seed: the training seed (init, shuffling); data_seed: the one the points were drawn with."""
    return dict(seed=cfg["seed"] if seed is None else seed, data_seed=cfg["seed"], batch_size=cfg["batch_size"],
                **{f"n_{s}": len(loaders[s].dataset) for s in SPLITS})


def run_first_classifier(cfg: Mapping[str, Any], device: Optional[str] = None, epochs: Optional[int] = None,
                         seeds: Optional[Sequence[int]] = None):
    """The programme's first classifier (20 epochs of SGD), logged as run `first_classifier`; each
    further seed as `first_classifier_s<seed>`. Returns the first seed's (outcome, metrics)."""
    fc = dict(cfg["first_classifier"])
    n_epochs = epochs or fc["epochs"]
    firsts = []
    for seed, first in _seeds(cfg, seeds):
        record, loaders = _loaders(cfg, seed)
        torch.manual_seed(seed)
        model = build_binary_mlp(fc["n_layers"], fc["hidden_dims"], fc["activation"], fc["out_activation"],
                                 fc.get("threshold", 0.5))
        params = {**_data_params(cfg, loaders, seed), **{k: v for k, v in fc.items() if k != "epochs"},
                  "epochs": n_epochs}
        name = tracking.seed_run_name("first_classifier", seed, first)
        tags = _run_tags("first_classifier", "first_classifier", record, n_epochs < fc["epochs"])
        out, metrics, _ = _train_logged_binary(name, model, fc, params, loaders, n_epochs, "valid", tags, device,
                                               record)
        print(f"{name}: train_acc={out.fit.train_acc[-1]:.1f}% valid_acc={out.valid_acc:.1f}% "
              f"ROC threshold={out.thresh:.3f} -> valid_acc={metrics['valid_acc_thrroc']:.1f}% "
              f"test_acc={out.test_acc:.1f}%")
        firsts = firsts or [(out, metrics)]
    return firsts[0]


def run_mlp_grid(cfg: Mapping[str, Any], device: Optional[str] = None, epochs: Optional[int] = None,
                 seeds: Optional[Sequence[int]] = None):
    """The depth x width grid: a parent run with one child per (cell, seed) and the boundary mosaic
    (the summary metrics and the mosaic are the first seed's)."""
    grid = dict(cfg["mlp_grid"])
    n_epochs = epochs or grid["epochs"]
    depths, widths = grid["depths"], grid["widths"]
    _, loaders = _loaders(cfg)  # the parent logs the data params; its cells log the data
    pairs = _seeds(cfg, seeds)
    tags = {tracking.GRID_TAG: GRID_NAME, tracking.ROLE_TAG: "parent", "archlab.seeds": ",".join(str(s) for s, _ in pairs)}
    with tracking.open_run(GRID_NAME, tags=tags):
        recipe = {k: v for k, v in grid.items() if k not in ("depths", "widths", "epochs")}
        tracking.log_params({**_data_params(cfg, loaders), **recipe, "epochs": n_epochs, "depths": depths,
                             "widths": widths})
        describe.describe(describe.grid_description(GRID_NAME, len(depths) * len(widths) * len(pairs),
                                                    f"MLP depth {depths} x width {widths}, {n_epochs} epochs"))
        t0 = time.perf_counter()
        results = {}
        for seed, first in pairs:
            cells = _grid_cells(cfg, grid, recipe, n_epochs, seed, first, device)
            results = results or cells
        test_accs = torch.tensor([r[0].test_acc for r in results.values()])
        summary = {"grid_min_test_acc": float(test_accs.min()),
                   "grid_q75_test_acc": float(torch.quantile(test_accs, 0.75)),
                   "grid_mean_test_acc": float(test_accs.mean()),
                   "grid_wall_time_s": time.perf_counter() - t0}
        tracking.log_metrics(summary, step=n_epochs)
        log_configuration_table(mlflow.active_run().info.run_id, ["depth", "width", "seed", "n_params"],
                                ["roc_threshold", "valid_acc", "test_acc", "test_fpr_thrroc", "test_fnr_thrroc"])
        tracking.log_figure(boundary_mosaic(results, depths, widths, loaders["test"]), "figures/boundary_mosaic.png")
    print(f"mlp_grid: min test_acc={summary['grid_min_test_acc']:.1f}% "
          f"75th percentile={summary['grid_q75_test_acc']:.1f}%")
    return results, summary


def _grid_cells(cfg, grid, recipe, n_epochs: int, seed: int, first: bool, device: Optional[str]):
    """Every cell of the grid at one seed, as children of the active parent: {(depth, width): (outcome, metrics)}."""
    record, loaders = _loaders(cfg, seed)
    torch.manual_seed(seed)  # once before the loop, as the programme does
    results = {}
    for (i, width), (j, depth) in product(enumerate(grid["widths"]), enumerate(grid["depths"])):
        config = grid_run_name(depth, width)
        name = tracking.seed_run_name(config, seed, first)
        model = build_binary_mlp(depth, width, grid.get("activation", "relu"), grid.get("out_activation", "none"))
        params = {**_data_params(cfg, loaders, seed), **recipe, "epochs": n_epochs, "depth": depth, "width": width,
                  "n_params": sum(p.numel() for p in model.parameters())}
        tags = _run_tags(GRID_NAME, config, record, n_epochs < grid["epochs"], **{
            tracking.ROLE_TAG: "child", tracking.HASH_TAG: tracking.config_hash(params)})
        out, metrics, _ = _train_logged_binary(name, model, grid, params, loaders, n_epochs, "test", tags, device,
                                               record)
        results[(depth, width)] = (out, metrics)
        print(f"{name}: thresh={out.thresh:.2f} valid_acc={out.valid_acc:.1f}% test_acc={out.test_acc:.1f}%")
    return results


def run_part1(cfg: Mapping[str, Any], device: Optional[str] = None, epochs: Optional[int] = None,
              seeds: Optional[Sequence[int]] = None):
    """The whole Part 1 under one run `part1`: the first classifier, then the grid, each per seed."""
    with tracking.open_run("part1", tags={tracking.GRID_TAG: "part1", tracking.ROLE_TAG: "parent"}):
        first = run_first_classifier(cfg, device=device, seeds=seeds)
        grid = run_mlp_grid(cfg, device=device, epochs=epochs, seeds=seeds)
    return first, grid


def boundary_mosaic(results, depths, widths, dl_test):
    """Rows = widths, columns = depths; each cell annotated with thresh, valid and test accuracy."""
    fig, axes = plt.subplots(len(widths), len(depths), figsize=(5 * len(depths), 4 * len(widths)), squeeze=False)
    x, y = _tensors(dl_test)
    for (i, width), (j, depth) in product(enumerate(widths), enumerate(depths)):
        out, _ = results[(depth, width)]
        ax = axes[i, j]
        plot_decision_boundary_2d(out.model, x, y, ax=ax)
        ax.set_title(f"depth={depth}, width={width}\nthresh={out.thresh:.2f}, valid_acc={out.valid_acc:.1f}%, "
                     f"test_acc={out.test_acc:.1f}%", fontsize=10)
    fig.tight_layout()
    return fig
