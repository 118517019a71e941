"""`RunOptions`: how and where one CIFAR-10 run executes; never part of its identity (config hash).

The recipe (training.cnn.recipe) says *what* is trained; these say where results, checkpoints and
data live, whether MLflow tracks the run, and how the device runs it (turned into an
`ExecutionPolicy` once per run). Changing any of them never changes a run's result.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

EXECUTION_CHOICES = {"amp": ("auto", "bf16", "fp16", "off"), "channels_last": ("auto", "on", "off"),
                     "cuda_graphs": ("auto", "on", "off")}


@dataclass(frozen=True)
class RunOptions:
    """cnn_experiment's execution arguments (out_dir, device, checkpoints) and execution-only **kw."""

    out_dir: str = "./results"
    device: Optional[str] = None       # None: CUDA when available, else the CPU
    checkpoints: Optional[str] = None  # the best model's file (default: <checkpoint_dir>/<name>-<hash>.pt)
    data_dir: Optional[str] = None
    download: bool = False
    amp: str = "auto"                  # auto: bf16 autocast on CUDA, off on CPU | bf16 | fp16 | off
    channels_last: str = "auto"        # auto: on CUDA and CPU (conv nets gain 15-30 %) | on | off
    cuda_graphs: str = "auto"          # auto: on CUDA with a constant lr (exp1's launch-bound nets) | on | off
    tracking: bool = True              # False: no MLflow (e.g. a bare GPU box); results JSON only
    grid: Optional[str] = None         # the grid this run is a child of (a tag)
    restart: bool = False              # train afresh: no skip, no resume
    checkpoint_dir: str = "checkpoints"
    log_model: bool = True
    print_every: int = 1
    dry_run: bool = False              # validate everything (and find the data), train nothing
    first_seed: bool = True            # False: a further seed, its run and results file named <name>_s<seed>

    PROGRAMME_ARGS = ("out_dir", "device", "checkpoints")  # cnn_experiment's own arguments, not **kw

    @classmethod
    def kw_names(cls) -> list:
        """The execution options a caller gives through cnn_experiment's **kw."""
        return [f.name for f in fields(cls) if f.name not in cls.PROGRAMME_ARGS]

    def validate(self) -> "RunOptions":
        for name, valid in EXECUTION_CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        return self

    def changed_kw(self) -> Dict[str, Any]:
        """The **kw options that differ from their defaults (what a caller had to give)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in self.PROGRAMME_ARGS and getattr(self, f.name) != f.default}
