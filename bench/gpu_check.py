"""One-shot GPU check (performance issue, benchmark 5): run it on a single-GPU machine.

    python bench/gpu_check.py --npz PATH/cifar10-jpeg.npz --out gpu_check.json --deadline 480
    python bench/gpu_check.py --data-dir ~/.cache/archlab/data --out gpu_check.json

In priority order, each step skipped once `--deadline` seconds have passed, the JSON file
rewritten after every step (so a killed run still leaves its figures):
  1. epoch time of every configuration of test_run, exp1_1..exp1_4 at full size (2 short
     epochs each, the second one timed; CUDA-graphed steps, as the runs train) and the
     extrapolated time of the whole programme; then the same epochs eager for three of them
     (what the graphs buy);
  2. grid workers sharing the GPU (bench/gpu_sharing.py): aggregate throughput of 1/2/4/8
     concurrent workers, and the exp1 time divided by the best worst-case speedup;
  3. torch.compile against eager (2 short epochs: the first carries the compile): exp1_1_L2_K32
     (launch-bound: eager, reduce-overhead, default) and exp2 L=3 (eager, default);
  4. exp2 (YourCNN) at full size, 10 epochs x 45000 images: L=3, 6, 9, 12, then deeper rows
     (L=18, L=30) while time remains; test accuracy (also after every epoch, with the final
     test's TTA), wall time, and for the best configuration the time to 90 / 93 / 94 % test
     accuracy (DAWNBench-style: the first epoch that reaches it).
Runs without MLflow (tracking off): it measures the training path only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.recipes import train_untracked  # noqa: E402
from training.experiments import experiment_name_of  # noqa: E402
from training.grids.expand import expand_grid, load_grid_config  # noqa: E402

N_TRAIN, N_VALID = 45000, 5000


def run_config(kwargs, out_dir, data_dir, compile=False, test_each_epoch=False, **extra):
    """Train one configuration untracked (bench.recipes); returns (its results JSON, wall seconds)."""
    kw = dict(kwargs)
    kw.update(out_dir=out_dir, data_dir=data_dir, print_every=0, log_model=False,
              checkpoint_dir=os.path.join(out_dir, "ckpt"), restart=True, **extra)
    t0 = time.perf_counter()
    path = train_untracked(kw, compile=compile, each_epoch_test=test_each_epoch)
    wall = time.perf_counter() - t0
    with open(path) as f:
        res = json.load(f)
    return res, wall


TIME_TO_TEST_ACC = (90.0, 93.0, 94.0)


def time_to_accuracy(cumulative_s, accuracies, targets=TIME_TO_TEST_ACC):
    """DAWNBench-style: the training time (epochs' train + validation, not the extra test passes)
    at the end of the first epoch whose test accuracy reaches each target; None if none does."""
    out = {}
    for target in targets:
        hit = next((t for t, acc in zip(cumulative_s, accuracies) if acc >= target), None)
        out[f"{target:g}"] = hit
    return out


def summarise_training(res, wall):
    epochs = res["epochs"]
    cumulative, t = [], 0.0
    for e in epochs:
        t += e["epoch_time_s"]
        cumulative.append(round(t, 2))
    summary = dict(test_acc=res["final_test"]["test_acc"], best_valid_acc=res["final_test"]["best_valid_acc"],
                   n_params=res["final_test"]["n_params"], wall_s=round(wall, 1), epochs=len(epochs),
                   valid_acc_per_epoch=[round(a, 2) for a in res["results"]["test_acc"]],
                   cumulative_epoch_time_s=cumulative,
                   train_images_per_s=round(epochs[-1]["train_images_per_s"]))
    if all("epoch_test_acc" in e for e in epochs):
        summary["test_acc_per_epoch"] = [round(e["epoch_test_acc"], 2) for e in epochs]
        summary["time_to_test_acc_s"] = time_to_accuracy(cumulative, summary["test_acc_per_epoch"])
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", help="cifar10-jpeg.npz to unpack first (with make_cifar10.py beside it)")
    ap.add_argument("--data-dir", default="/tmp/cifar")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--deadline", type=float, default=480.0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script itself on a CPU")
    args = ap.parse_args()
    global N_TRAIN, N_VALID
    smoke = {}
    if args.smoke:
        N_TRAIN, N_VALID = 200, 50
        smoke = dict(epochs=1, allow_small=True, n_train=N_TRAIN, bs_train=32)
    t_start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "exp2": {}, "epoch_times": {}, "notes": []}

    def save():
        report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    def time_left():
        return args.deadline - (time.perf_counter() - t_start)

    if args.npz:
        script = os.path.join(os.path.dirname(os.path.abspath(args.npz)), "make_cifar10.py")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, script, args.data_dir], check=True)
        report["unpack_s"] = round(time.perf_counter() - t0, 1)
    out_dir = "/tmp/gpu_check_results"
    torch.backends.cudnn.benchmark = True

    exp2 = expand_grid(load_grid_config("exp2"), dict(options=dict(n_train=N_TRAIN, n_valid=N_VALID)))
    by_l = {r["layers_per_block"]: r for r in exp2}

    def exp2_run(L, min_left=60.0, **model_overrides):
        base = dict(by_l.get(L) or {**by_l[3], "layers_per_block": L})
        label = experiment_name_of(base) + "".join(f"_{k}{v}" for k, v in model_overrides.items())
        if time_left() < min_left:
            report["notes"].append(f"skipped {label}: deadline")
            return
        if model_overrides:
            base["model_kwargs"] = {**base["model_kwargs"], **model_overrides}
        try:
            res, wall = run_config({**base, **smoke}, out_dir, args.data_dir, test_each_epoch=True)
            report["exp2"][label] = summarise_training(res, wall)
            finished = {k: v for k, v in report["exp2"].items() if "test_acc" in v}
            best = max(finished, key=lambda k: finished[k]["test_acc"])
            report["best_yourcnn"] = dict(config=best, test_acc=finished[best]["test_acc"],
                                          time_to_test_acc_s=finished[best].get("time_to_test_acc_s"))
        except Exception as e:  # keep going: one failure must not lose the other figures
            report["exp2"][label] = {"error": f"{type(e).__name__}: {e}"}
        print(label, report["exp2"][label], flush=True)
        save()

    def time_epoch(kwargs, planned_max_epochs, **extra):
        """A configuration's full-size epoch time, from its second short epoch."""
        # 40 timed batches per epoch is below the programme's image floor on purpose: allow_small
        res, wall = run_config({**kwargs, "epochs": 2, "early_stopping": None, "allow_small": True,
                                "batches": 40 if kwargs.get("batches") is None else kwargs["batches"],
                                **{k: v for k, v in smoke.items() if k not in ("epochs", "bs_train")}},
                               out_dir, args.data_dir, **extra)
        e2 = res["epochs"][-1]
        bs, n_train = kwargs["bs_train"], kwargs.get("n_train") or (50000 - N_VALID)
        images = n_train if kwargs.get("batches") is None else kwargs["batches"] * bs
        return dict(train_images_per_s=round(e2["train_images_per_s"]),
                    full_epoch_train_s=round(images / e2["train_images_per_s"], 2),
                    planned_max_epochs=planned_max_epochs,
                    valid_s=round(e2["epoch_time_s"] - 40 * bs / e2["train_images_per_s"], 2)
                    if kwargs.get("batches") is None else None, execution=res.get("execution"))

    # 1. epoch time per configuration of every exp1 grid (and test_run), at full size, as configured
    #    (CUDA-graphed training steps where cuda_graphs=auto allows them)
    exp1 = {}
    for grid in ("test_run", "exp1_1", "exp1_2", "exp1_3", "exp1_4"):
        cfg = load_grid_config(grid)
        for kwargs in expand_grid(cfg, dict(options=dict(n_valid=N_VALID)))[:1 if args.smoke else None]:
            label = experiment_name_of(kwargs)
            exp1[label] = (kwargs, cfg["epochs"])
            if time_left() < 20:
                report["notes"].append(f"skipped timing {label}: deadline")
                continue
            try:
                report["epoch_times"][label] = time_epoch(kwargs, cfg["epochs"])
            except Exception as e:
                report["epoch_times"][label] = {"error": f"{type(e).__name__}: {e}"}
            save()
    exp1_total = sum(v["full_epoch_train_s"] * v["planned_max_epochs"] for v in report["epoch_times"].values()
                     if "full_epoch_train_s" in v)
    report["exp1_extrapolated_train_s_at_max_epochs"] = round(exp1_total, 1)
    save()

    # 1b. what the CUDA graphs buy: the same epochs eager, for the lightest, a deep plain and a ResNet config
    for label in ("exp1_1_L2_K32", "exp1_1_L16_K64", "exp1_4_L8_K32"):
        graphed = report["epoch_times"].get(label, {})
        if label not in exp1 or "full_epoch_train_s" not in graphed or time_left() < 60:
            report["notes"].append(f"skipped eager timing of {label}")
            continue
        try:
            eager = time_epoch(*exp1[label], cuda_graphs="off")
            report.setdefault("cuda_graph_speedup", {})[label] = dict(
                eager_epoch_s=eager["full_epoch_train_s"], graphed_epoch_s=graphed["full_epoch_train_s"],
                speedup=round(eager["full_epoch_train_s"] / max(graphed["full_epoch_train_s"], 1e-9), 2))
        except Exception as e:
            report.setdefault("cuda_graph_speedup", {})[label] = {"error": f"{type(e).__name__}: {e}"}
        save()

    # 2. grid workers sharing the one GPU: launch-bound exp1 nets leave it mostly idle
    if time_left() > 90:
        from bench import gpu_sharing

        tiny = dict(batches=dict.fromkeys(gpu_sharing.CASES, 2), n_train=N_TRAIN, warmup=1) if args.smoke else {}
        sharing = gpu_sharing.run(args.data_dir, "cuda" if torch.cuda.is_available() else "cpu",
                                  [1, 2] if args.smoke else [1, 2, 4, 8], deadline_s=time_left() - 60, **tiny)
        report["gpu_sharing"] = sharing
        speedups = sharing["worst_case_speedup_by_workers"]
        if speedups and exp1_total:
            w, s = max(speedups.items(), key=lambda kv: kv[1])
            report["exp1_extrapolated_train_s_best_workers"] = dict(
                workers=int(w), worst_case_speedup=s, train_s=round(exp1_total / s, 1))
        save()
    else:
        report["notes"].append("skipped GPU sharing: deadline")

    # 3. torch.compile: the first epoch pays the compile; is the steady epoch faster enough to repay it?
    for label, base, modes in (("exp1_1_L2_K32", expand_grid(load_grid_config("exp1_1"))[0],
                                (False, "reduce-overhead", True)), ("exp2_L3", by_l[3], (False, True))):
        timing = {}
        for compiled in modes:
            if time_left() < 60:
                report["notes"].append(f"skipped compile={compiled} timing of {label}: deadline")
                continue
            try:
                res, wall = run_config({**base, "epochs": 2, "early_stopping": None, "allow_small": True,
                                        "batches": 20, "n_valid": N_VALID,
                                        **{k: v for k, v in smoke.items() if k != "epochs"}},
                                       out_dir, args.data_dir, compile=compiled)
                timing[f"compile={compiled}"] = dict(
                    epoch_s=[round(e["epoch_time_s"], 2) for e in res["epochs"]],
                    train_images_per_s=round(res["epochs"][-1]["train_images_per_s"]))
            except Exception as e:
                timing[f"compile={compiled}"] = {"error": f"{type(e).__name__}: {e}"}
        report.setdefault("compile", {})[label] = timing
        save()

    # 4. exp2 at full size (gpu_session.sh's sweep trains L=3 and L=6 first, so there these come last)
    exp2_run(3)
    exp2_run(6)
    exp2_run(9)
    exp2_run(12)
    exp2_run(6, min_left=90, width_mult=3)
    exp2_run(18, min_left=90)
    exp2_run(30, min_left=120)
    save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
