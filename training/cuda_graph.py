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

Limits, each checked by the caller (ClassifierTrainer) before any work: CUDA only; a constant
learning rate (a captured step replays the lr it was captured with, so no scheduler); no
torch.compile (its reduce-overhead mode captures graphs itself). Adam/AdamW need
`capturable=True` (their step counter lives on the device); it is switched on here, before the
first step, and checkpoints store it off so they load anywhere.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]

_UNCAPTURED_WARNING = ".*capturable=True.*without.*graph capture.*"


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


class GraphedTrainStep:
    """Calls `step_fn(X, y) -> (loss, num_correct)` (which runs backward and optimizer.step but not
    zero_grad) eagerly for `warmup` batches, captures it on the next batch of the same shape and
    replays it from then on. `fallback` records why capture failed, if it did; the step is then
    eager for good (the capture itself changes nothing: a captured graph has not run yet)."""

    def __init__(self, step_fn: StepFn, optimizer: torch.optim.Optimizer, warmup: int = 3):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the optimizer state must exist before capture), got {warmup}")
        self.step_fn, self.optimizer, self.warmup = step_fn, optimizer, warmup
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.fallback: Optional[str] = None
        self.replays = self.eager_steps = 0
        self._shape = None  # (X.shape, X.stride(), y.shape) the graph is (to be) captured for
        self._warm = 0
        self._static = None  # (X, y, loss, num_correct) of the captured graph
        make_capturable(optimizer)

    def reset(self) -> None:
        """Forget the graph (call after the optimizer's state tensors were replaced, e.g. by
        load_state_dict): the next batches warm up and capture again."""
        self.graph, self._static, self._shape, self._warm = None, None, None, 0
        make_capturable(self.optimizer)

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(X.shape), X.stride(), tuple(y.shape))
        if self._shape is None:
            self._shape = key
        if self.graph is not None and key == self._shape:
            static_X, static_y, static_loss, static_correct = self._static
            static_X.copy_(X, non_blocking=True)
            static_y.copy_(y, non_blocking=True)
            self.graph.replay()
            self.replays += 1
            return static_loss.clone(), static_correct.clone()  # the next replay overwrites the static ones
        if self.fallback is None and self.graph is None and key == self._shape and self._warm >= self.warmup:
            captured = self._capture(X, y)
            if captured is not None:
                return captured
        self._warm += key == self._shape
        return self._eager(X, y, side_stream=self.graph is None and self.fallback is None)

    def _eager(self, X, y, side_stream: bool):
        self.eager_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_UNCAPTURED_WARNING)
            if not side_stream:
                return self.step_fn(X, y)
            # Warm-up runs on a side stream, as capture requires (lazy initialisations must not
            # land on the capture stream's history).
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                out = self.step_fn(X, y)
            main.wait_stream(side)
            return out

    def _capture(self, X, y):
        static_X, static_y = X.clone(), y.clone()  # clone keeps X's memory format (channels_last)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        try:
            # The outer stream context puts the current stream back even when a failed capture
            # leaves torch.cuda.graph's own stream context unexited.
            with torch.cuda.stream(torch.cuda.current_stream()), torch.cuda.graph(graph):
                static_loss, static_correct = self.step_fn(static_X, static_y)
        except Exception as e:  # noqa: BLE001 - any capture failure means "train eagerly", not "stop"
            self.fallback = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"CUDA graph capture of the training step failed, training eagerly: {self.fallback}")
            return None
        self.graph, self._static = graph, (static_X, static_y, static_loss, static_correct)
        graph.replay()  # capture only recorded the step: run it for this batch
        self.replays += 1
        return static_loss.clone(), static_correct.clone()
