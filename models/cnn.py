"""The course CNN family of programme Part 2/3: CNN, ResidualBlock, ResidualBottleneckBlock, ResNet.

Class and argument names follow the programme's `hw2/cnn.py` contract (reference section 3.4).
archlab adds two things on top:

* Every model validates its arguments *before* creating any layer, including a static walk of the
  feature-map sizes (`feature_map_sizes`), so a configuration whose maps would shrink below 1x1
  fails at once with the layer where it happens and the smallest `pool_every` that would work
  (`min_valid_pool_every`, also used by the experiment grids to pick `pool_every`).
* Building a model consumes the torch RNG only to initialise its layers, in the programme's order
  (main path before shortcut, feature extractor before MLP); the feature-size probe in
  `CNN._n_features` restores the RNG state, so a seed gives the same weights as the programme's.

Everything here is device agnostic: models are built on the CPU and moved with `.to(device)`.
YourCNN (experiment 2) lives in `models.yourcnn`; its names are re-exported here on first use
(`__getattr__` below), where the programme expects them.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from models.mlp import ACTIVATIONS, MLP, make_activation

POOLINGS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}

# The programme leaves conv_params / pooling_params to the caller (its notebook passes
# dict(kernel_size=3, stride=1, padding=1) and dict(kernel_size=2)). archlab uses exactly those
# when the dict is empty, so `CNN(in_size, 10, [32], 1, [100])` builds a working model.
DEFAULT_CONV_PARAMS: Dict[str, Any] = dict(kernel_size=3, stride=1, padding=1)
DEFAULT_POOLING_PARAMS: Dict[str, Any] = dict(kernel_size=2)
# ResNet ignores conv_params (YourCNN rejects any other): their convs are always 3x3, stride 1,
# padding 1.
SIZE_PRESERVING_CONV: Dict[str, Any] = dict(kernel_size=3, stride=1, padding=1)

_CONV_KEYS = {"kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"}
_POOL_KEYS = {
    "max": {"kernel_size", "stride", "padding", "dilation", "ceil_mode"},
    "avg": {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"},
}

Size2d = Tuple[int, int]
ActivationSpec = Union[str, None, nn.Module]


# ================================================================================ shape walk
def _pair(value: Any, name: str) -> Size2d:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def conv_output_size(size: Size2d, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                     **_ignored: Any) -> Size2d:
    """Spatial size after an nn.Conv2d with these arguments (same formula as PyTorch's docs)."""
    k, s, d = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(dilation, "dilation")
    if padding == "same":
        return size
    p = (0, 0) if padding == "valid" else _pair(padding, "padding")
    return tuple((size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))  # type: ignore


def pool_output_size(size: Size2d, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                     ceil_mode: bool = False, **_ignored: Any) -> Size2d:
    """Spatial size after nn.MaxPool2d / nn.AvgPool2d (stride defaults to the kernel size)."""
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p, d = _pair(padding, "padding"), _pair(dilation, "dilation")
    out = []
    for i in range(2):
        span = size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1
        n = (math.ceil(span / s[i]) if ceil_mode else span // s[i]) + 1
        if ceil_mode and (n - 1) * s[i] >= size[i] + p[i]:  # the last window must start inside the input
            n -= 1
        out.append(n)
    return out[0], out[1]


class LayerSize(NamedTuple):
    """Feature-map size after one layer of a feature extractor, e.g. ("pool 6", (1, 1))."""

    layer: str
    size: Size2d


def feature_map_sizes(in_size: Sequence[int], channels: Sequence[int], pool_every: int,
                      conv_params: Optional[Mapping[str, Any]] = None,
                      pooling_params: Optional[Mapping[str, Any]] = None) -> List[LayerSize]:
    """Walk the CNN layout `[(CONV -> ACT)*P -> POOL]*(N//P)` + leftover convs without building it.

    Returns the spatial size after every conv ("conv i") and pool ("pool j"), 1-based, stopping
    right after the first layer whose map is smaller than 1x1 (so the last entry says where and
    how it broke). Empty params dicts mean DEFAULT_CONV_PARAMS / DEFAULT_POOLING_PARAMS.
    """
    conv = dict(conv_params) if conv_params else dict(DEFAULT_CONV_PARAMS)
    pool = dict(pooling_params) if pooling_params else dict(DEFAULT_POOLING_PARAMS)
    size: Size2d = (int(in_size[-2]), int(in_size[-1]))
    sizes: List[LayerSize] = []
    n_pools = 0
    for i in range(1, len(channels) + 1):
        size = conv_output_size(size, **conv)
        sizes.append(LayerSize(f"conv {i}", size))
        if min(size) < 1:
            break
        if i % pool_every == 0:
            n_pools += 1
            size = pool_output_size(size, **pool)
            sizes.append(LayerSize(f"pool {n_pools}", size))
            if min(size) < 1:
                break
    return sizes


def _first_too_small(sizes: Sequence[LayerSize]) -> Optional[int]:
    return next((i for i, ls in enumerate(sizes) if min(ls.size) < 1), None)


def min_valid_pool_every(in_size: Sequence[int], channels: Sequence[int],
                         conv_params: Optional[Mapping[str, Any]] = None,
                         pooling_params: Optional[Mapping[str, Any]] = None) -> int:
    """Smallest pool_every (most pooling) that keeps every feature map at least 1x1.

    Tries P = 1 .. N+1 (N = len(channels); P = N+1 means no pooling at all). With 3x3 padding-1
    convs, 2x2 pooling and 32x32 input this is floor(N/6)+1 (at most 5 pools). Raises ValueError
    when no P works (the convs alone shrink the maps below 1x1).
    """
    n = len(channels)
    for p in range(1, n + 2):
        if _first_too_small(feature_map_sizes(in_size, channels, p, conv_params, pooling_params)) is None:
            return p
    raise ValueError(f"no pool_every in 1..{n + 1} keeps the feature maps >= 1x1 for in_size {tuple(in_size)}, "
                     f"{n} convs with conv_params {dict(conv_params or DEFAULT_CONV_PARAMS)}: the convolutions "
                     f"alone shrink the maps; use more padding or smaller kernels/strides")


def check_feature_map_sizes(in_size: Sequence[int], channels: Sequence[int], pool_every: int,
                            conv_params: Optional[Mapping[str, Any]] = None,
                            pooling_params: Optional[Mapping[str, Any]] = None, model: str = "CNN") -> None:
    """Raise ValueError naming the layer where a map shrinks below 1x1 and the smallest valid pool_every."""
    sizes = feature_map_sizes(in_size, channels, pool_every, conv_params, pooling_params)
    bad = _first_too_small(sizes)
    if bad is None:
        return
    where = sizes[bad].layer
    previous = next((ls.layer for ls in reversed(sizes[:bad]) if ls.layer.split()[0] != where.split()[0]), None)
    if previous:
        where += f" (after {previous})"
    h, w = sizes[bad].size
    try:
        p_min = min_valid_pool_every(in_size, channels, conv_params, pooling_params)
        hint = f"the smallest valid pool_every for these channels is {p_min}"
    except ValueError as e:
        hint = str(e)
    raise ValueError(f"{model} feature maps shrink below 1x1 at {where}: size {h}x{w}, for in_size {tuple(in_size)}, "
                     f"{len(channels)} convs, pool_every={pool_every}, conv_params "
                     f"{dict(conv_params or DEFAULT_CONV_PARAMS)}, pooling_params "
                     f"{dict(pooling_params or DEFAULT_POOLING_PARAMS)}; {hint}")


# ================================================================================ argument checks
def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_pos_ints(name: str, values: Any, allow_empty: bool = False) -> None:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of positive ints, got {values!r}")
    if not values and not allow_empty:
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {list(values)}")
    bad = [v for v in values if not _is_pos_int(v)]
    if bad:
        raise ValueError(f"{name} must hold positive ints only, got {bad} in {list(values)}")


def _check_activation(activation_type: ActivationSpec, activation_params: Mapping[str, Any]) -> None:
    """Build (and discard) the activation once, turning bad names/params into a clear ValueError."""
    if activation_type not in ACTIVATIONS and not isinstance(activation_type, nn.Module):
        valid = sorted(k for k in ACTIVATIONS if k is not None)
        raise ValueError(f"unknown activation_type {activation_type!r}; valid names are {valid}")
    try:
        make_activation(activation_type, **activation_params)
    except TypeError as e:
        raise ValueError(f"bad activation_params {dict(activation_params)} for {activation_type!r}: {e}") from e


def _check_pooling(pooling_type: str, pooling_params: Mapping[str, Any]) -> None:
    if pooling_type not in POOLINGS:
        raise ValueError(f"unknown pooling_type {pooling_type!r}; valid names are {sorted(POOLINGS)}")
    unknown = sorted(set(pooling_params) - _POOL_KEYS[pooling_type])
    if unknown or "kernel_size" not in pooling_params:
        raise ValueError(f"pooling_params {dict(pooling_params)} for {pooling_type!r} pooling need kernel_size and "
                         f"only these keys: {sorted(_POOL_KEYS[pooling_type])}")
    k = _pair(pooling_params["kernel_size"], "pooling kernel_size")
    p = _pair(pooling_params.get("padding", 0), "pooling padding")
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise ValueError(f"pooling padding {pooling_params.get('padding')} must be at most half the kernel size {k}")


def _check_conv_params(conv_params: Mapping[str, Any]) -> None:
    unknown = sorted(set(conv_params) - _CONV_KEYS)
    if unknown or "kernel_size" not in conv_params:
        raise ValueError(f"conv_params {dict(conv_params)} need kernel_size and only these keys: {sorted(_CONV_KEYS)} "
                         f"(in/out channels come from `channels`)")


def _check_dropout(dropout: Any) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


# ================================================================================ CNN
class CNN(nn.Module):
    """[(CONV -> ACT)*P -> POOL]*(N//P) -> leftover (CONV -> ACT) -> (FC -> ACT)*M -> FC.

    N = len(channels) convs, P = pool_every, M = len(hidden_dims). When N % P != 0 the last
    N % P convs come after the last pool. `forward` returns raw class scores (N, out_classes).
    Empty conv_params / pooling_params mean DEFAULT_CONV_PARAMS (3x3, stride 1, padding 1) and
    DEFAULT_POOLING_PARAMS (2x2); a configuration whose maps would shrink below 1x1 raises
    ValueError before any layer is built.
    """

    _allow_empty_hidden_dims = False

    def __init__(self, in_size: Sequence[int], out_classes: int, channels: Sequence[int], pool_every: int,
                 hidden_dims: Sequence[int], conv_params: Optional[Dict[str, Any]] = None,
                 activation_type: ActivationSpec = "relu", activation_params: Optional[Dict[str, Any]] = None,
                 pooling_type: str = "max", pooling_params: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.in_size = tuple(in_size)
        self.out_classes = out_classes
        self.channels = list(channels)
        self.pool_every = pool_every
        self.hidden_dims = list(hidden_dims)
        self.conv_params = dict(conv_params) if conv_params else dict(DEFAULT_CONV_PARAMS)
        self.activation_type = activation_type
        self.activation_params = dict(activation_params or {})
        self.pooling_type = pooling_type
        self.pooling_params = dict(pooling_params) if pooling_params else dict(DEFAULT_POOLING_PARAMS)

        self._check_args()
        self.feature_extractor = self._make_feature_extractor()
        self.mlp = self._make_mlp()

    # ---------------------------------------------------------------------------- validation
    def _check_args(self) -> None:
        """Every argument check, run before any layer exists (so nothing consumes the RNG on failure)."""
        if len(self.in_size) != 3 or not all(_is_pos_int(v) for v in self.in_size):
            raise ValueError(f"in_size must be (channels, height, width) of positive ints, got {self.in_size}")
        if not _is_pos_int(self.out_classes):
            raise ValueError(f"out_classes must be a positive int, got {self.out_classes!r}")
        _check_pos_ints("channels", self.channels)
        _check_pos_ints("hidden_dims", self.hidden_dims, allow_empty=self._allow_empty_hidden_dims)
        if not _is_pos_int(self.pool_every):
            raise ValueError(f"pool_every must be an int >= 1, got {self.pool_every!r}")
        _check_conv_params(self.conv_params)
        _check_activation(self.activation_type, self.activation_params)
        _check_pooling(self.pooling_type, self.pooling_params)
        self._check_feature_maps()

    def _check_feature_maps(self) -> None:
        check_feature_map_sizes(self.in_size, self.channels, self.pool_every, self.conv_params, self.pooling_params,
                                model=type(self).__name__)

    # ---------------------------------------------------------------------------- building
    def _make_activation(self) -> nn.Module:
        return make_activation(self.activation_type, **self.activation_params)

    def _make_pool(self) -> nn.Module:
        return POOLINGS[self.pooling_type](**self.pooling_params)

    def _make_feature_extractor(self) -> nn.Sequential:
        layers: List[nn.Module] = []
        in_channels = self.in_size[0]
        for i, out_channels in enumerate(self.channels, start=1):
            layers += [nn.Conv2d(in_channels, out_channels, **self.conv_params), self._make_activation()]
            if i % self.pool_every == 0:
                layers.append(self._make_pool())
            in_channels = out_channels
        return nn.Sequential(*layers)

    def _n_features(self) -> int:
        """Number of features the extractor outputs for one input, found by a dummy forward.

        The probe runs in eval mode under no_grad and restores the torch RNG state, so building
        a model consumes the RNG only for weight initialisation (programme requirement).
        """
        rng_state = torch.get_rng_state()
        was_training = self.feature_extractor.training
        try:
            param = next(self.feature_extractor.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            dtype = param.dtype if param is not None else torch.float32
            self.feature_extractor.eval()
            with torch.no_grad():
                out = self.feature_extractor(torch.zeros(1, *self.in_size, device=device, dtype=dtype))
            return int(out[0].numel())
        finally:
            self.feature_extractor.train(was_training)
            torch.set_rng_state(rng_state)

    def _make_mlp(self) -> MLP:
        nonlins: List[ActivationSpec] = [self._make_activation() for _ in self.hidden_dims]
        return MLP(self._n_features(), [*self.hidden_dims, self.out_classes], [*nonlins, "none"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> raw class scores (N, out_classes)."""
        return self.mlp(self.feature_extractor(x))


# ================================================================================ residual blocks
class ResidualBlock(nn.Module):
    """relu(main_path(x) + shortcut_path(x)), the programme's general residual block.

    main_path: size-preserving convs (padding k//2, with bias); between convs (not after the
    last) Dropout2d (if dropout > 0), BatchNorm2d (if batchnorm) and the activation.
    shortcut_path: a bias-free 1x1 conv when the channel count changes, else empty (identity).
    The main path is built first so the initialisation order matches the programme's.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], kernel_sizes: Sequence[int],
                 batchnorm: bool = False, dropout: float = 0.0, activation_type: ActivationSpec = "relu",
                 activation_params: Optional[Dict[str, Any]] = None, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(kwargs)}")
        channels, kernel_sizes = list(channels), list(kernel_sizes)
        activation_params = dict(activation_params or {})
        if not _is_pos_int(in_channels):
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        _check_pos_ints("channels", channels)
        _check_pos_ints("kernel_sizes", kernel_sizes)
        if len(channels) != len(kernel_sizes):
            raise ValueError(f"channels and kernel_sizes must have equal lengths, got {channels} and {kernel_sizes}")
        even = [k for k in kernel_sizes if k % 2 == 0]
        if even:
            raise ValueError(f"kernel sizes must be odd (size-preserving padding k//2), got {even} in {kernel_sizes}")
        _check_dropout(dropout)
        _check_activation(activation_type, activation_params)

        layers: List[nn.Module] = []
        c_in = in_channels
        for i, (c_out, k) in enumerate(zip(channels, kernel_sizes)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, padding=k // 2, bias=True))
            if i < len(channels) - 1:
                if dropout > 0:
                    layers.append(nn.Dropout2d(dropout))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(make_activation(activation_type, **activation_params))
            c_in = c_out
        self.main_path = nn.Sequential(*layers)
        if in_channels != channels[-1]:
            self.shortcut_path = nn.Sequential(nn.Conv2d(in_channels, channels[-1], kernel_size=1, bias=False))
        else:
            self.shortcut_path = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main_path(x) + self.shortcut_path(x))


class ResidualBottleneckBlock(ResidualBlock):
    """1x1 projection down -> inner KxK convs -> 1x1 projection up, with an identity shortcut.

    Channels [inner[0], *inner, in_out], kernels [1, *inner_kernel_sizes, 1]; e.g.
    (256, [64], [3]) is 256->64 (1x1), 64->64 (3x3), 64->256 (1x1).
    """

    def __init__(self, in_out_channels: int, inner_channels: Sequence[int], inner_kernel_sizes: Sequence[int],
                 **kwargs: Any):
        inner_channels, inner_kernel_sizes = list(inner_channels), list(inner_kernel_sizes)
        if not inner_channels:
            raise ValueError("inner_channels must be non-empty for a bottleneck block, got []")
        if len(inner_channels) != len(inner_kernel_sizes):
            raise ValueError(f"inner_channels and inner_kernel_sizes must have equal lengths, got {inner_channels} "
                             f"and {inner_kernel_sizes}")
        super().__init__(in_channels=in_out_channels, channels=[inner_channels[0], *inner_channels, in_out_channels],
                         kernel_sizes=[1, *inner_kernel_sizes, 1], **kwargs)


# ================================================================================ ResNet
class ResNet(CNN):
    """[-> (CONV -> ACT)*P -> POOL]*(N//P) -> (FC -> ACT)*M -> FC, a skip around every P convs.

    The channels are cut into groups of P; each group is one ResidualBlock of 3x3 convs
    (conv_params are ignored), followed by a pool only when the group is full. With
    bottleneck=True a group whose input channels equal its last width (and that has at least 3
    convs) becomes a ResidualBottleneckBlock(group[-1], group[1:-1], [3]*...), e.g. [64,16,64] is
    64->16 (1x1), 16->16 (3x3), 16->64 (1x1); other groups stay plain blocks.
    """

    def __init__(self, in_size: Sequence[int], out_classes: int, channels: Sequence[int], pool_every: int,
                 hidden_dims: Sequence[int], batchnorm: bool = False, dropout: float = 0.0, bottleneck: bool = False,
                 **kwargs: Any):
        self.batchnorm = batchnorm
        self.dropout = dropout
        self.bottleneck = bottleneck
        super().__init__(in_size, out_classes, channels, pool_every, hidden_dims, **kwargs)

    def _check_args(self) -> None:
        _check_dropout(self.dropout)
        super()._check_args()

    def _check_feature_maps(self) -> None:
        check_feature_map_sizes(self.in_size, self.channels, self.pool_every, SIZE_PRESERVING_CONV,
                                self.pooling_params, model=type(self).__name__)

    def _make_feature_extractor(self) -> nn.Sequential:
        p = self.pool_every
        block_kwargs = dict(batchnorm=self.batchnorm, dropout=self.dropout, activation_type=self.activation_type,
                            activation_params=self.activation_params)
        layers: List[nn.Module] = []
        in_channels = self.in_size[0]
        for start in range(0, len(self.channels), p):
            group = self.channels[start:start + p]
            if self.bottleneck and in_channels == group[-1] and len(group) >= 3:
                inner = group[1:-1]
                layers.append(ResidualBottleneckBlock(group[-1], inner, [3] * len(inner), **block_kwargs))
            else:
                layers.append(ResidualBlock(in_channels, group, [3] * len(group), **block_kwargs))
            if len(group) == p:
                layers.append(self._make_pool())
            in_channels = group[-1]
        return nn.Sequential(*layers)


# ================================================================================ YourCNN, re-exported
# Names of models.yourcnn that the programme (and older code, and pickled models) look up here.
_YOURCNN_NAMES = frozenset({"YourCNN", "PatchWhitening", "Stage", "ZeroInitResidual", "ConvBNAct", "ConvPoolBNAct",
                            "conv3x3", "channel_stages", "tta_modes", "tta_of", "tta_off", "YOURCNN_STEMS",
                            "TTA_MODES", "ActivationFactory"})


def __getattr__(name: str) -> Any:
    """PEP 562: `from models.cnn import YourCNN` imports models.yourcnn on first use (it imports
    this module, so importing it at the top would be a cycle)."""
    if name in _YOURCNN_NAMES:
        from models import yourcnn

        return getattr(yourcnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
