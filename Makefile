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

.PHONY: help venv lock run test test-fast lint typecheck bench clean

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# Locked versions, with hashes, that every install uses: requirements/dev.txt for .venv (runtime, embedded and
# dev tools), requirements/runtime.txt for the image (the same pins, runtime dependencies only).
LOCK_DEV := requirements/dev.txt
LOCK_RUNTIME := requirements/runtime.txt
# For Python 3.11 and later on any platform (universal markers), so one lock serves this machine and the image.
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" $(LOCK_FLAGS)

$(STAMP): pyproject.toml $(LOCK_DEV)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK_DEV)
	$(PY) -m pip install --quiet --no-deps -e .
	@# A dependency added to pyproject.toml but not locked yet shows up here rather than as an ImportError.
	$(PY) -m pip check || { echo "$(LOCK_DEV) does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
	touch $(STAMP)

# Recompiling keeps the current pins where they still fit; `make lock LOCK_FLAGS=--upgrade` takes the newest.
# The runtime lock is constrained by the dev lock, so the image runs exactly the versions the suite tested.
lock:  ## recompile requirements/*.txt from pyproject.toml (after changing a dependency)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet uv
	$(UV_COMPILE) --extra dev -o $(LOCK_DEV)
	$(UV_COMPILE) --constraint $(LOCK_DEV) -o $(LOCK_RUNTIME)

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

