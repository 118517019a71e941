"""The whole programme in one command: Part 1, every CIFAR-10 grid, then the report.

    python -m entrypoints.reproduce                       # on a GPU machine
    python -m entrypoints.reproduce --profile smoke       # a CPU: every configuration, tiny, in minutes

Everything is checked first (configs, every grid configuration, the data), then it runs under one
parent run `reproduce`, the grids' configurations in one pool of workers (heaviest first across
the programme, one parent run per grid). A rerun of the same command after a crash or a kill
continues that `reproduce` run: finished work is skipped, interrupted configurations resume.
On a machine without a GPU it refuses the full-size CIFAR grids (--profile smoke, or --allow-cpu
true with small settings, says otherwise).
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Dict, Iterator, Optional

import click

from entrypoints.common import (auto_is_none, device_list, print_where, resolve_device, run_cli, seeds_option, start,
                                tracking_options, worker_count, zero_is_none)
from entrypoints.part1 import load_part1_config

ALL_GRIDS = "test_run,exp1_1,exp1_2,exp1_3,exp1_4,exp2"
PROFILES = ("full", "smoke")


def _grid_list(ctx, param, value: str):
    from training.grids.expand import GRIDS

    names = [g.strip() for g in value.split(",") if g.strip()]
    unknown = [g for g in names if g not in GRIDS]
    if unknown:
        raise click.BadParameter(f"unknown grids {unknown}; valid: {', '.join(GRIDS)} (comma-separated, or '' for none)")
    return names


def load_profile(name: str) -> Dict[str, Any]:
    """The settings of --profile `name` (configs/<name>.yaml; `full` is the programme's own)."""
    from training.config import load_config

    return {} if name == "full" else load_config(name)


def check_profile(name: str, sizes: Dict[str, Any]) -> None:
    """A profile sets the sizes itself: given size options too would make a run neither (refused)."""
    given = {k: v for k, v in sizes.items() if v not in (None, False)}
    if name != "full" and given:
        listed = ", ".join(f"--{k.replace('_', '-')} {str(v).lower() if isinstance(v, bool) else v}"
                           for k, v in given.items())
        raise click.UsageError(f"--profile {name} sets the sizes itself (configs/{name}.yaml); drop {listed}, or "
                               f"drop --profile {name} to choose the sizes yourself")


def cifar_overrides(profile: Dict[str, Any], sizes: Dict[str, Any], device: str, data_dir: Optional[str],
                    download: bool, cuda_graphs: str) -> Dict[str, Any]:
    """run_grid's overrides: the profile's sizes (or the options given), the device and the data."""
    cifar = profile.get("cifar", {})
    options = {**cifar.get("options", {}), **{k: v for k, v in dict(
        n_train=sizes["n_train"], n_valid=sizes["n_valid"], n_test=sizes["n_test"],
        allow_small=sizes["allow_small"] or None, data_dir=data_dir, download=download or None,
        cuda_graphs=None if cuda_graphs == "auto" else cuda_graphs).items() if v is not None}}
    top = {k: v for k, v in cifar.items() if k != "options"}
    return {**top, **{k: sizes[k] for k in ("epochs", "bs_train") if sizes[k] is not None},
            "device": device, "options": options}


def refuse_cpu(grids, device: str, allow_cpu: bool) -> None:
    if grids and device == "cpu" and not allow_cpu:
        raise click.UsageError(
            f"no GPU here, and the CIFAR grids ({', '.join(grids)}) take days at full size on a CPU. Run them on a "
            f"GPU machine; or --profile smoke for every configuration end to end in minutes (numbers that mean "
            f"nothing); or --allow-cpu true with small settings (e.g. --n-train 30000 --epochs 2); or --grids '' "
            f"for Part 1 and the report only.")


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
@click.option("--n-test", type=int, default=None, callback=zero_is_none,
              help="Test on the first N of the 10000 test images (fewer only with --allow-small true).")
@click.option("--allow-small", type=click.BOOL, default=False, help="true: allow < 30000/5000 images (smoke runs).")
@click.option("--data-dir", default=None, callback=auto_is_none, help="Folder holding cifar-10-batches-py.")
@click.option("--download/--no-download", default=False)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=None, callback=zero_is_none,
              help="Worker processes for all CIFAR grids together: one pool, heaviest configuration first across "
                   "the programme (default: 4 per GPU of >= 32 GiB, else 1 per device; the smoke profile: 2).")
@click.option("--devices", default=None, callback=device_list,
              help="Comma-separated devices handed to the workers round-robin, e.g. cuda:0,cuda:1.")
@click.option("--cuda-graphs", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="CUDA-graphed training steps (see the grid command's --cuda-graphs).")
@click.option("--out", default=None, callback=auto_is_none,
              help="Where the report goes (default: reports; the smoke profile: reports/smoke).")
@click.option("--profile", type=click.Choice(PROFILES), default="full", show_default=True,
              help="smoke: every configuration end to end at tiny sizes (configs/smoke.yaml), on a CPU in minutes; "
                   "its numbers mean nothing and its answers say so.")
@seeds_option
@tracking_options
def cli(grids, allow_cpu, part1_config, epochs, bs_train, n_train, n_valid, n_test, allow_small, data_dir, download,
        device, workers, devices, cuda_graphs, out, profile, seeds, tracking_uri, experiment):
    """Part 1, the CIFAR-10 grids and the answers report, in one go."""
    from analysis.report import build_report, summary
    from training.data.threads import torch_threads
    from training.grids.programme import plan_programme, run_programme
    from training.part1.runs import run_part1

    settings = load_profile(profile)
    sizes = dict(epochs=epochs, bs_train=bs_train, n_train=n_train, n_valid=n_valid, n_test=n_test,
                 allow_small=allow_small)
    check_profile(profile, sizes)
    device = resolve_device(device)
    workers = worker_count(workers or settings.get("workers"), devices, device)
    refuse_cpu(grids, device, allow_cpu or settings.get("allow_cpu", False))
    cfg = load_part1_config(part1_config)
    overrides = cifar_overrides(settings, sizes, device, data_dir, download, cuda_graphs)
    uri = start(tracking_uri, experiment)
    try:  # every configuration of every grid, and the data, before anything trains
        planned = plan_programme(grids, overrides, seeds)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    params = programme_params(grids, profile, part1_config, seeds, overrides)
    out = out or settings.get("out", "reports")
    t0 = time.perf_counter()
    with open_reproduce_run(params) as run:
        if part1_finished(run.info.run_id):
            click.echo("*** Part 1 already finished in this reproduce run; not trained again")
        else:
            with torch_threads(1):  # Part 1's tiny batches: see entrypoints.part1
                run_part1(cfg, device=device, seeds=seeds)
        run_programme(grids, overrides, workers=workers, devices=devices, seeds=seeds, planned=planned)
        result = build_report(out)
    click.echo(summary(result))
    click.echo(f"Reproduced in {time.perf_counter() - t0:.0f} s on {device}{' (smoke profile)' * (profile == 'smoke')}.")
    print_where(uri)


def programme_params(grids, profile: str, part1_config: str, seeds, overrides: Dict[str, Any]) -> Dict[str, str]:
    """What the reproduce run logs and a rerun must match to continue it. Prefixed `programme.`:
    under `mlflow run` the run already holds the -P values under the options' own names."""
    cifar = json.dumps({k: v for k, v in overrides.items() if k != "device"}, sort_keys=True)
    return {"programme.grids": ",".join(grids), "programme.profile": profile, "programme.part1_config": part1_config,
            "programme.seeds": ",".join(map(str, seeds or [])) or "config", "programme.cifar": cifar}


@contextlib.contextmanager
def open_reproduce_run(params: Dict[str, str]) -> Iterator[Any]:
    """The `reproduce` parent run: the earlier one of the same command if it died (FAILED, KILLED,
    or RUNNING with a dead owner), so a rerun finishes what is missing under one run; else new."""
    from training.grids.parent import continuable_parent
    from training.tracking import runs as tracking

    earlier = continuable_parent("reproduce", params)
    if earlier is not None:
        click.echo(f"*** Continuing the earlier reproduce run {earlier['run_id']} (it ended {earlier['status']})")
    with tracking.open_run("reproduce", tags={tracking.GRID_TAG: "reproduce", tracking.ROLE_TAG: "parent"},
                           run_id=earlier["run_id"] if earlier is not None else None) as run:
        tracking.log_params(params)
        yield run


def part1_finished(reproduce_run_id: str) -> bool:
    """Whether this reproduce run already holds a FINISHED Part 1 (a continued run skips it)."""
    import mlflow

    from training.tracking import runs as tracking

    found = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                               filter_string=f"tags.mlflow.parentRunId = '{reproduce_run_id}' and "
                                             f"tags.{tracking.GRID_TAG} = 'part1' and attributes.status = 'FINISHED'")
    return bool(found)


if __name__ == "__main__":
    run_cli(cli)
