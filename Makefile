# Two commands do all the set-up on a fresh machine with Python 3.11+ and make:
#   make demo   builds .venv from the pinned lock and runs the embedded demo (no servers)
#   make test   builds .venv and runs every test (needs PostgreSQL and Redis; see README)

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && break; done)
PYTHON := $(PYTHON)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration bench profile lint lock clean

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

demo: $(STAMP)
	$(BIN)/credits demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# Real workers on private servers against a no-op ceiling (see bench/__main__.py); needs
# redis-server, PostgreSQL and, for --broker amqp/all, RabbitMQ. BENCH_ARGS=--quick.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# py-spy on a worker during a (b)-style run; writes bench/results/profile-*.
profile: $(STAMP)
	$(BIN)/python -m bench.profile $(PROFILE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Re-pin every dependency from pyproject.toml into requirements.lock.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet --upgrade pip
	.lockenv/bin/python -m pip install --quiet '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude credits-worker > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
