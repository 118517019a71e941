import pytest
import torch
from torch import nn

from models.mlp import ACTIVATIONS, MLP


def test_layers_alternate_linear_and_activation():
    mlp = MLP(2, [8, 16, 3], ["relu", "tanh", "none"])
    kinds = [type(m) for m in mlp.fc_layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.Tanh, nn.Linear, nn.Identity]
    assert (mlp.in_dim, mlp.out_dim) == (2, 3)
    assert [l.out_features for l in mlp.fc_layers if isinstance(l, nn.Linear)] == [8, 16, 3]


def test_parameter_count_by_hand():
    mlp = MLP(2, [32, 32, 2], ["relu", "relu", "none"])
    assert sum(p.numel() for p in mlp.parameters()) == (2 * 32 + 32) + (32 * 32 + 32) + (32 * 2 + 2)


def test_accepts_module_instances_and_every_named_activation():
    for name in ACTIVATIONS:
        out = MLP(4, [5, 2], [name, "none"])(torch.randn(3, 4))
        assert out.shape == (3, 2)
    lrelu = nn.LeakyReLU(0.3)
    mlp = MLP(4, [5, 2], [lrelu, None])
    assert mlp.fc_layers[1] is lrelu


def test_softmax_named_activation_normalises_over_classes():
    out = MLP(3, [4], ["softmax"])(torch.randn(6, 3))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(6))


def test_flattens_input_so_cnn_heads_can_reuse_it():
    assert MLP(3 * 4 * 4, [7], ["none"])(torch.randn(5, 3, 4, 4)).shape == (5, 7)


@pytest.mark.parametrize("dims,nonlins,match", [
    ([4, 2], ["relu"], "equal lengths"),
    ([4, 2], ["relu", "swish"], "unknown activation 'swish'"),
    ([0, 2], ["relu", "none"], "positive ints"),
    ([], [], "at least the output"),
])
def test_bad_configs_fail_clearly(dims, nonlins, match):
    with pytest.raises(ValueError, match=match):
        MLP(2, dims, nonlins)


def test_gradients_reach_every_layer():
    mlp = MLP(2, [8, 8, 2], ["relu", "relu", "none"])
    mlp(torch.randn(16, 2)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
