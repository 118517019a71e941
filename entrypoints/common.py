"""Options and start-up shared by every entry point (tracking store, device, threads)."""
from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Iterator, Optional

import click

DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: Optional[str]) -> str:
    """'auto' (or None) -> cuda when available, else cpu; explicit names are checked."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"{device!r} is not a device; use auto, cpu, cuda or cuda:N", param_hint="--device")
    if dev.type not in DEVICE_TYPES:
        raise click.BadParameter(f"{device!r} cannot train a model (no real memory); use auto, cpu, cuda or cuda:N",
                                 param_hint="--device")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r} requested but CUDA is not available here; use cpu or auto",
                                 param_hint="--device")
    return str(dev)


def device_list(ctx, param, value):
    """'cuda:0,cuda:1' -> ['cuda:0', 'cuda:1'], each checked like --device; '' or 'auto' -> None."""
    if value in (None, "", "auto"):
        return None
    try:
        return [resolve_device(d.strip()) for d in value.split(",") if d.strip()] or None
    except click.BadParameter as e:  # name the option actually given
        raise click.BadParameter(e.message, param_hint="--devices") from None


# Grid workers sharing one large GPU by default. The exp1 nets leave a GPU mostly idle (launch-bound):
# 4 workers trained all 34 CIFAR configurations in 262 s on one H200 and the exp2 grid in 62 s on an
# H100 (bench/measured/gpu_programme_h200_2026-11-27.json, gpu_exp2_h100_2026-11-27.json). Smaller
# GPUs were not tried, so they keep one worker.
GPU_SHARING_WORKERS = 4   # measured: 4 workers on the H200 above (gpu_programme_h200_2026-11-27.json)
GPU_SHARING_MIN_GIB = 32  # not measured: a margin under the 80 GiB H100, the smallest GPU that ran 4 workers


def workers_for_gpu_memory(total_bytes: int) -> int:
    """Default workers on one GPU of this much memory."""
    return GPU_SHARING_WORKERS if total_bytes >= GPU_SHARING_MIN_GIB * 2**30 else 1


def default_workers_on(device: str) -> int:
    """1 on a CPU (its cores would only be split), GPU_SHARING_WORKERS on a large GPU."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return 1
    return workers_for_gpu_memory(torch.cuda.get_device_properties(dev).total_memory)


def worker_count(workers: Optional[int], devices: Optional[list], device: str = "cpu") -> int:
    """--workers, else the default for each --devices entry (or for --device), summed."""
    return workers or sum(default_workers_on(d) for d in (devices or [device]))


def tracking_options(f):
    """--tracking-uri and --experiment, the same on every entry point."""
    f = click.option("--experiment", default=None,
                     help="MLflow experiment for new top-level runs (default: $ARCHLAB_EXPERIMENT, else "
                          "$MLFLOW_EXPERIMENT_NAME, else archlab). Ignored under `mlflow run`, which picks it "
                          "itself: --experiment-name, else $MLFLOW_EXPERIMENT_NAME, else Default.")(f)
    f = click.option("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")(f)
    return f


def start(tracking_uri: Optional[str], experiment: Optional[str]) -> str:
    """Configure the store (fails fast when a server is unreachable) and CPU threads; close the
    project runs `mlflow run` left RUNNING when their environment could not be built."""
    import torch

    from training.tracking import lifecycle
    from training.tracking import runs as tracking

    if experiment:
        os.environ["ARCHLAB_EXPERIMENT"] = experiment
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    try:
        uri = tracking.configure_tracking(tracking_uri)
    except ConnectionError as e:  # unreachable server: a one-line error, not a traceback
        raise click.ClickException(str(e)) from None
    check_tracking_scheme(uri)
    check_store(uri)
    check_experiment(os.environ.get("ARCHLAB_EXPERIMENT", tracking.DEFAULT_EXPERIMENT))
    lifecycle.sweep_never_started()
    return uri


def check_store(uri: str) -> None:
    """One cheap request to the store, so a store that cannot hold runs fails now, in one line:
    in-memory SQLite, a folder (MLflow's file store), a file that is not SQLite, a server that
    wants credentials or that is not MLflow."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:") and (uri.rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in uri):
        raise click.BadParameter(f"tracking URI {uri!r} is an in-memory database: every run would vanish when the "
                                 f"process exits; use sqlite:///path.db", param_hint="--tracking-uri")
    from training.grids.lock import store_setup_lock

    try:
        with store_setup_lock(uri) if uri.startswith("sqlite:") else contextlib.nullcontext():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001  (MLflow, SQLAlchemy and HTTP errors: all mean "not a usable store")
        raise click.ClickException(store_error(uri, e)) from None


def store_error(uri: str, e: Exception) -> str:
    """What to do about a store that failed the probe."""
    text = str(e).replace("\n", " ")
    if "maintenance mode" in text:
        return (f"tracking URI {uri!r} is a folder, MLflow's file store, which MLflow 3.13+ refuses; use "
                f"sqlite:///path.db (convert old runs with `mlflow migrate-filestore`)")
    code = re.search(r"error code (\d+)", text)
    if uri.startswith(("http://", "https://")) and code and code.group(1) in ("401", "403"):
        return (f"the tracking server {uri} refused the request (HTTP {code.group(1)}): it needs credentials; "
                f"export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if uri.startswith(("http://", "https://")):
        return (f"{uri} answers /health but is not an MLflow tracking server ({text[:160]}); check the host and "
                f"port (python -m entrypoints.server starts one)")
    return (f"tracking URI {uri!r} is not a usable MLflow store ({text[:200]}); point it at an MLflow sqlite file "
            f"or a new path (sqlite:///mlflow.db)")


def check_experiment(name: str) -> None:
    """A soft-deleted experiment cannot take runs: say how to restore it (MLflow only raises)."""
    import mlflow

    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`: the project run's experiment
        return
    exp = mlflow.MlflowClient().get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise click.BadParameter(f"experiment {name!r} is deleted (id {exp.experiment_id}); restore it with "
                                 f"`mlflow experiments restore --experiment-id {exp.experiment_id}`, or pass "
                                 f"another --experiment", param_hint="--experiment")


@contextlib.contextmanager
def lifecycle_errors() -> Iterator[None]:
    """The run lifecycle's errors as one line: a grid or run another process owns, a checkpoint that
    could not be written, and a stopping signal (exit 128 + signal, the runs already KILLED)."""
    from training.grids.lock import GridBusyError
    from training.tracking.lifecycle import Interrupted, RunBusyError
    from training.trainer import CheckpointWriteError

    try:
        yield
    except (GridBusyError, RunBusyError, CheckpointWriteError) as e:
        raise click.ClickException(str(e)) from None
    except Interrupted as e:
        click.echo(f"Error: stopped by {e}: the runs it had open ended KILLED; rerun the same command to resume",
                   err=True)
        sys.exit(128 + e.signum)


def check_tracking_scheme(uri: str) -> None:
    """A URI whose scheme MLflow has no store for fails now, not when the first run opens."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:  # private API moved: the first run will report it instead
        return
    try:
        _tracking_store_registry.get_store_builder(uri)
    except MlflowException:
        raise click.BadParameter(f"tracking URI {uri!r}: MLflow has no store for the scheme "
                                 f"{uri.split(':', 1)[0]!r}; use sqlite:///path.db or "
                                 f"http(s)://host:port of a tracking server", param_hint="--tracking-uri") from None


def print_where(uri: str) -> None:
    click.echo(f"\nRuns logged to {uri}")
    if uri.startswith("sqlite:"):
        click.echo(f"View them with:  mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")
    else:
        click.echo(f"View them at the tracking server's UI: {uri}")


def zero_is_none(ctx, param, value):
    """None or 0 (MLproject's default) mean "use the config's value"; negatives are errors."""
    if value is not None and value < 0:
        raise click.BadParameter(f"must be a positive integer (or 0 for the config's value), got {value}")
    return value or None


def auto_is_none(ctx, param, value):
    """"auto" or "" (MLproject's string defaults) mean "not given"."""
    return None if value in (None, "", "auto") else value


def seed_list(ctx, param, value):
    """--seeds '42,43' -> [42, 43]; '' or absent -> None (the config's seed); bad lists are usage errors."""
    from training.grids.seeds import parse_seeds

    try:
        return parse_seeds(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def seeds_option(f):
    """--seeds, the same on every entry point that trains."""
    return click.option("--seeds", default=None, callback=seed_list,
                        help="Comma-separated seeds, e.g. 42,43,44: each configuration trains once per seed, the "
                             "first under its own name, the others as runs <name>_s<seed> (default: the config's "
                             "seed).")(f)


def run_cli(cli: click.Command) -> None:
    """Run a click CLI as its `python -m` entry point. A usage error (a rejected option or value)
    under `mlflow run` also marks the run MLflow opened for it (training.tracking.rejected), so it
    does not stay a mute FAILED run with a random name."""
    try:
        code = cli.main(standalone_mode=False)
    except click.UsageError as e:
        from training.tracking.rejected import mark_rejected

        mark_rejected(e.format_message())
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
