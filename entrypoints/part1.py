"""Part 1 entry points: `main` (the whole Part 1), `first-classifier`, `mlp-grid`.

    python -m entrypoints.part1 main                 # what `mlflow run . -e main` runs
    python -m entrypoints.part1 mlp-grid --epochs 10
"""
from __future__ import annotations

import time

import click
import torch

from entrypoints.common import print_where, resolve_device, run_cli, seeds_option, start, tracking_options, zero_is_none

CONFIG_HELP = "Part 1 config: a name in configs/ or a YAML path."


def load_part1_config(config: str):
    """The Part 1 config, fully checked (a bad value is a usage error before any training)."""
    from training.config import load_config
    from training.part1.runs import check_part1_config

    try:
        cfg = load_config(config)
        check_part1_config(cfg)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise click.UsageError(f"bad config {config!r}: {e}") from None
    return cfg


@click.group()
def cli():
    """archlab Part 1: MLPs on the synthetic non-iid 2D data, tracked in MLflow."""


def part1_command(name: str, epochs_help: str):
    """A Part 1 command: --config, --epochs, --device and the tracking options, then set-up
    (config checked, device resolved, store reached) before the body runs with (cfg, epochs, device, seeds)."""

    def wrap(body):
        @cli.command(name, help=body.__doc__)
        @click.option("--config", default="part1", show_default=True, help=CONFIG_HELP)
        @click.option("--epochs", type=int, default=None, callback=zero_is_none, help=epochs_help)
        @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
        @seeds_option
        @tracking_options
        def command(config, epochs, device, seeds, tracking_uri, experiment):
            cfg, device = load_part1_config(config), resolve_device(device)
            uri = start(tracking_uri, experiment)
            # Batches of 32 two-feature points are far too small to split across threads: a second
            # intra-op thread only spins, and on a loaded 2-core machine it made an epoch 10x slower.
            torch.set_num_threads(1)
            body(cfg, epochs, device, seeds)
            print_where(uri)

        return command

    return wrap


@part1_command("main", "Override the grid's epochs per cell.")
def main(cfg, epochs, device, seeds):
    """The whole Part 1: first classifier, then the depth x width grid."""
    from training.part1.runs import run_part1

    t0 = time.perf_counter()
    run_part1(cfg, device=device, epochs=epochs, seeds=seeds)
    click.echo(f"Part 1 done in {time.perf_counter() - t0:.0f} s on {device}.")


@part1_command("first-classifier", "Override the epochs (20).")
def first_classifier(cfg, epochs, device, seeds):
    """Only the first binary classifier (training demo, ROC threshold)."""
    from training.part1.runs import run_first_classifier

    run_first_classifier(cfg, device=device, epochs=epochs, seeds=seeds)


@part1_command("mlp-grid", "Override the epochs per cell (10).")
def mlp_grid(cfg, epochs, device, seeds):
    """Only the depth x width grid (one parent run, a child per cell)."""
    from training.part1.runs import run_mlp_grid

    run_mlp_grid(cfg, device=device, epochs=epochs, seeds=seeds)


if __name__ == "__main__":
    run_cli(cli)
