"""The whole programme in one command: Part 1, every CIFAR-10 grid, then the report.

    python -m entrypoints.reproduce                       # on a GPU machine
    python -m entrypoints.reproduce --allow-cpu true --n-train 30000 --epochs 2   # CPU, told so

Everything is checked first (configs, every grid configuration, the data), then it runs under one
parent run `reproduce`. Grids resume like their own entry points: a rerun skips what finished.
On a machine without a GPU it refuses the CIFAR grids unless --allow-cpu true says otherwise.
"""
from __future__ import annotations

import time

import click
import torch

from entrypoints.common import (auto_is_none, device_list, print_where, resolve_device, run_cli, seeds_option, start,
                                tracking_options, worker_count, zero_is_none)
from entrypoints.part1 import load_part1_config

ALL_GRIDS = "test_run,exp1_1,exp1_2,exp1_3,exp1_4,exp2"


def _grid_list(ctx, param, value: str):
    from training.grids.expand import GRIDS

    names = [g.strip() for g in value.split(",") if g.strip()]
    unknown = [g for g in names if g not in GRIDS]
    if unknown:
        raise click.BadParameter(f"unknown grids {unknown}; valid: {', '.join(GRIDS)} (comma-separated, or '' for none)")
    return names


@click.command()
@click.option("--grids", default=ALL_GRIDS, show_default=True, callback=_grid_list,
              help="CIFAR grids to run, comma-separated ('' runs only Part 1 and the report).")
@click.option("--allow-cpu", type=click.BOOL, default=False, show_default=True,
              help="true: run the CIFAR grids even without a GPU (full size takes days on a CPU).")
@click.option("--part1-config", default="part1", show_default=True, help="Part 1 config (name or YAML path).")
@click.option("--epochs", type=int, default=None, callback=zero_is_none, help="Max epochs per CIFAR configuration.")
@click.option("--bs-train", type=int, default=None, callback=zero_is_none)
@click.option("--n-train", type=int, default=None, callback=zero_is_none)
@click.option("--n-valid", type=int, default=None, callback=zero_is_none)
@click.option("--allow-small", type=click.BOOL, default=False, help="true: allow < 30000/5000 images (smoke runs).")
@click.option("--data-dir", default=None, callback=auto_is_none, help="Folder holding cifar-10-batches-py.")
@click.option("--download/--no-download", default=False)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=None, callback=zero_is_none,
              help="Worker processes per CIFAR grid (training.grids.parallel; default: 4 per GPU of >= 32 GiB, else 1 "
                   "per device). They share a GPU, whose launch-bound exp1 nets leave it mostly idle: 4 workers "
                   "trained the 34 CIFAR configurations in 262 s on one H200.")
@click.option("--devices", default=None, callback=device_list,
              help="Comma-separated devices handed to the workers round-robin, e.g. cuda:0,cuda:1.")
@click.option("--cuda-graphs", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="CUDA-graphed training steps (see the grid command's --cuda-graphs).")
@click.option("--out", default="reports", show_default=True, help="Where the report goes.")
@seeds_option
@tracking_options
def cli(grids, allow_cpu, part1_config, epochs, bs_train, n_train, n_valid, allow_small, data_dir, download, device,
        workers, devices, cuda_graphs, out, seeds, tracking_uri, experiment):
    """Part 1, the CIFAR-10 grids and the answers report, in one go."""
    from analysis.report import build_report, summary
    from training.tracking import runs as tracking
    from training.grids.expand import plan_grid, run_grid
    from training.part1.runs import run_part1

    device = resolve_device(device)
    workers = worker_count(workers, devices, device)
    if grids and device == "cpu" and not allow_cpu:
        raise click.UsageError(
            f"no GPU here, and the CIFAR grids ({', '.join(grids)}) take days at full size on a CPU. Run them on a "
            f"GPU machine, or pass --allow-cpu true with small settings (e.g. --n-train 30000 --epochs 2), or "
            f"--grids '' for Part 1 and the report only.")
    cfg = load_part1_config(part1_config)
    options = {k: v for k, v in dict(n_train=n_train, n_valid=n_valid, data_dir=data_dir, download=download or None,
                                     allow_small=allow_small or None,
                                     cuda_graphs=None if cuda_graphs == "auto" else cuda_graphs).items()
               if v is not None}
    overrides = dict(epochs=epochs, bs_train=bs_train, device=device, options=options)
    uri = start(tracking_uri, experiment)
    try:
        for name in grids:  # every configuration of every grid, and the data, before anything trains
            plan_grid(name, overrides, seeds=seeds)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None

    t0 = time.perf_counter()
    with tracking.open_run("reproduce", tags={tracking.GRID_TAG: "reproduce", tracking.ROLE_TAG: "parent"}):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # Part 1's tiny batches: see entrypoints.part1
        run_part1(cfg, device=device, seeds=seeds)
        torch.set_num_threads(threads)
        for name in grids:
            run_grid(name, overrides, workers=workers, devices=devices, seeds=seeds)
        result = build_report(out)
    click.echo(summary(result))
    click.echo(f"Reproduced in {time.perf_counter() - t0:.0f} s on {device}.")
    print_where(uri)


if __name__ == "__main__":
    run_cli(cli)
