"""The project's own files agree with each other: dependency lists, MLproject entry points and
the CLIs they call, README commands and CI."""
import re
import shlex

import yaml
from click.testing import CliRunner
from mlflow.projects._project_spec import load_project

from conftest import PROJECT_ROOT


def requirement_names(lines):
    return sorted(l.strip().strip('"') for l in lines if l.strip() and not l.strip().startswith("#"))


def test_requirements_python_env_and_conda_list_the_same_dependencies():
    reqs = requirement_names((PROJECT_ROOT / "requirements.txt").read_text().splitlines())
    python_env = yaml.safe_load((PROJECT_ROOT / "python_env.yaml").read_text())
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    conda_pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert requirement_names(python_env["dependencies"]) == reqs == requirement_names(conda_pip)
    for pkg in ("torch", "torchvision", "mlflow", "click", "matplotlib", "scikit-learn", "pandas", "tqdm"):
        assert any(r.startswith(pkg) for r in reqs), pkg


def test_every_entry_point_command_parses_with_its_defaults():
    """Each MLproject command, with default parameters, is accepted by the CLI it calls (--help
    appended, so nothing runs): a renamed option would break `mlflow run` and fails here."""
    from entrypoints import cifar, part1, reproduce

    project = load_project(str(PROJECT_ROOT))
    names = set(project._entry_points)
    assert {"main", "first_classifier", "mlp_grid", "test_run", "exp1_1", "exp1_2", "exp1_3", "exp1_4",
            "exp2", "grid", "config", "report", "reproduce"} <= names
    for name, entry in project._entry_points.items():
        required = {"grid_name": "test_run"} if name == "grid" else {}  # its one parameter without default
        command = entry.compute_command(required, storage_dir=None)
        argv = shlex.split(command)  # as the shell splits it: an empty default ('') is one empty argument
        assert argv[:2] == ["python", "-m"], command
        module = {"entrypoints.part1": part1.cli, "entrypoints.cifar": cifar.cli,
                  "entrypoints.reproduce": reproduce.cli}.get(argv[2])
        if module is None:
            continue  # analysis.report has its own tests
        result = CliRunner().invoke(module, argv[3:] + ["--help"])
        assert result.exit_code == 0, (name, command, result.output)


def test_grid_entry_points_are_the_grid_command_with_the_name_preset():
    """MLproject writes the CIFAR grid parameters and command once (YAML anchors and merge keys,
    which MLflow's loader resolves); each grid's entry point presets grid_name to its own name,
    one of the names the grid CLI accepts."""
    from entrypoints import cifar

    entries = load_project(str(PROJECT_ROOT))._entry_points
    generic = entries["grid"]
    assert "grid_name" in generic.parameters and generic.parameters["grid_name"].default is None
    accepted = set(next(p for p in cifar.cli.commands["grid"].params if p.name == "name").type.choices)
    grids = ("test_run", "exp1_1", "exp1_2", "exp1_3", "exp1_4", "exp2")
    assert set(grids) == accepted
    for name in grids:
        entry = entries[name]
        assert entry.command == generic.command
        assert entry.parameters.keys() == generic.parameters.keys(), name
        assert entry.parameters["grid_name"].default == name
        for key, param in generic.parameters.items():
            if key != "grid_name":
                assert (entry.parameters[key].type, entry.parameters[key].default) == (param.type, param.default)
        assert entry.compute_command({}, storage_dir=None).startswith(f"python -m entrypoints.cifar grid {name} ")
    assert not any("compile" in entry.parameters for entry in entries.values())


def test_ci_runs_the_readme_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make main" in readme
    assert re.search(r"^make test\b", ci, re.M)


def test_readme_entry_point_table_matches_mlproject():
    """The README's entry-point table names every MLproject entry point (`a` .. `b` spans a
    numbered run of them), and every `-e NAME` the README shows exists."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    entries = set(load_project(str(PROJECT_ROOT))._entry_points)
    section = readme.split("## Entry points", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for first_cell in re.findall(r"^\| (.+?) \|", section, re.M):
        names = re.findall(r"`(\w+)`", first_cell)
        listed |= set(names)
        if ".." in first_cell and len(names) == 2:
            (stem, lo), (_, hi) = (n.rsplit("_", 1) for n in names)
            listed |= {f"{stem}_{i}" for i in range(int(lo), int(hi) + 1)}
    assert listed == entries
    assert set(re.findall(r"mlflow run \. -e (\w+)", readme)) <= entries


def test_generated_files_are_ignored():
    ignored = (PROJECT_ROOT / ".gitignore").read_text().split()
    for pattern in ("mlruns/", "mlflow.db", "results/", "checkpoints/", "*.pt", "cifar-10-batches-py/"):
        assert pattern in ignored


def test_programme_hp_readers_read_the_configs():
    """part1_arch_hp / part1_optim_hp / part2_optim_hp keep the programme's keys, read from configs/."""
    from torch import nn

    from training.config import part1_arch_hp, part1_optim_hp, part2_optim_hp

    assert set(part1_arch_hp()) == {"n_layers", "hidden_dims", "activation", "out_activation"}
    for hp in (part1_optim_hp(), part2_optim_hp()):
        assert set(hp) == {"lr", "weight_decay", "momentum", "loss_fn"} and isinstance(hp["loss_fn"], nn.Module)
    assert part2_optim_hp()["lr"] == 0.001
