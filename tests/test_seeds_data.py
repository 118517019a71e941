"""Issue #16, the training half: seeds, the data each run saw, smoke labels, on real MLflow stores.

Tiny fake CIFAR-10 copies (tests/cifar_fixtures.py): copy A plays the lossless copy, copy B (other
pixels) the JPEG one. Everything trains for real on a temporary sqlite store; no mocks.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_fixtures import write_fake_cifar10
from training.tracking import runs as tracking

TINY = ["--n-train", "200", "--n-valid", "50", "--bs-train", "50", "--epochs", "1", "--allow-small", "true",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Two small copies of 'CIFAR-10' that differ in their pixels (A: lossless's role, B: JPEG's)."""
    root = tmp_path_factory.mktemp("copies")
    return {k: str(write_fake_cifar10(root / k, n_train_per_batch=60, n_test=40, seed=seed))
            for k, seed in (("A", 0), ("B", 1))}


def grid_cli(*args: str):
    from entrypoints.cifar import cli

    result = CliRunner().invoke(cli, ["grid", "exp1_1", "--only", "exp1_1_L2_K32", *TINY, *args])
    assert result.exit_code == 0, result.output
    return result.output


def children():
    """name -> run (with its dataset inputs) of every child run in the store."""
    client = MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`{tracking.ROLE_TAG}` = 'child'")
    return {r.info.run_name: client.get_run(r.info.run_id) for r in runs}


def test_two_seeds_are_two_children_with_their_data_and_other_data_trains_afresh(mlflow_store, copies):
    """The issue's done-when scenario: `grid exp1_1 --only exp1_1_L2_K32 --seeds 42,43`."""
    out = grid_cli("--seeds", "42,43", "--data-dir", copies["A"])
    assert "2 trained, 0 already done" in out
    runs = children()
    assert set(runs) == {"exp1_1_L2_K32", "exp1_1_L2_K32_s43"}
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs.values()}
    assert len(parents) == 1
    digest = runs["exp1_1_L2_K32"].data.tags[tracking.DATA_DIGEST_TAG]
    for name, seed in (("exp1_1_L2_K32", "42"), ("exp1_1_L2_K32_s43", "43")):
        run = runs[name]
        assert run.data.params[tracking.SEED_PARAM] == seed and "data_digest" not in run.data.params
        tags = run.data.tags
        assert tags[tracking.CONFIG_TAG] == "exp1_1_L2_K32" and tags[tracking.DATA_DIGEST_TAG] == digest
        assert tags[tracking.DATA_KIND_TAG] == "unknown" and tags[tracking.SMOKE_TAG] == "true"
        assert tags[tracking.DATA_SOURCE_TAG].startswith(copies["A"])
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation", "test"}
        assert inputs["training"].name == "cifar10-train" and len(inputs["training"].digest) == 32
        assert json.loads(inputs["test"].source)["uri"] == tags[tracking.DATA_SOURCE_TAG]
        assert json.loads(inputs["training"].profile)["features_shape"] == [200, 3, 32, 32]
    results = json.loads(Path("results/exp1_1_L2_K32_s43.json").read_text())
    assert Path("results/exp1_1_L2_K32.json").is_file() and results["data"]["digest"] == digest
    assert results["config"]["seed"] == 43

    assert "0 trained, 2 already done" in grid_cli("--seeds", "42,43", "--data-dir", copies["A"])  # rerun: skipped
    assert "2 trained, 0 already done" in grid_cli("--seeds", "42,43", "--data-dir", copies["B"])  # other data
    digests = [r.data.tags[tracking.DATA_DIGEST_TAG] for r in mlflow.search_runs(
        search_all_experiments=True, output_format="list", filter_string=f"tags.`{tracking.ROLE_TAG}` = 'child'")]
    assert len(digests) == 4 and len(set(digests)) == 2


def test_the_config_hash_depends_on_the_data_and_legacy_runs_are_not_matched(mlflow_store, copies):
    """A finished run logged before the data digest (hash without one) is not taken as done."""
    from training.cnn import store
    from training.cnn.experiment import plan_run
    from training.data.cifar import cifar10_splits

    recipe, options = plan_run(dict(run_name="exp1_1", filters_per_layer=[8], layers_per_block=1, pool_every=1,
                                    hidden_dims=[8], seed=42, n_train=200, n_valid=50, allow_small=True))
    a, b = (cifar10_splits(copies[k], 200, 50, recipe.split_seed)[3].digest for k in "AB")
    hashes = {recipe.config_hash(), recipe.with_(data_digest=a).config_hash(), recipe.with_(data_digest=b).config_hash()}
    assert len(hashes) == 3 and "data_digest" not in recipe.identity()
    with tracking.open_run("exp1_1_L1_K8", tags={tracking.HASH_TAG: recipe.config_hash()}):
        pass  # a legacy run: FINISHED, same configuration, no digest
    assert store.find_prior(recipe, options) == (True, None)  # (what it was matched as before)
    assert store.find_prior(recipe.with_(data_digest=a), options) == (False, None)


def test_resume_on_other_data_is_refused_before_any_run_opens(mlflow_store, copies, tmp_path):
    """A training state saved on copy B never continues on copy A (nor one saved before digests)."""
    from training.cnn.experiment import cnn_experiment
    from training.data.cifar import DeviceLoader, cifar10_splits

    other = cifar10_splits(copies["B"], 200, 50, 42)[3].digest
    mine = cifar10_splits(copies["A"], 200, 50, 42)[3].digest
    kw = dict(filters_per_layer=[8], layers_per_block=1, pool_every=1, hidden_dims=[8], seed=1, epochs=1,
              n_train=200, n_valid=50, allow_small=True, data_dir=copies["A"], device="cpu")
    for saved, shown in ((other, other), (None, r"\(not recorded\)")):
        ckpt = tmp_path / "state.pt"
        torch.save({"loader": {"data_digest": saved}}, f"{ckpt}.state")
        with pytest.raises(ValueError, match=f"state .*state.pt.state was saved on data {shown}, but this data "
                                             f"has digest {mine}"):
            cnn_experiment("exp1_1", checkpoints=str(ckpt), **kw)
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    loader = DeviceLoader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2)
    loader.data_digest = mine
    state = {**loader.state_dict(), "data_digest": other}
    with pytest.raises(ValueError, match=f"saved on data {other}, but this data has digest {mine}"):
        loader.load_state_dict(state)


def test_smoke_is_below_the_programme_images_or_the_grid_epochs():
    from training.cnn import store
    from training.cnn.options import RunOptions
    from training.cnn.recipe import CifarRecipe

    grid, full = RunOptions(grid="exp1_1"), store.programme_epochs("exp1_1")
    assert not store.is_smoke(CifarRecipe("exp1_1", epochs=full), grid, 45000, 5000)
    assert store.is_smoke(CifarRecipe("exp1_1", epochs=full - 1), grid, 45000, 5000)
    assert store.is_smoke(CifarRecipe("exp1_1", epochs=full), grid, 200, 5000)
    assert store.is_smoke(CifarRecipe("exp1_1", epochs=full), grid, 45000, 50)
    assert not store.is_smoke(CifarRecipe("mine", epochs=1), RunOptions(), 45000, 5000)  # no programme size known


def test_seed_lists_are_checked():
    from training.grids.seeds import parse_seeds, with_seeds

    assert parse_seeds(None) is None and parse_seeds("") is None and parse_seeds(" 0, 7 ") == [0, 7]
    for bad, why in ((",", "empty item"), ("42,,43", "empty item"), ("4.5", "not an integer"),
                     ("-1", "negative"), ("42,42", r"repeats \[42\]")):
        with pytest.raises(ValueError, match=why):
            parse_seeds(bad)
    runs = with_seeds([{"run_name": "a"}, {"run_name": "b"}], [5, 6])
    assert [(r["run_name"], r["seed"], r["first_seed"]) for r in runs] == [
        ("a", 5, True), ("b", 5, True), ("a", 6, False), ("b", 6, False)]


def test_part1_takes_seeds_and_records_its_synthetic_data(mlflow_store, tmp_path):
    from entrypoints.part1 import cli
    from training.config import load_config

    cfg = load_config("part1")
    cfg["mlp_grid"].update(depths=[1], widths=[4])
    path = tmp_path / "part1_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for command in ("mlp-grid", "first-classifier"):
        result = CliRunner().invoke(cli, [command, "--config", str(path), "--epochs", "1", "--device", "cpu",
                                          "--seeds", "42,43"])
        assert result.exit_code == 0, result.output
    runs = {r.info.run_name: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert {"mlp_grid", "mlp_d1_w4", "mlp_d1_w4_s43", "first_classifier", "first_classifier_s43"} == set(runs)
    parent = runs["mlp_grid"].info.run_id
    assert runs["mlp_d1_w4_s43"].data.tags["mlflow.parentRunId"] == parent
    digests = set()
    for name in ("mlp_d1_w4", "mlp_d1_w4_s43", "first_classifier", "first_classifier_s43"):
        run = MlflowClient().get_run(runs[name].info.run_id)
        tags, params = run.data.tags, run.data.params
        assert params["seed"] == ("43" if name.endswith("_s43") else "42") and params["data_seed"] == "42"
        assert tags[tracking.DATA_KIND_TAG] == "synthetic" and tags[tracking.SMOKE_TAG] == "true"
        assert tags[tracking.CONFIG_TAG] == name.replace("_s43", "")
        assert "make_synthetic_splits(seed=42" in tags[tracking.DATA_SOURCE_TAG]
        sources = {json.loads(i.dataset.source)["tags"]["seed"] for i in run.inputs.dataset_inputs}
        assert sources == {"42"} and len(run.inputs.dataset_inputs) == 3
        digests.add(tags[tracking.DATA_DIGEST_TAG])
    assert len(digests) == 1  # every seed on the same points


def test_workers_logging_one_new_dataset_at_once_each_link_it_and_it_is_stored_once(mlflow_store):
    """Parallel workers of a grid register the same new splits at the same moment: MLflow's store
    checks, then inserts, so all but one hit the unique constraint on (experiment, name, digest)
    (CI saw it under `-e reproduce`). Each run must still get its three inputs, each dataset once."""
    import threading

    import numpy as np

    from training.data.provenance import DataRecord, SplitData

    client = MlflowClient()
    experiment_id = mlflow.set_experiment("race").experiment_id
    workers, rounds, errors = 6, 4, []
    for round_ in range(rounds):  # one round alone may not interleave; without the retry 9 of 10 did
        x = np.full((4, 2), round_, dtype=np.float32)
        record = DataRecord("race", "/nowhere", "unknown",
                            [SplitData(name, x + i, np.zeros(4)) for i, name in enumerate(("train", "valid", "test"))])
        runs = [client.create_run(experiment_id) for _ in range(workers)]
        barrier = threading.Barrier(workers)

        def log(run_id: str) -> None:
            barrier.wait()
            try:
                with mlflow.start_run(run_id=run_id, log_system_metrics=False):
                    record.log()
            except Exception as exc:  # noqa: BLE001 - collected and shown below
                errors.append(repr(exc)[:300])

        threads = [threading.Thread(target=log, args=(r.info.run_id,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in runs:
            inputs = client.get_run(r.info.run_id).inputs.dataset_inputs
            assert sorted(i.dataset.name for i in inputs) == ["race-test", "race-train", "race-valid"]
    assert errors == []
    seen = {}
    for run in client.search_runs([experiment_id], max_results=100):
        for i in run.inputs.dataset_inputs:
            seen.setdefault((i.dataset.name, i.dataset.digest), set()).add(run.info.run_id)
    assert len(seen) == 3 * rounds and all(len(ids) == workers for ids in seen.values())
