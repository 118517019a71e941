"""Part 3 entry points: the programme's `run-exp` CLI and the experiment grids.

    python -m entrypoints.cifar run-exp -n exp1_1 -K 32 -L 2 -P 1 -H 100     # one configuration
    python -m entrypoints.cifar grid exp1_2 --epochs 2 --n-train 30000        # what `mlflow run . -e exp1_2` runs
    python -m entrypoints.cifar grid exp2 --allow-small true --n-train 5000 --n-test 1000   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import sys

import click

from entrypoints.common import (auto_is_none, device_list, lifecycle_errors, print_where, resolve_device, run_cli,
                                seeds_option, start,
                                tracking_options, worker_count, zero_is_none)
from training.grids.expand import GRIDS


def name_list(ctx, param, value):
    """'a,b' -> ['a', 'b']; '' or 'all' -> None (every configuration); ',' names nothing: an error."""
    if value in (None, "", "all"):
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"{value!r} names no configuration; pass names like exp1_1_L2_K32,exp1_1_L2_K64, "
                                 f"or 'all'")
    return names


@click.group()
def cli():
    """archlab Part 3: CIFAR-10 architecture experiments, tracked in MLflow."""


def one_config_options(f):
    """The per-configuration overrides shared by `grid` and `submit`."""
    for opt in reversed([
        click.option("--epochs", type=int, default=None, callback=zero_is_none, help="Max epochs per configuration."),
        click.option("--batches", type=int, default=None, callback=zero_is_none, help="Training batches per epoch."),
        click.option("--bs-train", type=int, default=None, callback=zero_is_none, help="Training batch size."),
        click.option("--n-train", type=int, default=None, callback=zero_is_none, help="Training images (subset)."),
        click.option("--n-valid", type=int, default=None, callback=zero_is_none, help="Validation images."),
        click.option("--n-test", type=int, default=None, callback=zero_is_none,
                     help="Test on the first N official test images (default: all 10000; fewer needs "
                          "--allow-small true)."),
        click.option("--data-dir", default=None, callback=auto_is_none,
                     help="Folder holding cifar-10-batches-py (default: $ARCHLAB_DATA, else ~/.cache/archlab/data; "
                          "on Kubernetes: the path inside the pod)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N"),
        click.option("--out-dir", default=None, help="Where the results JSON files go (default ./results)."),
        click.option("--checkpoint-dir", default=None,
                     help="Where training states live, what a rerun resumes from (default checkpoints)."),
        click.option("--restart", type=click.BOOL, default=False, show_default=True,
                     help="true: train afresh. By default finished configurations are skipped and interrupted "
                          "ones resume."),
        click.option("--allow-small", type=click.BOOL, default=False, show_default=True,
                     help="true: allow fewer than 30000 train / 5000 validation images (smoke runs)."),
        click.option("--cuda-graphs", "cuda_graphs", type=click.Choice(["auto", "on", "off"]),
                     default="auto", show_default=True,
                     help="Replay each training step as one CUDA graph. auto: on CUDA with a constant lr "
                          "(the launch-bound exp1 nets); on: refuse a run where it cannot work; off: "
                          "eager. Not part of the config hash."),
    ]):
        f = opt(f)
    return f


def one_config_overrides(epochs, batches, bs_train, n_train, n_valid, data_dir, device, out_dir, checkpoint_dir,
                         restart, allow_small, cuda_graphs="auto", n_test=None) -> dict:
    options = dict(n_train=n_train, n_valid=n_valid, n_test=n_test, data_dir=data_dir, restart=restart or None,
                   allow_small=allow_small or None, checkpoint_dir=checkpoint_dir,
                   cuda_graphs=None if cuda_graphs == "auto" else cuda_graphs)
    return dict(epochs=epochs, batches=batches, bs_train=bs_train, device=device, out_dir=out_dir,
                options={k: v for k, v in options.items() if v is not None})


@cli.command()
@click.argument("name", type=click.Choice(GRIDS))
@one_config_options
@click.option("--download", type=click.BOOL, default=False, is_flag=False, flag_value=True, show_default=True,
              help="Download CIFAR-10 when missing (--download alone, or --download true|false).")
@click.option("--workers", type=int, default=None, callback=zero_is_none,
              help="Worker processes training configurations in parallel (default: 4 per GPU of >= 32 GiB, "
                   "else 1 per device). On a local SQLite store a private MLflow server takes the writes.")
@click.option("--devices", default=None, callback=device_list,
              help="Comma-separated devices handed to the workers round-robin, e.g. cuda:0,cuda:1 "
                   "(overrides --device).")
@click.option("--only", default=None, callback=name_list,
              help="Comma-separated configurations to train (child run names, e.g. exp2_L3_K32-64-128); default all.")
@seeds_option
@tracking_options
def grid(name, epochs, batches, bs_train, n_train, n_valid, n_test, data_dir, device, out_dir, checkpoint_dir,
         restart, allow_small, cuda_graphs, download, workers, devices, only, seeds, tracking_uri,
         experiment):
    """Run (or continue) experiment grid NAME: a parent run with one child run per (configuration, seed)."""
    from training.grids.expand import run_grid
    from training.grids.parallel import WorkerDiedError

    device = resolve_device(device)
    workers = worker_count(workers, devices, device)
    overrides = one_config_overrides(epochs, batches, bs_train, n_train, n_valid, data_dir, device,
                                     out_dir, checkpoint_dir, restart, allow_small, cuda_graphs, n_test)
    if download:
        overrides["options"]["download"] = True
    uri = start(tracking_uri, experiment)
    with lifecycle_errors():
        try:
            run_grid(name, overrides, workers=workers, devices=devices, only=only, seeds=seeds)
        except (ValueError, FileNotFoundError) as e:
            raise click.UsageError(str(e)) from None
        except WorkerDiedError as e:  # says which configurations stopped and how to resume them
            raise click.ClickException(str(e)) from e
    print_where(uri)


@cli.command("config")
@click.argument("name", type=click.Choice(GRIDS))
@click.argument("config_name")
@click.option("--overrides", default="none", show_default=True,
              help="Comma-separated key=value overrides, e.g. epochs=2,bs_train=64,options.n_train=30000.")
@tracking_options
def config(name, config_name, overrides, tracking_uri, experiment):
    """Train configuration CONFIG_NAME (e.g. exp1_1_L2_K32) of grid NAME: the MLproject `config` entry
    point that `submit` runs once per configuration (under `mlflow run`, the project run is its run)."""
    from training.grids.submit import decode_overrides, train_configuration

    uri = start(tracking_uri, experiment)
    try:
        kw = decode_overrides(overrides)
        if kw.get("device") is not None:
            kw["device"] = resolve_device(kw["device"])
        train_configuration(name, config_name, kw)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    print_where(uri)


@cli.command("submit")
@click.argument("name", type=click.Choice(GRIDS))
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="MLflow Projects backend running each configuration.")
@click.option("--backend-config", default=None, type=click.Path(dir_okay=False),
              help="Kubernetes backend config JSON (e.g. deploy/kubernetes/backend-config.json).")
@click.option("--project-uri", default=None,
              help="MLflow project to run (default: this repository; deploy/kubernetes for kubernetes).")
@click.option("--only", default=None, callback=name_list,
              help="Comma-separated configurations to submit (child run names); default all.")
@one_config_options
@tracking_options
def submit(name, backend, backend_config, project_uri, only, epochs, batches, bs_train, n_train, n_valid, n_test,
           data_dir, device, out_dir, checkpoint_dir, restart, allow_small, cuda_graphs, tracking_uri,
           experiment):
    """Submit grid NAME as one MLflow project run per configuration (children of one parent run) on
    the chosen backend: local, or kubernetes (docker_env project, one Job each; deploy/kubernetes)."""
    from training.grids.submit import submit_grid

    overrides = one_config_overrides(epochs, batches, bs_train, n_train, n_valid, data_dir,
                                     None if device in (None, "", "auto") else device, out_dir, checkpoint_dir,
                                     restart, allow_small, cuda_graphs, n_test)
    uri = start(tracking_uri, experiment)
    try:
        summary = submit_grid(name, overrides, backend=backend, backend_config=backend_config,
                              project_uri=project_uri, only=only)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise click.UsageError(str(e)) from None
    for r in summary["runs"]:
        click.echo(f"  {r['status']:9s} {r['name']}  run {r['run_id']}")
    print_where(uri)
    if summary["failed"]:
        raise SystemExit(1)


def run_exp_parser() -> argparse.ArgumentParser:
    """The programme's run-exp options (argparse: -K and -H take several values)."""
    p = argparse.ArgumentParser(prog="python -m entrypoints.cifar run-exp",
                                description="Run one CIFAR-10 experiment configuration (programme's run-exp).")
    p.add_argument("--run-name", "-n", type=str, required=True, help="Name of run and output file")
    p.add_argument("--out-dir", "-o", type=str, default="./results", help="Output folder")
    p.add_argument("--seed", "-s", type=int, default=None, help="Random seed")
    p.add_argument("--seeds", type=str, default=None,
                   help="Comma-separated seeds (instead of --seed): one run per seed, the first under its own "
                        "name, the others as <name>_s<seed>")
    p.add_argument("--device", "-d", type=str, default=None, help="Device (default: cuda if available)")
    p.add_argument("--bs-train", type=int, default=128, help="Train batch size")
    p.add_argument("--bs-test", type=int, default=None, help="Test batch size")
    p.add_argument("--batches", type=int, default=0,
                   help="Number of training batches per epoch (default 0: all of them; the programme's 100 "
                        "x 128 = 12800 images is below its own 30000-image minimum)")
    p.add_argument("--epochs", type=int, default=100, help="Maximal number of epochs")
    p.add_argument("--early-stopping", type=int, default=3, help="Stop after this many epochs without improvement")
    p.add_argument("--checkpoints", type=str, default=None, help="Checkpoint file for the best model")
    p.add_argument("--lr", type=float, default=1e-3, help="Learning rate")
    p.add_argument("--reg", type=float, default=1e-3, help="L2 regularization")
    p.add_argument("--filters-per-layer", "-K", type=int, nargs="+", required=True, help="Filters per conv layer")
    p.add_argument("--layers-per-block", "-L", type=int, required=True, help="Layers per block")
    p.add_argument("--pool-every", "-P", type=int, required=True, help="Pool after this number of conv layers")
    p.add_argument("--hidden-dims", "-H", type=int, nargs="+", required=True, help="Output size of hidden linear layers")
    p.add_argument("--model-type", "-M", choices=["cnn", "resnet", "ycn"], default="cnn", help="Which model to train")
    # archlab's additions
    p.add_argument("--data-dir", type=str, default=None, help="Folder holding cifar-10-batches-py")
    p.add_argument("--download", action="store_true", help="Download CIFAR-10 when missing")
    p.add_argument("--n-train", type=int, default=None, help="Training images (default: 45000)")
    p.add_argument("--n-valid", type=int, default=5000, help="Validation images")
    p.add_argument("--n-test", type=int, default=None,
                   help="Test on the first N official test images (default or 0: all 10000; fewer needs "
                        "--allow-small)")
    p.add_argument("--augment", action="store_true", help="Random translate + flip")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    p.add_argument("--restart", action="store_true", help="Train afresh even if this configuration finished")
    p.add_argument("--allow-small", action="store_true", help="Allow fewer than 30000/5000 images (smoke runs)")
    p.add_argument("--tracking-uri", type=str, default=None, help="MLflow tracking URI")
    p.add_argument("--experiment", type=str, default=None, help="MLflow experiment for new top-level runs")
    return p


@cli.command("run-exp", context_settings=dict(ignore_unknown_options=True, allow_extra_args=True,
                                              help_option_names=[]))
@click.pass_context
def run_exp(ctx):
    """One configuration, with the programme's options (-n -K -L -P -H -M ...; --help for all)."""
    args = run_exp_parser().parse_args(ctx.args)
    seeds = run_exp_seeds(args.seed, args.seeds)
    device = resolve_device(args.device) if args.device else None
    kw = dict(data_dir=args.data_dir, download=args.download, n_train=args.n_train, n_valid=args.n_valid,
              n_test=args.n_test or None, augment=args.augment, optimizer=args.optimizer, restart=args.restart, allow_small=args.allow_small)
    call = dict(out_dir=args.out_dir, device=device, bs_train=args.bs_train, bs_test=args.bs_test,
                batches=args.batches or None, epochs=args.epochs, early_stopping=args.early_stopping or None,
                checkpoints=args.checkpoints, lr=args.lr, reg=args.reg, filters_per_layer=args.filters_per_layer,
                layers_per_block=args.layers_per_block, pool_every=args.pool_every, hidden_dims=args.hidden_dims,
                model_type=args.model_type, **kw)
    with lifecycle_errors():
        run_exp_seeds_in_turn(args, seeds, call)


def run_exp_seeds_in_turn(args, seeds, call) -> None:
    """Every seed's arguments checked, then each seed trained in turn (bad input: a usage error)."""
    from training.cnn.experiment import cnn_experiment, plan_run

    try:
        if len(seeds) > 1 and args.checkpoints:
            raise ValueError("--checkpoints names one file: with several --seeds leave it out (each seed gets its own)")
        for i, seed in enumerate(seeds):  # every seed's arguments checked before the first one trains
            plan_run(dict(run_name=args.run_name, seed=seed, first_seed=i == 0, **call))
        uri = start(args.tracking_uri, args.experiment)
        for i, seed in enumerate(seeds):
            cnn_experiment(args.run_name, seed=seed, first_seed=i == 0, **call)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    print_where(uri)


def run_exp_seeds(seed, seeds_text):
    """run-exp's seeds: --seeds' list, else [--seed] (None: one drawn at random, the programme's way)."""
    from training.grids.seeds import parse_seeds

    try:
        seeds = parse_seeds(seeds_text)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if seeds and seed is not None:
        raise click.UsageError("give --seed or --seeds, not both")
    return seeds or [seed]


if __name__ == "__main__":
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    run_cli(cli)
