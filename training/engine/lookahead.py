"""Lookahead with an EMA anchor (airbench94): every few steps the weights are pulled onto a slow
average of themselves, and at the last step they become that average.

Why: with a short, high-lr schedule the raw weights end noisy; averaging the trajectory, more
strongly as the run nears its end (decay ramps up with (step / total)^3), is worth a few tenths
of a point at no cost. BatchNorm running statistics are averaged too (they are part of the model's
floating-point state), so the averaged weights are evaluated with matching statistics.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn


class Lookahead:
    def __init__(self, model: nn.Module, total_steps: int, every: int = 5, decay: float = 0.95, power: float = 3.0):
        if total_steps < 1 or every < 1:
            raise ValueError(f"lookahead needs total_steps >= 1 and every >= 1, got {total_steps}, {every}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"lookahead decay must be in (0, 1), got {decay!r}")
        self.model, self.total_steps, self.every, self.decay, self.power = model, total_steps, every, decay, power
        self.anchor = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.steps = 0

    def decay_at(self, step: int) -> float:
        """Weight kept on the anchor at `step` (1.0 at the end: the weights become the anchor)."""
        if step >= self.total_steps:
            return 1.0
        return self.decay ** self.every * (step / self.total_steps) ** self.power

    @torch.no_grad()
    def step(self) -> None:
        """Call after each optimizer step."""
        self.steps += 1
        if self.steps % self.every and self.steps < self.total_steps:
            return
        keep = self.decay_at(self.steps)
        current = self.model.state_dict()
        for name, anchor in self.anchor.items():
            anchor.lerp_(current[name], 1.0 - keep)
            current[name].copy_(anchor)

    def state_dict(self) -> Dict[str, Any]:
        return {"anchor": self.anchor, "steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name, tensor in state["anchor"].items():
            self.anchor[name].copy_(tensor)
        self.steps = int(state["steps"])
