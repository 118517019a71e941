"""models/cnn.py, models/yourcnn.py and models/counting.py: layouts, parameter counts by hand, shape
validation, RNG discipline, overfitting sanity runs and YourCNN's depth behaviour (all on CPU, small data)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.classifier import ArgMaxClassifier
from models.cnn import (CNN, POOLINGS, ResidualBlock, ResidualBottleneckBlock, ResNet, feature_map_sizes,
                        min_valid_pool_every)
from models.yourcnn import YourCNN, ZeroInitResidual, channel_stages
from models.counting import bottleneck_comparison, count_flops, count_parameters
from training.trainer import ClassifierTrainer

IN = (3, 32, 32)
CONV = dict(kernel_size=3, stride=1, padding=1)
POOL = dict(kernel_size=2)


def conv_params(c_in, c_out, k, bias=True):
    """Parameters of a k x k Conv2d, by hand."""
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear_params(d_in, d_out):
    return d_in * d_out + d_out


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def layer_types(seq):
    return [type(m) for m in seq]


def channels_of(K, L):
    """The programme's channel list: each K element repeated L times."""
    return [k for k in K for _ in range(L)]


# ============================================================================ CNN layout and counts
def test_programme_overfit_model_has_821206_params_and_8192_features():
    model = CNN(IN, 10, channels=[32], pool_every=1, hidden_dims=[100], conv_params=CONV, pooling_params=POOL)
    assert model._n_features() == 8192 == 32 * 16 * 16
    assert model.mlp.in_dim == 8192
    expected = conv_params(3, 32, 3) + linear_params(8192, 100) + linear_params(100, 10)
    assert n_params(model) == expected == 821_206
    assert count_parameters(model) == 821_206
    assert model(torch.randn(2, *IN)).shape == (2, 10)


def test_cnn_layer_sequence_full_groups():
    model = CNN(IN, 10, channels=[32] * 4, pool_every=2, hidden_dims=[64], conv_params=CONV, pooling_params=POOL)
    C, R, P = nn.Conv2d, nn.ReLU, nn.MaxPool2d
    assert layer_types(model.feature_extractor) == [C, R, C, R, P, C, R, C, R, P]
    assert layer_types(model.mlp.fc_layers) == [nn.Linear, nn.ReLU, nn.Linear, nn.Identity]
    assert model._n_features() == 32 * 8 * 8
    expected = (conv_params(3, 32, 3) + 3 * conv_params(32, 32, 3)
                + linear_params(32 * 8 * 8, 64) + linear_params(64, 10))
    assert n_params(model) == expected


def test_cnn_leftover_convs_come_after_the_last_pool_without_pooling():
    model = CNN(IN, 10, channels=[16, 16, 32, 32, 64], pool_every=2, hidden_dims=[100, 50], conv_params=CONV,
                pooling_params=POOL)
    C, R, P = nn.Conv2d, nn.ReLU, nn.MaxPool2d
    assert layer_types(model.feature_extractor) == [C, R, C, R, P, C, R, C, R, P, C, R]
    assert [m.out_channels for m in model.feature_extractor if isinstance(m, C)] == [16, 16, 32, 32, 64]
    # two pools: 32 -> 16 -> 8; the leftover conv keeps 8x8
    assert model._n_features() == 64 * 8 * 8
    expected = (conv_params(3, 16, 3) + conv_params(16, 16, 3) + conv_params(16, 32, 3) + conv_params(32, 32, 3)
                + conv_params(32, 64, 3) + linear_params(4096, 100) + linear_params(100, 50) + linear_params(50, 10))
    assert n_params(model) == expected
    assert model(torch.randn(2, *IN)).shape == (2, 10)


def test_cnn_other_conv_pool_and_activation_settings():
    model = CNN(IN, 7, channels=[16, 32], pool_every=1, hidden_dims=[64, 32], conv_params=dict(kernel_size=5),
                activation_type="lrelu", activation_params=dict(negative_slope=0.2), pooling_type="avg",
                pooling_params=dict(kernel_size=2))
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)  # 2 conv + 2 hidden FC
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.feature_extractor) == 2
    # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5
    assert model._n_features() == 32 * 5 * 5
    expected = (conv_params(3, 16, 5) + conv_params(16, 32, 5) + linear_params(800, 64) + linear_params(64, 32)
                + linear_params(32, 7))
    assert n_params(model) == expected
    assert model(torch.randn(2, *IN)).shape == (2, 7)


def test_cnn_stores_its_arguments_and_empty_params_mean_3x3_conv_2x2_pool():
    model = CNN(IN, 10, [8, 8], 2, [16])
    assert (model.in_size, model.out_classes, model.channels, model.pool_every, model.hidden_dims) == \
        (IN, 10, [8, 8], 2, [16])
    assert model.conv_params == CONV and model.pooling_params == POOL
    assert (model.activation_type, model.pooling_type) == ("relu", "max")
    assert model._n_features() == 8 * 16 * 16


def test_cnn_does_not_mutate_given_param_dicts():
    cp, pp = dict(CONV), dict(POOL)
    CNN(IN, 10, [8], 1, [16], conv_params=cp, pooling_params=pp)
    assert cp == CONV and pp == POOL


def test_poolings_table():
    assert POOLINGS == {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


# ============================================================================ shape walk
@pytest.mark.parametrize("conv,pool", [
    (CONV, POOL),
    (dict(kernel_size=5, padding=1), dict(kernel_size=3, stride=2)),
    (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True)),
    (dict(kernel_size=3, dilation=2, padding=2), dict(kernel_size=3, stride=1, padding=1)),
    (dict(kernel_size=(3, 1), padding=(1, 0)), dict(kernel_size=(2, 1))),
])
def test_feature_map_sizes_match_the_real_layers(conv, pool):
    in_size, channels, p = (3, 29, 31), [4, 4, 4], 1
    model = CNN(in_size, 3, channels, p, [5], conv_params=conv, pooling_params=pool)
    x, real = torch.zeros(1, *in_size), []
    for layer in model.feature_extractor:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            real.append(tuple(x.shape[-2:]))
    assert [ls.size for ls in feature_map_sizes(in_size, channels, p, conv, pool)] == real


def test_feature_map_sizes_names_layers():
    sizes = feature_map_sizes(IN, [8] * 3, 2, CONV, POOL)
    assert [ls.layer for ls in sizes] == ["conv 1", "conv 2", "pool 1", "conv 3"]
    assert [ls.size for ls in sizes] == [(32, 32), (32, 32), (16, 16), (16, 16)]


# The reference's table (section 1.3): smallest pool_every for 3x3 pad-1 convs, 2x2 pooling, 32x32.
REFERENCE_MIN_P = {
    ((32,), 2): 1, ((32,), 4): 1, ((32,), 8): 2, ((32,), 16): 3,
    ((64, 128, 256), 1): 1, ((64, 128, 256), 2): 2, ((64, 128, 256), 3): 2, ((64, 128, 256), 4): 3,
    ((32,), 32): 6, ((64, 128, 256), 8): 5,
    ((32, 64, 128), 3): 2, ((32, 64, 128), 6): 4, ((32, 64, 128), 9): 5, ((32, 64, 128), 12): 7,
}


@pytest.mark.parametrize("K,L", list(REFERENCE_MIN_P))
def test_min_valid_pool_every_matches_the_reference_table(K, L):
    channels = channels_of(K, L)
    p = min_valid_pool_every(IN, channels, CONV, POOL)
    assert p == REFERENCE_MIN_P[(K, L)] == len(channels) // 6 + 1


def test_min_valid_pool_every_is_tight():
    channels = [32] * 16
    p = min_valid_pool_every(IN, channels, CONV, POOL)
    assert min(feature_map_sizes(IN, channels, p, CONV, POOL)[-1].size) >= 1
    assert min(feature_map_sizes(IN, channels, p - 1, CONV, POOL)[-1].size) < 1


def test_min_valid_pool_every_fails_clearly_when_convs_alone_shrink_the_map():
    with pytest.raises(ValueError, match="convolutions alone shrink"):
        min_valid_pool_every((3, 8, 8), [4] * 3, dict(kernel_size=5), POOL)


def test_too_small_pool_every_fails_before_building_with_layer_and_fix():
    with pytest.raises(ValueError, match=r"pool 6 \(after conv 12\).*smallest valid pool_every for these channels "
                                         r"is 3"):
        CNN(IN, 10, [32] * 16, 2, [100], conv_params=CONV, pooling_params=POOL)
    with pytest.raises(ValueError, match=r"ResNet feature maps shrink below 1x1 at pool 6.*smallest valid "
                                         r"pool_every for these channels is 5"):
        ResNet(IN, 10, channels_of((64, 128, 256), 8), 4, [100])


def test_failed_validation_consumes_no_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with pytest.raises(ValueError):
        CNN(IN, 10, [32] * 16, 1, [100])
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=[]), "channels must be a non-empty list"),
    (dict(channels=[32, 0]), r"positive ints only, got \[0\]"),
    (dict(hidden_dims=[]), "hidden_dims must be a non-empty list"),
    (dict(hidden_dims=[-5]), "hidden_dims must hold positive ints"),
    (dict(pool_every=0), "pool_every must be an int >= 1, got 0"),
    (dict(activation_type="swish"), r"unknown activation_type 'swish'; valid names are \[.*'relu'"),
    (dict(activation_type="relu", activation_params=dict(slope=1)), "bad activation_params"),
    (dict(pooling_type="min"), r"unknown pooling_type 'min'; valid names are \['avg', 'max'\]"),
    (dict(pooling_params=dict(stride=2)), "need kernel_size"),
    (dict(conv_params=dict(kernel_size=3, out_channels=8)), "conv_params .* need kernel_size and only"),
    (dict(in_size=(32, 32)), "in_size must be"),
    (dict(out_classes=0), "out_classes must be a positive int"),
])
def test_cnn_bad_arguments_fail_clearly(kwargs, match):
    args = dict(in_size=IN, out_classes=10, channels=[8], pool_every=1, hidden_dims=[16])
    with pytest.raises(ValueError, match=match):
        CNN(**{**args, **kwargs})


# ============================================================================ residual blocks
def test_residual_block_identity_shortcut_and_layers():
    block = ResidualBlock(32, [32, 32], [3, 3])
    assert layer_types(block.main_path) == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert len(block.shortcut_path) == 0
    assert all(c.bias is not None for c in block.main_path if isinstance(c, nn.Conv2d))
    assert n_params(block) == 2 * conv_params(32, 32, 3)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(block.main_path(x) + x))


def test_residual_block_projection_shortcut_is_bias_free_1x1():
    block = ResidualBlock(16, [32, 64], [3, 5], batchnorm=True, dropout=0.2, activation_type="tanh")
    assert layer_types(block.main_path) == [nn.Conv2d, nn.Dropout2d, nn.BatchNorm2d, nn.Tanh, nn.Conv2d]
    assert [c.padding for c in block.main_path if isinstance(c, nn.Conv2d)] == [(1, 1), (2, 2)]
    (shortcut,) = block.shortcut_path
    assert isinstance(shortcut, nn.Conv2d) and shortcut.kernel_size == (1, 1) and shortcut.bias is None
    expected = conv_params(16, 32, 3) + 2 * 32 + conv_params(32, 64, 5) + conv_params(16, 64, 1, bias=False)
    assert n_params(block) == expected
    out = block(torch.randn(2, 16, 8, 8))
    assert out.shape == (2, 64, 8, 8) and (out >= 0).all()  # the final ReLU is fixed


def test_residual_block_builds_main_path_before_shortcut():
    torch.manual_seed(0)
    block = ResidualBlock(16, [32, 32], [3, 3])
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
    sc = nn.Conv2d(16, 32, 1, bias=False)
    torch.testing.assert_close(block.main_path[0].weight, c1.weight)
    torch.testing.assert_close(block.main_path[2].weight, c2.weight)
    torch.testing.assert_close(block.shortcut_path[0].weight, sc.weight)


def test_bottleneck_block_layout_and_count():
    block = ResidualBottleneckBlock(256, [64], [3])
    convs = [m for m in block.main_path if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(256, 64, 1), (64, 64, 3),
                                                                                  (64, 256, 1)]
    assert len(block.shortcut_path) == 0
    assert n_params(block) == conv_params(256, 64, 1) + conv_params(64, 64, 3) + conv_params(64, 256, 1) == 70_016
    assert block(torch.randn(1, 256, 4, 4)).shape == (1, 256, 4, 4)


@pytest.mark.parametrize("cls,args,match", [
    (ResidualBlock, (8, [], []), "channels must be a non-empty"),
    (ResidualBlock, (8, [8, 8], [3]), "equal lengths"),
    (ResidualBlock, (8, [8], [2]), r"kernel sizes must be odd .* got \[2\]"),
    (ResidualBlock, (8, [8], [3], False, 1.0), r"dropout must be a probability in \[0, 1\)"),
    (ResidualBlock, (8, [8], [3], False, -0.1), "dropout must be"),
    (ResidualBlock, (8, [8], [3], False, 0.0, "swish"), "unknown activation_type 'swish'"),
    (ResidualBottleneckBlock, (64, [], []), "inner_channels must be non-empty"),
    (ResidualBottleneckBlock, (64, [16, 16], [3]), "equal lengths"),
    (ResidualBottleneckBlock, (64, [16], [4]), "must be odd"),
])
def test_residual_block_bad_arguments_fail_clearly(cls, args, match):
    with pytest.raises(ValueError, match=match):
        cls(*args)


def test_residual_block_rejects_unknown_keywords():
    with pytest.raises(TypeError, match="batch_norm"):
        ResidualBlock(8, [8], [3], batch_norm=True)


def test_bottleneck_comparison_counts_from_the_projects_blocks():
    res = bottleneck_comparison()
    hw = 32 * 32
    assert res["input_size"] == (256, 32, 32)
    assert res["regular"]["params"] == 2 * conv_params(256, 256, 3) == 1_180_160
    assert res["bottleneck"]["params"] == 70_016
    assert res["regular"]["flops"] == 2 * (2 * 256 * 256 * 9) * hw
    assert res["bottleneck"]["flops"] == 2 * (256 * 64 + 64 * 64 * 9 + 64 * 256) * hw
    assert res["param_ratio"] == pytest.approx(1_180_160 / 70_016)


def test_count_flops_is_rng_neutral_and_keeps_the_training_flag():
    model = CNN(IN, 10, [8], 1, [16])
    model.train()
    state = torch.get_rng_state()
    flops = count_flops(model, IN)
    assert torch.equal(state, torch.get_rng_state()) and model.training
    assert flops == 2 * (3 * 8 * 9 * 32 * 32 + 8 * 16 * 16 * 16 + 16 * 10)


# ============================================================================ ResNet
def test_resnet_groups_blocks_and_pools_only_full_groups():
    model = ResNet(IN, 10, channels=[16, 16, 32], pool_every=2, hidden_dims=[50])
    assert layer_types(model.feature_extractor) == [ResidualBlock, nn.MaxPool2d, ResidualBlock]
    b1, _, b2 = model.feature_extractor
    assert layer_types(b1.main_path) == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert layer_types(b2.main_path) == [nn.Conv2d]
    assert model._n_features() == 32 * 16 * 16  # one pool; the leftover group has a skip but no pool
    expected = (conv_params(3, 16, 3) + conv_params(16, 16, 3) + conv_params(3, 16, 1, bias=False)
                + conv_params(16, 32, 3) + conv_params(16, 32, 1, bias=False)
                + linear_params(32 * 16 * 16, 50) + linear_params(50, 10))
    assert n_params(model) == expected
    assert model(torch.randn(2, *IN)).shape == (2, 10)


def test_resnet_batchnorm_dropout_and_ignored_conv_params():
    model = ResNet(IN, 10, channels=[16, 16], pool_every=2, hidden_dims=[50], batchnorm=True, dropout=0.1,
                   conv_params=dict(kernel_size=7), activation_type="lrelu")
    (block, _) = model.feature_extractor
    assert layer_types(block.main_path) == [nn.Conv2d, nn.Dropout2d, nn.BatchNorm2d, nn.LeakyReLU, nn.Conv2d]
    assert all(c.kernel_size == (3, 3) for c in block.main_path if isinstance(c, nn.Conv2d))
    expected = (conv_params(3, 16, 3) + 2 * 16 + conv_params(16, 16, 3) + conv_params(3, 16, 1, bias=False)
                + linear_params(16 * 16 * 16, 50) + linear_params(50, 10))
    assert n_params(model) == expected


def test_resnet_bottleneck_rule():
    model = ResNet(IN, 10, channels=[64, 16, 64] * 2, pool_every=3, hidden_dims=[20], bottleneck=True)
    b1, _, b2, _ = model.feature_extractor
    assert type(b1) is ResidualBlock  # 3 -> 64: input width differs from group[-1]
    assert isinstance(b2, ResidualBottleneckBlock)  # 64 -> [16] -> 64
    assert [c.kernel_size[0] for c in b2.main_path if isinstance(c, nn.Conv2d)] == [1, 3, 1]
    expected = (conv_params(3, 64, 3) + conv_params(64, 16, 3) + conv_params(16, 64, 3) + conv_params(3, 64, 1, False)
                + conv_params(64, 16, 1) + conv_params(16, 16, 3) + conv_params(16, 64, 1)
                + linear_params(64 * 8 * 8, 20) + linear_params(20, 10))
    assert n_params(model) == expected


def test_resnet_bad_dropout_fails_clearly():
    with pytest.raises(ValueError, match="dropout must be"):
        ResNet(IN, 10, [8], 1, [10], dropout=1.5)


# ============================================================================ RNG discipline
def _dropout_resnet():
    return ResNet(IN, 10, [8, 8], 2, [10], batchnorm=True, dropout=0.5)


@pytest.mark.parametrize("make", [lambda: CNN(IN, 10, [8, 8], 1, [16]), _dropout_resnet,
                                  lambda: YourCNN(IN, 10, [8, 8, 16], 1, [], dropout=0.3)])
def test_feature_size_probe_does_not_consume_rng(make):
    model = make().train()
    state = torch.get_rng_state()
    model._n_features()
    assert torch.equal(state, torch.get_rng_state())
    assert model.training and all(m.training for m in model.modules())


def test_build_consumes_rng_only_for_layers_in_programme_order():
    torch.manual_seed(0)
    model = CNN(IN, 10, channels=[32], pool_every=1, hidden_dims=[100], conv_params=CONV, pooling_params=POOL)
    torch.manual_seed(0)
    conv, fc1, fc2 = nn.Conv2d(3, 32, 3, padding=1), nn.Linear(8192, 100), nn.Linear(100, 10)
    torch.testing.assert_close(model.feature_extractor[0].weight, conv.weight)
    torch.testing.assert_close(model.mlp.fc_layers[0].weight, fc1.weight)
    torch.testing.assert_close(model.mlp.fc_layers[2].weight, fc2.weight)


@pytest.mark.parametrize("make", [lambda: CNN(IN, 10, [8, 16], 1, [16]), _dropout_resnet,
                                  lambda: YourCNN(IN, 10, [8, 8, 16, 16], 1, [])])
def test_same_seed_same_weights(make):
    torch.manual_seed(42)
    a = make()
    torch.manual_seed(42)
    b = make()
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


# ============================================================================ every grid configuration
def _grid():
    """(exp, model class, K, L) for test_run and exp1_1 ... exp2 of the reference table."""
    configs = [("test_run", ResNet, (32, 64), 1)]
    configs += [("exp1_1", CNN, K, L) for K in [(32,), (64,)] for L in (2, 4, 8, 16)]
    configs += [("exp1_2", CNN, K, L) for L in (2, 4, 8) for K in [(32,), (64,), (128,), (256,)]]
    configs += [("exp1_3", CNN, (64, 128, 256), L) for L in (1, 2, 3, 4)]
    configs += [("exp1_4", ResNet, (32,), L) for L in (8, 16, 32)]
    configs += [("exp1_4", ResNet, (64, 128, 256), L) for L in (2, 4, 8)]
    configs += [("exp2", YourCNN, (32, 64, 128), L) for L in (3, 6, 9, 12)]
    return configs


@pytest.mark.parametrize("exp,cls,K,L", _grid(), ids=lambda v: str(v))
def test_every_grid_configuration_builds_and_runs(exp, cls, K, L):
    channels = channels_of(K, L)
    p = min_valid_pool_every(IN, channels, CONV, POOL)
    if exp == "test_run":
        assert p == 1
    else:
        assert p == REFERENCE_MIN_P.get((K, L), len(channels) // 6 + 1)
    kwargs = dict(conv_params=CONV, pooling_params=POOL) if cls is CNN else {}
    if cls is YourCNN:
        kwargs.update(width_mult=2)
    hidden = [] if cls is YourCNN else [100]
    model = cls(IN, 10, channels=channels, pool_every=p, hidden_dims=hidden, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *IN)).shape == (2, 10)
    if cls is not YourCNN and p > 1:  # one step less pooling-free is too much pooling
        with pytest.raises(ValueError, match=f"smallest valid pool_every for these channels is {p}"):
            cls(IN, 10, channels=channels, pool_every=p - 1, hidden_dims=hidden, **kwargs)


# ============================================================================ overfitting sanity runs
def _overfit_best_accuracy(model, lr):
    """The programme's overfit test on 50 fixed random images with random labels (pure
    memorisation): batch 2, 25 epochs of at most 25 batches; stops once 90% is reached."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, *IN, generator=g), torch.randint(0, 10, (50,), generator=g)
    dl = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = ClassifierTrainer(ArgMaxClassifier(model), nn.CrossEntropyLoss(), optimizer)
    best = 0.0
    for _ in range(25):
        best = max(best, trainer.train_epoch(dl, max_batches=25, verbose=False).accuracy)
        if best >= 90:
            break
    return best


@pytest.mark.parametrize("make,lr", [
    (lambda: CNN(IN, 10, channels=[32], pool_every=1, hidden_dims=[100], conv_params=CONV, pooling_params=POOL),
     1e-3),
    (lambda: ResNet(IN, 10, channels=[32, 64], pool_every=1, hidden_dims=[100], batchnorm=True), 3e-3),
    (lambda: YourCNN(IN, 10, channels=[16, 16, 32, 32], pool_every=2, hidden_dims=[]), 1e-2),
], ids=["cnn", "resnet", "yourcnn"])
def test_overfits_fifty_images(make, lr):
    torch.manual_seed(42)
    assert _overfit_best_accuracy(make(), lr) >= 90


# ============================================================================ YourCNN
def test_yourcnn_stages_from_channel_runs_and_width_mult():
    assert channel_stages(channels_of((32, 64, 128), 3)) == [(32, 3), (64, 3), (128, 3)]
    assert channel_stages([32, 64, 32]) == [(32, 1), (64, 1), (32, 1)]
    model = YourCNN(IN, 10, channels_of((32, 64, 128), 3), 2, [], width_mult=2)
    assert model.stages == [(64, 3), (128, 3), (256, 3)]
    assert model.mlp.in_dim == 256
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 9  # stem + L convs per stage
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 1 + 3 * 2  # stem, entries, one per pair


def test_yourcnn_parameter_count_by_hand():
    model = YourCNN(IN, 10, channels=[8, 8, 16], pool_every=1, hidden_dims=[])
    bn = lambda c: 2 * c  # noqa: E731  (weight and bias)
    expected = (conv_params(3, 8, 3, bias=False) + bn(8)              # stem
                + conv_params(8, 8, 3, bias=False) + bn(8)            # stage 1 entry (then pool)
                + conv_params(8, 8, 3, bias=False) + bn(8)            # stage 1 leftover single-conv residual
                + conv_params(8, 16, 3, bias=False) + bn(16)          # stage 2 entry
                + linear_params(16, 10))                              # head
    assert n_params(model) == expected
    no_stem = YourCNN(IN, 10, channels=[8, 8, 16], pool_every=1, hidden_dims=[32], stem=False)
    expected = (conv_params(3, 8, 3, bias=False) + bn(8)              # stage 1 entry straight from the image
                + conv_params(8, 8, 3, bias=False) + bn(8)            # stage 1 leftover single-conv residual
                + conv_params(8, 16, 3, bias=False) + bn(16)          # stage 2 entry
                + linear_params(16, 32) + linear_params(32, 10))      # head MLP with one hidden layer
    assert n_params(no_stem) == expected


def test_yourcnn_residual_blocks_start_as_identity():
    block = ZeroInitResidual(16, 2, nn.GELU)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(block(x), x)
    model = YourCNN(IN, 10, channels_of((8, 16), 5), 1, [])
    blocks = [m for m in model.modules() if isinstance(m, ZeroInitResidual)]
    assert len(blocks) == 2 * 2  # L=5: entry conv + two residual pairs per stage
    assert all(float(b.branch[-1].weight.detach().abs().sum()) == 0 for b in blocks)


def test_yourcnn_ignores_pool_every_and_rejects_other_conv_params():
    """pool_every (required by the CNN API) does not change the net; a conv geometry other than
    YourCNN's own 3x3/1/1 is refused rather than silently dropped."""
    def build(**kwargs):
        torch.manual_seed(0)
        return YourCNN(IN, 10, [8, 8, 16], hidden_dims=[], **kwargs)

    reference = build(pool_every=1).state_dict()
    for same in (dict(pool_every=3), dict(pool_every=1, conv_params={}), dict(pool_every=1, conv_params=CONV),
                 dict(pool_every=1, conv_params=dict(kernel_size=(3, 3), padding=1))):
        state = build(**same).state_dict()
        assert list(state) == list(reference) and all(torch.equal(state[k], reference[k]) for k in state), same
    for bad in (dict(kernel_size=5, padding=2), dict(kernel_size=3), dict(kernel_size=3, padding=1, bias=True)):
        with pytest.raises(ValueError, match=r"YourCNN's convs are always 3x3, stride 1, padding 1 .* conv_params "
                                             r"\{.*\} would be ignored; leave conv_params unset"):
            build(pool_every=1, conv_params=bad)
    with pytest.raises(ValueError, match="pool_every must be an int >= 1, got 0"):
        build(pool_every=0)


def test_yourcnn_family_is_reexported_by_the_cnn_module_without_a_cycle():
    """The programme imports YourCNN from its cnn module: models.cnn hands out models.yourcnn's
    objects on first use, and importing models.cnn alone does not import models.yourcnn."""
    import subprocess
    import sys

    import models.cnn as cnn
    import models.yourcnn as yourcnn

    for name in ("YourCNN", "PatchWhitening", "ZeroInitResidual", "tta_off", "tta_of", "tta_modes", "TTA_MODES"):
        assert getattr(cnn, name) is getattr(yourcnn, name), name
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchNet'"):
        cnn.NoSuchNet
    code = ("import sys, models.cnn; assert 'models.yourcnn' not in sys.modules; "
            "from models.cnn import YourCNN; assert YourCNN.__module__ == 'models.yourcnn'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))


def test_yourcnn_too_many_stages_fails_clearly():
    with pytest.raises(ValueError, match="at most 5 stages"):
        YourCNN(IN, 10, [8, 16, 32, 64, 128, 256], 1, [])


@pytest.mark.parametrize("kwargs,match", [
    (dict(width_mult=0), "width_mult must be a positive number"),
    (dict(head_pool="sum"), "head_pool must be"),
    (dict(logit_scale=0), "logit_scale must be"),
    (dict(dropout=1.0), "dropout must be"),
    (dict(activation_type="swish"), "unknown activation_type"),
])
def test_yourcnn_bad_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        YourCNN(IN, 10, [8, 16], 1, [], **kwargs)


def test_only_yourcnn_accepts_empty_hidden_dims():
    assert YourCNN(IN, 10, [8], 1, [])(torch.randn(2, *IN)).shape == (2, 10)
    with pytest.raises(ValueError, match="hidden_dims must be a non-empty list"):
        ResNet(IN, 10, [8], 1, [])


def exp2_model_kwargs(width_mult: float = 0.5) -> dict:
    """exp2's configured YourCNN options (configs/exp2.yaml), narrower so the CPU tests stay quick."""
    from training.grids.expand import load_grid_config

    return {**load_grid_config("exp2")["options"]["model_kwargs"], "width_mult": width_mult}


@pytest.mark.parametrize("recipe", ["defaults", "exp2"])
@pytest.mark.parametrize("L", [3, 6, 9, 12])
def test_yourcnn_trains_on_tiny_data(L, recipe):
    torch.manual_seed(0)
    kwargs = exp2_model_kwargs() if recipe == "exp2" else {}
    model = YourCNN(IN, 10, channels_of((32, 64, 128), L), 1, [], **kwargs)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, *IN, generator=g), torch.randint(0, 10, (16,), generator=g)
    for module in model.modules():
        if hasattr(module, "init_from_data"):
            module.init_from_data(x)
    # exp2 scales its logits by 1/9, so it takes a proportionally larger step
    lr = 0.05 if recipe == "defaults" else 0.5
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                nesterov=True)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # measured: ~2.3 -> ~1.1 after 4 updates at every L (defaults); exp2: ~2.3 -> ~1.6
    assert losses[-1] < 0.75 * losses[0]


def _init_grad_norm(L, **kwargs):
    torch.manual_seed(0)
    model = YourCNN(IN, 10, channels_of((32, 64, 128), L), 1, [], **kwargs)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, *IN, generator=g), torch.randint(0, 10, (8,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()
    return float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))


def test_yourcnn_gradient_norm_at_init_does_not_grow_with_depth():
    shallow, deep = _init_grad_norm(3), _init_grad_norm(30)  # 9 vs 90 convs (+ stem)
    assert torch.isfinite(torch.tensor([shallow, deep])).all()
    # measured: ~3.6 at L=3 and L=30 (ratio ~1.0); zero-initialised residuals keep it depth independent
    assert 0.5 < deep / shallow < 2.0
    # the mechanism: without the zero init the deep net's gradient is ~8x the shallow one's
    assert _init_grad_norm(30, zero_init_residual=False) / _init_grad_norm(3, zero_init_residual=False) > 3


def test_yourcnn_frozen_bn_scales_stay_at_one_and_bound_depth():
    """learn_bn_scale=False (exp2's recipe): every BN scale is frozen at 1, the residual branches
    are scaled by 1/sqrt(blocks per stage) instead of gated, and depth still costs no trainability."""
    model = YourCNN(IN, 10, channels_of((8, 16), 5), 1, [], learn_bn_scale=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.weight.requires_grad and bool((bn.weight == 1).all()) for bn in bns)
    blocks = [m for m in model.modules() if isinstance(m, ZeroInitResidual)]
    assert len(blocks) == 4 and all(b.scale == pytest.approx(2 ** -0.5) for b in blocks)  # 2 blocks per stage
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(8, *IN), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(bool((bn.weight == 1).all()) for bn in bns)
    shallow, deep = _init_grad_norm(3, learn_bn_scale=False), _init_grad_norm(30, learn_bn_scale=False)
    # measured: ~7.5 at L=3, ~9.2 at L=12; unscaled, ungated branches would reach ~25 at L=12
    assert 0.5 < deep / shallow < 2.0


def test_yourcnn_frozen_zero_gate_is_refused():
    with pytest.raises(ValueError, match="zero_init_residual=True needs learn_bn_scale=True"):
        YourCNN(IN, 10, [8, 8], 1, [], learn_bn_scale=False, zero_init_residual=True)
    with pytest.raises(ValueError, match="learn_bn_scale must be true or false"):
        YourCNN(IN, 10, [8, 8], 1, [], learn_bn_scale="no")


def test_yourcnn_mirror_tta_averages_mirrored_logits_in_eval_only():
    torch.manual_seed(0)
    model = YourCNN(IN, 10, [8, 8, 16], 1, [], tta="mirror")
    x = torch.randn(2, *IN)
    model.eval()
    with torch.no_grad():
        out, out_mirror = model(x), model(torch.flip(x, dims=[-1]))
        plain = model._scores(x)
        expected = 0.5 * (plain + model._scores(torch.flip(x, dims=[-1])))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, out_mirror)
    assert not torch.allclose(out, plain)
    model.train()
    torch.manual_seed(1)
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("make", [lambda: CNN(IN, 10, [8, 16], 1, [16]),
                                  lambda: ResNet(IN, 10, [8, 16], 1, [16], batchnorm=True),
                                  lambda: YourCNN(IN, 10, [8, 8, 16, 16], 1, [], tta="mirror")])
def test_channels_last(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, *IN)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    model.train()
    model(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
