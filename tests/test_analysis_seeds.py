"""Issue #16, the analysis half: seeds and spread, data copies, smoke-size runs, on real MLflow stores.

Runs are created directly through the MLflow client with the contract of training.tracking.runs
(param `seed`, first seed under the programme's name and `<name>_s<seed>` after it, tags
`archlab.config`, `archlab.data_*`, `archlab.smoke`): a real sqlite store, no training, no mocks.
Runs "logged before the change" are the same runs without those tags.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Optional, Sequence

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import query
from analysis.report import build_report
from analysis.spread import Stat, compare, per_config, spread_trend, verdict
from training.tracking import runs as tracking

DIGEST_OLD = "a1" * 32
DIGEST_NEW = "b2" * 32


def _programme_params(grid: str) -> Dict[str, Dict]:
    """label (L2_K32) -> the grid's cnn_experiment params for that configuration."""
    from training.experiments import experiment_name_of
    from training.grids.expand import expand_grid, load_grid_config

    out = {}
    for kw in expand_grid(load_grid_config(grid)):
        name = experiment_name_of(kw)
        out[name[len(grid) + 1:]] = {"name": name, **{k: v for k, v in kw.items() if k != "options"}}
    return out


def log_grid(grid: str, accs: Dict[str, Sequence[float]], digest: Optional[str] = DIGEST_NEW,
             kind: str = "lossless", source: str = "/data/cifar10-lossless", smoke: Optional[bool] = False,
             extra: Optional[Dict] = None, first_seed: int = 42) -> str:
    """One parent run of `grid` and a child per (configuration, seed): accs maps a label to the
    test accuracy of each seed. digest None: a run logged before the contract (no archlab.config,
    data or smoke tags). Returns the parent's run id."""
    client = MlflowClient()
    exp = client.get_experiment_by_name("archlab")
    exp_id = exp.experiment_id if exp else client.create_experiment("archlab")
    parent = client.create_run(exp_id, run_name=grid, tags={tracking.GRID_TAG: grid, tracking.ROLE_TAG: "parent"})
    params = _programme_params(grid)
    for label, values in accs.items():
        kw = params[label]
        for i, acc in enumerate(values):
            seed = first_seed + i
            name = tracking.seed_run_name(kw["name"], seed, first=i == 0)
            tags = {tracking.GRID_TAG: grid, tracking.ROLE_TAG: "child", tracking.HASH_TAG: f"{name}-{digest}",
                    "mlflow.parentRunId": parent.info.run_id}
            if digest is not None:
                tags.update({tracking.CONFIG_TAG: kw["name"], tracking.DATA_DIGEST_TAG: digest,
                             tracking.DATA_KIND_TAG: kind, tracking.DATA_SOURCE_TAG: source,
                             tracking.SMOKE_TAG: "true" if smoke else "false"})
            run = client.create_run(exp_id, run_name=name, tags=tags)
            p = {**{k: v for k, v in kw.items() if k != "name"}, "seed": seed,
                 "n_params": 1000 * kw["layers_per_block"] * sum(kw["filters_per_layer"]), **(extra or {})}
            flat = tracking.flatten_params(p)
            m = dict(test_acc=acc, best_valid_acc=acc - 1.0, best_epoch=3.0, fit_wall_time_s=100.0)
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()],
                             metrics=[Metric(k, float(v), 0, 3) for k, v in m.items()])
            client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n### ", start + 1)
    return md[start:end if end > 0 else len(md)]


# ================================================================================ the rules
def test_a_number_is_quoted_with_its_spread_or_says_none_is_known():
    assert Stat(71.26, 0.44, 3).quote() == "71.3% ± 0.4 (n=3)"
    assert Stat(71.26).quote() == "71.3% (n=1, no spread known)"
    assert Stat.of(pd.Series(dict(test_acc=80.0, test_acc_std=0.5, test_acc_n=2))).quote() == "80.0% ± 0.5 (n=2)"
    assert Stat.of(pd.Series(dict(test_acc=80.0))).n == 1  # a plain run row: one seed


def test_a_difference_is_a_finding_only_beyond_the_two_stds():
    a, b = Stat(80.0, 0.5, 3), Stat(81.2, 0.6, 3)
    assert verdict(b, a) == "higher" and verdict(a, b) == "lower"  # 1.2 > 0.5 + 0.6
    assert verdict(Stat(81.0, 0.5, 3), a) == "noise"               # 1.0 <= 1.1
    assert verdict(Stat(90.0), a) == "unknown"                      # a single seed: no claim
    assert "within seed noise" in compare(Stat(81.0, 0.5, 3), a)
    assert "beyond the seed spread" in compare(b, a)
    assert "no spread known" in compare(Stat(90.0), a)
    assert spread_trend([(2, Stat(80, 0.4, 3)), (4, Stat(80.5, 0.4, 3))], "L").startswith(
        "is within seed noise along L (L=2: 80.0% ± 0.4, L=4: 80.5% ± 0.4 (n=3 each))")
    assert spread_trend([(2, Stat(80, 0.4, 3)), (4, Stat(85, 0.4, 3))], "L").startswith("rises with L")
    assert spread_trend([(2, Stat(80)), (4, Stat(85))], "L").endswith("(one seed each: no spread known)")


def test_seeds_of_a_configuration_become_one_row(mlflow_store):
    log_grid("exp1_1", {"L2_K32": [70.0, 71.0, 72.0], "L4_K32": [75.0]})
    runs = query.grid_runs("exp1_1")
    assert sorted(runs["run_name"]) == ["exp1_1_L2_K32", "exp1_1_L2_K32_s43", "exp1_1_L2_K32_s44",
                                        "exp1_1_L4_K32"]
    assert set(runs["config"]) == {"exp1_1_L2_K32", "exp1_1_L4_K32"}
    rows = per_config(runs).set_index("run_name")
    l2 = rows.loc["exp1_1_L2_K32"]
    assert l2["test_acc"] == pytest.approx(71.0) and l2["test_acc_std"] == pytest.approx(1.0)
    assert l2["test_acc_n"] == 3 and l2["n_seeds"] == 3 and l2["seed"] == 42  # ids/params: the first seed
    assert l2["run_id"] == runs.set_index("run_name").loc["exp1_1_L2_K32", "run_id"]
    assert rows.loc["exp1_1_L4_K32", "n_seeds"] == 1 and math.isnan(rows.loc["exp1_1_L4_K32", "test_acc_std"])
    status = query.experiment_status(grids=["exp1_1"]).iloc[0]
    assert status["finished"] == 2 and status["not_run"] == 6 and status["extra_names"] == []


def test_legacy_seed_runs_fall_back_to_their_name_without_the_seed_suffix():
    assert query.config_of("exp1_1_L2_K32_s43", None, "43") == "exp1_1_L2_K32"
    assert query.config_of("exp1_1_L2_K32_s43", None, "42") == "exp1_1_L2_K32_s43"  # suffix is not its seed
    assert query.config_of("exp1_1_L2_K32", None, None) == "exp1_1_L2_K32"
    assert query.config_of("whatever_s1", "exp1_1_L2_K32", "1") == "exp1_1_L2_K32"  # the tag wins


# ================================================================================ the report
def test_report_over_seeds_prints_spread_and_separates_findings_from_noise(mlflow_store, tmp_path):
    # K=32: L2 -> L4 climbs 5 points (a finding); K=64: L2 vs L4 within 0.3 points (noise)
    log_grid("exp1_1", {"L2_K32": [70.0, 70.5, 71.0], "L4_K32": [75.5, 76.0, 76.5],
                        "L2_K64": [72.0, 72.6, 73.2], "L4_K64": [72.3, 72.9, 73.5]})
    # exp2's best is 0.4 points above exp1's best, with stds of 0.5: within seed noise
    log_grid("exp2", {"L3_K32-64-128": [75.9, 76.4, 76.9]})
    result = build_report(tmp_path / "r", log_artifacts=False)
    md = result.answers.read_text()
    assert "±" in md and "(n=3)" in md
    q1 = _section(md, "### Question 1 (experiment 1.1")
    assert "K=32: test accuracy rises with L (best at L=4, worst at L=2: beyond the seed spread)" in q1
    assert "L=2: 70.5% ± 0.5, L=4: 76.0% ± 0.5 (n=3 each)" in q1
    assert "K=64: test accuracy is within seed noise along L (L=2: 72.6% ± 0.6, L=4: 72.9% ± 0.6 (n=3 each))" in q1
    assert "The best configuration is L4_K32 with 76.0% ± 0.5 (n=3) test accuracy." in q1
    assert "Its lead over the runner-up L4_K64 (72.9% ± 0.6) is +3.1 points, beyond the seed spread" in q1
    table = [line for line in q1.splitlines() if line.startswith("| exp1_1_L4_K32 |")]
    assert len(table) == 1 and "| 76.0% | ± 0.5 | 3 |" in table[0]
    q5 = _section(md, "### Question 5 (experiment 2")
    assert re.search(r"best network of experiment 1 is L4_K32 in exp1_1 with 76\.0% ± 0\.5 \(n=3\): YourCNN is "
                     r"\+0\.4 points, within seed noise: the two stds add up to 1\.0; on par\.", q5), q5
    assert "Smoke-size" not in md  # full-size runs: no banner, no marks
    assert "finished seeds per configuration" in md and "| exp1_1 | lossless copy, digest `b2b2b2b2b2b2`" in md
    assert (tmp_path / "r" / "figures" / "exp1_1_accuracy_vs_L_K.png").is_file()


def test_one_seed_answers_say_that_no_spread_is_known(mlflow_store, tmp_path):
    log_grid("exp1_1", {"L2_K32": [70.0], "L4_K32": [76.0]})
    md = build_report(tmp_path / "r", log_artifacts=False).answers.read_text()
    q1 = _section(md, "### Question 1 (experiment 1.1")
    assert "76.0% (n=1, no spread known)" in q1
    assert "(one seed each: no spread known)" in q1
    assert "this ranking is one measurement, not an established trend" in q1
    assert "±" not in q1.replace("| ± std |", "")


def test_the_newest_data_copy_is_used_and_the_other_listed(mlflow_store, tmp_path):
    log_grid("exp1_2", {"L2_K32": [50.0, 50.2], "L2_K64": [51.0, 51.2]}, digest=DIGEST_OLD, kind="jpeg",
             source="/data/cifar10-q75")
    log_grid("exp1_2", {"L2_K32": [80.0, 80.4], "L2_K64": [83.0, 83.4]}, digest=DIGEST_NEW, kind="unknown",
             source="/data/cifar10-lossless")
    data_rows = query.grid_runs("exp1_2")
    assert len(data_rows) == 8 and set(data_rows["data_digest"]) == {DIGEST_OLD, DIGEST_NEW}
    md = build_report(tmp_path / "r", log_artifacts=False).answers.read_text()
    assert "| exp1_2 | lossless copy, digest `b2b2b2b2b2b2`, from `/data/cifar10-lossless` | 2 |" in md
    assert ("`exp1_2`: 4 run(s) on another copy (jpeg copy, digest `a1a1a1a1a1a1`, from `/data/cifar10-q75`) left "
            "out: exp1_2_L2_K32, exp1_2_L2_K32_s43, exp1_2_L2_K64, exp1_2_L2_K64_s43") in md
    q2 = _section(md, "### Question 2 (experiment 1.2")
    assert "80.2%" in q2 and "50.1%" not in q2 and "51.1%" not in q2  # never mixed into a table


def test_a_comparison_across_data_copies_says_so(mlflow_store, tmp_path):
    log_grid("exp1_1", {"L2_K32": [50.0, 50.2]}, digest=DIGEST_OLD, kind="jpeg", source="/data/cifar10-q75")
    log_grid("exp1_2", {"L2_K32": [80.0, 80.4]}, digest=DIGEST_NEW)
    q2 = _section(build_report(tmp_path / "r", log_artifacts=False).answers.read_text(), "### Question 2 (exp")
    assert ("1 configurations appear in both experiments but with different settings (data_digest) (L2_K32); "
            "their test accuracies differ by 30.1 points") in q2
    assert "Because the settings differ, this is not a measure of run-to-run noise." in q2


def test_unrecorded_data_is_left_out_when_recorded_data_exists(mlflow_store, tmp_path):
    log_grid("exp1_1", {"L2_K32": [60.0, 61.0]}, digest=None)  # logged before the contract
    log_grid("exp1_1", {"L2_K32": [70.0, 71.0]}, digest=DIGEST_NEW)
    legacy = query.grid_runs("exp1_1")
    assert set(legacy.loc[legacy["data_digest"] == "", "config"]) == {"exp1_1_L2_K32"}  # _s43 folded by its seed
    md = build_report(tmp_path / "r", log_artifacts=False).answers.read_text()
    assert ("`exp1_1`: 2 run(s) on another copy (data not recorded (runs logged before the data tags)) left out: "
            "exp1_1_L2_K32, exp1_1_L2_K32_s43") in md
    assert "| exp1_1_L2_K32 |" in md and "70.5%" in md and "60.5%" not in md


def test_smoke_runs_open_the_report_with_a_banner_and_mark_their_section(mlflow_store, tmp_path):
    log_grid("exp1_1", {"L2_K32": [40.0, 41.0], "L4_K32": [42.0, 43.0]}, smoke=True)
    log_grid("exp1_3", {"L1_K64-128-256": [50.0]}, digest=None, extra={"allow_small": True})  # inferred
    log_grid("exp1_4", {"L8_K32": [80.0]}, digest=None)  # a full-size legacy run: not smoke
    md = build_report(tmp_path / "r", log_artifacts=False).answers.read_text()
    head = md.split("## Status of the experiments")[0]
    assert "**Smoke-size runs: the numbers below do not answer the programme.**" in head
    assert "`exp1_1` (2 configurations); `exp1_3` (1 configuration)" in head and "exp1_4" not in head
    assert "> **Smoke-size runs in `exp1_1`** (exp1_1_L2_K32, exp1_1_L4_K32)" in _section(md, "### Question 1 (exp")
    assert "> **Smoke-size runs in `exp1_3`**" in _section(md, "### Question 3 (exp")
    assert "Smoke-size runs in `exp1_4`" not in md


def test_smoke_is_inferred_from_the_params_of_older_runs(mlflow_store):
    from analysis.datasets import smoke_flags

    log_grid("exp1_1", {"L2_K32": [70.0]}, digest=None, extra={"epochs": 1})          # fewer epochs
    log_grid("exp1_2", {"L2_K32": [70.0]}, digest=None, extra={"n_train": 1000})      # too few images
    log_grid("exp1_3", {"L1_K64-128-256": [70.0]}, digest=None)                       # the programme's size
    log_grid("exp1_4", {"L8_K32": [70.0]}, digest=DIGEST_NEW, smoke=False, extra={"epochs": 1})  # the tag wins
    flags = {g: bool(smoke_flags(g, query.grid_runs(g)).iloc[0]) for g in ("exp1_1", "exp1_2", "exp1_3", "exp1_4")}
    assert flags == {"exp1_1": True, "exp1_2": True, "exp1_3": False, "exp1_4": False}


# ================================================================================ Part 1 with seeds
def _log_part1_run(client, exp_id: str, grid: str, name: str, params: Dict, acc: float, parent: Optional[str],
                   fpr: float, fnr: float) -> None:
    """One Part 1 run with the metrics its answers read (test at 0.5 and at the ROC threshold,
    FPR/FNR per split) and two epochs of curves."""
    tags = {tracking.GRID_TAG: grid, tracking.CONFIG_TAG: params.pop("config"), tracking.DATA_DIGEST_TAG: "c3" * 32,
            tracking.DATA_KIND_TAG: "synthetic", tracking.DATA_SOURCE_TAG: "make_synthetic_splits(seed=42)"}
    if parent:
        tags.update({tracking.ROLE_TAG: "child", "mlflow.parentRunId": parent})
    run = client.create_run(exp_id, run_name=name, tags=tags)
    m = dict(test_acc=acc, test_acc_thrroc=acc, test_acc_thr05=acc - 1, valid_acc=acc - 2, valid_acc_thr05=acc - 2,
             valid_acc_thrroc=acc - 1.5, train_acc_thr05=acc + 3, roc_threshold=0.4)
    m.update({f"{s}_{e}_{t}": v for s in ("train", "valid", "test") for e, v in (("fpr", fpr), ("fnr", fnr))
              for t in ("thr05", "thrroc")})
    metrics = [Metric(k, float(v), 0, 2) for k, v in m.items()]
    curves = lambda step: dict(train_loss=0.5 / step, train_acc=acc + step, valid_loss=0.6 / step,  # noqa: E731
                               valid_acc_epoch=acc - 3 + step)
    metrics += [Metric(k, float(v), 0, step) for step in (1, 2) for k, v in curves(step).items()]
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
    client.set_terminated(run.info.run_id, "FINISHED")


def test_part1_answers_quote_the_seeds_spread(mlflow_store, tmp_path):
    from analysis.answers_part1 import part1_q1, part1_q2, part1_q4
    from analysis.data import collect

    client = MlflowClient()
    exp_id = client.create_experiment("archlab")
    fc = dict(n_layers=2, hidden_dims=32, activation="relu", epochs=20)
    for i, (acc, fnr) in enumerate(((88.0, 0.20), (88.6, 0.22), (89.2, 0.21))):
        seed = 42 + i
        _log_part1_run(client, exp_id, "first_classifier", tracking.seed_run_name("first_classifier", seed, i == 0),
                       {**fc, "seed": seed, "config": "first_classifier"}, acc, None, fpr=0.05, fnr=fnr)
    parent = client.create_run(exp_id, run_name="mlp_grid", tags={tracking.GRID_TAG: "mlp_grid",
                                                                 tracking.ROLE_TAG: "parent"}).info.run_id
    cells = {(1, 32): (90.0, 90.4), (4, 8): (89.8, 90.4), (4, 32): (80.0, 80.2)}
    for (depth, width), accs in cells.items():
        for i, acc in enumerate(accs):
            config = f"d{depth}_w{width}"
            p = dict(depth=depth, width=width, n_params=depth * width, activation="tanh", epochs=10, seed=42 + i,
                     config=config)
            _log_part1_run(client, exp_id, "mlp_grid", tracking.seed_run_name(config, 42 + i, i == 0), p, acc, parent,
                           fpr=0.1, fnr=0.1)
    data = collect()
    q1, q2, q4 = part1_q1(data, tmp_path), part1_q2(data), part1_q4(data, tmp_path)
    assert "it scores 88.6% ± 0.6 (n=3) on test" in q1 and "the first seed (seed 42)" in q1
    assert "validation FPR = 0.050 ± 0.000, FNR = 0.210 ± 0.010 — the FNR is higher" in q2
    assert "(n=3, beyond the seed spread)" in q2
    row = [line for line in q4.splitlines() if line.startswith("| d1_w32 |")][0]
    assert row.endswith("| 90.2% | ± 0.3 | 2 |")
    assert "mosaic shows each cell's first seed" in q4
    assert ("Measured test accuracy: 90.2% ± 0.3 vs 90.1% ± 0.4 (n=2 and 2); the two are within seed noise "
            "(+0.1 points against stds adding up to 0.7)") in q4
    assert "Here width 32 scores lower than width 8 beyond the seed spread: more width hurts" in q4
    assert "width 32: test accuracy falls with depth (best at depth=1, worst at depth=4: beyond the seed spread)" in q4
    assert not data.smoke("mlp_grid") and not data.smoke("first_classifier")  # the programme's epochs
