"""YourCNN, archlab's own network for experiment 2 (programme Part 3), and its building blocks.

The programme asks for `YourCNN` in its cnn module with the CNN API (extra parameters allowed),
so `models.cnn` re-exports every name here lazily (`from models.cnn import YourCNN` works) while
this module imports `models.cnn` and never the reverse at import time: no import cycle.

Besides the net: its stages and blocks (`channel_stages`, `ConvBNAct`, `ConvPoolBNAct`,
`ZeroInitResidual`, `Stage`), the airbench patch-whitening stem (`PatchWhitening`) and the
test-time-augmentation switches the experiment uses (`tta_modes`, `tta_of`, `tta_off`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from models.cnn import CNN, SIZE_PRESERVING_CONV, ActivationSpec, Size2d, _check_dropout, _pair, pool_output_size

ActivationFactory = Callable[[], nn.Module]
YOURCNN_STEMS = ("conv", "whiten", "none")
TTA_MODES = ("none", "mirror", "mirror_translate")


def channel_stages(channels: Sequence[int]) -> List[Tuple[int, int]]:
    """Runs of equal width as (width, n_convs): [32,32,64,64,64] -> [(32, 2), (64, 3)].

    The experiments build channels as each K element repeated L times, so the runs are the K
    elements and n_convs is L.
    """
    stages: List[Tuple[int, int]] = []
    for c in channels:
        if stages and stages[-1][0] == c:
            stages[-1] = (c, stages[-1][1] + 1)
        else:
            stages.append((c, 1))
    return stages


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """Bias-free 3x3 size-preserving conv (a BatchNorm follows, which has its own shift)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ConvBNAct(nn.Sequential):
    """conv3x3 -> BN -> act; the full-resolution stem."""

    def __init__(self, in_channels: int, out_channels: int, activation: nn.Module, bn_momentum: float = 0.1):
        super().__init__(conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels, momentum=bn_momentum),
                         activation)


class ConvPoolBNAct(nn.Sequential):
    """conv3x3 -> pool -> BN -> act: a stage's entry, changing width and halving resolution.

    Pooling before the BN (airbench / ResNet-9 order) normalises 4x fewer positions and lets the
    BN see the statistics of what the rest of the stage actually receives.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: nn.Module, activation: nn.Module,
                 bn_momentum: float = 0.1):
        super().__init__(conv3x3(in_channels, out_channels), pool, nn.BatchNorm2d(out_channels, momentum=bn_momentum),
                         activation)


class ZeroInitResidual(nn.Module):
    """x + scale * branch(x) with branch = [conv -> BN -> act] * (n_convs - 1) -> conv -> BN.

    No activation after the sum, and the branch's last BN weight starts at 0 (zero_init=True):
    every block is exactly the identity at initialisation, so a stack of any depth starts as
    the shallow net formed by the stage-entry convs, with bounded activations and gradients;
    each block's scale is then learnt through that BN weight. Where BN scales are frozen (no
    learnt gate), `scale` < 1 bounds the stream instead: n blocks at 1/sqrt(n) add at most
    unit variance in all.
    """

    def __init__(self, channels: int, n_convs: int, make_activation_fn: ActivationFactory, bn_momentum: float = 0.1,
                 zero_init: bool = True, scale: float = 1.0):
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"a residual branch needs at least one conv, got n_convs={n_convs}")
        layers: List[nn.Module] = []
        for i in range(n_convs):
            layers += [conv3x3(channels, channels), nn.BatchNorm2d(channels, momentum=bn_momentum)]
            if i < n_convs - 1:
                layers.append(make_activation_fn())
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
        self.branch = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x) if self.scale == 1.0 else x + self.scale * self.branch(x)


class PatchWhitening(nn.Module):
    """airbench's stem: a frozen 2x2 conv whose filters whiten the training set's 2x2 patches.

    The filters are the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue + eps),
    each with its negation (so a following GELU keeps both signs): 2 * C * 4 = 24 channels for
    RGB. Decorrelated inputs make the first learnt layers far better conditioned, which is most
    of what a 10-epoch budget needs. `init_from_data(images)` sets the filters (the experiment
    calls it with the first training images); until then they are a frozen random init. Only
    the bias learns (it is in the optimiser's bias group, see training.engine.optim.param_groups).
    Output maps are one pixel smaller (no padding): 32x32 -> 31x31.
    """

    lr_scaled_bias = True

    def __init__(self, in_channels: int, patch_size: int = 2, eps: float = 5e-4):
        super().__init__()
        self.patch_size, self.eps = patch_size, eps
        self.out_channels = 2 * in_channels * patch_size ** 2
        self.conv = nn.Conv2d(in_channels, self.out_channels, patch_size, padding=0, bias=True)
        self.conv.weight.requires_grad_(False)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """images: (N, C, H, W), normalised as the model will see them."""
        c, k = images.shape[1], self.patch_size
        if c != self.conv.in_channels:
            raise ValueError(f"whitening expects {self.conv.in_channels}-channel images, got shape {tuple(images.shape)}")
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
        eigenvalues, eigenvectors = eigenvalues.flip(0).float(), eigenvectors.T.flip(0).float()
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)[:, None]).reshape(-1, c, k, k)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))

    @property
    def bias(self) -> nn.Parameter:
        """The one learnt parameter (what training.engine.optim.param_groups puts in the bias group)."""
        return self.conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Stage(nn.Sequential):
    """One width: ConvPoolBNAct entry, then the remaining n_convs-1 convs as residual pairs
    (an odd one left over becomes a single-conv residual), so the stage has exactly n_convs convs.
    Without zero-initialised gates the n residual blocks are each scaled by 1/sqrt(n)."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, pool: nn.Module,
                 make_activation_fn: ActivationFactory, bn_momentum: float = 0.1, zero_init_residual: bool = True,
                 scale_residuals: bool = False):
        rest = n_convs - 1
        n_blocks = rest // 2 + rest % 2
        scale = 1.0 / math.sqrt(n_blocks) if scale_residuals and n_blocks else 1.0
        blocks: List[nn.Module] = [ConvPoolBNAct(in_channels, out_channels, pool, make_activation_fn(), bn_momentum)]
        blocks += [ZeroInitResidual(out_channels, 2, make_activation_fn, bn_momentum, zero_init_residual, scale)
                   for _ in range(rest // 2)]
        if rest % 2:
            blocks.append(ZeroInitResidual(out_channels, 1, make_activation_fn, bn_momentum, zero_init_residual,
                                           scale))
        super().__init__(*blocks)


def _is_size_preserving_3x3(conv_params: Dict[str, Any]) -> bool:
    """Whether conv_params describe YourCNN's own conv geometry (3x3, stride 1, padding 1, no dilation)."""
    if set(conv_params) - {"kernel_size", "stride", "padding", "dilation"}:
        return False
    try:
        geometry = [_pair(conv_params.get(key, default), key)
                    for key, default in (("kernel_size", None), ("stride", 1), ("padding", 0), ("dilation", 1))]
    except ValueError:
        return False
    return geometry == [(3, 3), (1, 1), (1, 1), (1, 1)]


class YourCNN(CNN):
    """archlab's own net for experiment 2, after airbench94 (K. Jordan) and ResNet-9 (D. Page).

    Layout: [stem: conv3x3 -> BN -> act at full resolution] -> one Stage per run of equal widths
    in `channels` (conv -> pool -> BN -> act, then zero-initialised identity-skip residual pairs
    conv-BN-act-conv-BN) -> global max (or avg) pool -> the MLP over hidden_dims (may be empty:
    one linear layer) -> logits * logit_scale. Each stage pools once (pooling_type and
    pooling_params, default 2x2 max), so K=[32,64,128] at 32x32 ends at 4x4 before the global
    pool.

    Two CNN arguments do not shape this net, by design:
        pool_every: required by the programme's CNN API (cnn_experiment and the CLI always pass
            one, default 2) and validated as an int >= 1, but not used: pooling is once per stage
            (per K element), so depth never shrinks the maps. Any value gives the same model.
        conv_params: every conv is a bias-free 3x3, stride 1, padding 1 (a BatchNorm follows), so
            anything else would be silently dropped; it must be left unset (None or {}) or equal
            that geometry, else ValueError.

    Because every residual block is the identity at init and BN follows every conv, depth costs
    no trainability: L=30 convs per stage starts with gradient norms close to L=3.

    Extra keyword parameters (beyond the CNN API):
        width_mult: scales every width in `channels` (2 turns K=[32,64,128] into 64/128/256).
        stem: "conv" (a full-resolution conv3x3-BN-act, the first stage's width; True means this),
            "whiten" (PatchWhitening -> act, airbench's frozen patch-whitening stem) or "none" (False).
        dirac_init: start every stage conv as a partial identity (the first min(in, out) output
            channels copy their input channel), as airbench does; the rest keep Kaiming init.
        head_pool: "max" or "avg" global pooling before the head.
        logit_scale: multiplies the logits (1/8 as in ResNet-9 / airbench: a cooler softmax
            at init and a smaller effective learning rate for the head).
        dropout: Dropout before the head (only created when > 0).
        bn_momentum: BatchNorm momentum (PyTorch convention).
        learn_bn_scale: learn the BatchNorm scales (True) or freeze them at 1 (airbench). Why
            freeze: weight decay at a fast schedule's lr shrinks learnt scales to ~0.25, which
            squeezes every GELU input into its nearly linear range (measured on a 10-epoch run).
        zero_init_residual: start each residual branch's last BN weight at 0 (a learnt gate).
            None (default): when the scales are learnt. With frozen scales it must be off, and
            each of a stage's n residual blocks is scaled by 1/sqrt(n) instead.
        tta: test-time augmentation in eval mode: "none", "mirror" (mean logits of the image and
            its mirror) or "mirror_translate" (airbench's 6 views: mirror pairs of the image and of
            two 1-pixel reflect-padded translations). Switch it off for a while with `tta_off`.
    """

    _allow_empty_hidden_dims = True

    def __init__(self, in_size: Sequence[int], out_classes: int, channels: Sequence[int], pool_every: int,
                 hidden_dims: Sequence[int], conv_params: Optional[Dict[str, Any]] = None,
                 activation_type: ActivationSpec = "gelu", activation_params: Optional[Dict[str, Any]] = None,
                 pooling_type: str = "max", pooling_params: Optional[Dict[str, Any]] = None, *,
                 width_mult: float = 1.0, stem: Union[bool, str] = "conv", head_pool: str = "max",
                 logit_scale: float = 0.125, dropout: float = 0.0, bn_momentum: float = 0.1,
                 learn_bn_scale: bool = True, zero_init_residual: Optional[bool] = None, dirac_init: bool = False,
                 tta: str = "none"):
        self.width_mult = width_mult
        self.stem = {True: "conv", False: "none"}.get(stem, stem) if isinstance(stem, bool) else stem
        self.dirac_init = dirac_init
        self.head_pool = head_pool
        self.logit_scale = logit_scale
        self.dropout = dropout
        self.bn_momentum = bn_momentum
        self.learn_bn_scale = learn_bn_scale
        self.zero_init_residual = learn_bn_scale if zero_init_residual is None else zero_init_residual
        self.tta = tta
        super().__init__(in_size, out_classes, channels, pool_every, hidden_dims, conv_params=conv_params,
                         activation_type=activation_type, activation_params=activation_params,
                         pooling_type=pooling_type, pooling_params=pooling_params)

    @property
    def stages(self) -> List[Tuple[int, int]]:
        """(width after width_mult, n_convs) per stage."""
        return [(max(1, int(round(c * self.width_mult))), n) for c, n in channel_stages(self.channels)]

    def _check_args(self) -> None:
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, (int, float)) or self.width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got {self.width_mult!r}")
        if self.stem not in YOURCNN_STEMS:
            raise ValueError(f"stem must be one of {list(YOURCNN_STEMS)} (or True/False), got {self.stem!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {list(TTA_MODES)}, got {self.tta!r}")
        if self.head_pool not in ("max", "avg"):
            raise ValueError(f"head_pool must be 'max' or 'avg', got {self.head_pool!r}")
        if not isinstance(self.logit_scale, (int, float)) or not self.logit_scale > 0:
            raise ValueError(f"logit_scale must be a positive number, got {self.logit_scale!r}")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum!r}")
        if not isinstance(self.learn_bn_scale, bool):
            raise ValueError(f"learn_bn_scale must be true or false, got {self.learn_bn_scale!r}")
        if self.zero_init_residual and not self.learn_bn_scale:
            raise ValueError("zero_init_residual=True needs learn_bn_scale=True: a frozen zero BN scale would switch "
                             "its residual branch off for good; leave zero_init_residual unset (or false) with "
                             "learn_bn_scale=False, which scales the branches by 1/sqrt(blocks) instead")
        _check_dropout(self.dropout)
        super()._check_args()
        if not _is_size_preserving_3x3(self.conv_params):
            raise ValueError(f"YourCNN's convs are always 3x3, stride 1, padding 1 (bias-free, a BatchNorm follows), "
                             f"so conv_params {self.conv_params} would be ignored; leave conv_params unset (or "
                             f"{SIZE_PRESERVING_CONV})")

    def _check_feature_maps(self) -> None:
        """One pool per stage: walk it with size-preserving convs and pool_every = each stage's length."""
        size: Size2d = (self.in_size[1], self.in_size[2])
        if self.stem == "whiten":  # the 2x2 whitening conv has no padding
            size = (size[0] - 1, size[1] - 1)
        for i, (width, _) in enumerate(self.stages, start=1):
            size = pool_output_size(size, **self.pooling_params)
            if min(size) < 1:
                max_stages = i - 1
                raise ValueError(f"YourCNN pools once per stage and the feature maps shrink below 1x1 at stage {i} "
                                 f"(width {width}, pool {i}): size {size[0]}x{size[1]} for in_size {self.in_size} "
                                 f"and pooling_params {self.pooling_params}; this input allows at most {max_stages} "
                                 f"stages (runs of equal width in channels), got {len(self.stages)}")

    def _make_feature_extractor(self) -> nn.Sequential:
        layers: List[nn.Module] = []
        in_channels = self.in_size[0]
        if self.stem == "conv":
            stem_width = self.stages[0][0]
            layers.append(ConvBNAct(in_channels, stem_width, self._make_activation(), self.bn_momentum))
            in_channels = stem_width
        elif self.stem == "whiten":
            whitening = PatchWhitening(in_channels)
            layers += [whitening, self._make_activation()]
            in_channels = whitening.out_channels
        for width, n_convs in self.stages:
            stage = Stage(in_channels, width, n_convs, self._make_pool(), self._make_activation, self.bn_momentum,
                          self.zero_init_residual, scale_residuals=not self.learn_bn_scale)
            if self.dirac_init:
                for conv in (m for m in stage.modules() if isinstance(m, nn.Conv2d)):
                    nn.init.dirac_(conv.weight.data[:min(conv.in_channels, conv.out_channels)])
            layers.append(stage)
            in_channels = width
        if not self.learn_bn_scale:
            for bn in (m for layer in layers for m in layer.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.weight.requires_grad_(False)
        layers += [nn.AdaptiveMaxPool2d(1) if self.head_pool == "max" else nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if self.dropout > 0:
            layers.append(nn.Dropout(self.dropout))
        return nn.Sequential(*layers)

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.feature_extractor(x)) * self.logit_scale

    def _mirror_scores(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self._scores(x) + self._scores(torch.flip(x, dims=[-1])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class scores; in eval mode averaged over the views that `tta` names."""
        if self.training or self.tta == "none":
            return self._scores(x)
        scores = self._mirror_scores(x)
        if self.tta == "mirror":
            return scores
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        translated = 0.5 * (self._mirror_scores(padded[..., :h, :w]) + self._mirror_scores(padded[..., 2:, 2:]))
        return 0.5 * scores + 0.5 * translated



@contextlib.contextmanager
def tta_modes(modes: Dict[nn.Module, str]):
    """Give each YourCNN in `modes` its test-time-augmentation mode inside the block."""
    saved = [(m, m.tta) for m in modes]
    try:
        for m, mode in modes.items():
            m.tta = mode
        yield
    finally:
        for m, mode in saved:
            m.tta = mode


def tta_of(model: nn.Module) -> Dict[nn.Module, str]:
    """The TTA mode of every YourCNN in `model` (to restore inside a `tta_off` block)."""
    return {m: m.tta for m in model.modules() if isinstance(m, YourCNN)}


@contextlib.contextmanager
def tta_off(model: nn.Module):
    """Evaluate without test-time augmentation inside the block (e.g. cheap per-epoch validation)."""
    with tta_modes(dict.fromkeys(tta_of(model), "none")):
        yield model
