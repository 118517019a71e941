"""Bad inputs: one table of CLI values, config values, data, checkpoints and tracking URIs, each of
which must fail with a clear error naming the bad value, before any work starts.

"Before work starts" is checked against a real temporary MLflow store that already holds a finished
run, plus results/ and checkpoints/ folders with files in them: after every case the runs (ids,
status, metrics, end times) and those files must be exactly as before, and no run may be left active.
Keep docs/bad-inputs.md in sync with the ids below.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import pickle
import threading
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import mlflow
import pytest
import torch
from click.testing import CliRunner

from cifar_fixtures import write_fake_cifar10
from training.data.cifar import BATCHES_FOLDER, TEST_FILE, TRAIN_FILES

# ------------------------------------------------------------------------------------------ the table
SMALL = ["--allow-small", "true", "--epochs", "1"]  # a grid run that would otherwise be legal on fake data
RUNEXP = ["run-exp", "-n", "bad", "--allow-small", "--n-train", "100", "--n-valid", "50", "--epochs", "1",
          "--data-dir", "{fake}"]


def _tiny(**kw) -> dict:
    """cnn_experiment kwargs for a tiny, otherwise valid configuration on the fake data."""
    base = dict(run_name="bad", filters_per_layer=[4], layers_per_block=1, pool_every=1, hidden_dims=[8],
                epochs=1, batches=1, bs_train=8, model_type="cnn", allow_small=True, n_train=100, n_valid=50,
                data_dir="{fake}")
    base.update(kw)
    return base


def _ycn(**model_kwargs) -> dict:
    return _tiny(model_type="ycn", hidden_dims=[], model_kwargs=model_kwargs)


@dataclass
class Case:
    id: str
    how: str                 # "cifar" / "part1" / "reproduce": click CLI args; "cnn": cnn_experiment(**kw); "grid": run_grid;
    #                          "ckpt": load_checkpoint(path); "data": load_cifar10(path)
    args: Any
    error: str               # regex the error message must match (searched, DOTALL)
    exc: Optional[type] = None  # for direct calls: the exception type expected


CASES: List[Case] = [
    # --- grid CLI values
    Case("grid-unknown-name", "cifar", ["grid", "exp9"], r"'exp9' is not one of .*'test_run'.*'exp2'"),
    Case("grid-epochs-negative", "cifar", ["grid", "test_run", "--epochs", "-1"],
         r"--epochs.*must be a positive integer .*got -1"),
    Case("grid-epochs-not-int", "cifar", ["grid", "test_run", "--epochs", "ten"], r"'ten' is not a valid integer"),
    Case("grid-bs-train-negative", "cifar", ["grid", "test_run", "--bs-train", "-5"],
         r"--bs-train.*must be a positive integer .*got -5"),
    Case("grid-workers-negative", "cifar", ["grid", "test_run", "--workers", "-2"],
         r"--workers.*must be a positive integer .*got -2"),
    Case("grid-n-train-too-small", "cifar", ["grid", "exp1_1", "--n-train", "1000", "--batches", "1000"],
         r"too few training images per epoch: 1000 .*< 30000.*allow_small"),
    Case("grid-n-valid-too-small", "cifar",
         ["grid", "exp1_1", "--n-train", "30000", "--batches", "1000", "--n-valid", "100"],
         r"n_valid=100 < 5000.*allow_small"),
    Case("grid-n-train-exceeds-data", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--n-train", "5000", "--n-valid", "100"],
         r"n_train \+ n_valid = 5000 \+ 100 = 5100 exceeds the 1000 available"),
    Case("grid-n-test-negative", "cifar", ["grid", "test_run", "--n-test", "-5"],
         r"--n-test.*must be a positive integer .*got -5"),
    Case("grid-n-test-too-small", "cifar",
         ["grid", "exp1_1", "--n-train", "30000", "--batches", "1000", "--n-test", "100"],
         r"n_test=100 < 10000, the programme's test set \(every official test image\); use n_test=None "
         r"\(--n-test 0\) for all, or allow_small for a smoke run"),
    Case("grid-n-test-exceeds-data", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--n-train", "100", "--n-valid", "50", "--n-test", "500"],
         r"n_test=500 exceeds the 200 available test images; use n_test <= 200"),
    Case("grid-device-cuda7", "cifar", ["grid", "test_run", "--device", "cuda:7"],
         r"--device.*'cuda:7' (requested but CUDA is not available|is not a device)"),
    Case("grid-device-tpu", "cifar", ["grid", "test_run", "--device", "tpu"],
         r"--device.*'tpu' is not a device; use auto, cpu, cuda or cuda:N"),
    Case("grid-devices-junk", "cifar", ["grid", "test_run", "--devices", "cpu,junk"],
         r"--devices: 'junk' is not a device; use auto, cpu, cuda or cuda:N"),
    Case("grid-compile-removed", "cifar", ["grid", "test_run", "--compile", "true"],
         r"No such option '--compile'"),
    Case("grid-cuda-graphs-on-cpu", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--device", "cpu", "--cuda-graphs", "on"],
         r"cuda_graphs='on' cannot work here: device 'cpu' is not CUDA; use cuda_graphs 'auto' or 'off'"),
    Case("grid-only-unknown", "cifar", ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--only", "nope"],
         r"--only names \['nope'\] are not configurations of this grid; valid: \['test_run_L1_K32-64'\]"),
    Case("grid-data-dir-empty", "cifar", ["grid", "test_run", *SMALL, "--data-dir", "{empty}"],
         r"CIFAR-10 not found: no cifar-10-batches-py folder in .*--download"),
    Case("grid-data-dir-corrupt", "cifar", ["grid", "test_run", *SMALL, "--data-dir", "{corrupt}"],
         r"data_batch_3: not a readable CIFAR-10 pickle \(corrupt or truncated\?\)"),
    Case("grid-tracking-unreachable", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--tracking-uri", "http://127.0.0.1:1"],
         r"MLflow tracking server 'http://127.0.0.1:1' is not reachable.*start it"),
    Case("grid-tracking-bad-scheme", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--tracking-uri", "bogus://nowhere"],
         r"tracking URI 'bogus://nowhere'.*(scheme|store)"),
    # --- seeds (issue #16): the same check on every entry point that trains
    Case("grid-seeds-empty", "cifar", ["grid", "test_run", "--seeds", ","], r"--seeds.*seeds ',' has an empty item"),
    Case("grid-seeds-duplicate", "cifar", ["grid", "test_run", "--seeds", "42,43,42"],
         r"--seeds.*seeds '42,43,42' repeats \[42\]; give distinct non-negative integers"),
    Case("grid-seeds-negative", "cifar", ["grid", "test_run", "--seeds", "-1"], r"--seeds.*negative seed\(s\) \[-1\]"),
    Case("grid-seeds-not-int", "cifar", ["grid", "test_run", "--seeds", "42,abc"],
         r"--seeds.*seeds '42,abc': abc is not an integer"),
    # --- the run lifecycle (issue #19): everything a run writes, and the store, checked before any work
    Case("grid-out-dir-is-a-file", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--out-dir", "{a_file}/results"],
         r"out_dir '.*a_file/results' cannot be a folder: '.*a_file' is a file; pass another --out-dir"),
    Case("grid-checkpoint-dir-is-a-file", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--checkpoint-dir", "{a_file}"],
         r"checkpoint_dir '.*a_file' cannot be a folder: '.*a_file' is a file; pass another --checkpoint-dir"),
    Case("grid-tracking-in-memory", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--tracking-uri", "sqlite:///:memory:"],
         r"'sqlite:///:memory:' is an in-memory database: every run would vanish .*use sqlite:///path.db"),
    Case("grid-tracking-garbage-sqlite", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--tracking-uri", "sqlite:///{garbage_db}"],
         r"Error: tracking URI '.*garbage.db' is not a usable MLflow store \(.*file is not a database.*\); point it"),
    Case("grid-tracking-folder", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--tracking-uri", "{empty}"],
         r"Error: tracking URI '.*empty' is a folder, MLflow's file store, which MLflow 3.13\+ refuses; use "
         r"sqlite:///path.db"),
    Case("grid-tracking-not-mlflow", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--tracking-uri", "{not_mlflow}"],
         r"Error: http://127.0.0.1:\d+ answers /health but is not an MLflow tracking server"),
    Case("grid-experiment-deleted", "cifar",
         ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--experiment", "gone"],
         r"experiment 'gone' is deleted \(id \d+\); restore it with `mlflow experiments restore --experiment-id \d+`"),
    Case("grid-device-meta", "cifar", ["grid", "test_run", "--device", "meta"],
         r"--device.*'meta' cannot train a model \(no real memory\); use auto, cpu, cuda or cuda:N"),
    Case("grid-only-comma", "cifar", ["grid", "test_run", *SMALL, "--data-dir", "{fake}", "--only", ","],
         r"--only.*',' names no configuration; pass names like exp1_1_L2_K32"),
    # --- run-exp (the programme's options)
    Case("runexp-model-unknown", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "-M", "vgg"],
         r"--model-type/-M: invalid choice: 'vgg'.*'cnn', 'resnet', 'ycn'"),
    Case("runexp-missing-K", "cifar", [*RUNEXP, "-L", "1", "-P", "1", "-H", "8"],
         r"the following arguments are required: --filters-per-layer/-K"),
    Case("runexp-K-zero", "cifar", [*RUNEXP, "-K", "0", "-L", "1", "-P", "1", "-H", "8"],
         r"filters_per_layer \(K\) must be a non-empty list of positive ints, got \[0\]"),
    Case("runexp-P-zero", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "0", "-H", "8"],
         r"pool_every must be an integer >= 1, got 0"),
    Case("runexp-P-shrinks-maps", "cifar", [*RUNEXP, "-K", "8", "-L", "8", "-P", "1", "-H", "8"],
         r"feature maps shrink below 1x1"),
    Case("runexp-H-empty", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H"],
         r"argument --hidden-dims/-H: expected at least one argument"),
    Case("runexp-H-negative", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "-5"],
         r"hidden_dims.*positive ints.*-5"),
    Case("runexp-lr-zero", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--lr", "0"],
         r"lr must be > 0, got 0.0"),
    Case("runexp-lr-negative", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--lr", "-1"],
         r"lr must be > 0, got -1.0"),
    Case("runexp-reg-negative", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--reg", "-1"],
         r"reg must be >= 0, got -1.0"),
    Case("runexp-optimizer-unknown", "cifar",
         [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--optimizer", "rmsprop"],
         r"--optimizer: invalid choice: 'rmsprop'.*'adam', 'adamw', 'sgd'"),
    Case("runexp-device-tpu", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "-d", "tpu"],
         r"'tpu' is not a device"),
    Case("runexp-seed-and-seeds", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--seed", "1",
                                            "--seeds", "1,2"], r"give --seed or --seeds, not both"),
    Case("runexp-seeds-negative", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--seeds", "1,-2"],
         r"seeds '1,-2': negative seed\(s\) \[-2\]"),
    Case("runexp-n-test-exceeds-data", "cifar",
         [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "--n-test", "500"],
         r"n_test=500 exceeds the 200 available test images; use n_test <= 200"),
    Case("runexp-name-escapes", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "-n", "../../x"],
         r"run name '\.\./\.\./x' must be a plain file name .*no '/', no '\.\.', not empty"),
    Case("runexp-name-subdir", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "-n", "sub/dir"],
         r"run name 'sub/dir' must be a plain file name"),
    Case("runexp-name-empty", "cifar", [*RUNEXP, "-K", "8", "-L", "1", "-P", "1", "-H", "8", "-n", ""],
         r"run name '' must be a plain file name"),
    # --- Part 1 CLI
    # --- reproduce CLI (the whole programme)
    Case("reproduce-cpu-full-size", "reproduce", ["--device", "cpu"],
         r"no GPU here, and the CIFAR grids .* take days at full size on a CPU.*--profile smoke"),
    Case("reproduce-smoke-with-sizes", "reproduce", ["--profile", "smoke", "--n-train", "45000", "--epochs", "30"],
         r"--profile smoke sets the sizes itself \(configs/smoke.yaml\); drop --epochs 30, --n-train 45000"),
    Case("reproduce-profile-unknown", "reproduce", ["--profile", "fast"],
         r"Invalid value for '--profile': 'fast' is not one of 'full', 'smoke'"),
    Case("part1-seeds-duplicate", "part1", ["mlp-grid", "--seeds", "7,7"], r"--seeds.*seeds '7,7' repeats \[7\]"),
    Case("part1-config-missing", "part1", ["main", "--config", "nope"],
         r"config 'nope' not found at .*nope.yaml; available configs: \[.*'part1'"),
    Case("part1-config-not-yaml", "part1", ["mlp-grid", "--config", "{not_yaml}"],
         r"bad config .*not_yaml.yaml.*not valid YAML"),
    Case("part1-config-bad-optimizer", "part1", ["first-classifier", "--config", "{part1_rmsprop}"],
         r"bad config .*part1_rmsprop.yaml.*unknown optimizer 'rmsprop'; valid: \["),
    Case("part1-config-batch-size-0", "part1", ["first-classifier", "--config", "{part1_bs0}"],
         r"bad config .*part1_bs0.yaml.*batch_size must be a positive integer, got 0"),
    Case("part1-config-unknown-key", "part1", ["first-classifier", "--config", "{part1_typo}"],
         r"bad config .*part1_typo.yaml.*unknown key\(s\) \['epoch'\] at section 'mlp_grid'; valid: \["),
    Case("part1-epochs-negative", "part1", ["mlp-grid", "--epochs", "-3"],
         r"--epochs.*must be a positive integer .*got -3"),
    Case("part1-device-tpu", "part1", ["main", "--device", "tpu"], r"'tpu' is not a device"),
    # --- config values (cnn_experiment's options, grid overrides)
    Case("cfg-unknown-option", "cnn", _tiny(learning_rate=0.1),
         r"unknown cnn_experiment options \['learning_rate'\]; valid extra options: \[", ValueError),
    Case("cfg-lr-schedule-bogus", "cnn", _tiny(lr_schedule="bogus"),
         r"unknown lr_schedule 'bogus'; valid: \['none', 'cosine'", ValueError),
    Case("cfg-optimizer-rmsprop", "cnn", _tiny(optimizer="rmsprop"),
         r"unknown optimizer 'rmsprop'; valid: \[", ValueError),
    Case("cfg-label-smoothing-1.5", "cnn", _tiny(label_smoothing=1.5),
         r"label_smoothing must be in \[0, 1\), got 1.5", ValueError),
    Case("cfg-warmup-frac-1", "cnn", _tiny(warmup_frac=1.0), r"warmup_frac must be a number in \[0, 1\), got 1.0",
         ValueError),
    Case("cfg-lookahead-every-negative", "cnn", _tiny(lookahead_every=-1),
         r"lookahead_every must be an integer >= 0, got -1", ValueError),
    Case("cfg-ycn-tta-x", "cnn", _ycn(tta="x"), r"tta must be one of \[.*\], got 'x'", ValueError),
    Case("cfg-ycn-stem-x", "cnn", _ycn(stem="x"), r"stem must be one of \[.*\] \(or True/False\), got 'x'",
         ValueError),
    Case("cfg-ycn-width-mult-0", "cnn", _ycn(width_mult=0), r"width_mult must be a positive number, got 0",
         ValueError),
    Case("cfg-ycn-frozen-zero-gate", "cnn", _ycn(learn_bn_scale=False, zero_init_residual=True),
         r"zero_init_residual=True needs learn_bn_scale=True: a frozen zero BN scale would switch its residual "
         r"branch off for good", ValueError),
    Case("cfg-norm-weight-decay-negative", "cnn", _tiny(norm_weight_decay=-0.1),
         r"optimizer norm_weight_decay must be >= 0.0, got -0.1", ValueError),
    Case("cfg-n-test-bool", "cnn", _tiny(n_test=True), r"n_test must be an integer >= 1 or None, got True",
         ValueError),
    Case("cfg-compile-removed", "cnn", _tiny(compile=True),
         r"unknown cnn_experiment options \['compile'\]; valid extra options: \[", ValueError),
    Case("cfg-cuda-graphs-yes", "cnn", _tiny(cuda_graphs="yes"),
         r"cuda_graphs must be one of \['auto', 'on', 'off'\], got 'yes'", ValueError),
    Case("cfg-cuda-graphs-on-cpu", "cnn", _tiny(cuda_graphs="on", device="cpu"),
         r"cuda_graphs='on' cannot work here: device 'cpu' is not CUDA; use cuda_graphs 'auto' or 'off'", ValueError),
    Case("grid-override-bs-train-0", "grid", ("test_run", dict(bs_train=0, options=dict(allow_small=True))),
         r"bs_train must be an integer >= 1, got 0", ValueError),
    Case("grid-override-bad-option", "grid", ("exp2", dict(options=dict(allow_small=True, lr_schedule="bogus"))),
         r"unknown lr_schedule 'bogus'", ValueError),
    Case("grid-unknown-config", "grid", ("exp9", {}), r"config 'exp9' not found at .*available configs", FileNotFoundError),
    Case("cnn-resume-other-data", "cnn", _tiny(checkpoints="{ckpt_dir}/otherdata.pt"),
         r"the training state .*otherdata.pt.state was saved on data 0{64}, but this data has digest [0-9a-f]{64}: "
         r"the data folder changed since the run started", ValueError),
    # --- checkpoints
    Case("ckpt-missing", "ckpt", "{ckpt_dir}/missing.pt", r"checkpoint '.*missing.pt' does not exist",
         FileNotFoundError),
    Case("ckpt-truncated", "ckpt", "{ckpt_dir}/truncated.pt",
         r"'.*truncated.pt' is not a readable archlab checkpoint \(corrupt, truncated", ValueError),
    Case("ckpt-random-bytes", "ckpt", "{ckpt_dir}/random.pt", r"'.*random.pt' is not a readable archlab checkpoint",
         ValueError),
    Case("ckpt-non-tensor-object", "ckpt", "{ckpt_dir}/object.pt",
         r"'.*object.pt' is not a readable archlab checkpoint .*non-tensor objects", ValueError),
    # --- saved training states a rerun would resume from
    Case("state-corrupt", "cnn", _tiny(checkpoints="{ckpt_dir}/corrupt_state"),
         r"training state '.*corrupt_state.state' is corrupt \(.*\); delete '.*corrupt_state.state' to train this "
         r"configuration afresh, or rerun with --restart true", ValueError),
    Case("state-other-model", "cnn", _tiny(checkpoints="{ckpt_dir}/other_model"),
         r"training state '.*other_model.state' does not fit this model \(another architecture: .*Missing key"
         r".*\); delete .* or rerun with --restart true", ValueError),
    # --- data
    Case("data-wrong-shape", "data", "{wrong_shape}",
         r"data_batch_2: b'data' must be a uint8 array of shape \(N, 3072\), got uint8 array of shape \(20, 100\)",
         ValueError),
    Case("data-missing-test-batch", "data", "{no_test}", r"CIFAR-10 not found: .* lacks test_batch", FileNotFoundError),
    Case("data-test-batch-one-image", "data", "{one_test}",
         r"test_batch: its 1 image\(s\) cover 1 of the 10 classes; a test set needs every class", ValueError),
    Case("data-labels-out-of-range", "data", "{bad_labels}", r"test_batch: labels must lie in 0..9, found 0..12",
         ValueError),
]


class Opaque:
    """Not a tensor: a checkpoint holding it must be refused by the weights-only loader."""


# ------------------------------------------------------------------------------------------ fixtures
def _make_inputs(root: Path) -> dict:
    paths = {"empty": root / "empty", "fake": root / "fake", "corrupt": root / "corrupt",
             "wrong_shape": root / "wrong_shape", "no_test": root / "no_test", "bad_labels": root / "bad_labels",
             "one_test": root / "one_test",
             "ckpt_dir": root / "bad_ckpts", "not_yaml": root / "not_yaml.yaml",
             "part1_rmsprop": root / "part1_rmsprop.yaml", "a_file": root / "a_file", "garbage_db": root / "garbage.db",
             "part1_bs0": root / "part1_bs0.yaml", "part1_typo": root / "part1_typo.yaml"}
    paths["empty"].mkdir(parents=True)
    write_fake_cifar10(paths["fake"])
    for name in ("corrupt", "wrong_shape", "no_test", "bad_labels", "one_test"):
        write_fake_cifar10(paths[name], n_train_per_batch=20, n_test=20)
    batches = lambda name: paths[name] / BATCHES_FOLDER  # noqa: E731
    blob = (batches("corrupt") / TRAIN_FILES[2]).read_bytes()
    (batches("corrupt") / TRAIN_FILES[2]).write_bytes(blob[: len(blob) // 2])
    with open(batches("wrong_shape") / TRAIN_FILES[1], "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"] = batch[b"data"][:, :100].copy()
    with open(batches("wrong_shape") / TRAIN_FILES[1], "wb") as f:
        pickle.dump(batch, f, protocol=2)
    (batches("no_test") / TEST_FILE).unlink()
    with open(batches("one_test") / TEST_FILE, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"], batch[b"labels"] = batch[b"data"][:1].copy(), batch[b"labels"][:1]
    with open(batches("one_test") / TEST_FILE, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with open(batches("bad_labels") / TEST_FILE, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"][0] = 12
    with open(batches("bad_labels") / TEST_FILE, "wb") as f:
        pickle.dump(batch, f, protocol=2)

    ck = paths["ckpt_dir"]
    ck.mkdir()
    torch.save({"w": torch.ones(100)}, ck / "good.pt")
    good = (ck / "good.pt").read_bytes()
    (ck / "truncated.pt").write_bytes(good[: len(good) // 2])
    (ck / "random.pt").write_bytes(os.urandom(4096))
    (ck / "corrupt_state.state").write_bytes(os.urandom(4096))
    torch.save({"trainer": {"model": {"w": torch.ones(3)}}, "epoch": 1, "curves": {}, "best_acc": 1.0,
                "epochs_without_improvement": 0}, ck / "other_model.state")
    (root / "a_file").write_text("not a folder\n")
    (root / "garbage.db").write_bytes(b"this is not an SQLite file\n" * 100)
    torch.save({"w": torch.ones(3), "extra": Opaque()}, ck / "object.pt")
    torch.save({"loader": {"data_digest": "0" * 64}}, ck / "otherdata.pt.state")  # a run's state on other data

    paths["not_yaml"].write_text("first_classifier: [unclosed\n  : :\n")
    from training.config import load_config
    cfg = load_config("part1")
    cfg["first_classifier"]["optimizer"]["name"] = "rmsprop"
    import yaml
    paths["part1_rmsprop"].write_text(yaml.safe_dump(cfg))
    cfg = load_config("part1")
    paths["part1_bs0"].write_text(yaml.safe_dump({**cfg, "batch_size": 0}))
    cfg["mlp_grid"]["epoch"] = 3  # a typo of epochs
    paths["part1_typo"].write_text(yaml.safe_dump(cfg))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temp sqlite store holding one finished run, with results/ and checkpoints/ files beside it;
    the tests run with that folder as CWD (where the CLIs' default out/checkpoint dirs point)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "ARCHLAB_EXPERIMENT"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("archlab")
        with mlflow.start_run(run_name="existing") as run:
            mlflow.log_param("K", "32")
            for step, acc in enumerate((40.0, 55.0, 61.5)):
                mlflow.log_metric("valid_acc", acc, step=step)
        (root / "results").mkdir()
        (root / "results" / "existing.json").write_text('{"valid_acc": 61.5}')
        (root / "checkpoints").mkdir()
        torch.save({"w": torch.zeros(2)}, root / "checkpoints" / "existing.pt")
        mlflow.MlflowClient().delete_experiment(mlflow.create_experiment("gone"))  # soft-deleted
        inputs = _make_inputs(root / "inputs")
        with not_mlflow_service() as url:
            inputs["not_mlflow"] = url
            yield dict(uri=uri, root=root, run_id=run.info.run_id, inputs=inputs)


@contextlib.contextmanager
def not_mlflow_service():
    """A real HTTP service on 127.0.0.1 that answers /health (200) but is no MLflow server (404)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            ok = self.path.startswith("/health")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"<html>not found</html>")

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _snapshot(store) -> Tuple[Any, Any]:
    mlflow.set_tracking_uri(store["uri"])
    client = mlflow.MlflowClient(store["uri"])
    runs = []
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            history = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                       for k in r.data.metrics}
            runs.append((r.info.run_id, r.info.status, r.info.end_time, r.data.params, history))
    files = sorted((str(p.relative_to(store["root"])), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in store["root"].rglob("*") if p.is_file() and "inputs" not in p.parts
                   and not p.name.startswith("mlflow.db"))
    return sorted(runs, key=lambda r: r[0]), files


def _fill(value: Any, inputs: dict) -> Any:
    if isinstance(value, str):
        return value.format(**inputs)
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, inputs) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, inputs) for k, v in value.items()}
    return value


def _invoke(case: Case, inputs: dict) -> Tuple[str, Union[int, type]]:
    """Run one case; returns (the error text the user sees, the exit code or exception type)."""
    args = _fill(case.args, inputs)
    if case.how in ("cifar", "part1", "reproduce"):
        if case.how == "cifar":
            from entrypoints.cifar import cli
        elif case.how == "reproduce":
            from entrypoints.reproduce import cli
        else:
            from entrypoints.part1 import cli
        result = CliRunner().invoke(cli, args)
        # a clean usage error, never a traceback
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{case.id}: traceback instead of a clear error: {result.exception!r}\n{result.output}"
        return result.output, result.exit_code
    with pytest.raises(Exception) as info:
        if case.how == "cnn":
            from training.cnn.experiment import cnn_experiment
            cnn_experiment(**args)
        elif case.how == "grid":
            from training.grids.expand import run_grid
            run_grid(*args)
        elif case.how == "ckpt":
            from training.trainer import load_checkpoint
            load_checkpoint(args)
        elif case.how == "data":
            from training.data.cifar import load_cifar10
            load_cifar10(args)
        else:
            raise AssertionError(case.how)
    return str(info.value), info.type


def test_table_is_big_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 28


def test_doc_lists_every_case():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9.\-]+)` \|", doc, flags=re.M))
    assert documented == {c.id for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, store):
    before = _snapshot(store)
    try:
        message, outcome = _invoke(case, store["inputs"])
    finally:
        while mlflow.active_run() is not None:  # a leaked active run would itself be a failure below
            mlflow.end_run()
            pytest.fail(f"{case.id}: left an MLflow run active")
        mlflow.set_tracking_uri(store["uri"])
        os.environ.pop("ARCHLAB_EXPERIMENT", None)
    if case.how in ("cifar", "part1", "reproduce"):
        assert outcome != 0, f"{case.id}: exit code 0\n{message}"
    else:
        assert issubclass(outcome, case.exc), f"{case.id}: raised {outcome.__name__}, expected {case.exc.__name__}"
    assert re.search(case.error, message, flags=re.S), f"{case.id}: message does not match {case.error!r}:\n{message}"
    assert "Traceback" not in message
    after = _snapshot(store)
    assert after[0] == before[0], f"{case.id}: runs changed (a run was created or touched)"
    assert after[1] == before[1], f"{case.id}: results/checkpoint files changed"
    assert any(r[0] == store["run_id"] and r[1] == "FINISHED" for r in after[0])
