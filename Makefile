# resync -- the two commands a new machine needs:
#   make serve   create .venv, install, run the service on embedded SQLite
#   make test    create .venv, install dev extras, check PostgreSQL + Redis, run everything
#
# Everything else is a helper of those two.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

RUN_STAMP := $(VENV)/.stamp-run
DEV_STAMP := $(VENV)/.stamp-dev
BENCH_STAMP := $(VENV)/.stamp-bench

.PHONY: serve test check lint typecheck pytest services bench bench-admission clean help

help:
	@echo "make serve   run the service (SQLite by default; configure with env vars or .env)"
	@echo "make test    lint, type-check and run the whole test-suite against real servers"
	@echo "make bench   run the benchmarks and write artifacts/"

$(BIN)/python:
	@scripts/bootstrap-venv.sh $(PYTHON) $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[uvloop]'
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $@ $(DEV_STAMP) $(RUN_STAMP)

serve: $(RUN_STAMP)
	$(BIN)/resync serve

services:
	@PYTHON=$(PYTHON) scripts/ensure-services.sh all

lint: $(DEV_STAMP)
	$(BIN)/ruff check resync tests examples benchmarks
	$(BIN)/ruff format --check resync tests examples benchmarks
	$(BIN)/lint-imports

typecheck: $(DEV_STAMP)
	$(BIN)/mypy
	# The example app is user code: its dependency types must resolve (pool_lease).
	$(BIN)/mypy --strict examples/fastapi_app

pytest: $(DEV_STAMP) services
	$(BIN)/pytest $(PYTEST_ARGS)

check: lint typecheck

test: check pytest

bench-admission: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.bench_admission

# The peer suite (about 16 minutes on 2 cores): artifacts/benchmarks.md, .json, *.png.
bench: $(BENCH_STAMP) services
	@scripts/ensure-bench-tools.sh
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
