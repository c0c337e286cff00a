# The two commands: `make demo` runs the main job on the embedded default,
# `make test` runs ruff and the test suite. Both create/refresh .venv with plain pip.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLARLAB_DATA ?= $(abspath ../shared/datasets)
export CLARLAB_DATA
export RAY_AUTH_MODE ?= disabled
PYTEST_ARGS ?=

.PHONY: demo test install lint bench ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ablations.run_aug_matrix --preset quick

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///results/mlflow.db

clean:
	rm -rf $(VENV) results .pytest_cache
