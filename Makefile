# The two commands the README promises: `make run` (the whole stack) and `make test` (the whole
# suite, lint and types included). Both set up a fresh machine themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(HOME)/.local/bin:$(PATH)
export UV_PYTHON_DOWNLOADS := never

PYTEST_WORKERS ?= auto

.PHONY: test test-steps run run-steps lint types migrate services sync uv bench-worker bench-api bench-maintenance bench-io
.PHONY: images smoke-images compose-check

uv:
	@command -v uv >/dev/null || python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv

sync: uv
	uv sync --locked --all-packages

services: sync
	uv run python scripts/ensure_services.py

lint: sync
	uv lock --check
	uv run ruff check .
	uv run ruff format --check .

types: sync
	uv run mypy

# `make test` and `make run` keep all they write to the temporary directory (uv's environment
# locks, pytest's folders, the tests', the image builds' and the stack's files) in one folder of
# their own, removed when they end, on Ctrl-C too: they leave nothing there.
in_own_tmp = run_tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/backend-$(1).XXXXXX"); \
	trap 'rm -rf "$$run_tmp"' EXIT; \
	TMPDIR="$$run_tmp" $(MAKE) --no-print-directory $(1)-steps

test:
	@$(call in_own_tmp,test)

run:
	@$(call in_own_tmp,run)

# Then the images, built and run for real (smoke test and compose check): where no Docker engine
# answers or can be started it says so and passes, except under CI=true.
test-steps: lint types services
	uv run python scripts/ensure_services.py --redis-server
	uv run pytest -n $(PYTEST_WORKERS) --maxprocesses 6 --dist loadgroup
	uv run python -m scripts.containers check

migrate: sync
	uv run python scripts/ensure_services.py --create-database
	uv run alembic upgrade head

run-steps: migrate
	uv run python scripts/run_stack.py

# A new migration from the models, numbered and formatted: `make migration name=add_x`.
.PHONY: migration
migration: migrate
	@test -n "$(name)" || { echo 'usage: make migration name=add_something'; exit 2; }
	uv run python scripts/new_migration.py "$(name)"

# The container images, built and run for real (docs/deploy.md, "Building and checking the
# images"). A Docker engine is started (and installed, as root) when none answers.
images: sync
	uv run python -m scripts.containers images

smoke-images: services
	uv run python -m scripts.containers smoke

compose-check: sync
	uv run python -m scripts.containers compose

bench-worker: services
	uv run python -m bench.worker

bench-maintenance: services
	uv run python -m bench.maintenance

# 2,000 sign-ups' welcome emails against a mail server taking 100 ms per message, beside the
# arq reference (its own environment under .bench-env/arq, made with uv on first use).
BENCH_IO_SIGN_UPS ?= 2000
BENCH_IO_DELAY ?= 0.1
bench-io: services
	uv run python -m bench.io --sign-ups $(BENCH_IO_SIGN_UPS) --delay $(BENCH_IO_DELAY)

bench-api: services
	uv run python scripts/ensure_services.py --wrk
	uv run python -m bench.api

# Soak: the whole stack for SOAK_MINUTES at SOAK_RATE sign-ups/s, the worker SIGKILLed every
# minute and Redis restarted once; prints its figures and fails when a check does. Not in `test`.
SOAK_MINUTES ?= 3
SOAK_RATE ?= 10
.PHONY: bench-soak
bench-soak: services
	uv run python -m bench.soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)
