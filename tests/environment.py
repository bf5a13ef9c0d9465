"""Loaded with `-p tests.environment`, before any test module imports shared.settings.

The suite touches nothing it does not own:

- Redis: a redis-server of its own on a free port, started by the pytest process that loads
  this plugin first (the xdist controller, or pytest alone) and stopped when it ends. Its port
  reaches the xdist workers in TESTS_OWN_REDIS_PORT, its process id in TESTS_OWN_REDIS_PID, set
  before they start; each worker checks that this very process answers. Every index of that
  server is the suite's, so tests may flush them; REDIS_URL is never used.
- PostgreSQL (the server of DATABASE_URL): databases named `backend_test_<namespace>_<worker>`
  and below, dropped when the worker ends (tests/fixtures/database.py). The namespace is
  TEST_NAMESPACE, or by default a hash of this checkout's path, so two checkouts on one machine
  never share a database.

Each pytest-xdist worker gets its own databases and Redis indexes:

- `<prefix>` and Redis index 1 + 2n: in-process tests; every test rolls back.
- `<prefix>_e2e` and Redis index 2 + 2n: tests that start real processes; those commit for
  real, and the fixture that started them cleans up after them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy.engine import make_url

from tests.fixtures.ports import free_port
from tests.fixtures.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
OWN_REDIS_PORT = "TESTS_OWN_REDIS_PORT"
OWN_REDIS_PID = "TESTS_OWN_REDIS_PID"
REDIS_DATABASES = 64  # two per xdist worker, and index 0 left unused

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
WORKER_INDEX = int(re.sub(r"\D", "", WORKER) or 0)
if 2 + 2 * WORKER_INDEX >= REDIS_DATABASES:
    raise RuntimeError(
        f"tests use two Redis indexes per xdist worker: at most {REDIS_DATABASES // 2 - 1} workers"
    )

# The first process to load this plugin picks the port and, in pytest_configure, starts the
# server; the xdist workers it spawns inherit the variable and use that server.
STARTS_REDIS = OWN_REDIS_PORT not in os.environ
if STARTS_REDIS:
    os.environ[OWN_REDIS_PORT] = str(free_port())
REDIS_PORT = int(os.environ[OWN_REDIS_PORT])

_server = make_url(
    os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/backend")
).set(drivername="postgresql+asyncpg")


def checkout_namespace() -> str:
    """TEST_NAMESPACE if set, else a short hash of this checkout's path."""
    given = re.sub(r"\W", "", os.environ.get("TEST_NAMESPACE", "")).lower()[:16]
    return given or hashlib.sha256(str(REPO).encode()).hexdigest()[:8]


NAMESPACE = checkout_namespace()
DATABASE_PREFIX = f"backend_test_{NAMESPACE}_{WORKER}"
TEST_DATABASE_URL = _server.set(database=DATABASE_PREFIX)
E2E_DATABASE_URL = _server.set(database=f"{DATABASE_PREFIX}_e2e")
TEST_REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/{1 + 2 * WORKER_INDEX}"
E2E_REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/{2 + 2 * WORKER_INDEX}"

os.environ.update(
    ENVIRONMENT="test",
    DATABASE_URL=TEST_DATABASE_URL.render_as_string(hide_password=False),
    REDIS_URL=TEST_REDIS_URL,
    LOG_LEVEL="INFO",
)

_redis_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _redis_server
    if not STARTS_REDIS:
        refuse_a_redis_this_run_did_not_start()
    elif _redis_server is None:
        _redis_server = RedisServer(REDIS_PORT, databases=REDIS_DATABASES)
        # xdist workers, spawned after this, check that they talk to this very process.
        os.environ[OWN_REDIS_PID] = str(_redis_server.popen.pid)


def refuse_a_redis_this_run_did_not_start() -> None:
    """Tests flush every index of the suite's Redis: a TESTS_OWN_REDIS_PORT naming any other
    server (set by hand, or a port another server took) stops the run before any test."""
    with Redis(host="127.0.0.1", port=REDIS_PORT, socket_connect_timeout=1) as client:
        answering = int(client.info("server")["process_id"])
    if str(answering) != os.environ.get(OWN_REDIS_PID):
        raise pytest.UsageError(
            f"{OWN_REDIS_PORT}={REDIS_PORT} is not a Redis this test run started; unset it"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    global _redis_server
    if _redis_server is not None:
        _redis_server.stop()
        _redis_server = None
