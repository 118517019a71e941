"""n_test: a run tests on the first n_test images of the official test batch (smoke runs).

Real code throughout: fake CIFAR-10 pickles (tests/cifar_fixtures.py), real torch training and a
temporary sqlite MLflow store. The full-size programme must not move: n_test=None keeps every
recipe's config hash (tests/test_fast_recipe.py pins them) and tests on every test image.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner

from cifar_fixtures import fake_cifar10, write_fake_cifar10  # noqa: F401
from training.cnn.recipe import CifarRecipe
from training.data import provenance
from training.data.cifar import (FULL_TEST_IMAGES, MIN_TRAIN_IMAGES, MIN_VALID_IMAGES, DeviceLoader,
                                 check_programme_minimum, cifar10_splits, load_cifar10, make_splits)
from training.data.digest import arrays_digest
from training.tracking import runs as tracking

REAL_CIFAR = Path("/tmp/cifar")
SMALL = dict(n_train=96, n_valid=32, allow_small=True, log_model=False)


# ------------------------------------------------------------------------------------------ splits
def test_make_splits_tests_on_the_head_of_the_test_batch_and_leaves_train_valid_alone(fake_cifar10):
    arrays = load_cifar10(fake_cifar10)
    full = make_splits(arrays, 96, 32, seed=42)
    train, valid, test = make_splits(arrays, 96, 32, seed=42, n_test=50)
    assert torch.equal(test.x, arrays.test_x[:50]) and torch.equal(test.y, arrays.test_y[:50])
    assert torch.equal(full[2].x, arrays.test_x) and len(full[2].y) == 200  # None: every test image
    assert torch.equal(train.x, full[0].x) and torch.equal(valid.y, full[1].y)


@pytest.mark.parametrize("n_test", [201, 10_000])
def test_n_test_beyond_the_test_images_the_data_holds_is_refused(fake_cifar10, n_test):
    with pytest.raises(ValueError, match=rf"^n_test={n_test} exceeds the 200 available test images; use n_test "
                                         r"<= 200, or None \(--n-test 0\) for all of them$"):
        cifar10_splits(fake_cifar10, 96, 32, 42, n_test=n_test)
    assert len(cifar10_splits(fake_cifar10, 96, 32, 42, n_test=200)[2].y) == 200  # all of them: fine


# ------------------------------------------------------------------------------------------ the recipe
@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "100"])
def test_n_test_must_be_a_positive_int_or_none(bad):
    with pytest.raises(ValueError, match=rf"^n_test must be an integer >= 1 or None, got {bad!r}$"):
        CifarRecipe("exp1_1", n_test=bad, allow_small=True).validate()


def test_fewer_than_the_10000_test_images_needs_allow_small():
    full_size = dict(batches=None)  # 45000 training, 5000 validation images: the programme's floor holds
    with pytest.raises(ValueError, match=r"^n_test=9999 < 10000, the programme's test set \(every official test "
                                         r"image\); use n_test=None \(--n-test 0\) for all, or allow_small"):
        CifarRecipe("exp1_1", n_test=9999, **full_size).validate()
    CifarRecipe("exp1_1", n_test=9999, allow_small=True, **full_size).validate()
    CifarRecipe("exp1_1", n_test=10_000, **full_size).validate()
    CifarRecipe("exp1_1", **full_size).validate()


def test_the_data_time_floor_counts_a_test_subset_only():
    """The session's check on the split sizes it got: the whole test batch (None) is whatever the data
    holds; a subset below 10000 is a smoke run's."""
    check_programme_minimum(MIN_TRAIN_IMAGES, MIN_VALID_IMAGES, n_test=FULL_TEST_IMAGES)
    check_programme_minimum(MIN_TRAIN_IMAGES, MIN_VALID_IMAGES, n_test=None)
    with pytest.raises(ValueError, match=r"\(test 9999 < 10000\).* and tests on all 10000 test images\. Pass "
                                         r"allow_small=True"):
        check_programme_minimum(MIN_TRAIN_IMAGES, MIN_VALID_IMAGES, n_test=9999)
    check_programme_minimum(10, 10, allow_small=True, n_test=1)


def test_n_test_none_leaves_the_config_hash_alone_and_a_subset_is_another_experiment():
    recipe = CifarRecipe("exp2", seed=3)
    assert "n_test" not in recipe.identity() and "n_test" not in recipe.fields_logged()
    assert recipe.with_(n_test=None).config_hash() == recipe.config_hash()
    assert recipe.with_(n_test=1000).config_hash() != recipe.config_hash()
    assert recipe.with_(n_test=1000).identity()["n_test"] == 1000
    assert recipe.with_(n_test=1000).changed_settings() == {"n_test": 1000}  # the results file's `kw`


# ------------------------------------------------------------------------------------------ the data's kind
def test_kind_comes_from_the_whole_test_batch_while_digests_follow_the_subset(tmp_path, monkeypatch):
    """A copy is known by the digest of its whole test batch: register this fake copy's, then a run
    on its first 50 test images must still be recognised, with test and run digests of the 50."""
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=40, n_test=100, seed=5)
    arrays = load_cifar10(root)
    monkeypatch.setitem(provenance.KNOWN_TEST_DIGESTS, "fake", arrays_digest([arrays.test_x, arrays.test_y]))
    *_, whole = cifar10_splits(root, 96, 32, 42)
    *_, subset = cifar10_splits(root, 96, 32, 42, n_test=50)
    assert whole.kind == subset.kind == "fake"
    assert subset.summary()["splits"]["test"] == arrays_digest([arrays.test_x[:50], arrays.test_y[:50]])
    assert subset.summary()["splits"]["test"] != whole.summary()["splits"]["test"]
    assert subset.summary()["splits"]["train"] == whole.summary()["splits"]["train"]
    assert subset.digest != whole.digest  # another run digest: another experiment
    assert subset.summary()["sizes"] == {"train": 96, "valid": 32, "test": 50}
    # computed from the subset alone the kind would be lost: that is what the whole batch is for
    assert provenance.cifar_kind(subset.summary()["splits"]["test"]) == "unknown"


def test_folder_kind_hashes_a_folder_once():
    x, y = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4)
    key = ("/nowhere/cifar-10-batches-py", ("stamp",))
    first = provenance.folder_kind(key, x, y)
    # same folder contents (same key): the cached kind, even if handed other arrays
    assert provenance.folder_kind(key, x[:1], y[:1]) == first == "unknown"
    assert key in provenance._FOLDER_KINDS


@pytest.mark.skipif(not (REAL_CIFAR / "cifar-10-batches-py").is_dir(), reason="no real CIFAR-10 in /tmp/cifar")
def test_the_real_copy_is_recognised_when_testing_on_a_subset():
    *_, test, subset = cifar10_splits(REAL_CIFAR, None, 5000, 42, n_test=1000)
    *_, whole = cifar10_splits(REAL_CIFAR, None, 5000, 42)
    assert subset.kind == whole.kind in ("lossless", "jpeg") and len(test.y) == 1000
    assert subset.summary()["splits"]["test"] != whole.summary()["splits"]["test"]


# ------------------------------------------------------------------------------------------ a run
def _accuracy_on(model, x, y) -> float:
    """The checkpointed model's accuracy on (x, y), through the run's own normalisation."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in DeviceLoader(x, y, 64, device="cpu"):
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return 100.0 * correct / len(y)


def test_a_run_tests_on_n_test_images_and_says_so(mlflow_store, fake_cifar10, tmp_path):
    from training.cnn.experiment import cnn_experiment
    from training.trainer import load_checkpoint

    kwargs = dict(seed=3, bs_train=32, batches=2, epochs=2, early_stopping=None, filters_per_layer=[8],
                  layers_per_block=1, pool_every=1, hidden_dims=[16], data_dir=str(fake_cifar10), **SMALL)
    ckpt = str(tmp_path / "best.pt")  # a named checkpoint stays after the run: the test re-scores it
    path = cnn_experiment("exp1_1", out_dir=str(tmp_path / "results"), checkpoints=ckpt, n_test=50, **kwargs)
    payload = json.loads(Path(path).read_text())
    assert payload["config"]["kw"]["n_test"] == 50 and payload["data"]["sizes"]["test"] == 50
    run = tracking.find_runs("attributes.run_name = 'exp1_1_L1_K8'").iloc[0]
    assert run["params.n_test"] == "50" and run["params.n_train"] == "96"
    assert run[f"tags.{tracking.SMOKE_TAG}"] == "true"
    inputs = mlflow.get_run(run.run_id).inputs.dataset_inputs
    assert {i.dataset.name: i.dataset.digest for i in inputs}["cifar10-test"] == \
        payload["data"]["splits"]["test"][:provenance.MLFLOW_DIGEST_CHARS]

    arrays = load_cifar10(fake_cifar10)
    model = CifarRecipe("exp1_1", filters_per_layer=[8], layers_per_block=1, pool_every=1,
                        hidden_dims=[16]).build_model()
    model.load_state_dict(load_checkpoint(ckpt, map_location="cpu"))
    on_50 = _accuracy_on(model, arrays.test_x[:50], arrays.test_y[:50])
    assert run["metrics.test_acc"] == pytest.approx(on_50) == pytest.approx(payload["final_test"]["test_acc"])


def test_a_run_without_n_test_tests_on_every_test_image(mlflow_store, fake_cifar10, tmp_path):
    from training.cnn.experiment import cnn_experiment

    path = cnn_experiment("exp1_2", out_dir=str(tmp_path), seed=1, bs_train=32, epochs=1, filters_per_layer=[8],
                          layers_per_block=1, pool_every=1, hidden_dims=[16], data_dir=str(fake_cifar10), **SMALL)
    payload = json.loads(Path(path).read_text())
    assert "n_test" not in payload["config"]["kw"] and payload["data"]["sizes"]["test"] == 200
    assert tracking.find_runs("attributes.run_name = 'exp1_2_L1_K8'").iloc[0]["params.n_test"] == "200"


# ------------------------------------------------------------------------------------------ the CLIs
def test_grid_cli_n_test_reaches_every_child(mlflow_store, fake_cifar10, tmp_path):
    from entrypoints.cifar import cli

    result = CliRunner().invoke(cli, ["grid", "test_run", "--epochs", "1", "--bs-train", "32", "--n-train", "96",
                                      "--n-valid", "32", "--n-test", "40", "--allow-small", "true", "--data-dir",
                                      str(fake_cifar10), "--out-dir", str(tmp_path / "results"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    runs = tracking.find_runs("tags.grid = 'test_run'")
    child = runs[runs["tags.archlab.role"] == "child"].iloc[0]
    assert child["params.n_test"] == "40" and child["status"] == "FINISHED"
    payload = json.loads((tmp_path / "results" / "test_run_L1_K32-64.json").read_text())
    assert payload["data"]["sizes"]["test"] == 40


def test_run_exp_cli_n_test(mlflow_store, fake_cifar10, tmp_path):
    from entrypoints.cifar import cli

    args = ["run-exp", "-n", "exp1_1", "-K", "8", "-L", "1", "-P", "1", "-H", "16", "--epochs", "1", "--bs-train",
            "32", "--batches", "2", "--n-train", "96", "--n-valid", "32", "--allow-small", "--seed", "0",
            "--data-dir", str(fake_cifar10), "--out-dir", str(tmp_path / "results"), "-d", "cpu"]
    result = CliRunner().invoke(cli, [*args, "--n-test", "30"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "results" / "exp1_1_L1_K8.json").read_text())
    assert payload["config"]["kw"]["n_test"] == 30 and payload["data"]["sizes"]["test"] == 30
