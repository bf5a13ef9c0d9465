# syntax=docker/dockerfile:1
# The worker image: the Celery worker by default; Celery Beat runs from the same image with
# `celery -A worker.celery_app beat --loglevel INFO`. Migrations run from the api image.
# Build from the repository root: docker build -f deploy/docker/worker.Dockerfile -t backend-worker .

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: resolves the `worker` member (and `shared`) from uv.lock into /opt/venv.
FROM ${PYTHON_IMAGE} AS builder

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/

# Compile to .pyc here, because the runtime root filesystem is read-only; copy out of the cache
# mount instead of hard-linking; use the image's interpreter, never download one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

WORKDIR /src

# Third-party dependencies only. This layer is keyed on the lock file and the workspace's
# pyproject files, so it is reused until a dependency changes. --locked refuses a stale lock.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=shared/pyproject.toml,target=shared/pyproject.toml \
    --mount=type=bind,source=api/pyproject.toml,target=api/pyproject.toml \
    --mount=type=bind,source=worker/pyproject.toml,target=worker/pyproject.toml \
    uv sync --locked --no-dev --package worker --no-editable --no-install-workspace

# The workspace members themselves, installed as wheels (--no-editable), so the runtime stage
# needs /opt/venv and nothing from /src. api/ contributes its pyproject only: uv validates the
# whole workspace against uv.lock, but the api package is never installed here.
COPY pyproject.toml uv.lock ./
COPY api/pyproject.toml api/pyproject.toml
COPY shared shared
COPY worker worker
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --package worker --no-editable

# ---------------------------------------------------------------------------------------------
# runtime: the interpreter and the virtual environment; no uv, no sources.
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="backend-worker" \
      org.opencontainers.image.description="Celery worker and Celery Beat of the backend" \
      org.opencontainers.image.version="${VERSION}"

RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /tmp \
        --shell /usr/sbin/nologin app

# Nothing is written outside /tmp (an emptyDir in Kubernetes, a tmpfs in compose); the
# heartbeat files of the probes go to HEARTBEAT_DIR, /tmp by default.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HEARTBEAT_DIR=/tmp

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app

USER 10001:10001

CMD ["celery", "-A", "worker.celery_app", "worker", "-P", "prefork", "-c", "2", "-Q", "default,maintenance", "--loglevel", "INFO"]
