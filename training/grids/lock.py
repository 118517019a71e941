"""At most one process runs a grid on a store, and trains a configuration, at a time.

Why: two identical grid commands on one store would both train every configuration, writing the
same checkpoint and results files at once (and race on a fresh SQLite store's schema migration).
A `flock` is held for the process's whole grid, so it dies with the process (even on SIGKILL) and
never needs cleaning up; the file names its holder for the "already running in pid N on HOST"
message. Lock files are left in place: unlinking a flock file races its next user.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from pathlib import Path
from typing import IO, Iterator, Optional

_HELD: dict = {}  # lock path -> open file, so a process re-entering its own lock does not block itself


class GridBusyError(RuntimeError):
    """Another live process holds the lock."""


def lock_dir() -> Path:
    """$ARCHLAB_LOCK_DIR, else ~/.cache/archlab/locks (flock is per machine, like this folder)."""
    return Path(os.environ.get("ARCHLAB_LOCK_DIR") or Path.home() / ".cache" / "archlab" / "locks")


def canonical_store(uri: str) -> str:
    """One spelling per store: sqlite:///rel.db and sqlite:////abs/rel.db are the same file."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.realpath(uri[len("sqlite:///"):])
    if "://" not in uri:
        return os.path.realpath(uri)
    return uri.rstrip("/")


def grid_lock_path(store_uri: str, grid: str) -> Path:
    key = hashlib.sha1(f"{canonical_store(store_uri)}\n{os.path.abspath(grid) if os.sep in grid else grid}"
                       .encode()).hexdigest()[:16]
    return lock_dir() / f"{Path(grid).stem}-{key}.lock"


def _holder(f: IO) -> str:
    f.seek(0)
    text = f.read().strip()
    return text or "another process"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[Optional[str]]:
    """Hold the flock on `path`; yields None when held, else who holds it ("pid N on HOST")."""
    if str(path) in _HELD:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield _holder(f)
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        _HELD[str(path)] = f
        try:
            yield None
        finally:
            _HELD.pop(str(path), None)
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def grid_lock(store_uri: str, grid: str) -> Iterator[None]:
    """The lock of grid `grid` on store `store_uri`, or GridBusyError naming its holder."""
    path = grid_lock_path(store_uri, grid)
    with exclusive(path) as holder:
        if holder is not None:
            raise GridBusyError(f"grid {grid} is already running on this store in {holder} (lock {path}); "
                                f"wait for it to finish, or stop that process, then rerun")
        yield


@contextlib.contextmanager
def config_lock(checkpoint_dir: str, label: str) -> Iterator[Optional[str]]:
    """The lock of one configuration's checkpoint files; yields None when held, else the holder."""
    with exclusive(Path(checkpoint_dir) / ".locks" / f"{label}.lock") as holder:
        yield holder


@contextlib.contextmanager
def store_setup_lock(store_uri: str) -> Iterator[None]:
    """Serialise the first touch of a local store (MLflow creates and migrates a fresh SQLite file
    then; two processes doing it at once fail with a migration traceback). Blocking: it takes seconds."""
    key = hashlib.sha1(canonical_store(store_uri).encode()).hexdigest()[:16]
    path = lock_dir() / f"store-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
