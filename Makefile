# Two entry points for a fresh machine:  make train  |  make test
# Both create .venv (Python >= 3.10) and install bitlm into it first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned, so pip never swaps in a CUDA build on a CPU machine
TORCH  ?= torch==2.13.0
# extra pip options, e.g. PIP_ARGS="--index-url <a CPU-only torch wheel index>"
PIP_ARGS ?=

.PHONY: setup train test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) -e ".[dev]"
	touch $@

train: setup
	$(BIN)/bitlm-train $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

lint: setup
	$(BIN)/ruff check src tests train.py
	$(BIN)/ruff format --check src tests train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
