"""Part 3 end to end on small generated CIFAR-shaped data: cnn_experiment, results files, the
run-exp and grid CLIs, every grid entry point, resume after SIGKILL, and bad input."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_fixtures import fake_cifar10, write_fake_cifar10  # noqa: F401
from conftest import PROJECT_ROOT, create_store, subprocess_env
from entrypoints.cifar import cli
from training.tracking import runs as tracking
from training.cnn.experiment import cnn_experiment
from training.experiments import experiment_name_of
from training.grids.expand import GRIDS, expand_grid, load_grid_config, run_grid
from training.results_io import load_experiment

PROGRAMME_CONFIG_KEYS = {"run_name", "out_dir", "seed", "device", "bs_train", "bs_test", "batches", "epochs",
                         "early_stopping", "checkpoints", "lr", "reg", "filters_per_layer", "layers_per_block",
                         "pool_every", "hidden_dims", "model_type", "kw"}
SMALL = dict(n_train=96, n_valid=32, allow_small=True, log_model=False)


def small_overrides(root, epochs=1, **options):
    return dict(epochs=epochs, bs_train=32, options=dict(SMALL, data_dir=str(root), **options))


def child_runs(grid):
    runs = tracking.find_runs(f"tags.grid = '{grid}'")
    return runs[runs["tags.archlab.role"] == "child"]


def steps(run_id, key="train_loss"):
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_cnn_experiment_results_file_and_run_agree(mlflow_store, fake_cifar10, tmp_path):
    path = cnn_experiment("exp1_1", out_dir=str(tmp_path / "results"), seed=7, bs_train=32, batches=2, epochs=3,
                          early_stopping=None, filters_per_layer=[16], layers_per_block=2, pool_every=1,
                          hidden_dims=[32], data_dir=str(fake_cifar10), **SMALL)
    assert Path(path).name == "exp1_1_L2_K16.json"  # run_name 'exp1_1' + suffix, never doubled
    payload = json.loads(Path(path).read_text())
    assert set(payload["config"]) == PROGRAMME_CONFIG_KEYS and payload["config"]["run_name"] == "exp1_1"
    assert payload["config"]["device"] is None  # captured before device autodetection
    assert set(payload["results"]) == {"num_epochs", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert re.match(r"exp\d_(\d_)?(.*)\.json", Path(path).name).group(2) == "L2_K16"  # programme's legend
    cfg, fit = load_experiment(path)
    assert fit.num_epochs == 3 == len(fit.train_acc) and cfg["kw"]["n_train"] == 96

    run = child_runs_any("exp1_1_L2_K16")
    assert run["status"] == "FINISHED" and run["params.lr"] == "0.001" and run["params.filters_per_layer"] == "[16]"
    assert run["params.n_train"] == "96" and run["params.batches"] == "2"
    hist = sorted(MlflowClient().get_metric_history(run.run_id, "valid_acc"), key=lambda m: m.step)
    assert [m.step for m in hist] == [1, 2, 3] and [m.value for m in hist] == pytest.approx(fit.test_acc)
    for key in ("lr", "epoch_time_s", "train_images_per_s"):
        assert steps(run.run_id, key) == [1, 2, 3]
    assert run["metrics.test_acc"] == pytest.approx(payload["final_test"]["test_acc"])
    files = [f.path for f in MlflowClient().list_artifacts(run.run_id, "results")]
    assert files == ["results/exp1_1_L2_K16.json"]
    assert [f.path for f in MlflowClient().list_artifacts(run.run_id, "checkpoints")]  # no model: weights here
    assert not list((tmp_path / "checkpoints").glob("*"))  # FINISHED: no training state, no local copy
    # batches limits the training images per epoch (2 batches of 32), not the batch size
    assert all(m["train_images_per_s"] > 0 for m in payload["epochs"])


def child_runs_any(name):
    runs = tracking.find_runs(f"attributes.run_name = '{name}'")
    assert len(runs) == 1, runs
    return runs.iloc[0]


def test_rerun_skips_finished_configuration(mlflow_store, fake_cifar10, tmp_path, capsys):
    kwargs = dict(out_dir=str(tmp_path), seed=1, bs_train=32, epochs=1, filters_per_layer=[8], layers_per_block=1,
                  pool_every=1, hidden_dims=[16], data_dir=str(fake_cifar10), **SMALL)
    assert cnn_experiment("exp1_2", **kwargs) is not None
    assert cnn_experiment("exp1_2", **kwargs) is None
    assert "Skipping exp1_2_L1_K8: already finished" in capsys.readouterr().out
    assert len(tracking.find_runs("attributes.run_name = 'exp1_2_L1_K8'")) == 1
    assert cnn_experiment("exp1_2", restart=True, **kwargs) is not None  # --restart trains again
    assert len(tracking.find_runs("attributes.run_name = 'exp1_2_L1_K8'")) == 2


def test_grid_names_and_pool_every_follow_the_programme():
    names = {g: [f"{r['run_name']}_L{r['layers_per_block']}_K{'-'.join(map(str, r['filters_per_layer']))}"
                 for r in expand_grid(load_grid_config(g))] for g in GRIDS}
    assert len(names["exp1_1"]) == 8 and len(names["exp1_2"]) == 12 and len(names["exp1_3"]) == 4
    assert len(names["exp1_4"]) == 6 and len(names["exp2"]) == 4 and names["test_run"] == ["test_run_L1_K32-64"]
    assert names["exp1_1"][0] == "exp1_1_L2_K32" and names["exp1_3"][0] == "exp1_3_L1_K64-128-256"
    assert names["exp2"][0] == "exp2_L3_K32-64-128" and "exp1_4_L2_K64-128-256" in names["exp1_4"]
    pools = {f"{r['run_name']}_L{r['layers_per_block']}_K{'-'.join(map(str, r['filters_per_layer']))}": r["pool_every"]
             for g in ("exp1_1", "exp1_3", "exp1_4") for r in expand_grid(load_grid_config(g))}
    assert pools["exp1_1_L16_K32"] == 3 and pools["exp1_1_L8_K64"] == 2 and pools["exp1_3_L4_K64-128-256"] == 3
    assert pools["exp1_4_L32_K32"] == 6 and pools["exp1_4_L8_K64-128-256"] == 5  # the reference's table



def test_every_shipped_grid_passes_its_own_checks_at_its_defaults(fake_cifar10):
    """What `reproduce` and `mlflow run . -e <grid>` check before training: a shipped config that
    fails them (test_run's 500 images per epoch against the 30000 floor did) refuses the whole programme."""
    for grid in GRIDS:
        for kwargs in expand_grid(load_grid_config(grid), dict(options=dict(data_dir=fake_cifar10))):
            cnn_experiment(**{**kwargs, "dry_run": True})  # raises on the first failed check


@pytest.mark.parametrize("grid", ["test_run", "exp1_1", "exp1_2", "exp1_4", "exp2"])
def test_every_grid_runs_end_to_end(mlflow_store, fake_cifar10, tmp_path, grid):
    overrides = small_overrides(fake_cifar10, out_dir=str(tmp_path / "results"))
    overrides["out_dir"] = overrides["options"].pop("out_dir")
    if grid == "exp2":  # keep the CPU test small: the real config is 128-512 channels wide
        overrides["options"]["model_kwargs"] = {"width_mult": 0.25, "tta": "mirror_translate", "stem": "whiten", "dirac_init": True}
    if grid == "test_run":
        overrides.pop("bs_train")
    outcome = run_grid(grid, overrides)
    expected = [f"{r['run_name']}_L{r['layers_per_block']}_K{'-'.join(map(str, r['filters_per_layer']))}"
                for r in expand_grid(load_grid_config(grid))]
    assert sorted(outcome["written"]) == sorted(expected)
    children = child_runs(grid)
    assert sorted(children["tags.mlflow.runName"]) == sorted(expected)
    parent = tracking.find_runs(f"tags.grid = '{grid}' and tags.`archlab.role` = 'parent'")
    assert len(parent) == 1 and set(children["tags.mlflow.parentRunId"]) == {parent.run_id.iloc[0]}
    assert children["status"].eq("FINISHED").all()
    for _, row in children.iterrows():
        assert steps(row.run_id) == list(range(1, int(row["params.epochs"]) + 1))
    assert sorted(p.stem for p in (tmp_path / "results").glob("*.json")) == sorted(expected)


def test_mlflow_run_entry_point_exp1_3(mlflow_store, fake_cifar10, tmp_path):
    """`mlflow run . -e exp1_3 --env-manager local` with the MLproject parameters."""
    params = dict(epochs=1, bs_train=32, n_train=96, n_valid=32, data_dir=str(fake_cifar10), allow_small="true",
                  device="cpu", out_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "ckpt"))
    cmd = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "exp1_3", "--env-manager", "local",
           "--experiment-name", "cifar-e2e"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(mlflow_store), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["cifar-e2e"])
    children = runs[runs["tags.archlab.role"] == "child"]
    assert sorted(children["tags.mlflow.runName"]) == [f"exp1_3_L{L}_K64-128-256" for L in (1, 2, 3, 4)]
    assert (tmp_path / "results" / "exp1_3_L1_K64-128-256.json").exists()
    # finished runs keep no training state or weights copy; only the per-configuration lock files (.locks/)
    assert not [p for p in (tmp_path / "ckpt").glob("*") if p.name != ".locks"]


KILL_SCRIPT = """
import sys, mlflow
sys.path.insert(0, {root!r})
mlflow.set_tracking_uri({uri!r})
from training.grids.expand import run_grid
run_grid({config!r}, {overrides!r})
"""


def test_sigkill_mid_grid_then_rerun_finishes_each_configuration_once(mlflow_store, tmp_path):
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=200, n_test=100)
    config = tmp_path / "kill_grid.yaml"
    config.write_text(yaml.safe_dump(dict(base="cifar_plain", run_name="exp1_1", model_type="cnn",
                                          grid=[dict(K=[16], L=[1, 2, 3])], early_stopping=None)))
    epochs = 4
    overrides = dict(epochs=epochs, bs_train=32, options=dict(n_train=800, n_valid=100, allow_small=True,
                                                              log_model=False, data_dir=str(root)))
    script = KILL_SCRIPT.format(root=str(PROJECT_ROOT), uri=mlflow_store, config=str(config), overrides=overrides)
    create_store(mlflow_store)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(mlflow_store),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_in = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            runs = tracking.find_runs("attributes.run_name = 'exp1_1_L2_K16'")
            if len(runs) and 1 <= len(steps(runs.run_id.iloc[0])) < epochs:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_in = runs.run_id.iloc[0]
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in is not None, "the grid finished before it could be killed mid-configuration"
    assert mlflow.get_run(killed_in).info.status == "RUNNING"  # a SIGKILL leaves no chance to end the run

    rerun = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(mlflow_store),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Skipping exp1_1_L1_K16: already finished" in rerun.stdout
    assert f"Resuming MLflow run {killed_in}" in rerun.stdout
    runs = tracking.find_runs(f"tags.grid = '{config}' and tags.`archlab.role` = 'child'")
    assert sorted(runs["tags.mlflow.runName"]) == ["exp1_1_L1_K16", "exp1_1_L2_K16", "exp1_1_L3_K16"]  # once each
    assert runs["status"].eq("FINISHED").all()
    for run_id in runs.run_id:
        for key in ("train_loss", "valid_acc", "lr", "epoch_time_s", "best_valid_acc"):
            assert steps(run_id, key) == list(range(1, epochs + 1)), (run_id, key)  # contiguous, no duplicates


@pytest.mark.parametrize("args,message", [
    (["-K", "32", "-L", "16", "-P", "1", "-H", "10"], "smallest valid pool_every for these channels is 3"),
    (["-K", "32", "-L", "2", "-P", "1", "-H", "10", "-M", "vgg"], "invalid choice: 'vgg'"),
    (["-K", "-L", "2", "-P", "1", "-H", "10"], "expected at least one argument"),
    (["-K", "32", "-L", "2", "-P", "1", "-H", "10", "--lr", "-0.1"], "lr must be > 0, got -0.1"),
    (["-K", "32", "-L", "2", "-P", "1", "-H", "10", "--lr", "abc"], "invalid float value: 'abc'"),
    (["-K", "0", "-L", "2", "-P", "1", "-H", "10"], "filters_per_layer (K) must be a non-empty list of positive ints"),
    (["-K", "32", "-L", "0", "-P", "1", "-H", "10"], "layers_per_block must be an integer >= 1, got 0"),
    (["-K", "32", "-L", "2", "-P", "1", "-H", "10", "--n-train", "100"], "too few training images per epoch"),
    (["-K", "32", "-L", "2", "-P", "1", "-H", "10", "--batches", "100"], "12800 training images per epoch"),
    (["-K", "32", "-L", "2", "-P", "1", "-H", "10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
])
def test_run_exp_bad_input_is_clear_and_logs_nothing(mlflow_store, fake_cifar10, tmp_path, args, message):
    if "--data-dir" not in args:
        args = args + ["--data-dir", str(fake_cifar10)]
    result = CliRunner().invoke(cli, ["run-exp", "-n", "bad"] + args)
    text = result.output + (str(result.exception) if result.exception else "")
    assert result.exit_code != 0 and message in text, text
    assert len(tracking.find_runs("")) == 0 and not (tmp_path / "results").exists()


def test_corrupt_batch_file_is_a_clear_error_before_training(mlflow_store, tmp_path):
    root = write_fake_cifar10(tmp_path / "data", n_train_per_batch=50, n_test=50)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    result = CliRunner().invoke(cli, ["run-exp", "-n", "exp1_1", "-K", "8", "-L", "1", "-P", "1", "-H", "8",
                                      "--data-dir", str(root), "--allow-small", "--n-train", "100"])
    assert result.exit_code != 0 and "data_batch_3" in result.output, result.output
    assert len(tracking.find_runs("")) == 0


def test_run_exp_cli_programme_options(mlflow_store, fake_cifar10, tmp_path):
    result = CliRunner().invoke(cli, ["run-exp", "-n", "exp1_2", "-K", "8", "16", "-L", "1", "-P", "1", "-H", "16",
                                      "--epochs", "1", "--batches", "2", "--bs-train", "16", "--seed", "3",
                                      "--out-dir", str(tmp_path / "out"), "--data-dir", str(fake_cifar10),
                                      "--allow-small", "--n-train", "64", "--n-valid", "32"])
    assert result.exit_code == 0, result.output
    assert "*** Output file" in result.output and (tmp_path / "out" / "exp1_2_L1_K8-16.json").exists()
    help_text = CliRunner().invoke(cli, ["run-exp", "--help"]).output
    for opt in ("--run-name", "-K", "-L", "-P", "-H", "-M", "--lr", "--reg", "--early-stopping", "--bs-test"):
        assert opt in help_text


def test_grid_with_missing_data_fails_before_any_run(mlflow_store, tmp_path):
    """The dry-run check locates the data for every configuration before the parent run opens."""
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found: no cifar-10-batches-py folder"):
        run_grid("exp1_3", small_overrides(tmp_path / "nowhere"))
    assert len(tracking.find_runs("")) == 0 and not (tmp_path / "checkpoints").exists()


def test_diverging_configuration_fails_tagged_and_the_grid_goes_on(mlflow_store, fake_cifar10, tmp_path):
    """NaN/inf loss: each diverging run ends FAILED with the reason as tags, the grid goes on to
    the next configuration, and a rerun does not retry the diverged ones blindly."""
    config = tmp_path / "nan_grid.yaml"
    config.write_text(yaml.safe_dump(dict(base="cifar_plain", run_name="exp1_1", model_type="cnn", lr=1e12,
                                          grid=[dict(K=[8], L=[1, 2])], early_stopping=None)))
    overrides = small_overrides(fake_cifar10, epochs=2, optimizer="sgd", momentum=0.0)
    outcome = run_grid(str(config), overrides)
    assert sorted(outcome["diverged"]) == ["exp1_1_L1_K8", "exp1_1_L2_K8"]
    runs = child_runs(str(config))
    assert len(runs) == 2 and runs["status"].eq("FAILED").all()
    assert runs["tags.archlab.diverged"].eq("true").all()
    assert runs["tags.archlab.error"].str.contains("training loss became").all()
    again = run_grid(str(config), overrides)
    assert sorted(again["skipped"]) == ["exp1_1_L1_K8", "exp1_1_L2_K8"] and not again["written"]


def test_a_rerun_continues_only_a_dead_grids_parent_of_the_same_config(mlflow_store):
    from training.grids.expand import grid_parent_run

    cfg = load_grid_config("test_run")
    runs = expand_grid(cfg)
    with pytest.raises(RuntimeError):
        with grid_parent_run("test_run", cfg, runs) as dead:
            raise RuntimeError("a worker process died")
    assert mlflow.get_run(dead.info.run_id).info.status == "FAILED"
    with grid_parent_run("test_run", cfg, runs[:1]) as rerun:  # like --only: fewer configurations, same grid
        pass
    assert rerun.info.run_id == dead.info.run_id
    run = mlflow.get_run(dead.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["archlab.n_configurations"] == "1"
    assert "a worker process died" in run.data.tags["archlab.previous_error"] and "archlab.error" not in run.data.tags

    with grid_parent_run("test_run", cfg, runs) as after_finished:  # a finished grid is not reopened
        pass
    assert after_finished.info.run_id != dead.info.run_id
    with pytest.raises(RuntimeError):
        with grid_parent_run("test_run", cfg, runs) as dead_again:
            raise RuntimeError("stopped")
    with grid_parent_run("test_run", {**cfg, "grid": [{"K": [[16]], "L": [1]}]}, runs) as changed:
        pass  # the config changed since the grid died: its own parent
    assert changed.info.run_id not in (dead_again.info.run_id, after_finished.info.run_id, dead.info.run_id)
    assert mlflow.get_run(dead_again.info.run_id).info.status == "FAILED"


def test_bench_compile_trains_the_same_and_keeps_plain_checkpoint_keys(fake_cifar10, tmp_path):
    """compile is a benchmark experiment now (bench.recipes; nn.Module.compile, real inductor on
    CPU): same losses and accuracy as eager, and the checkpoint loads into an uncompiled model."""
    import torch

    from bench.recipes import train_untracked

    results = {}
    for compiled in (False, True):
        path = train_untracked(dict(run_name="exp1_1", out_dir=str(tmp_path / f"r{compiled}"), seed=1, device="cpu",
                                    bs_train=32, epochs=2, batches=None, early_stopping=None, filters_per_layer=[8],
                                    layers_per_block=1, pool_every=1, hidden_dims=[16], lr=1e-3, reg=0.0,
                                    n_train=400, n_valid=100, allow_small=True, log_model=False,
                                    data_dir=str(fake_cifar10), checkpoint_dir=str(tmp_path / f"c{compiled}"),
                                    print_every=0), compile=compiled)
        results[compiled] = json.loads(Path(path).read_text())
    eager, comp = results[False], results[True]
    assert comp["results"]["train_loss"] == pytest.approx(eager["results"]["train_loss"], rel=1e-4)
    assert comp["final_test"]["test_acc"] == pytest.approx(eager["final_test"]["test_acc"], abs=0.51)
    (checkpoint,) = (tmp_path / "cTrue").glob("*.pt")
    keys = list(torch.load(checkpoint, weights_only=True))
    assert keys and not any("_orig_mod" in k for k in keys)
    with pytest.raises(ValueError, match=r"compile must be one of \[False, True, 'reduce-overhead', 'max-autotune'\], "
                                         r"got 'yes'"):
        train_untracked(dict(run_name="exp1_1"), compile="yes")
    with pytest.raises(ValueError, match=r"unknown cnn_experiment options \['compile'\]"):
        cnn_experiment("exp1_1", compile=True, tracking=False)  # not a core option any more


def test_bench_test_each_epoch_hook_measures_without_changing_training(mlflow_store, fake_cifar10, tmp_path):
    """The per-epoch test (time-to-accuracy benchmarks) through run_recipe's epoch hook: the test
    set after every epoch, with the final test's TTA; training is untouched, the best epoch's
    figure is the final test's, and the run logs it as a metric."""
    from bench.recipes import test_each_epoch
    from training.cnn.experiment import decide_policy, plan_run, run_recipe

    runs = {}
    for each in (False, True):
        recipe, options = plan_run(dict(
            run_name="exp2", out_dir=str(tmp_path / f"r{each}"), seed=3, device="cpu", bs_train=50, epochs=3,
            batches=None, early_stopping=None, filters_per_layer=[8, 16], layers_per_block=1, pool_every=1,
            hidden_dims=[], model_type="ycn", lr=2e-3, reg=0.0, n_train=400, n_valid=100, allow_small=True,
            log_model=False, data_dir=str(fake_cifar10), checkpoint_dir=str(tmp_path / f"c{each}"),
            model_kwargs={"tta": "mirror"}, restart=True, print_every=0))
        path = run_recipe(recipe, decide_policy(recipe, options), options, on_epoch_end=test_each_epoch if each else None)
        runs[each] = json.loads(Path(path).read_text())
    plain, each = runs[False], runs[True]
    assert each["results"]["train_loss"] == plain["results"]["train_loss"]
    assert each["results"]["test_acc"] == plain["results"]["test_acc"]  # validation curve (no TTA)
    per_epoch = [e["epoch_test_acc"] for e in each["epochs"]]
    assert len(per_epoch) == 3 and "epoch_test_acc" not in plain["epochs"][0]
    assert per_epoch[each["final_test"]["best_epoch"] - 1] == each["final_test"]["test_acc"]
    logged = MlflowClient().get_metric_history(each["mlflow_run_id"], "epoch_test_acc")
    assert [m.step for m in logged] == [1, 2, 3] and [m.value for m in logged] == pytest.approx(per_epoch)


def test_parallel_grids_hand_out_the_longest_configurations_first():
    """Longest-first keeps 4 workers busy to the end (a rough cost, layers x widest K): on the H200,
    exp1_4_L8_K64-128-256 trained longest (98 s), exp1_2_L8_K256 (65 s) and exp1_2_L2_K32 (8 s)."""
    from training.grids.parallel import heaviest_first

    order = [experiment_name_of(r) for r in heaviest_first(expand_grid(load_grid_config("exp1_4")))]
    assert order[0] == "exp1_4_L8_K64-128-256"
    exp1_2 = [experiment_name_of(r) for r in heaviest_first(expand_grid(load_grid_config("exp1_2")))]
    assert exp1_2[0] == "exp1_2_L8_K256" and exp1_2[-1] == "exp1_2_L2_K32"
    assert sorted(order) == sorted(experiment_name_of(r) for r in expand_grid(load_grid_config("exp1_4")))
