"""The Part 1 synthetic, non-iid 2D binary dataset (programme reference, section 2).

Three rotated make_moons populations drawn from numpy's global RNG after np.random.seed(42):
train = all of population 1 (10 deg) + the first 1333 of population 2 (50 deg), valid = the rest
of population 2, test = population 3 (40 deg, noisiest). Train/valid and test differ on purpose.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

N_SAMPLES = 10_000
N_TRAIN_VALID = int(0.8 * N_SAMPLES)
# (n_samples, noise, rotation in degrees), in the order they are drawn.
POPULATIONS = ((4000, 0.20, 10.0), (4000, 0.25, 50.0), (2000, 0.30, 40.0))


class Split(NamedTuple):
    X: np.ndarray  # (N, 2) float32
    y: np.ndarray  # (N,) int64


def rotate_2d(X: np.ndarray, deg: float) -> np.ndarray:
    """Rotate each row counter-clockwise by `deg` degrees."""
    a = np.deg2rad(deg)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return X @ R.T


def make_synthetic_splits(seed: int = 42) -> Dict[str, Split]:
    """train (5333) / valid (2667) / test (2000), exactly as the programme builds them."""
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    np.random.seed(seed)  # the programme draws from numpy's *global* RNG; keep that for exactness
    Xs, ys = [], []
    for n, noise, deg in POPULATIONS:
        X, y = make_moons(n_samples=n, noise=noise)
        Xs.append(rotate_2d(X, deg))
        ys.append(y)
    X, y = np.concatenate(Xs), np.concatenate(ys)
    X_tr, X_va, y_tr, y_va = train_test_split(X[:N_TRAIN_VALID], y[:N_TRAIN_VALID], test_size=1 / 3, shuffle=False)
    as_split = lambda a, b: Split(a.astype(np.float32), b.astype(np.int64))
    return {"train": as_split(X_tr, y_tr), "valid": as_split(X_va, y_va),
            "test": as_split(X[N_TRAIN_VALID:], y[N_TRAIN_VALID:])}


def make_loaders(splits: Dict[str, Split], batch_size: int = 32, seed: int = 42
                 ) -> Tuple[DataLoader, DataLoader, DataLoader]:
    """DataLoaders over TensorDatasets (float32 features, int64 labels); only train shuffles,
    from its own seeded generator so loader order doesn't depend on unrelated RNG use."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def loader(split: Split, shuffle: bool) -> DataLoader:
        ds = TensorDataset(torch.from_numpy(split.X), torch.from_numpy(split.y))
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=gen)

    return loader(splits["train"], True), loader(splits["valid"], False), loader(splits["test"], False)


def plot_dataset_2d(X, y, n_classes: int = 2, alpha: float = 0.2, figsize=(8, 6), title=None, ax=None):
    """Scatter the classes of a 2D dataset, titled '<title> (n=N)'."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(1, 1, figsize=figsize)
    X, y = np.asarray(X), np.asarray(y)
    for c in range(n_classes):
        ax.scatter(*X[y == c].T, alpha=alpha, label=f"class {c}")
    ax.set_title(f"{title or 'data'} (n={len(y)})")
    ax.legend()
    return ax.figure, ax
