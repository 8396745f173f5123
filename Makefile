# The two commands of the README: `make demo` and `make test`. Each sets up .venv on its own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: the CPU wheel on this machine kind; any looser spec pulls CUDA builds.
TORCH := torch==2.13.0

.PHONY: demo test lint docs serve-docs docs-check bench gpu-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,docs,plot,tensorboard,metrics,data,notebook,mlflow,wandb]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m fluxpy demo

test: $(VENV)/.installed
	$(BIN)/ruff check fluxpy tests benchmarks examples docs
	$(BIN)/python -m pytest -q
	$(MAKE) docs

lint: $(VENV)/.installed
	$(BIN)/ruff check fluxpy tests benchmarks examples docs

# NO_MKDOCS_2_WARNING: mkdocs-material prints an end-of-life banner on every build without it.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

serve-docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Builds the site and checks every page in headless Chromium (from the system's packages):
# diagrams drawn without a network, nothing cut off; screenshots in build/site-shots/.
docs-check: $(VENV)/.installed
	$(BIN)/python docs/check_site.py

bench: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

# On a CUDA machine: host syncs per step, ConvNet overhead, DDP over NCCL (benchmarks/gpu_check.py).
# Uses the project's .venv when there is one, else $(PY) with fluxpy's dependencies installed.
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache
