"""Optimisers, schedules and losses built from config dicts, validated before any training."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("cross_entropy", "nll")
SCHEDULES = ("none", "cosine", "onecycle", "linear_warmup_decay")


def _number(spec: Mapping[str, Any], key: str, default: float, lo: float, hi: float = float("inf"),
            lo_open: bool = False) -> float:
    value = spec.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"optimizer {key} must be a number, got {value!r}") from None
    ok = (value > lo if lo_open else value >= lo) and value < hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi != float("inf") else "")
        raise ValueError(f"optimizer {key} must be {bound}, got {value!r}")
    return value


def check_optimizer_spec(spec: Mapping[str, Any]) -> dict:
    """Normalised optimizer spec, or a ValueError naming the bad value."""
    name = str(spec.get("name", "sgd")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")
    out = dict(name=name, lr=_number(spec, "lr", 1e-3, 0.0, lo_open=True),
               weight_decay=_number(spec, "weight_decay", 0.0, 0.0))
    out["bias_lr_scale"] = _number(spec, "bias_lr_scale", 1.0, 0.0, lo_open=True)
    out["norm_weight_decay"] = None if spec.get("norm_weight_decay") is None else \
        _number(spec, "norm_weight_decay", 0.0, 0.0)
    if name == "sgd":
        out["momentum"] = _number(spec, "momentum", 0.0, 0.0, 1.0)
        out["nesterov"] = bool(spec.get("nesterov", False))
        if out["nesterov"] and out["momentum"] == 0:
            raise ValueError("nesterov=True needs momentum > 0")
    valid = ("name", "lr", "weight_decay", "bias_lr_scale", "norm_weight_decay", "momentum", "nesterov")
    unknown = set(spec) - set(valid)
    if unknown:
        raise ValueError(f"unknown optimizer settings {sorted(unknown)}; valid: {', '.join(valid)}")
    return out


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_scale: float = 1.0,
                 norm_weight_decay: Optional[float] = None) -> List[Dict[str, Any]]:
    """One group, or up to three:
    - airbench's fast biases: normalisation (and whitening) biases learn `bias_lr_scale` times
      faster with weight decay divided by it, so their per-step decay (lr x wd) is the same. Why:
      those biases only shift activations; a high rate lets them track the fast-moving
      statistics of a short, high-lr schedule.
    - normalisation weights (BN scales) with their own weight decay, `norm_weight_decay`
      (None: the common one). Why: at a fast schedule's lr the common decay shrinks learnt BN
      scales to ~0.25 in 10 epochs; 0 keeps them learnt but undecayed (torchvision's
      --norm-weight-decay).
    Frozen parameters are left out.
    """
    fast_ids, norm_ids = set(), set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        bias, weight = getattr(module, "bias", None), getattr(module, "weight", None)
        if bias_lr_scale != 1.0 and (is_norm or getattr(module, "lr_scaled_bias", False)) \
                and isinstance(bias, nn.Parameter):
            fast_ids.add(id(bias))
        if norm_weight_decay is not None and is_norm and isinstance(weight, nn.Parameter):
            norm_ids.add(id(weight))
    trainable = [p for p in model.parameters() if p.requires_grad]
    special = fast_ids | norm_ids
    groups = [dict(params=[p for p in trainable if id(p) not in special], lr=lr, weight_decay=weight_decay)]
    if fast_ids:
        groups.append(dict(params=[p for p in trainable if id(p) in fast_ids], lr=lr * bias_lr_scale,
                           weight_decay=weight_decay / bias_lr_scale))
    norm_weights = [p for p in trainable if id(p) in norm_ids]
    if norm_weights:  # none when every BN scale is frozen (YourCNN learn_bn_scale=False)
        groups.append(dict(params=norm_weights, lr=lr, weight_decay=norm_weight_decay))
    return groups


def make_optimizer(params: Union[nn.Module, Iterable[torch.nn.Parameter]], spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer a spec names. Pass the model (not its parameters) to use bias_lr_scale or
    norm_weight_decay."""
    spec = check_optimizer_spec(spec)
    name, bias_lr_scale, norm_weight_decay = spec.pop("name"), spec.pop("bias_lr_scale"), spec.pop("norm_weight_decay")
    if isinstance(params, nn.Module):
        params = param_groups(params, spec["lr"], spec["weight_decay"], bias_lr_scale, norm_weight_decay)
    elif bias_lr_scale != 1.0 or norm_weight_decay is not None:
        raise ValueError("bias_lr_scale and norm_weight_decay need the model (to find its normalisation layers), "
                         "not a parameter list")
    if name == "sgd":
        return torch.optim.SGD(params, **spec)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](params, **spec)


def make_loss(name: str = "cross_entropy", label_smoothing: float = 0.0, out_activation: Optional[str] = None) -> nn.Module:
    """Cross-entropy on raw scores; NLL only when the model already ends in log-softmax."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {list(LOSSES)}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if name == "nll":
        if out_activation != "logsoftmax":
            raise ValueError("loss 'nll' needs log-probabilities: set out_activation='logsoftmax' or use 'cross_entropy'")
        return nn.NLLLoss()
    return nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int,
                   warmup_frac: float = 0.2, start_frac: float = 0.0, end_frac: float = 0.0):
    """(scheduler, interval) for a named schedule over `epochs` epochs of `steps_per_epoch` batches.

    cosine steps per epoch; onecycle and linear_warmup_decay (airbench-style triangle) per batch.
    linear_warmup_decay rises linearly from start_frac x lr to lr over warmup_frac of the steps,
    then falls linearly to end_frac x lr (airbench94: 0.2, 0.23, 0.07).
    """
    for key, value in (("start_frac", start_frac), ("end_frac", end_frac)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"lr schedule {key} must be in [0, 1], got {value!r}")
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must be in [0, 1), got {warmup_frac!r}")
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; valid: {list(SCHEDULES)}")
    if name == "none":
        return None, "epoch"
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"a schedule needs epochs >= 1 and steps_per_epoch >= 1, got {epochs}, {steps_per_epoch}")
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs), "epoch"
    total = epochs * steps_per_epoch
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total,
                                                   pct_start=warmup_frac), "batch"
    warm = max(1, int(warmup_frac * total))

    def factor(step: int) -> float:  # linear warm-up, then linear decay
        if step < warm:
            return start_frac + (1.0 - start_frac) * (step + 1) / warm
        return end_frac + (1.0 - end_frac) * max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "batch"
