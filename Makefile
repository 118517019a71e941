# The two README commands:  `make main` (set up + run Part 1)  and  `make test` (set up + tests).
# Everything installs into $(VENV); the project itself is not installed (its packages `models`,
# `training`, ... run from this folder, as MLflow Projects do).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q
# Test processes (pytest-xdist): the suite mostly waits on `mlflow run`, servers and killed process
# trees: on two cores two processes (work-stealing) took 14-16 min where one took 20-22. 0: one process.
TEST_WORKERS ?= 2

.PHONY: setup main smoke test bench report clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

main: setup
	$(PY) -m entrypoints.part1 main

# The whole programme at smoke size (configs/smoke.yaml) in its own store, smoke.db: every run,
# every answer, on a CPU in minutes. CIFAR_DIR: the folder holding cifar-10-batches-py (downloaded
# there when missing and the machine is online).
CIFAR_DIR ?= data
smoke: setup
	$(PY) -m entrypoints.reproduce --profile smoke --data-dir $(CIFAR_DIR) --download --tracking-uri sqlite:///smoke.db

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

report: setup
	$(PY) -m analysis.report

clean-runs:
	rm -rf mlruns mlartifacts mlflow.db smoke.db results checkpoints reports
