"""The pieces of exp2's airbench-style recipe: patch whitening, lookahead-EMA, the bias lr group,
the warm-up/decay triangle and 6-view test-time augmentation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.cnn import PatchWhitening, YourCNN, tta_off
from training.grids.expand import expand_grid, load_grid_config, select_runs
from training.engine.lookahead import Lookahead
from training.engine.optim import make_optimizer, make_scheduler, param_groups

IN = (3, 32, 32)


def _correlated_images(n: int = 400) -> torch.Tensor:
    """Smooth, channel-correlated images: their 2x2 patches are far from white."""
    g = torch.Generator().manual_seed(0)
    base = nn.functional.avg_pool2d(torch.randn(n, 1, 34, 34, generator=g), 3, stride=1)
    return torch.cat([base, 0.8 * base + 0.2 * torch.randn(n, 1, 32, 32, generator=g), -base], dim=1)


def test_patch_whitening_decorrelates_training_patches():
    x = _correlated_images()
    whitening = PatchWhitening(3)
    whitening.init_from_data(x)
    with torch.no_grad():
        out = nn.functional.conv2d(x, whitening.conv.weight)  # without the bias
    assert out.shape == (len(x), 24, 31, 31)
    feats = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = feats.T @ feats / len(feats)
    # the top eigen-directions come out with unit variance and no correlation (eps only shrinks
    # the near-null ones), and the other 12 channels are the negated copies
    top = cov[:6, :6]
    torch.testing.assert_close(top, torch.eye(6), atol=0.05, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    assert not whitening.conv.weight.requires_grad and whitening.conv.bias.requires_grad


def test_whiten_stem_shrinks_maps_by_one_and_is_checked():
    model = YourCNN(IN, 10, [8, 16, 32], 1, [], stem="whiten")
    assert model(torch.randn(2, *IN)).shape == (2, 10)
    assert YourCNN(IN, 10, [8, 16, 32, 64, 128], 1, [])(torch.randn(2, *IN)).shape == (2, 10)  # 32 -> 1: fine
    with pytest.raises(ValueError, match="stem must be one of"):
        YourCNN(IN, 10, [8], 1, [], stem="patch")


def test_whiten_stem_five_stages_fail_clearly():
    with pytest.raises(ValueError, match="at most 4 stages"):  # 31 -> 15 -> 7 -> 3 -> 1 -> 0
        YourCNN(IN, 10, [8, 16, 32, 64, 128], 1, [], stem="whiten")


def test_dirac_init_makes_stage_convs_partial_identities():
    model = YourCNN(IN, 10, [8, 8, 16], 1, [], stem="whiten", dirac_init=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    x = torch.randn(1, 8, 5, 5)
    residual_conv = next(c for c in convs if c.in_channels == c.out_channels == 8)
    torch.testing.assert_close(nn.functional.conv2d(x, residual_conv.weight, padding=1), x)
    entry = next(c for c in convs if (c.in_channels, c.out_channels) == (8, 16))
    torch.testing.assert_close(nn.functional.conv2d(x, entry.weight, padding=1)[:, :8], x)


def test_mirror_translate_tta_is_the_mean_of_airbenchs_six_views_in_eval_only():
    torch.manual_seed(0)
    model = YourCNN(IN, 10, [8, 16], 1, [], tta="mirror_translate").eval()
    x = torch.randn(3, *IN)
    with torch.no_grad():
        s = model._scores
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [x, padded[..., :32, :32], padded[..., 2:, 2:]]
        mirror = [0.5 * (s(v) + s(v.flip(-1))) for v in views]
        expected = 0.5 * mirror[0] + 0.25 * (mirror[1] + mirror[2])
        torch.testing.assert_close(model(x), expected)
        with tta_off(model):
            torch.testing.assert_close(model(x), s(x))
        assert model.tta == "mirror_translate"  # restored
    with pytest.raises(ValueError, match="tta must be one of"):
        YourCNN(IN, 10, [8], 1, [], tta="five_crop")


def test_bias_group_learns_faster_with_the_same_per_step_decay():
    model = YourCNN(IN, 10, [8, 16], 1, [], stem="whiten")
    groups = param_groups(model, lr=1.5, weight_decay=0.002, bias_lr_scale=64)
    slow, fast = groups
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    whitening = next(m for m in model.modules() if isinstance(m, PatchWhitening))
    assert {id(p) for p in fast["params"]} == bn_biases | {id(whitening.conv.bias)}
    assert fast["lr"] == 1.5 * 64 and fast["lr"] * fast["weight_decay"] == pytest.approx(1.5 * 0.002)
    assert id(whitening.conv.weight) not in {id(p) for g in groups for p in g["params"]}  # frozen
    assert len(param_groups(model, 1.0, 0.0)) == 1
    with pytest.raises(ValueError, match="bias_lr_scale and norm_weight_decay need the model"):
        make_optimizer(model.parameters(), dict(name="sgd", lr=0.1, bias_lr_scale=64))
    assert len(make_optimizer(model, dict(name="sgd", lr=0.1, bias_lr_scale=64)).param_groups) == 2


def test_norm_weight_decay_gives_the_learnt_bn_scales_their_own_decay():
    model = YourCNN(IN, 10, [8, 16], 1, [], stem="whiten")  # learnt BN scales (the default)
    bn_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    groups = param_groups(model, lr=1.5, weight_decay=0.002, bias_lr_scale=64, norm_weight_decay=0.0)
    assert len(groups) == 3
    main, fast, norm = groups
    assert {id(p) for p in norm["params"]} == bn_weights and norm["weight_decay"] == 0.0 and norm["lr"] == 1.5
    assert not bn_weights & {id(p) for p in main["params"] + fast["params"]}  # each parameter in one group
    assert main["weight_decay"] == 0.002
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in trainable)
    # None: the common decay, one group as before
    assert len(param_groups(model, 1.0, 0.002, norm_weight_decay=None)) == 1
    # frozen BN scales (exp2's learn_bn_scale=False): nothing to decay, no empty group
    frozen = YourCNN(IN, 10, [8, 16], 1, [], learn_bn_scale=False)
    assert len(param_groups(frozen, 1.0, 0.002, norm_weight_decay=0.0)) == 1
    with pytest.raises(ValueError, match="bias_lr_scale and norm_weight_decay need the model"):
        make_optimizer(model.parameters(), dict(name="sgd", lr=0.1, norm_weight_decay=0.0))
    optimizer = make_optimizer(model, dict(name="sgd", lr=0.1, weight_decay=0.01, norm_weight_decay=0.0))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    # a step with zero gradients moves decayed weights only: the BN scales stay exactly at 1
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((bn.weight == 1).all()) for bn in bns)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad)
    assert conv.weight.abs().sum() > 0


def _config_hash_of(kwargs, **extra):
    """The config hash cnn_experiment tags a run of these cnn_experiment kwargs with."""
    from training.cnn.experiment import plan_run

    recipe, _ = plan_run({**kwargs, **extra})
    return recipe.config_hash()


def test_config_hash_of_logged_runs_stays_put_when_options_are_added():
    """Runs are found again (skipped when finished, resumed when interrupted) by their config
    hash, so an option added later must leave it alone at its default. The pinned values are the
    hashes of exp2's configured runs logged before norm_weight_decay existed. Since issue #16 a run
    hashes its recipe *with* the digest of its data (tests/test_seeds_data.py): these are the
    recipes' own hashes, which runs logged before the digest carry, and which no new run matches."""
    from training.cnn.recipe import CifarRecipe
    from training.grids.expand import expand_grid, load_grid_config

    exp2 = {k["layers_per_block"]: k for k in expand_grid(load_grid_config("exp2"))}
    assert _config_hash_of(exp2[3]) == "e7e33e497811dd70" and _config_hash_of(exp2[6]) == "f732c1b9b94aea91"
    assert _config_hash_of(exp2[3], norm_weight_decay=0.0) != _config_hash_of(exp2[3])  # set: another experiment
    assert "norm_weight_decay" not in CifarRecipe("exp2").identity()
    assert CifarRecipe("exp2", norm_weight_decay=0.0).identity()["norm_weight_decay"] == 0.0


@pytest.mark.parametrize("grid, pinned", [
    ("test_run", "0b05ada2c6afcc92"), ("exp1_1", "71bfe19c74f5333f"), ("exp1_2", "60dcbb09f2263d9e"),
    ("exp1_3", "3e28d7e31bc7bc49"), ("exp1_4", "105ae362f61a006c"), ("exp2", "e7e33e497811dd70")])
def test_config_hash_of_each_shipped_grid_stays_put(grid, pinned):
    """The hash of each shipped grid's first configuration, pinned before the recipe refactor:
    a rerun must keep finding the runs logged before it."""
    from training.grids.expand import expand_grid, load_grid_config

    assert _config_hash_of(expand_grid(load_grid_config(grid))[0]) == pinned


def test_triangle_schedule_runs_from_start_to_peak_to_end_fraction():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched, interval = make_scheduler(opt, "linear_warmup_decay", epochs=1, steps_per_epoch=100, warmup_frac=0.25,
                                     start_frac=0.2, end_frac=0.07)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert interval == "batch"
    assert lrs[0] == pytest.approx(2.0 * (0.2 + 0.8 / 25)) and max(lrs) == pytest.approx(2.0)
    assert lrs.index(max(lrs)) == 24 and lrs[-1] == pytest.approx(2.0 * (0.07 + 0.93 / 75))
    with pytest.raises(ValueError, match="end_frac must be in"):
        make_scheduler(opt, "linear_warmup_decay", 1, 10, end_frac=1.5)


def test_lookahead_pulls_weights_to_the_anchor_and_ends_on_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    la = Lookahead(model, total_steps=10, every=5, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 11):
        with torch.no_grad():
            model[0].weight.add_(1.0)  # a fake optimizer step
        before = model[0].weight.clone()
        la.step()
        if step == 5:  # anchor = lerp(start, current, 1 - 0.9^5 * (5/10)^3); weights snap to it
            keep = 0.9 ** 5 * 0.5 ** 3
            torch.testing.assert_close(model[0].weight, keep * start["0.weight"] + (1 - keep) * before)
        elif step % 5:
            torch.testing.assert_close(model[0].weight, before)
    torch.testing.assert_close(model[0].weight, la.anchor["0.weight"])  # last step: the weights are the anchor
    assert "1.num_batches_tracked" not in la.anchor  # integer state is not averaged
    restored = Lookahead(model, 10, 5, 0.9)
    restored.load_state_dict(la.state_dict())
    assert restored.steps == 10


def test_only_selects_named_configurations_and_rejects_unknown_names():
    runs = expand_grid(load_grid_config("exp2"))
    assert [r["layers_per_block"] for r in select_runs(runs, ["exp2_L6_K32-64-128"])] == [6]
    assert select_runs(runs, None) == runs
    with pytest.raises(ValueError, match=r"exp2_L4_K32-64-128.*valid: \['exp2_L3_K32-64-128'"):
        select_runs(runs, ["exp2_L4_K32-64-128"])
