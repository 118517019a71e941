"""One torch thread for the loader's own batch ops on a CPU, whatever the training uses.

A batch gather + crop/flip + normalise of 128 CIFAR images is split by torch across every
intra-op thread; when another process holds one of the two cores, the thread on the busy core
arrives late at each OpenMP barrier and the whole batch waits for it: bench/data_path measured
3-4k img/s at 2 threads with one core busy against 125-135k img/s on one thread. The training
step around it keeps its own thread count (its large convolutions do gain from two).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch on `n` intra-op threads; the count before comes back even on error."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def single_thread(device: torch.device) -> Iterator[None]:
    """Run the block with torch on one intra-op thread when `device` is the CPU; restore after."""
    with torch_threads(1 if device.type == "cpu" else torch.get_num_threads()):
        yield
