# chunkd: `make run` (daemon + FedAvg demo), `make test`, `make bench`, `make torture`,
# `make integration` (a real Flower federation beside chunkd).
# Everything runs from a local virtual environment that the first target creates.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned for installs here: the CPU wheel of this version is what CI and the
# benchmarks are measured with (the package itself accepts torch>=2.2).
TORCH  ?= torch==2.13.0

.PHONY: setup run test campaign lint bench torture integration clean install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/python examples/fedavg_demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check chunkd tests benchmarks examples
	PATH="$(abspath $(BIN)):$$PATH" bash systemd/verify.sh

# Everything but the long runs: the reliability campaigns (`make campaign` runs their short forms,
# `make torture` their full size), and the framework and scale runs of `make integration`.
# About 9 minutes on 2 cores (measured: 8 min 39 s to 9 min 44 s of tests, plus lint).
test: lint
	$(BIN)/python -m pytest -q -m "not campaign and not integration and not scale" --durations=10

campaign: setup
	$(BIN)/python -m pytest -q -m campaign tests/reliability

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks

torture: setup
	$(BIN)/python -m pytest -q tests/reliability --torture

# The long runs CI also makes: a real federation (Flower SuperLink + 3 SuperNodes, 5 FedAvg
# rounds) and a Flower simulation of 100 clients beside a real chunkd daemon (marker
# `integration`), and the scale tests (marker `scale`: 120 to 300 clients on one daemon, two
# daemons sharing a real S3 server, a real S3 server killed, full or frozen under upload, the
# largest pickle budgets): about 8 minutes on 2 cores, installing flwr included.
integration: setup
	$(BIN)/pip install --quiet -e '.[integration]'
	$(BIN)/python -m pytest -q -m "integration or scale" --durations=10 tests

# System files (unit, sysusers, tmpfiles, config, docs); the package itself: pip install.
PREFIX  ?= /usr/local
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" sh systemd/install.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
