"""training/data/cifar.py on real pickle files written to tmp dirs (see cifar_fixtures.py)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_fixtures import fake_cifar10, write_fake_cifar10  # noqa: F401  (fake_cifar10 is a fixture)
from training.data.cifar import (BATCHES_FOLDER, CIFAR10_MEAN, CIFAR10_STD, MIN_TRAIN_IMAGES, MIN_VALID_IMAGES,
                            CifarDownloadError, CifarFormatError, DeviceLoader, check_programme_minimum,
                            cifar10_loaders, load_cifar10, make_splits, resolve_data_dir, split_indices,
                            translate_flip)

N_TRAIN, N_TEST = 5 * 200, 200  # fake_cifar10's sizes


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _ids(n: int) -> torch.Tensor:
    """Labels that identify each image, to check which images a loader yields."""
    return torch.arange(n)


def _collect(dl) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(dl))
    return torch.cat(xs), torch.cat(ys)


def _rewrite_batch(folder: Path, name: str, **changes) -> None:
    with open(folder / name, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d.update({k.encode(): v for k, v in changes.items()})
    with open(folder / name, "wb") as f:
        pickle.dump(d, f, protocol=2)


# ======================================================================== locating
def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("ARCHLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(None) == tmp_path / "cache" / "archlab" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "archlab" / "data"


# ======================================================================== loading
def test_load_fake_cifar10(fake_cifar10):
    a = load_cifar10(fake_cifar10)
    assert a.train_x.shape == (N_TRAIN, 3, 32, 32) and a.train_x.dtype == torch.uint8
    assert a.test_x.shape == (N_TEST, 3, 32, 32) and a.test_x.dtype == torch.uint8
    assert a.train_y.shape == (N_TRAIN,) and a.train_y.dtype == torch.int64
    assert a.test_y.dtype == torch.int64 and int(a.train_y.min()) >= 0 and int(a.train_y.max()) <= 9
    assert a.classes[0] == "airplane" and len(a.classes) == 10
    # Row layout: the first image of data_batch_2 is row 200, reshaped R plane, G plane, B plane.
    with open(fake_cifar10 / BATCHES_FOLDER / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(a.train_x[200], torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)))
    assert int(a.train_y[200]) == raw[b"labels"][0]


def test_load_accepts_the_batches_folder_itself_and_env(fake_cifar10, monkeypatch):
    assert len(load_cifar10(fake_cifar10 / BATCHES_FOLDER).train_y) == N_TRAIN
    monkeypatch.setenv("ARCHLAB_DATA", str(fake_cifar10))
    assert len(load_cifar10(None).test_y) == N_TEST


def test_missing_folder_message_says_where_and_how(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(where)
    msg = str(e.value)
    for part in (str(where.resolve()), BATCHES_FOLDER, "--download", "ARCHLAB_DATA", "make_cifar10.py"):
        assert part in msg


def test_missing_single_file_is_named(tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    (root / BATCHES_FOLDER / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar10(root)


def test_truncated_batch_file(tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    path = root / BATCHES_FOLDER / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CifarFormatError, match=r"data_batch_3.*(corrupt|truncated)"):
        load_cifar10(root)


def test_garbage_file(tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    (root / BATCHES_FOLDER / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(CifarFormatError, match="test_batch"):
        load_cifar10(root)


@pytest.mark.parametrize("changes, pattern", [
    (dict(data=np.zeros((20, 1024), np.uint8)), r"shape \(N, 3072\)"),
    (dict(data=np.zeros((20, 3072), np.float32)), "uint8"),
    (dict(labels=[0] * 19), "20 integers"),
    (dict(labels=[3] * 19 + [10]), r"0\.\.9"),
    (dict(labels=[-1] * 20), r"0\.\.9"),
])
def test_invalid_batch_contents(tmp_path, changes, pattern):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    _rewrite_batch(root / BATCHES_FOLDER, "data_batch_2", **changes)
    with pytest.raises(CifarFormatError, match=rf"data_batch_2.*{pattern}"):
        load_cifar10(root)


def test_missing_key_and_wrong_type(tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    folder = root / BATCHES_FOLDER
    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump({b"data": np.zeros((20, 3072), np.uint8)}, f)
    with pytest.raises(CifarFormatError, match=r"data_batch_5.*b'labels'"):
        load_cifar10(root)
    with open(folder / "data_batch_5", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CifarFormatError, match=r"data_batch_5.*dict"):
        load_cifar10(root)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_cannot_run_code(tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=20)
    marker = tmp_path / "pwned"
    with open(root / BATCHES_FOLDER / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(marker)}, f, protocol=2)
    with pytest.raises(CifarFormatError, match="not allowed"):
        load_cifar10(root)
    assert not marker.exists()


def _fake_torchvision_cifar(behaviour):
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            behaviour(Path(root))

    return torchvision.datasets, FakeCIFAR10


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    def offline(root):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    module, fake = _fake_torchvision_cifar(offline)
    monkeypatch.setattr(module, "CIFAR10", fake)
    with pytest.raises(CifarDownloadError) as e:
        load_cifar10(tmp_path / "data", download=True)
    msg = str(e.value)
    assert "could not download" in msg and str(tmp_path / "data") in msg and "make_cifar10.py" in msg
    assert "URLError" in msg and e.value.__suppress_context__  # no chained traceback


def test_download_then_read_with_our_reader(tmp_path, monkeypatch):
    calls = []
    module, fake = _fake_torchvision_cifar(lambda root: calls.append(write_fake_cifar10(root, 10, 10)))
    monkeypatch.setattr(module, "CIFAR10", fake)
    a = load_cifar10(tmp_path / "data", download=True)
    assert calls == [tmp_path / "data"] and len(a.train_y) == 50
    load_cifar10(tmp_path / "data", download=True)
    assert len(calls) == 1  # present data is not downloaded again


# ======================================================================== splits
def test_split_determinism_and_disjointness():
    tr1, va1 = split_indices(1000, 600, 300, seed=3)
    tr2, va2 = split_indices(1000, 600, 300, seed=3)
    assert torch.equal(tr1, tr2) and torch.equal(va1, va2)
    assert len(tr1) == 600 and len(va1) == 300
    assert len(set(tr1.tolist()) | set(va1.tolist())) == 900  # disjoint, no duplicates
    tr3, va3 = split_indices(1000, 600, 300, seed=4)
    assert not torch.equal(va1, va3)
    tr_all, va_all = split_indices(1000, None, 300, seed=3)
    assert torch.equal(va_all, va1) and len(tr_all) == 700  # valid does not depend on n_train
    assert set(tr_all.tolist()).isdisjoint(va_all.tolist())


@pytest.mark.parametrize("n_train, n_valid, pattern", [
    (800, 300, "exceeds the 1000 available"), (0, 10, "n_train must be >= 1"), (None, 1000, "n_train must be >= 1"),
    (10, -1, "n_valid must be >= 0"),
])
def test_split_size_errors(n_train, n_valid, pattern):
    with pytest.raises(ValueError, match=pattern):
        split_indices(1000, n_train, n_valid, seed=0)


def test_make_splits_contents(fake_cifar10):
    a = load_cifar10(fake_cifar10)
    train, valid, test = make_splits(a, n_train=None, n_valid=100, seed=0)
    assert len(train.y) == N_TRAIN - 100 and len(valid.y) == 100
    assert torch.equal(test.x, a.test_x) and torch.equal(test.y, a.test_y)
    tr_idx, va_idx = split_indices(N_TRAIN, None, 100, seed=0)
    assert torch.equal(valid.x, a.train_x[va_idx]) and torch.equal(valid.y, a.train_y[va_idx])
    assert torch.equal(train.x, a.train_x[tr_idx]) and torch.equal(train.y, a.train_y[tr_idx])


def test_programme_minimum():
    check_programme_minimum(MIN_TRAIN_IMAGES, MIN_VALID_IMAGES)
    with pytest.raises(ValueError, match="train 29999 < 30000"):
        check_programme_minimum(MIN_TRAIN_IMAGES - 1, MIN_VALID_IMAGES)
    with pytest.raises(ValueError, match="valid 10 < 5000"):
        check_programme_minimum(MIN_TRAIN_IMAGES, 10)
    check_programme_minimum(10, 10, allow_small=True)


# ======================================================================== loader basics
@pytest.mark.parametrize("drop_last, expected", [(False, [16, 16, 16, 16, 6]), (True, [16, 16, 16, 16])])
def test_loader_lengths_and_coverage(drop_last, expected):
    dl = DeviceLoader(_images(70), _ids(70), batch_size=16, shuffle=True, drop_last=drop_last, seed=1)
    batches = list(dl)
    assert len(dl) == len(batches) == len(expected) and [len(y) for _, y in batches] == expected
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == len(seen)  # each image at most once per epoch
    assert dl.num_images == len(dl.dataset) == 70 and dl.images_per_epoch(max_batches=2) == 32
    assert not torch.equal(seen, torch.arange(len(seen)))  # shuffled


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(_images(8).float(), _ids(8), 4)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(_images(8), _ids(8), 0)
    with pytest.raises(ValueError, match="no batches"):
        DeviceLoader(_images(8), _ids(8), 16, drop_last=True)
    with pytest.raises(ValueError, match="crop_padding"):
        DeviceLoader(_images(8), _ids(8), 4, crop_padding=32)


def test_batch_shapes_dtypes_and_formats():
    dl = DeviceLoader(_images(10), _ids(10), batch_size=4)
    X, y = next(iter(dl))
    assert X.shape == (4, 3, 32, 32) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert X.device.type == "cpu" and y.shape == (4,)
    X, _ = next(iter(DeviceLoader(_images(10), _ids(10), 4, channels_last=True, dtype=torch.float16)))
    assert X.dtype == torch.float16 and X.is_contiguous(memory_format=torch.channels_last)


def test_unshuffled_loader_keeps_order_and_normalises():
    images, labels = _images(50), _ids(50)
    X, y = _collect(DeviceLoader(images, labels, batch_size=16))
    assert torch.equal(y, labels)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(X * std + mean, images.float() / 255, atol=1e-5, rtol=0)


def test_normalisation_with_data_statistics(fake_cifar10):
    a = load_cifar10(fake_cifar10)
    x = a.train_x.float() / 255
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()
    X, _ = _collect(DeviceLoader(a.train_x, a.train_y, 128, mean=mean, std=std))
    torch.testing.assert_close(X.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(X.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


# ======================================================================== augmentation
def _reference_translate_flip(img: torch.Tensor, dy: int, dx: int, flip: bool, p: int, mode: str) -> torch.Tensor:
    """Per-image pad / crop / flip the obvious way."""
    padded = F.pad(img[None].float(), (p, p, p, p), mode="reflect" if mode == "reflect" else "constant")[0]
    out = padded[:, p + dy:p + dy + 32, p + dx:p + dx + 32]
    return (out.flip(-1) if flip else out).to(img.dtype)


def test_flip_only_equals_torch_flip():
    x = _images(6)
    zero = torch.zeros(6, dtype=torch.long)
    flip = torch.tensor([True, False, True, True, False, False])
    out = translate_flip(x, zero, zero, flip)
    assert torch.equal(out[flip], torch.flip(x[flip], dims=[-1])) and torch.equal(out[~flip], x[~flip])


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_translate_flip_matches_reference(mode):
    p = 4
    x = _images(9)
    dy = torch.tensor([-4, -1, 0, 4, 2, -3, 0, 4, -4])
    dx = torch.tensor([0, 3, -4, 4, -2, 1, 0, -4, 4])
    flip = torch.tensor([False, True, False, True, True, False, True, False, True])
    out = translate_flip(x, dy, dx, flip, pad_mode=mode)
    for i in range(len(x)):
        ref = _reference_translate_flip(x[i], int(dy[i]), int(dx[i]), bool(flip[i]), p, mode)
        assert torch.equal(out[i], ref), f"image {i} (dy={int(dy[i])}, dx={int(dx[i])}, flip={bool(flip[i])})"


def test_translate_on_tiny_hand_made_image():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    one, zero = torch.tensor([1]), torch.tensor([0])
    down_right = translate_flip(img, one, one, torch.tensor([False]), pad_mode="zeros")
    assert down_right[0, 0].tolist() == [[5, 6, 7, 0], [9, 10, 11, 0], [13, 14, 15, 0], [0, 0, 0, 0]]
    left_reflect = translate_flip(img, zero, -one, torch.tensor([False]), pad_mode="reflect")
    assert left_reflect[0, 0, 0].tolist() == [1, 0, 1, 2]


def _all_candidates(x: torch.Tensor, p: int) -> torch.Tensor:
    """(n_candidates, B, C, H, W): every translation in [-p, p]^2, flipped or not."""
    B = len(x)
    out = []
    for dy in range(-p, p + 1):
        for dx in range(-p, p + 1):
            for fl in (False, True):
                full = lambda v: torch.full((B,), v, dtype=torch.long)
                out.append(translate_flip(x, full(dy), full(dx), torch.full((B,), fl)))
    return torch.stack(out)


def test_loader_augmentation_keeps_labels_and_shapes():
    images, labels = _images(40), _ids(40)
    plain = DeviceLoader(images, labels, 8, shuffle=True, seed=5)
    aug = DeviceLoader(images, labels, 8, shuffle=True, seed=5, augment=True, crop_padding=2)
    X0, y0 = _collect(plain)
    X1, y1 = _collect(aug)
    assert torch.equal(y0, y1) and X1.shape == X0.shape and X1.dtype == X0.dtype  # same order, same labels
    assert not torch.equal(X0, X1)
    # Each augmented image is a translation (|d| <= 2) of its source, maybe flipped (normalisation is
    # per-channel affine, so it commutes with reflect-padded translation).
    match = (_all_candidates(X0, 2) - X1[None]).abs().amax(dim=(2, 3, 4)) < 1e-5  # (n_candidates, B)
    assert match.any(dim=0).all()
    flipped = match[1::2].any(dim=0) & ~match[0::2].any(dim=0)
    assert 0 < int(flipped.sum()) < len(X1)  # some flipped, some not


def test_augmentation_differs_between_epochs():
    dl = DeviceLoader(_images(16), _ids(16), 16, augment=True)
    (Xa, ya), = list(dl)
    (Xb, yb), = list(dl)
    assert torch.equal(ya, yb) and not torch.equal(Xa, Xb)


# ======================================================================== RNG and resume
def test_iteration_leaves_global_rng_untouched():
    dl = DeviceLoader(_images(32), _ids(32), 8, shuffle=True, augment=True)
    before = torch.get_rng_state()
    list(dl)
    assert torch.equal(torch.get_rng_state(), before)


def test_state_dict_resume_reproduces_next_epoch(tmp_path):
    kw = dict(batch_size=8, shuffle=True, augment=True, drop_last=True)
    a = DeviceLoader(_images(40), _ids(40), seed=11, **kw)
    list(a)
    torch.save(a.state_dict(), tmp_path / "loader.pt")  # as the trainer does, then weights_only load
    expected = list(a)
    b = DeviceLoader(_images(40), _ids(40), seed=999, **kw)
    b.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    got = list(b)
    assert b.epoch == a.epoch == 2
    for (xe, ye), (xg, yg) in zip(expected, got, strict=True):
        assert torch.equal(xe, xg) and torch.equal(ye, yg)


def test_partial_epoch_does_not_shift_the_stream():
    """The trainer may stop after max_batches; the next epoch must not depend on how many were taken."""
    a = DeviceLoader(_images(40), _ids(40), 8, shuffle=True, augment=True, seed=2)
    b = DeviceLoader(_images(40), _ids(40), 8, shuffle=True, augment=True, seed=2)
    next(iter(a))
    list(b)
    assert torch.equal(_collect(a)[1], _collect(b)[1])


def test_load_state_dict_rejects_other_size():
    state = DeviceLoader(_images(40), _ids(40), 8).state_dict()
    with pytest.raises(ValueError, match="40 images"):
        DeviceLoader(_images(30), _ids(30), 8).load_state_dict(state)


# ======================================================================== convenience + end to end
def test_cifar10_loaders(fake_cifar10):
    dl_train, dl_valid, dl_test = cifar10_loaders(fake_cifar10, "cpu", n_train=800, n_valid=100, bs_train=64,
                                                  bs_test=50, augment=True, seed=0, channels_last=False,
                                                  allow_small=True)
    assert (dl_train.num_images, dl_valid.num_images, dl_test.num_images) == (800, 100, N_TEST)
    assert (len(dl_train), len(dl_valid), len(dl_test)) == (800 // 64, 2, 4)
    assert dl_train.shuffle and dl_train.augment and dl_train.drop_last
    assert not (dl_test.shuffle or dl_test.augment or dl_valid.shuffle or dl_valid.augment)
    assert torch.equal(_collect(dl_test)[1], load_cifar10(fake_cifar10).test_y)
    with pytest.raises(ValueError, match="too few images"):
        cifar10_loaders(fake_cifar10, "cpu", 800, 100, 64, 50, augment=False, seed=0, channels_last=False)


def test_fake_data_is_learnable_through_the_trainer(fake_cifar10):
    from training.trainer import ClassifierTrainer

    torch.manual_seed(0)
    dl_train, _, dl_test = cifar10_loaders(fake_cifar10, "cpu", None, 100, 50, 100, augment=True, seed=0,
                                           channels_last=False, allow_small=True)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(16 * 16, 10))
    trainer = ClassifierTrainer(model, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=3e-3))
    res = trainer.fit(dl_train, dl_test, num_epochs=3, print_every=0)
    assert res.test_acc[-1] > 40.0  # chance is 10%; this setup reaches ~95%


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_cuda_loader_matches_cpu(pad_mode):
    """The draws come from a CPU generator, so the same seed gives the same batches on either device."""
    kw = dict(batch_size=16, shuffle=True, augment=True, seed=3, channels_last=True, pad_mode=pad_mode)
    cuda_rng = torch.cuda.get_rng_state()
    cpu = list(DeviceLoader(_images(64), _ids(64), device="cpu", **kw))
    gpu = list(DeviceLoader(_images(64), _ids(64), device="cuda", **kw))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.device.type == yg.device.type == "cuda" and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), atol=1e-5, rtol=0)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)


def test_torch_thread_count_comes_back_even_when_the_block_fails():
    """The loader's single CPU thread and reproduce's one-thread Part 1 hand the count back, error or not."""
    from training.data.threads import single_thread, torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("a failing Part 1")
    assert torch.get_num_threads() == before
    with single_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    with single_thread(torch.device("meta")):  # not the CPU: training's count stays
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
