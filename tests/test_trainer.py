import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.classifier import ArgMaxClassifier, BinaryClassifier
from models.mlp import MLP
from training.trainer import ClassifierTrainer, NonFiniteLossError, load_checkpoint


def xor_loaders(n=256, batch_size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    ds = TensorDataset(x, y)
    return (DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(ds, batch_size=batch_size))


def make_trainer(lr=0.1, seed=0, **kw):
    torch.manual_seed(seed)
    model = BinaryClassifier(MLP(2, [16, 16, 2], ["relu", "relu", "none"]))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return ClassifierTrainer(model, nn.CrossEntropyLoss(), opt, **kw)


def test_fit_learns_and_counts_epochs():
    dl_train, dl_test = xor_loaders()
    res = make_trainer().fit(dl_train, dl_test, num_epochs=15, print_every=0)
    assert res.num_epochs == 15 == len(res.train_loss) == len(res.test_acc)
    assert res.train_acc[-1] > 90 and res.test_acc[-1] > 90
    assert res.train_loss[-1] < res.train_loss[0]


def test_early_stopping_counts_epochs_actually_run():
    dl_train, dl_test = xor_loaders()
    res = make_trainer(lr=0.0001).fit(dl_train, dl_test, num_epochs=50, early_stopping=2, print_every=0)
    assert res.num_epochs < 50
    best = max(res.test_acc)
    # stopped exactly `early_stopping` epochs after the last improvement
    last_improvement = max(i for i, a in enumerate(res.test_acc) if a == best and all(b < a for b in res.test_acc[:i]))
    assert res.num_epochs == last_improvement + 1 + 2


def test_max_batches_limits_samples_seen():
    dl_train, _ = xor_loaders(n=320, batch_size=32)
    trainer = make_trainer()
    trainer.train_epoch(dl_train, max_batches=3, verbose=False)
    assert trainer._last_num_samples == 3 * 32
    with pytest.raises(ValueError, match="max_batches must be >= 1"):
        trainer.train_epoch(dl_train, max_batches=0, verbose=False)


def test_accuracy_follows_binary_threshold():
    """Correct predictions are counted with the classifier's threshold, not a raw argmax."""
    dl_train, dl_test = xor_loaders()
    trainer = make_trainer()
    trainer.fit(dl_train, dl_test, 5, print_every=0)
    trainer.model.threshold = 0.999999
    acc_high = trainer.test_epoch(dl_test, verbose=False).accuracy
    trainer.model.threshold = 0.5
    acc_mid = trainer.test_epoch(dl_test, verbose=False).accuracy
    assert acc_high < acc_mid


def test_checkpoint_is_best_state_dict_loadable_weights_only(tmp_path):
    dl_train, dl_test = xor_loaders()
    trainer = make_trainer()
    ckpt = tmp_path / "best.pt"
    res = trainer.fit(dl_train, dl_test, 6, checkpoints=str(ckpt), print_every=0)
    state = load_checkpoint(str(ckpt))
    fresh = make_trainer(seed=1).model
    fresh.load_state_dict(state)
    best_epoch_acc = max(res.test_acc)
    fresh_trainer = ClassifierTrainer(fresh, nn.CrossEntropyLoss(), torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert fresh_trainer.test_epoch(dl_test, verbose=False).accuracy == pytest.approx(best_epoch_acc)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    """2 epochs + resume to 5 == 5 uninterrupted epochs: weights, curves, RNG and shuffling."""
    dl_train, dl_test = xor_loaders()
    full = make_trainer()
    ref = full.fit(dl_train, dl_test, 5, print_every=0, checkpoints=str(tmp_path / "a.pt"))

    dl_train, dl_test = xor_loaders()
    first = make_trainer()
    first.fit(dl_train, dl_test, 2, print_every=0, checkpoints=str(tmp_path / "b.pt"))
    dl_train, dl_test = xor_loaders()
    second = make_trainer(seed=123)  # different init: everything must come from the state file
    # the shuffling generator lives in the DataLoader; advance it as the first process had
    for _ in range(2):
        list(dl_train)
    res = second.fit(dl_train, dl_test, 5, print_every=0, checkpoints=str(tmp_path / "b.pt"), resume=True)
    assert res.num_epochs == 5
    assert res.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
    assert res.test_acc == pytest.approx(ref.test_acc)
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_after_early_stop_runs_nothing_more(tmp_path):
    dl_train, dl_test = xor_loaders()
    t = make_trainer(lr=0.0001)
    ref = t.fit(dl_train, dl_test, 40, early_stopping=1, print_every=0, checkpoints=str(tmp_path / "c.pt"))
    again = make_trainer(lr=0.0001).fit(dl_train, dl_test, 40, early_stopping=1, print_every=0,
                                        checkpoints=str(tmp_path / "c.pt"), resume=True)
    assert again.num_epochs == ref.num_epochs and again.test_acc == ref.test_acc


def test_on_epoch_end_gets_every_epoch():
    dl_train, dl_test = xor_loaders()
    seen = []
    make_trainer().fit(dl_train, dl_test, 3, print_every=0, on_epoch_end=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert {"train_loss", "test_acc", "lr", "epoch_time_s", "train_images_per_s"} <= set(seen[0])
    assert seen[0]["lr"] == pytest.approx(0.1)


def test_nan_loss_raises_clear_error():
    dl_train, dl_test = xor_loaders()
    t = make_trainer(lr=1e30)
    with pytest.raises(NonFiniteLossError, match="training loss became"):
        t.fit(dl_train, dl_test, 5, print_every=0)


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable archlab checkpoint"):
        load_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    dl_train, dl_test = xor_loaders()
    with pytest.raises(ValueError, match="not an archlab training-state checkpoint"):
        make_trainer().load_training_state(str(foreign), dl_train)


def test_verbose_output_off_a_tty_is_one_line_per_epoch(capsys):
    """A log file or pipe (pytest's capture too) gets one plain line per printed epoch, no bars."""
    dl_train, dl_test = xor_loaders()
    make_trainer().fit(dl_train, dl_test, 4, print_every=2)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 2/4", "epoch 4/4"]
    assert "valid loss" in lines[0] and "\r" not in out and "EPOCH" not in out


def test_verbose_output_on_a_tty_has_bars_named_train_and_valid(capsys, monkeypatch):
    import training.trainer

    monkeypatch.setattr(training.trainer, "on_tty", lambda: True)
    dl_train, dl_test = xor_loaders()
    make_trainer().fit(dl_train, dl_test, 4, print_every=2)
    out = capsys.readouterr().out
    assert "--- EPOCH 2/4 ---" in out and "--- EPOCH 4/4 ---" in out and "EPOCH 1/4" not in out
    assert "train (Avg. Loss" in out and "valid (Avg. Loss" in out and "test_batch" not in out


def test_argmax_classifier_trains_multiclass():
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    y = x[:, :3].argmax(1)
    dl = DataLoader(TensorDataset(x, y), batch_size=30, shuffle=True)
    model = ArgMaxClassifier(MLP(5, [32, 3], ["relu", "none"]))
    t = ClassifierTrainer(model, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), 1e-2))
    res = t.fit(dl, dl, 10, print_every=0)
    assert res.test_acc[-1] > 85 and math.isfinite(res.test_loss[-1])
