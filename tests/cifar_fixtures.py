"""Small, learnable CIFAR-10 look-alikes written in the real on-disk pickle layout.

Tests run the real loading code on these files (no mocks). Import the fixture explicitly:
    from cifar_fixtures import fake_cifar10, write_fake_cifar10  # noqa: F401
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from training.data.cifar import BATCHES_FOLDER, CIFAR10_CLASSES, META_FILE, NUM_CLASSES, TEST_FILE, TRAIN_FILES

# Pixel units. Tuned so a tiny conv net climbs from ~60% to ~95-100% test accuracy over 3-5 epochs on
# the default sizes (a linear model reaches ~80%): learnable, but not solved after one batch.
COLOUR_AMPLITUDE = 20.0
STRIPE_AMPLITUDE = 15.0
NOISE_STD = 70.0


def _class_prototypes() -> np.ndarray:
    """(10, 3, 32, 32) float images: a class colour plus a class-specific stripe pattern, so both a
    linear model (colour) and a conv net (pattern) can tell the classes apart."""
    hues = np.linspace(0, 2 * np.pi, NUM_CLASSES, endpoint=False)
    colours = 128 + COLOUR_AMPLITUDE * np.stack([np.cos(hues), np.cos(hues - 2.1), np.cos(hues + 2.1)], axis=1)  # (10, 3)
    yy, xx = np.mgrid[0:32, 0:32]
    protos = []
    for c in range(NUM_CLASSES):
        angle, freq = np.pi * (c % 5) / 5, 1 + c // 5  # 5 orientations x 2 frequencies
        stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) / 16)
        protos.append(colours[c][:, None, None] + STRIPE_AMPLITUDE * stripes[None])
    return np.stack(protos)


def _make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) rows in CIFAR's layout (R plane, G plane, B plane)."""
    x = _class_prototypes()[labels] + rng.normal(0, NOISE_STD, size=(len(labels), 3, 32, 32))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(len(labels), -1)


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the originals are protocol 2 with bytes keys


def _batch(label: str, y: np.ndarray, x: np.ndarray, first: int) -> dict:
    return {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": x,
            b"filenames": [f"fake_{first + i:05d}.png".encode() for i in range(len(y))]}


def write_fake_cifar10(root: Path, n_train_per_batch: int = 200, n_test: int = 200, seed: int = 0) -> Path:
    """Write root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns root
    (the data_dir to pass to load_cifar10). Classes are balanced in every file."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(TRAIN_FILES):
        y = _balanced_labels(n_train_per_batch, rng)
        _dump(_batch(f"training batch {i + 1} of 5", y, _make_images(y, rng), i * n_train_per_batch), folder / name)
    y = _balanced_labels(n_test, rng)
    _dump(_batch("testing batch 1 of 1", y, _make_images(y, rng), 0), folder / TEST_FILE)
    _dump({b"num_cases_per_batch": n_train_per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
           b"num_vis": 3072}, folder / META_FILE)
    return Path(root)


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory) -> Path:
    """A shared, read-only fake CIFAR-10 data_dir (5 x 200 train, 200 test). Tests that modify files
    must write their own copy with write_fake_cifar10(tmp_path)."""
    return write_fake_cifar10(tmp_path_factory.mktemp("fake_cifar10"))
