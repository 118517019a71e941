"""The CIFAR-10 part of the whole programme, timed for real on one machine (performance issue:
"the whole programme in <= 10 minutes on one H100").

    python bench/gpu_programme.py --data-dir /tmp/cifar --workers 4 --out programme.json --deadline 540
    python bench/gpu_programme.py --smoke --workers 2        # tiny sizes, to check the script on a CPU

Every configuration of test_run, exp1_1..exp1_4 and exp2 trains exactly as its grid configures it
(full data, its epochs and early stopping, CUDA graphs where `auto` allows) through
`cnn_experiment`, with tracking off: the GPU image has no MLflow, whose cost is measured apart
(bench/mlflow_logging.py: <= 1 % of a grid's time). `--workers` processes share the one device;
the configurations are handed out heaviest first (exp2, the ResNets, the deepest plain nets), so
the last ones to start are the short ones. Part 1 is not run here (46 s on the 2-core CPU, see the
README's table). The JSON file is written at the start and rewritten whenever a configuration
starts or finishes, so a run cut short by `--deadline` (no new configuration starts after it) or
by a kill still leaves what it measured: which configurations finished (each one's epochs, wall
time and test accuracy), which were running, which never started.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.experiments import experiment_name_of  # noqa: E402
from training.grids.expand import GRIDS, expand_grid, load_grid_config  # noqa: E402
from training.grids.parallel import heaviest_first  # noqa: E402

SMOKE = dict(epochs=1, bs_train=32, options=dict(n_train=200, n_valid=50, allow_small=True))


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True


def _train(kwargs: Dict[str, Any], scratch: str, t0: float, test_each_epoch: bool = False) -> Dict[str, Any]:
    from bench.gpu_check import run_config, summarise_training  # the GPU scripts' one way to train untracked

    label = experiment_name_of(kwargs)
    start = time.time() - t0
    res, wall = run_config(kwargs, os.path.join(scratch, label), kwargs["data_dir"],
                           **({"test_each_epoch": True} if test_each_epoch else {}))
    final = res["final_test"]
    row = dict(label=label, start_s=round(start, 1), end_s=round(time.time() - t0, 1),
               epochs=len(res["epochs"]), best_epoch=final["best_epoch"], test_acc=final["test_acc"],
               best_valid_acc=final["best_valid_acc"], fit_s=round(final["fit_wall_time_s"], 1),
               epoch_s=[round(e["epoch_time_s"], 2) for e in res["epochs"]],  # train + validation, each epoch
               execution=res.get("execution"))
    if test_each_epoch:  # DAWNBench-style time to 90 / 93 / 94 % test accuracy
        summary = summarise_training(res, wall)
        row.update(test_acc_per_epoch=summary.get("test_acc_per_epoch"),
                   time_to_test_acc_s=summary.get("time_to_test_acc_s"))
    return row


def run(data_dir: str, workers: int, grids=GRIDS, device: str = "auto", deadline_s: float = float("inf"),
        out: str | None = None, smoke: bool = False, cuda_graphs: str = "auto", only: List[str] | None = None,
        test_each_epoch: bool = False) -> Dict[str, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = {**(SMOKE if smoke else {}), "device": device,
                 "options": {**(SMOKE["options"] if smoke else {}), "data_dir": data_dir, "cuda_graphs": cuda_graphs}}
    runs = heaviest_first([r for g in grids for r in expand_grid(load_grid_config(g), overrides)])
    if only:
        missing = sorted(set(only) - {experiment_name_of(r) for r in runs})
        if missing:
            raise ValueError(f"--only names no configuration of grids {list(grids)}: {missing}")
        runs = [r for r in runs if experiment_name_of(r) in only]
    report: Dict[str, Any] = dict(
        device=torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu", torch=torch.__version__,
        workers=workers, cuda_graphs=cuda_graphs, test_each_epoch=test_each_epoch, configurations=len(runs), grids=list(grids), smoke=smoke, finished=[], errors={},
        running={}, not_started=[experiment_name_of(r) for r in runs])

    def save():
        if out:
            with open(out, "w") as f:
                json.dump(report, f, indent=1)

    save()  # a run killed before its first configuration finishes still says what it planned
    t0 = time.time()
    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = list(runs)
    with tempfile.TemporaryDirectory(prefix="archlab-programme-") as scratch, \
            ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_init, initargs=(threads,)) as pool:
        active = {}
        while pending or active:
            while pending and len(active) < workers and time.time() - t0 < deadline_s:
                kwargs = pending.pop(0)
                label = experiment_name_of(kwargs)
                active[pool.submit(_train, kwargs, scratch, t0, test_each_epoch)] = label
                report["running"][label] = round(time.time() - t0, 1)  # submitted at (s)
                report["not_started"].remove(label)
            save()
            if not active:
                break
            done, _ = wait(active, return_when=FIRST_COMPLETED)
            for future in done:
                label = active.pop(future)
                report["running"].pop(label, None)
                try:
                    row = future.result()
                    report["finished"].append(row)
                    print(f"{row['end_s']:7.1f} s  {label}: test {row['test_acc']:.2f} %, {row['epochs']} epochs, "
                          f"{row['fit_s']} s", flush=True)
                except Exception as e:  # one failure must not lose the other figures
                    report["errors"][label] = f"{type(e).__name__}: {e}"
                    print(f"{label} failed: {report['errors'][label]}", flush=True)
            report["wall_s"] = round(time.time() - t0, 1)
            save()
    report["wall_s"] = round(time.time() - t0, 1)
    report["all_finished"] = len(report["finished"]) == len(runs)
    by_grid: Dict[str, float] = {}
    for row in report["finished"]:
        grid = row["label"].split("_L")[0]
        by_grid[grid] = round(by_grid.get(grid, 0.0) + row["fit_s"], 1)
    report["fit_s_by_grid"] = by_grid
    save()
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/tmp/cifar")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--grids", default=",".join(GRIDS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which no configuration starts")
    ap.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                    help="the runs' cuda_graphs option (off: eager, e.g. if the CUDA-graph tests failed)")
    ap.add_argument("--only", default="", help="comma-separated configuration names (e.g. exp2_L3_K32-64-128)")
    ap.add_argument("--test-each-epoch", action="store_true",
                    help="test after every epoch (execution-only): time to 90 / 93 / 94 %% test accuracy")
    ap.add_argument("--out", default="gpu_programme.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (1 epoch, 200 images): checks the script on a CPU")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    grids = [g for g in args.grids.split(",") if g]
    unknown = sorted(set(grids) - set(GRIDS))
    if unknown:
        ap.error(f"unknown grids {unknown}; valid: {', '.join(GRIDS)}")
    try:
        report = run(args.data_dir, args.workers, grids, args.device, args.deadline, args.out, args.smoke,
                     args.cuda_graphs, [o for o in args.only.split(",") if o], args.test_each_epoch)
    except ValueError as e:
        ap.error(str(e))
    print(f"{len(report['finished'])}/{report['configurations']} configurations in {report['wall_s']} s "
          f"with {args.workers} workers on {report['device']}; not started: {len(report['not_started'])}; "
          f"errors: {len(report['errors'])}")
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
