"""Parameter and FLOP counts of the project's own modules (used for the Part 2 Q1 answer).

FLOPs here are 2 x the multiply-accumulates of every nn.Conv2d and nn.Linear for one input
(batch 1). Biases, BatchNorm, activations, pooling and residual additions are not counted:
they are linear in the activation size and small next to the convolutions.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (each shared parameter counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    # every output element is a dot product over (in_channels / groups) x kh x kw inputs
    kh, kw = module.kernel_size
    return output[0].numel() * (module.in_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return (output.numel() // output.shape[0]) * module.in_features


def count_flops(model: nn.Module, in_size: Sequence[int]) -> int:
    """2 x multiply-accumulates of all Conv2d and Linear layers for one input of shape in_size.

    Runs a dummy forward of a zero batch of size 1 with forward hooks, in eval mode under
    no_grad, on the model's device; the model's training flag and the torch RNG state are
    restored, so counting never changes what a later seeded build or training run does.
    """
    macs: List[int] = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        macs.append(_conv_macs(module, output) if isinstance(module, nn.Conv2d) else _linear_macs(module, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    rng_state, was_training = torch.get_rng_state(), model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        torch.set_rng_state(rng_state)
    return 2 * sum(macs)


def bottleneck_comparison(spatial_size: int = 32) -> Dict[str, Any]:
    """Part 2 Q1: the regular block (two 3x3 convs on 256 channels) vs the bottleneck block
    256 -> 64 (1x1) -> 64 (3x3) -> 256 (1x1), both built from models.cnn.

    FLOPs are for one 256 x spatial_size x spatial_size input (default 32x32, CIFAR-sized; the
    ResNet paper's diagram sits at 56x56, which scales both counts by (56/32)^2 and leaves the
    ratio unchanged). Parameter counts include the conv biases of the programme's blocks; both
    blocks have identity shortcuts (256 in, 256 out), so no shortcut parameters.
    The torch RNG state is restored, so calling this does not disturb seeded runs.
    """
    from models.cnn import ResidualBlock, ResidualBottleneckBlock

    in_size = (256, spatial_size, spatial_size)
    with torch.random.fork_rng(devices=[]):
        blocks = {
            "regular": ("ResidualBlock(256, [256, 256], [3, 3])", ResidualBlock(256, [256, 256], [3, 3])),
            "bottleneck": ("ResidualBottleneckBlock(256, [64], [3])", ResidualBottleneckBlock(256, [64], [3])),
        }
        result: Dict[str, Any] = {"input_size": in_size}
        for name, (spec, block) in blocks.items():
            result[name] = dict(block=spec, params=count_parameters(block), flops=count_flops(block, in_size))
    result["param_ratio"] = result["regular"]["params"] / result["bottleneck"]["params"]
    result["flop_ratio"] = result["regular"]["flops"] / result["bottleneck"]["flops"]
    return result
