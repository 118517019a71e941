"""Benchmark 5b: how many grid workers should share one GPU?

    python bench/gpu_sharing.py --data-dir /tmp/cifar --out sharing.json            # on the GPU machine
    python bench/gpu_sharing.py --data-dir /tmp/cifar --device cpu --workers 1,2 --batches 3 --smoke

Why: on an H200 the exp1 nets are launch-bound (one 45000-image epoch of exp1_1_L2_K32 takes about
1 s whatever K is), so a single configuration leaves most of the GPU idle, and the grid's
`--workers N` (all on the one GPU by default) might train N configurations in nearly the time of
one. This measures it: W processes, each building its configuration exactly as cnn_experiment does
(model, optimizer, DeviceLoader resident on the device, autocast), warm up, meet at a barrier,
then train the same number of batches; aggregate images/s = all images / (last end - first start).
speedup(W) = aggregate(W) / aggregate(1); the grid's time divides by about that much.

Two cases bracket the programme: the lightest exp1 configuration (launch-bound) and exp1_4's
ResNet K=[32] L=8 (the heaviest per batch of the cheap ones).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any, Dict, List, Sequence

if __package__ in (None, ""):  # `python bench/gpu_sharing.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {"exp1_1_L2_K32": ("exp1_1", 0), "exp1_4_L8_K32": ("exp1_4", 0)}  # (grid, index in its expansion)
TIMED_BATCHES = {"exp1_1_L2_K32": 300, "exp1_4_L8_K32": 120}  # about 1 s each alone on an H200


def case_kwargs(case: str) -> Dict[str, Any]:
    """The configuration's cnn_experiment kwargs, as the grid would pass them."""
    from training.grids.expand import expand_grid, load_grid_config

    grid, index = CASES[case]
    return expand_grid(load_grid_config(grid))[index]


def _worker(case: str, device: str, data_dir: str, n_train: int, batches: int, warmup: int, threads: int,
            rank: int, barrier) -> Dict[str, float]:
    """One grid worker's training path for `batches` batches, timed between absolute clock readings."""
    import torch

    from training.data.cifar import DeviceLoader, load_cifar10, make_splits
    from training.cnn.experiment import decide_policy, plan_run
    from training.cnn.session import make_trainer
    from training.trainer import BatchLimit

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    kwargs = case_kwargs(case)
    recipe, options = plan_run({**kwargs, "device": device})
    policy = decide_policy(recipe, options)  # the cases (exp1_1, exp1_4) train at a constant lr
    dev = policy.device
    torch.manual_seed(rank)
    model = recipe.build_model().to(dev, memory_format=torch.channels_last)
    trainer = make_trainer(recipe, policy, model, batches)
    train, _, _ = make_splits(load_cifar10(data_dir), n_train=n_train, n_valid=0, seed=42)
    loader = DeviceLoader(train.x, train.y, recipe.bs_train, device=dev, shuffle=True, drop_last=True,
                          augment=recipe.augment, crop_padding=recipe.crop_padding, seed=rank, channels_last=True)

    def train(n: int) -> None:
        trainer.train_epoch(BatchLimit(loader, n), verbose=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    train(warmup)  # cudnn autotuning, allocator, first-launch costs: not what the grid pays per epoch
    barrier.wait()
    start = time.time()
    done = 0
    while done < batches:  # the loader's epoch may hold fewer batches than asked for
        n = min(batches - done, len(loader))
        train(n)
        done += n
    return dict(start=start, end=time.time(), images=done * kwargs["bs_train"])


def measure(case: str, workers: int, device: str, data_dir: str, n_train: int, batches: int, warmup: int,
            threads: int) -> Dict[str, Any]:
    """W concurrent workers on `device`; their aggregate training throughput."""
    ctx = mp.get_context("spawn")  # CUDA is not fork-safe
    with ctx.Manager() as manager:
        barrier = manager.Barrier(workers)
        pool = ctx.Pool(workers)
        try:
            results = pool.starmap(_worker, [(case, device, data_dir, n_train, batches, warmup, threads, r, barrier)
                                             for r in range(workers)])
        finally:  # close + join (not terminate): the workers exit cleanly, releasing their semaphores
            pool.close()
            pool.join()
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    images = sum(r["images"] for r in results)
    return dict(workers=workers, images=images, span_s=round(span, 3), aggregate_images_per_s=round(images / span),
                per_worker_s=[round(r["end"] - r["start"], 3) for r in results])


def run(data_dir: str, device: str, workers: Sequence[int], batches: Dict[str, int] = TIMED_BATCHES, n_train: int = 45000,
        warmup: int = 20, deadline_s: float = float("inf"), threads: int = 0) -> Dict[str, Any]:
    """Every case at every worker count (in order, until `deadline_s` seconds have passed)."""
    t0 = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    report: Dict[str, Any] = {"device": device, "cases": {}, "notes": []}
    for case in CASES:
        rows: List[Dict[str, Any]] = []
        for w in workers:
            if time.perf_counter() - t0 > deadline_s:
                report["notes"].append(f"skipped {case} with {w} workers: deadline")
                continue
            try:
                rows.append(measure(case, w, device, data_dir, n_train, batches[case], warmup,
                                    threads or max(1, cores // w)))
            except Exception as e:  # keep the other figures
                rows.append(dict(workers=w, error=f"{type(e).__name__}: {e}"))
            print(case, rows[-1], flush=True)
        base = next((r["aggregate_images_per_s"] for r in rows if r.get("workers") == 1 and "error" not in r), None)
        for r in rows:
            if base and "aggregate_images_per_s" in r:
                r["speedup_vs_1"] = round(r["aggregate_images_per_s"] / base, 2)
        report["cases"][case] = rows
    speedups = {w: min((r["speedup_vs_1"] for rows in report["cases"].values() for r in rows
                        if r.get("workers") == w and "speedup_vs_1" in r), default=None) for w in workers}
    report["worst_case_speedup_by_workers"] = {str(w): s for w, s in speedups.items() if s is not None}
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/tmp/cifar")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts; 1 must be among them")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per worker (default: per case)")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds; later steps are skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny data split, to check the script on a CPU")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    if 1 not in workers or min(workers) < 1:
        ap.error(f"--workers must be positive and include 1 (the baseline), got {args.workers!r}")
    batches = {case: args.batches for case in CASES} if args.batches else TIMED_BATCHES
    report = run(args.data_dir, args.device, workers, batches, n_train=2000 if args.smoke else 45000,
                 warmup=2 if args.smoke else 20, deadline_s=args.deadline)
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
