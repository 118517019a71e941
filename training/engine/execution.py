"""`ExecutionPolicy`: how a run uses its device, decided once, from the device, before any work.

Device, autocast precision, memory format, CUDA-graphed steps and cuDNN autotuning are chosen
here and nowhere else; the trainer runs plain eager steps unless the policy hands it graphed ones.
None of it changes what a run learns beyond float rounding, so none of it is in a config hash.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class ExecutionPolicy:
    device: torch.device
    amp_dtype: Optional[torch.dtype]   # autocast dtype of forward passes (None: fp32)
    channels_last: bool                # model and batches in NHWC (conv nets gain 15-30 % on CUDA and CPU)
    cuda_graphs: bool                  # replay each training step as one CUDA graph (training.engine.cuda_graph)
    cudnn_benchmark: bool              # fixed shapes: cuDNN times its algorithms once per shape

    @classmethod
    def decide(cls, device: Optional[str] = None, amp: str = "auto", channels_last: str = "auto",
               cuda_graphs: str = "auto", lr_schedule: str = "none") -> "ExecutionPolicy":
        """The policy for `device` (None: CUDA when available). cuda_graphs="on" where a graph
        cannot work is refused here, with the reasons, before any data is read."""
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cpu":  # one CPU device: "cpu:0" is "cpu" (torch cannot map checkpoints to "cpu:0")
            dev = torch.device("cpu")
        return cls(device=dev, amp_dtype=autocast_dtype(amp, dev), channels_last=channels_last != "off",
                   cuda_graphs=use_cuda_graph(cuda_graphs, dev, lr_schedule), cudnn_benchmark=dev.type == "cuda")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def apply(self) -> None:
        """Process-wide switches (cuDNN autotuning, what bench/gpu_check measured), once per run."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `amp` (auto | bf16 | fp16 | off) on `device`; None: fp32."""
    if device.type != "cuda" or amp == "off":
        return None  # bf16 autocast is ~10x slower on CPUs without native bf16
    return torch.float16 if amp == "fp16" else torch.bfloat16


def use_cuda_graph(option: str, device: torch.device, lr_schedule: str = "none") -> bool:
    """Whether training steps are replayed as CUDA graphs (option auto | on | off); "on" where a
    graph cannot work is refused with the reasons."""
    if option == "off":
        return False
    blockers = [reason for reason, blocks in (
        (f"device {device.type!r} is not CUDA", device.type != "cuda"),
        (f"lr_schedule={lr_schedule!r} changes the lr a graph would replay", lr_schedule != "none")) if blocks]
    if blockers and option == "on":
        raise ValueError(f"cuda_graphs='on' cannot work here: {'; '.join(blockers)}; use cuda_graphs 'auto' or 'off'")
    return not blockers
