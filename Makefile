# backprop-bench: the two commands that matter on a fresh machine are
#   make run    set up (venv + pinned install) and run the default study (dvc repro)
#   make test   set up and run the whole test suite
# Everything else is a convenience.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# dvc.yaml's stage commands call `python`: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run report chromium study-full lint format test test-fast bench bench-full bench-scaling gpu-check mlflow-ui clean services-up services-down services-status mlflow-server

# Installs once per change of pyproject.toml or constraints.txt. constraints.txt pins
# this machine's install (torch 2.13.0 CPU build, which pip takes from local disk);
# pyproject.toml keeps open ranges for users elsewhere.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,cluster]'
	touch $(STAMP)

setup: $(STAMP)

# dvc repro, with the study stages and the stability map side by side, one stage per usable
# CPU (src/backprop_bench/repro.py). The stages call `python -m ...`: the venv's python goes first on PATH.
run: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m backprop_bench.repro
	$(PY) -m backprop_bench.compare --print-only

# The report as one page (reports/index.html, written by the compare stage): print its path,
# open it when a browser is at hand ($$BROWSER, else xdg-open); never fails for want of one.
report:
	@test -f reports/index.html || { echo "reports/index.html: not found: run make run first" >&2; exit 1; }
	@echo "$(abspath reports/index.html)"
	@if [ -n "$$BROWSER" ]; then $$BROWSER "$(abspath reports/index.html)" >/dev/null 2>&1 & \
	elif command -v xdg-open >/dev/null && [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
	  xdg-open "$(abspath reports/index.html)" >/dev/null 2>&1 || true; fi

# The full-size study: Fashion-MNIST (60,000 train + 10,000 test images, offline, from
# Debian's dataset-fashion-mnist) through the same pipeline, as one DVC experiment:
# 15 epochs, 3 seeds, every framework x strategy x mode, Keras on TensorFlow, JAX and torch
# (about an hour on 2 cores).
FULL := -S data.source=file -S data.dataset=fashion_mnist -S data.file.dir=/usr/share/datasets/fashion-mnist -S data.subset=null \
        -S train.epochs=15 -S stability.subset=6000 -S 'study.keras_on=[jax,torch]'
study-full: setup
	scripts/fashion_mnist.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc exp run -n fashion-full $(FULL)
	$(PY) -m backprop_bench.compare --print-only

# ruff: lint + format check over the whole tree (rules: pyproject.toml [tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The README's test command: lint first (seconds), then the whole suite on two workers
# (pytest-xdist; the team-stack modules keep to one of them: tests/conftest.py). Two, not
# one per core: every worker holds TensorFlow, torch and mlflow (about 1.5 GB).
WORKERS ?= 2
test: setup lint chromium
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup

test-fast: setup chromium
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup -m "not slow"

bench: setup
	$(PY) -m backprop_bench.bench

bench-full: setup
	$(PY) -m backprop_bench.bench --cells full

# samples/s against batch size (16-1024) and threads (all cores, then 1) for each framework's plain and
# fastest mode: reports/bench_scaling.{json,md,png} (docs/benchmark.md, section Scaling).
bench-scaling: setup
	$(PY) -m backprop_bench.bench --scaling

# Debian's chromium, which tests/test_html_report.py drives headless: installed as root when missing.
chromium:
	scripts/chromium.sh

# A few minutes' check of a GPU machine into reports/gpu-check/: what each framework sees,
# the GPU tests, a short study and the bench's cells on cuda (docs/benchmark.md, "The GPU check").
# Exit 2: no framework here sees a CUDA GPU.
gpu-check: setup
	BB_PYTHON=$(abspath $(PY)) scripts/gpu_check.sh reports/gpu-check

# MLflow 3.17 opens an experiment in its GenAI view: the Runs table (study-summary on top) is under
# "Model training", or the experiment's URL with ?workflowType=machine_learning.
MLFLOW_PORT ?= 5000
mlflow-ui: setup
	@$(PY) -m backprop_bench.tracking url --base http://127.0.0.1:$(MLFLOW_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# reports/summary.json is committed (the DVC metric): everything else in reports/ goes
clean:
	rm -rf runs multirun outputs mlruns mlflow.db
	find reports -mindepth 1 ! -name summary.json -delete 2>/dev/null || true

# The one-machine stack for cluster sweeps (docs/cluster.md): munge, MariaDB + slurmdbd,
# slurmctld + slurmd (one-node SLURM), PostgreSQL and an MLflow server on it, all on
# 127.0.0.1, MLflow with basic auth, state in the root-owned private folder
# /var/lib/backprop-bench-services ($$BB_SERVICES_DIR). As root it installs the Debian packages
# it lacks. Then, as root, in a shell: source /var/lib/backprop-bench-services/env
services-up: setup
	BB_PYTHON=$(abspath $(PY)) scripts/services.sh up

services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

# A shared MLflow server, in the foreground, artifacts served over HTTP: a sqlite store under
# mlflow-server/ unless BB_MLFLOW_BACKEND_STORE_URI names a database (postgresql+psycopg2://...);
# loopback only unless BB_MLFLOW_AUTH_CONFIG turns on MLflow's basic auth.
mlflow-server: setup
	BB_PYTHON=$(abspath $(PY)) scripts/mlflow_server.sh
