"""`python -m training.tracking.watchdog [--cleanup DIR] -- CMD ...`: run CMD (an `mlflow server`)
in this process's group and end that group when stdin closes, i.e. when the process that started
us dies, however it dies (a `kill -9`, a process-group kill, an OOM kill).

Why: `mlflow server` runs uvicorn as a further child and has its own session (so a Ctrl-C at the
terminal does not reach it first); a private server of a killed grid, or the team server of a
killed `entrypoints.server`, used to stay up forever. The parent holds the write end of our stdin
and never writes: the kernel closes it when the parent exits. --cleanup DIR is removed afterwards
(a private server's temp folder).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import List, Optional, Tuple

GRACE_S = 10.0


def parse(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    cleanup = None
    if argv[:1] == ["--cleanup"]:
        cleanup, argv = argv[1], argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        raise SystemExit("usage: python -m training.tracking.watchdog [--cleanup DIR] -- CMD ...")
    return cleanup, argv[1:]


def main(argv: List[str]) -> int:
    cleanup, cmd = parse(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # ServerHandle.stop() signals our whole group
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    threading.Thread(target=lambda: (proc.wait(), stop.set()), daemon=True).start()
    stop.wait()
    stopped_by_us = proc.poll() is None
    if stopped_by_us:
        os.killpg(0, signal.SIGTERM)
        try:
            proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    if cleanup:
        shutil.rmtree(cleanup, ignore_errors=True)
    if stopped_by_us:
        os.killpg(0, signal.SIGKILL)  # uvicorn's stragglers, and this process
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
