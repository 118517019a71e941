"""Benchmark 4: whole jobs, timed from outside, on this CPU.

(a) `python -m entrypoints.part1 main` (what `make main` runs after installing) as a subprocess in
    a fresh temporary folder with its own SQLite store, so nothing of the checkout is touched and
    MLflow's schema creation is part of the cost, as on a first run.
(b) One exp1 configuration, exp1_1_L2_K32, through the real `cnn_experiment` (tracking off, as
    bench/gpu_check.py does on the GPU, so the two machines' figures compare): 5 epochs of 16
    batches over the 45000-image split, the first dropped (one-off warm-up), the median of the
    others scaled to a full 45000-image epoch plus the measured 5000-image validation.
No contender runs beside these, so their absolute times move with the machine's load; the cores
other jobs kept busy meanwhile (/proc/stat) and the load averages are recorded with them.
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, Optional

from bench.common import background_cores, break_even_text, load_average, rounded, timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP1_CONFIG = ("exp1_1", 32, 2)  # grid, K, L


def _exp1_kwargs() -> Dict[str, Any]:
    """EXP1_CONFIG's cnn_experiment arguments, exactly as its grid configures it."""
    from training.grids.expand import expand_grid, load_grid_config

    grid, K, L = EXP1_CONFIG
    return next(k for k in expand_grid(load_grid_config(grid))
                if k["filters_per_layer"] == [K] and k["layers_per_block"] == L)


def part1_main(quick: bool = False, timeout_s: float = 1800.0) -> Dict[str, Any]:
    """Wall time of Part 1's main job as a user runs it (quick: the grid at 1 epoch per cell)."""
    cmd = [sys.executable, "-m", "entrypoints.part1", "main"] + (["--epochs", "1"] if quick else [])
    with tempfile.TemporaryDirectory(prefix="bench_part1_") as workdir:
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        env.pop("MLFLOW_RUN_ID", None)
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        load_before = load_average()
        box: Dict[str, subprocess.CompletedProcess] = {}
        sample = timed(lambda: box.setdefault("proc", subprocess.run(
            cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)))
        proc, wall = box["proc"], sample.wall_s
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed with code {proc.returncode}:\n{tail}")
    reported = re.search(r"Part 1 done in (\d+) s", proc.stdout)
    res = dict(command=" ".join(cmd[1:]), wall_s=rounded(wall, 1),
               reported_s=int(reported.group(1)) if reported else None,
               grid_epochs="1 (--quick)" if quick else "config (part1.yaml)",
               background_cores=rounded(background_cores([sample]), 2),
               load_before=load_before, load_after=load_average())
    print(f"  [part1] {res['command']}: {wall:.1f} s wall (other jobs kept {res['background_cores']} cores busy)",
          flush=True)
    return res


def exp1_epoch(data_dir: Optional[str], quick: bool = False) -> Dict[str, Any]:
    """Full-epoch time of exp1_1_L2_K32 on this CPU, extrapolated from a fixed number of batches.

    Several short epochs, the first dropped (warm-up); the headline is the median of the others
    and the fastest is kept too, because a single epoch here can run 6x slower when another job
    takes a core (seen: 614 vs 3936 img/s for the same 16 batches, minutes apart)."""
    from bench.gpu_check import run_config

    grid, K, L = EXP1_CONFIG
    kwargs = _exp1_kwargs()
    batches, epochs = (4, 2) if quick else (16, 5)
    n_train, bs = kwargs["n_train"], kwargs["bs_train"]
    load_before = load_average()
    box: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_exp1_") as out_dir:
        # allow_small: a timing run sees `batches` x 128 images per epoch, below the programme's
        # 30000-image floor that cnn_experiment enforces for real experiments.
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # cnn_experiment's progress lines
            sample = timed(lambda: box.setdefault("res", run_config(
                {**kwargs, "epochs": epochs, "early_stopping": None, "batches": batches, "allow_small": True},
                out_dir, data_dir)))
    res, wall = box["res"]
    timed_epochs = res["epochs"][1:]
    ips = sorted(e["train_images_per_s"] for e in timed_epochs)
    median_ips = statistics.median(ips)
    valid_s = statistics.median(e["epoch_time_s"] - batches * bs / e["train_images_per_s"] for e in timed_epochs)
    full_train_s = n_train / median_ips
    out = dict(config=f"{grid}_L{L}_K{K}", batches_per_epoch=batches, epochs_timed=len(timed_epochs),
               images_per_epoch=n_train, train_images_per_s=rounded(median_ips, 1),
               train_images_per_s_per_epoch=[rounded(e["train_images_per_s"], 1) for e in timed_epochs],
               valid_5000_s=rounded(valid_s, 2), full_epoch_train_s=rounded(full_train_s, 1),
               full_epoch_with_valid_s=rounded(full_train_s + valid_s, 1),
               full_epoch_train_s_fastest=rounded(n_train / ips[-1], 1),
               planned_max_epochs=kwargs["epochs"], run_wall_s=rounded(wall, 1),
               background_cores=rounded(background_cores([sample]), 2),
               load_before=load_before, load_after=load_average())
    print(f"  [exp1] {out['config']}: {median_ips:.0f} img/s (median of {len(ips)} epochs) -> {full_train_s:.0f} s per "
          f"45000-image epoch (+{valid_s:.1f} s validation; fastest epoch {out['full_epoch_train_s_fastest']:.0f} s)",
          flush=True)
    return out


def compile_cost(data_dir: Optional[str], quick: bool = False) -> Dict[str, Any]:
    """What `compile=True` costs and buys for exp1_1_L2_K32: the same short epochs eager and compiled.

    The first compiled epoch pays the compilation (training and evaluation graphs); the later ones
    show the steady speed. Break-even: the compile time over the seconds saved per full
    45000-image epoch; it decides whether compile should stay off for the short grid runs."""
    from bench.gpu_check import run_config

    grid, K, L = EXP1_CONFIG
    kwargs = _exp1_kwargs()
    batches, epochs = (4, 2) if quick else (16, 4)
    load_before = load_average()
    out: Dict[str, Any] = dict(config=f"{grid}_L{L}_K{K}", batches_per_epoch=batches, epochs=epochs)
    samples = []
    for compiled in (False, True):
        box: Dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench_compile_") as out_dir, \
                open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            samples.append(timed(lambda: box.setdefault("res", run_config(
                {**kwargs, "epochs": epochs, "early_stopping": None, "batches": batches, "allow_small": True},
                out_dir, data_dir, compile=compiled))))
        res, wall = box["res"]
        steady = statistics.median(e["train_images_per_s"] for e in res["epochs"][1:])
        out["compiled" if compiled else "eager"] = dict(
            epoch_s=[rounded(e["epoch_time_s"], 2) for e in res["epochs"]], run_wall_s=rounded(wall, 1),
            steady_train_images_per_s=rounded(steady, 1))
    eager, comp = out["eager"], out["compiled"]
    out["compile_overhead_s"] = rounded(comp["epoch_s"][0] - eager["epoch_s"][0], 1)
    out["steady_speedup"] = rounded(comp["steady_train_images_per_s"] / eager["steady_train_images_per_s"], 3)
    n_train = kwargs["n_train"]
    saved_per_epoch = n_train / eager["steady_train_images_per_s"] - n_train / comp["steady_train_images_per_s"]
    out["saved_per_full_epoch_s"] = rounded(saved_per_epoch, 2)
    out["break_even_full_epochs"] = (rounded(out["compile_overhead_s"] / saved_per_epoch, 1)
                                     if saved_per_epoch > 0 else None)  # None: compiled is no faster
    out.update(planned_max_epochs=kwargs["epochs"], background_cores=rounded(background_cores(samples), 2),
               load_before=load_before, load_after=load_average())
    print(f"  [compile] {out['config']}: compile costs {out['compile_overhead_s']} s, steady speedup "
          f"{out['steady_speedup']}x, break-even: {break_even_text(out)}", flush=True)
    return out
