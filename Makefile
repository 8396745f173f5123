# The two commands of the README: `make demo` and `make test`. Each sets up .venv on its own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: the CPU wheel on this machine kind; any looser spec pulls CUDA builds.
TORCH := torch==2.13.0

.PHONY: demo test lint docs serve-docs bench gpu-check clean

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

docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict --quiet

serve-docs: $(VENV)/.installed
	$(BIN)/mkdocs serve

bench: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

# On a CUDA machine: host syncs per step, ConvNet overhead, DDP over NCCL (benchmarks/gpu_check.py).
# Uses the project's .venv when there is one, else $(PY) with fluxpy's dependencies installed.
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache
