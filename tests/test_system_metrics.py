"""System metrics on real runs (issue #21). MLflow's monitor (mlflow/system_metrics/) samples psutil
for CPU and memory on every run, and NVML (nvidia-ml-py, module pynvml) for every GPU where a driver
answers; without one it leaves the GPU monitor out, silently. The sampling interval is MLflow's own
$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (archlab's default: 5 s), short here so short runs get points."""
import logging
import subprocess
import sys

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from cifar_fixtures import fake_cifar10  # noqa: F401
from conftest import subprocess_env
from training.tracking.describe import GPU_MONITOR_LOGGER, enable_system_metrics

FAST_SAMPLING = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
CPU_KEYS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage")
GPU_KEYS = ("system/gpu_0_memory_usage_megabytes", "system/gpu_0_memory_usage_percentage")
GPU_UTILISATION = "system/gpu_0_utilization_percentage"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def nvml_answers() -> bool:
    """Whether an NVIDIA driver answers NVML here (what MLflow's GPUMonitor needs besides pynvml)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


def gpu_utilisation_readable() -> bool:
    """Whether NVML reports GPU 0's utilisation (not on a MIG-partitioned GPU: MLflow then logs
    memory and power only, after one warning)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(0))
    except pynvml.NVMLError_NotSupported:
        return False
    return True


def run_entry_point(module: str, args: list, tmp_path, store: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env={**subprocess_env(store),
                          **FAST_SAMPLING}, capture_output=True, text=True, timeout=900)


def assert_sampled(run_id: str, keys) -> None:
    client = MlflowClient()
    for key in keys:
        history = client.get_metric_history(run_id, key)
        assert history, f"{key}: no sample"
        assert all(m.value >= 0 for m in history)
        if key.endswith("_percentage"):
            assert all(m.value <= 100 for m in history), key


def test_a_part1_run_records_cpu_and_memory_and_keeps_the_console_quiet(mlflow_store, tmp_path):
    """The real entry point: its run holds CPU utilisation and memory; GPU keys exactly where a
    driver answers; and no system-metrics or NVML line reaches the console."""
    proc = run_entry_point("entrypoints.part1", ["first-classifier", "--epochs", "2", "--device", "cpu"],
                           tmp_path, mlflow_store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert_sampled(run.info.run_id, CPU_KEYS)
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    assert any(k.startswith("system/gpu_0_") for k in run.data.metrics) == nvml_answers()
    console = proc.stdout + proc.stderr
    for word in ("system metrics", "GPU", "NVML", "pynvml", "nvidia-ml-py"):
        assert word not in console, console[-3000:]


def test_mlflow_leaves_the_gpu_monitor_out_exactly_where_no_driver_answers(mlflow_store):
    """nvidia-ml-py imports anywhere (pure Python); MLflow's SystemMetricsMonitor adds a GPUMonitor
    only when nvmlInit succeeds, and creating one without a driver raises nothing."""
    import pynvml  # noqa: F401  (requirements.txt installs it)
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    run = MlflowClient().create_run("0")
    monitors = SystemMetricsMonitor(run.info.run_id).monitors
    assert {"CPUMonitor", "DiskMonitor", "NetworkMonitor"} <= {type(m).__name__ for m in monitors}
    assert any(isinstance(m, GPUMonitor) for m in monitors) == nvml_answers()


def test_gpu_monitor_warnings_reach_the_log_once_each():
    """MLflow's GPU monitor warns at every sample when NVML refuses a query (a MIG slice, a GPU
    without a power sensor); archlab lets each distinct warning through once."""
    enable_system_metrics()
    enable_system_metrics()  # a second call (every entry point calls it) adds no second filter
    logger, seen = logging.getLogger(GPU_MONITOR_LOGGER), []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    try:
        for _ in range(3):
            logger.warning("test: Encountered error Not Supported when trying to collect GPU power usage metrics.")
            logger.warning("test: Encountered error Not Supported when trying to collect GPU utilization metrics.")
    finally:
        logger.removeHandler(handler)
    assert len(seen) == 2


@needs_cuda
def test_a_cifar_run_on_the_gpu_records_gpu_utilisation_and_memory(mlflow_store, fake_cifar10, tmp_path):
    """On a CUDA machine (with nvidia-ml-py, as requirements.txt installs): the configuration's run,
    trained in a worker process, holds gpu_0 memory and (unless MIG hides it) utilisation besides
    CPU and memory."""
    args = ["grid", "test_run", "--device", "cuda", "--n-train", "500", "--n-valid", "50", "--epochs", "2",
            "--data-dir", str(fake_cifar10), "--out-dir", str(tmp_path / "results"),
            "--checkpoint-dir", str(tmp_path / "ckpt")]
    proc = run_entry_point("entrypoints.cifar", args, tmp_path, mlflow_store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="tags.`archlab.role` = 'child'")
    assert children
    keys = CPU_KEYS + GPU_KEYS + ((GPU_UTILISATION,) if gpu_utilisation_readable() else ())
    for child in children:
        assert_sampled(child.info.run_id, keys)
        assert child.data.metrics["system/gpu_0_memory_usage_megabytes"] > 0
