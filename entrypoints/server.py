"""The team's MLflow tracking server, one command:

    python -m entrypoints.server                                   # sqlite:///mlflow.db, http://127.0.0.1:5000
    python -m entrypoints.server --backend-store-uri postgresql://mlflow:PW@db:5432/mlflow \\
        --artifacts-destination s3://bucket/archlab --host 0.0.0.0 --allowed-hosts mlflow.lab.internal --auth

A thin wrapper over `mlflow server` that picks the settings a team needs and a bare call gets
wrong: artifacts proxied through the server (clients need no bucket credentials), bound to
127.0.0.1 unless asked, one HTTP worker on SQLite (one writer process), MLflow 3's background
job runner off (seven idle processes), basic auth configured in one flag. It waits for /health,
prints the MLFLOW_TRACKING_URI to export, and runs until Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

import click

from training.tracking.server import is_local_store, start_server


def _absolute_store(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, so the printout names the real file."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _absolute_destination(dest: str) -> str:
    return dest if "://" in dest else str(Path(dest).resolve())


@click.command(context_settings=dict(help_option_names=["-h", "--help"]))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. 0.0.0.0 serves the network: then also set --allowed-hosts and --auth.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--backend-store-uri", default="sqlite:///mlflow.db", show_default=True,
              help="Where runs, params and metrics live: sqlite:///file.db or postgresql://user:pw@host:5432/db.")
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True,
              help="Where the server stores artifacts it proxies: a folder, or s3://bucket/path, gs://..., "
                   "wasbs://... (the server needs the credentials, clients do not).")
@click.option("--auth/--no-auth", default=False, show_default=True,
              help="MLflow basic auth (user admin; password from $MLFLOW_AUTH_ADMIN_PASSWORD, else generated "
                   "once into STATE_DIR/admin_password). Needs mlflow[auth].")
@click.option("--allowed-hosts", default=None,
              help="Host headers to accept besides localhost and private IPs, e.g. mlflow.lab.internal,10.0.0.5:5000.")
@click.option("--http-workers", type=click.IntRange(1, 64), default=None,
              help="Server worker processes (default: 1 on SQLite, 4 otherwise).")
@click.option("--state-dir", default="mlflow-server", show_default=True,
              help="Server log and basic-auth state (user database, secret key, generated admin password).")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the server's /health before giving up.")
def main(host: str, port: int, backend_store_uri: str, artifacts_destination: str, auth: bool,
         allowed_hosts: Optional[str], http_workers: Optional[int], state_dir: str, timeout_s: float) -> None:
    """Start an MLflow tracking server with proxied artifacts; Ctrl-C stops it."""
    store = _absolute_store(backend_store_uri)
    if store.startswith("file:") or "://" not in store:
        raise click.UsageError("the file store is in maintenance mode in MLflow 3.13+; use sqlite:///FILE.db or "
                               "postgresql://... (`mlflow migrate-filestore` converts old ./mlruns data)")
    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        click.echo(f"warning: serving {host} without --auth: anyone who reaches the port can write and delete runs",
                   err=True)
    try:
        server = start_server(store, host=host, port=port, artifacts_destination=_absolute_destination(
            artifacts_destination), auth=auth, allowed_hosts=allowed_hosts, http_workers=http_workers,
                              state_dir=state_dir, timeout_s=timeout_s)
    except (OSError, RuntimeError, TimeoutError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    with server:
        click.echo(f"MLflow server up: {server.uri}   (UI and REST API; log {server.log_path})")
        click.echo(f"  backend store:  {store}{'   (one writer process: SQLite)' if is_local_store(store) else ''}")
        click.echo(f"  artifacts:      {_absolute_destination(artifacts_destination)} (proxied)")
        click.echo("Point clients at it:")
        click.echo(f"  export MLFLOW_TRACKING_URI={server.uri}")
        if server.auth:
            click.echo(f"  export MLFLOW_TRACKING_USERNAME={server.auth.admin_username}")
            where = (f"in {Path(state_dir) / 'admin_password'}" if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
                     else "from $MLFLOW_AUTH_ADMIN_PASSWORD")
            click.echo(f"  export MLFLOW_TRACKING_PASSWORD=...   (admin's password {where}; "
                       f"create per-user accounts with mlflow.server.get_app_client)")
        click.echo("Ctrl-C stops the server.")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(1.0)
        if server.process.poll() is not None and not stop.is_set():
            raise click.ClickException(f"mlflow server exited with code {server.process.returncode}; log:\n"
                                       f"{server.log_tail()}")
        click.echo("Stopping the server.")


if __name__ == "__main__":
    main()
