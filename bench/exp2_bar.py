"""exp2's bar (issue #18), measured on one GPU in one run: YourCNN against the independent airbench94.

    python bench/exp2_bar.py --data-dir /tmp/cifar --workers 4 --budget 480 --out "$OUT"
    python bench/exp2_bar.py --smoke --data-dir DIR --out /tmp/bar.json          # CPU rehearsal, tiny sizes
    python bench/exp2_bar.py --from-results ref.json exp2_L3.json --data-dir /tmp/cifar --out FILE

Why one script: the issue's three bars compare exp2 with the reference *on the same machine in the
same run*. Jobs, in priority order (a job starts only if its estimated time still fits --budget):
  1. timing, the GPU alone (one job at a time, exp2 and reference interleaved): exp2 L=3 and the
     reference on exp2's own 45000 training images, 3 seeds each, both tested after every epoch with their TTA: bar 1
     and the time to 94 % of bar 3 without other jobs' load in the timings;
  2. depth, --workers processes sharing the GPU (as the programme run): L = 12, 9, 6, then 18, 3 seeds,
     final test only (no bar uses their time to 94 %, which a shared GPU would blur anyway, and
     the per-epoch TTA test would add about 40 % to each);
  3. the reference on all 50000 images (as published), the GPU alone, 3 seeds.
Every job runs in a fresh process (so each pays its own warm-up, as a standalone run would), tracking
off (the GPU image has no MLflow). The JSON (bench/exp2_record.py's format) is rewritten after every
job, so a run cut short still leaves what it measured; jobs not started are listed with the reason.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import exp2_record  # noqa: E402

STARTED = time.time()  # --budget counts from here: torch's import and the data digest are part of it

EXP2_SEEDS, REF_SEEDS = (42, 43, 44), (0, 1, 2)
EXP2_N_TRAIN, ALL_TRAIN = 45000, 50000
DEEP = 18
# Seconds per job on an H200, for --budget: exp2 fit 22.5/32.7/40/50 s at L=3/6/9/12 with 4 workers
# sharing (measured/gpu_programme_h200_2026-11-27.json) plus the worker's start and the final TTA;
# L=3 alone, tested every epoch, 18 s (measured/gpu_exp2_L3_time_to_accuracy_h200_2026-11-27.json)
# plus a fresh process; L=18 and the reference (airbench94: 3.3 s compiled on an A100; here eager,
# bf16, tested every epoch) are guesses on the safe side. Whole plan: 479 s with 4 workers (--plan).
ESTIMATE_S = {("exp2", 3): 25, ("exp2", 6): 50, ("exp2", 9): 60, ("exp2", 12): 75, ("exp2", DEEP): 110,
              ("reference", EXP2_N_TRAIN): 25, ("reference", ALL_TRAIN): 28}
# --smoke: the same plan at toy sizes (fake data of a few hundred images, 1 epoch, 2 seeds, L=3)
SMOKE_EXP2 = dict(epochs=1, bs_train=32, options=dict(n_train=64, n_valid=32, allow_small=True))
SMOKE_REF_N = {EXP2_N_TRAIN: 64, ALL_TRAIN: 96}
SMOKE_REF_HYP = dict(batch_size=32, epochs=1)


@dataclass(frozen=True)
class Job:
    kind: str    # "exp2" | "reference"
    size: int    # exp2: L; reference: training images (the full-size figure, also under --smoke)
    seed: int
    phase: str

    @property
    def label(self) -> str:
        return f"exp2_L{self.size}_s{self.seed}" if self.kind == "exp2" else f"reference_n{self.size}_s{self.seed}"


def plan(smoke: bool = False, only: tuple = ()) -> List[tuple]:
    """[(phase, concurrent jobs or None for --workers, [jobs])] in priority order; only: just these
    labels (how a CPU records the calibration and one exp2 run without a GPU)."""
    e_seeds, r_seeds = (EXP2_SEEDS[:2], REF_SEEDS[:2]) if smoke else (EXP2_SEEDS, REF_SEEDS)
    timing = [j for e, r in zip(e_seeds, r_seeds)
              for j in (Job("exp2", 3, e, "timing"), Job("reference", EXP2_N_TRAIN, r, "timing"))]
    depth = [] if smoke else [Job("exp2", L, s, "depth") for L in (12, 9, 6, DEEP) for s in e_seeds]
    published = [Job("reference", ALL_TRAIN, s, "reference_50000") for s in r_seeds]
    phases = [("timing", 1, timing), ("depth", None, depth), ("reference_50000", 1, published)]
    labels = [j.label for _, _, jobs in phases for j in jobs]
    unknown = [label for label in only if label not in labels]
    if unknown:
        raise ValueError(f"--only: unknown job(s) {unknown}; valid: {', '.join(labels)}")
    return [(phase, width, [j for j in jobs if not only or j.label in only]) for phase, width, jobs in phases]


def simulate(workers: int = 4, smoke: bool = False) -> Dict[str, Any]:
    """The plan's expected timeline from ESTIMATE_S (phases in turn, each job on the first free
    slot): what --plan prints, so a session checks the fit before it spends device time."""
    t, timeline = 0.0, []
    for phase, width, jobs in plan(smoke):
        free = [t] * (width or workers)
        for job in jobs:
            start = min(free)
            end = start + ESTIMATE_S[(job.kind, job.size)]
            free[free.index(start)] = end
            timeline.append((job.label, phase, start, end))
        t = max([t, *free])
    return dict(total_s=t, jobs=timeline)


def epoch_test_options() -> Dict[str, Any]:
    """run_config's switch for bench.recipes.test_each_epoch, run_recipe's on-epoch-end hook: the
    test set after every epoch with the final test's TTA (for time to 94 %; nothing chosen on it)."""
    return {"test_each_epoch": True}


def exp2_kwargs(L: int, seed: int, data_dir: str, device: str, smoke: bool) -> Dict[str, Any]:
    """configs/exp2.yaml exactly (its L row; deeper rows follow the same pattern), one seed."""
    from training.grids.expand import expand_grid, load_grid_config

    over = {**(SMOKE_EXP2 if smoke else {}), "device": device,
            "options": {**(SMOKE_EXP2["options"] if smoke else {}), "data_dir": data_dir}}
    by_l = {r["layers_per_block"]: r for r in expand_grid(load_grid_config("exp2"), over)}
    return {**(by_l.get(L) or {**by_l[3], "layers_per_block": L}), "seed": seed}


def exp2_train_indices(data_dir: str, smoke: bool = False) -> List[int]:
    """exp2's own training images (its recipe's split of the 50000), so that the reference trains
    on the same images, as bar 1 asks."""
    from training.cnn.experiment import plan_run
    from training.data.cifar import load_cifar10, split_indices

    recipe, _ = plan_run({**exp2_kwargs(3, EXP2_SEEDS[0], data_dir, "cpu", smoke), "tracking": False})
    train, _ = split_indices(len(load_cifar10(data_dir).train_y), recipe.n_train, recipe.n_valid, recipe.split_seed)
    return train.tolist()


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True


def run_job(job: Job, data_dir: str, device: str, smoke: bool, scratch: str, keep: str | None, t0: float,
            precision: str) -> Dict:
    """One job in its worker process: its row (bench/exp2_record.py) plus when it ran; keep: a folder
    for the job's own result file (<label>.json, what --from-results reads). The reference at exp2's
    size trains on exp2's own training images."""
    start = time.time() - t0
    if job.kind == "exp2":
        from bench.gpu_check import run_config

        res, _ = run_config(exp2_kwargs(job.size, job.seed, data_dir, device, smoke), os.path.join(scratch, job.label),
                            data_dir, **(epoch_test_options() if job.phase == "timing" else {}))
        row = exp2_record.exp2_row(res)
    else:
        from bench import airbench_reference as ref

        n = SMOKE_REF_N[job.size] if smoke else job.size
        hyp = SMOKE_REF_HYP if smoke else None
        res = ref.train(data_dir, n, job.seed, (hyp or ref.HYP)["epochs"], log=lambda _: None, device=device,
                        test_each_epoch=True, precision=precision, hyp=hyp,
                        train_indices=exp2_train_indices(data_dir, smoke) if job.size == EXP2_N_TRAIN else None)
        row = exp2_record.reference_row(res)
    if keep:
        _write(os.path.join(keep, f"{job.label}.json"), res)
    return dict(row, label=job.label, phase=job.phase, start_s=round(start, 1), end_s=round(time.time() - t0, 1))


def data_record(data_dir: str) -> Dict[str, Any]:
    """The issue's `data`: which copy (from its digest, training/data/digest.py) and the digest."""
    from training.data.digest import cifar10_digest, data_kind

    digest = cifar10_digest(data_dir)
    return dict(copy=data_kind(digest), digest=digest, dir=data_dir,
                digest_of="sha256 over train images, train labels (uint8), test images, test labels, in file order")


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200', 'cpu' -> 'cpu': the <device> of exp2_<device>_<date>.json."""
    for token in name.lower().replace("nvidia", " ").split():
        if re.fullmatch(r"[a-z]+\d+[a-z]*", token):
            return token
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def default_out(device: str, folder: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured")) -> str:
    return os.path.join(folder, f"exp2_{device_slug(device)}_{datetime.date.today().isoformat()}.json")


def device_name(device: str = "auto") -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"


def out_path(arg: str | None, device: str) -> str:
    """--out as given, or exp2_<device>_<date>.json in the folder it names (default bench/measured/)."""
    if arg and not os.path.isdir(arg):
        return arg
    return default_out(device, *([arg] if arg else []))


def _write(path: str | None, report: Dict[str, Any]) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)


class Bar:
    """One run's state: finished rows, errors, jobs running or skipped, and the JSON they make."""

    def __init__(self, meta: Dict[str, Any], out: str | None, budget_s: float, smoke: bool, t0: float,
                 only: tuple = ()):
        self.meta, self.out, self.budget_s, self.smoke, self.t0, self.only = meta, out, budget_s, smoke, t0, only
        self.rows, self.errors, self.skipped, self.running = [], {}, {}, {}

    def elapsed(self) -> float:
        return time.time() - self.t0

    def fits(self, job: Job) -> bool:
        """Start a job only if its estimate fits what is left of the budget; else say so."""
        need, left = (0 if self.smoke else ESTIMATE_S[(job.kind, job.size)]), self.budget_s - self.elapsed()
        if need > left:
            self.skipped[job.label] = f"budget: about {need} s needed, {max(left, 0):.0f} s left"
        return need <= left

    def report(self) -> Dict[str, Any]:
        m = self.meta
        planned = [j.label for _, _, jobs in plan(self.smoke, self.only) for j in jobs]
        done = {r["label"] for r in self.rows} | set(self.errors) | set(self.skipped) | set(self.running)
        extra = {k: v for k, v in m.items() if k not in ("data", "device", "torch")}
        return exp2_record.assemble(
            self.rows, m["data"], m["device"], m["torch"], **extra, wall_s=round(self.elapsed(), 1),
            errors=self.errors, skipped=self.skipped, running=self.running,
            not_started=[label for label in planned if label not in done])

    def save(self) -> None:
        _write(self.out, self.report())


class InlinePool(contextlib.AbstractContextManager):
    """ProcessPoolExecutor's submit, run at once in this process (what `inline` runs use)."""

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return future


def run_phase(bar: Bar, pool, jobs: List[Job], width: int, job_args: tuple) -> None:
    """Hand out jobs in order, at most `width` at a time; one failure never loses the others."""
    pending, active = list(jobs), {}
    while pending or active:
        while pending and len(active) < width:
            job = pending.pop(0)
            if bar.fits(job):
                active[pool.submit(run_job, job, *job_args, bar.t0, bar.meta["reference_precision"])] = job
                bar.running[job.label] = round(bar.elapsed(), 1)
        bar.save()
        if not active:
            return
        done, _ = wait(active, return_when=FIRST_COMPLETED)
        for future in done:
            job = active.pop(future)
            bar.running.pop(job.label, None)
            try:
                bar.rows.append(future.result())
                print(f"{bar.elapsed():7.1f} s  {job.label}: test {bar.rows[-1]['test_acc']} %", flush=True)
            except Exception as e:
                bar.errors[job.label] = f"{type(e).__name__}: {e}"
                print(f"{job.label} failed: {bar.errors[job.label]}", flush=True)
        bar.save()


def run(data_dir: str, workers: int = 4, budget_s: float = float("inf"), out: str | None = None,
        smoke: bool = False, device: str = "auto", precision: str = "auto", notes=(), inline: bool = False,
        keep: str | None = None, started: float | None = None, only: tuple = ()) -> Dict[str, Any]:
    """The whole plan (or just the `only` labels); returns the record (also written to `out` after
    every job). inline: every job in this process, one at a time (the tests: no worker start-up; timings then share a warm process).
    keep: a folder for each job's own result file. started: when the budget began (default: now)."""
    started = time.time() if started is None else started
    import torch

    from training.grids.expand import load_grid_config

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":  # the reference under the same autocast as exp2 (bf16 on CUDA, fp32 on a CPU)
        precision = "bf16" if device.startswith("cuda") else "fp32"
    meta = dict(device=device_name(device), torch=torch.__version__, data=data_record(data_dir),
                date=datetime.date.today().isoformat(), smoke=smoke, workers=workers,
                budget_s=None if budget_s == float("inf") else budget_s,
                reference_precision=precision, recipe=load_grid_config("exp2"), notes=list(notes),
                plan={phase: dict(concurrent=width or workers, jobs=[j.label for j in jobs])
                      for phase, width, jobs in plan(smoke, only) if jobs})
    if keep:
        os.makedirs(keep, exist_ok=True)
    bar = Bar(meta, out, budget_s, smoke, started, only)
    bar.save()  # a run killed before its first job still says what it planned
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory(prefix="archlab-exp2-bar-") as scratch, \
            (InlinePool() if inline else ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_init,
                                                             initargs=(threads,), max_tasks_per_child=1)) as pool:
        for _, width, jobs in plan(smoke, only):
            run_phase(bar, pool, jobs, width or workers, (data_dir, device, smoke, scratch, keep))
    bar.save()
    return bar.report()


def from_results(paths: List[str], data_dir: str, device: str | None = None, notes=()) -> Dict[str, Any]:
    """The record from result files already written (airbench_reference.py --out, cnn_experiment's
    results JSON), without training: how the CPU runs are recorded. The data is --data-dir's; exp2
    results files that record their own data (kind) must agree with it."""
    import torch

    rows = []
    for path in paths:
        with open(path) as f:
            rows.append(dict(exp2_record.row_of(json.load(f)), source=os.path.basename(path)))
    data = dict(data_record(data_dir), measured_on="the --data-dir given; exp2 results files checked against it")
    said = {r["data_kind"] for r in rows if r.get("data_kind")} - {"unknown"}
    if said and said != {data["copy"]}:
        raise ValueError(f"the exp2 result files were trained on {sorted(said)} data, but --data-dir "
                         f"{data_dir} holds the {data['copy']} copy")
    torch_version = next((r["torch"] for r in rows if r.get("torch")), torch.__version__)
    device = device or next((r["device"] for r in rows if r.get("device")), "unknown")
    return exp2_record.assemble(rows, data, device, torch_version,
                                date=datetime.date.today().isoformat(), from_results=True, notes=list(notes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/tmp/cifar")
    ap.add_argument("--workers", type=int, default=4, help="processes sharing the GPU in the depth phase")
    ap.add_argument("--budget", type=float, default=float("inf"),
                    help="seconds: a job starts only if its estimated time still fits")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reference-precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 autocast on CUDA (as exp2 trains), fp32 on a CPU")
    ap.add_argument("--out", help="file, or folder for exp2_<device>_<date>.json (default: bench/measured/)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, 1 epoch, 2 seeds, L=3: checks the script on a CPU")
    ap.add_argument("--from-results", nargs="+", metavar="FILE", help="assemble the record from these result files")
    ap.add_argument("--device-name", help="with --from-results: the device the files were measured on")
    ap.add_argument("--plan", action="store_true", help="print the expected timeline (ESTIMATE_S) and exit")
    ap.add_argument("--keep-results", metavar="DIR", help="also write each job's own result file to DIR")
    ap.add_argument("--only", nargs="+", default=[], metavar="LABEL",
                    help="run just these jobs (e.g. reference_n45000_s0 exp2_L3_s42: the CPU record)")
    ap.add_argument("--note", action="append", default=[], help="a line for the record's notes (repeatable)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    try:
        plan(args.smoke, tuple(args.only))
    except ValueError as e:
        ap.error(str(e))
    if args.plan:
        sim = simulate(args.workers, args.smoke)
        for label, phase, start, end in sim["jobs"]:
            print(f"{start:6.0f} -> {end:4.0f} s  {phase:16s} {label}")
        print(f"expected total {sim['total_s']:.0f} s with {args.workers} workers (budget {args.budget:g} s)")
        return 0
    if args.from_results:
        report = from_results(args.from_results, args.data_dir, args.device_name, args.note)
        out = out_path(args.out, report["device"])
        _write(out, report)
    else:
        out = out_path(args.out, device_name(args.device))
        report = run(args.data_dir, args.workers, args.budget, out, args.smoke, args.device,
                     args.reference_precision, args.note, keep=args.keep_results, started=STARTED,
                     only=tuple(args.only))
    print(f"wrote {out}")
    print("\n".join(exp2_record.summary_lines(report)), flush=True)
    return 0 if not report.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
