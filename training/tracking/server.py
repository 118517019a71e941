"""Start and stop a local `mlflow server` from Python (the team server's CLI, parallel grids, tests).

Why a wrapper and not a bare `mlflow server` call:
- parallel writers must not share one SQLite file (they fail with "database is locked"), so a
  grid with several workers on a local store routes every write through one server process;
- the server takes 10-15 s to start on a busy 2-core machine, so callers need "wait for /health,
  or fail with the server's own log" rather than a sleep;
- MLflow 3.x basic auth needs three settings that are easy to get wrong (a static Flask secret key,
  an admin password of >= 12 characters since no default ships, and the auth database's location,
  which is relative to the server's CWD by default); `auth_settings` writes them once per state folder.

The server runs in its own process group, so `stop()` ends uvicorn and its workers together; a
watchdog leads that group (training.tracking.watchdog) and ends it when the starting process dies,
even by SIGKILL, so no server outlives its owner.
"""
from __future__ import annotations

import configparser
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ADMIN_USERNAME = "admin"
AUTH_INI = "basic_auth.ini"
SECRET_KEY_FILE = "flask_secret_key"
ADMIN_PASSWORD_FILE = "admin_password"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("0.0.0.0", "::") else "", port))
        except OSError:
            return True
    return False


def is_local_store(uri: str) -> bool:
    """Stores that live in local files (SQLite, the file store, a bare path): one writer process at a time."""
    if uri.startswith(("sqlite:", "file:")):
        return True
    return "://" not in uri and not uri.startswith(("databricks", "uc:"))  # profiles, not paths


def client_uri(host: str, port: int) -> str:
    """The MLFLOW_TRACKING_URI for a server bound to `host` (a wildcard bind is reached via loopback)."""
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in reach:
        reach = f"[{reach}]"
    return f"http://{reach}:{port}"


@dataclass
class AuthSettings:
    """Where basic auth keeps its state, and the admin's credentials (for the printout and tests)."""

    config_path: Path
    admin_username: str
    admin_password: str
    secret_key: str

    def env(self) -> Dict[str, str]:
        """Server-side environment: MLflow reads these when the basic-auth app starts."""
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.config_path), "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
                "MLFLOW_AUTH_ADMIN_USERNAME": self.admin_username, "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password}


def _read_or_create_secret(path: Path, make) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def auth_settings(state_dir: Path, admin_password: Optional[str] = None) -> AuthSettings:
    """Write (once) the basic-auth config for a server whose state lives in `state_dir`.

    - the user database is `state_dir/basic_auth.db` (MLflow's default is relative to the CWD);
    - the admin is `admin`; its password comes from `admin_password`, else $MLFLOW_AUTH_ADMIN_PASSWORD,
      else a generated one kept in `state_dir/admin_password` (mode 600). It only matters the first
      time: MLflow creates the admin once and ignores the setting afterwards;
    - the Flask secret key (CSRF) comes from $MLFLOW_FLASK_SERVER_SECRET_KEY, else a generated one kept
      in `state_dir/flask_secret_key`, so restarts keep the same key;
    - default_permission READ: signed-in users can read every experiment, write needs a grant.
    An existing $MLFLOW_AUTH_CONFIG_PATH is respected as it is.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    password = admin_password or os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or _read_or_create_secret(
        state_dir / ADMIN_PASSWORD_FILE, lambda: secrets.token_urlsafe(18))
    if len(password) < 12:
        raise ValueError("the admin password must be at least 12 characters (MLflow's password policy)")
    secret_key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or _read_or_create_secret(
        state_dir / SECRET_KEY_FILE, lambda: secrets.token_hex(32))
    if os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
        config_path = Path(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
        parser = configparser.ConfigParser()
        parser.read(config_path)
        username = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or parser.get("mlflow", "admin_username",
                                                                              fallback=ADMIN_USERNAME)
    else:
        config_path = state_dir / AUTH_INI
        username = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or ADMIN_USERNAME
        parser = configparser.ConfigParser()
        parser["mlflow"] = {
            "default_permission": "READ",
            "database_uri": f"sqlite:///{(state_dir / 'basic_auth.db').resolve()}",
            "admin_username": username,
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        }
        with open(config_path, "w") as f:
            parser.write(f)
    return AuthSettings(config_path=config_path, admin_username=username, admin_password=password,
                        secret_key=secret_key)


def check_auth_installed() -> None:
    """MLflow's basic-auth app imports Flask-WTF (the `mlflow[auth]` extra); say so before starting."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise RuntimeError("the MLflow basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' (or flask-wtf)")


def server_command(backend_store_uri: str, host: str, port: int, artifacts_destination: Optional[str] = None,
                   default_artifact_root: Optional[str] = None, auth: bool = False,
                   allowed_hosts: Optional[str] = None, http_workers: int = 1,
                   extra_args: Sequence[str] = ()) -> List[str]:
    """The `mlflow server` command line. With `artifacts_destination` the server proxies artifacts
    (clients need no storage credentials); with `default_artifact_root` clients write there directly."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri, "--host", host,
           "--port", str(port), "--workers", str(http_workers)]
    if default_artifact_root is not None:
        cmd += ["--no-serve-artifacts", "--default-artifact-root", default_artifact_root]
    else:
        cmd += ["--serve-artifacts", "--artifacts-destination", artifacts_destination or "./mlartifacts"]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd + list(extra_args)


@dataclass
class ServerHandle:
    """A running `mlflow server`: its URI, process, log file and (with auth) admin credentials.
    A context manager: leaving the block stops the server."""

    uri: str
    process: subprocess.Popen
    log_path: Path
    backend_store_uri: str
    auth: Optional[AuthSettings] = None
    _log_file: Optional[object] = field(default=None, repr=False)

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=timeout_s) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def client_env(self) -> Dict[str, str]:
        """What a client process needs to log here (URI, and the admin's credentials with auth)."""
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if self.auth:
            env.update(MLFLOW_TRACKING_USERNAME=self.auth.admin_username,
                       MLFLOW_TRACKING_PASSWORD=self.auth.admin_password)
        return env

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's process group (uvicorn and its workers), SIGKILL what is left."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # workers may outlive the CLI process by a moment; the group is ours alone
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.process.stdin is not None:
            self.process.stdin.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(backend_store_uri: str = "sqlite:///mlflow.db", host: str = "127.0.0.1", port: Optional[int] = None,
                 artifacts_destination: Optional[str] = None, default_artifact_root: Optional[str] = None,
                 auth: bool = False, allowed_hosts: Optional[str] = None, http_workers: Optional[int] = None,
                 state_dir: Optional[os.PathLike] = None, admin_password: Optional[str] = None,
                 job_execution: bool = False, timeout_s: float = 90.0,
                 extra_args: Sequence[str] = (), cleanup_dir: Optional[os.PathLike] = None) -> ServerHandle:
    """Start `mlflow server` and return once /health answers (or raise with the server's log).

    port None: a free port. http_workers None: 1 on a SQLite/file store (one process owns the file,
    so writes never race), else MLflow's default of 4. state_dir (default ./mlflow-server) holds
    the server log and the basic-auth state. job_execution False turns off MLflow 3's background
    job runner (seven huey processes the experiment tracking does not use), which matters on small
    machines. cleanup_dir: a folder removed when the server stops because its starter died.
    """
    if port is None:
        port = free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    elif port_in_use(host, port):
        raise OSError(f"port {port} on {host} is already in use; pick another with --port (or stop that server)")
    state = Path(state_dir or "mlflow-server").resolve()
    state.mkdir(parents=True, exist_ok=True)
    if http_workers is None:
        http_workers = 1 if is_local_store(backend_store_uri) else 4
    if auth:
        check_auth_installed()
    settings = auth_settings(state, admin_password) if auth else None
    cmd = server_command(backend_store_uri, host, port, artifacts_destination=artifacts_destination,
                         default_artifact_root=default_artifact_root, auth=auth, allowed_hosts=allowed_hosts,
                         http_workers=http_workers, extra_args=extra_args)
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # client settings, not ours
        env.pop(var, None)
    if settings:
        env.update(settings.env())
    log_path = state / f"server-{port}.log"
    log_file = open(log_path, "w")
    from training.tracking import watchdog

    guard = [sys.executable, os.path.abspath(watchdog.__file__)] + \
        (["--cleanup", str(cleanup_dir)] if cleanup_dir else []) + ["--"]
    proc = subprocess.Popen(guard + cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, env=env,
                            start_new_session=True)
    handle = ServerHandle(uri=client_uri(host, port), process=proc, log_path=log_path,
                          backend_store_uri=backend_store_uri, auth=settings, _log_file=log_file)
    try:
        wait_healthy(handle, timeout_s)
    except BaseException:
        handle.stop()
        raise
    return handle


def wait_healthy(handle: ServerHandle, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {handle.process.returncode} before it answered "
                               f"/health; its log ({handle.log_path}) ends with:\n{handle.log_tail()}")
        if handle.healthy(timeout_s=1.0):
            return
        time.sleep(0.25)
    raise TimeoutError(f"mlflow server at {handle.uri} did not answer /health within {timeout_s:.0f} s; "
                       f"its log ({handle.log_path}) ends with:\n{handle.log_tail()}")
