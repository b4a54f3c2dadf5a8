# billwatch: two commands for a new machine, `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo bench test check lint typecheck pytest pytest-quick services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Serve on 127.0.0.1:8000 with the embedded SQLite database (migrated first).
run: install
	bash scripts/run.sh

## The one-command tour: a local Stripe, billwatch on SQLite, a simulated month, a summary.
## DEMO_ARGS passes options through, e.g. make demo DEMO_ARGS=--keep-running
demo: install
	$(BIN)/billwatch demo $(DEMO_ARGS)

## Benchmarks on a scratch PostgreSQL database; BENCH_SCALE=0.1 for a quick run. Not part of test.
BENCH_SCALE ?= 1
bench: install services
	$(BIN)/python -m bench --scale $(BENCH_SCALE) $(BENCH_ARGS)

services:
	bash scripts/ensure-services.sh

## ruff, and the layering contracts of pyproject.toml's [tool.importlinter] (docs/architecture.md).
lint: install
	$(BIN)/ruff check billwatch tests bench deploy
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

## Test workers (pytest-xdist): one per core, at most 4. Each has its own databases and processes.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_ARGS ?=
# Bytecode is kept even where the shell sets PYTHONDONTWRITEBYTECODE, in a folder of the venv
# rather than beside the sources: without it every worker compiles and assertion-rewrites all
# test modules again (about 2 s of CPU each at collection).
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache
# loadscope: a class (or a module's plain functions) goes to one worker, so a class or module
# fixture (the demo's one run) is built once. (With --dist loadgroup, xdist_group marks did not
# keep a group on one worker with the pytest and pytest-xdist we install.)
PYTEST := $(TEST_ENV) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope

pytest: install services
	$(PYTEST) tests $(PYTEST_ARGS)

## The quick loop: everything not marked slow, on SQLite only.
pytest-quick: install services
	BILLWATCH_TEST_BACKENDS=sqlite $(PYTEST) -m "not slow" tests $(PYTEST_ARGS)

## Everything CI runs: services up, lint, types, the whole test suite on PostgreSQL and SQLite.
test: install services lint typecheck pytest

## Before a commit: lint, types and the quick loop (the target: under two minutes on two idle cores).
check: install services lint typecheck pytest-quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache billwatch.db*
