"""Run every CPU benchmark, print a table, write the figures as JSON.

    python -m bench --data-dir /tmp/cifar            # full: ~3 min on the idle 2-core CPU, 15-20 under load
    python -m bench --data-dir /tmp/cifar --quick    # short version
    python bench/run_all.py --data-dir /tmp/cifar --only train,data

The JSON (default bench/measured/cpu_<date>.json, cpu_<date>_quick.json with --quick) is
rewritten after every benchmark, so an interrupted run still leaves what it measured; a
benchmark that fails is recorded with its error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # `python bench/run_all.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import break_even_text, format_table, load_average, machine_info  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
STEPS = ("train", "data", "mlflow", "e2e", "compile")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes, Part 1 grid at 1 epoch")
    ap.add_argument("--data-dir", default=None,
                    help="folder holding cifar-10-batches-py/ (default: archlab's: $ARCHLAB_DATA, then "
                         "~/.cache/archlab/data)")
    ap.add_argument("--out", default=None, help="JSON file (default: bench/measured/cpu_<date>[_quick].json)")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = ap.parse_args(argv)
    unknown = set(args.only.split(",")) - set(STEPS)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    return args


def default_out(quick: bool) -> str:
    name = f"cpu_{time.strftime('%Y-%m-%d')}{'_quick' if quick else ''}.json"
    return os.path.join(BENCH_DIR, "measured", name)


def check_data(data_dir: Optional[str]) -> str:
    """Fail in a second, with archlab's own message, rather than minutes in."""
    from training.data.cifar import load_cifar10, resolve_data_dir

    load_cifar10(data_dir)
    return str(resolve_data_dir(data_dir))


class Report:
    """The JSON document, saved after every step."""

    def __init__(self, path: str, meta: Dict[str, Any]):
        self.path, self.doc = path, dict(meta)
        self.t0 = time.perf_counter()

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run one benchmark; record its result or its error, never let it stop the others."""
        print(f"\n== {key}", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # one broken benchmark must not lose the other figures
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
        self.doc[key] = result
        self.doc.setdefault("step_wall_s", {})[key] = round(time.perf_counter() - t0, 1)
        self.save()
        return result

    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.doc["load_average_now"] = load_average()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(self.doc, f, indent=1)


def run_steps(args: argparse.Namespace, report: Report, data_dir: str) -> None:
    from bench import data_path, end_to_end, mlflow_logging, train_step

    steps = args.only.split(",")
    train: Dict[str, Any] = {}
    if "train" in steps:
        train = report.step("train_step", lambda: train_step.run(data_dir, args.quick))
    if "data" in steps:
        report.step("data_path", lambda: data_path.run(data_dir, args.quick))
    if "mlflow" in steps:
        small = next((m for m in train.get("models", []) if m["model"].startswith("CNN K=[32]")), None)
        report.step("mlflow_logging", lambda: mlflow_logging.run(
            data_dir, small["epoch_45000_train_s"] if small else None,
            small["epoch_45000_train_s_fastest_call"] if small else None, quick=args.quick))
    if "e2e" in steps:
        report.step("part1_main", lambda: end_to_end.part1_main(args.quick))
        report.step("exp1_epoch", lambda: end_to_end.exp1_epoch(data_dir, args.quick))
    if "compile" in steps:
        report.step("compile", lambda: end_to_end.compile_cost(data_dir, args.quick))


# ----------------------------------------------------------------------------------------- tables
def summary_rows(doc: Dict[str, Any]) -> List[List[Any]]:
    """One row per figure: what, archlab, reference, ratio, target, verdict."""
    rows: List[List[Any]] = []
    train = doc.get("train_step", {})
    probe = train.get("overhead_probe")
    for m in train.get("models", []):
        lo, hi = m["ratio_ci95"]
        rows.append([f"train step, {m['model']}", f"{m['archlab_images_per_s']:,.0f} img/s",
                     f"{m['bare_images_per_s']:,.0f} img/s (bare loop)",
                     f"wall {m['ratio']:.3f} (95% CI {lo:.2f}-{hi:.2f}); overhead bound >= "
                     f"{m['implied_ratio_from_overhead']:.4f}",
                     ">= 0.97", f"wall {m['verdict']}; overhead {m['overhead_verdict']}"])
    if probe:
        lo, hi = probe["overhead_us_ci95"]
        rows.append(["trainer overhead per batch (1 thread, linear probe model)",
                     f"{probe['overhead_us_per_batch']:.0f} us (95% CI {lo:.0f}-{hi:.0f})",
                     f"{probe['bare_us_per_batch']:.0f} us/batch (bare, probe model)", "", "", ""])
    data = doc.get("data_path", {})
    for key, label in (("idle", "no busy-loop"), ("one_core_busy", "a busy-loop process on one core")):
        row = data.get(key)
        if row:
            rows.append([f"CIFAR-10 data path, crop+flip, {data['images_per_call']} images, {label} (other jobs "
                         f"held {row['background_cores']['archlab']} cores)",
                         f"{row['archlab_images_per_s']:,.0f} img/s (DeviceLoader, {data['torch_threads']} threads)",
                         f"{row['torchvision_images_per_s']:,.0f} img/s (torchvision DataLoader)",
                         f"{row['ratio']:.1f}x", ">= 20x", row["verdict"]])
    ml = doc.get("mlflow_logging", {})
    if "logging_share_pct" in ml:
        p = ml["paired"]
        fastest = ml.get("vs_benchmark1_fastest_epoch")
        rows.append([f"MLflow logging, {ml['n_runs']} runs x {ml['epochs_per_run']} epochs, loopback server",
                     f"{ml['grid_logging_wall_s']:.1f} s ({ml['per_epoch_log_batch_ms']:.0f} ms per epoch's log_batch)",
                     f"{p['grid_training_s']:,.0f} s training timed beside it (K=[32] L=2, median "
                     f"{p['epoch_train_s']:.0f} s/epoch)",
                     f"{ml['logging_share_pct']:.3f} % ({p['share_with_artifacts_pct']:.3f} % with per-run artifacts; "
                     f"worst single run {p['max_share_pct_of_a_run']:.2f} %)"
                     + (f"; vs bench 1's fastest epoch ({fastest['epoch_train_s']:.0f} s): "
                        f"{fastest['logging_share_pct']:.3f} %" if fastest else ""),
                     "<= 1 %", ml["verdict"]])
    p1 = doc.get("part1_main", {})
    if "wall_s" in p1:
        rows.append([f"Part 1 main end to end (grid epochs: {p1['grid_epochs']})", f"{p1['wall_s']:.0f} s wall",
                     f"other jobs: {p1['background_cores']} cores busy", "", "", ""])
    e1 = doc.get("exp1_epoch", {})
    if "full_epoch_train_s" in e1:
        rows.append([f"{e1['config']} epoch on CPU (45000 images; median of {e1['epochs_timed']} epochs of "
                     f"{e1['batches_per_epoch']} batches)",
                     f"{e1['full_epoch_train_s']:.0f} s train + {e1['valid_5000_s']:.1f} s validation "
                     f"(fastest epoch {e1['full_epoch_train_s_fastest']:.0f} s)",
                     f"{e1['train_images_per_s']:,.0f} img/s", "", "", ""])
    cc = doc.get("compile", {})
    if "compile_overhead_s" in cc:
        rows.append([f"torch.compile, {cc['config']} ({cc['epochs']} epochs of {cc['batches_per_epoch']} batches)",
                     f"{cc['compiled']['steady_train_images_per_s']:,.0f} img/s compiled, after "
                     f"{cc['compile_overhead_s']:.1f} s of compiling",
                     f"{cc['eager']['steady_train_images_per_s']:,.0f} img/s eager",
                     f"{cc['steady_speedup']:.2f}x steady; break-even: {break_even_text(cc)}", "", ""])
    for key in ("train_step", "data_path", "mlflow_logging", "part1_main", "exp1_epoch", "compile"):
        if isinstance(doc.get(key), dict) and "error" in doc[key]:
            rows.append([key, "ERROR", doc[key]["error"][:120], "", "", ""])
    return rows


def print_tables(doc: Dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"\nCPU: {m['cpu']} ({m['logical_cpus']} logical CPUs, {', '.join(m['cpu_flags'])}), torch {m['torch']}, "
          f"{m['torch_threads']} threads; load average at start {m['load_average_at_start']}, "
          f"at end {doc.get('load_average_now')}")
    print(format_table(["benchmark", "archlab", "reference", "ratio / share", "target", "verdict"],
                       summary_rows(doc)))
    print(f"\nFigures written to {doc['json_path']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = check_data(args.data_dir)
    path = args.out or default_out(args.quick)
    report = Report(path, dict(kind="cpu", quick=args.quick, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               data_dir=data_dir, json_path=os.path.relpath(path), machine=machine_info()))
    run_steps(args, report, data_dir)
    report.save()
    print_tables(report.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
