"""CIFAR-10 for Part 3: locating, loading and validating the pickles, splits, and a device loader.

The data is read straight from the standard `cifar-10-batches-py` pickles rather than through
torchvision's dataset class: the offline copy in ../shared/data is a JPEG-degraded re-pack whose md5
sums differ from the original archive, so torchvision's integrity check would reject it (see
/work/shared/data/CIFAR10_SOURCE.md). torchvision is only used to *download* when asked to.

`DeviceLoader` follows the airbench recipe: the uint8 images stay resident on the training device
and every epoch's shuffling and augmentation (random translate with padding, random horizontal
flip) are batched tensor ops drawn from the loader's own generator, so iteration never touches the
global RNG and a resumed fit continues exactly the same sequence.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from training.data.threads import single_thread

ENV_DATA_DIR = "ARCHLAB_DATA"
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
STANDARD_BATCH_SIZE = 10_000  # images per pickle in the official layout
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the original 50000 training images (on a 0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The programme: "if you limit batches, use at least 30,000 training and 5,000 validation images".
MIN_TRAIN_IMAGES = 30_000
MIN_VALID_IMAGES = 5_000
# The programme tests on the whole official test batch; fewer (n_test) is for smoke runs only.
FULL_TEST_IMAGES = STANDARD_BATCH_SIZE
PAD_MODES = ("reflect", "zeros")


class CifarFormatError(ValueError):
    """A CIFAR-10 file exists but is not a usable batch (corrupt, truncated, wrong shape...)."""


class CifarDownloadError(RuntimeError):
    """Downloading CIFAR-10 failed (typically: no internet)."""


class CifarArrays(NamedTuple):
    train_x: torch.Tensor  # uint8 (N_train, 3, 32, 32)
    train_y: torch.Tensor  # int64 (N_train,)
    test_x: torch.Tensor  # uint8 (N_test, 3, 32, 32)
    test_y: torch.Tensor  # int64 (N_test,)
    classes: Tuple[str, ...]


class Split(NamedTuple):
    x: torch.Tensor  # uint8 (N, 3, 32, 32)
    y: torch.Tensor  # int64 (N,)


# ==================================================================================== locating
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where the data lives: the explicit argument, else $ARCHLAB_DATA, else the user cache dir
    ($XDG_CACHE_HOME or ~/.cache, then archlab/data). The directory holds `cifar-10-batches-py/`."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "archlab" / "data"


def _batches_dir(root: Path) -> Path:
    """`root/cifar-10-batches-py`, or root itself when the caller pointed at that folder directly."""
    if root.name == BATCHES_FOLDER and (root / TRAIN_FILES[0]).exists():
        return root
    return root / BATCHES_FOLDER


def _missing_files(folder: Path) -> list[str]:
    return [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]


def _how_to_get_data(root: Path) -> str:
    return (f"To get it: pass download=True (CLI: --download) to fetch it into {root}; or point "
            f"data_dir / ${ENV_DATA_DIR} at a directory holding {BATCHES_FOLDER}/; or, on an offline "
            f"machine, unpack the shared copy with `python ../shared/data/make_cifar10.py {root}`.")


# ==================================================================================== reading
class _SafeUnpickler(pickle.Unpickler):
    """Only the globals a CIFAR batch needs (numpy array reconstruction): a pickle from an untrusted
    folder cannot run arbitrary code through us."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        with warnings.catch_warnings():  # numpy 2 warns when old pickles name numpy.core
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    """Load one pickle (encoding='bytes', as the py2-era originals need); any failure is a
    CifarFormatError naming the file."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise CifarFormatError(f"{path}: cannot read file ({e.strerror or e})") from e
    except Exception as e:  # EOFError, UnpicklingError, ValueError...: all mean corrupt/truncated
        raise CifarFormatError(f"{path}: not a readable CIFAR-10 pickle (corrupt or truncated?): "
                               f"{type(e).__name__}: {e}") from e


def _get(d: dict, key: str) -> Any:
    """Batches use bytes keys (b'data'); accept str keys too (pickles written with encoding='latin1')."""
    return d[key.encode()] if key.encode() in d else d.get(key)


def _validate_batch(path: Path, obj: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Check one batch's structure and return (data uint8 (N,3072), labels int64 (N,)).

    Counts: the official layout has exactly 10000 images per file; fewer (>= 1) are accepted so
    small generated data sets (tests, smoke runs) load through the same code; more is an error."""
    if not isinstance(obj, dict):
        raise CifarFormatError(f"{path}: expected a dict with b'data' and b'labels', got {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    missing = [k for k, v in (("b'data'", data), ("b'labels'", labels)) if v is None]
    if missing:
        raise CifarFormatError(f"{path}: missing key(s) {', '.join(missing)}; keys present: {list(obj)}")
    n_pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n_pixels:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFormatError(f"{path}: b'data' must be a uint8 array of shape (N, {n_pixels}), got {desc}")
    n = data.shape[0]
    if not 1 <= n <= STANDARD_BATCH_SIZE:
        raise CifarFormatError(f"{path}: holds {n} images; expected 1..{STANDARD_BATCH_SIZE} "
                               f"({STANDARD_BATCH_SIZE} in the official layout)")
    try:
        y = np.asarray(labels)
    except Exception as e:
        raise CifarFormatError(f"{path}: b'labels' is not a sequence of integers") from e
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise CifarFormatError(f"{path}: b'labels' must be {n} integers (one per image), got "
                               f"{y.dtype} values of shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise CifarFormatError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {y.min()}..{y.max()}")
    return data, y.astype(np.int64)


def _read_batches(folder: Path, names: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    parts = [_validate_batch(folder / n, _unpickle(folder / n)) for n in names]
    x = np.concatenate([p[0] for p in parts]).reshape(-1, *IMAGE_SHAPE)
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x), torch.from_numpy(y)


def _read_classes(folder: Path) -> Tuple[str, ...]:
    """Class names from batches.meta when present (it is optional), else the standard ones."""
    path = folder / META_FILE
    if not path.is_file():
        return CIFAR10_CLASSES
    meta = _unpickle(path)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if names is None or len(names) != NUM_CLASSES:
        raise CifarFormatError(f"{path}: expected b'label_names' with {NUM_CLASSES} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def download_cifar10(root: Path) -> None:
    """Fetch and extract the official archive into root via torchvision (md5-checked download)."""
    try:
        from torchvision.datasets import CIFAR10

        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # URLError, socket errors, md5 mismatch, disk full...
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise CifarDownloadError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {first_line}). If this machine is "
            f"offline, unpack the shared copy instead: `python ../shared/data/make_cifar10.py {root}`, "
            f"or set ${ENV_DATA_DIR} to a directory that already holds {BATCHES_FOLDER}/.") from None


def require_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The batches folder, or the clear FileNotFoundError a missing data set deserves. Cheap (no
    reading), so grids call it before starting workers or servers. With download=True missing
    files are fetched first."""
    root = resolve_data_dir(data_dir)
    folder = _batches_dir(root)
    missing = _missing_files(folder)
    if missing and download:
        download_cifar10(root)
        folder = _batches_dir(root)
        missing = _missing_files(folder)
    if missing:
        what = (f"no {BATCHES_FOLDER} folder in {root.resolve()}" if not folder.is_dir()
                else f"{folder.resolve()} lacks {', '.join(missing)}")
        raise FileNotFoundError(f"CIFAR-10 not found: {what}. {_how_to_get_data(root)}")
    return folder


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False) -> CifarArrays:
    """Read and validate the 5 training batches and the test batch (uint8 CHW images, int64 labels).

    Missing data is downloaded only when `download` is true; otherwise the FileNotFoundError says
    where we looked and how to get the data."""
    folder = require_cifar10(data_dir, download)
    train_x, train_y = _read_batches(folder, TRAIN_FILES)
    test_x, test_y = _read_batches(folder, (TEST_FILE,))
    present = len(torch.unique(test_y))
    if present < NUM_CLASSES:  # a test accuracy over some classes only would be reported as CIFAR-10's
        raise CifarFormatError(f"{folder / TEST_FILE}: its {len(test_y)} image(s) cover {present} of the "
                               f"{NUM_CLASSES} classes; a test set needs every class (the official one has 1000 "
                               f"of each): restore the real test_batch (delete the folder and use --download)")
    return CifarArrays(train_x, train_y, test_x, test_y, _read_classes(folder))


# ==================================================================================== splits
def check_programme_minimum(n_train: int, n_valid: int, allow_small: bool = False,
                            n_test: Optional[int] = None) -> None:
    """Raise when an experiment would see fewer images per epoch than the programme's minimum
    (30000 train, 5000 valid), or test on a subset of fewer than the 10000 official test images
    (n_test: the subset's size; None when the whole test batch is used, whatever it holds).
    `allow_small` is for tests and smoke runs only."""
    if allow_small:
        return
    floors = [("train", n_train, MIN_TRAIN_IMAGES), ("valid", n_valid, MIN_VALID_IMAGES)]
    if n_test is not None:
        floors.append(("test", n_test, FULL_TEST_IMAGES))
    short = [f"{name} {n} < {low}" for name, n, low in floors if n < low]
    if short:
        test = "" if n_test is None else f" and tests on all {FULL_TEST_IMAGES} test images"
        raise ValueError(f"too few images per epoch for a full experiment ({'; '.join(short)}); the programme "
                         f"requires >= {MIN_TRAIN_IMAGES} train and >= {MIN_VALID_IMAGES} validation images{test}. "
                         f"Pass allow_small=True for tests and smoke runs.")


def split_indices(n_available: int, n_train: Optional[int], n_valid: int, seed: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, valid) index tensors (sorted) from a seeded permutation of range(n_available).

    The validation set is the permutation's head, so it does not depend on n_train."""
    if n_valid < 0:
        raise ValueError(f"n_valid must be >= 0, got {n_valid}")
    if n_train is None:
        n_train = n_available - n_valid
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1 (or None for all remaining), got {n_train} "
                         f"({n_available} images available, {n_valid} for validation)")
    if n_train + n_valid > n_available:
        raise ValueError(f"n_train + n_valid = {n_train} + {n_valid} = {n_train + n_valid} exceeds the "
                         f"{n_available} available training images")
    perm = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
    valid = perm[:n_valid].sort().values
    train = perm[n_valid:n_valid + n_train].sort().values
    return train, valid


def check_n_test(n_test: Optional[int], n_available: int) -> None:
    """n_test (None: all) fits the test images the data holds; else a one-line error before training."""
    if n_test is None:
        return
    if not isinstance(n_test, int) or isinstance(n_test, bool) or n_test < 1:
        raise ValueError(f"n_test must be an integer >= 1 or None (all test images), got {n_test!r}")
    if n_test > n_available:
        raise ValueError(f"n_test={n_test} exceeds the {n_available} available test images; use n_test <= "
                         f"{n_available}, or None (--n-test 0) for all of them")


def make_splits(arrays: CifarArrays, n_train: Optional[int], n_valid: int, seed: int,
                n_test: Optional[int] = None) -> Tuple[Split, Split, Split]:
    """(train, valid, test): validation carved deterministically from the training images, disjoint
    from train; the official test batch is the test split. n_train=None takes all the rest.

    n_test: test on the first n_test images of the test batch (None: all of them), so a smoke run
    tests in seconds. The official test batch is stored in random class order, so its head is a
    fair, roughly class-balanced sample; taking the head (not a seeded draw) keeps the subset the
    same for every run and a prefix of any larger one."""
    check_n_test(n_test, len(arrays.test_y))
    train_idx, valid_idx = split_indices(len(arrays.train_y), n_train, n_valid, seed)
    test = Split(arrays.test_x, arrays.test_y) if n_test is None else \
        Split(arrays.test_x[:n_test], arrays.test_y[:n_test])
    return (Split(arrays.train_x[train_idx], arrays.train_y[train_idx]),
            Split(arrays.train_x[valid_idx], arrays.train_y[valid_idx]), test)


# ==================================================================================== augmentation
def _reflect_or_clamp(src: torch.Tensor, size: int, pad_mode: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Map source coordinates that fall outside [0, size) back inside: mirrored ('reflect', edge
    not repeated, like F.pad) or clamped plus a validity mask ('zeros')."""
    if pad_mode == "reflect":
        src = src.abs()
        return torch.where(src > size - 1, 2 * (size - 1) - src, src), None
    valid = (src >= 0) & (src < size)
    return src.clamp(0, size - 1), valid


def translate_flip(images: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor, flip: torch.Tensor,
                   pad_mode: str = "reflect") -> torch.Tensor:
    """Per-image random-crop-with-padding and horizontal flip as one vectorised gather.

    Equivalent to: pad each image by p on every side, take the HxW window whose top-left corner is
    (p + shift_y, p + shift_x) with |shift| <= p, then flip it left-right where `flip`. images: (B,C,H,W)
    any dtype; shift_y, shift_x: (B,) ints; flip: (B,) bool; all on the images' device."""
    B, C, H, W = images.shape
    dev = images.device
    rows = torch.arange(H, device=dev)[None, :] + shift_y[:, None]  # (B, H) source rows
    cols_out = torch.arange(W, device=dev)[None, :].expand(B, W)
    cols = torch.where(flip[:, None], W - 1 - cols_out, cols_out) + shift_x[:, None]  # (B, W)
    rows, row_ok = _reflect_or_clamp(rows, H, pad_mode)
    cols, col_ok = _reflect_or_clamp(cols, W, pad_mode)
    lin = (rows[:, :, None] * W + cols[:, None, :]).reshape(B, 1, H * W)
    out = images.reshape(B, C, H * W).gather(2, lin.expand(B, C, H * W)).reshape(B, C, H, W)
    if row_ok is not None:
        mask = (row_ok[:, :, None] & col_ok[:, None, :])[:, None]  # (B,1,H,W)
        out = out * mask.to(out.dtype)
    return out


def _derive_seed(seed: int, purpose: str) -> int:
    """Independent 63-bit seed per purpose, so e.g. split and shuffle streams are not correlated."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ==================================================================================== loader
class DeviceLoader:
    """Batches of normalised CIFAR images from uint8 tensors kept resident on `device`.

    Per epoch (at `iter()`): a permutation (if shuffle) and, if augment, per-image translations in
    [-crop_padding, crop_padding] and flip bits are drawn at once from the loader's own CPU generator
    (same sequence on CPU and CUDA; the global RNG is untouched), then each batch is gathered,
    augmented, converted to `dtype`, normalised and optionally made channels_last, all on the device.
    `state_dict()` holds the generator state and epoch counter for exact resume."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: str | torch.device = "cpu",
                 shuffle: bool = False, drop_last: bool = False, augment: bool = False, crop_padding: int = 4,
                 flip: bool = True, pad_mode: str = "reflect", seed: int = 0, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD):
        _check_loader_args(images, labels, batch_size, drop_last, crop_padding, pad_mode)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.crop_padding, self.flip, self.pad_mode = augment, crop_padding, flip, pad_mode
        self.channels_last, self.dtype = channels_last, dtype
        # x/255 normalised = x * scale + shift, folded into one multiply-add.
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0  # epochs started
        self.data_digest: Optional[str] = None  # the run's data (provenance); kept in the state, checked on resume

    @property
    def num_images(self) -> int:
        return len(self.labels)

    @property
    def dataset(self) -> TensorDataset:
        """The raw uint8 images and labels the loader draws from (len() == num_images)."""
        return TensorDataset(self.images, self.labels)

    def __len__(self) -> int:
        n, b = self.num_images, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def images_per_epoch(self, max_batches: Optional[int] = None) -> int:
        """Images one epoch really sees when the trainer stops after max_batches."""
        n_batches = len(self) if max_batches is None else min(len(self), max_batches)
        return min(n_batches * self.batch_size, self.num_images)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # Draw the whole epoch's randomness now (not lazily), so the generator state after iter()
        # does not depend on how many batches the consumer takes (e.g. the trainer's max_batches).
        order, shift_y, shift_x, flip = self._draw_epoch()
        self.epoch += 1
        return self._batches(order, shift_y, shift_x, flip)

    def _draw_epoch(self) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(order, shift_y, shift_x, flip) for every image of the coming epoch, moved to the device."""
        n, g = self.num_images, self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        shift_y = shift_x = flip = None
        if self.augment:
            p = self.crop_padding
            shift_y = torch.randint(-p, p + 1, (n,), generator=g)
            shift_x = torch.randint(-p, p + 1, (n,), generator=g)
            flip = torch.randint(0, 2, (n,), generator=g).bool() if self.flip else torch.zeros(n, dtype=torch.bool)
        return tuple(None if t is None else t.to(self.device, non_blocking=True) for t in (order, shift_y, shift_x, flip))

    def _batches(self, order, shift_y, shift_x, flip) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            with single_thread(self.device):  # fast beside a busy core too (training.data.threads)
                idx = order[sl]
                x = self.images[idx]
                if self.augment:
                    x = translate_flip(x, shift_y[sl], shift_x[sl], flip[sl], self.pad_mode)
                batch = self._normalise(x), self.labels[idx]
            yield batch

    def first_images(self, n: int) -> torch.Tensor:
        """The first n images in storage order, normalised and unaugmented (for data-dependent
        initialisation such as YourCNN's patch whitening)."""
        return self._normalise(self.images[:n])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).mul_(self._scale).add_(self._shift).to(self.dtype)  # in place: one allocation
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def state_dict(self) -> Dict[str, Any]:
        """Generator state + epoch counter (tensors and ints only: loadable with weights_only=True)."""
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "num_images": self.num_images,
                "data_digest": self.data_digest}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue the exact shuffle/augmentation stream saved by state_dict()."""
        if state.get("num_images") != self.num_images:
            raise ValueError(f"loader state is for {state.get('num_images')} images, this loader has "
                             f"{self.num_images}: resuming with a different split would not be exact")
        check_same_data(state.get("data_digest"), self.data_digest)
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])


def check_same_data(saved: Optional[str], current: Optional[str], what: str = "the training state") -> None:
    """A run never continues on other data: one line naming both digests (None: not recorded)."""
    if saved is not None and current is not None and saved != current:
        raise ValueError(f"{what} was saved on data {saved}, but this data has digest {current}: the data folder "
                         f"changed since the run started; point it back at the original data, or restart")


def _check_loader_args(images, labels, batch_size, drop_last, crop_padding, pad_mode) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 (N,C,H,W) tensor, got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    max_pad = min(images.shape[2:]) - 1 if pad_mode == "reflect" else min(images.shape[2:])
    if not 0 <= crop_padding <= max_pad:
        raise ValueError(f"crop_padding must be in 0..{max_pad} for pad_mode={pad_mode!r}, got {crop_padding}")
    if drop_last and 0 < images.shape[0] < batch_size:
        raise ValueError(f"drop_last with {images.shape[0]} images < batch_size {batch_size} would yield no batches")


# ==================================================================================== a run's data
def cifar10_splits(data_dir: str | os.PathLike | None, n_train: Optional[int], n_valid: int, split_seed: int,
                   download: bool = False, n_test: Optional[int] = None):
    """(train, valid, test, record): a run's three splits and their DataRecord (digests, source,
    kind; training.data.provenance). Cached per folder contents and split, so the configurations
    and seeds of a grid read and hash the pickles once per process. n_test: see make_splits."""
    folder = require_cifar10(data_dir, download).resolve()
    stamp = tuple((n, (folder / n).stat().st_mtime_ns, (folder / n).stat().st_size) for n in (*TRAIN_FILES, TEST_FILE))
    return _cached_splits(str(folder), stamp, n_train, n_valid, split_seed, n_test)


@functools.lru_cache(maxsize=2)
def _cached_splits(folder: str, stamp: tuple, n_train: Optional[int], n_valid: int, split_seed: int,
                   n_test: Optional[int] = None):
    from training.data.provenance import cifar_record, folder_kind

    arrays = load_cifar10(folder)
    train, valid, test = make_splits(arrays, n_train, n_valid, split_seed, n_test)
    # the copy is known by its whole test batch: a run testing on a subset is still recognised
    kind = folder_kind((folder, stamp), arrays.test_x, arrays.test_y)
    return train, valid, test, cifar_record(folder, train, valid, test, kind=kind)


def split_loaders(train: Split, valid: Split, test: Split, device: str | torch.device, bs_train: int, bs_test: int,
                  augment: bool, seed: int, channels_last: bool = False, crop_padding: int = 4,
                  ) -> Tuple[DeviceLoader, DeviceLoader, DeviceLoader]:
    """(train, valid, test) DeviceLoaders over splits. Only train shuffles (drop_last, optional
    augmentation, its stream drawn from `seed`); valid/test keep every image in order."""
    common = dict(device=device, channels_last=channels_last)
    dl_train = DeviceLoader(train.x, train.y, bs_train, shuffle=True, drop_last=True, augment=augment,
                            crop_padding=crop_padding, seed=_derive_seed(seed, "train-loader"), **common)
    return dl_train, DeviceLoader(valid.x, valid.y, bs_test, **common), DeviceLoader(test.x, test.y, bs_test, **common)


# ==================================================================================== convenience
def cifar10_loaders(data_dir: str | os.PathLike | None, device: str | torch.device, n_train: Optional[int],
                    n_valid: int, bs_train: int, bs_test: int, augment: bool, seed: int, channels_last: bool = False,
                    download: bool = False, allow_small: bool = False, split_seed: Optional[int] = None,
                    crop_padding: int = 4) -> Tuple[DeviceLoader, DeviceLoader, DeviceLoader]:
    """(train, valid, test) DeviceLoaders. Only train shuffles (drop_last, optional augmentation);
    valid/test keep every image in order. split_seed (default: seed) picks the validation images;
    fix it to compare runs with different seeds on the same validation set."""
    arrays = load_cifar10(data_dir, download=download)
    train, valid, test = make_splits(arrays, n_train, n_valid, seed if split_seed is None else split_seed)
    check_programme_minimum(len(train.y), len(valid.y), allow_small)
    return split_loaders(train, valid, test, device, bs_train, bs_test, augment, seed, channels_last, crop_padding)
