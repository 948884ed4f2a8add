# Coalition developer tasks.
#
# The two entry points for a new user (see README.md) are:
#   make serve   set up, then run coalition-server on the embedded SQLite default (ARGS=... passes flags)
#   make test    set up, then run the whole suite: codegen staleness, ruff, mypy, pytest (incl. slow)
# Each sets itself up: virtual environment in .venv, editable install of .[dev], protobuf code.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Re-install when pyproject.toml changes; the stamp lives inside the venv, so it goes with it.
STAMP := $(VENV)/.coalition-install.stamp
PIP := $(PY) -m pip --disable-pip-version-check
# Pinned: `npm view @bufbuild/buf version`.
BUF_VERSION := 1.75.0
GENERATED_DIR := client/coalition/v1
NODE_EXAMPLE := examples/node

# Extra arguments: `make serve ARGS="--help"`, `make test PYTEST_ARGS="-x -k ledger"`.
ARGS ?=
PYTEST_ARGS ?=

# The commands, defined once and shared by the individual targets and `test`.
RUN_CHECK_GENERATED = $(PY) scripts/generate_protos.py --check
RUN_RUFF_CHECK = $(BIN)/ruff check .
RUN_RUFF_FORMAT_CHECK = $(BIN)/ruff format --check .
RUN_MYPY = $(BIN)/mypy
RUN_PYTEST = $(BIN)/pytest
# Workers for the fast tests (pytest-xdist): one per core, at most 4 (each test runs its own
# server and, on PostgreSQL, its own database; more would crowd the server's connections).
# One core: 0, no workers at all.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; n = min(4, os.cpu_count() or 1); print(n if n > 1 else 0)')
# The tests in two runs: the fast ones spread over the workers, then the slow ones one at a
# time (they restart PostgreSQL, kill servers and put load on both cores). Exit status 5
# ("no tests collected", when PYTEST_ARGS selects only one kind) is not a failure.
# The slow run lists its 15 slowest tests, to show where CI's time goes.
RUN_PYTEST_SPLIT = { $(RUN_PYTEST) -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS) || [ $$? -eq 5 ]; } \
	&& { $(RUN_PYTEST) -m slow --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]; }

.PHONY: help venv install generate generate-if-missing check-generated serve test test-fast \
        pytest lint format typecheck buf-lint node-deps bench demo clean distclean

help:
	@echo "Coalition — make targets"
	@echo "  make serve       set up, generate code, run coalition-server (SQLite default; ARGS=...)"
	@echo "  make test        set up, then the whole suite: codegen staleness, lint, typecheck, pytest"
	@echo "  make demo        set up, then play a whole coalition on a local server; report in demo-report/"
	@echo "  make test-fast   pytest -m 'not slow' on every core (PYTEST_ARGS=..., TEST_WORKERS=...)"
	@echo "  make lint        ruff check + ruff format --check"
	@echo "  make format      ruff check --fix + ruff format"
	@echo "  make typecheck   mypy (strict, configured in pyproject.toml)"
	@echo "  make generate    regenerate $(GENERATED_DIR) from proto/"
	@echo "  make check-generated  fail if $(GENERATED_DIR) is stale"
	@echo "  make buf-lint    buf lint proto (npx @bufbuild/buf@$(BUF_VERSION); needs node)"
	@echo "  make node-deps   npm ci in $(NODE_EXAMPLE) when npm is there (the tests run it)"
	@echo "  make bench       benchmarks vs targets and baselines (ARGS=\"--scale smoke --db sqlite\")"
	@echo "  make venv | install | clean | distclean"

# --- set-up ---------------------------------------------------------------------------------

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "Coalition needs Python 3.11+ as '$(PYTHON)' (override with PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

venv: $(PY)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install -e '.[dev]'
	touch $@

install: $(STAMP)

# The Node.js lab example's packages, so its tests run rather than skip. Light: only when npm
# is installed and the lock file is newer than what node_modules holds.
node-deps:
	@if ! command -v npm >/dev/null; then \
	  echo "npm not found: the Node.js example's tests ($(NODE_EXAMPLE)) will skip"; \
	elif [ ! $(NODE_EXAMPLE)/node_modules/.package-lock.json -nt $(NODE_EXAMPLE)/package-lock.json ]; then \
	  npm ci --prefix $(NODE_EXAMPLE) --no-audit --no-fund; \
	fi

generate: install
	$(PY) scripts/generate_protos.py

# `make test` generates only what is missing: existing generated code is checked, not
# silently rewritten, so a stale checkout fails (run `make generate` and commit the result).
generate-if-missing: install
	@if ! compgen -G '$(GENERATED_DIR)/*_pb2.py' >/dev/null; then \
	  echo "$(GENERATED_DIR) has no generated code: generating"; \
	  $(PY) scripts/generate_protos.py; \
	fi

# --- the two entry points -------------------------------------------------------------------

serve: generate
	exec $(BIN)/coalition-server $(ARGS)

# The WHOLE suite, slow tests included (no -m filter).
test: generate-if-missing node-deps
	$(RUN_CHECK_GENERATED)
	$(RUN_RUFF_CHECK)
	$(RUN_RUFF_FORMAT_CHECK)
	$(RUN_MYPY)
	$(RUN_PYTEST_SPLIT)

# The README's "Try it": a server on SQLite in a temporary directory, a coalition played end to
# end through the SDK, a summary, and an HTML report with plots in demo-report/ (ARGS=...).
demo: generate-if-missing
	$(BIN)/coalition demo --report demo-report $(ARGS)

# --- individual steps -----------------------------------------------------------------------

test-fast: generate-if-missing node-deps
	$(RUN_PYTEST) -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

pytest: generate-if-missing node-deps
	$(RUN_PYTEST) $(PYTEST_ARGS)

check-generated: install
	$(RUN_CHECK_GENERATED)

lint: install
	$(RUN_RUFF_CHECK)
	$(RUN_RUFF_FORMAT_CHECK)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: generate-if-missing
	$(RUN_MYPY)

buf-lint:
	@command -v npx >/dev/null || { echo "buf-lint needs node/npm (npx)" >&2; exit 1; }
	npx --yes @bufbuild/buf@$(BUF_VERSION) lint proto

# The benchmark runner (docs/benchmarks.md): `make bench ARGS="--scale smoke --only ingest"`.
bench: generate-if-missing
	$(PY) -m bench $(ARGS)

# --- cleaning -------------------------------------------------------------------------------

# Caches and build output only; never the data directory of a local server.
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -path ./node_modules -prune -o \
	  \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0 -r rm -rf
	rm -f $(STAMP)

distclean: clean
	rm -rf $(VENV) node_modules $(NODE_EXAMPLE)/node_modules
