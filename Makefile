# The two commands: `make demo` runs the main job on the embedded default,
# `make test` runs ruff and the test suite. Both create/refresh .venv with plain pip.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLARLAB_DATA ?= $(abspath ../shared/datasets)
export CLARLAB_DATA
# Two lanes (pytest-xdist; tests/conftest.py groups the tests that share a module fixture
# and puts the Ray tests first, kept in that order), and the slowest tests in every run
# (and in CI's output), to see what grew.
PYTEST_ARGS ?= -n 2 --dist loadgroup --no-loadscope-reorder --durations=20

.PHONY: demo test install lint bench ui clean mlflow-server bench-gpu

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,server]'
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

# The MLflow tracking server over the demo's store, artifacts served through it, on this
# machine only: `make mlflow-server HOST=<address> PORT=<port> STORE=<uri>` to change it
# (python -m core.serve mlflow --help says what a wider bind exposes). HOST and PORT come
# from the command line only: shells and hosting platforms export variables of those names
# for other purposes, and a server must not bind wider because of one of them.
ifneq ($(filter environment%,$(origin HOST)),)
HOST := 127.0.0.1
endif
ifneq ($(filter environment%,$(origin PORT)),)
PORT := 5000
endif
HOST ?= 127.0.0.1
PORT ?= 5000
STORE ?= sqlite:///results/mlflow.db
ARTIFACTS ?= results/mlflow-artifacts

# AUTH=1: MLflow's basic-auth app (the `server` extra, installed with the others;
# MLFLOW_FLASK_SERVER_SECRET_KEY and, on the first start, MLFLOW_AUTH_ADMIN_PASSWORD from
# your environment).
AUTH_FLAG := $(if $(filter 1 true yes,$(AUTH)),--auth,)

mlflow-server: $(STAMP)
	$(BIN)/python -m core.serve mlflow --host $(HOST) --port $(PORT) \
		--backend-store-uri '$(STORE)' --artifacts-destination '$(ARTIFACTS)' $(AUTH_FLAG)

# The GPU checks (batched augmentations vs per-clip librosa loaders, bf16 training steps,
# the cache's CUDA path); prints {"cuda": false, ...} and exits 0 without CUDA.
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu.py

clean:
	rm -rf $(VENV) results .pytest_cache
