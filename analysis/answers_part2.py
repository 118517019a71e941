"""Part 2 answer (Q1): the bottleneck block vs the regular block, counted on the project's classes."""
from __future__ import annotations

from typing import Any, Dict

from analysis.text import bullet, count

def _weights_and_rf() -> Dict[str, Dict[str, Any]]:
    """Bias-free weight counts and receptive fields of the two blocks, built from models.cnn."""
    import torch
    from torch import nn

    from models.cnn import ResidualBlock, ResidualBottleneckBlock

    with torch.random.fork_rng(devices=[]):
        blocks = {"regular": ResidualBlock(256, [256, 256], [3, 3]),
                  "bottleneck": ResidualBottleneckBlock(256, [64], [3])}
    out = {}
    for name, block in blocks.items():
        convs = [m for m in block.main_path.modules() if isinstance(m, nn.Conv2d)]
        out[name] = dict(weights=sum(c.weight.numel() for c in convs),
                         receptive_field=1 + sum(c.kernel_size[0] - 1 for c in convs),
                         kernels=[c.kernel_size[0] for c in convs],
                         channels=[c.out_channels for c in convs])
    return out


def part2_q1() -> str:
    from models.counting import bottleneck_comparison

    cmp = bottleneck_comparison()
    extra = _weights_and_rf()
    reg, bot = cmp["regular"], cmp["bottleneck"]
    h = cmp["input_size"][1]
    return "\n\n".join([
        "## Part 2", "### Question 1",
        f"Both blocks are built from the project's classes: the regular block is `{reg['block']}` (two 3x3 convs on "
        f"256 channels), the bottleneck `{bot['block']}` (1x1 256→64, 3x3 64→64, 1x1 64→256). Both keep 256 "
        f"channels in and out, so their shortcuts are identities without parameters.",
        bullet([
            f"**Parameters.** Regular: {count(reg['params'])} ({count(extra['regular']['weights'])} weights "
            f"+ {count(reg['params'] - extra['regular']['weights'])} biases). Bottleneck: {count(bot['params'])} "
            f"({count(extra['bottleneck']['weights'])} weights "
            f"+ {count(bot['params'] - extra['bottleneck']['weights'])} "
            f"biases). The regular block has {cmp['param_ratio']:.1f}x more parameters.",
            f"**FLOPs** (2 x multiply-accumulates of the convs, one {cmp['input_size'][0]}x{h}x{h} input): regular "
            f"{count(reg['flops'])}, bottleneck {count(bot['flops'])}, a ratio of {cmp['flop_ratio']:.1f}x. "
            f"Qualitatively: a stride-1 conv costs its weight count once per output position, so with the spatial "
            f"size unchanged the FLOPs follow the parameter counts; the bottleneck does its expensive 3x3 "
            f"convolution on 64 instead of 256 channels (16x cheaper) and pays only two cheap 1x1 projections.",
            f"**Combining the input spatially (within feature maps).** Each output of the regular block sees a "
            f"{extra['regular']['receptive_field']}x{extra['regular']['receptive_field']} window of the input (two "
            f"stacked 3x3 convs); the bottleneck's 1x1 convs add no spatial extent, so it sees only "
            f"{extra['bottleneck']['receptive_field']}x{extra['bottleneck']['receptive_field']}. The regular block "
            f"combines information over a larger neighbourhood per block.",
            "**Combining across feature maps.** Both mix all channels, but differently: every regular conv maps all "
            "256 input maps to all 256 output maps at every spatial offset (a full-rank channel mixing, twice). The "
            "bottleneck mixes across maps mainly with the 1x1 projections, and squeezes everything through 64 "
            "channels: the map from the 256 input to the 256 output channels has rank at most 64. It is far cheaper, "
            "at the price of a lower-dimensional (compressed) cross-channel representation in the middle, which is "
            "why bottlenecks are used deep in the network, where channels are many and redundant."]),
    ])
