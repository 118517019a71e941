"""training.tracking.timing: the per-thread clock of MLflow calls, and the `mlflow_time_s` metric
that every CIFAR child and Part 1 run logs (issue #17: MLflow's share of the programme's time)."""
from __future__ import annotations

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from cifar_fixtures import fake_cifar10  # noqa: F401
from training.cnn.experiment import cnn_experiment
from training.tracking import runs as tracking
from training.tracking import timing

SMALL = dict(n_train=96, n_valid=32, allow_small=True, log_model=False)


def test_nested_calls_count_once_and_the_clock_is_per_thread():
    @timing.mlflow_call()
    def inner():
        time.sleep(0.02)

    before = timing.spent()
    with timing.mlflow_call():
        time.sleep(0.02)
        inner()  # nested: already inside the outer block's time
    assert 0.04 <= timing.spent() - before < 0.2

    seen = {}

    def other():  # another thread's calls are not this thread's
        start = timing.spent()
        inner()
        seen["other"] = timing.spent() - start

    mark = timing.spent()
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["other"] >= 0.02 and timing.spent() == mark


def test_a_raising_call_is_still_counted_and_leaves_the_depth_at_zero():
    before = timing.spent()
    with pytest.raises(RuntimeError):
        with timing.mlflow_call():
            time.sleep(0.01)
            raise RuntimeError("store down")
    middle = timing.spent()
    assert middle - before >= 0.01
    with timing.mlflow_call():  # a fresh outermost block: counted again
        time.sleep(0.01)
    assert timing.spent() - middle >= 0.01


def test_overhead_per_call_is_negligible():
    """Two perf_counter calls per MLflow call: microseconds against a store call's milliseconds."""
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        with timing.mlflow_call():
            pass
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 20e-6, per_call  # a sqlite log_batch takes milliseconds


def test_cifar_run_logs_its_mlflow_time(mlflow_store, fake_cifar10, tmp_path):
    cnn_experiment("exp1_1", out_dir=str(tmp_path / "results"), seed=3, bs_train=32, batches=2, epochs=2,
                   early_stopping=None, filters_per_layer=[8], layers_per_block=1, pool_every=1, hidden_dims=[16],
                   data_dir=str(fake_cifar10), **SMALL)
    run = tracking.find_runs("attributes.run_name = 'exp1_1_L1_K8'").iloc[0]
    spent = run[f"metrics.{timing.METRIC}"]
    duration_s = (run["end_time"] - run["start_time"]).total_seconds()
    # the run's own MLflow calls (start_run, params, inputs, 2 epochs' log_batch, final metrics, tables,
    # artifacts): a part of the run's duration, which also holds the training
    assert 0.01 < spent < duration_s
    assert run[f"metrics.{timing.PRE_RUN_METRIC}"] > 0  # the skip check, before start_run (a fresh store: slow)
    for key in (timing.METRIC, timing.PRE_RUN_METRIC):
        history = MlflowClient().get_metric_history(run.run_id, key)
        assert [m.step for m in history] == [2]  # once, at the last epoch, just before the run ended
