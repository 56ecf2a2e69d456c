# taskproc developer commands. `make run` and `make test` work on a fresh clone: they create .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Fragments in mk/ add what the suite needs besides the venv (e.g. helm/kubectl, checkov's venv).
TEST_DEPS :=
# pytest-xdist processes for the suite, each with its own embedded Postgres and Redis; a test file stays on one
# (--dist loadfile), so a module's shared stack starts once. The container tests run after, in one process: they
# build and run podman images and were never tried side by side.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
-include mk/*.mk

.PHONY: help venv run test test-fast lint typecheck bench clean

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install taskproc with its dev tools

run: $(STAMP)  ## run the whole stack locally (embedded Postgres + Redis, API on :8000, 2 workers)
	$(VENV)/bin/taskproc up --host 127.0.0.1 --port 8000 --workers 2

test: $(STAMP) $(TEST_DEPS)  ## the whole suite: lint, types, unit, integration, chart (e2e skips without a cluster)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --ignore=tests/container
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest tests/container

test-fast: $(STAMP)  ## unit tests only
	$(PY) -m pytest tests/unit

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:  ## remove local state (.taskproc data, caches); keeps .venv
	rm -rf .taskproc .pytest_cache .mypy_cache .ruff_cache

