"""Which data a result was measured on, as one hex digest (issue #16's data tags, issue #18's record).

Why: the two offline copies of CIFAR-10 (lossless, JPEG q75) differ by about 3.4 points for the same
recipe, and their pickles look alike. A sha256 over the arrays themselves (not the files, whose
pickling may vary) names the copy unambiguously; `data_kind` turns the known digests into words.

    arrays_digest([train_x, train_y, test_x, test_y])  # any numpy arrays or torch tensors
    cifar10_digest("/tmp/cifar")                       # the pickles, in file order
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

# sha256 by cifar10_digest of the copies that ../shared/data/make_cifar10.py unpacks (2026-12-01).
KNOWN_DIGESTS = {
    "lossless": "69ea229bd9f5ea20da624208847cfdfa8991d8be22df9c42cad6ce1d1f03ddb5",
    "jpeg": "d9bdf863187ea26dcc092a9c4d7ed003b5fcce86d102f1b72b0cf68f23f8009e",
}


def arrays_digest(arrays: Iterable) -> str:
    """sha256 over each array's dtype, shape and C-order bytes, in the order given: equal arrays
    give equal digests on any machine; a changed pixel, label, order or shape changes it."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cifar10_digest(data_dir) -> str:
    """The digest of a `cifar-10-batches-py` folder: train images (uint8, N x 3 x 32 x 32, the five
    batches in file order), train labels (uint8), then the same for the test batch."""
    import torch

    from training.data.cifar import load_cifar10

    a = load_cifar10(data_dir)
    return arrays_digest([a.train_x, a.train_y.to(torch.uint8), a.test_x, a.test_y.to(torch.uint8)])


def data_kind(digest: str) -> str:
    """'lossless' or 'jpeg' for the shared copies, else 'unknown' (fake or other data)."""
    return next((kind for kind, known in KNOWN_DIGESTS.items() if known and known == digest), "unknown")
