"""Child processes die with their parent: worker processes ask the kernel for a signal when the
driver dies (`PR_SET_PDEATHSIG`), and a driver stopping on an error or a signal ends its workers
itself before it leaves. Why: a `kill -9` of a grid's driver used to leave its workers training
into a void (and then hanging), each holding a RUNNING run nobody would end."""
from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Iterable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """This process gets `sig` when its parent process dies (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def stop_processes(processes: Iterable, grace_s: float = 30.0) -> None:
    """SIGTERM each live multiprocessing.Process (they close their runs KILLED), SIGKILL those
    still alive after `grace_s`."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        try:
            p.terminate()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5.0)
