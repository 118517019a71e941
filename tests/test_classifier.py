import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve
from torch import nn

from models.classifier import ArgMaxClassifier, BinaryClassifier, plot_decision_boundary_2d, select_roc_thresh
from models.mlp import MLP


class FixedScores(nn.Module):
    """A 'model' whose scores are its input: lets tests set the probabilities exactly."""

    def forward(self, x):
        return x


def test_binary_classify_thresholds_positive_probability():
    clf = BinaryClassifier(FixedScores(), threshold=0.7)
    # softmax([0, s]) positive prob = sigmoid(s)
    s = torch.logit(torch.tensor([0.6, 0.7, 0.8]))
    z = torch.stack([torch.zeros(3), s], dim=1)
    labels = clf.classify(z)
    assert labels.dtype == torch.int and labels.tolist() == [0, 1, 1]
    clf.threshold = 0.5
    assert clf.classify_scores(z).tolist() == [1, 1, 1]


def test_positive_class_zero_flips_the_rule():
    clf = BinaryClassifier(FixedScores(), positive_class=0, threshold=0.5)
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert clf.classify(z).tolist() == [0, 1]


@pytest.mark.parametrize("thr", [0.0, 1.0, -0.1, 1.5])
def test_threshold_outside_open_interval_rejected(thr):
    with pytest.raises(ValueError, match=f"between 0 and 1, got {float(thr)!r}"):
        BinaryClassifier(FixedScores(), threshold=thr)
    clf = BinaryClassifier(FixedScores())
    with pytest.raises(ValueError):
        clf.threshold = thr


def test_bad_positive_class_rejected():
    with pytest.raises(ValueError, match="positive_class must be 0 or 1, got 2"):
        BinaryClassifier(FixedScores(), positive_class=2)


def test_argmax_classifier_and_probabilities():
    clf = ArgMaxClassifier(FixedScores())
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0]])
    assert clf.classify(z).tolist() == [1, 0]
    torch.testing.assert_close(clf.predict_proba(z).sum(1), torch.ones(2))


def test_forward_asserts_2d_scores():
    with pytest.raises(AssertionError):
        ArgMaxClassifier(nn.Flatten(0))(torch.randn(3, 2))


def test_roc_threshold_is_point_closest_to_ideal_corner():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.clip(0.35 * y + rng.normal(0.35, 0.2, 400), 1e-4, 1 - 1e-4)
    z = torch.stack([torch.zeros(400), torch.logit(torch.tensor(s, dtype=torch.float32))], dim=1)
    clf = BinaryClassifier(FixedScores())
    thr = select_roc_thresh(clf, z, torch.tensor(y))
    fpr, tpr, th = roc_curve(y, torch.sigmoid(z[:, 1]).numpy())
    finite = np.isfinite(th)
    best = np.argmin(np.where(finite, fpr ** 2 + (1 - tpr) ** 2, np.inf))
    assert thr == pytest.approx(th[best], abs=1e-6)
    assert 0 < thr < 1


def test_roc_threshold_never_inf_even_for_perfect_scores():
    z = torch.tensor([[0.0, -5.0], [0.0, -4.0], [0.0, 4.0], [0.0, 5.0]])
    thr = select_roc_thresh(BinaryClassifier(FixedScores()), z, torch.tensor([0, 0, 1, 1]))
    assert np.isfinite(thr) and 0 < thr < 1


def test_decision_boundary_plot_covers_data_and_keeps_mode():
    torch.manual_seed(0)
    clf = BinaryClassifier(MLP(2, [8, 2], ["relu", "none"]))
    clf.train()
    x, y = torch.randn(50, 2), torch.randint(0, 2, (50,))
    fig, ax = plot_decision_boundary_2d(clf, x, y, dx=0.2)
    assert clf.training
    x0, x1 = ax.get_xlim()
    assert x0 <= x[:, 0].min() and x1 >= x[:, 0].max()
    assert ax.get_xlabel() == "x1" and ax.get_ylabel() == "x2"
    plt.close(fig)
