"""A whole training step (forward, loss, backward, clip, optimizer step) replayed as one CUDA graph.

Why: the exp1 nets are launch-bound on a GPU. On an H200 one 45000-image epoch of K=[32] L=2 took
about 1 s whatever K was (~2.8 ms of host time per 128-image step: Python, autograd and ~150
kernel launches); the GPU itself was mostly idle. A captured step is replayed with one launch, so
the host cost per step falls to a copy into the static input, the replay and two small clones.

The recipe is PyTorch's "whole-network capture": a few eager warm-up steps on a side stream (they
are real training steps: they create the optimizer state, pick cuDNN algorithms), then one capture
whose gradients are allocated inside the graph's pool (so every replay writes them afresh, as
`zero_grad(set_to_none=True)` + backward would), then a replay per batch. Batches of another
shape (an epoch's short last batch) run eagerly on the same parameters and optimizer state.

A step that synchronises with the host (`.item()`, a data-dependent shape) cannot be captured.
The last warm-up runs under `torch.cuda.set_sync_debug_mode("warn")`, so such a step is found
before any capture (and still runs once) and simply stays eager. A capture that fails anyway is an error (with the
remedy, `cuda_graphs='off'`), not a fallback: a failed capture can leave the allocator and the
RNG in capture mode for the rest of the process.

Limits, each checked before any work (training.engine.execution.ExecutionPolicy chooses graphs
only where they hold; ClassifierTrainer refuses the rest): CUDA only; a constant learning rate (a
captured step replays the lr it was captured with, so no scheduler). Adam/AdamW need
`capturable=True` (their step counter lives on the device); it is switched on here, before the
first step, and checkpoints store it off so they load anywhere.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, List, Optional, Tuple

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]

_SYNC_WARNING = "synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") says


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch an optimizer to device-side step counters (Adam, AdamW) so its step can be captured;
    state loaded from a checkpoint (counters on the CPU) is moved beside its parameters."""
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue  # SGD: nothing host-side in its step, capturable as it is
        group["capturable"] = True
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device != p.device:
                optimizer.state[p]["step"] = step.to(p.device)
    if "capturable" in optimizer.defaults:
        optimizer.defaults["capturable"] = True


def uncapturable_state_dict(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict with capturable off, so a checkpoint written by a graphed run
    loads into an eager run on any device (capturable=True is refused on the CPU)."""
    state = optimizer.state_dict()  # param_groups are fresh dicts: editing them leaves the optimizer as it is
    for group in state["param_groups"]:
        if "capturable" in group:
            group["capturable"] = False
    return state


@contextlib.contextmanager
def _host_syncs(found: List[str]):
    """Inside the block CUDA's sync debug mode warns (the code still runs); the host syncs it
    reports are appended to `found`, every other warning is passed on."""
    previous_mode = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous_mode)
    for w in caught:
        if _SYNC_WARNING in str(w.message):
            # torch appends " (Triggered internally at <file>:<line>.)" to warnings raised in C++
            found.append(str(w.message).split(" (Triggered internally at")[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class GraphedTrainStep:
    """Calls `step_fn(X, y) -> (loss, num_correct)` (which runs backward and optimizer.step but not
    zero_grad) eagerly for `warmup` batches, captures it on the next batch of the same shape and
    replays it from then on. `fallback` says why the step stays eager, if it does."""

    def __init__(self, step_fn: StepFn, optimizer: torch.optim.Optimizer, warmup: int = 3):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the optimizer state must exist before capture), got {warmup}")
        self.step_fn, self.optimizer, self.warmup = step_fn, optimizer, warmup
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.fallback: Optional[str] = None
        self.replays = self.eager_steps = 0
        self._key = None  # shapes, strides and dtypes the graph is (to be) captured for
        self._warm = 0
        self._static = None  # (X, y, loss, num_correct) of the captured graph
        self._streams = None  # (side, capture) streams on the batches' device
        make_capturable(optimizer)

    def reset(self) -> None:
        """Forget the graph (call after the optimizer's state tensors were replaced, e.g. by
        load_state_dict): the next batches warm up and capture again."""
        self.graph, self._static, self._key, self._warm = None, None, None, 0
        make_capturable(self.optimizer)

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # Streams, the capture and the replay all on the batch's device, which need not be the
        # current one (a grid worker on cuda:1).
        with torch.cuda.device(X.device):
            return self._call(X, y)

    def _call(self, X, y):
        key = (tuple(X.shape), X.stride(), X.dtype, tuple(y.shape), y.dtype)
        if self._key is None:
            self._key = key
            self._streams = (torch.cuda.Stream(X.device), torch.cuda.Stream(X.device))
        if self.graph is not None and key == self._key:
            static_X, static_y, static_loss, static_correct = self._static
            static_X.copy_(X, non_blocking=True)
            static_y.copy_(y, non_blocking=True)
            self.graph.replay()
            self.replays += 1
            return static_loss.clone(), static_correct.clone()  # the next replay overwrites the static ones
        if self.fallback is None and self.graph is None and key == self._key and self._warm >= self.warmup:
            return self._capture(X, y)
        if key != self._key:
            out, _ = self._eager(X, y, side_stream=self.graph is None)
            if self.graph is not None:  # free the eager gradients: the graph keeps its own
                self.optimizer.zero_grad(set_to_none=True)
            return out
        self._warm += 1
        watch = self._warm == self.warmup and self.fallback is None
        out, sync = self._eager(X, y, side_stream=self.fallback is None, watch_syncs=watch)
        if sync:
            self.fallback = f"the training step synchronises with the host ({sync})"
            warnings.warn(f"CUDA graphs: {self.fallback}, which a graph cannot hold; training eagerly")
        return out

    def _eager(self, X, y, side_stream: bool, watch_syncs: bool = False):
        """One eager step; with watch_syncs, also the first host synchronisation it made (or None),
        seen by CUDA's sync debug mode in "warn" (the step still runs exactly once)."""
        self.eager_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if not side_stream:
            return self.step_fn(X, y), None
        # Warm-up runs on a side stream, as capture requires (lazy initialisations must not land
        # on the capture stream's history).
        side, main = self._streams[0], torch.cuda.current_stream(X.device)
        side.wait_stream(main)
        syncs: List[str] = []
        try:
            with torch.cuda.stream(side), (_host_syncs(syncs) if watch_syncs else contextlib.nullcontext()):
                out = self.step_fn(X, y)
        finally:
            main.wait_stream(side)
        return out, (syncs[0] if syncs else None)

    def _capture(self, X, y):
        static_X, static_y = X.clone(), y.clone()  # clone keeps X's memory format (channels_last)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        try:
            # The outer stream context puts the current stream back even when a failed capture
            # leaves torch.cuda.graph's own stream context unexited.
            with torch.cuda.stream(torch.cuda.current_stream(X.device)), \
                    torch.cuda.graph(graph, stream=self._streams[1]):
                static_loss, static_correct = self.step_fn(static_X, static_y)
        except Exception as e:
            # capture_end's own error usually hides the step's: name both
            during = f" (raised while handling {type(e.__context__).__name__}: {e.__context__})" if e.__context__ else ""
            raise RuntimeError(
                f"CUDA graph capture of the training step failed: {type(e).__name__}: {e}{during}; "
                f"train with cuda_graphs='off' (grid/reproduce: --cuda-graphs off)") from e
        self.graph, self._static = graph, (static_X, static_y, static_loss, static_correct)
        graph.replay()  # capture only recorded the step: run it for this batch
        self.replays += 1
        return static_loss.clone(), static_correct.clone()
