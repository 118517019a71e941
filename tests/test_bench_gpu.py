"""The GPU scripts' logic, run for real on the CPU and tiny data: bench/gpu_sharing.py (its workers
train concurrently, meeting at a barrier, and every figure adds up), bench/gpu_programme.py (every
configuration trained once, heaviest first, the deadline respected) and bench/gpu_sweep.py's
up-front check of its variants."""
import json

import pytest

from bench import gpu_programme, gpu_sharing
from bench.gpu_sweep import check_variants, variant_kwargs
from cifar_fixtures import write_fake_cifar10
from conftest import PROJECT_ROOT
from training.grids.expand import expand_grid, load_grid_config


def test_gpu_sharing_times_concurrent_workers_and_reports_their_speedup(tmp_path):
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=100, n_test=50)
    report = gpu_sharing.run(str(root), "cpu", [1, 2], batches=dict.fromkeys(gpu_sharing.CASES, 2), n_train=400,
                             warmup=1)
    assert set(report["cases"]) == set(gpu_sharing.CASES) and not report["notes"]
    for case, rows in report["cases"].items():
        bs = gpu_sharing.case_kwargs(case)["bs_train"]
        assert [r["workers"] for r in rows] == [1, 2], rows
        for r in rows:
            assert "error" not in r, r
            assert r["images"] == r["workers"] * 2 * bs
            assert r["aggregate_images_per_s"] == pytest.approx(r["images"] / r["span_s"], rel=0.01)  # span rounded
            # the workers start together: each one's timed span lies within the aggregate span
            assert len(r["per_worker_s"]) == r["workers"] and max(r["per_worker_s"]) <= r["span_s"] + 1e-3
        assert rows[0]["speedup_vs_1"] == 1.0
        speedup = rows[1]["aggregate_images_per_s"] / rows[0]["aggregate_images_per_s"]
        assert rows[1]["speedup_vs_1"] == round(speedup, 2)
    worst = report["worst_case_speedup_by_workers"]
    assert worst["2"] == min(rows[1]["speedup_vs_1"] for rows in report["cases"].values())


def test_gpu_sharing_skips_what_the_deadline_leaves_no_time_for(tmp_path):
    report = gpu_sharing.run(str(tmp_path), "cpu", [1, 2], deadline_s=-1)
    assert report["cases"] == {case: [] for case in gpu_sharing.CASES}
    assert len(report["notes"]) == 4 and report["worst_case_speedup_by_workers"] == {}


def test_every_committed_sweep_variant_passes_the_checks_and_a_bad_one_stops_the_sweep(tmp_path):
    """gpu_sweep.py checks all its variants before the first trains: a typo must not cost a GPU loan."""
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=20, n_test=20)
    base = {r["layers_per_block"]: r for r in expand_grid(load_grid_config("exp2"))}[3]
    variants = json.loads((PROJECT_ROOT / "bench" / "exp2_next_sweep.json").read_text())
    check_variants(base, variants, str(root))
    assert variants[0] == {} and variant_kwargs(base, {}) == base  # the configured recipe comes first
    kw = variant_kwargs(base, {"L": 6, "model_kwargs": {"learn_bn_scale": True}, "norm_weight_decay": 0.0})
    assert kw["layers_per_block"] == 6 and kw["norm_weight_decay"] == 0.0
    assert kw["model_kwargs"] == {**base["model_kwargs"], "learn_bn_scale": True}
    with pytest.raises(SystemExit, match=r'bad sweep variant \{"norm_weight_decay": -1\}: ValueError: optimizer '
                                         r"norm_weight_decay must be >= 0.0, got -1.0"):
        check_variants(base, [{}, {"norm_weight_decay": -1}], str(root))


def test_gpu_programme_trains_every_configuration_once_heaviest_first(tmp_path):
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=60, n_test=40)
    out = tmp_path / "programme.json"
    report = gpu_programme.run(str(root), 2, ["test_run", "exp1_3", "exp1_4"], device="cpu", out=str(out), smoke=True)
    assert json.loads(out.read_text()) == report
    assert report["configurations"] == 1 + 4 + 6 and report["all_finished"] and not report["errors"]
    assert report["running"] == {} and report["not_started"] == []
    labels = [r["label"] for r in report["finished"]]
    assert sorted(labels) == sorted(["test_run_L1_K32-64"] + [f"exp1_3_L{L}_K64-128-256" for L in (1, 2, 3, 4)] +
                                    [f"exp1_4_L{L}_K32" for L in (8, 16, 32)] +
                                    [f"exp1_4_L{L}_K64-128-256" for L in (2, 4, 8)])
    starts = {r["label"]: r["start_s"] for r in report["finished"]}
    assert max(starts[k] for k in starts if k.startswith("exp1_4")) <= min(starts[k] for k in starts
                                                                          if not k.startswith("exp1_4"))
    assert all(r["epochs"] == 1 and 0 <= r["test_acc"] <= 100 and r["start_s"] <= r["end_s"] <= report["wall_s"]
               and len(r["epoch_s"]) == 1 and 0 < r["epoch_s"][0] <= r["fit_s"] + 0.05 for r in report["finished"])
    assert report["fit_s_by_grid"].keys() == {"test_run", "exp1_3", "exp1_4"}


def test_gpu_programme_starts_nothing_after_its_deadline(tmp_path):
    report = gpu_programme.run(str(tmp_path), 2, ["exp1_3"], device="cpu", deadline_s=-1, smoke=True, cuda_graphs="off")
    assert report["cuda_graphs"] == "off"
    assert report["finished"] == [] and not report["all_finished"]
    assert report["not_started"] == [f"exp1_3_L{L}_K64-128-256" for L in (4, 3, 2, 1)]  # heaviest first


def test_time_to_accuracy_is_the_first_epoch_reaching_each_target():
    from bench.gpu_check import time_to_accuracy

    assert time_to_accuracy([10.0, 20.0, 30.0, 40.0], [88.0, 93.5, 92.0, 94.2]) == {"90": 20.0, "93": 20.0, "94": 40.0}
    assert time_to_accuracy([10.0], [89.9]) == {"90": None, "93": None, "94": None}


def test_gpu_programme_only_and_test_each_epoch(tmp_path):
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=60, n_test=40)
    report = gpu_programme.run(str(root), 1, ["test_run", "exp1_3"], device="cpu", smoke=True,
                               only=["exp1_3_L1_K64-128-256"], test_each_epoch=True)
    assert [r["label"] for r in report["finished"]] == ["exp1_3_L1_K64-128-256"] and report["all_finished"]
    row = report["finished"][0]
    assert row["test_acc_per_epoch"] == [row["test_acc"]]  # one epoch: its test is the final one
    assert set(row["time_to_test_acc_s"]) == {"90", "93", "94"}


def test_gpu_programme_only_naming_no_configuration_is_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_programme.main(["--data-dir", str(tmp_path), "--grids", "exp1_3", "--only", "exp1_3_L9_K64-128-256",
                            "--out", str(tmp_path / "p.json")])
    assert "exp1_3_L9_K64-128-256" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
