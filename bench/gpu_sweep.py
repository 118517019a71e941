"""Recipe sweep for YourCNN on one GPU: variants of the exp2 configuration, each trained at full
size (10 epochs x 45000 images) and judged on the test set. Used to choose configs/exp2.yaml.

    python bench/gpu_sweep.py --npz PATH/cifar10-jpeg.npz --out sweep.json --deadline 270 \
        --variant '{"L": 3, "model_kwargs": {"width_mult": 4}, "lr": 0.8}' ...
A variant sets L, top-level cnn_experiment arguments (lr, reg, bs_train, epochs) and options;
model_kwargs are merged into the config's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.gpu_check import run_config, summarise_training  # noqa: E402
from training.grids.expand import expand_grid, load_grid_config  # noqa: E402


def variant_kwargs(base: dict, variant: dict) -> dict:
    """exp2's L=3 configuration with one variant applied (L, model_kwargs merged, the rest set)."""
    v = dict(variant)
    kw = {**base, "layers_per_block": v.pop("L", 3)}
    kw["model_kwargs"] = {**kw["model_kwargs"], **v.pop("model_kwargs", {})}
    kw.update(v)
    return kw


def check_variants(base: dict, variants: list, data_dir: str) -> None:
    """Every variant through cnn_experiment's own checks (layers on the meta device, data located)
    before the first one trains: a typo must not cost a GPU loan's minutes."""
    from training.cnn.experiment import cnn_experiment

    for v in variants:
        try:
            cnn_experiment(**{**variant_kwargs(base, v), "data_dir": data_dir, "tracking": False, "dry_run": True})
        except Exception as e:
            raise SystemExit(f"bad sweep variant {json.dumps(v)}: {type(e).__name__}: {e}") from None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz")
    ap.add_argument("--data-dir", default="/tmp/cifar")
    ap.add_argument("--out", default="sweep.json")
    ap.add_argument("--deadline", type=float, default=270.0)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--variants-file", help="a JSON list of variants")
    args = ap.parse_args()
    if args.variants_file:
        with open(args.variants_file) as f:
            args.variant += [json.dumps(v) for v in json.load(f)]
    t0 = time.perf_counter()
    if args.npz:
        script = os.path.join(os.path.dirname(os.path.abspath(args.npz)), "make_cifar10.py")
        subprocess.run([sys.executable, script, args.data_dir], check=True)
    import torch

    torch.backends.cudnn.benchmark = True
    base = {r["layers_per_block"]: r for r in expand_grid(load_grid_config("exp2"))}[3]
    variants = [json.loads(spec) for spec in args.variant]
    check_variants(base, variants, args.data_dir)
    results = []
    for v in variants:
        if time.perf_counter() - t0 > args.deadline:
            results.append({"variant": v, "skipped": "deadline"})
            continue
        try:
            res, wall = run_config(variant_kwargs(base, v), "/tmp/sweep", args.data_dir, test_each_epoch=True)
            out = summarise_training(res, wall)
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        results.append({"variant": v, **out})
        print(json.dumps(results[-1]), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
