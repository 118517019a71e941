# The two README commands:  `make main` (set up + run Part 1)  and  `make test` (set up + tests).
# Everything installs into $(VENV); the project itself is not installed (its packages `models`,
# `training`, ... run from this folder, as MLflow Projects do).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q

.PHONY: setup main test bench report clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

main: setup
	$(PY) -m entrypoints.part1 main

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

report: setup
	$(PY) -m analysis.report

clean-runs:
	rm -rf mlruns mlartifacts mlflow.db results checkpoints reports
