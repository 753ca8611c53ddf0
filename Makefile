# The two commands: `make run` (the quickstart) and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch by default: a bare `torch` requirement makes pip fetch a multi-GB CUDA build.
# Override for a GPU machine, e.g. `make setup TORCH=torch==2.13.0` from the CUDA index.
TORCH ?= torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: run test setup default-config

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/azr run --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/pytest

default-config: $(STAMP)
	{ echo "# azr default run config: every key, its default and what it means."; \
	  echo "# Regenerate with: make default-config"; \
	  $(BIN)/azr config show --comments; } > configs/default.yaml
