# The api image: FastAPI under uvicorn. It also carries alembic.ini, so the migrate Job and the
# compose `migrate` service run `alembic upgrade head` from it.
# Build from the repository root: docker build -f deploy/docker/api.Dockerfile -t backend-api .
# No `# syntax=` line: the engine's built-in frontend supports `RUN --mount`, and a syntax line
# would make every build fetch a frontend image from a registry.

# Any Debian-like image with python3 (>= 3.11) on PATH and groupadd/useradd; the runtime stage
# uses the same image, so the virtual environment's interpreter link stays valid.
ARG PYTHON_IMAGE=python:3.11-slim
# Any image with the uv binaries at /uv and /uvx.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
# builder: resolves the `api` member (and `shared`) from uv.lock into /opt/venv.
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /uvx /bin/

# Compile to .pyc here, because the runtime root filesystem is read-only; copy out of the cache
# mount instead of hard-linking; use the image's python3 from PATH (wherever the base image
# keeps it), never download one; trust the image's CA store (which may hold a proxy's CA).
ENV UV_COMPILE_BYTECODE=1 \
    UV_SYSTEM_CERTS=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PYTHON=python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

WORKDIR /src

# Third-party dependencies only. This layer is keyed on the lock file and the workspace's
# pyproject files, so it is reused until a dependency changes. --locked refuses a stale lock.
# Mount targets are absolute: podman/buildah reject relative ones.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/src/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    --mount=type=bind,source=shared/pyproject.toml,target=/src/shared/pyproject.toml \
    --mount=type=bind,source=api/pyproject.toml,target=/src/api/pyproject.toml \
    --mount=type=bind,source=worker/pyproject.toml,target=/src/worker/pyproject.toml \
    uv sync --locked --no-dev --package api --no-editable --no-install-workspace

# The workspace members themselves, installed as wheels (--no-editable), so the runtime stage
# needs /opt/venv and nothing from /src. worker/ contributes its pyproject only: uv validates
# the whole workspace against uv.lock, but the worker package is never installed here.
COPY pyproject.toml uv.lock ./
COPY worker/pyproject.toml worker/pyproject.toml
COPY shared shared
COPY api api
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --package api --no-editable

# ---------------------------------------------------------------------------------------------
# runtime: the interpreter, the virtual environment and alembic.ini; no uv, no sources.
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="backend-api" \
      org.opencontainers.image.description="FastAPI service of the backend" \
      org.opencontainers.image.version="${VERSION}"

RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /tmp \
        --shell /usr/sbin/nologin app

# Nothing is written outside /tmp (an emptyDir in Kubernetes, a tmpfs in compose). A pod is
# reached on its own address, so the api listens on every interface of its network namespace.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    API_BIND_ADDRESS=0.0.0.0 \
    API_PORT=8000

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini /app/alembic.ini

USER 10001:10001
EXPOSE 8000

# uvicorn on API_BIND_ADDRESS:API_PORT (api/serve.py): an exec-form command cannot expand them.
CMD ["python", "-m", "api.serve"]
