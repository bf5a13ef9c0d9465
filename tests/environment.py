"""Loaded with `-p tests.environment`, before any test module imports shared.settings.

Each pytest-xdist worker gets its own PostgreSQL databases and Redis indexes, so workers never
see each other's rows or messages:

- `backend_test_<worker>` and Redis index 1 + 2n: in-process tests; every test rolls back.
- `backend_test_<worker>_e2e` and Redis index 2 + 2n: tests that start real processes; those
  commit for real, and the fixture that started them cleans up after them.

Two checkouts testing on one machine at once: give each its own TEST_NAMESPACE (a suffix of the
database names) and its own Redis server through REDIS_URL.
"""

import os
import re
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
WORKER_INDEX = int(re.sub(r"\D", "", WORKER) or 0)
if WORKER_INDEX > 6:
    raise RuntimeError("tests use two Redis indexes per xdist worker: run with at most 7 workers")

_server = make_url(
    os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/backend")
).set(drivername="postgresql+asyncpg")
_redis = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

NAMESPACE = re.sub(r"\W", "", os.environ.get("TEST_NAMESPACE", ""))
TEST_DATABASE = f"backend_test{NAMESPACE and '_' + NAMESPACE}_{WORKER}"
E2E_DATABASE = f"{TEST_DATABASE}_e2e"
TEST_DATABASE_URL = _server.set(database=TEST_DATABASE)
E2E_DATABASE_URL = _server.set(database=E2E_DATABASE)
MAINTENANCE_DATABASE_URL = _server.set(database="postgres")
TEST_REDIS_URL = _redis._replace(path=f"/{1 + 2 * WORKER_INDEX}").geturl()
E2E_REDIS_URL = _redis._replace(path=f"/{2 + 2 * WORKER_INDEX}").geturl()

os.environ.update(
    ENVIRONMENT="test",
    DATABASE_URL=TEST_DATABASE_URL.render_as_string(hide_password=False),
    REDIS_URL=TEST_REDIS_URL,
    LOG_LEVEL="INFO",
)
