"""A general, composable multilayer perceptron (programme Part 1).

`MLP(in_dim, dims, nonlins)`: `dims` lists every layer's output size *including* the output
layer, and `nonlins` gives the activation applied after each of those layers, by name
(see `ACTIVATIONS`) or as a module instance. The input is flattened first so the CNN heads
can reuse this class on feature maps.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence, Union

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softmax": nn.Softmax,
    "logsoftmax": nn.LogSoftmax,
    "lrelu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "none": nn.Identity,
    None: nn.Identity,
}

# Default kwargs used when an activation is created by name.
ACTIVATION_DEFAULT_KWARGS = defaultdict(dict, {"softmax": dict(dim=1), "logsoftmax": dict(dim=1)})

Nonlin = Union[str, None, nn.Module]


def make_activation(name_or_module: Nonlin, **kwargs) -> nn.Module:
    """Build an activation from a name in ACTIVATIONS, or return the given module as is."""
    if isinstance(name_or_module, nn.Module):
        return name_or_module
    if name_or_module not in ACTIVATIONS:
        valid = sorted(k for k in ACTIVATIONS if k is not None)
        raise ValueError(f"unknown activation {name_or_module!r}; valid names are {valid}, None, or an nn.Module")
    return ACTIVATIONS[name_or_module](**{**ACTIVATION_DEFAULT_KWARGS[name_or_module], **kwargs})


class MLP(nn.Module):
    """Linear -> act -> Linear -> act ... with one activation after each layer."""

    def __init__(self, in_dim: int, dims: Sequence[int], nonlins: Sequence[Nonlin]):
        super().__init__()
        dims, nonlins = list(dims), list(nonlins)
        if len(dims) != len(nonlins):
            raise ValueError(f"dims and nonlins must have equal lengths, got {len(dims)} dims {dims} "
                             f"and {len(nonlins)} nonlins {nonlins}")
        if not dims:
            raise ValueError("dims must hold at least the output dimension, got []")
        for d in [in_dim, *dims]:
            if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
                raise ValueError(f"layer sizes must be positive ints, got {d!r} in in_dim={in_dim!r}, dims={dims}")
        self.in_dim = in_dim
        self.out_dim = dims[-1]
        layers: list[nn.Module] = []
        for d_in, d_out, act in zip([in_dim, *dims[:-1]], dims, nonlins):
            layers += [nn.Linear(d_in, d_out), make_activation(act)]
        self.fc_layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, *) with prod(*) == in_dim -> (N, out_dim)."""
        return self.fc_layers(x.reshape(x.shape[0], -1))
